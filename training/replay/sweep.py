"""`dsformer-vpr sweep`: how one sequence-localizer setting trades availability against safety, over a set of drives.

A gate setting (`alias_margin`, `agreement_evidence`, `keep_evidence`, `fix_mass`, ...) buys availability with
safety, and one drive cannot show the price: whether a kidnap or an unmapped street draws a wrong fix depends on
where it happens. The sweep replays every drive once per value, as `replay` does offline (same localizer, odometry
by stamp, same metrics), and counts per value: availability on the drives that stay on the map, precision and the
largest error there, kidnapped drives with a fix beyond the radius after the jump, and fixes published off the map.
Each bag's frames are described once: the model does not depend on the setting, so only the filter runs again.
Per value it also fits `lateral_sigma_m` on all the drives' fixes (`training.replay.calibration`): the smallest
value whose 95 % ellipses hold 95 % of them, beside what the configured value covers.
`<out>/sweep.json` keeps every drive's figures per value; `<out>/sweep.png` draws the trade-off.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.localization.localizer import Localizer
from dsformer_ros.localization.sequence import SequenceConfig
from training.replay.calibration import lateral_coverage, lateral_summary, pool_lateral
from training.replay.config import ReplayConfig
from training.replay.drives import describe_drive, drive_summary, localize_drive, summarise
from training.replay.replay import json_default, open_localizer, replay_metrics
from training.reports import num, pct, text_table

log = logging.getLogger(__name__)

REPORT = "sweep.json"
FIGURE = "sweep.png"
NUMERIC = (int, float, "int", "float")


@dataclasses.dataclass
class SweepConfig:
    """Configuration of `sweep`: the drives, map and model, the setting varied and its values, the output."""

    bags: list[str] = field(default_factory=list)  # drive logs with images, GPS and (for odometry) nav_msgs/Odometry
    map: str = setting("", "map directory built with the checkpoint (dsformer-vpr build-map)")
    checkpoint: str = setting("", "model checkpoint")
    vary: str = setting("alias_margin", "the sequence setting varied (a field of the localizer's sequence section)")
    values: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])  # the values it takes, in order
    image_topic: str = setting("/camera/image_raw", "image topic (sensor_msgs/Image or CompressedImage)")
    gps_topic: str = setting("/gps/fix", "sensor_msgs/NavSatFix topic: the ground truth")
    odometry_topic: str = setting("", "nav_msgs/Odometry topic fed to the localizer ('' = none: the filter estimates the speed)")
    radius_m: float = setting(25.0, "metres from the bag's GPS that count as correct", low=0.001)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    sequence: SequenceConfig = field(default_factory=SequenceConfig)  # every other setting (--set sequence.KEY=V)
    out: str = setting("runs/sweep", "report folder (sweep.json, sweep.png)")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        for name in ("map", "checkpoint", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        if not self.bags:
            raise ConfigError("bags: name at least one drive log")
        fields = {f.name: f for f in dataclasses.fields(SequenceConfig)}
        if self.vary not in fields or fields[self.vary].type not in NUMERIC:
            numeric = ", ".join(n for n, f in fields.items() if f.type in NUMERIC)
            raise ConfigError(f"vary: {self.vary!r} is not a numeric sequence setting; one of: {numeric}")
        if not self.values:
            raise ConfigError("values: give at least one value")
        for value in self.values:
            sequence_at(self, value).validate()

    def replay_config(self, bag: str) -> ReplayConfig:
        """The offline replay of one bag these settings stand for."""
        return ReplayConfig(bag=bag, map=self.map, checkpoint=self.checkpoint, image_topic=self.image_topic,
                            gps_topic=self.gps_topic, odometry_topic=self.odometry_topic, radius_m=self.radius_m,
                            device=self.device, localizer="sequence", sequence=self.sequence, out=self.out,
                            figures=False)


def sequence_at(cfg: SweepConfig, value: float) -> SequenceConfig:
    """The sequence settings with the varied one at `value` (cast to the field's type)."""
    kind = {f.name: f.type for f in dataclasses.fields(SequenceConfig)}[cfg.vary]
    return dataclasses.replace(cfg.sequence, **{cfg.vary: int(value) if kind in (int, "int") else float(value)})


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Describe every bag, run the sequence localizer over them once per value, write sweep.json and sweep.png."""
    cfg.validate()
    for name, path in [("map", cfg.map), ("checkpoint", cfg.checkpoint), *(("bags", bag) for bag in cfg.bags)]:
        if not Path(path).exists():
            raise FileNotFoundError(f"{name}: {path} does not exist")
    started = time.perf_counter()
    base = cfg.replay_config(cfg.bags[0])
    localizer = open_localizer(base)
    method, place_map = localizer.method, localizer.place_map
    described = [describe_drive(cfg.replay_config(bag), localizer) for bag in cfg.bags]
    rows = []
    for value in tqdm(cfg.values, desc=f"sweep {cfg.vary}", unit="value"):
        loc_cfg = dataclasses.replace(base, sequence=sequence_at(cfg, value)).localizer_config()
        drives, coverages = [], []
        for drive in described:
            results = localize_drive(drive, Localizer(loc_cfg, method, place_map), base.top_k)
            metrics = replay_metrics(results, place_map, cfg.radius_m, base.recall_ns)
            drives.append({"bag": drive.bag, **drive_summary(results, metrics, cfg.radius_m)})
            coverages.append(lateral_coverage(results, loc_cfg.sequence.lateral_sigma_m))
        rows.append({"value": value, **summarise(drives, cfg.radius_m),
                     "lateral": lateral_summary(pool_lateral(coverages)), "drives": drives})
        log.info("%s = %g: %s", cfg.vary, value, row_text(rows[-1]))
    report = {"tool": "dsformer-vpr sweep", "setting": cfg.vary, "radius_m": cfg.radius_m,
              "map_places": len(place_map), "checkpoint_sha256": method.fingerprint, "rows": rows,
              "timing_s": round(time.perf_counter() - started, 1), "config": to_dict(cfg)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_sweep(report, out / FIGURE)
    report["figure"] = FIGURE
    atomic_write_text(out / REPORT, json.dumps(report, indent=2, default=json_default) + "\n")
    return report


def row_text(row: dict[str, Any]) -> str:
    """One value's figures in a line."""
    return (f"availability {pct(row['availability'])} % over {row['on_map_drives']} on-map drives (precision "
            f"{pct(row['precision'])} %, largest error {num(row['max_error_m'])} m); "
            f"{row['kidnapped_with_fix_beyond_radius']} of {row['kidnapped_drives']} kidnapped drives with a fix beyond "
            f"the radius; {row['fixes_off_map']} fixes off the map in {row['off_map_drives_with_fix']} of "
            f"{row['off_map_drives']} off-map drives; {lateral_text(row['lateral'])}")


def lateral_text(lateral: dict[str, Any]) -> str:
    """The fitted lateral_sigma_m beside the configured one and what the configured one covers."""
    fitted = "none reaches 95 %" if lateral["fitted_m"] is None else f"{lateral['fitted_m']:.1f} m"
    return (f"lateral_sigma_m fitted on {lateral['fixes']} fixes: {fitted} (configured "
            f"{lateral['lateral_sigma_m']:g} m: {pct(lateral['inside_95_configured'])} % inside the 95 % ellipse)")


def sweep_table(report: dict[str, Any]) -> str:
    """The trade-off as a table, one row per value."""
    header = [report["setting"], "avail %", "prec %", "max err m", "kidnapped: fix > radius", "fixes off map",
              "off-map drives with a fix"]
    rows = [[f"{r['value']:g}", pct(r["availability"]), pct(r["precision"]), num(r["max_error_m"]),
             f"{r['kidnapped_with_fix_beyond_radius']} of {r['kidnapped_drives']}", str(r["fixes_off_map"]),
             f"{r['off_map_drives_with_fix']} of {r['off_map_drives']}"] for r in report["rows"]]
    return text_table(header, rows, left=0)


def plot_sweep(report: dict[str, Any], path: Path) -> None:
    """Availability against the setting, with the wrong fixes it buys (kidnaps, off the map) on a second axis."""
    from training.figures import plt, save_figure

    rows = report["rows"]
    x = [r["value"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    availability = [np.nan if r["availability"] is None else 100 * r["availability"] for r in rows]  # no on-map drive
    ax.plot(x, availability, "o-", color="tab:blue", label="availability (on map)")
    ax.set_xlabel(report["setting"])
    ax.set_ylabel("availability on the map (%)", color="tab:blue")
    ax.set_ylim(0, 100)
    twin = ax.twinx()
    twin.plot(x, [r["fixes_off_map"] for r in rows], "s--", color="tab:red", label="fixes off the map")
    twin.plot(x, [r["kidnapped_with_fix_beyond_radius"] for r in rows], "^:", color="tab:orange",
              label="kidnapped drives with a fix beyond the radius")
    twin.set_ylabel("wrong fixes", color="tab:red")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")
    ax.set_title(f"What {report['setting']} trades ({len(rows[0]['drives'])} drives)")
    save_figure(fig, path)


FLAGS = ("map", "checkpoint", "vary", "values", "image_topic", "gps_topic", "odometry_topic", "radius_m", "device",
         "out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sweep` (any config field also through --set key=value, e.g. sequence.fix_mass=0.85)."""
    add_config_flags(parser, SweepConfig, FLAGS, positional=("bags",))


def run(args: argparse.Namespace) -> int:
    """Run the sweep and print its table."""
    cfg = config_from_args(SweepConfig, args)
    report = run_sweep(cfg)
    print(sweep_table(report))
    print(f"report: {Path(cfg.out) / REPORT}, figure: {Path(cfg.out) / FIGURE}")
    return 0
