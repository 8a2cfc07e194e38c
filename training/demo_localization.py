"""The demo's localization comparison: single_frame vs sequence on the query, kidnapped and off-map drives.

Each drive is replayed offline with the trained model and map, once per localizer (the sequence localizer gets the
drive's drifting wheel odometry), and the goals of issue 11 are set side by side: availability, precision within
the radius, the largest error of any fix, covariance coverage (inside the 1-sigma and 95 % ellipses, median
normalised error), distance to the first fix, the kidnap's recovery and fixes published off the map; plus the
error-against-reported-sigma figure of the query drive.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from training.replay.config import ReplayConfig
from training.replay.metrics import ReplayResults
from training.replay.replay import FRAMES, run_replay
from training.replay.sigma_plot import plot_error_vs_sigma
from training.synth.config import SynthConfig

LOCALIZERS = ("single_frame", "sequence")
ODOMETRY_TOPIC = SynthConfig.odometry_topic
FIGURE = "error_vs_sigma.png"


def special_drives(drive: Callable[..., str], out: Path, query_fields: dict[str, Any], length_m: float) -> dict[str, str]:
    """The kidnapped drive (teleported after 3/7 of the route) and the off-map drive (leaves it there)."""
    at = round(length_m * 3 / 7)
    return {
        "kidnap_bag": drive(**query_fields, kidnap_at_m=at, out=str(out / "bags" / "query_kidnapped")),
        "off_map_bag": drive(**query_fields, off_map_after_m=at, out=str(out / "bags" / "query_off_map")),
    }


def compare_localizers(base: ReplayConfig, bags: dict[str, str], out: Path,
                       run: Callable[[str, Callable[[], dict]], dict]) -> dict[str, dict]:
    """Offline replays of every drive with both localizers: {"drive/localizer": report}."""
    reports = {}
    for drive, bag in bags.items():
        for localizer in LOCALIZERS:
            name = f"{drive}/{localizer}"
            cfg = dataclasses.replace(base, bag=bag, localizer=localizer, name=name, mode="offline",
                                      odometry_topic=ODOMETRY_TOPIC if localizer == "sequence" else "",
                                      out=str(out / drive / localizer))
            reports[name] = run(f"replay {name} (offline)", lambda cfg=cfg: run_replay(cfg))
    return reports


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def localization_table(reports: dict[str, dict]) -> str:
    """The goals side by side, one row per drive and localizer."""
    header = ["drive/localizer", "avail %", "prec %", "max err m", "in 1σ %", "in 95% %", "med norm",
              "1st fix m", "kidnap max err m", "recovered m", "fixes off map"]
    rows = [header]
    for name, report in reports.items():
        m = report["metrics"]
        cal = m["calibration"]
        kidnap = cal.get("kidnap") or {}
        first = cal.get("first_fix") or {}
        rows.append([name, _pct(m["fix"]["availability"]), _pct(m["fix"]["precision"]), _num(cal["max_error_m"]),
                     _pct(cal["inside_1sigma"]), _pct(cal["inside_95"]), _num(cal["median_normalised_error"], 2),
                     _num(first.get("distance_m"), 0), _num(kidnap.get("max_error_after_m")),
                     _num(kidnap.get("recovered_after_m"), 0), str(cal["fixes_off_map"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("goals (query drive): avail >= 80 %, prec >= 99.5 % within the radius, max err <= 25 m, in 95 % "
                 "ellipse 90..98 %, median normalised error 0.8..1.5 (ideal: 39.3 % in 1σ, 95 %, 1.18); kidnap: max "
                 "err after <= 25 m, recovered within 60 m; off-map drive: 0 fixes off the map.")
    return "\n".join(lines)


def error_vs_sigma_figure(reports: dict[str, dict], drive: str, path: Path, radius_m: float) -> str:
    """The error-vs-sigma figure of one drive, both localizers on one plot; the figure's file name."""
    runs = {}
    for localizer in LOCALIZERS:
        report = reports[f"{drive}/{localizer}"]
        results = ReplayResults.load_npz(Path(report["config"]["out"]) / FRAMES)
        runs[localizer] = (results.fix_sigma_m, np.linalg.norm(results.fix_xy - results.gt_xy, axis=1))
    plot_error_vs_sigma(runs, path, radius_m)
    return path.name
