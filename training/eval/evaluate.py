"""Recall@N evaluation of the DSFormer (and baselines) on a VPR data set, with a JSON report and figures.

Per method: database descriptors are built into a PlaceMap (cached on disk, keyed by the database file list, the
method's fingerprint and settings, and re-used on later runs), queries are described in batches, the map is searched
and Recall@N computed (queries without positives count as misses and are counted separately). The report holds
recalls, per-query top-k, extraction ms/image, search ms/query and map memory; figures are `recall_at_n.png` and,
for geo-tagged data, `queries_map.png` (else `queries_strip.png`).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.devices import check_device_name
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.backends import BACKENDS
from dsformer_ros.inference.extractor import DescriptorExtractor, load_extractor
from dsformer_ros.inference.methods import DescriptorMethod, RawPixels, RawPixelsConfig
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.localization.sequence import SequenceConfig
from dsformer_ros.maps.map_index import IndexConfig, apply_search_params, serialized_nbytes
from dsformer_ros.maps.method_map import build_method_map
from dsformer_ros.maps.placemap import MapError, PlaceMap, PlaceMetadata
from dsformer_ros.maps.similarity import attach_similarity
from dsformer_ros.model.loading import load_model
from training.eval import plots
from training.eval.baselines import BackboneGeM, BackboneGeMConfig
from training.eval.datasets import DatasetConfig, VPRDataset, open_dataset
from training.eval.recall import first_correct_rank, recall_at_n
from training.eval.sequence_eval import sequence_section

log = logging.getLogger(__name__)

METHODS = ("dsformer", "raw_pixels", "backbone_gem")
LOCALIZERS = ("single_frame", "sequence")
REPORT = "report.json"
RECALL_FIGURE = "recall_at_n.png"
MAP_FIGURE = "queries_map.png"
STRIP_FIGURE = "queries_strip.png"
# Data sets without one UTM zone still need valid map metadata: easting = database index, northing 0, zone 1N.
PLACEHOLDER_ZONE = (1, "N")
SINGLE_QUERY_SEARCHES = 100
# IndexConfig fields that change what is built (search-time knobs like ef_search/nprobe are applied after loading).
INDEX_BUILD_FIELDS = {
    "flat": ("kind", "storage"),
    "hnsw": ("kind", "storage", "hnsw_m", "ef_construction", "seed"),
    "ivf": ("kind", "storage", "ivf_nlist", "ivf_train_points_per_list", "ivf_kmeans_iters", "seed"),
}


@dataclasses.dataclass
class EvalConfig:
    """Configuration of `dsformer-vpr eval`.

    method: the main method; baselines: also run raw_pixels and backbone_gem into the same report and plot.
    cache_dir: where database PlaceMaps are cached (None: `<out>/cache`); use_cache false rebuilds every time.
    top_k: how many retrieved database indices per query the report keeps.
    """

    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    method: str = setting("dsformer", "main method", choices=METHODS)
    baselines: bool = setting(False, "also run raw_pixels and backbone_gem into the same report")
    checkpoint: str | None = setting(None, "checkpoint file; without one: the UNTRAINED variant, with a warning")
    variant: str | None = setting(None, "model variant when no checkpoint is given (default efficientnet_lite0)")
    backend: str = setting("torch", "descriptor backend of method dsformer: torch, onnxruntime (CPU) or tensorrt "
                           "(CUDA); the last two take the .onnx of dsformer-vpr export as checkpoint", choices=BACKENDS)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(16, "images per forward pass", low=1)
    precision: str = setting("fp32", "inference precision", choices=PRECISIONS)
    recall_ns: tuple[int, ...] = (1, 5, 10, 20)
    top_k: int = setting(10, "retrieved database indices per query kept in the report", low=1)
    out: str = setting("", "output folder (report.json, PNG figures, cache/)")
    cache_dir: str | None = setting(None, "database map cache folder (default OUT/cache)")
    use_cache: bool = setting(True, "re-use cached database maps (--no-use-cache rebuilds them)")
    figures: bool = True
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    raw_pixels: RawPixelsConfig = dataclasses.field(default_factory=RawPixelsConfig)
    localizer: str = setting("single_frame", "single_frame: Recall@N of each query alone; sequence: also feed the "
                             "queries in order (one traversal) through the sequence localizer", choices=LOCALIZERS)
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)
    backbone_gem: BackboneGeMConfig = dataclasses.field(default_factory=BackboneGeMConfig)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        check_device_name(self.device)
        if self.backend != "torch" and (self.baselines or self.method != "dsformer" or not self.checkpoint):
            raise ConfigError(f"backend: {self.backend} runs method dsformer from an exported .onnx checkpoint, "
                              "without baselines (backbone_gem needs the PyTorch checkpoint)")
        if not self.recall_ns or min(self.recall_ns) < 1:
            raise ConfigError(f"recall_ns: need positive integers, got {list(self.recall_ns)}")
        if not self.out:
            raise ConfigError("out: an output folder is required")

    def methods(self) -> list[str]:
        """The methods to run, main method first."""
        if not self.baselines:
            return [self.method]
        return [self.method] + [m for m in METHODS if m != self.method]


def build_methods(cfg: EvalConfig) -> list[DescriptorMethod]:
    """Instantiate the configured methods (the model is loaded once when a method needs it)."""
    names = cfg.methods()
    model = None
    if cfg.backend != "torch":
        return [load_extractor(cfg.backend, cfg.checkpoint, cfg.device, cfg.precision, cfg.batch_size)]
    if "dsformer" in names or "backbone_gem" in names:
        if not cfg.checkpoint:
            log.warning("no checkpoint given: evaluating an UNTRAINED %s (ImageNet backbone, random transformer); "
                        "pass --checkpoint to evaluate a trained model", cfg.variant or "efficientnet_lite0")
        model = load_model(cfg.checkpoint, variant=cfg.variant, device=cfg.device)
    methods: list[DescriptorMethod] = []
    for name in names:
        if name == "dsformer":
            methods.append(DescriptorExtractor(model, batch_size=cfg.batch_size, precision=cfg.precision))
        elif name == "raw_pixels":
            methods.append(RawPixels(cfg.raw_pixels))
        else:
            methods.append(BackboneGeM(model, cfg.backbone_gem, batch_size=cfg.batch_size))
    return methods


def dataset_metadata(dataset: VPRDataset) -> PlaceMetadata:
    """Map metadata of the database: UTM positions when geo-tagged in one zone, else the index as a placeholder
    (1 m per frame along x, heading east: an ordered traversal runs the way its frames are numbered)."""
    n = len(dataset.database_paths)
    heading = dataset.database_heading if dataset.database_heading is not None else np.full(n, np.nan)
    if dataset.geotagged:
        xy = dataset.database_utm
        zone = dataset.utm_zone
    else:
        xy = np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n)])
        zone = PLACEHOLDER_ZONE
        heading = np.full(n, 90.0)
    return PlaceMetadata(
        place_id=np.arange(n, dtype=np.int64),
        easting=xy[:, 0],
        northing=xy[:, 1],
        zone_number=np.full(n, zone[0], dtype=np.int64),
        zone_letter=np.full(n, zone[1]),
        lat=np.full(n, np.nan),
        lon=np.full(n, np.nan),
        heading_deg=heading,
        stamp_ns=np.zeros(n, dtype=np.int64),
        source=np.array([str(p) for p in dataset.database_paths]),
    )


def database_cache_key(dataset: VPRDataset, method: DescriptorMethod, index: IndexConfig) -> str:
    """SHA-256 over the database files (path, size, mtime), the method's fingerprint/settings and the index build config."""
    digest = hashlib.sha256()
    build = {name: getattr(index, name) for name in INDEX_BUILD_FIELDS[index.kind]}
    header = [method.name, method.variant, method.fingerprint, method.preprocessing, build]
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in dataset.database_paths:
        stat = Path(path).stat()
        digest.update(f"\n{Path(path).resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def database_map(
    dataset: VPRDataset, method: DescriptorMethod, cfg: EvalConfig, cache_dir: Path | None
) -> tuple[PlaceMap, str, float | None, Path | None]:
    """The database PlaceMap: loaded from `cache_dir` when a matching one is there, else described and built.

    Returns (map, "hit" | "miss" | "disabled", extraction ms/image or None on a hit, cache path or None).
    """
    key = database_cache_key(dataset, method, cfg.index)
    path = cache_dir / f"{method.name}-{key[:20]}" if cache_dir is not None else None
    if path is not None and path.is_dir():
        try:
            place_map = PlaceMap.load(
                path, expect_variant=method.variant, expect_checkpoint_sha256=method.fingerprint, expect_dim=method.dim
            )
        except MapError as exc:
            log.warning("cached database map %s is unusable (%s); rebuilding it", path, exc)
        else:
            if place_map.manifest.build.get("cache_key") == key:
                apply_search_params(place_map.index, cfg.index)
                if _fit_similarity_for_sequence(place_map, cfg):
                    place_map.write_manifest(path)
                log.info("%s: database map cache hit (%s)", method.name, path)
                return place_map, "hit", None, path
            log.warning("cached database map %s has another cache key; rebuilding it", path)
    start = time.perf_counter()
    descriptors = method.describe_paths(dataset.database_paths, progress=True)
    ms_per_image = 1000.0 * (time.perf_counter() - start) / len(dataset.database_paths)
    place_map = build_method_map(
        method,
        descriptors,
        dataset_metadata(dataset),
        {"tool": "dsformer-vpr eval", "dataset": dataset.name, "cache_key": key},
        index=cfg.index,
    )
    _fit_similarity_for_sequence(place_map, cfg)
    if path is None:
        return place_map, "disabled", ms_per_image, None
    place_map.save(path)
    log.info("%s: database map cache miss; built and saved %s", method.name, path)
    return place_map, "miss", ms_per_image, path


