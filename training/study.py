"""`dsformer-vpr study` (`make study`): the sequence localizer's settings judged on routes they were not chosen on.

Each route of the demo's town (the demo's own included) gets its mapping drive and map (built with the demo's
model), its query drive, kidnapped drives (the jump spread over the route) and drives that leave the map at points
spread the same way. Every drive is described once and replayed through the sequence localizer at the configured
settings (`dsformer-vpr sweep` at one value): `<out>/route_N/sweep.json` keeps each drive's fixes, wrong fixes and
fixes off the map; the lateral noise term (`lateral_sigma_m`) is fitted on all routes' fixes together.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.localization.sequence import SequenceConfig
from training.demo.drives import IMAGE_TOPIC, ODOMETRY_TOPIC, TownConfig, mapping_and_query, safety_drives
from training.demo.pipeline import make_map
from training.replay.calibration import lateral_summary, pool_lateral
from training.replay.replay import json_default
from training.replay.sweep import REPORT as SWEEP_REPORT
from training.replay.sweep import SweepConfig, lateral_text, row_text, run_sweep
from training.reports import pct

log = logging.getLogger(__name__)

REPORT = "study.json"


@dataclasses.dataclass
class StudyConfig:
    """The model, the routes and their drives, the localizer settings judged, the output."""

    checkpoint: str = setting("runs/demo/train/last.pt", "the model (make demo trains it)")
    routes: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4, 5])  # route seeds; 1: the demo's
    kidnapped: int = setting(11, "kidnapped drives per route, the jump spread over the route", low=0)
    off_map: int = setting(6, "drives per route leaving the map, at points spread over the route", low=0)
    town: TownConfig = dataclasses.field(default_factory=TownConfig)
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)  # the settings judged
    radius_m: float = setting(25.0, "metres from the ground truth that count as correct", low=0.001)
    out: str = setting("runs/study", "output folder (route_N/sweep.json per route, study.json)")
    reuse: bool = setting(False, "keep the drives and maps of an earlier run in out")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        for section in (self, self.town):
            check_fields(section)
        self.sequence.validate()
        if not self.routes or len(set(self.routes)) != len(self.routes):
            raise ConfigError(f"routes: name one or more distinct route seeds, got {self.routes}")


def study_route(cfg: StudyConfig, route: int) -> dict[str, Any]:
    """One route's drives and map, every drive through the sequence localizer; its row of figures."""
    out = Path(cfg.out) / f"route_{route}"
    mapping, query = mapping_and_query(cfg.town, route, out / "bags", cfg.reuse)
    bags = [query, *safety_drives(cfg.town, route, out / "bags", cfg.reuse, cfg.kidnapped, cfg.off_map)]
    map_dir = make_map(Path(cfg.checkpoint), mapping, out / "map", cfg.reuse)
    sweep = SweepConfig(bags=bags, map=str(map_dir), checkpoint=cfg.checkpoint, image_topic=IMAGE_TOPIC,
                        odometry_topic=ODOMETRY_TOPIC, radius_m=cfg.radius_m, device="cpu", sequence=cfg.sequence,
                        vary="agreement_evidence", values=[cfg.sequence.agreement_evidence], out=str(out))
    (row,) = run_sweep(sweep)["rows"]
    query_drive = row["drives"][0]  # a query drive that strays from its map is counted among the off-map drives
    return {"route": route, "query_availability": query_drive["availability"],
            "sweep": str(out / SWEEP_REPORT), **{k: v for k, v in row.items() if k not in ("value", "drives")}}


def study_text(routes: list[dict[str, Any]], lateral: dict[str, Any]) -> str:
    """One line per route, the wrong fixes of all routes, and the lateral term fitted on all of them."""
    lines = [f"route {r['route']}: query drive {pct(r['query_availability'])} % of frames with a fix; {row_text(r)}"
             for r in routes]
    wrong = sum(r["wrong_fixes"] for r in routes)
    drives = sum(r["drives_with_wrong_fix"] for r in routes)
    lines.append(f"all routes: {wrong} wrong fixes (beyond the radius) on {drives} drives; {lateral_text(lateral)}")
    return "\n".join(lines)


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Every route in turn; writes `<out>/study.json` and returns it."""
    cfg.validate()
    if not Path(cfg.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint: {cfg.checkpoint} does not exist (make demo trains it)")
    started = time.perf_counter()
    routes, seconds = [], {}
    for route in cfg.routes:
        t0 = time.perf_counter()
        routes.append(study_route(cfg, route))
        seconds[f"route_{route}"] = round(time.perf_counter() - t0, 1)
        log.info("route %d done in %.0f s", route, seconds[f"route_{route}"])
    lateral = lateral_summary(pool_lateral([r["lateral"] for r in routes]))
    report = {"tool": "dsformer-vpr study", "routes": routes, "lateral": lateral,
              "text": study_text(routes, lateral),
              "timings_s": {**seconds, "total": round(time.perf_counter() - started, 1)}, "config": to_dict(cfg)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / REPORT, json.dumps(report, indent=2, default=json_default) + "\n")
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `study` (any config field also through --set key=value, e.g. sequence.fix_mass=0.85)."""
    add_config_flags(parser, StudyConfig, ("checkpoint", "routes", "kidnapped", "off_map", "out", "reuse"))


def run(args: argparse.Namespace) -> int:
    """Run the study and print one line per route."""
    cfg = config_from_args(StudyConfig, args)
    report = run_study(cfg)
    print(report["text"])
    print(f"total {report['timings_s']['total'] / 60:.1f} min; report {Path(cfg.out) / REPORT}")
    return 0
