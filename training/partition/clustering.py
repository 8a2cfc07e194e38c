"""Training classes from geo-tagged positions: DSFormer's block clustering and EigenPlaces' grid (the ablation).

Block clustering (DSFormer, after EigenPlaces): the map is cut into strips of width M along east (bands of the east
coordinate) and along north; strip k of a direction belongs to group k mod N of that direction, so two strips of one
group are N*M apart. HDBSCAN runs per strip; each cluster's peak-density point (the cluster point with the most strip
points within r; ties to the lowest image index) defines a class: every strip point within r of it, kept with at
least `min_images_per_class` images. Peaks closer than l conflict within a group and across the two directions; of each
conflicting pair the class with more images stays (ties: east strips first, then lower peak index), greedily in that
order. East-strip classes are viewed laterally (groups 0..N-1), north-strip classes frontally (groups N..2N-1). The
focal point is F metres from the class centre along the normal to the principal direction (lateral) or along it
(frontal); the principal direction is the first right singular vector of the centred positions (a column of V).

Decisions on the authors' code (see the module's tests): every HDBSCAN cluster of a strip is used (their loop stops
one short); strips with fewer points than HDBSCAN needs are skipped and counted (theirs crash on one position); one
class of a too-close pair is removed, not both; the focal direction is a column of V (right singular vector), not a
row of U. Classes never share images when l >= 2r (the defaults): overlapping classes would have peaks within 2r.

Grid (EigenPlaces): cells of M x M metres are the classes, group (cell_east mod N, cell_north mod N); as in
EigenPlaces every group is used twice, laterally (groups 0..N*N-1) and frontally (N*N..2*N*N-1), so each cell gives two
classes with the same images. CosPlace's split by heading is not part of it (EigenPlaces uses panoramas).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_save
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.params import setting

log = logging.getLogger(__name__)

ALGORITHM_VERSION = 1
VIEWS = ("lateral", "frontal")
_EXECUTION_FIELDS = ("workers",)


@dataclass
class PartitionConfig:
    """Parameters of the partition; defaults are the DSFormer paper's (block) with EigenPlaces' grid as the option."""

    method: Literal["block", "grid"] = setting("block", "block clustering (the paper) or the EigenPlaces grid")
    strip_width_m: float = 10.0  # M: strip width (block) or cell side (grid)
    groups_per_direction: int = 5  # N: groups per strip direction (block); N x N spatial groups (grid)
    class_radius_m: float = 7.5  # r: a class is every strip point within r of its peak-density point
    min_peak_distance_m: float = 40.0  # l: peaks closer than this conflict (within a group, across directions)
    focal_distance_m: float = 15.0  # F: class centre to focal point
    min_cluster_size: int = 15  # HDBSCAN
    min_samples: int = 15  # HDBSCAN
    cluster_selection_method: Literal["eom", "leaf"] = "eom"  # HDBSCAN
    allow_single_cluster: bool = False  # HDBSCAN's default; True often merges a whole strip into one cluster
    min_images_per_class: int = 10
    workers: int = setting(2, "processes over strips; results do not depend on it", low=1)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        for name in ("strip_width_m", "class_radius_m", "focal_distance_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_peak_distance_m < 0:
            raise ConfigError(f"min_peak_distance_m must not be negative, got {self.min_peak_distance_m}")
        if self.groups_per_direction < 1:
            raise ConfigError(f"groups_per_direction must be at least 1, got {self.groups_per_direction}")
        if self.min_cluster_size < 2:
            raise ConfigError(f"min_cluster_size must be at least 2 (HDBSCAN), got {self.min_cluster_size}")
        if self.min_samples < 1:
            raise ConfigError(f"min_samples must be at least 1, got {self.min_samples}")
        if self.min_images_per_class < 1:
            raise ConfigError(f"min_images_per_class must be at least 1, got {self.min_images_per_class}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class ClassInfo:
    """One class: its group, view, member image indices and its peak, centre and focal point (UTM east/north)."""

    class_id: int
    group: int
    direction: str
    members: np.ndarray
    peak: np.ndarray
    centre: np.ndarray
    focal: np.ndarray


@dataclass
class Partition:
    """Classes as arrays (members in CSR form, indices into the input positions) plus counts of what was dropped."""

    num_positions: int
    num_groups: int
    class_group: np.ndarray  # (K,) int32
    class_view: np.ndarray  # (K,) int8, index into VIEWS
    class_peak: np.ndarray  # (K, 2) float64; the grid's cell centre
    class_centre: np.ndarray  # (K, 2) float64
    class_focal: np.ndarray  # (K, 2) float64
    member_offsets: np.ndarray  # (K + 1,) int64
    member_indices: np.ndarray  # (T,) int64
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    cache_key: str = ""

    @property
    def num_classes(self) -> int:
        """Number of classes over all groups."""
        return int(self.class_group.shape[0])

    def members(self, class_id: int) -> np.ndarray:
        """Indices (into the input positions) of the images of one class, ascending."""
        return self.member_indices[self.member_offsets[class_id] : self.member_offsets[class_id + 1]]

    def class_sizes(self) -> np.ndarray:
        """Images per class."""
        return np.diff(self.member_offsets)

    def class_info(self, class_id: int) -> ClassInfo:
        """Everything about one class."""
        if not 0 <= class_id < self.num_classes:
            raise IndexError(f"class {class_id} out of range (0..{self.num_classes - 1})")
        return ClassInfo(
            class_id=class_id,
            group=int(self.class_group[class_id]),
            direction=VIEWS[int(self.class_view[class_id])],
            members=self.members(class_id),
            peak=self.class_peak[class_id],
            centre=self.class_centre[class_id],
            focal=self.class_focal[class_id],
        )

    def classes_per_group(self) -> np.ndarray:
        """(num_groups,) number of classes in each group."""
        return np.bincount(self.class_group, minlength=self.num_groups)

    def group_views(self) -> list[str]:
        """View of each group: the first half of the groups is lateral, the second half frontal (block and grid)."""
        half = self.num_groups // 2
        return [VIEWS[0] if g < half else VIEWS[1] for g in range(self.num_groups)]

    def group_classes(self, group: int) -> np.ndarray:
        """Class ids of one group, ascending."""
        return np.flatnonzero(self.class_group == group)

    def save(self, path: str | Path) -> None:
        """Write as .npz (no pickled objects), atomically."""
        names = [f.name for f in dataclasses.fields(self) if f.name.startswith(("class_", "member_"))]
        arrays = {name: getattr(self, name) for name in names}
        arrays["meta"] = np.array(
            json.dumps(
                {
                    "num_positions": self.num_positions,
                    "num_groups": self.num_groups,
                    "config": self.config,
                    "stats": self.stats,
                    "fingerprint": self.fingerprint,
                    "cache_key": self.cache_key,
                    "algorithm_version": ALGORITHM_VERSION,
                },
                sort_keys=True,
            )
        )

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_save(path, write, suffix=".npz")

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        """Read a partition written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"partition file {path} does not exist")
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
        if meta.get("algorithm_version") != ALGORITHM_VERSION:
            raise ValueError(f"{path}: written by partition algorithm version {meta.get('algorithm_version')}, "
                             f"this code is version {ALGORITHM_VERSION}")
        return cls(
            num_positions=meta["num_positions"],
            num_groups=meta["num_groups"],
            config=meta["config"],
            stats=meta["stats"],
            fingerprint=meta["fingerprint"],
            cache_key=meta["cache_key"],
            **arrays,
        )


