"""The sequence localizer: a discrete Bayes filter over the map's places, moved by odometry, weighed by retrieval.

SeqSLAM's insight (a sequence of weak matches is a strong match) in probabilistic form; every frame is the
textbook's three steps: motion update (motion.py, off_map.py, transitions.py), observation update
(measurement.py), decision (gate.py, fix.py). The belief (belief.py) is sparse, so a frame's cost is bounded by the
retrieved candidates and the belief's capped support, not by the map's size. Design and measurements:
docs/localization.md.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from dsformer_ros.common.geometry import NS_PER_S
from dsformer_ros.localization.odometry import OdometryConfig, OdometryTrack, OdomPose, motion_between
from dsformer_ros.localization.pose_estimate import Fix
from dsformer_ros.localization.sequence.belief import MAX_SUPPORT, Belief
from dsformer_ros.localization.sequence.config import SequenceConfig
from dsformer_ros.localization.sequence.fix import concentrated_fix
from dsformer_ros.localization.sequence.gate import CONVERGED, SEARCHING, Concentration, FixGate
from dsformer_ros.localization.sequence.measurement import Evidence, frame_evidence
from dsformer_ros.localization.sequence.motion import (
    PlaceGraph, Step, odometry_speed, predict, speed_bins, uniform_speed,
)
from dsformer_ros.localization.sequence.off_map import LOOK_ALIKE_LENGTH_M, OFF_MAP_MIN_SHARE, LookAlike
from dsformer_ros.localization.sequence.sparse import Support, positions_in, weigh_excess
from dsformer_ros.localization.sequence.transitions import (
    ANYWHERE, MATCHED, OFF_MAP_TRACKED, OFF_MAP_UNKNOWN, UNMATCHED, transition_table,
)
from dsformer_ros.maps.similarity import SimilarityModel


@dataclass
class SequenceDecision:
    """One frame's outcome: the fix when the belief is concentrated, the state and why, and belief summaries."""

    fix: Fix | None
    state: str
    reason: str
    concentrated_mass: float
    off_map_mass: float
    odometry_used: bool


