"""`bench-map`: build time, ms per query (batch 1 and 64), bytes per place and recall@k of map indexes vs exact search.

Data: clustered random unit vectors (seeded): size / `points_per_cluster` random unit centres (4000 at 1M), each point
a centre plus isotropic Gaussian noise of norm `noise`, normalised; queries are fresh draws from the same mixture.
Bytes per place: growth of resident memory (VmRSS) of a fresh process while faiss reads the written index file,
divided by the place count (the file size per place is reported too). Each size also times the meaning check every
map load runs on all descriptors (`dsformer_ros.maps.validate.check_descriptors`), stored as fp32 and as fp16.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.common.params import setting
from dsformer_ros.maps.map_index import IndexConfig, apply_search_params, build_index
from dsformer_ros.maps.validate import check_descriptors

log = logging.getLogger(__name__)


@dataclasses.dataclass
class BenchMapConfig:
    """What to benchmark: map sizes, data shape, indexes ("kind/storage" with IndexConfig defaults) and timing."""

    sizes: list[int] = dataclasses.field(default_factory=lambda: [10_000, 100_000, 1_000_000])  # map sizes
    dim: int = 512
    points_per_cluster: int = 250
    noise: float = 1.0
    k: int = 10
    queries: int = 256
    batch1_queries: int = 100
    exact_batch1_queries: int = 10
    indexes: list[str] = dataclasses.field(default_factory=lambda: ["flat/fp32", "flat/fp16", "hnsw/fp16", "ivf/fp16"])
    hnsw_max_places: int = 200_000
    index_params: dict = dataclasses.field(default_factory=dict)
    threads: int = setting(2, "faiss/torch CPU threads", low=1)
    seed: int = 0
    out: str = setting("bench_map.json", "JSON file for the results")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if not self.sizes or min(self.sizes) < 2:
            raise ConfigError(f"sizes: need at least one size >= 2, got {self.sizes}")
        for name in ("dim", "points_per_cluster", "k", "queries", "batch1_queries", "exact_batch1_queries", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.noise < 0:
            raise ConfigError(f"noise: must be >= 0, got {self.noise}")
        for spec in self.indexes:
            _index_config(spec, self.index_params)


def _index_config(spec: str, params: dict) -> IndexConfig:
    """IndexConfig for "kind/storage" plus shared parameter overrides."""
    kind, _, storage = spec.partition("/")
    try:
        return from_dict(IndexConfig, {**params, "kind": kind, "storage": storage or "fp32"})
    except ConfigError as exc:
        raise ConfigError(f"indexes: {spec!r}: {exc}") from None


def clustered_unit_vectors(
    rng: np.random.Generator, centres: np.ndarray, count: int, noise: float, chunk: int = 65536
) -> np.ndarray:
    """`count` points: a random centre plus Gaussian noise of expected norm `noise`, L2-normalised, float32."""
    dim = centres.shape[1]
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        x = centres[rng.integers(0, centres.shape[0], n)]
        x = x + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _resident_growth(path: str) -> int:
    """RSS growth while reading the index at `path` (run in a fresh process so freed memory cannot be reused)."""
    before = _rss_bytes()
    index = faiss.read_index(path)
    grown = _rss_bytes() - before
    del index
    return grown


def resident_index_bytes(path: Path) -> int:
    """Resident memory of the index file once loaded, measured in a spawned process."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return int(pool.apply(_resident_growth, (str(path),)))


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k found in its approximate top-k."""
    hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist())]
    return float(np.sum(hits) / exact.size)


def _time_queries(index: faiss.Index, queries: np.ndarray, k: int, batch: int, count: int) -> float:
    """Mean milliseconds per query searching `count` queries in batches of `batch`."""
    index.search(queries[:batch], k)
    start = time.perf_counter()
    done = 0
    while done < count:
        part = queries[done % len(queries) : done % len(queries) + batch]
        index.search(part, k)
        done += len(part)
    return (time.perf_counter() - start) * 1e3 / done


def bench_one(
    data: np.ndarray, queries: np.ndarray, exact: np.ndarray, config: IndexConfig, cfg: BenchMapConfig, tmp: Path
) -> dict:
    """Build one index over `data`, write and re-read it, and measure it."""
    start = time.perf_counter()
    index = build_index(data, config)
    build_s = time.perf_counter() - start
    path = tmp / "index.faiss"
    faiss.write_index(index, str(path))
    del index
    gc.collect()
    resident = resident_index_bytes(path)
    index = faiss.read_index(str(path))
    apply_search_params(index, config)
    _, found = index.search(queries, cfg.k)
    batch1 = cfg.exact_batch1_queries if config.kind == "flat" else cfg.batch1_queries
    row = {
        "index": f"{config.kind}/{config.storage}",
        "params": _params(config, len(data)),
        "build_s": build_s,
        "ms_per_query_b1": _time_queries(index, queries, cfg.k, 1, min(batch1, len(queries))),
        "ms_per_query_b64": _time_queries(index, queries, cfg.k, 64, len(queries)),
        "bytes_per_place_rss": resident / len(data),
        "bytes_per_place_file": path.stat().st_size / len(data),
        f"recall@{cfg.k}": _recall(found, exact),
    }
    del index
    path.unlink()
    return row


def _params(config: IndexConfig, count: int) -> str:
    if config.kind == "hnsw":
        return f"M={config.hnsw_m} efC={config.ef_construction} efS={config.ef_search}"
    if config.kind == "ivf":
        return f"nlist={config.resolved_nlist(count)} nprobe={config.ivf_nprobe}"
    return "exact"


def time_load_check(data: np.ndarray) -> dict:
    """Seconds the load-time meaning check takes on `data` stored as fp32 and as fp16."""
    row = {}
    for dtype in ("float32", "float16"):
        stored = data.astype(dtype)
        started = time.perf_counter()
        check_descriptors(stored)
        row[f"load_check_s_{dtype}"] = time.perf_counter() - started
        del stored
    return row


def run_benchmark(cfg: BenchMapConfig) -> list[dict]:
    """All sizes x indexes; returns one result row per pair (skipped pairs say why)."""
    faiss.omp_set_num_threads(cfg.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_map_") as tmp_name:
        tmp = Path(tmp_name)
        for size in cfg.sizes:
            rng = np.random.default_rng(cfg.seed)
            clusters = max(1, size // cfg.points_per_cluster)
            centres = rng.standard_normal((clusters, cfg.dim), dtype=np.float32)
            centres /= np.linalg.norm(centres, axis=1, keepdims=True)
            data = clustered_unit_vectors(rng, centres, size, cfg.noise)
            queries = clustered_unit_vectors(rng, centres, cfg.queries, cfg.noise)
            exact_index = faiss.IndexFlatIP(cfg.dim)
            exact_index.add(data)
            _, exact = exact_index.search(queries, cfg.k)
            del exact_index
            rows.append({"places": size, "index": "load check", **time_load_check(data)})
            for spec in tqdm(cfg.indexes, desc=f"{size} places", unit="index"):
                config = _index_config(spec, cfg.index_params)
                if config.kind == "hnsw" and size > cfg.hnsw_max_places:
                    rows.append({"places": size, "index": spec, "skipped": f"size > hnsw_max_places={cfg.hnsw_max_places}"})
                    continue
                row = {"places": size, **bench_one(data, queries, exact, config, cfg, tmp)}
                log.info("%s", row)
                rows.append(row)
            del data
            gc.collect()
    return rows


def format_table(rows: list[dict], k: int) -> str:
    """Results as a fixed-width text table."""
    head = f"{'places':>9} {'index':<10} {'params':<28} {'build s':>8} {'ms/q b1':>8} {'ms/q b64':>9} "
    head += f"{'B/place':>8} {'file B/pl':>9} {f'R@{k}':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['places']:>9} {r['index']:<10} skipped: {r['skipped']}")
            continue
        if "load_check_s_float32" in r:
            lines.append(f"{r['places']:>9} {r['index']:<10} every descriptor finite and unit-norm: "
                         f"{r['load_check_s_float32']:.2f} s fp32, {r['load_check_s_float16']:.2f} s fp16")
            continue
        lines.append(
            f"{r['places']:>9} {r['index']:<10} {r['params']:<28} {r['build_s']:>8.1f} {r['ms_per_query_b1']:>8.3f} "
            f"{r['ms_per_query_b64']:>9.3f} {r['bytes_per_place_rss']:>8.0f} {r['bytes_per_place_file']:>9.0f} "
            f"{r[f'recall@{k}']:>7.4f}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `bench-map` (everything else via --config / --set)."""
    add_config_flags(parser, BenchMapConfig, ("sizes", "indexes", "threads", "out"))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON (config, machine threads, rows)."""
    cfg = config_from_args(BenchMapConfig, args)
    rows = run_benchmark(cfg)
    load = os.getloadavg()
    print(format_table(rows, cfg.k))
    print(f"load average at the end (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    result = {"config": to_dict(cfg), "load_average": list(load), "cpu_count": os.cpu_count(), "results": rows}
    atomic_write_text(Path(cfg.out), json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", cfg.out)
    return 0
