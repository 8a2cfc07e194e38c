"""What the demo prints and draws: one table (methods x localizers), the goals it checks, and its figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dsformer_ros.maps.placemap import PlaceMap
from training.demo.config import DemoConfig, Goals
from training.eval.plots import plot_recall_curves
from training.replay.metrics import ReplayResults, has_positive
from training.replay.plots import plot_trajectory
from training.replay.replay import place_xy
from training.replay.sigma_plot import plot_error_vs_sigma
from training.reports import num, pct, text_table

HEADER = ("method", "localizer", "replay")
NOTE = ("availability: frames with a fix; precision: fixes within the radius; max err: the largest error of any "
        "fix; in 95 %: fixes inside their own 95 % ellipse; latency: node = image published -> answer received, "
        "offline = model + localizer in this process.")


def _row(method: str, localizer: str, replay: str, metrics: dict[str, Any]) -> list[str]:
    fix, cal, lat = metrics["fix"], metrics["calibration"], metrics["latency_ms"]
    return [method, localizer, replay, *[pct(v) for v in metrics["recall"].values()], pct(fix["availability"]),
            pct(fix["precision"]), num(cal["max_error_m"]), pct(cal["inside_95"]), num(lat["p50"]), num(lat["p95"])]


def demo_table(node: dict[str, Any], offline: dict[str, dict[str, dict]], recall_ns: list[int]) -> str:
    """The trained model through the node ({"metrics": ...}), then every method offline with each localizer
    ({method: {localizer: metrics}})."""
    header = [*HEADER, *[f"R@{n} %" for n in recall_ns], "avail %", "prec %", "max err m", "in 95 % %",
              "lat p50 ms", "lat p95 ms"]
    rows = [_row("trained", "sequence", "node", node["metrics"])]
    rows += [_row(name, mode, "offline", metrics) for name, runs in offline.items() for mode, metrics in runs.items()]
    return text_table(header, rows, left=len(HEADER)) + "\n" + NOTE


def _goal(name: str, ok: bool, value: str, target: str) -> dict[str, Any]:
    return {"goal": name, "ok": bool(ok), "value": value, "target": target}


def check_goals(g: Goals, node: dict[str, Any], offline: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """The demo's goals, each with its measured value and whether it holds, from the node's replay ({"metrics",
    "timeouts", "exit_code"}) and the offline runs ({method: {localizer: metrics}})."""
    m = node["metrics"]
    r1 = {name: runs["sequence"]["recall"]["1"] for name, runs in offline.items()}
    trained = m["recall"]["1"]
    fix, cal = m["fix"], m["calibration"]
    answered = m["frames_answered"] == m["frames"] > 0 and node.get("timeouts") == 0 and node.get("exit_code") == 0
    largest = cal["max_error_m"]
    return [
        _goal("trained model beats the untrained one on Recall@1", trained > r1["untrained"],
              f"{pct(trained)} vs {pct(r1['untrained'])} %", "higher"),
        _goal("trained model beats raw pixels on Recall@1", trained > r1["raw pixels"],
              f"{pct(trained)} vs {pct(r1['raw pixels'])} %", "higher"),
        _goal("the node answered every frame and shut down cleanly", answered,
              f"{m['frames_answered']} of {m['frames']} frames, exit code {node.get('exit_code')}", "all, 0"),
        _goal("offline replay gives the node's recall", m["recall"] == offline["trained"]["sequence"]["recall"],
              ", ".join(f"R@{n} {pct(v)} %" for n, v in m["recall"].items()), "equal"),
        _goal("query drive: frames with a fix (sequence, node)", fix["availability"] >= g.min_availability,
              f"{pct(fix['availability'])} %", f">= {pct(g.min_availability)} %"),
        _goal("query drive: no wrong fix (largest error)", largest is None or largest <= g.max_error_m,
              f"{num(largest)} m", f"<= {g.max_error_m:g} m"),
        _goal("query drive: fixes inside their 95 % ellipse", (cal["inside_95"] or 0.0) >= g.min_inside_95,
              f"{pct(cal['inside_95'])} %", f">= {pct(g.min_inside_95)} %"),
    ]


def goals_text(goals: list[dict[str, Any]]) -> str:
    """One line per goal: met or MISSED, its value and its target."""
    return "\n".join(f"  {'met   ' if g['ok'] else 'MISSED'}  {g['goal']}: {g['value']} (goal {g['target']})"
                     for g in goals)


def write_figures(cfg: DemoConfig, node: dict[str, Any], node_results: ReplayResults, single_frame: ReplayResults,
                  offline: dict[str, dict[str, dict]], map_dir: Path, out: Path) -> list[str]:
    """recall.png (the three methods), trajectory.png (the node's fixes with their 95 % ellipses) and
    error_vs_sigma.png (the trained model's single-frame fixes against the node's sequence fixes); their names."""
    curves = {"trained (node)": node["metrics"]["recall"],
              **{name: offline[name]["sequence"]["recall"] for name in ("untrained", "raw pixels")}}
    plot_recall_curves(out / "recall.png", {k: {int(n): v for n, v in c.items()} for k, c in curves.items()},
                       title=f"query drive ({cfg.town.query_condition}, other lane): Recall@N within {cfg.radius_m:g} m")
    map_xy = place_xy(PlaceMap.load(map_dir, verify_checksums=False))
    plot_trajectory(node_results, map_xy, has_positive(node_results.gt_xy, map_xy, cfg.radius_m), cfg.radius_m,
                    out / "trajectory.png", title="query drive through the node: fixes and their 95 % ellipses")
    def sigma_error(results: ReplayResults) -> tuple[np.ndarray, np.ndarray]:
        return results.fix_sigma_m, np.linalg.norm(results.fix_xy - results.gt_xy, axis=1)

    plot_error_vs_sigma({"single_frame (offline)": sigma_error(single_frame), "sequence (node)": sigma_error(node_results)},
                        out / "error_vs_sigma.png", cfg.radius_m)
    return ["recall.png", "trajectory.png", "error_vs_sigma.png"]