def _fit_similarity_for_sequence(place_map: PlaceMap, cfg: EvalConfig) -> bool:
    """`--localizer sequence` needs the map's measurement model: fit it into the manifest; True when newly fitted
    (a cached map then gets its manifest rewritten, so the next hit does not fit it again)."""
    if cfg.localizer == "sequence" and not place_map.manifest.similarity:
        return attach_similarity(place_map) is not None
    return False


def map_memory_bytes(place_map: PlaceMap) -> dict[str, int]:
    """Bytes of the map's parts: descriptors, FAISS index (serialised size) and metadata columns."""
    descriptors = int(np.asarray(place_map.descriptors).nbytes)
    index = serialized_nbytes(place_map.index)
    metadata = int(sum(np.asarray(getattr(place_map.metadata, c)).nbytes for c in PlaceMetadata.columns()))
    return {"descriptors": descriptors, "index": index, "metadata": metadata, "total": descriptors + index + metadata}


def evaluate_method(method: DescriptorMethod, dataset: VPRDataset, cfg: EvalConfig, cache_dir: Path | None) -> dict:
    """Describe, search and score one method; returns its section of the report."""
    place_map, cache_state, db_ms, cache_path = database_map(dataset, method, cfg, cache_dir)
    method.describe_paths(dataset.query_paths[:1])
    start = time.perf_counter()
    queries = method.describe_paths(dataset.query_paths, progress=True)
    query_ms = 1000.0 * (time.perf_counter() - start) / len(dataset.query_paths)
    k = max(max(cfg.recall_ns), cfg.top_k)
    start = time.perf_counter()
    result = place_map.search(queries, k)
    search_ms = 1000.0 * (time.perf_counter() - start) / len(queries)
    single = []
    for q in range(min(SINGLE_QUERY_SEARCHES, len(queries))):
        tic = time.perf_counter()
        place_map.search(queries[q : q + 1], k)
        single.append(1000.0 * (time.perf_counter() - tic))
    scores = recall_at_n(result.rows, dataset.positives, cfg.recall_ns)
    ranks = first_correct_rank(result.rows, dataset.positives)
    sequence = None
    if cfg.localizer == "sequence":
        sequence = sequence_section(place_map, queries, dataset.positives, cfg.sequence, tuple(cfg.recall_ns))
    top = min(cfg.top_k, k)
    per_query = [
        {
            "query": str(dataset.query_paths[q]),
            "top_k": [int(r) for r in result.rows[q, :top]],
            "scores": [round(float(s), 5) if np.isfinite(s) else None for s in result.scores[q, :top]],
            "num_positives": int(len(dataset.positives[q])),
            "first_correct_rank": int(ranks[q]),
        }
        for q in range(len(queries))
    ]
    log.info(
        "%s on %s: %s (%d of %d queries without positives)",
        method.name,
        dataset.name,
        ", ".join(f"R@{n} {100 * v:.1f}" for n, v in scores["recall"].items()),
        scores["queries_without_positives"],
        scores["queries"],
    )
    return {
        "variant": method.variant,
        "fingerprint": method.fingerprint,
        "descriptor_dim": method.dim,
        "preprocessing": method.preprocessing,
        "recall": {str(n): v for n, v in scores["recall"].items()},
        "recall_queries_with_positives": {str(n): v for n, v in scores["recall_queries_with_positives"].items()},
        "queries": scores["queries"],
        "queries_without_positives": scores["queries_without_positives"],
        "extraction_ms_per_image": {"queries": query_ms, "database": db_ms},
        "search_ms_per_query": search_ms,
        "search_ms_single_query_median": float(np.median(single)),
        "map_memory_bytes": map_memory_bytes(place_map),
        "database_cache": cache_state,
        "database_cache_path": str(cache_path) if cache_path is not None else None,
        "sequence": sequence,
        "correct_at_1": [bool(r == 0) for r in ranks],
        "per_query": per_query,
    }


