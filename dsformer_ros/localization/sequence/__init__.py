"""Sequence localization: a discrete Bayes filter over the map's places, moved by odometry, weighed by retrieval.

The filter's parts are its modules: the belief and its parts (belief.py, sparse.py), the transitions between the
parts (transitions.py), motion over the place graph (motion.py), the off-map tracks and the look-alike twin
(off_map.py), the measurement model (measurement.py), the fix gate (gate.py) and the fix (fix.py); filter.py runs
them per frame. Design and measurements: docs/localization.md.
"""
from dsformer_ros.localization.sequence.config import SEQUENCE, SequenceConfig
from dsformer_ros.localization.sequence.filter import SequenceDecision, SequenceLocalizer
from dsformer_ros.localization.sequence.gate import CONVERGED, LOST, SEARCHING

__all__ = ["CONVERGED", "LOST", "SEARCHING", "SEQUENCE", "SequenceConfig", "SequenceDecision", "SequenceLocalizer"]
