"""`eval --localizer sequence`: the queries of one ordered traversal fed in order through the sequence localizer.

For data sets whose queries are one drive or walk in order (Nordland, index-named folders such as corridor), each
query's retrieval scores update the node's sequence filter (dsformer_ros.localization.sequence) without odometry
and without stamps (the filter estimates the speed per query itself); the places ranked by the belief after each query
give a Recall@N to set next to single-frame retrieval's.
"""
from __future__ import annotations

import logging

import numpy as np

from dsformer_ros.localization.localizer import LocalizerConfig, sequence_localizer
from dsformer_ros.localization.sequence import SequenceConfig
from dsformer_ros.maps.placemap import PlaceMap
from dsformer_ros.maps.similarity import reference_rows
from training.eval.recall import first_correct_rank, recall_at_n

log = logging.getLogger(__name__)


def sequence_rows(place_map: PlaceMap, queries: np.ndarray, config: SequenceConfig, k: int) -> np.ndarray:
    """(Q, k) map rows ranked by the sequence filter's belief after each query, queries taken in order."""
    n = len(place_map)
    localizer = sequence_localizer(place_map, config, place_map.keyframe_spacing_m() / 2.0)
    candidates = LocalizerConfig.measurement_candidates  # the node's default
    hits = place_map.search(np.asarray(queries, dtype=np.float32), min(max(k, candidates), n))
    reference = np.asarray(place_map.descriptors[reference_rows(n)], dtype=np.float32)
    levels = np.median(np.asarray(queries, dtype=np.float32) @ reference.T, axis=1)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for q in range(len(queries)):
        localizer.update(None, hits.rows[q], hits.scores[q], float(levels[q]))
        top = localizer.ranked(min(k, n))
        out[q, : top.size] = top
    return out


def sequence_section(place_map: PlaceMap, queries: np.ndarray, positives: list[np.ndarray], config: SequenceConfig,
                     recall_ns: tuple[int, ...]) -> dict:
    """The report's `sequence` section of one method: Recall@N of the belief ranking and correctness at 1."""
    rows = sequence_rows(place_map, queries, config, max(recall_ns))
    scores = recall_at_n(rows, positives, recall_ns)
    ranks = first_correct_rank(rows, positives)
    log.info("sequence localizer: %s", ", ".join(f"R@{n} {100 * v:.1f}" for n, v in scores["recall"].items()))
    return {"recall": {str(n): v for n, v in scores["recall"].items()},
            "correct_at_1": [bool(r == 0) for r in ranks], "top_1": [int(r) for r in rows[:, 0]]}
