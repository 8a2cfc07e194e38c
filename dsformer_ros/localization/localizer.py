"""Localization against a reference map: model + map loaded and matched, then image -> candidates + fix.

This is the node's core without ROS: `Localizer.load(config)` refuses a map built with another model (variant,
descriptor dimension or checkpoint SHA-256 in the map's manifest) and warms the model up; `localize(rgb, stamp_ns)`
returns the ranked candidates, the accept/reject decision with its covariance, and the time spent in the model and
search. Two modes: `sequence` (the default: a Bayes filter over the map's places moved by odometry, see
`sequence`) and `single_frame` (each frame judged alone: score threshold, top-k agreement, temporal vote).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsformer_ros.common.config import ConfigError, from_dict
from dsformer_ros.common.devices import check_device_name
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.backends import BACKENDS, BackendError, load_backend
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.inference.methods import DescriptorMethod
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.inference.preprocess import PreprocessConfig
from dsformer_ros.localization.pose_estimate import Candidates, Decision, TemporalFilter, decide
from dsformer_ros.localization.odometry import OdometryConfig
from dsformer_ros.localization.sequence import SEQUENCE, SequenceConfig, SequenceLocalizer
from dsformer_ros.maps.placemap import MapError, MapMismatchError, PlaceMap
from dsformer_ros.maps.similarity import (
    SimilarityFitError,
    map_similarity,
    place_poses,
    position_noise_m,
    reference_rows,
)

log = logging.getLogger(__name__)

UINT32_MAX = 2**32 - 1


class LocalizerError(ValueError):
    """The checkpoint or map cannot be used (missing, corrupt, or not made for each other); the message says why."""


MODEL = "model and map"
ACCEPT = "when a fix is accepted (published on ~/pose)"
MODES = ("sequence", "single_frame")


@dataclass
class AcceptanceConfig:
    """When a frame's best candidate becomes a fix; each field is also the node parameter of that name."""

    score_threshold: float = setting(
        0.5, "Least cosine similarity of the best candidate.", low=-1.0, high=1.0, section=ACCEPT
    )
    agreement_radius_m: float = setting(
        10.0, "Top-k candidates within this distance (m) of the best one count as agreeing.",
        low=0.0, high=100000.0, section=ACCEPT,
    )
    min_agreeing: int = setting(
        2, "Agreeing candidates needed, the best one included (at most top_k; 1: no agreement check).",
        low=1, high=1000, section=ACCEPT,
    )
    temporal_window: int = setting(
        3,
        "Temporal consistency: the best candidate must lie within temporal_radius_m of at least half of the best "
        "candidates of the last temporal_window frames (0: off). ~/relocalize (std_srvs/Trigger) clears it.",
        low=0, high=1000, section=ACCEPT,
    )
    temporal_radius_m: float = setting(
        25.0, "Distance (m) within which recent frames count as agreeing; allow for the motion between frames.",
        low=0.001, high=1000000.0, section=ACCEPT,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)


