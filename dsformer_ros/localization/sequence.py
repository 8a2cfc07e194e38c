"""Sequence localization: a discrete Bayes filter over the map's places, moved by odometry, weighed by retrieval.

SeqSLAM's insight, that a sequence of weak matches is a strong match, in probabilistic form. The belief has four
parts: per map place, "here and the view matches the map" (`belief`) and "here but the view matches nothing"
(`unmatched`: night, glare, a truck; it keeps the position); off the map, "where it drove off, dead-reckoned since"
(`tracks`) and "anywhere" (`lost_anywhere`: no position). Every frame updates it by
- a motion step: the mass of place i moves to the places near where i's pose composed with the odometry motion
  lands, weighted by position (Gaussian; noise grows with distance, turns and the places' own GPS noise) and by
  heading agreement (a place is a view: its heading, the direction of its mapping drive, is the robot's heading).
  Without odometry the robot may have moved any distance up to `max_speed_mps * dt` forward (SeqSLAM's velocity
  search). Each place also carries where within its cell its mass lies (the mass-weighted mean offset of the
  predictions that landed on it), so moving mass between discrete places does not round the position: steps that
  are not a multiple of the keyframe spacing neither stall nor drift the belief, and the fix is the mean of these
  sub-place positions. Each place likewise carries the robot's heading relative to the place's (the odometry's turns
  since the mass arrived; it relaxes over `HEADING_RELAX_M` while it stays within the tolerance, since a car drives
  along its road): a turn into a street the map has no places for accumulates until no mapped place heads that way,
  instead of being reset to the road's heading every frame and running on along the mapped road. Mass that finds no
  place heading its way, or whose prediction lies beyond the end of the mapped road ahead, drove off the map: it
  leaves as a track at the pose where it left, moved by the odometry like the robot (its position sigma growing by
  `odometry_noise_fraction` of the distance), and comes back onto the map only where that pose meets mapped places
  heading its way (the robot drove back onto a mapped road), not uniformly over the map where a look-alike street
  would pick it up. Mass whose views had stopped matching (`unmatched`) may have been carried anywhere: it leaves
  without a position. Hazards move a little mass between matched and unmatched, and spread a little over all places
  (the robot may have been carried elsewhere: `kidnap_probability`; off-map mass of unknown position comes back:
  `return_probability`). A track comes back only onto places ahead of or beside it and heading its way, keeping its
  heading relative to them: mass just past the end of a mapped road does not fall back onto its last place (with the
  road's heading) while the robot turns away;
- a look-alike twin, kept beside the belief and not part of it: "off the map, on an unmapped street that looks like
  place i". Every frame the tracked off-map mass gives it the map's fitted alias rate, uniformly; it
  moves and is weighed like the belief at the same places. An unmapped street that looks like a mapped road keeps
  looking like it frame after frame, so a sequence of agreeing views after the belief was off the map is no proof of
  a return onto the map: the twin of the concentrated places counts against `fix_mass` like mass elsewhere. A street
  resembles a mapped road for a stretch, not for ever: the twin fades over `LOOK_ALIKE_LENGTH_M` of driving.
  (The per-frame alias rate of the measurement step treats aliases as independent per frame; a street is not);
- a measurement step: each retrieved place's score becomes a likelihood ratio through the map's fitted
  `SimilarityModel` (dsformer_ros.maps.similarity), relative to the frame's own negative level; places not retrieved
  get the ratio of the last retrieved score (an upper bound), unmatched and off-map mass a ratio of 1. The ratio is
  mixed with `outlier_probability` (a view that matches nothing) and the map's fitted alias rate (an unrelated place
  that looks the same), so one frame can neither erase a well-supported belief nor create one: a sequence of
  agreeing frames is needed. `alias_margin` raises the score a place must beat towards what the best unrelated place
  of a held-out map view reaches (the map's measured `alias_excess`): the open-set side's safety for availability.

Why places and not particles in UTM: a camera can only say "this looks like place j", so the measurement is defined
on places; the places already are the reachable, mapped poses with a heading (no particles wasted off the streets,
no resampling noise, deterministic results), and the off-map mass gives unknown places an explicit probability
instead of starving a particle cloud; only off the map, where no place exists, does the belief keep poses of its own
(the tracks, merged per 5 m cell and heading bin, at most 64). The cost is proportional to the places holding more
than the background mass (places at the uniform kidnap level stay where they are), not to the map's size.

A fix is published only when the belief is concentrated: at least `fix_mass` of the on-map belief (matched and
unmatched) within `fix_radius_m` of the best place, at least `matched_share` of it matching the frames, less than
half of the whole belief off the map, the recent frames scoring those places better than unrelated ones by
`agreement_evidence` (a running log-likelihood ratio that halves every frame), and the current frame not against
them by more than `contradiction_evidence`. Every fix thus rests on recent visual evidence: none is carried by
odometry alone (the localization stack fuses the odometry itself; fixes derived from it would count it twice). The
first frame after a kidnap and a poor dusk view look alike to a weak model when judged by the running agreement
(the credit of the earlier frames carries both); judged alone, the first view of the new street scores the tracked
places 0.8-1.1 nats below unrelated ones, most poor dusk views less: `contradiction_evidence` (0.75) refuses the
former whatever the credit, and lets `agreement_evidence` go from 1 to 0.25. Keeping a fix asks less than starting
one (hysteresis): after a fix, a frame keeps it when its best-scoring place lies among the concentrated places and
beats an unrelated one, and the running agreement is at least `keep_evidence` (0: not against them); a weak view of
the right place does not interrupt the fixes, a view matching elsewhere best still stops them. Measured with the
demo's model on its route and two more routes of the town (dusk query availability; kidnapped and off-map drives
with a wrong fix): see README. The fix's covariance is the weighted spread of that mass plus half the keyframe
spacing (the map's resolution: never below it) and the map's own place-position noise (fitted from its places,
`position_noise_m`; the mean of the places' positions averages it, sigma^2 sum(w^2) for belief weights w) on x and
y, plus `lateral_sigma_m` across the heading (where the robot is on the road relative to the mapping drive: lanes;
fitted on drives with ground truth by `dsformer-vpr sweep`, the smallest value whose 95 % ellipses hold 95 % of the
fixes); yaw from the circular spread of the places' headings. States: converged (a fix), searching (not
concentrated, or the frames stopped agreeing), lost (most of the belief unmatched or off the map: the frames match
no place).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr as norm_cdf

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.localization.odometry import Motion, OdometryTrack, OdomPose, motion_between
from dsformer_ros.localization.pose_estimate import Fix, pose_covariance
from dsformer_ros.maps.similarity import SimilarityModel

SEQUENCE = "sequence localization (mode: sequence)"
CONVERGED, SEARCHING, LOST = "converged", "searching", "lost"
NS = 1_000_000_000
# Sources below this multiple of the uniform background mass are not moved (their motion changes nothing visible).
TRACK_ABOVE_BACKGROUND = 2.0
# The frames' agreement with the concentrated places is a running sum with this decay per frame (its carried credit
# capped, see _decide): one poor view after agreeing ones does not stop the fixes, a view that contradicts them does.
AGREEMENT_DECAY = 0.5
# A car drives along its road: the heading it carries relative to a place's heading (from odometry turns) relaxes
# towards the road's over this distance (m), which also bounds what odometry heading drift can add to it.
HEADING_RELAX_M = 50.0
# A place heads the robot's way when its heading lies within this many heading sigmas of the robot's.
COMPATIBLE_SIGMAS = 2.0
COMPATIBLE_H = math.exp(-0.5 * COMPATIBLE_SIGMAS**2)  # the heading weight at that angle
# Off-map tracks (mass that drove off the mapped roads at a known pose) are merged within this cell (m) and heading
# bin, at most MAX_OFF_MAP_TRACKS are kept, and one whose position is no better known than OFF_MAP_TRACK_MAX_SIGMA_M
# joins the off-map mass of unknown position.
OFF_MAP_CELL_M = 5.0
OFF_MAP_HEADING_BINS = 8
MAX_OFF_MAP_TRACKS = 64
OFF_MAP_TRACK_MAX_SIGMA_M = 60.0
# An unmapped street resembles a mapped road for a stretch, not for ever: the look-alike twin's mass decays with the
# distance driven on this scale (m), so a twin seeded while the robot was off the map cannot block the fixes of a
# robot that is really back on the map for longer than that.
LOOK_ALIKE_LENGTH_M = 50.0


@dataclass
class SequenceConfig:
    """Settings of the sequence filter; each field is also the node parameter of that name."""

    odometry_noise_m: float = setting(
        0.5, "Position noise (m, 1 sigma) of the motion between two frames, plus odometry_noise_fraction of the "
        "distance.", low=0.01, high=100.0, section=SEQUENCE,
    )
    odometry_noise_fraction: float = setting(
        0.1, "Position noise per metre travelled (odometry scale error and drift).", low=0.0, high=1.0,
        section=SEQUENCE,
    )
    heading_tolerance_deg: float = setting(
        30.0, "How far (deg, 1 sigma) the robot's heading may differ from a place's map heading and still be there.",
        low=1.0, high=180.0, section=SEQUENCE,
    )
    max_speed_mps: float = setting(
        20.0, "Without odometry: the fastest the robot drives forward (m/s); any speed up to it is allowed.",
        low=0.1, high=100.0, section=SEQUENCE,
    )
    max_step_m: float = setting(
        10.0, "Without odometry or stamps (ordered image sets): the longest step between frames (m).",
        low=0.1, high=10000.0, section=SEQUENCE,
    )
    kidnap_probability: float = setting(
        0.001, "Per frame: probability that the robot was carried elsewhere (spread uniformly over the map).",
        low=0.0, high=0.5, section=SEQUENCE,
    )
    leave_probability: float = setting(
        0.02, "Per frame: probability of driving off the map (into streets it has no places for).",
        low=0.0, high=0.5, section=SEQUENCE,
    )
    return_probability: float = setting(
        0.1, "Per frame: probability of coming back onto the map from off it.", low=0.0, high=1.0, section=SEQUENCE,
    )
    forget_probability: float = setting(
        0.1, "Per frame: probability that a place whose views stopped matching is not where the robot is after all "
        "(kidnapped, or off the map): that mass loses its position (off the map).", low=0.0, high=0.5,
        section=SEQUENCE,
    )
    alias_margin: float = setting(
        0.0, "Share of the map's measured alias excess (SimilarityModel.alias_excess: how far the best unrelated "
        "place of a held-out map view scores above the null level) added to the score a place must beat to gain "
        "evidence. 0: the Gaussian null; 1: what unmapped look-alike streets reach (no fixes off the map, far fewer "
        "on it).", low=0.0, high=2.0, section=SEQUENCE,
    )
    outlier_probability: float = setting(
        0.1, "Per frame: probability that the view matches its own place no better than an unrelated one "
        "(occlusion, glare, a passing truck); bounds the evidence one frame can give against a place.",
        low=0.0001, high=0.9, section=SEQUENCE,
    )
    measurement_candidates: int = setting(
        50, "Places retrieved per frame for the measurement step (the others get the last one's score).",
        low=1, high=100000, section=SEQUENCE,
    )
    fix_mass: float = setting(
        0.9, "A fix is published when at least this share of the on-map belief lies within fix_radius_m of the "
        "best place.",
        low=0.01, high=1.0, section=SEQUENCE,
    )
    fix_radius_m: float = setting(
        15.0, "Radius (m) of fix_mass.", low=0.1, high=10000.0, section=SEQUENCE,
    )
    matched_share: float = setting(
        0.5, "A fix also needs this share of the concentrated mass to match the recent frames (after a kidnap the "
        "old place stops matching: no fix from it).", low=0.0, high=1.0, section=SEQUENCE,
    )
    agreement_evidence: float = setting(
        0.25, "A fix also needs the recent frames to favour the concentrated places over unrelated ones by this "
        "log-likelihood ratio (prior-weighted, a running sum halved every frame); 0: merely not against them.",
        low=0.0, high=20.0, section=SEQUENCE,
    )
    contradiction_evidence: float = setting(
        0.75, "A fix is not started on a frame that scores the concentrated places below unrelated ones by more than "
        "this log-likelihood ratio (nats), whatever credit earlier frames carry: the first view after a kidnap "
        "contradicts the places the robot was tracked on.", low=0.0, high=20.0, section=SEQUENCE,
    )
    keep_evidence: float = setting(
        0.0, "An ongoing fix (the previous frame gave one) is kept on a frame whose best-scoring place lies among "
        "the concentrated places and beats an unrelated one, when the running agreement is at least this: a weak "
        "view does not interrupt a confirmed fix, a view matching elsewhere best still does. At or above "
        "agreement_evidence: every frame needs agreement_evidence.", low=0.0, high=20.0, section=SEQUENCE,
    )
    lateral_sigma_m: float = setting(
        2.9, "Across the road (m, 1 sigma): where a car can be on the road of the place it matches (lanes); added "
        "to the fix covariance perpendicular to the heading, isotropically when the heading is unknown. "
        "The sweep command fits it on drives with ground truth (the default: on the demo's held-out routes).",
        low=0.0, high=100.0, section=SEQUENCE,
    )
    odometry_max_speed_mps: float = setting(
        60.0, "Odometry implying a faster motion is a jump: counted in diagnostics and ignored.",
        low=0.1, high=10000.0, section=SEQUENCE,
    )
    odometry_tolerance_s: float = setting(
        0.5, "A frame stamped farther than this outside the odometry received is localized without odometry.",
        low=0.0, high=60.0, section=SEQUENCE,
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)
        if self.kidnap_probability + self.leave_probability >= 1.0:
            raise ConfigError("kidnap_probability + leave_probability must stay below 1")
        if self.kidnap_probability + self.return_probability + self.forget_probability > 1.0:
            raise ConfigError("kidnap_probability + return_probability + forget_probability must not exceed 1")


@dataclass
class OffMapTracks:
    """Belief mass that left the map by driving (past the end of a mapped road, or turning where the map has no
    road), kept at the pose where it left and moved by the odometry like the robot (dead reckoning): it comes back
    onto the map only where its pose meets a mapped road in the mapped direction."""

    xy: np.ndarray  # (M, 2) UTM
    yaw: np.ndarray  # (M,) ENU heading (rad)
    sigma: np.ndarray  # (M,) position sigma (m)
    mass: np.ndarray  # (M,)

    @classmethod
    def empty(cls) -> "OffMapTracks":
        """No track."""
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))

    def total(self) -> float:
        """Mass of all tracks."""
        return float(self.mass.sum())

    def move(self, motion: Motion, noise_m: float, noise_fraction: float) -> None:
        """Dead-reckon every track by the motion (robot frame); its position sigma grows by `noise_fraction` of the
        distance (scale error and heading drift accumulate) and `noise_m` per step (independent noise)."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        self.xy = self.xy + np.column_stack([c * motion.dx - s * motion.dy, s * motion.dx + c * motion.dy])
        self.yaw = self.yaw + motion.dyaw
        self.sigma = np.hypot(self.sigma + noise_fraction * motion.distance, noise_m)

    def add(self, xy: np.ndarray, yaw: np.ndarray, sigma: np.ndarray, mass: np.ndarray) -> float:
        """Add tracks, merge those sharing a cell and heading bin, keep the largest; the mass given up (too many
        tracks, or positions no longer known) is returned for the off-map mass of unknown position."""
        xy = np.vstack([self.xy, xy])
        yaw = np.concatenate([self.yaw, yaw])
        sigma = np.concatenate([self.sigma, sigma])
        mass = np.concatenate([self.mass, mass])
        keep = mass > 0
        xy, yaw, sigma, mass = xy[keep], yaw[keep], sigma[keep], mass[keep]
        if mass.size == 0:
            self.xy, self.yaw, self.sigma, self.mass = xy, yaw, sigma, mass
            return 0.0
        bins = np.floor((np.mod(yaw, 2.0 * math.pi)) / (2.0 * math.pi) * OFF_MAP_HEADING_BINS).astype(np.int64)
        keys = np.column_stack([np.floor(xy / OFF_MAP_CELL_M).astype(np.int64), bins])
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1)
        total = np.bincount(group, weights=mass)
        mean = np.column_stack([np.bincount(group, weights=mass * xy[:, k]) / total for k in (0, 1)])
        heading = np.arctan2(np.bincount(group, weights=mass * np.sin(yaw)),
                             np.bincount(group, weights=mass * np.cos(yaw)))
        spread = np.sum((xy - mean[group]) ** 2, axis=1)
        var = np.bincount(group, weights=mass * (sigma**2 + spread)) / total
        self.xy, self.yaw, self.sigma, self.mass = mean, heading, np.sqrt(var), total
        order = np.argsort(-self.mass)
        keep = np.zeros(self.mass.size, dtype=bool)
        keep[order[:MAX_OFF_MAP_TRACKS]] = True
        keep &= self.sigma <= OFF_MAP_TRACK_MAX_SIGMA_M
        given_up = float(self.mass[~keep].sum())
        self.xy, self.yaw, self.sigma, self.mass = self.xy[keep], self.yaw[keep], self.sigma[keep], self.mass[keep]
        return given_up


