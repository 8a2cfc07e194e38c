"""The synthetic drives of the demo and the study: a procedural town, its training drives and, per route, a mapping
drive, a query drive and the drives that test safety (kidnapped, leaving the map)."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from dsformer_ros.common.params import setting
from training.synth.config import SynthConfig
from training.synth.drive import write_drive

log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image_raw"
ODOMETRY_TOPIC = SynthConfig.odometry_topic


@dataclasses.dataclass
class TownConfig:
    """The town and how its routes are driven: the demo and the study render the same drives from it."""

    seed: int = setting(0, "town seed")
    blocks: int = setting(4, "town size in blocks per side", low=1)
    width: int = setting(320, "rendered frame width", low=32)
    height: int = setting(240, "rendered frame height", low=32)
    route_length_m: float = setting(700.0, "length of each route (mapping and query drives)", low=1.0)
    map_condition: str = "day"
    map_fps: float = 4.0  # 8 m/s: 2 m between mapping frames
    query_condition: str = "dusk"
    query_lane_offset_m: float = -1.75  # the other lane (the mapping drive keeps +1.75 m)
    query_fps: float = 2.0


def render(town: TownConfig, reuse: bool, **fields: Any) -> str:
    """Render one drive of the town unless `reuse` and its output exists; returns what it wrote (bag or '@' folder)."""
    target = Path(fields.get("out") or fields["export_at"])
    if reuse and target.exists():
        log.info("reusing %s", target)
        return str(target)
    if target.exists():
        shutil.rmtree(target)
    synth = SynthConfig(seed=town.seed, blocks_x=town.blocks, blocks_y=town.blocks, width=town.width,
                        height=town.height, **fields)
    log.info("%s", write_drive(synth))
    return str(target)


def training_folders(town: TownConfig, conditions: list[str], route_seed: int, length_m: float, fps: float,
                     out: Path, reuse: bool) -> list[str]:
    """One '@' folder per condition, each a random route of its own (never the query's), lanes alternating."""
    return [render(town, reuse, route="random", route_seed=route_seed + 100 + k, condition=condition,
                   lane_offset_m=1.75 if k % 2 == 0 else -1.75, length_m=length_m, fps=fps, drive_seed=100 + k,
                   export_at=str(out / condition))
            for k, condition in enumerate(conditions)]


def query_fields(town: TownConfig, route_seed: int) -> dict[str, Any]:
    """The synth fields of a route's query drive (the kidnapped and off-map drives share them)."""
    return dict(route="random", route_seed=route_seed, condition=town.query_condition,
                lane_offset_m=town.query_lane_offset_m, length_m=town.route_length_m, fps=town.query_fps,
                drive_seed=2, start_time_s=1_700_003_600.0)


def mapping_and_query(town: TownConfig, route_seed: int, out: Path, reuse: bool) -> tuple[str, str]:
    """The route's mapping bag (day, one lane) and query bag (dusk, the other lane, drifting wheel odometry)."""
    mapping = render(town, reuse, route="random", route_seed=route_seed, condition=town.map_condition,
                     lane_offset_m=1.75, length_m=town.route_length_m, fps=town.map_fps, drive_seed=1,
                     out=str(out / f"mapping_{town.map_condition}"))
    query = render(town, reuse, **query_fields(town, route_seed), out=str(out / f"query_{town.query_condition}"))
    return mapping, query


def spread(length_m: float, count: int) -> list[int]:
    """`count` points (m) spread evenly over a route of `length_m`, its ends excluded."""
    return [round(length_m * (k + 1) / (count + 1)) for k in range(count)]


def safety_drives(town: TownConfig, route_seed: int, out: Path, reuse: bool, kidnapped: int,
                  off_map: int) -> list[str]:
    """`kidnapped` drives teleported at points spread over the route and `off_map` drives leaving it at points
    spread the same way (the query drive's lane, condition and odometry)."""
    fields = query_fields(town, route_seed)
    return ([render(town, reuse, **fields, kidnap_at_m=m, out=str(out / f"query_kidnapped_{m}m"))
             for m in spread(town.route_length_m, kidnapped)]
            + [render(town, reuse, **fields, off_map_after_m=m, out=str(out / f"query_off_map_{m}m"))
               for m in spread(town.route_length_m, off_map)])