def check_positions(positions: np.ndarray) -> np.ndarray:
    """(N, 2) finite float64 east/north, or a ValueError saying what is wrong."""
    positions = np.asarray(positions)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2) east/north, got {positions.shape}")
    if positions.shape[0] == 0:
        raise ValueError("positions is empty")
    if not np.issubdtype(positions.dtype, np.number):
        raise ValueError(f"positions must be numbers, got dtype {positions.dtype}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} positions are not finite (first at index {int(np.flatnonzero(bad)[0])})")
    return positions


def positions_fingerprint(positions: np.ndarray) -> str:
    """sha256 of the positions as (N, 2) float64 bytes, with the shape."""
    positions = check_positions(positions)
    digest = hashlib.sha256(f"float64{positions.shape}".encode())
    digest.update(positions.tobytes())
    return digest.hexdigest()


def cache_key(positions: np.ndarray, cfg: PartitionConfig) -> str:
    """Hash of every result-affecting config field, the algorithm and HDBSCAN versions and the input fingerprint."""
    params = {k: v for k, v in to_dict(cfg).items() if k not in _EXECUTION_FIELDS}
    payload = {
        "algorithm_version": ALGORITHM_VERSION,
        "hdbscan": _hdbscan_version() if cfg.method == "block" else None,
        "config": params,
        "positions": positions_fingerprint(positions),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def partition(positions: np.ndarray, cfg: PartitionConfig, cache_dir: str | Path | None = None) -> Partition:
    """Block or grid partition of `positions` (per cfg.method), read from / written to `cache_dir` when given."""
    cfg.validate()
    positions = check_positions(positions)
    path = None
    if cache_dir is not None:
        key = cache_key(positions, cfg)
        path = Path(cache_dir) / f"partition-{cfg.method}-{key[:24]}.npz"
        if path.is_file():
            cached = Partition.load(path)
            if cached.cache_key == key:
                log.info("partition read from cache %s", path)
                return cached
            log.warning("cache file %s holds another key; recomputing", path)
    result = block_partition(positions, cfg) if cfg.method == "block" else grid_partition(positions, cfg)
    if path is not None:
        result.cache_key = key
        result.save(path)
        log.info("partition cached at %s", path)
    return result


def block_partition(positions: np.ndarray, cfg: PartitionConfig) -> Partition:
    """DSFormer's block clustering: 2N groups (N lateral from east strips, N frontal from north strips)."""
    cfg.validate()
    positions = check_positions(positions)
    n_groups = cfg.groups_per_direction
    candidates: list[dict[str, np.ndarray]] = []
    stats = {"strips": 0, "strips_too_small": 0, "hdbscan_clusters": 0, "clusters_too_few_images": 0}
    strips_per_dir = []
    for axis in (0, 1):
        strip = np.floor(positions[:, axis] / cfg.strip_width_m).astype(np.int64)
        order = np.argsort(strip, kind="stable")
        ids, starts = np.unique(strip[order], return_index=True)
        strips_per_dir.append((axis, ids, np.append(starts, len(order)), order))
    total = sum(len(s[1]) for s in strips_per_dir)
    results = _map_strips(positions, strips_per_dir, cfg, total)
    for (axis, ids, _, _), per_strip in zip(strips_per_dir, results):
        for strip_id, res in zip(ids, per_strip):
            stats["strips"] += 1
            if res is None:
                stats["strips_too_small"] += 1
                continue
            peaks, sizes, members, n_clusters = res
            stats["hdbscan_clusters"] += n_clusters
            stats["clusters_too_few_images"] += n_clusters - len(peaks)
            if len(peaks):
                group = axis * n_groups + int(np.mod(strip_id, n_groups))
                candidates.append({"axis": np.full(len(peaks), axis), "group": np.full(len(peaks), group),
                                   "strip": np.full(len(peaks), strip_id), "peak": peaks, "size": sizes,
                                   "members": members})
    if candidates:
        cand = {k: np.concatenate([c[k] for c in candidates]) for k in candidates[0]}
    else:
        cand = {k: np.zeros(0, dtype=np.int64) for k in ("axis", "group", "strip", "peak", "size", "members")}
    offsets = np.concatenate([[0], np.cumsum(cand["size"])]).astype(np.int64)
    stats["candidates"] = int(len(cand["peak"]))
    keep = _resolve_conflicts(positions[cand["peak"]], cand["axis"], cand["group"], cand["peak"], cand["size"],
                              cfg.min_peak_distance_m)
    stats["removed_too_close"] = int((~keep).sum())
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((cand["peak"][kept], cand["group"][kept]))]
    member_offsets, member_indices = _take_csr(offsets, cand["members"], kept)
    view = cand["axis"][kept].astype(np.int8)
    centre, focal = _focal_points(positions, member_offsets, member_indices, view, cfg.focal_distance_m)
    stats["classes"] = int(len(kept))
    stats["images_in_classes"] = int(len(np.unique(member_indices)))
    log.info("block partition: %d positions, %d strips (%d too small), %d HDBSCAN clusters, %d candidates, "
             "%d removed as too close, %d classes", len(positions), stats["strips"], stats["strips_too_small"],
             stats["hdbscan_clusters"], stats["candidates"], stats["removed_too_close"], stats["classes"])
    return Partition(
        num_positions=len(positions),
        num_groups=2 * n_groups,
        class_group=cand["group"][kept].astype(np.int32),
        class_view=view,
        class_peak=positions[cand["peak"][kept]],
        class_centre=centre,
        class_focal=focal,
        member_offsets=member_offsets,
        member_indices=member_indices,
        config=to_dict(cfg),
        stats=stats,
        fingerprint=positions_fingerprint(positions),
    )


