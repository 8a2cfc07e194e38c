"""The transitions between the belief's parts per frame, written out once as a table (rows: from, columns: to).

Motion moves mass within the on-map parts and, where it drives off the mapped roads, into the tracked off-map part
(motion.py); the measurement moves mass from `anywhere` onto the places it favours (belief.py). Everything else a
frame can do to the belief is in this table; every row sums to one, so the belief keeps its total.
"""
from __future__ import annotations

import numpy as np

from dsformer_ros.localization.sequence.config import SequenceConfig

# The belief's parts (belief.py): at a place with matching views; at a place whose views match nothing; somewhere
# on the map (uniform over the places); off the map where it drove off (dead-reckoned tracks); off the map, unknown.
MATCHED, UNMATCHED, ANYWHERE, OFF_MAP_TRACKED, OFF_MAP_UNKNOWN = range(5)
PARTS = ("matched", "unmatched", "anywhere", "off_map_tracked", "off_map_unknown")


def transition_table(cfg: SequenceConfig) -> np.ndarray:
    """(5, 5) per-frame transition probabilities between PARTS (row: from, column: to)."""
    kidnap, stop = cfg.kidnap_probability, cfg.stop_matching_probability
    rematch, forget, back = cfg.rematch_probability, cfg.forget_probability, cfg.return_probability
    return np.array([
        # matched         unmatched                 anywhere        tracked       unknown
        [1 - stop - kidnap, stop,                      kidnap,         0.0,          0.0],          # matched
        [rematch,           1 - rematch - kidnap - forget, kidnap,     0.0,          forget],       # unmatched
        [0.0,               0.0,                       1.0,            0.0,          0.0],          # anywhere
        [0.0,               0.0,                       kidnap,         1 - kidnap,   0.0],          # tracked
        [0.0,               0.0,                       kidnap + back,  0.0,          1 - kidnap - back],  # unknown
    ])