@dataclass
class LocalizerConfig:
    """What the localizer loads and how it accepts fixes; each setting is also the node parameter of that name."""

    checkpoint: str = setting(
        "", "DSFormer checkpoint file (ours, or an official state_dict); for backends onnxruntime and tensorrt the "
        ".onnx written from it by dsformer-vpr export.", section=MODEL,
    )
    backend: str = setting(
        "torch", "Descriptor backend: torch (PyTorch, any device), onnxruntime (CPU, fp32 or an int8 export) or "
        "tensorrt (CUDA; set precision fp16 for fp16 engines, cached in engine_cache_dir). A missing package is an "
        "error, never a fall-back.", choices=BACKENDS, section=MODEL,
    )
    map_path: str = setting(
        "",
        "Reference map directory built with this very checkpoint (dsformer-vpr build-map); refused at configure "
        "when its manifest names another model variant, descriptor dimension or checkpoint SHA-256.",
        section=MODEL,
    )
    device: str = setting("auto", "Inference device: auto (CUDA when available), cpu, cuda or cuda:N.", section=MODEL)
    precision: str = setting(
        "fp32", "Inference precision (bf16 and fp16 only pay off on a GPU).", choices=PRECISIONS, section=MODEL
    )
    onnxruntime_threads: int = setting(
        0, "ONNX Runtime intra-op threads (0: the physical cores this process may use).", low=0, high=256,
        section=MODEL,
    )
    onnxruntime_spinning: bool = setting(
        False, "Let idle ONNX Runtime threads spin: a little lower latency on a dedicated CPU, stolen cores (and "
        "slower frames) when SLAM or planning share it.", section=MODEL,
    )
    engine_cache_dir: str = setting(
        "", "TensorRT engine cache ('': $XDG_CACHE_HOME/dsformer_ros/tensorrt); an engine is built once per model, "
        "GPU, TensorRT version and precision.", section=MODEL,
    )
    warmup_iterations: int = setting(
        2, "Model runs on a blank image at configure, so the first frame is not slow.", low=0, high=100, section=MODEL
    )
    verify_map_checksums: bool = setting(
        True, "Check the SHA-256 of every map file at configure (seconds per GB); off skips only the hashing: "
        "every descriptor, id, position, heading and stamp is checked either way.", section=MODEL
    )
    top_k: int = setting(5, "Candidates per frame in ~/candidates.", low=1, high=1000, section="output")
    mode: str = setting(
        "sequence",
        "sequence: a Bayes filter over the map's places, moved by odometry (odometry_topic) or its own speed estimate, "
        "publishes a fix when the belief is concentrated, with the belief's spread as covariance (settings below); "
        "single_frame: each frame judged alone (score_threshold, top-k agreement, temporal vote).",
        choices=MODES, section=ACCEPT,
    )
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    measurement_candidates: int = setting(
        50, "Mode sequence: places retrieved per frame for the filter's measurement (every other place gets a "
        "score below the last one's).", low=1, high=100000, section=SEQUENCE,
    )
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field (a checkpoint is checked where it is loaded)."""
        check_fields(self)
        self.acceptance.validate()
        self.sequence.validate()
        self.odometry.validate()
        if not self.map_path:
            raise ConfigError("map_path: a map directory is required")
        check_device_name(self.device)
        if self.acceptance.min_agreeing > self.top_k:
            raise ConfigError(f"min_agreeing: must lie in 1..top_k={self.top_k}, got {self.acceptance.min_agreeing}")


@dataclass
class LocalizationResult:
    """One frame's answer: ranked candidates, the decision (fix or reason), and timing in milliseconds."""

    candidates: Candidates
    decision: Decision
    model_ms: float
    search_ms: float


def _preprocess_config(place_map: PlaceMap) -> PreprocessConfig | None:
    """The preprocessing the map's descriptors were made with (None: the model's default)."""
    recorded = place_map.manifest.preprocessing
    if not recorded:
        return None
    try:
        return from_dict(PreprocessConfig, recorded)
    except ConfigError as exc:
        raise LocalizerError(f"the map's manifest preprocessing section is not understood: {exc}") from None


def _load_map(config: LocalizerConfig, identity: tuple[str, int, str], source: str) -> PlaceMap:
    """The map at config.map_path, refused unless built by the method of `identity` (variant, dim, fingerprint)."""
    variant, dim, fingerprint = identity
    if not Path(config.map_path).is_dir():
        raise LocalizerError(f"map_path: map {config.map_path} does not exist or is not a directory")
    try:
        place_map = PlaceMap.load(
            config.map_path,
            expect_variant=variant,
            expect_checkpoint_sha256=fingerprint,
            expect_dim=dim,
            verify_checksums=config.verify_map_checksums,
        )
    except MapMismatchError as exc:
        raise LocalizerError(
            f"map {config.map_path} does not fit {source} ({variant}, dim {dim}, sha256 {fingerprint}): {exc}"
        ) from None
    except MapError as exc:
        raise LocalizerError(f"map {config.map_path} cannot be loaded: {exc}") from None
    if len(place_map) < 2:
        raise LocalizerError(f"map {config.map_path} has {len(place_map)} place(s); localization needs at least 2")
    ids = np.asarray(place_map.metadata.place_id)
    if ids.min() < 0 or ids.max() > UINT32_MAX:
        raise LocalizerError(f"map {config.map_path}: place ids must fit in uint32 for PointCloud2 output")
    return place_map


