"""The demo's `--small` pipeline end to end: synth drives, real training, maps, the node replaying the query drive,
and the goals the demo prints (the small preset meets them all)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dsformer_ros.common.config import load_config
from training.demo.config import DemoConfig, small_overrides
from training.demo.pipeline import run_demo
from training.demo.report import check_goals

GOALS = [
    "trained model beats the untrained one on Recall@1",
    "trained model beats raw pixels on Recall@1",
    "the node answered every frame and shut down cleanly",
    "offline replay gives the node's recall",
    "query drive: frames with a fix (sequence, node)",
    "query drive: no wrong fix (largest error)",
    "query drive: fixes inside their 95 % ellipse",
]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_small_demo_meets_its_goals(tmp_path: Path) -> None:
    """Every goal the demo checks holds on the small town; the table has the node's row and every method with
    both localizers; the figures are PNGs; a stricter goal than the drive meets is reported missed."""
    cfg = load_config(DemoConfig, None, small_overrides() + [f"out={tmp_path / 'demo'}"])
    report = run_demo(cfg)
    out = Path(cfg.out)
    assert json.loads((out / "report.json").read_text())["goals"] == report["goals"]
    assert [g["goal"] for g in report["goals"]] == GOALS
    missed = [g for g in report["goals"] if not g["ok"]]
    assert not missed and report["goals_met"] is True, report["table"]

    fix = report["node"]["metrics"]["fix"]
    calibration = report["node"]["metrics"]["calibration"]
    assert fix["availability"] >= cfg.goals.min_availability and fix["precision"] == 1.0, report["table"]
    assert calibration["max_error_m"] <= cfg.radius_m and calibration["inside_95"] >= cfg.goals.min_inside_95
    lines = report["table"].splitlines()
    assert lines[2].split()[:3] == ["trained", "sequence", "node"]
    assert sum("  offline  " in line for line in lines) == 6  # three methods x two localizers
    assert set(report["offline"]) == {"trained", "untrained", "raw pixels"}
    assert all(set(runs) == {"sequence", "single_frame"} for runs in report["offline"].values())
    for name in report["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(report["timings_s"]) >= {"train", "build map (trained)", "query drive through the node (trained)"}

    stricter = dataclasses.replace(cfg.goals, min_availability=min(1.0, fix["availability"] + 0.01))
    rechecked = {g["goal"]: g["ok"] for g in check_goals(stricter, report["node"], report["offline"])}
    assert rechecked.pop("query drive: frames with a fix (sequence, node)") is False
    assert all(rechecked.values())
