"""Configuration of `dsformer-vpr demo`: the town, the training run, and the goals the demo checks."""
from __future__ import annotations

import dataclasses
import json

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from training.demo.drives import TownConfig


@dataclasses.dataclass
class Goals:
    """What the demo's query drive must show; a miss makes `make demo` exit non-zero."""

    min_availability: float = setting(0.8, "sequence localizer, through the node: share of frames with a fix",
                                      low=0.0, high=1.0)
    max_error_m: float = setting(25.0, "no fix farther than this from the ground truth (a wrong fix)", low=0.0)
    min_inside_95: float = setting(0.9, "share of the node's fixes inside their own 95 % ellipse", low=0.0, high=1.0)


@dataclasses.dataclass
class DemoConfig:
    """Sizes and seeds of the demo (the defaults: the timed `make demo`; `--small`: the test's)."""

    out: str = setting("runs/demo", "output folder")
    train_config: str = ""  # base training config; "" = training/configs/lite0_cpu.yaml
    seed: int = setting(0, "training seed")
    town: TownConfig = dataclasses.field(default_factory=TownConfig)
    route_seed: int = 1  # the route of the mapping and query drives
    # Model input (height, width) at the frames' 4:3 aspect (see docs/performance.md for what size and training
    # length buy in recall).
    image_size: list[int] = dataclasses.field(default_factory=lambda: [144, 192])
    train_conditions: list[str] = dataclasses.field(default_factory=lambda: ["day", "dusk", "night", "fog"])
    train_fps: float = 4.0  # 8 m/s: one training frame every 2 m along every street
    train_length_m: float = 3000.0  # per condition: a random route (other than the query's), streets both ways
    iterations: int = setting(400, "training iterations in total", low=1)
    epochs: int = setting(4, "training epochs", low=1)
    batch_size: int = 16
    # Training data for a forward-looking camera on streets: EigenPlaces' grid with one spatial group, trained on
    # its frontal view (group 1) only: lateral classes have no frames facing their focal point.
    train_overrides: list[str] = dataclasses.field(default_factory=lambda: [
        "data.kind=perspective_at", "data.partition.method=grid", "data.partition.strip_width_m=15.0",
        "data.partition.groups_per_direction=1", "data.partition.min_images_per_class=4",
        "data.min_frames_per_class=4", "data.heading_tolerance_deg=45.0", "optim.groups=[1]",
    ])
    threads: int = setting(2, "torch CPU threads of this process", low=1)
    radius_m: float = setting(25.0, "metres from the ground truth that count as correct", low=0.001)
    recall_ns: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10])
    goals: Goals = dataclasses.field(default_factory=Goals)
    reuse: bool = setting(False, "keep finished steps of an earlier run in out (drives, checkpoint, maps)")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        for section in (self, self.town, self.goals):
            check_fields(section)
        if self.iterations < self.epochs:
            raise ConfigError(f"iterations: need at least one per epoch ({self.epochs}), got {self.iterations}")
        if not self.train_conditions:
            raise ConfigError("train_conditions: name at least one condition")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ConfigError(f"image_size: (height, width), each at least 32 pixels, got {self.image_size}")
        if not self.recall_ns or min(self.recall_ns) < 1:
            raise ConfigError(f"recall_ns: need positive N values, got {self.recall_ns}")


def small_overrides() -> list[str]:
    """The test's smaller pipeline as `key=value` overrides: a 3x3-block town, short drives, fewer iterations,
    and the goals it meets."""
    preset = {"town.blocks": 3, "town.width": 192, "town.height": 144, "town.route_length_m": 300.0,
              "image_size": [128, 128], "train_conditions": ["day", "dusk", "night"], "train_length_m": 1500.0,
              "iterations": 120, "epochs": 2, "goals.min_availability": 0.4, "goals.min_inside_95": 0.85}
    return [f"{k}={json.dumps(v)}" for k, v in preset.items()]
