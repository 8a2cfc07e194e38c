"""`dsformer-vpr sweep`: one localizer setting over several real drives (on the map, kidnapped, off the map), each
value's figures those of an offline replay with that value."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import pytest

from node_assets import drive_map

from dsformer_ros.common.config import load_config
from dsformer_ros.localization.sequence import SequenceConfig
from training.cli import main
from training.replay.calibration import LATERAL_GRID_M
from training.replay.replay import ReplayConfig, run_replay
from training.replay.sweep import SweepConfig, run_sweep, sweep_table
from training.study import StudyConfig, run_study
from training.synth.config import SynthConfig
from training.synth.drive import write_drive

ROUTE = dict(blocks_x=3, blocks_y=3, route_seed=2, width=128, height=96, fps=2.0, length_m=300.0)
QUERY = dict(ROUTE, condition="dusk", lane_offset_m=-1.75, frames=24, start_time_s=1_700_001_000.0)


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A day mapping drive of 300 m; dusk drives of 96 m in the other lane: plain, kidnapped at 40 m (150 m ahead)
    and leaving the route at 40 m; an untrained small checkpoint and its map."""
    root = tmp_path_factory.mktemp("sweep")
    write_drive(SynthConfig(**ROUTE, condition="day", drive_seed=1, out=str(root / "mapping")))
    write_drive(SynthConfig(**QUERY, drive_seed=2, out=str(root / "query")))
    write_drive(SynthConfig(**QUERY, drive_seed=3, kidnap_at_m=40.0, kidnap_skip_m=150.0, out=str(root / "kidnapped")))
    write_drive(SynthConfig(**QUERY, drive_seed=4, off_map_after_m=40.0, out=str(root / "off_map")))
    return {"root": root, **drive_map(root / "mapping", root),
            **{name: root / name for name in ("query", "kidnapped", "off_map")}}