class Localizer:
    """A descriptor method + map pair that turns one RGB image into ranked places and an optional fix."""

    def __init__(self, config: LocalizerConfig, method: DescriptorMethod, place_map: PlaceMap) -> None:
        self.config = config
        self.method = method
        self.place_map = place_map
        self.temporal = TemporalFilter(config.acceptance.temporal_window, config.acceptance.temporal_radius_m)
        self.floor_sigma_m = place_map.keyframe_spacing_m() / 2.0
        if not self.floor_sigma_m > 0:
            raise LocalizerError(
                f"map {self.config.map_path}: the median keyframe spacing is 0 m (places share positions); "
                "the covariance floor needs distinct positions"
            )
        self.sequence: SequenceLocalizer | None = None
        self._reference = np.zeros((0, place_map.dim), dtype=np.float32)
        if config.mode == "sequence":
            self.sequence = sequence_localizer(place_map, config.sequence, self.floor_sigma_m, config.odometry)
            self._reference = np.asarray(place_map.descriptors[reference_rows(len(place_map))], dtype=np.float32)

    @classmethod
    def load(cls, config: LocalizerConfig, method: DescriptorMethod | None = None) -> "Localizer":
        """Load the map (and the checkpoint, unless another `method` is given), check they belong together, warm up.

        The map must have been built with the same method: variant, descriptor dimension and fingerprint (the
        checkpoint's SHA-256 for the DSFormer) in its manifest must match.
        """
        config.validate()
        started = time.monotonic()
        backend = None
        if method is None:
            if not config.checkpoint:
                raise LocalizerError("checkpoint: a checkpoint file is required")
            try:
                backend = load_backend(config.backend, config.checkpoint, config.device, config.precision,
                                       config.onnxruntime_threads, config.onnxruntime_spinning, config.engine_cache_dir)
            except (ValueError, FileNotFoundError) as exc:  # CheckpointError, BackendError, ExportError, DeviceError
                raise LocalizerError(f"checkpoint: {exc}") from None
            identity = (backend.config.variant, backend.config.descriptor_dim, backend.checkpoint_sha256)
            source = f"checkpoint {config.checkpoint}"
        else:
            identity = (method.variant, method.dim, method.fingerprint)
            source = f"method {method.name}"
        place_map = _load_map(config, identity, source)
        if method is None:
            try:
                method = DescriptorExtractor(backend, preprocess_config=_preprocess_config(place_map), batch_size=1)
            except BackendError as exc:
                raise LocalizerError(
                    f"map {config.map_path} does not fit checkpoint {config.checkpoint}: {exc}"
                ) from None
        localizer = cls(config, method, place_map)
        localizer.warmup(config.warmup_iterations)
        log.info(
            "localizer ready in %.1f s: %s on %s (%s), map of %d places (keyframe spacing %.2f m)",
            time.monotonic() - started,
            method.variant,
            method.device,
            localizer.backend,
            len(place_map),
            2 * localizer.floor_sigma_m,
        )
        return localizer

    def warmup(self, iterations: int) -> None:
        """Run the model and the search a few times so the first real frame is not slow."""
        if iterations <= 0:
            return
        self.method.warmup(iterations)
        probe = np.zeros((1, self.place_map.dim), dtype=np.float32)
        probe[0, 0] = 1.0
        self.place_map.search(probe, self._search_k())

    def _search_k(self) -> int:
        """Places retrieved per frame: top_k, or more for the sequence filter's measurement."""
        k = self.config.top_k
        if self.sequence is not None:
            k = max(k, self.config.measurement_candidates)
        return min(k, len(self.place_map))

    @property
    def device(self) -> str:
        """The model's device as text."""
        return str(self.method.device)

    @property
    def backend(self) -> str:
        """What runs the model: torch, onnxruntime or tensorrt (a baseline method: its name)."""
        return getattr(self.method, "backend_name", self.method.name)

    def localize(self, rgb: np.ndarray, stamp_ns: int | None = None) -> LocalizationResult:
        """RGB uint8 (H, W, 3) taken at `stamp_ns` -> top-k candidates in rank order, the decision, model/search ms.

        The stamp matches the frame with odometry (sequence mode); None: unknown (ordered image sets).
        """
        t0 = time.perf_counter()
        descriptor = self.method.describe([rgb])
        t1 = time.perf_counter()
        return self.localize_descriptor(descriptor, stamp_ns, (t1 - t0) * 1000.0)

    def localize_descriptor(self, descriptor: np.ndarray, stamp_ns: int | None = None,
                            model_ms: float = 0.0) -> LocalizationResult:
        """The search and decision for one descriptor (1, D) (localize() without the model)."""
        t1 = time.perf_counter()
        hits = self.place_map.search(descriptor, self._search_k())
        k = min(self.config.top_k, len(self.place_map))
        rows = hits.rows[0][:k]
        valid = rows >= 0
        meta = self.place_map.metadata.take(rows[valid])
        candidates = Candidates(
            place_id=hits.place_ids[0][:k][valid],
            score=hits.scores[0][:k][valid],
            easting=np.asarray(meta.easting),
            northing=np.asarray(meta.northing),
            heading_deg=np.asarray(meta.heading_deg),
        )
        t2 = time.perf_counter()
        if self.sequence is not None:
            reference = float(np.median(self._reference @ np.asarray(descriptor, dtype=np.float32)[0]))
            outcome = self.sequence.update(stamp_ns, hits.rows[0], hits.scores[0], reference)
            decision = Decision(outcome.fix, outcome.reason, outcome.state)
            return LocalizationResult(candidates, decision, model_ms, (time.perf_counter() - t1) * 1000.0)
        decision = decide(
            candidates,
            score_threshold=self.config.acceptance.score_threshold,
            agreement_radius_m=self.config.acceptance.agreement_radius_m,
            min_agreeing=self.config.acceptance.min_agreeing,
            floor_sigma_m=self.floor_sigma_m,
            temporal=self.temporal,
        )
        return LocalizationResult(candidates, decision, model_ms, (t2 - t1) * 1000.0)

    def add_odometry(self, stamp_ns: int, x: float, y: float, yaw: float) -> str:
        """One odometry pose (its own frame) for the sequence filter; '' when used, else why it was ignored."""
        if self.sequence is None:
            return ""
        return self.sequence.add_odometry(stamp_ns, x, y, yaw)

    def reset_temporal(self) -> None:
        """Forget where the robot was (relocalization after it was moved): temporal vote and sequence belief."""
        self.temporal.reset()
        if self.sequence is not None:
            self.sequence.reset()


def sequence_localizer(place_map: PlaceMap, config: SequenceConfig, floor_sigma_m: float,
                       odometry: OdometryConfig | None = None) -> SequenceLocalizer:
    """The sequence filter over a map's places with the map's measurement model (fitted now if the map has none)."""
    try:
        model = map_similarity(place_map)
    except SimilarityFitError as exc:
        raise LocalizerError(f"sequence mode needs the map's similarity model: {exc}") from None
    xy, yaw = place_poses(place_map)
    noise = position_noise_m(xy, np.asarray(place_map.metadata.stamp_ns))
    return SequenceLocalizer(xy, yaw, np.asarray(place_map.metadata.place_id), model, config, floor_sigma_m, noise,
                             odometry)