def grid_partition(positions: np.ndarray, cfg: PartitionConfig) -> Partition:
    """EigenPlaces' grid: M x M cells as classes, N x N spatial groups, each once lateral and once frontal."""
    cfg.validate()
    positions = check_positions(positions)
    n = cfg.groups_per_direction
    cell = np.floor(positions / cfg.strip_width_m).astype(np.int64)
    group = np.mod(cell[:, 0], n) * n + np.mod(cell[:, 1], n)
    order = np.lexsort((np.arange(len(positions)), cell[:, 1], cell[:, 0], group))
    cell_sorted = cell[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (cell_sorted[1:] != cell_sorted[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(order)))
    ok = sizes >= cfg.min_images_per_class
    offsets = np.append(starts, len(order)).astype(np.int64)
    m_off, m_idx = _take_csr(offsets, order.astype(np.int64), np.flatnonzero(ok))
    cell_group = group[order[starts[ok]]]
    cell_centre = (cell_sorted[starts[ok]] + 0.5) * cfg.strip_width_m
    k = int(ok.sum())
    both_offsets = np.concatenate([m_off, m_off[1:] + m_off[-1]])
    both_indices = np.concatenate([m_idx, m_idx])
    view = np.repeat(np.array([0, 1], dtype=np.int8), k)
    centre, focal = _focal_points(positions, both_offsets, both_indices, view, cfg.focal_distance_m)
    stats = {"cells": int(len(starts)), "cells_too_few_images": int((~ok).sum()), "classes": 2 * k,
             "images_in_classes": int(len(m_idx))}
    log.info("grid partition: %d positions, %d cells, %d with too few images, %d classes", len(positions),
             stats["cells"], stats["cells_too_few_images"], stats["classes"])
    return Partition(
        num_positions=len(positions),
        num_groups=2 * n * n,
        class_group=np.concatenate([cell_group, cell_group + n * n]).astype(np.int32),
        class_view=view,
        class_peak=np.concatenate([cell_centre, cell_centre]),
        class_centre=centre,
        class_focal=focal,
        member_offsets=both_offsets,
        member_indices=both_indices,
        config=to_dict(cfg),
        stats=stats,
        fingerprint=positions_fingerprint(positions),
    )


def principal_directions(points: np.ndarray) -> np.ndarray:
    """(2,) unit principal direction of one class: the first right singular vector of the centred positions.

    Sign: east component positive (north positive when east is zero), so the result is deterministic.
    """
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    return _canonical_sign(vt[0][None, :])[0]


def focal_headings_deg(observers: np.ndarray, focal: np.ndarray) -> np.ndarray:
    """Heading in degrees clockwise from north, in [0, 360), from each observer position to its focal point."""
    d = np.asarray(focal, dtype=np.float64) - np.asarray(observers, dtype=np.float64)
    return np.mod(np.degrees(np.arctan2(d[..., 0], d[..., 1])), 360.0)


def _hdbscan_version() -> str:
    import hdbscan

    return getattr(hdbscan, "__version__", "unknown")


def _canonical_sign(v: np.ndarray) -> np.ndarray:
    flip = (v[:, 0] < 0) | ((v[:, 0] == 0) & (v[:, 1] < 0))
    return np.where(flip[:, None], -v, v)


def _focal_points(positions: np.ndarray, offsets: np.ndarray, indices: np.ndarray, view: np.ndarray,
                  focal_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Per class centre (mean) and focal point: F along the principal direction (frontal) or its normal (lateral)."""
    k = len(offsets) - 1
    if k == 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    sizes = np.diff(offsets)
    seg = np.repeat(np.arange(k), sizes)
    pts = positions[indices]
    centre = np.stack([np.bincount(seg, pts[:, a], minlength=k) for a in (0, 1)], axis=1) / sizes[:, None]
    d = pts - centre[seg]
    cov = np.empty((k, 2, 2))
    cov[:, 0, 0] = np.bincount(seg, d[:, 0] * d[:, 0], minlength=k)
    cov[:, 1, 1] = np.bincount(seg, d[:, 1] * d[:, 1], minlength=k)
    cov[:, 0, 1] = cov[:, 1, 0] = np.bincount(seg, d[:, 0] * d[:, 1], minlength=k)
    # Eigenvectors of D^T D are the right singular vectors of D; eigh sorts eigenvalues ascending.
    principal = _canonical_sign(np.linalg.eigh(cov)[1][:, :, 1])
    normal = np.stack([-principal[:, 1], principal[:, 0]], axis=1)
    direction = np.where((view == 0)[:, None], normal, principal)
    return centre, centre + focal_distance * direction


def _take_csr(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `rows` of a CSR array, as a new CSR array."""
    sizes = (offsets[rows + 1] - offsets[rows]).astype(np.int64)
    new_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if len(rows) == 0:
        return new_offsets, np.zeros(0, dtype=np.int64)
    gather = np.repeat(offsets[rows] - new_offsets[:-1], sizes) + np.arange(new_offsets[-1])
    return new_offsets, values[gather].astype(np.int64)


def _resolve_conflicts(peaks: np.ndarray, axis: np.ndarray, group: np.ndarray, peak_index: np.ndarray,
                       size: np.ndarray, min_distance: float) -> np.ndarray:
    """Keep-mask: of peaks closer than `min_distance` (same group, or different directions) keep the larger class.

    Greedy in priority order (more images first, then east strips, then lower peak index): a class is kept unless a
    kept class of higher priority conflicts with it. Only one class of a conflicting pair goes.
    """
    keep = np.ones(len(peaks), dtype=bool)
    if len(peaks) < 2 or min_distance <= 0:
        return keep
    pairs = cKDTree(peaks).query_pairs(min_distance, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    a, b = pairs[:, 0], pairs[:, 1]
    close = np.linalg.norm(peaks[a] - peaks[b], axis=1) < min_distance
    conflict = close & ((group[a] == group[b]) | (axis[a] != axis[b]))
    a, b = a[conflict], b[conflict]
    if len(a) == 0:
        return keep
    priority = np.empty(len(peaks), dtype=np.int64)
    priority[np.lexsort((peak_index, axis, -size))] = np.arange(len(peaks))
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    adj_start = np.searchsorted(src, np.arange(len(peaks) + 1))
    involved = np.unique(src)
    for c in involved[np.argsort(priority[involved])]:
        if keep[c]:
            keep[dst[adj_start[c] : adj_start[c + 1]]] = False
    return keep


def _strip_tasks(positions: np.ndarray, strips_per_dir: list, cfg: PartitionConfig) -> Iterator[tuple]:
    params = (cfg.min_cluster_size, cfg.min_samples, cfg.cluster_selection_method, cfg.allow_single_cluster,
              cfg.class_radius_m, cfg.min_images_per_class)
    for _, ids, bounds, order in strips_per_dir:
        for i in range(len(ids)):
            idx = order[bounds[i] : bounds[i + 1]]
            yield positions[idx], idx, params


def _map_strips(positions: np.ndarray, strips_per_dir: list, cfg: PartitionConfig, total: int) -> list[list]:
    """Cluster every strip (both directions), in order; per direction a list of per-strip results."""
    import hdbscan  # noqa: F401  (imported once here so forked workers inherit it instead of importing it each)

    tasks = _strip_tasks(positions, strips_per_dir, cfg)
    bar = dict(total=total, desc="strips", unit="strip", disable=None)
    if cfg.workers == 1:
        flat = [_cluster_strip(t) for t in tqdm(tasks, **bar)]
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=cfg.workers) as pool:
            flat = list(tqdm(pool.map(_cluster_strip, tasks, chunksize=8), **bar))
    out, start = [], 0
    for _, ids, _, _ in strips_per_dir:
        out.append(flat[start : start + len(ids)])
        start += len(ids)
    return out


def _cluster_strip(task: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """HDBSCAN on one strip, then one class per cluster around its peak-density point; None if the strip is too small.

    Returns (peak image indices, class sizes, concatenated sorted member indices, number of HDBSCAN clusters).
    """
    import hdbscan

    pts, idx, (min_cluster_size, min_samples, selection, single, radius, min_images) = task
    if len(pts) < max(min_cluster_size, min_samples + 1):
        return None
    local = pts - pts.mean(axis=0)
    labels = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        min_samples=min_samples,
        cluster_selection_method=selection,
        allow_single_cluster=single,
        algorithm="boruvka_kdtree",
        approx_min_span_tree=False,
        core_dist_n_jobs=1,
    ).fit_predict(local)
    n_clusters = int(labels.max()) + 1
    empty = np.zeros(0, dtype=np.int64)
    if n_clusters == 0:
        return empty, empty, empty, 0
    tree = cKDTree(local)
    clustered = np.flatnonzero(labels >= 0)
    density = tree.query_ball_point(local[clustered], radius, return_length=True)
    # Peak per cluster: most neighbours, ties to the lowest image index (idx ascends within a strip).
    best = np.lexsort((clustered, -density, labels[clustered]))
    first = np.ones(len(best), dtype=bool)
    first[1:] = labels[clustered[best[1:]]] != labels[clustered[best[:-1]]]
    peaks_local = clustered[best[first]]
    neighbours = tree.query_ball_point(local[peaks_local], radius)
    sizes = np.array([len(nb) for nb in neighbours], dtype=np.int64)
    ok = sizes >= min_images
    members = [np.sort(idx[np.asarray(nb, dtype=np.int64)]) for nb, good in zip(neighbours, ok) if good]
    return (
        idx[peaks_local[ok]].astype(np.int64),
        sizes[ok],
        np.concatenate(members) if members else empty,
        n_clusters,
    )
