"""The sequence filter's settings, grouped by the part of the model they belong to (motion, transitions,
measurement, fix gate, fix covariance); each field is also the node parameter of that name."""
from __future__ import annotations

from dataclasses import dataclass

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting

SEQUENCE = "sequence localization (mode: sequence)"


@dataclass
class SequenceConfig:
    """Settings of the sequence filter (see docs/localization.md for what each one trades)."""

    # Motion model (motion.py)
    odometry_noise_m: float = setting(
        0.5, "Motion model: position noise (m, 1 sigma) of the motion between two frames, plus "
        "odometry_noise_fraction of the distance.", low=0.01, high=100.0, section=SEQUENCE,
    )
    odometry_noise_fraction: float = setting(
        0.1, "Motion model: position noise per metre travelled (odometry scale error and drift).", low=0.0,
        high=1.0, section=SEQUENCE,
    )
    heading_tolerance_deg: float = setting(
        30.0, "Motion model: how far (deg, 1 sigma) the robot's heading may differ from a place's map heading and "
        "still be there.", low=1.0, high=180.0, section=SEQUENCE,
    )
    max_speed_mps: float = setting(
        20.0, "Motion model without odometry: the fastest the robot drives (m/s; m per frame for unstamped image "
        "sets). The filter estimates the speed itself; this bounds the prior.", low=0.1, high=100.0,
        section=SEQUENCE,
    )
    # Transitions between the belief's parts (transitions.py)
    kidnap_probability: float = setting(
        0.001, "Transitions, per frame: the robot was carried elsewhere (any part -> anywhere on the map).",
        low=0.0, high=0.5, section=SEQUENCE,
    )
    stop_matching_probability: float = setting(
        0.02, "Transitions, per frame: the views of the robot's place stop matching the map (night, glare, a "
        "truck; matched -> unmatched, same place).", low=0.0, high=0.5, section=SEQUENCE,
    )
    rematch_probability: float = setting(
        0.1, "Transitions, per frame: views that had stopped matching match again (unmatched -> matched).",
        low=0.0, high=1.0, section=SEQUENCE,
    )
    forget_probability: float = setting(
        0.1, "Transitions, per frame: a place whose views stopped matching is not where the robot is after all "
        "(unmatched -> off the map, position unknown).", low=0.0, high=0.5, section=SEQUENCE,
    )
    return_probability: float = setting(
        0.1, "Transitions, per frame: a robot off the map at an unknown position is back on it somewhere "
        "(off the map, unknown -> anywhere on the map).", low=0.0, high=1.0, section=SEQUENCE,
    )
    # Measurement model (measurement.py)
    outlier_probability: float = setting(
        0.1, "Measurement: probability that the view matches its own place no better than an unrelated one "
        "(occlusion, glare, a passing truck); bounds the evidence one frame can give against a place.",
        low=0.0001, high=0.9, section=SEQUENCE,
    )
    alias_margin: float = setting(
        0.0, "Measurement: share of the map's measured alias excess (how far the best unrelated place of a held-out "
        "map view scores above the null level) added to the score a place must beat to gain evidence. 0: the "
        "Gaussian null; 1: what unmapped look-alike streets reach.", low=0.0, high=2.0, section=SEQUENCE,
    )
    # Fix gate (gate.py)
    fix_mass: float = setting(
        0.9, "Fix gate: at least this share of the on-map belief lies within fix_radius_m of the best place.",
        low=0.01, high=1.0, section=SEQUENCE,
    )
    fix_radius_m: float = setting(
        15.0, "Fix gate: radius (m) of fix_mass.", low=0.1, high=10000.0, section=SEQUENCE,
    )
    matched_share: float = setting(
        0.5, "Fix gate: this share of the concentrated mass matches the recent frames (after a kidnap the old "
        "place stops matching: no fix from it).", low=0.0, high=1.0, section=SEQUENCE,
    )
    agreement_evidence: float = setting(
        0.25, "Fix gate: the recent frames favour the concentrated places over unrelated ones by this "
        "log-likelihood ratio (a running sum halved every frame); 0: merely not against them.",
        low=0.0, high=20.0, section=SEQUENCE,
    )
    contradiction_evidence: float = setting(
        0.75, "Fix gate: no fix is started on a frame that scores the concentrated places below unrelated ones by "
        "more than this log-likelihood ratio (nats), whatever credit earlier frames carry.", low=0.0, high=20.0,
        section=SEQUENCE,
    )
    keep_evidence: float = setting(
        0.0, "Fix gate, hysteresis: an ongoing fix is kept on a frame whose best-scoring place lies among the "
        "concentrated places and beats an unrelated one, when the running agreement is at least this.",
        low=0.0, high=20.0, section=SEQUENCE,
    )
    # Fix covariance (fix.py)
    lateral_sigma_m: float = setting(
        2.9, "Fix covariance: across the road (m, 1 sigma), where a car can be on the road of the place it matches "
        "(lanes); fitted on drives with ground truth by `dsformer-vpr sweep`.", low=0.0, high=100.0,
        section=SEQUENCE,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)
        if self.kidnap_probability + self.stop_matching_probability >= 1.0:
            raise ConfigError("kidnap_probability + stop_matching_probability must stay below 1")
        if self.kidnap_probability + self.rematch_probability + self.forget_probability > 1.0:
            raise ConfigError("kidnap_probability + rematch_probability + forget_probability must not exceed 1")
        if self.kidnap_probability + self.return_probability > 1.0:
            raise ConfigError("kidnap_probability + return_probability must not exceed 1")
