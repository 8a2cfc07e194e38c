"""The one way descriptors become a PlaceMap: the method that made them is recorded in the manifest.

build-map, eval's database cache and the demo's baselines all build maps here, so a map always carries the variant,
fingerprint and preprocessing of its method and is refused when searched with another one.
"""
from __future__ import annotations

import numpy as np

from dsformer_ros.inference.methods import DescriptorMethod
from dsformer_ros.maps.map_index import IndexConfig
from dsformer_ros.maps.placemap import MapError, PlaceMap, PlaceMetadata


def build_method_map(
    method: DescriptorMethod,
    descriptors: np.ndarray,
    metadata: PlaceMetadata,
    build_info: dict,
    index: IndexConfig | None = None,
    dtype: str = "float32",
) -> PlaceMap:
    """An in-memory PlaceMap of `descriptors` (rows in `metadata` order) made by `method`; `save` writes it."""
    if descriptors.ndim != 2 or descriptors.shape[1] != method.dim:
        raise MapError(f"descriptors of {method.name} must have shape (N, {method.dim}), got {descriptors.shape}")
    return PlaceMap.build(
        descriptors,
        metadata,
        model_variant=method.variant,
        checkpoint_sha256=method.fingerprint,
        preprocessing=method.preprocessing,
        build_info={**build_info, "method": method.name},
        index=index,
        dtype=dtype,
    )
