"""Measurement model: a frame's retrieval scores as log-likelihood ratios per place.

Each retrieved place's score becomes a ratio through the map's fitted SimilarityModel, relative to the frame's own
negative level; every place not retrieved gets the ratio of a score below the last retrieved one (censored). The ratio is
mixed with `outlier_probability` (a view that matches nothing) and the map's alias rate (an unrelated place that
looks the same), so one frame can neither erase a well-supported belief nor create one. Unmatched and off-map mass
get a ratio of 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

from dsformer_ros.localization.sequence.config import SequenceConfig
from dsformer_ros.localization.sequence.sparse import positions_in
from dsformer_ros.maps.similarity import SimilarityModel


@dataclass(frozen=True)
class Evidence:
    """One frame's log-likelihood ratios: per retrieved row (best first), and `floor` for every other place."""

    rows: np.ndarray
    log_ratio: np.ndarray
    floor: float

    @property
    def top(self) -> float:
        """The largest ratio of any place or of the unmatched/off-map mass (0): the scale divided out."""
        return max(float(self.log_ratio.max()), self.floor, 0.0)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """The ratio of each of `rows`."""
        order = np.argsort(self.rows)
        at = positions_in(self.rows[order], rows)
        out = np.full(rows.size, self.floor)
        out[at >= 0] = self.log_ratio[order][at[at >= 0]]
        return out


def frame_evidence(model: SimilarityModel, cfg: SequenceConfig, null_level: float, places: int, alias_rate: float,
                   rows: np.ndarray, scores: np.ndarray, reference: float) -> Evidence | None:
    """The evidence of one frame's retrieved rows and scores (best first), the map's `null_level` (the model's for
    its places) given; None when nothing was retrieved."""
    if rows.size == 0:
        return None
    zero = reference + cfg.alias_margin * model.alias_excess + null_level
    # A place not retrieved scored below the last retrieved score: a censored score, whose ratio is that of the
    # score distributions' tails below it (the equal-variance model's, about `zero`); it is never above the ratio of
    # a retrieved score. Where every place was retrieved, nothing is censored.
    half, sigma, last = model.delta / 2.0, model.pooled_std, float(scores.min())
    censored = float(log_ndtr((last - zero - half) / sigma) - log_ndtr((last - zero + half) / sigma))
    raw = np.append(model.slope * (scores - zero), 0.0 if rows.size >= places else censored)
    eps = cfg.outlier_probability
    mixed = np.logaddexp(math.log1p(-eps) + raw, math.log(eps)) \
        - np.logaddexp(math.log1p(-alias_rate), math.log(alias_rate) + raw)
    return Evidence(rows=rows, log_ratio=mixed[:-1], floor=float(mixed[-1]))
