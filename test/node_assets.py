"""A checkpoint and a small map that belong together, and parameter files for the node, made inside the suite.
`drive_map` makes the same pair from a synthetic drive, for the replay tests.

The map holds 6 places built from generated images with the untrained EfficientNet-Lite0 DSFormer (no ../shared
data needed); the tests that use it are about starting, stopping and configuring the node, not about recall.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

PLACES = 6
IMAGE_SHAPE = (96, 128, 3)


def generated_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Distinct RGB uint8 images: smooth colour gradients with a random phase each."""
    rng = np.random.default_rng(seed)
    height, width, _ = IMAGE_SHAPE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    images = []
    for _ in range(count):
        phase, fx, fy = rng.uniform(0, 2 * np.pi), rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2)
        channels = [np.sin(fx * x + fy * y + phase + k) for k in range(3)]
        images.append(((np.stack(channels, axis=-1) + 1.0) * 127.5).astype(np.uint8))
    return images


def line_metadata(place_id: np.ndarray, easting: np.ndarray, northing: float, source: str):
    """PlaceMetadata of places along one east-west street in UTM 32U, heading east, one second apart."""
    from dsformer_ros.maps.placemap import PlaceMetadata

    n = len(place_id)
    return PlaceMetadata(
        place_id=place_id,
        easting=np.asarray(easting, dtype=np.float64),
        northing=np.full(n, northing),
        zone_number=np.full(n, 32),
        zone_letter=np.array(["U"] * n),
        lat=np.full(n, 45.1),
        lon=np.full(n, 9.0),
        heading_deg=np.full(n, 90.0),
        stamp_ns=place_id * 1_000_000_000,
        source=np.array([source] * n),
    )


def make_checkpoint_and_map(out: Path) -> dict[str, Path]:
    """model.pt and map/ in `out` (6 places 2 m apart along easting); returns their paths."""
    from dsformer_ros.inference.extractor import DescriptorExtractor
    from dsformer_ros.maps.placemap import PlaceMap
    from dsformer_ros.model.checkpoint import save_checkpoint
    from dsformer_ros.model.loading import load_model

    out.mkdir(parents=True, exist_ok=True)
    sha = save_checkpoint(out / "model.pt", load_model(device="cpu"), {"source": "untrained, test suite"})
    model = load_model(out / "model.pt", device="cpu")
    index = np.arange(PLACES)
    metadata = line_metadata(index, 500_000.0 + 2.0 * index, 5_000_000.0, "generated")
    descriptors = DescriptorExtractor(model).describe(generated_images(PLACES))
    PlaceMap.build(
        descriptors, metadata, model_variant=model.config.variant, checkpoint_sha256=sha, preprocessing={},
        build_info={"source": "test suite"},
    ).save(out / "map")
    return {"checkpoint": out / "model.pt", "map_path": out / "map"}


def drive_map(mapping_bag: Path, out: Path) -> dict[str, Path]:
    """An untrained EfficientNet-Lite0 DSFormer at 64 px (seed 0) saved as out/untrained.pt, and the map of the
    drive `mapping_bag` built with it every 2 m in out/map; returns their paths."""
    import dataclasses

    import torch

    from dsformer_ros.model.checkpoint import save_checkpoint
    from dsformer_ros.model.dsformer import build_model, preset
    from dsformer_ros.model.pretrained import init_backbone
    from training.maps.build_map import BuildMapConfig, build_map

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(preset("efficientnet_lite0"), image_size=(64, 64)))
    init_backbone(model)
    checkpoint = out / "untrained.pt"
    save_checkpoint(checkpoint, model.eval(), {"source": "test"})
    build_map(BuildMapConfig(input=str(mapping_bag), checkpoint=str(checkpoint), device="cpu", spacing_m=2.0,
                             out=str(out / "map")))
    return {"checkpoint": checkpoint, "map": out / "map"}


def write_params(path: Path, section: str = "/**", **values: Any) -> Path:
    """A minimal parameter file: only the given values, in `section` (a node name or /**).

    The 6-place map is too small for the sequence localizer's fitted similarity model (it needs distant place
    pairs), so these files choose mode single_frame unless told otherwise.
    """
    values.setdefault("mode", "single_frame")
    params = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    path.write_text(yaml.safe_dump({section: {"ros__parameters": params}}))
    return path
