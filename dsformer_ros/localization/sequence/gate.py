"""The fix gate: a fix is published only when the belief is concentrated and recent views agree with it.

Concentrated: at least `fix_mass` of the on-map belief (plus the look-alike twin of those places) within
`fix_radius_m` of the best place, at least `matched_share` of it matching the frames, less than half of the belief
off the map. Agreeing: the recent frames score those places better than unrelated ones by `agreement_evidence` (a
running log-likelihood ratio halved every frame), and the current frame is not against them by more than
`contradiction_evidence` (the first view after a kidnap). Keeping a fix asks less than starting one: a frame whose
best-scoring place lies among the concentrated places keeps it while the running agreement is at least
`keep_evidence`. No fix rests on odometry alone: the localization stack fuses the odometry itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from dsformer_ros.localization.sequence.config import SequenceConfig

CONVERGED, SEARCHING, LOST = "converged", "searching", "lost"
# The running agreement's decay per frame.
AGREEMENT_DECAY = 0.5


@dataclass(frozen=True)
class Concentration:
    """The belief around its best place, as the gate judges it (shares of the on-map belief plus twin)."""

    best_place_id: int
    mass: float  # within fix_radius_m of the best place
    mass_without_twin: float  # the same without the look-alike twin
    matched: float  # of it, matching the frames
    look_alike: float  # the twin's share there
    unmatched_or_off: float  # of the whole belief: views matching no place
    off_map: float  # of the whole belief: off the map
    tracked: float  # of the whole belief: off the map, dead-reckoned
    frame_evidence: float  # log-likelihood ratio of this frame for those places against unrelated ones
    best_match_among: bool  # the frame's best-scoring place is one of them and beats an unrelated place


class FixGate:
    """Agreement, contradiction and hysteresis over frames; `judge` gives each frame's state and reason."""

    def __init__(self, cfg: SequenceConfig, alias_rate: float) -> None:
        self.cfg = cfg
        # Credit carried from earlier frames stays below half the strongest contradiction one frame can give (a view
        # scoring the places at the model's floor): such a frame (a kidnap) always stops the fixes.
        self.credit_cap = math.log((1.0 - alias_rate) / cfg.outlier_probability) / 2.0
        self.reset()

    def reset(self) -> None:
        """No agreement, no ongoing fix."""
        self.agreement = 0.0
        self.fixing = False

    def judge(self, c: Concentration) -> tuple[str, str]:
        """(state, reason) of a frame; state CONVERGED means publish a fix."""
        cfg = self.cfg
        self.agreement = c.frame_evidence + min(AGREEMENT_DECAY * self.agreement, self.credit_cap)
        confirms = self.agreement >= cfg.agreement_evidence and c.frame_evidence >= -cfg.contradiction_evidence
        keeps = self.fixing and self.agreement >= cfg.keep_evidence and c.best_match_among
        self.fixing = c.mass >= cfg.fix_mass and c.matched >= cfg.matched_share * c.mass and c.off_map < 0.5 \
            and (confirms or keeps)
        if self.fixing:
            how = "" if confirms else "; kept: the frame's best match lies among these places"
            return CONVERGED, f"converged: {100 * c.mass:.1f}% of the on-map belief within fix_radius_m=" \
                              f"{cfg.fix_radius_m:g} of place {c.best_place_id}, {100 * c.matched / c.mass:.0f}% " \
                              f"of it matching the frames{how}"
        if c.unmatched_or_off >= 0.5:
            why = f"{100 * c.tracked:.1f}% where the robot drove off the mapped roads, followed by odometry" \
                if c.tracked >= 0.5 * c.unmatched_or_off else "off the map, kidnapped, or an unfamiliar view"
            return LOST, f"lost: {100 * c.unmatched_or_off:.1f}% of the belief says the frames match no map place " \
                         f"({why})"
        if c.mass < cfg.fix_mass <= c.mass_without_twin:
            return SEARCHING, f"searching: the belief is concentrated, but it came from off the map, where an " \
                              f"unmapped street that looks like these places explains the views as well " \
                              f"({100 * c.look_alike:.1f}% look-alike, fix_mass={cfg.fix_mass:g})"
        if c.mass >= cfg.fix_mass and not confirms:
            return SEARCHING, "searching: the belief is concentrated but the recent frames score its places no " \
                              "better than unrelated ones (disagreement: kidnapped, off the map, or a poor view)"
        if c.mass >= cfg.fix_mass:
            return SEARCHING, f"searching: the belief is concentrated but only {100 * c.matched / c.mass:.0f}% of " \
                              f"it matches the frames (matched_share={cfg.matched_share:g}): the frames stopped " \
                              f"agreeing with it"
        return SEARCHING, f"searching: {100 * c.mass:.1f}% of the on-map belief within fix_radius_m=" \
                          f"{cfg.fix_radius_m:g} of the best place (fix_mass={cfg.fix_mass:g}), " \
                          f"{100 * c.unmatched_or_off:.1f}% matching no place"
