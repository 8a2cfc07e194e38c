"""FAISS index construction for place maps: exact inner product by default, HNSW and IVF for large maps.

Defaults (measured with `dsformer-vpr bench-map` on 2 cores, clustered 512-d unit vectors, see training/bench_map.py):
- `flat` / fp32 is exact and the default; it is fast enough up to ~100k places (~2 KB per place).
- for ~1M places use `ivf` with fp16 storage and the automatic list count (4096 lists at 1M, nprobe 16): recall@10
  1.0 vs exact, ~1040 B per place (fp16 codes + 8-byte ids), a few ms per query at batch 1; k-means training makes
  the build take minutes at 1M.
- `hnsw` with fp16 storage and M=16 fits 1.2 KB per place (~1170 B) but reaches only ~0.97 recall@10 at 100k on
  clustered data; M=32 reaches 0.99 but needs ~1300 B per place and builds slowly on 2 cores.
- `sq8` storage quarters memory but its rounding reorders near-ties (~0.97 recall@10 at 1M on clustered data).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal

import faiss
import numpy as np

from dsformer_ros.common.config import ConfigError

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
Storage = Literal["fp32", "fp16", "sq8"]

_SQ_TYPES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


@dataclasses.dataclass
class IndexConfig:
    """How a map's FAISS index is built and searched (all inner product on L2-normalised descriptors).

    kind: "flat" (exact, default), "hnsw" (graph) or "ivf" (inverted lists).
    storage: vector codes in the index: "fp32" (exact values), "fp16" (half the memory, scores within ~1e-5) or
    "sq8" (8-bit scalar quantiser, a quarter of the memory, scores within ~1e-3).
    ivf_nlist: number of lists; 0 picks one from the map size (see `resolved_nlist`).
    """

    kind: IndexKind = "flat"
    storage: Storage = "fp32"
    hnsw_m: int = 16
    ef_construction: int = 40
    ef_search: int = 128
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    ivf_train_points_per_list: int = 40
    ivf_kmeans_iters: int = 10
    seed: int = 1234

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if self.kind not in ("flat", "hnsw", "ivf"):
            raise ConfigError(f"index.kind: {self.kind!r} is not one of 'flat', 'hnsw', 'ivf'")
        if self.storage not in ("fp32", "fp16", "sq8"):
            raise ConfigError(f"index.storage: {self.storage!r} is not one of 'fp32', 'fp16', 'sq8'")
        for name in ("hnsw_m", "ef_construction", "ef_search", "ivf_nprobe", "ivf_kmeans_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index.{name}: must be >= 1, got {getattr(self, name)}")
        if self.ivf_nlist < 0:
            raise ConfigError(f"index.ivf_nlist: must be >= 0 (0 = automatic), got {self.ivf_nlist}")
        if self.ivf_train_points_per_list < 39:
            raise ConfigError(
                f"index.ivf_train_points_per_list: must be >= 39 (k-means needs it), got {self.ivf_train_points_per_list}"
            )

    def resolved_nlist(self, count: int) -> int:
        """IVF list count: `ivf_nlist`, or about 4*sqrt(count) as a power of two, capped so each list has >= 39 points."""
        if self.ivf_nlist:
            return self.ivf_nlist
        target = 4.0 * math.sqrt(max(count, 1))
        nlist = 2 ** max(0, round(math.log2(target)))
        return int(max(1, min(nlist, count // 39)))


def _metric() -> int:
    return faiss.METRIC_INNER_PRODUCT


def _flat(dim: int, storage: str) -> faiss.Index:
    if storage == "fp32":
        return faiss.IndexFlatIP(dim)
    return faiss.IndexScalarQuantizer(dim, _SQ_TYPES[storage], _metric())


def _hnsw(dim: int, config: IndexConfig) -> faiss.Index:
    if config.storage == "fp32":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, _metric())
    else:
        index = faiss.IndexHNSWSQ(dim, _SQ_TYPES[config.storage], config.hnsw_m, _metric())
    index.hnsw.efConstruction = config.ef_construction
    return index


def _ivf(dim: int, nlist: int, config: IndexConfig) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(dim)
    if config.storage == "fp32":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, _metric())
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, _SQ_TYPES[config.storage], _metric())
    index.own_fields = True
    quantizer.this.disown()
    index.cp.niter = config.ivf_kmeans_iters
    index.cp.seed = config.seed
    return index


def build_index(vectors: np.ndarray, config: IndexConfig, add_chunk: int = 65536) -> faiss.Index:
    """Build the index for `vectors` (N, D) float32 with ids 0..N-1 (the map's row numbers), then set search params."""
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise ValueError(f"index vectors must be a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
    count, dim = vectors.shape
    if count == 0:
        raise ValueError("cannot build an index over zero places")
    config.validate()
    if config.kind == "flat":
        index = _flat(dim, config.storage)
    elif config.kind == "hnsw":
        index = _hnsw(dim, config)
    else:
        index = _ivf(dim, config.resolved_nlist(count), config)
    if not index.is_trained:
        _train(index, vectors, config)
    for start in range(0, count, add_chunk):
        index.add(np.ascontiguousarray(vectors[start : start + add_chunk], dtype=np.float32))
    apply_search_params(index, config)
    log.info("built %s/%s index over %d places (dim %d)", config.kind, config.storage, count, dim)
    return index


def _train(index: faiss.Index, vectors: np.ndarray, config: IndexConfig) -> None:
    """Train quantisers on a seeded random sample (IVF: `ivf_train_points_per_list` points per list)."""
    count = vectors.shape[0]
    if config.kind == "ivf":
        sample_size = min(count, faiss.extract_index_ivf(index).nlist * config.ivf_train_points_per_list)
    else:
        sample_size = min(count, 65536)
    rows = np.sort(np.random.default_rng(config.seed).choice(count, size=sample_size, replace=False))
    index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))


def apply_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Set the search-time knobs (HNSW efSearch, IVF nprobe) from `config` on a built or loaded index."""
    if config.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = config.ef_search
    elif config.kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(config.ivf_nprobe, ivf.nlist)


def index_kind_matches(index: faiss.Index, config: IndexConfig) -> bool:
    """Whether a loaded index object is of the kind and storage the manifest says."""
    concrete = faiss.downcast_index(index)
    expected = {
        ("flat", "fp32"): faiss.IndexFlat,
        ("flat", "fp16"): faiss.IndexScalarQuantizer,
        ("flat", "sq8"): faiss.IndexScalarQuantizer,
        ("hnsw", "fp32"): faiss.IndexHNSWFlat,
        ("hnsw", "fp16"): faiss.IndexHNSWSQ,
        ("hnsw", "sq8"): faiss.IndexHNSWSQ,
        ("ivf", "fp32"): faiss.IndexIVFFlat,
        ("ivf", "fp16"): faiss.IndexIVFScalarQuantizer,
        ("ivf", "sq8"): faiss.IndexIVFScalarQuantizer,
    }[(config.kind, config.storage)]
    return isinstance(concrete, expected)


def serialized_nbytes(index: faiss.Index) -> int:
    """Size of the index as written by faiss (codes, ids, graph links): a close proxy for its resident memory."""
    return int(faiss.serialize_index(index).nbytes)