class Transition(NamedTuple):
    """One motion step of some sources: the mass moved onto the places (N,), the mass-weighted offsets (N, 2) of the
    predictions that landed on each place (their sum; zero without odometry), the mass-weighted (sin, cos) of their
    headings relative to the place's (N, 2), and per source the mass that found no place with the pose it
    left with (predicted position (S, 2), heading (S,), NaN where unknown, and its sigma)."""

    mass: np.ndarray
    offsets: np.ndarray
    headings: np.ndarray
    leaked: np.ndarray
    centre: np.ndarray
    heading: np.ndarray
    sigma: float


@dataclass
class SequenceDecision:
    """One frame's outcome: the fix when the belief is concentrated, the state and why, and belief summaries."""

    fix: Fix | None
    state: str
    reason: str
    concentrated_mass: float
    off_map_mass: float
    odometry_used: bool


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.arctan2(np.sin(a - b), np.cos(a - b))


def _ball_pairs(tree: cKDTree, centres: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source index, target row) for every map place within radii[s] of centres[s]."""
    lists = tree.query_ball_point(centres, radii)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    src = np.repeat(np.arange(len(lists)), counts)
    tgt = np.fromiter((t for x in lists for t in x), dtype=np.int64, count=int(counts.sum()))
    return src, tgt


class SequenceLocalizer:
    """The belief over a map's places (plus off-map) and its per-frame update from odometry and retrieval scores."""

    def __init__(
        self,
        xy: np.ndarray,
        yaw: np.ndarray,
        place_ids: np.ndarray,
        model: SimilarityModel,
        config: SequenceConfig,
        floor_sigma_m: float,
        position_sigma_m: float = 0.0,
    ) -> None:
        config.validate()
        self.xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        self.yaw = np.asarray(yaw, dtype=np.float64)
        self.place_ids = np.asarray(place_ids, dtype=np.int64)
        if not self.xy.shape[0] == self.yaw.shape[0] == self.place_ids.shape[0] >= 2:
            raise ValueError("sequence localization needs at least 2 places with one position, yaw and id each")
        if not floor_sigma_m > 0:
            raise ValueError(f"floor_sigma_m must be > 0, got {floor_sigma_m}")
        if not (math.isfinite(position_sigma_m) and position_sigma_m >= 0):
            raise ValueError(f"position_sigma_m must be >= 0, got {position_sigma_m}")
        model.validate()
        self.model = model
        self.config = config
        self.n = self.xy.shape[0]
        self.tree = cKDTree(self.xy)
        self.spacing_m = 2.0 * floor_sigma_m
        self.floor_sigma_m = floor_sigma_m
        self.position_sigma_m = position_sigma_m
        self.extent_sigma_m = max(model.place_sigma_m, floor_sigma_m)
        self.heading_sigma = math.radians(config.heading_tolerance_deg)
        self.alias_rate = min(max(model.alias_rate, math.log(2.0) / self.n), 0.5)
        self.odometry = OdometryTrack(config.odometry_max_speed_mps, config.odometry_tolerance_s)
        self.frames = 0
        self.frames_without_odometry = 0
        self.resets = 0
        self.last_decision: SequenceDecision | None = None
        self._lock = threading.RLock()
        self._clear()

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget where the robot is (~/relocalize): the belief starts again from nothing known."""
        with self._lock:
            self._clear()
            self.resets += 1

    def _clear(self) -> None:
        """Half the belief uniform over the places, half off the map; no previous frame."""
        self.belief = np.full(self.n, 0.5 / self.n)
        self.unmatched = np.zeros(self.n)
        self.offset = np.zeros((self.n, 2))  # where each place's mass lies relative to the place (m, UTM)
        self.heading_offset = np.zeros(self.n)  # the robot's heading there minus the place's heading (rad)
        self.lost_anywhere = 0.5  # off the map, position unknown
        self.tracks = OffMapTracks.empty()  # off the map where it drove off (dead-reckoned)
        self.look_alike = np.zeros(self.n)  # off the map on a street that looks like the place (not in the belief)
        self._prior = self.belief.copy()
        self._llr = np.zeros(self.n)
        self._agreement = 0.0
        self._fixing = False
        self.frames_since_reset = 0
        self._last_stamp: int | None = None
        self._last_odom: OdomPose | None = None

    def add_odometry(self, stamp_ns: int, x: float, y: float, yaw: float) -> str:
        """Store one odometry pose (its own frame); '' when accepted, else why it was ignored (also counted)."""
        return self.odometry.add(stamp_ns, x, y, yaw)

    @property
    def lost(self) -> float:
        """Share of the belief off the map: where it drove off (tracked) or anywhere."""
        return self.lost_anywhere + self.tracks.total()

    @property
    def off_map(self) -> float:
        """Share of the belief whose views match no map place (off the map, kidnapped, unfamiliar views)."""
        return float(self.unmatched.sum() + self.lost)

    def status(self) -> dict[str, float | int | str]:
        """Counters and the last state for diagnostics."""
        last = self.last_decision
        return {
            "sequence_state": last.state if last else SEARCHING,
            "sequence_reason": last.reason if last else "no frame yet",
            "sequence_concentrated_mass": last.concentrated_mass if last else 0.0,
            "sequence_off_map_mass": last.off_map_mass if last else self.off_map,
            "sequence_off_map_tracked": self.tracks.total(),
            "sequence_frames": self.frames,
            "sequence_frames_without_odometry": self.frames_without_odometry,
            "sequence_resets": self.resets,
            **self.odometry.counts(),
        }

    # ---------------------------------------------------------------- update
    def update(self, stamp_ns: int | None, rows: np.ndarray, scores: np.ndarray, reference: float) -> SequenceDecision:
        """One frame: motion since the last frame, then the retrieved rows' scores (best first); the decision."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        keep = (rows >= 0) & np.isfinite(scores)
        rows, scores = rows[keep], scores[keep]
        with self._lock:
            if stamp_ns is not None and self._last_stamp is not None and stamp_ns < self._last_stamp:
                self.reset()
            first = self.frames_since_reset == 0
            motion, dt_s = self._motion(stamp_ns, first)
            self.frames += 1
            if not first:
                self._predict(motion, dt_s)
            self.frames_since_reset += 1
            self._measure(rows, scores, reference)
            decision = self._decide(rows, scores, motion is not None)
            self.last_decision = decision
            return decision

    def _motion(self, stamp_ns: int | None, first: bool) -> tuple[Motion | None, float | None]:
        """Odometry motion and elapsed seconds since the previous frame (None where unknown)."""
        dt_s = None
        if stamp_ns is not None and self._last_stamp is not None:
            dt_s = (stamp_ns - self._last_stamp) / NS
        pose = self.odometry.pose_at(stamp_ns) if stamp_ns is not None else None
        motion = motion_between(self._last_odom, pose) if pose is not None and self._last_odom is not None else None
        if not first and motion is None:
            self.frames_without_odometry += 1
        self._last_odom = pose
        self._last_stamp = stamp_ns if stamp_ns is not None else self._last_stamp
        return motion, dt_s

    def _predict(self, motion: Motion | None, dt_s: float | None) -> None:
        """Motion step: move tracked mass (matched and unmatched) and the off-map tracks, keep what drove off the map
        as a track (anywhere without odometry), bring tracks that meet a mapped road back, apply the hazards."""
        cfg = self.config
        background = cfg.kidnap_probability / self.n
        sources = np.flatnonzero(np.maximum(self.belief, self.unmatched) > TRACK_ABOVE_BACKGROUND * background)
        if sources.size == 0:
            sources = np.array([int(np.argmax(self.belief + self.unmatched))])
        lost = 0.0
        moved, leaving = [], []
        staying = self.belief + self.unmatched
        staying[sources] = 0.0
        position_sum = staying[:, None] * self.offset
        heading_sum = staying[:, None] * np.column_stack([np.sin(self.heading_offset), np.cos(self.heading_offset)])
        for part in (self.belief, self.unmatched):
            out = part.copy()
            out[sources] = 0.0
            step = self._transition(sources, part[sources], motion, dt_s)
            moved.append(out + step.mass)
            position_sum += step.offsets
            heading_sum += step.headings
            leaving.append(step)
        matched, unmatched = moved
        look_alike = self._moved_look_alike(motion, dt_s)
        if motion is not None:
            self.tracks.move(motion, cfg.odometry_noise_m, cfg.odometry_noise_fraction)
            returned, returned_headings = self._track_return()
            matched = matched + returned
            heading_sum += returned_headings
            # Mass whose views matched drove off the map where it left it; mass whose views had stopped matching
            # may be anywhere (kidnapped), so it leaves the map without a position.
            drove, doubted = leaving
            known = np.isfinite(drove.heading)
            lost += float(drove.leaked[~known].sum()) + float(doubted.leaked.sum())
            lost += self.tracks.add(drove.centre[known], drove.heading[known], np.full(int(known.sum()), drove.sigma),
                                    drove.leaked[known])
        else:
            lost += sum(float(t.leaked.sum()) for t in leaving) + self.tracks.total()
            self.tracks = OffMapTracks.empty()
        here = matched + unmatched
        self.offset = position_sum / np.where(here > 0, here, 1.0)[:, None]
        relax = math.exp(-motion.distance / HEADING_RELAX_M) if motion is not None else 0.0
        heading_offset = np.arctan2(heading_sum[:, 0], heading_sum[:, 1])
        along = np.abs(heading_offset) <= COMPATIBLE_SIGMAS * self.heading_sigma  # on its road: drift, lanes relax
        self.heading_offset = np.where(along, heading_offset * relax, heading_offset)
        length = np.linalg.norm(self.offset, axis=1)
        self.offset *= np.minimum(1.0, self.spacing_m / np.maximum(length, 1e-12))[:, None]
        leave, kidnap, back = cfg.leave_probability, cfg.kidnap_probability, cfg.return_probability
        forget = cfg.forget_probability
        off = self.lost_anywhere + lost
        total = matched.sum() + unmatched.sum() + off + self.tracks.total()
        self.belief = matched * (1.0 - leave - kidnap) + back * unmatched + (kidnap * total + back * off) / self.n
        self.unmatched = unmatched * (1.0 - back - kidnap - forget) + leave * matched
        self.lost_anywhere = off * (1.0 - kidnap - back) + forget * unmatched.sum()
        self.tracks.mass = self.tracks.mass * (1.0 - kidnap)
        # An unmapped street whose views match a mapped road keeps matching it frame after frame: every frame the
        # tracked off-map mass gives the look-alike twin the map's alias rate, so a sequence of agreeing views after
        # the robot drove off the map weighs a return onto the map against this, not against independent aliases.
        resemblance = math.exp(-motion.distance / LOOK_ALIKE_LENGTH_M) if motion is not None else 0.0
        self.look_alike = look_alike * (1.0 - leave - kidnap) * resemblance + self._look_alike_inflow()
        spread = (kidnap * total + back * off) / self.n  # arrives anywhere in the place's cell: no offset
        here = self.belief + self.unmatched
        kept = ((here - spread) / np.maximum(here, 1e-300)).clip(0.0, 1.0)
        self.offset *= kept[:, None]
        self.heading_offset *= kept
        self._normalise(self.belief.sum() + self.unmatched.sum() + self.lost)

    def _moved_look_alike(self, motion: Motion | None, dt_s: float | None) -> np.ndarray:
        """The look-alike mass after the motion step: it moves like the robot would from the places it looks like
        (with their carried position and heading, before this step updates them); what drives off them looks like
        nothing mapped any more."""
        background = max(self._look_alike_inflow(), 1e-300)  # the uniform part: moving it changes nothing
        sources = np.flatnonzero(self.look_alike > TRACK_ABOVE_BACKGROUND * background)
        moved = self.look_alike.copy()
        if sources.size:
            moved[sources] = 0.0
            moved += self._transition(sources, self.look_alike[sources], motion, dt_s).mass
        return moved

    def _look_alike_inflow(self) -> float:
        """Per place and frame, the tracked off-map mass that may be on a street looking like it (map's alias rate)."""
        return self.alias_rate * self.tracks.total() / self.n

    def _normalise(self, total: float) -> None:
        """Divide every part of the belief by `total`."""
        self.belief /= total
        self.unmatched /= total
        self.lost_anywhere /= total
        self.tracks.mass = self.tracks.mass / total
        self.look_alike /= total

    def _track_return(self) -> tuple[np.ndarray, np.ndarray]:
        """Mass of the off-map tracks that came back onto the map: (N,) per place, and (N, 2) the mass-weighted
        (sin, cos) of the track's heading relative to the place's. A track whose pose meets mapped places heading its
        way (within 2 sigma of the heading tolerance) and not behind it moves there, in the share of its position's
        likelihood at the best of them; the rest stays off the map. Places behind a track are the road it drove off
        (past its end): the share of its position still on that road never left (see _coverage), so returning it
        there would only reset its heading to the road's while the robot turns away."""
        tracks = self.tracks
        out = np.zeros(self.n)
        headings = np.zeros((self.n, 2))
        if tracks.mass.size == 0:
            return out, headings
        width = np.hypot(tracks.sigma, self.spacing_m)
        src, tgt = _ball_pairs(self.tree, tracks.xy, 3.0 * width)
        if src.size == 0:
            return out, headings
        offset = self.xy[tgt] - tracks.xy[src]
        miss = np.linalg.norm(offset, axis=1)
        ahead = offset[:, 0] * np.cos(tracks.yaw[src]) + offset[:, 1] * np.sin(tracks.yaw[src])
        yaw_t = self.yaw[tgt]
        relative = np.where(np.isfinite(yaw_t), _angle_diff(tracks.yaw[src], yaw_t), 0.0)
        heading_ok = np.abs(relative) <= COMPATIBLE_SIGMAS * self.heading_sigma
        w = np.exp(-0.5 * (miss / width[src]) ** 2) * heading_ok * (ahead >= -self.spacing_m / 2.0)
        share = np.zeros(tracks.mass.size)
        np.maximum.at(share, src, w)
        norm = np.bincount(src, weights=w, minlength=tracks.mass.size)
        give = tracks.mass * share
        weight = w / np.where(norm[src] > 0, norm[src], 1.0) * give[src]
        out = np.bincount(tgt, weights=weight, minlength=self.n)
        headings[:, 0] = np.bincount(tgt, weights=weight * np.sin(relative), minlength=self.n)
        headings[:, 1] = np.bincount(tgt, weights=weight * np.cos(relative), minlength=self.n)
        tracks.mass = tracks.mass - give
        return out, headings

    def _transition(
        self, sources: np.ndarray, mass: np.ndarray, motion: Motion | None, dt_s: float | None
    ) -> Transition:
        """Where the mass of `sources` goes (see Transition)."""
        cfg = self.config
        yaw_s = self.yaw[sources]
        known = np.isfinite(yaw_s)
        yaw_k = np.where(known, yaw_s, 0.0)
        unit = np.column_stack([np.cos(yaw_k), np.sin(yaw_k)])
        robot = yaw_s + self.heading_offset[sources]  # the robot's heading: the place's plus what it carries
        heading = np.full(sources.size, np.nan)
        if motion is not None:
            heading = robot + motion.dyaw
            # A robot off a place's line (another lane) by up to the place's extent moves differently in a turn.
            # The places' own positions are known to about a keyframe spacing (GPS noise of the mapping drive).
            sigma = cfg.odometry_noise_m + cfg.odometry_noise_fraction * motion.distance + self.spacing_m \
                + self.extent_sigma_m * abs(motion.dyaw)
            step = np.column_stack([np.cos(robot) * motion.dx - np.sin(robot) * motion.dy,
                                    np.sin(robot) * motion.dx + np.cos(robot) * motion.dy])
            start = self.xy[sources] + self.offset[sources]
            centre = np.where(known[:, None], start + step, start)
            reach = np.where(known, 0.0, motion.distance)
            turn, heading_sigma = motion.dyaw, self.heading_sigma
        else:
            step = cfg.max_speed_mps * dt_s if dt_s is not None and dt_s > 0 else cfg.max_step_m
            sigma = cfg.odometry_noise_m + self.spacing_m
            centre = np.where(known[:, None], self.xy[sources] + unit * step / 2.0, self.xy[sources])
            reach = np.where(known, step / 2.0, step)
            turn, heading_sigma = 0.0, 2.0 * self.heading_sigma
        src, tgt = _ball_pairs(self.tree, centre, reach + 3.0 * sigma + self.spacing_m)
        out = np.zeros(self.n)
        arrived = np.zeros((self.n, 2))
        arrived_heading = np.zeros((self.n, 2))
        if src.size == 0:
            return Transition(out, arrived, arrived_heading, mass.copy(), centre, heading, float(sigma))
        p_t = self.xy[tgt]
        origin = self.xy[sources][src]
        if motion is not None:
            d_known = np.linalg.norm(p_t - centre[src], axis=1)
            d_ring = np.abs(np.linalg.norm(p_t - origin, axis=1) - reach[src])
            miss = np.where(known[src], d_known, d_ring)
        else:
            along = np.clip(((p_t - origin) * unit[src]).sum(axis=1), 0.0, 2.0 * reach[src])
            d_segment = np.linalg.norm(p_t - (origin + unit[src] * along[:, None]), axis=1)
            d_disc = np.maximum(np.linalg.norm(p_t - origin, axis=1) - reach[src], 0.0)
            miss = np.where(known[src], d_segment, d_disc)
        g = np.exp(-0.5 * (miss / sigma) ** 2)
        yaw_t = self.yaw[tgt]
        turn_err = _angle_diff(yaw_t, (robot + turn)[src])
        h = np.where(known[src] & np.isfinite(yaw_t), np.exp(-0.5 * (turn_err / heading_sigma) ** 2), 1.0)
        w = g * h
        norm = np.bincount(src, weights=w, minlength=sources.size)
        width = np.sqrt(sigma**2 + (2.0 * reach) ** 2 / 12.0)
        retained = self._coverage(sources, src, tgt, g, h, centre, unit, known, width)
        if motion is not None:
            retained = retained * self._heading_compatible(sources.size, src, g, h, known)
        ok = norm > 0
        share = np.where(ok[src], w / np.where(norm[src] > 0, norm[src], 1.0), 0.0)
        carried = mass * retained
        weight = share * carried[src]
        out = np.bincount(tgt, weights=weight, minlength=self.n)
        if motion is not None:
            landed = np.where(known[src, None], centre[src] - p_t, 0.0)
            arrived[:, 0] = np.bincount(tgt, weights=weight * landed[:, 0], minlength=self.n)
            arrived[:, 1] = np.bincount(tgt, weights=weight * landed[:, 1], minlength=self.n)
            relative = np.where(np.isfinite(turn_err), -turn_err, 0.0)
            arrived_heading[:, 0] = np.bincount(tgt, weights=weight * np.sin(relative), minlength=self.n)
            arrived_heading[:, 1] = np.bincount(tgt, weights=weight * np.cos(relative), minlength=self.n)
        return Transition(out, arrived, arrived_heading, mass - np.where(ok, carried, 0.0), centre, heading,
                          float(sigma))

    @staticmethod
    def _heading_compatible(count: int, src: np.ndarray, g: np.ndarray, h: np.ndarray,
                            known: np.ndarray) -> np.ndarray:
        """(sources,) share of each source's mass that turned as the map's roads do: the best position weight among
        places whose heading lies within 2 sigma of the robot's predicted heading, over the best among all places. A
        robot that turned into a street the map has no places for finds only places heading another way: its mass
        leaves the map instead of being pushed onto them."""
        best = np.zeros(count)
        best_compatible = np.zeros(count)
        np.maximum.at(best, src, g)
        np.maximum.at(best_compatible, src, g * (h >= COMPATIBLE_H))
        share = np.where(best > 0, best_compatible / np.maximum(best, 1e-300), 0.0)
        return np.where(known, share, 1.0)

    def _coverage(self, sources: np.ndarray, src: np.ndarray, tgt: np.ndarray, g: np.ndarray, h: np.ndarray,
                  centre: np.ndarray, unit: np.ndarray, known: np.ndarray, width: np.ndarray) -> np.ndarray:
        """(sources,) share of each source's predicted position that still lies on mapped road (the rest left it).

        With a heading, the mapped road goes on as far from the source as its farthest place ahead of it (in front
        along the source's heading, any place heading: corner places' headings are noisy, and a bend still counts);
        the share of the prediction (1 sigma `width`) within that distance (plus half a keyframe spacing) stays, the
        share beyond it has driven past the end of the mapped streets and leaves the map instead of piling up on the
        last place. Gaps between places leak nothing. Without a heading: on the map when some heading-compatible
        place lies within 3 sigma of the predicted ring.
        """
        count = sources.size
        compatible = h >= COMPATIBLE_H
        near = np.zeros(count)
        np.maximum.at(near, src, (compatible & (g > math.exp(-4.5))).astype(np.float64))
        origin = self.xy[sources]
        offset = self.xy[tgt] - origin[src]
        ahead = (offset * unit[src]).sum(axis=1) > 0.0
        farthest = np.full(count, -np.inf)
        np.maximum.at(farthest, src[ahead], np.linalg.norm(offset[ahead], axis=1))
        predicted = np.linalg.norm(centre - origin, axis=1)
        on_road = norm_cdf((farthest - predicted + self.spacing_m / 2.0) / width)
        return np.where(known, on_road, near)

    def _measure(self, rows: np.ndarray, scores: np.ndarray, reference: float) -> None:
        """Measurement step: weigh each place by its score's likelihood ratio (unmatched views: ratio 1)."""
        self._prior = self.belief.copy()
        self._llr = np.zeros(self.n)
        if rows.size == 0:
            return
        floor = float(scores.min())
        reference = reference + self.config.alias_margin * self.model.alias_excess
        llr = np.full(self.n, float(self.model.log_likelihood_ratio(np.array([floor]), reference, self.n)[0]))
        if rows.size >= self.n:
            llr[:] = 0.0
        llr[rows] = self.model.log_likelihood_ratio(scores, reference, self.n)
        eps, alias = self.config.outlier_probability, self.alias_rate
        llr = np.logaddexp(math.log1p(-eps) + llr, math.log(eps)) - np.logaddexp(math.log1p(-alias), math.log(alias) + llr)
        top = max(float(llr.max()), 0.0)
        self._prior = self.belief.copy()
        self._llr = llr
        self.belief = self.belief * np.exp(llr - top)
        self.look_alike = self.look_alike * np.exp(llr - top)
        self.unmatched = self.unmatched * math.exp(-top)
        self.lost_anywhere = self.lost_anywhere * math.exp(-top)
        self.tracks.mass = self.tracks.mass * math.exp(-top)
        total = self.belief.sum() + self.unmatched.sum() + self.lost
        if not total > 0 or not math.isfinite(total):
            self._clear()
            return
        self._normalise(total)

    def _decide(self, rows: np.ndarray, scores: np.ndarray, odometry_used: bool) -> SequenceDecision:
        """Fix when the belief is concentrated and the frames agree with it; state and reason either way."""
        cfg = self.config
        where = self.belief + self.unmatched
        best = int(np.argmax(where))
        near = self.tree.query_ball_point(self.xy[best], cfg.fix_radius_m)
        centre = (where[near, None] * self.xy[near]).sum(axis=0) / max(where[near].sum(), 1e-300)
        near = np.asarray(self.tree.query_ball_point(centre, cfg.fix_radius_m), dtype=np.int64)
        if near.size == 0:
            near = np.array([best])
        # The look-alike twin of these places is where the robot could be instead: it counts against the
        # concentration (fix_mass) like on-map mass elsewhere does.
        look_alike = float(self.look_alike[near].sum())
        on_map = float(where.sum()) + look_alike
        mass = float(where[near].sum()) / max(on_map, 1e-300)
        mass_without_twin = float(where[near].sum()) / max(float(where.sum()), 1e-300)
        matched = float(self.belief[near].sum()) / max(on_map, 1e-300)
        off = self.off_map
        prior = self._prior[near]
        support = float((prior * np.exp(self._llr[near])).sum()) / max(float(prior.sum()), 1e-300)
        # Credit carried from earlier frames stays below half the strongest contradiction one frame can give (a
        # view scoring the places at the model's floor): such a frame (a kidnap) always stops the fixes.
        contradiction = math.log((1.0 - self.alias_rate) / cfg.outlier_probability)
        carried = min(AGREEMENT_DECAY * self._agreement, contradiction / 2.0)
        frame_evidence = math.log(max(support, 1e-300))
        self._agreement = frame_evidence + carried
        confirms = self._agreement >= cfg.agreement_evidence and frame_evidence >= -cfg.contradiction_evidence
        keeps = self._fixing and self._agreement >= cfg.keep_evidence and self._best_match_among(rows, near)
        self._fixing = mass >= cfg.fix_mass and matched >= cfg.matched_share * mass and self.lost < 0.5 \
            and (confirms or keeps)
        if self._fixing:
            fix = self._fix(near, where, rows, scores, best)
            how = "" if confirms else "; kept: the frame's best match lies among these places"
            reason = f"converged: {100 * mass:.1f}% of the on-map belief within fix_radius_m={cfg.fix_radius_m:g} " \
                     f"of place {int(self.place_ids[best])}, {100 * matched / mass:.0f}% of it matching the frames{how}"
            return SequenceDecision(fix, CONVERGED, reason, mass, off, odometry_used)
        if off >= 0.5:
            tracked = self.tracks.total()
            why = f"{100 * tracked:.1f}% where the robot drove off the mapped roads, followed by odometry" \
                if tracked >= 0.5 * off else "off the map, kidnapped, or an unfamiliar view"
            reason = f"lost: {100 * off:.1f}% of the belief says the frames match no map place ({why})"
            return SequenceDecision(None, LOST, reason, mass, off, odometry_used)
        if mass < cfg.fix_mass <= mass_without_twin:
            reason = f"searching: the belief is concentrated, but it came from off the map, where an unmapped street " \
                     f"that looks like these places explains the views as well ({100 * look_alike / on_map:.1f}% " \
                     f"look-alike, fix_mass={cfg.fix_mass:g})"
        elif mass >= cfg.fix_mass and not confirms:
            reason = "searching: the belief is concentrated but the recent frames score its places no better " \
                     "than unrelated ones (disagreement: kidnapped, off the map, or a poor view)"
        elif mass >= cfg.fix_mass:
            reason = f"searching: the belief is concentrated but only {100 * matched / mass:.0f}% of it matches the " \
                     f"frames (matched_share={cfg.matched_share:g}): the frames stopped agreeing with it"
        else:
            reason = f"searching: {100 * mass:.1f}% of the on-map belief within fix_radius_m={cfg.fix_radius_m:g} " \
                     f"of the best place (fix_mass={cfg.fix_mass:g}), {100 * off:.1f}% matching no place"
        return SequenceDecision(None, SEARCHING, reason, mass, off, odometry_used)

    def _best_match_among(self, rows: np.ndarray, near: np.ndarray) -> bool:
        """Whether the frame's best-scoring place is one of `near` and scores above an unrelated place's level."""
        return bool(rows.size) and bool(np.isin(rows[0], near)) and float(self._llr[rows[0]]) > 0.0

    def _fix(self, near: np.ndarray, where: np.ndarray, rows: np.ndarray, scores: np.ndarray, best: int) -> Fix:
        """The fix of the concentrated mass: its mean, its spread plus the lateral, resolution and map-position
        terms, its yaw."""
        mean, cov, yaw, yaw_known = pose_covariance(self.xy[near] + self.offset[near], where[near], self.yaw[near],
                                                    self.floor_sigma_m)
        # The mean of the places' positions carries their independent noise weighted by the belief: sigma^2 sum(w^2).
        w = where[near] / max(float(where[near].sum()), 1e-300)
        cov[:2, :2] += self.position_sigma_m**2 * float((w**2).sum()) * np.eye(2)
        if yaw_known:
            normal = np.array([-math.sin(yaw), math.cos(yaw)])
            cov[:2, :2] += self.config.lateral_sigma_m**2 * np.outer(normal, normal)
        else:
            cov[:2, :2] += self.config.lateral_sigma_m**2 * np.eye(2)
        retrieved = np.flatnonzero(np.isin(rows, near))
        return Fix(easting=float(mean[0]), northing=float(mean[1]), yaw=yaw, yaw_known=yaw_known, covariance=cov,
                   place_id=int(self.place_ids[best]),
                   score=float(scores[retrieved[0]]) if retrieved.size else float("nan"), agreeing=int(retrieved.size))
