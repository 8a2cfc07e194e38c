"""The node's parameters, declared once: `NodeSettings` (ROS side) and `LocalizerConfig` (core) fields carry
type, default, description, bounds and choices; declaration, validation and `config/vpr.yaml` follow from them.
"""
from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import yaml

from dsformer_ros.common.config import ConfigError, from_dict
from dsformer_ros.common.params import Spec, check_fields, setting, specs
from dsformer_ros.inference.image_codec import MAX_PIXELS
from dsformer_ros.localization.localizer import ACCEPT, MODEL, AcceptanceConfig, LocalizerConfig
from dsformer_ros.localization.odometry import OdometryConfig
from dsformer_ros.localization.sequence import SEQUENCE, SequenceConfig
from dsformer_ros.ros.frame_decoder import DECODERS

if TYPE_CHECKING:
    from rclpy.node import Node

INPUT_TYPES = ("raw", "compressed")
INPUT = "input"
OUTPUT = "output"
DIAGNOSTICS = "diagnostics (/diagnostics)"
# Sections of the parameter file, in order ("" holds the settings that stand before every section).
SECTIONS = ("", MODEL, INPUT, OUTPUT, ACCEPT, SEQUENCE, DIAGNOSTICS)


@dataclass
class NodeSettings:
    """The node's ROS-side settings (the localizer's are in LocalizerConfig); names are parameter names."""

    autostart: bool = setting(
        True, "Configure and activate at start-up. Set false to drive the lifecycle yourself (the launch file does)."
    )
    torch_threads: int = setting(
        0, "PyTorch CPU threads (0: PyTorch's default, all cores).", low=0, high=256, section=MODEL
    )
    input_type: str = setting(
        "raw",
        "Message type on image_topic: raw (sensor_msgs/Image: rgb8, bgr8, rgba8, bgra8, mono8) or compressed "
        "(sensor_msgs/CompressedImage: jpeg, png). Subscribed with sensor-data QoS.",
        choices=INPUT_TYPES,
        section=INPUT,
    )
    image_topic: str = setting("/camera/image_raw", "Camera topic.", section=INPUT)
    odometry_topic: str = setting(
        "",
        "nav_msgs/Odometry topic (wheel odometry or VIO, in its own drifting frame) used as relative motion between "
        "frames by mode sequence; matched to frames by stamp. Empty: none (the filter estimates the speed from the "
        "frames, up to max_speed_mps).",
        section=INPUT,
    )
    image_decoder: str = setting(
        "builtin",
        "Image conversion: builtin (the tested default) or cv_bridge (must be installed). Both refuse malformed "
        "messages (encoding, size, step, data length, JPEG/PNG markers) the same way before converting.",
        choices=DECODERS, section=INPUT,
    )
    max_image_pixels: int = setting(
        MAX_PIXELS,
        "Largest image (width x height) accepted; larger ones are rejected from their header, before decoding, "
        "so a hostile or broken message cannot exhaust memory.",
        low=1, high=1_000_000_000, section=INPUT,
    )
    max_rate_hz: float = setting(
        0.0,
        "Most frames per second to process, by the node clock (honours use_sim_time); 0: as fast as the model runs. "
        "Frames beyond it, and frames that arrive while the model is busy, are dropped (the newest one is kept).",
        low=0.0, high=1000.0, section=INPUT,
    )
    frame_id: str = setting(
        "utm", "Frame of ~/candidates, ~/pose and ~/markers: UTM easting/northing (metres) of the map's zone.",
        section=OUTPUT,
    )
    publish_markers: bool = setting(
        True, "Publish ~/markers (spheres with rank, place id and score labels) for RViz.", section=OUTPUT
    )
    diagnostics_period_s: float = setting(
        1.0, "Period (s) of the diagnostics messages.", low=0.01, high=3600.0, section=DIAGNOSTICS
    )
    no_fix_warn_s: float = setting(
        10.0, "Level WARN when no fix was accepted for this many seconds (0: never).", low=0.0, high=86400.0,
        section=DIAGNOSTICS,
    )
    latency_window: int = setting(
        100, "Frames over which the latency percentiles (p50, p95) are computed.", low=1, high=100000,
        section=DIAGNOSTICS,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)
        for name in ("image_topic", "frame_id"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: must not be empty")


# The node's settings objects; their declared fields together are the node's parameters (names are unique).
GROUPS = (NodeSettings, LocalizerConfig, AcceptanceConfig, SequenceConfig, OdometryConfig)
PARAMETERS: tuple[Spec, ...] = tuple(spec for group in GROUPS for spec in specs(group))


def parameter_defaults() -> dict[str, Any]:
    """Every parameter's default value."""
    return {spec.name: spec.default for spec in PARAMETERS}


def _descriptor(spec: Spec) -> Any:
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    descriptor = ParameterDescriptor(description=spec.description)
    bounded = spec.low is not None and spec.high is not None
    if bounded and isinstance(spec.default, float):
        descriptor.floating_point_range = [
            FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
        ]
    elif bounded:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    if spec.choices:
        descriptor.additional_constraints = spec.range_text()
    return descriptor


def declare_parameters(node: "Node") -> None:
    """Declare every parameter with its description and range (values outside a range are refused by rclpy)."""
    for spec in PARAMETERS:
        node.declare_parameter(spec.name, spec.default, _descriptor(spec))


# Parameters that ROS itself may set on any node (rclpy declares use_sim_time; QoS overrides are per topic).
ROS_PARAMETER_PREFIXES = ("qos_overrides.",)


def unknown_parameters_message(given: Iterable[str], known: Iterable[str]) -> str | None:
    """None when every given name is known; else one line naming each unknown one and the nearest known name."""
    known = sorted(set(known))
    unknown = sorted(n for n in set(given) - set(known) if not n.startswith(ROS_PARAMETER_PREFIXES))
    if not unknown:
        return None
    parts = []
    for name in unknown:
        nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {nearest[0]}?)" if nearest else name)
    return f"unknown parameter(s) {', '.join(parts)}; see dsformer-vpr node --print-params-file for the known ones"


