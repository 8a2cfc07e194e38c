"""Replay report figures (PNG) beyond training/eval/plots.py: trajectory over the map with fixes, and the error histogram."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from training.figures import save_figure
from training.replay.calibration import CHI2_2D_95
from training.replay.metrics import ReplayResults, correct_at


def plot_trajectory(
    results: ReplayResults, map_xy: np.ndarray, evaluable: np.ndarray, radius_m: float, path: Path, title: str = ""
) -> None:
    """Map places in grey, each query frame at its GPS position: green = top-1 within radius, red = wrong, plus the
    fixes with their 95 % ellipses."""
    origin = np.nanmin(map_xy, axis=0) if map_xy.size else np.zeros(2)
    top1 = correct_at(results, radius_m)[:, 0]
    gt = results.gt_xy - origin
    fig, ax = plt.subplots(figsize=(7.5, 7.0))
    ax.scatter(*(map_xy - origin).T, s=6, c="0.7", label=f"map places ({map_xy.shape[0]})")
    ax.plot(*gt.T, "-", color="0.4", lw=0.6)
    groups = (
        (evaluable & top1, "tab:green", "top-1 correct"),
        (evaluable & ~top1, "tab:red", "top-1 wrong"),
        (~evaluable, "tab:gray", "no map place within radius"),
    )
    for mask, colour, label in groups:
        if mask.any():
            ax.scatter(*gt[mask].T, s=14, c=colour, label=f"{label} ({int(mask.sum())})", zorder=3)
    if results.accepted.any():
        fix = results.fix_xy[results.accepted] - origin
        ax.scatter(*fix.T, s=22, marker="x", c="tab:blue", label=f"accepted fixes ({int(results.accepted.sum())})", zorder=4)
        _ellipses(ax, fix, results.fix_cov_xy[results.accepted])
    ax.set_aspect("equal")
    ax.set_xlabel("easting − %.0f (m)" % origin[0])
    ax.set_ylabel("northing − %.0f (m)" % origin[1])
    ax.set_title(title or f"query trajectory, correct = within {radius_m:g} m of GPS")
    ax.legend(loc="best", fontsize=8)
    save_figure(fig, path)


def _ellipses(ax: plt.Axes, xy: np.ndarray, cov: np.ndarray) -> None:
    """Each fix's 95 % ellipse (from its x/y covariance) as a thin outline."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Ellipse

    patches = []
    for centre, c in zip(xy, cov):
        if not np.isfinite(c).all():
            continue
        values, vectors = np.linalg.eigh(c)
        if values.min() <= 0:
            continue
        minor, major = 2.0 * np.sqrt(CHI2_2D_95 * values)  # eigenvalues ascending
        angle = float(np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1])))  # the major axis
        patches.append(Ellipse(tuple(centre), float(major), float(minor), angle=angle))
    if patches:
        ax.add_collection(PatchCollection(patches, facecolor="none", edgecolor="tab:blue", lw=0.5, alpha=0.5,
                                          label="95 % ellipses"))


def plot_error_histogram(results: ReplayResults, radius_m: float, path: Path) -> None:
    """Histogram of the position error (m) of accepted fixes and of the top-1 candidate, with the radius marked."""
    top1 = np.linalg.norm(results.cand_xy[:, 0, :] - results.gt_xy, axis=1)
    fix = np.linalg.norm(results.fix_xy - results.gt_xy, axis=1)[results.accepted]
    top1, fix = top1[np.isfinite(top1)], fix[np.isfinite(fix)]
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    upper = max(float(np.percentile(top1, 95)) if top1.size else 1.0, 2.0 * radius_m)
    bins = np.linspace(0.0, upper, 40)
    if top1.size:
        ax.hist(np.clip(top1, 0, upper), bins=bins, alpha=0.5, color="tab:orange", label=f"top-1 candidate ({top1.size})")
    if fix.size:
        ax.hist(np.clip(fix, 0, upper), bins=bins, alpha=0.7, color="tab:blue", label=f"accepted fixes ({fix.size})")
    ax.axvline(radius_m, color="k", ls="--", lw=1, label=f"{radius_m:g} m")
    ax.set_xlabel("position error vs GPS (m; last bin holds larger errors)")
    ax.set_ylabel("frames")
    ax.legend(fontsize=8)
    save_figure(fig, path)
