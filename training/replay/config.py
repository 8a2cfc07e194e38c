"""Configuration of `dsformer-vpr replay` (no CLI code here: the pipeline, the node driver and the CLI share it)."""
from __future__ import annotations

import dataclasses
from typing import Literal

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.methods import RawPixelsConfig
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.localization.localizer import AcceptanceConfig, LocalizerConfig

METHODS = ("dsformer", "raw_pixels")


@dataclasses.dataclass
class ReplayConfig:
    """Configuration of `replay`: inputs, topics, method, mode, metric settings, node-mode pacing and the output."""

    bag: str = setting("", "rosbag2 directory (or ROS 1 .bag) with images and NavSatFix")
    map: str = setting("", "map directory built with the same method and checkpoint (dsformer-vpr build-map)")
    checkpoint: str = setting("", "model checkpoint (method dsformer)")
    method: str = setting("dsformer", "descriptor method; the map must have been built with it", choices=METHODS)
    image_topic: str = setting("/camera/image_raw", "image topic (sensor_msgs/Image or CompressedImage)")
    gps_topic: str = setting("/gps/fix", "sensor_msgs/NavSatFix topic: the ground truth")
    mode: Literal["offline", "node"] = setting(
        "offline", "offline: the Localizer in this process; node: through the running ROS 2 node"
    )
    radius_m: float = setting(25.0, "metres from the bag's GPS that count as correct", low=0.001)
    recall_ns: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10])
    max_frames: int = setting(0, "replay only the first N frames (0: every frame)", low=0)
    rate: float = setting(0.0, "node mode: most frames per second published (0: as fast as answered)", low=0.0)
    frame_timeout_s: float = setting(60.0, "node mode: longest wait for one frame's answer", low=0.001)
    startup_timeout_s: float = setting(180.0, "node mode: longest wait for the node to load and answer", low=0.001)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    precision: str = setting("fp32", "inference precision", choices=PRECISIONS)
    threads: int = setting(0, "torch CPU threads of the node (node mode; 0: PyTorch's default)", low=0)
    acceptance: AcceptanceConfig = dataclasses.field(default_factory=AcceptanceConfig)
    raw_pixels: RawPixelsConfig = dataclasses.field(default_factory=RawPixelsConfig)
    max_gps_std_m: float = setting(10.0, "GPS fixes with a larger horizontal std are not ground truth", low=0.001)
    max_fix_gap_s: float = setting(1.5, "a frame needs a GPS fix this close in time on each side", low=0.001)
    heading_baseline_m: float = setting(2.0, "track length over which headings are measured", low=0.001)
    name: str = setting("", "label of this run in the report and figures ('' = the checkpoint's file name)")
    out: str = setting("runs/replay", "report folder (report.json, frames.npz, PNG figures)")
    figures: bool = setting(True, "write the PNG figures")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        required = ("bag", "map", "out") + (("checkpoint",) if self.method == "dsformer" else ())
        for name in required:
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        if self.mode == "node" and self.method != "dsformer":
            raise ConfigError(f"mode: the node runs the DSFormer only; method {self.method!r} replays offline")
        if not self.recall_ns or min(self.recall_ns) < 1:
            raise ConfigError(f"recall_ns: need positive N values, got {self.recall_ns}")

    @property
    def top_k(self) -> int:
        """Candidates kept per frame: enough for the largest Recall@N."""
        return max(self.recall_ns)

    def localizer_config(self) -> LocalizerConfig:
        """The localizer settings both modes run with (the node gets them as parameters)."""
        cfg = LocalizerConfig(checkpoint=self.checkpoint, map_path=self.map, device=self.device,
                              precision=self.precision, top_k=self.top_k, acceptance=self.acceptance)
        cfg.validate()
        return cfg
