"""Figures shared by the evaluation tools (matplotlib, Agg backend): recall@N curves and position maps."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from training.figures import save_figure


def plot_recall_curves(path: str | Path, curves: Mapping[str, Mapping[int, float]], title: str = "") -> None:
    """Recall@N against N, one line per method (curves: method -> {N: recall in 0..1}); written atomically."""
    if not curves:
        raise ValueError("no recall curves to plot")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, recall in curves.items():
        ns = sorted(int(n) for n in recall)
        values = [100.0 * recall[n] for n in ns]
        ax.plot(ns, values, marker="o", label=f"{name} (R@1 {values[0]:.1f})" if ns[0] == 1 else name)
    all_ns = sorted({int(n) for recall in curves.values() for n in recall})
    ax.set_xscale("log")
    ax.set_xticks(all_ns)
    ax.set_xticklabels([str(n) for n in all_ns])
    ax.set_xlabel("N (top-N retrieved)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title or "Recall@N")
    save_figure(fig, path)


def plot_query_map(
    path: str | Path,
    database_xy: np.ndarray,
    query_xy: np.ndarray,
    correct: Mapping[str, np.ndarray],
    title: str = "",
    max_points: int = 200_000,
) -> None:
    """Database positions in grey and queries coloured correct (green) / incorrect (red), one panel per method."""
    if not correct:
        raise ValueError("no per-query results to plot")
    rng = np.random.default_rng(0)
    db = np.asarray(database_xy)
    if len(db) > max_points:
        db = db[rng.choice(len(db), max_points, replace=False)]
    origin = np.asarray(database_xy).min(axis=0)
    panels = len(correct)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 5), squeeze=False)
    for ax, (name, ok) in zip(axes[0], correct.items()):
        ok = np.asarray(ok, dtype=bool)
        q = np.asarray(query_xy) - origin
        ax.scatter(db[:, 0] - origin[0], db[:, 1] - origin[1], s=3, c="0.75", label="database", linewidths=0)
        ax.scatter(q[~ok, 0], q[~ok, 1], s=10, c="tab:red", label=f"wrong ({int((~ok).sum())})", linewidths=0)
        ax.scatter(q[ok, 0], q[ok, 1], s=10, c="tab:green", label=f"correct ({int(ok.sum())})", linewidths=0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(f"easting - {origin[0]:.0f} (m)")
        ax.set_ylabel(f"northing - {origin[1]:.0f} (m)")
        ax.set_title(f"{name}: {100.0 * ok.mean():.1f}% correct" if len(ok) else name)
        ax.legend(loc="best", fontsize=8)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_sequence_correctness(path: str | Path, correct: Mapping[str, np.ndarray], title: str = "") -> None:
    """For data sets without positions: one row per method, query index on x, green = correct, red = wrong."""
    if not correct:
        raise ValueError("no per-query results to plot")
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(correct)))
    for row, (name, ok) in enumerate(correct.items()):
        ok = np.asarray(ok, dtype=bool)
        ax.scatter(np.arange(len(ok)), np.full(len(ok), row), c=np.where(ok, "tab:green", "tab:red"), s=12, marker="s")
    ax.set_yticks(range(len(correct)))
    ax.set_yticklabels(list(correct))
    ax.invert_yaxis()
    ax.set_xlabel("query index")
    ax.set_title(title or "per-query result at N=1")
    save_figure(fig, path)