@pytest.mark.slow
def test_each_value_gives_what_an_offline_replay_with_it_gives(drives: dict[str, Path]) -> None:
    """Per drive and value: the fixes, availability, largest error and fixes off the map of `replay` itself; the
    drive kinds come from the ground truth; a stricter fix_mass never gives more fixes; table, JSON and figure."""
    bags = [str(drives[name]) for name in ("query", "kidnapped", "off_map")]
    base = SequenceConfig(agreement_evidence=0.0, keep_evidence=0.0)  # lenient gates: the untrained model fixes
    cfg = SweepConfig(bags=bags, map=str(drives["map"]), checkpoint=str(drives["checkpoint"]), vary="fix_mass",
                      values=[0.3, 0.9], odometry_topic="/odom/wheel", device="cpu", sequence=base,
                      out=str(drives["root"] / "sweep"))
    report = run_sweep(cfg)
    assert [row["value"] for row in report["rows"]] == [0.3, 0.9]
    for row in report["rows"]:
        assert [d["kind"] for d in row["drives"]] == ["on_map", "kidnapped", "off_map"]
        inside_95 = 0
        for drive in row["drives"]:
            replayed = run_replay(ReplayConfig(
                bag=drive["bag"], map=cfg.map, checkpoint=cfg.checkpoint, odometry_topic=cfg.odometry_topic,
                device="cpu", localizer="sequence", sequence=dataclasses.replace(base, fix_mass=row["value"]),
                out=str(drives["root"] / "replays" / f"{Path(drive['bag']).name}_{row['value']}"), figures=False))
            m = replayed["metrics"]
            assert drive["fixes"] == m["fix"]["accepted"], (drive["bag"], row["value"])
            assert drive["availability"] == pytest.approx(m["fix"]["availability"])
            assert drive["max_error_m"] == m["calibration"]["max_error_m"]
            assert drive["fixes_off_map"] == m["calibration"]["fixes_off_map"]
            kidnap = m["calibration"].get("kidnap")
            assert drive["kidnap_max_error_after_m"] == (kidnap["max_error_after_m"] if kidnap else None)
            inside = m["calibration"]["inside_95"]
            inside_95 += 0 if inside is None else round(inside * m["calibration"]["fixes_with_covariance"])
        # the lateral fit pools every fix; at the configured value it is the replays' own 95 % coverage
        lateral = row["lateral"]
        assert lateral["fixes"] == sum(d["fixes"] for d in row["drives"])
        if lateral["fixes"]:
            assert lateral["inside_95_configured"] == pytest.approx(inside_95 / lateral["fixes"])
        if lateral["fitted_m"] is not None:
            assert lateral["inside_95"][LATERAL_GRID_M.index(lateral["fitted_m"])] >= 0.95 * lateral["fixes"]
        on_map = row["drives"][0]
        assert row["availability"] == pytest.approx(on_map["fixes"] / on_map["frames_with_gps"])
        assert row["fixes_off_map"] == sum(d["fixes_off_map"] for d in row["drives"])
    lenient, strict = report["rows"]
    assert lenient["drives"][0]["fixes"] > 0 and lenient["lateral"]["fixes"] > 0
    assert sum(d["fixes"] for d in strict["drives"]) <= sum(d["fixes"] for d in lenient["drives"])
    table = sweep_table(report)
    assert table.splitlines()[0].split()[0] == "fix_mass" and len(table.splitlines()) == 4
    out = Path(cfg.out)
    assert json.loads((out / "sweep.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    image = cv2.imread(str(out / "sweep.png"))
    assert image is not None and image.std() > 5


def test_bad_settings_are_named(drives: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A setting that is not a numeric sequence setting, a value out of its range, a missing bag: exit 2, named."""
    common = [str(drives["query"]), "--map", str(drives["map"]), "--checkpoint", str(drives["checkpoint"]),
              "--out", str(drives["root"] / "bad")]
    assert main(["sweep", *common, "--vary", "map_path"]) == 2
    assert "vary: 'map_path' is not a numeric sequence setting" in capsys.readouterr().err
    assert main(["sweep", *common, "--vary", "fix_mass", "--values", "0.5", "7"]) == 2
    assert "fix_mass" in capsys.readouterr().err
    assert main(["sweep", *common[:1], str(drives["root"] / "nobag"), *common[1:]]) == 2
    assert "nobag" in capsys.readouterr().err


@pytest.mark.slow
def test_study_writes_each_route_sweep_with_every_drive(drives: dict[str, Path], tmp_path: Path) -> None:
    """`study` maps a route with the given model, drives its query, kidnapped and off-map drives through the
    sequence localizer and keeps every drive's fixes, wrong fixes and fixes off the map in route_N/sweep.json; the
    route's row is the drives' summary and the lateral fit pools their fixes."""
    cfg = load_config(StudyConfig, None, [
        f"checkpoint={drives['checkpoint']}", "routes=[2]", "kidnapped=1", "off_map=1", f"out={tmp_path / 'study'}",
        "town.blocks=3", "town.width=128", "town.height=96", "town.route_length_m=300",
        "sequence.agreement_evidence=0.0", "sequence.keep_evidence=0.0"])
    report = run_study(cfg)
    (route,) = report["routes"]
    sweep = json.loads((tmp_path / "study" / "route_2" / "sweep.json").read_text())
    (row,) = sweep["rows"]
    assert [Path(d["bag"]).name for d in row["drives"]] == ["query_dusk", "query_kidnapped_150m", "query_off_map_150m"]
    kinds = [d["kind"] for d in row["drives"]]  # the kidnap lands 250 m on, past this short route's end: off it
    assert kinds[0] == "on_map" and kinds[2] == "off_map" and kinds[1] in ("kidnapped", "off_map")
    for drive in row["drives"]:
        assert 0 <= drive["wrong_fixes"] <= drive["fixes"] <= drive["frames_with_gps"]
        assert 0 <= drive["fixes_off_map"] <= drive["fixes"]
    assert route["query_availability"] == row["drives"][0]["availability"] == route["availability"]
    assert route["wrong_fixes"] == sum(d["wrong_fixes"] for d in row["drives"])
    assert route["fixes_off_map"] == sum(d["fixes_off_map"] for d in row["drives"])
    assert report["lateral"]["fixes"] == sum(d["fixes"] for d in row["drives"])
    assert json.loads((tmp_path / "study" / "study.json").read_text())["text"] == report["text"]
    assert report["text"].startswith("route 2: query drive") and "all routes:" in report["text"]
    with pytest.raises(FileNotFoundError, match="make demo"):
        run_study(dataclasses.replace(cfg, checkpoint=str(tmp_path / "missing.pt")))