def evaluate(cfg: EvalConfig) -> dict:
    """Run every configured method on the data set; write report.json and figures into `cfg.out`; return the report."""
    cfg.validate()
    dataset = open_dataset(cfg.dataset)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = None
    if cfg.use_cache:
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache"
    without = sum(1 for p in dataset.positives if len(p) == 0)
    log.info(
        "%s: %d database images, %d queries (%d without positives); %s",
        dataset.name,
        len(dataset.database_paths),
        len(dataset.query_paths),
        without,
        dataset.description,
    )
    results = {method.name: evaluate_method(method, dataset, cfg, cache_dir) for method in build_methods(cfg)}
    figures = _figures(dataset, results, out_dir) if cfg.figures else {}
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "name": dataset.name,
            "format": cfg.dataset.format,
            "root": cfg.dataset.root,
            "kind": dataset.kind,
            "ground_truth": dataset.description,
            "database_images": len(dataset.database_paths),
            "queries": len(dataset.query_paths),
            "queries_without_positives": without,
            "geotagged": dataset.geotagged,
        },
        "recall_ns": [int(n) for n in cfg.recall_ns],
        "methods": results,
        "figures": figures,
        "environment": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": cfg.device},
        "config": to_dict(cfg),
    }
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=1) + "\n")
    log.info("wrote %s", out_dir / REPORT)
    return report


def _figures(dataset: VPRDataset, results: dict, out_dir: Path) -> dict[str, str]:
    """recall_at_n.png for all methods, and the per-query map (geo-tagged) or strip (index ground truth)."""
    curves = {name: {int(n): v for n, v in r["recall"].items()} for name, r in results.items()}
    plots.plot_recall_curves(out_dir / RECALL_FIGURE, curves, title=f"Recall@N on {dataset.name}")
    correct = {name: np.array(r["correct_at_1"]) for name, r in results.items()}
    if dataset.geotagged:
        plots.plot_query_map(
            out_dir / MAP_FIGURE, dataset.database_utm, dataset.query_utm, correct, title=f"{dataset.name}: top-1"
        )
        return {"recall_at_n": RECALL_FIGURE, "queries_map": MAP_FIGURE}
    plots.plot_sequence_correctness(out_dir / STRIP_FIGURE, correct, title=f"{dataset.name}: top-1 per query")
    return {"recall_at_n": RECALL_FIGURE, "queries_strip": STRIP_FIGURE}