class SequenceLocalizer:
    """The belief over a map's places (plus off the map) and its per-frame update from odometry and retrieval."""

    def __init__(self, xy: np.ndarray, yaw: np.ndarray, place_ids: np.ndarray, model: SimilarityModel,
                 config: SequenceConfig, floor_sigma_m: float, position_sigma_m: float = 0.0,
                 odometry: OdometryConfig | None = None) -> None:
        config.validate()
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        yaw = np.asarray(yaw, dtype=np.float64)
        self.place_ids = np.asarray(place_ids)
        if not xy.shape[0] == yaw.shape[0] == self.place_ids.shape[0] >= 2:
            raise ValueError("sequence localization needs at least 2 places with one position, yaw and id each")
        if not floor_sigma_m > 0:
            raise ValueError(f"floor_sigma_m must be > 0, got {floor_sigma_m}")
        if not (math.isfinite(position_sigma_m) and position_sigma_m >= 0):
            raise ValueError(f"position_sigma_m must be >= 0, got {position_sigma_m}")
        model.validate()
        self.model = model
        self.config = config
        self.n = xy.shape[0]
        self.graph = PlaceGraph(xy, yaw, 2.0 * floor_sigma_m, max(model.place_sigma_m, floor_sigma_m))
        self.floor_sigma_m = floor_sigma_m
        self.position_sigma_m = position_sigma_m
        self.heading_sigma = math.radians(config.heading_tolerance_deg)
        self.alias_rate = min(max(model.alias_rate, math.log(2.0) / self.n), 0.5)
        self.null_level = model.null_level(self.n)
        self.table = transition_table(config)
        self.speeds = speed_bins(config)
        odometry = odometry or OdometryConfig()
        odometry.validate()
        self.odometry = OdometryTrack(odometry.odometry_max_speed_mps, odometry.odometry_tolerance_s)
        self.frames = 0
        self.frames_without_odometry = 0
        self.resets = 0
        self.places_touched = 0
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
        self.belief = Belief.unknown(self.n, self.speeds.size)
        self.look_alike = LookAlike.empty()
        self.gate = FixGate(self.config, self.alias_rate)
        self.frames_since_reset = 0
        self._last_stamp: int | None = None
        self._last_odom: OdomPose | None = None

    def add_odometry(self, stamp_ns: int, x: float, y: float, yaw: float) -> str:
        """Store one odometry pose (its own frame); '' when accepted, else why it was ignored (also counted)."""
        return self.odometry.add(stamp_ns, x, y, yaw)

    def ranked(self, k: int) -> np.ndarray:
        """The k map rows holding the most belief."""
        with self._lock:
            return self.belief.ranked(k)

    def status(self) -> dict[str, float | int | str]:
        """Counters and the last state for diagnostics."""
        last = self.last_decision
        return {
            "sequence_state": last.state if last else SEARCHING,
            "sequence_reason": last.reason if last else "no frame yet",
            "sequence_concentrated_mass": last.concentrated_mass if last else 0.0,
            "sequence_off_map_mass": last.off_map_mass if last else self.belief.unmatched_or_off,
            "sequence_off_map_tracked": self.belief.tracks.total(),
            "sequence_support_places": len(self.belief.support),
            "sequence_places_touched": self.places_touched,
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
        keep = (rows >= 0) & (rows < self.n) & np.isfinite(scores)
        rows, scores = rows[keep], scores[keep]
        with self._lock:
            if stamp_ns is not None and self._last_stamp is not None and stamp_ns < self._last_stamp:
                self.reset()
            self.places_touched = 0
            step = self._step(stamp_ns)
            self.frames += 1
            if self.frames_since_reset > 0:
                self._motion_update(step)
            self.frames_since_reset += 1
            evidence = frame_evidence(self.model, self.config, self.null_level, self.n, self.alias_rate, rows, scores,
                                      reference)
            prior = self._observation_update(evidence)
            decision = self._decide(evidence, prior, rows, scores, step.motion is not None)
            self.last_decision = decision
            return decision

    def _step(self, stamp_ns: int | None) -> Step:
        """Odometry motion and elapsed time since the previous frame (1 per frame without stamps)."""
        tau = 1.0
        if stamp_ns is not None and self._last_stamp is not None and stamp_ns > self._last_stamp:
            tau = (stamp_ns - self._last_stamp) / NS_PER_S
        pose = self.odometry.pose_at(stamp_ns) if stamp_ns is not None else None
        motion = motion_between(self._last_odom, pose) if pose is not None and self._last_odom is not None else None
        if self.frames_since_reset > 0 and motion is None:
            self.frames_without_odometry += 1
        self._last_odom = pose
        self._last_stamp = stamp_ns if stamp_ns is not None else self._last_stamp
        return Step(motion, tau)

    def _motion_update(self, step: Step) -> None:
        """Move the placed mass, the off-map tracks and the look-alike twin; apply the transition table."""
        cfg, belief = self.config, self.belief
        carried = belief.support
        moved = predict(self.graph, cfg, step, carried, self.speeds)
        self.places_touched += moved.pairs
        support = moved.support
        unknown = float(moved.leaked[:, 1].sum())  # views that had stopped matching: may be anywhere
        if step.motion is not None:
            belief.tracks.move(step.motion, cfg.odometry_noise_m, cfg.odometry_noise_fraction)
            back, pairs = belief.tracks.returning(self.graph, self.heading_sigma, odometry_speed(self.speeds, step))
            self.places_touched += pairs
            if len(back):
                joined = support.concat(back)
                support = Support.gather(joined.rows, joined.matched, joined.unmatched, joined.offset,
                                         joined.heading, joined.speed)
            drove = np.isfinite(moved.yaw)  # matched mass that drove off the mapped roads: a track where it left
            unknown += float(moved.leaked[~drove, 0].sum())
            unknown += belief.tracks.add(moved.centre[drove], moved.yaw[drove], moved.sigma[drove],
                                         moved.leaked[drove, 0], OFF_MAP_MIN_SHARE * float(belief.masses().sum()))
        else:
            unknown += float(moved.leaked[:, 0].sum()) + belief.tracks.total()  # no odometry: no dead reckoning
            belief.tracks.mass = np.zeros(belief.tracks.mass.size)
        belief.support = support
        belief.off_map_unknown += unknown
        self._apply_transitions()
        self._move_look_alike(step, carried)
        belief.prune()

    def _apply_transitions(self) -> None:
        """The transition table on every part: per place for the placed parts, as totals for the others."""
        t, belief = self.table, self.belief
        s = belief.support
        totals = belief.masses()
        s.matched, s.unmatched = (t[MATCHED, MATCHED] * s.matched + t[UNMATCHED, MATCHED] * s.unmatched,
                                  t[MATCHED, UNMATCHED] * s.matched + t[UNMATCHED, UNMATCHED] * s.unmatched)
        belief.anywhere = float(totals @ t[:, ANYWHERE]) / self.n
        belief.tracks.mass = belief.tracks.mass * t[OFF_MAP_TRACKED, OFF_MAP_TRACKED]
        belief.off_map_unknown = float(totals @ t[:, OFF_MAP_UNKNOWN])

    def _move_look_alike(self, step: Step, carried: Support) -> None:
        """The twin moves like the belief would from the places it resembles (with what the belief `carried` there
        before this step), fades with distance, and is fed by the tracked off-map mass at the map's alias rate."""
        cfg, twin = self.config, self.look_alike
        fade = (1.0 - cfg.stop_matching_probability - cfg.kidnap_probability) \
            * (math.exp(-step.motion.distance / LOOK_ALIKE_LENGTH_M) if step.motion is not None else 0.0)
        inflow = self.alias_rate * self.belief.tracks.total() / self.n
        if twin.rows.size and fade > 0:
            sources = _carried_at(carried, twin.rows, uniform_speed(self.speeds.size))
            sources.matched = twin.mass
            moved = predict(self.graph, cfg, step, sources, self.speeds)
            self.places_touched += moved.pairs
            twin = LookAlike(moved.support.rows, moved.support.matched * fade, twin.level * fade + inflow)
        else:
            twin = LookAlike(np.zeros(0, dtype=np.int64), np.zeros(0), twin.level * fade + inflow)
        self.look_alike = twin.pruned(self.n, OFF_MAP_MIN_SHARE * float(self.belief.masses().sum()), MAX_SUPPORT)

    def _observation_update(self, evidence: Evidence | None) -> tuple[Support, float]:
        """Weigh every place by its evidence (unmatched and off-map mass: ratio 1); the matched mass before it."""
        belief = self.belief
        prior = (belief.support.take(slice(None)), belief.anywhere)
        if evidence is None:
            return prior
        top = evidence.top
        floor = evidence.floor - top
        s = belief.support.with_rows(evidence.rows, uniform_speed(self.speeds.size))
        s.matched, belief.anywhere = weigh_excess(belief.anywhere, s.matched, evidence.at(s.rows) - top, floor)
        s.unmatched = s.unmatched * math.exp(-top)
        belief.support = s
        belief.tracks.mass = belief.tracks.mass * math.exp(-top)
        belief.off_map_unknown *= math.exp(-top)
        twin = self.look_alike.with_rows(evidence.rows)
        twin.mass, twin.level = weigh_excess(twin.level, twin.mass, evidence.at(twin.rows) - top, floor)
        self.places_touched += int(s.rows.size + twin.rows.size)
        total = float(belief.masses().sum())
        if not (total > 0 and math.isfinite(total)):
            self._clear()
            return prior
        belief.scale(1.0 / total)
        twin.mass, twin.level = twin.mass / total, twin.level / total
        self.look_alike = twin
        belief.prune()
        return prior

    def _decide(self, evidence: Evidence | None, prior: tuple[Support, float], rows: np.ndarray, scores: np.ndarray,
                odometry_used: bool) -> SequenceDecision:
        """Judge the belief around its best place; a fix when the gate says so."""
        belief, graph, cfg = self.belief, self.graph, self.config
        s = belief.support
        best = int(s.rows[np.argmax(s.matched + s.unmatched)]) if len(s) else 0
        near = graph.within(graph.xy[best], cfg.fix_radius_m)
        weight = belief.at(near)
        centre = (weight[:, None] * graph.xy[near]).sum(axis=0) / max(float(weight.sum()), 1e-300)
        near = graph.within(centre, cfg.fix_radius_m)
        if near.size == 0:
            near = np.array([best])
        where = belief.at(near)
        at = s.index(near)
        matched = np.full(near.size, belief.anywhere)
        matched[at >= 0] += s.matched[at[at >= 0]]
        twin = float(self.look_alike.at(near).sum())
        on_map = belief.on_map() + twin
        held = float(where.sum())
        log_ratio = evidence.at(near) if evidence is not None else np.zeros(near.size)
        prior_support, prior_anywhere = prior
        before = np.full(near.size, prior_anywhere)
        was = positions_in(prior_support.rows, near)
        before[was >= 0] += prior_support.matched[was[was >= 0]]
        agreement = float((before * np.exp(log_ratio)).sum()) / max(float(before.sum()), 1e-300)
        self.places_touched += int(2 * near.size)
        concentration = Concentration(
            best_place_id=int(self.place_ids[best]), mass=held / max(on_map, 1e-300),
            mass_without_twin=held / max(belief.on_map(), 1e-300), matched=float(matched.sum()) / max(on_map, 1e-300),
            look_alike=twin / max(on_map, 1e-300), unmatched_or_off=belief.unmatched_or_off, off_map=belief.off_map,
            tracked=belief.tracks.total(), frame_evidence=math.log(max(agreement, 1e-300)),
            best_match_among=bool(rows.size) and bool(np.isin(rows[0], near)) and evidence is not None
            and float(evidence.log_ratio[0]) > 0.0,
        )
        state, reason = self.gate.judge(concentration)
        fix = None
        if state == CONVERGED:
            offset = np.zeros((near.size, 2))
            offset[at >= 0] = s.offset[at[at >= 0]]
            retrieved = np.flatnonzero(np.isin(rows, near))
            fix = concentrated_fix(graph.xy[near] + offset, where, graph.yaw[near], self.floor_sigma_m,
                                   self.position_sigma_m, cfg.lateral_sigma_m, int(self.place_ids[best]),
                                   float(scores[retrieved[0]]) if retrieved.size else float("nan"),
                                   int(retrieved.size))
        return SequenceDecision(fix, state, reason, concentration.mass, belief.unmatched_or_off, odometry_used)


def _carried_at(carried: Support, rows: np.ndarray, speed: np.ndarray) -> Support:
    """A support over the sorted `rows` without mass, carrying what `carried` holds at them (elsewhere nothing and
    the speed distribution given)."""
    out = Support.empty(speed.size).with_rows(rows, speed)
    at = carried.index(out.rows)
    k = at >= 0
    out.offset[k], out.heading[k], out.speed[k] = carried.offset[at[k]], carried.heading[at[k]], carried.speed[at[k]]
    return out
