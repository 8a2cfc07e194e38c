"""Recall@N and ground truth for place recognition: positives by UTM radius or frame tolerance, recall of top-k lists.

Convention (as the VPR-methods-evaluation and VPR-datasets-downloader evaluations do): a query without any positive
in the database stays in the denominator and counts as a miss; how many there are is reported separately.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.neighbors import NearestNeighbors


def positives_within_radius(
    database_xy: np.ndarray,
    query_xy: np.ndarray,
    radius_m: float,
    database_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Sorted database indices within `radius_m` (UTM metres) of each query; with groups, only within the same group.

    Groups keep UTM zones (or cities) apart: coordinates of different zones are not comparable.
    """
    database_xy = _xy(database_xy, "database_xy")
    query_xy = _xy(query_xy, "query_xy")
    if radius_m <= 0:
        raise ValueError(f"radius_m must be > 0, got {radius_m}")
    if (database_groups is None) != (query_groups is None):
        raise ValueError("give both database_groups and query_groups, or neither")
    if database_groups is None:
        database_groups = np.zeros(len(database_xy), dtype=np.int64)
        query_groups = np.zeros(len(query_xy), dtype=np.int64)
    database_groups = np.asarray(database_groups)
    query_groups = np.asarray(query_groups)
    if database_groups.shape != (len(database_xy),) or query_groups.shape != (len(query_xy),):
        raise ValueError("groups must be 1-D with one entry per position")
    positives: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(len(query_xy))]
    for group in np.unique(query_groups):
        db_rows = np.flatnonzero(database_groups == group)
        q_rows = np.flatnonzero(query_groups == group)
        if len(db_rows) == 0:
            continue
        neighbours = NearestNeighbors(algorithm="auto").fit(database_xy[db_rows])
        found = neighbours.radius_neighbors(query_xy[q_rows], radius=radius_m, return_distance=False)
        for q, rows in zip(q_rows, found):
            positives[q] = np.sort(db_rows[rows]).astype(np.int64)
    return positives


def positives_within_frames(database_frames: np.ndarray, query_frames: np.ndarray, tolerance: int) -> list[np.ndarray]:
    """Sorted database indices whose frame number is within +-`tolerance` of each query's frame number."""
    if tolerance < 0:
        raise ValueError(f"frame tolerance must be >= 0, got {tolerance}")
    database_frames = np.asarray(database_frames, dtype=np.int64)
    query_frames = np.asarray(query_frames, dtype=np.int64)
    order = np.argsort(database_frames, kind="stable")
    sorted_frames = database_frames[order]
    lo = np.searchsorted(sorted_frames, query_frames - tolerance, side="left")
    hi = np.searchsorted(sorted_frames, query_frames + tolerance, side="right")
    return [np.sort(order[a:b]).astype(np.int64) for a, b in zip(lo, hi)]


def first_correct_rank(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank of the first correct prediction per query, -1 when none of the K predictions is a positive."""
    predictions = _predictions(predictions, positives)
    ranks = np.full(len(predictions), -1, dtype=np.int64)
    for q, (row, pos) in enumerate(zip(predictions, positives)):
        hits = np.flatnonzero(np.isin(row, pos) & (row >= 0))
        if hits.size:
            ranks[q] = int(hits[0])
    return ranks


def recall_at_n(predictions: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int]) -> dict:
    """Recall@N for each N in `ns` from predictions (Q, K) of database indices (-1 = no prediction), best first.

    Queries without positives count as misses. Returns {"recall": {N: value}, "queries": Q,
    "queries_without_positives": count, "recall_queries_with_positives": {N: value over the others}}.
    """
    predictions = _predictions(predictions, positives)
    ns = [int(n) for n in ns]
    if not ns or min(ns) < 1:
        raise ValueError(f"recall Ns must be positive integers, got {ns}")
    if max(ns) > predictions.shape[1]:
        raise ValueError(f"Recall@{max(ns)} needs at least {max(ns)} predictions per query, got {predictions.shape[1]}")
    ranks = first_correct_rank(predictions, positives)
    has_positive = np.array([len(p) > 0 for p in positives], dtype=bool)
    count = len(ranks)
    with_pos = int(has_positive.sum())
    found = {n: (ranks >= 0) & (ranks < n) for n in ns}
    return {
        "recall": {n: float(found[n].sum() / count) if count else 0.0 for n in ns},
        "queries": count,
        "queries_without_positives": count - with_pos,
        "recall_queries_with_positives": {n: float(found[n].sum() / with_pos) if with_pos else 0.0 for n in ns},
    }


def _predictions(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.dtype.kind not in "iu":
        raise ValueError(f"predictions must be a 2-D integer array (Q, K), got {predictions.dtype} {predictions.shape}")
    if len(predictions) != len(positives):
        raise ValueError(f"{len(predictions)} prediction rows but positives for {len(positives)} queries")
    return predictions


def _xy(xy: np.ndarray, name: str) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {xy.shape}")
    if not np.isfinite(xy).all():
        raise ValueError(f"{name} must be finite")
    return xy