def check_overrides(node: "Node") -> None:
    """Raise ConfigError when the params files or -p overrides given to this node name parameters it does not have."""
    # rclpy keeps every override addressed to this node (its own section and /**) here, declared or not.
    given = node._parameter_overrides.keys()
    message = unknown_parameters_message(given, node.list_parameters([], 0).names)
    if message:
        raise ConfigError(message)


def read_settings(node: "Node") -> tuple[NodeSettings, LocalizerConfig]:
    """The current parameter values as validated settings; ConfigError names the bad or unknown parameter."""
    check_overrides(node)
    values = {spec.name: node.get_parameter(spec.name).value for spec in PARAMETERS}
    node_settings, localizer, acceptance, sequence, odometry = (
        {spec.name: values[spec.name] for spec in specs(group)} for group in GROUPS
    )
    settings = from_dict(NodeSettings, node_settings)
    config = from_dict(LocalizerConfig, {**localizer, "acceptance": acceptance, "sequence": sequence,
                                         "odometry": odometry})
    return settings, config


HEADER = """\
# Parameters of the DSFormer VPR node (dsformer_ros/ros/parameters.py; regenerate the comments with
#   dsformer-vpr node --print-params-file). Use with
#   vpr_node --ros-args --params-file config/vpr.yaml
#   dsformer-vpr node --params-file config/vpr.yaml [--set-param name:=value]
#   ros2 launch dsformer_ros vpr.launch.py params_file:=config/vpr.yaml
# Every parameter is listed; a wrong type or a value outside its range stops the node with a message naming it,
# an unknown (misspelled) name fails configure naming the nearest known one.
# Values are read at configure: change them, then cleanup + configure (or restart) for them to take effect.
/**:
  ros__parameters:
"""


def render_params_file(values: dict[str, Any] | None = None) -> str:
    """The commented parameter file: every parameter in its section with its description and range."""
    values = {**parameter_defaults(), **(values or {})}
    unknown = sorted(set(values) - set(parameter_defaults()))
    if unknown:
        raise ConfigError(f"unknown parameter(s): {', '.join(unknown)}")
    lines = [HEADER.rstrip("\n")]
    for section in SECTIONS:
        members = [spec for spec in PARAMETERS if spec.section == section]
        if section:
            lines += ["", f"    # --- {section} " + "-" * max(3, 92 - len(section))]
        for spec in members:
            rng = spec.range_text()
            text = spec.description + (f" [{rng}]" if rng else "")
            lines += textwrap.wrap(text, 110, initial_indent="    # ", subsequent_indent="    # ")
            value = yaml.safe_dump(values[spec.name], default_flow_style=True).strip().removesuffix("...").strip()
            if isinstance(values[spec.name], str):
                value = '"' + values[spec.name].replace('"', '\\"') + '"'
            lines.append(f"    {spec.name}: {value}")
    return "\n".join(lines) + "\n"
