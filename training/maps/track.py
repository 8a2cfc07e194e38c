"""A vehicle track from GPS fixes or UTM odometry: filtering, one UTM zone, heading, interpolation to image stamps,
and keyframe selection (one place every D metres and on heading changes).

Fixes are small, so the whole track is kept in memory; images never are. Headings are compass bearings in degrees
(clockwise from north: 0 north, 90 east), NaN when unknown.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Iterable

import numpy as np

from dsformer_ros.common.geometry import NS_PER_S, heading_difference_deg, yaw_to_heading
from dsformer_ros.common.utm import latlon_to_utm, utm_to_latlon, zone_letter, zone_number
from training.io.bag_reader import STATUS_NO_FIX, GpsFix, OdomPose

log = logging.getLogger(__name__)

# frame drop reasons of `position_frames`
FIX_GAP = "no_fix_near_in_time"
OUTSIDE_TRACK = "outside_gps_track"
TRACK_JUMP = "across_a_track_jump"
SPACING_TOLERANCE_M = 1e-3  # a keyframe exactly D metres on counts despite rounding in the projection
EARTH_RADIUS_M = 6_371_000.0


@dataclasses.dataclass
class MotionGate:
    """Fixes the vehicle cannot have reached: further from their neighbours, or from the last accepted fix, than
    `max_speed_mps` (and, from the speed it had, `max_accel_mps2`) allows, give or take `noise_m` of GPS error.
    A fix more than `noise_m` plus the travel allowed in half the window from the median of the `window` fixes
    around it is a glitch (a jump to (0, 0), a multipath excursion). After `max_rejected_run` rejections in a
    row the gate starts over from the current fix (the vehicle really was elsewhere, e.g. after a ferry)."""

    max_speed_mps: float = 60.0
    max_accel_mps2: float = 10.0
    noise_m: float = 10.0
    window: int = 5
    max_rejected_run: int = 20

    def validate(self) -> None:
        """Raise TrackError naming the first bad field."""
        for name in ("max_speed_mps", "max_accel_mps2", "noise_m"):
            if not getattr(self, name) > 0:
                raise TrackError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.window < 1 or self.window % 2 == 0 or self.max_rejected_run < 1:
            raise TrackError("window must be odd and >= 1, max_rejected_run >= 1")


class TrackError(ValueError):
    """The position source cannot give a usable track (no valid fixes, two hemispheres, bad zone)."""


@dataclasses.dataclass
class Track:
    """Valid positions sorted by stamp, all in one UTM zone; `counts` says how many fixes were rejected and why."""

    stamp_ns: np.ndarray
    easting: np.ndarray
    northing: np.ndarray
    heading_deg: np.ndarray
    zone_number: int
    zone_letter: str
    heading_source: str
    counts: dict
    crossed_zones: list
    segment_start: np.ndarray | None = None  # fixes that begin a new segment after a jump; None: one segment


@dataclasses.dataclass
class FramePositions:
    """Per-frame interpolated UTM position, lat/lon and heading; `reason` is '' for positioned frames."""

    easting: np.ndarray
    northing: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    heading_deg: np.ndarray
    reason: np.ndarray

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of positioned frames."""
        return self.reason == ""


def parse_utm_zone(text: str) -> tuple[int, str]:
    """'32U' -> (32, 'U'); raise TrackError for anything else."""
    match = re.fullmatch(r"\s*(\d{1,2})\s*([C-HJ-NP-Xc-hj-np-x])\s*", str(text))
    if not match or not 1 <= int(match.group(1)) <= 60:
        raise TrackError(f"UTM zone must look like '32U' (number 1..60 and a band letter C..X), got {text!r}")
    return int(match.group(1)), match.group(2).upper()


def _sorted_unique(stamps: np.ndarray) -> np.ndarray:
    """Indices that sort by stamp, keeping the first of equal stamps."""
    order = np.argsort(stamps, kind="stable")
    keep = np.ones(order.size, dtype=bool)
    keep[1:] = np.diff(stamps[order]) != 0
    return order[keep]


def _local_metres(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular x/y (m) around the median fix: enough to measure the jumps a gate looks for, in any zone."""
    lat0, lon0 = float(np.median(lat)), float(np.median(lon))
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0
    x = np.radians(dlon) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    return x, np.radians(lat - lat0) * EARTH_RADIUS_M


def gate_motion(stamps_ns: np.ndarray, x: np.ndarray, y: np.ndarray, gate: MotionGate,
                std_m: np.ndarray | None = None) -> tuple[np.ndarray, dict, np.ndarray]:
    """Mask of the fixes (sorted by stamp, x/y in metres) that pass `gate`, how many each stage rejected, and the
    mask of fixes that start a new segment after a jump (never interpolated across); a fix's known horizontal std
    (`std_m`, NaN when unknown) widens its allowance by three of it."""
    n = stamps_ns.size
    slack = 3.0 * np.nan_to_num(np.zeros(n) if std_m is None else np.asarray(std_m, dtype=np.float64), nan=0.0)
    t = (stamps_ns - stamps_ns[0]) / NS_PER_S if n else np.zeros(0)
    keep = np.ones(n, dtype=bool)
    half = gate.window // 2
    if n > gate.window:
        lo = np.clip(np.arange(n) - half, 0, n - gate.window)  # each fix's window, shifted inside at the ends
        windows = lo[:, None] + np.arange(gate.window)
        deviation = np.hypot(x - np.median(x[windows], axis=1), y - np.median(y[windows], axis=1))
        allowed = gate.noise_m + slack + gate.max_speed_mps * (t[lo + gate.window - 1] - t[lo]) / 2.0
        keep = deviation <= allowed
    outliers = int((~keep).sum())
    starts = np.zeros(n, dtype=bool)
    last, speed, restarts = -1, gate.max_speed_mps, 0  # the speed at the start is unknown: any
    pending: list[int] = []  # fixes rejected as unreachable since the last accepted one
    for i in np.flatnonzero(keep):
        if last < 0:
            last = i
            continue
        dt = t[i] - t[last]
        reach_speed = min(gate.max_speed_mps, speed + gate.max_accel_mps2 * dt)
        reachable = reach_speed * dt + gate.noise_m + slack[i] + slack[last]
        distance = math.hypot(x[i] - x[last], y[i] - y[last])
        if distance <= reachable:
            speed = distance / dt if dt > 0 else speed
        elif len(pending) >= gate.max_rejected_run:
            restarts += 1
            log.warning("the GPS track jumps %.0f m at %.1f s and stays there; continuing from the new position",
                        distance, t[i])
            segment = _consistent_run(pending, i, t, x, y, gate, slack)
            keep[segment] = True
            starts[min(segment + [i])] = True
            speed = gate.max_speed_mps
        else:
            keep[i] = False
            pending.append(i)
            continue
        last, pending = i, []
    return keep, {"fix_rejected_outlier": outliers, "fix_rejected_speed": int(n - keep.sum()) - outliers,
                  "track_restarts": restarts}, starts


def _consistent_run(pending: list[int], end: int, t: np.ndarray, x: np.ndarray, y: np.ndarray, gate: MotionGate,
                    slack: np.ndarray) -> list[int]:
    """The rejected fixes just before a restart at `end` that the vehicle can have driven through on its way to
    `end` (walking back from it): after a real jump (a ferry, a teleported robot) they are the new track's start."""
    segment, current = [], end
    for j in reversed(pending):
        reachable = gate.max_speed_mps * (t[current] - t[j]) + gate.noise_m + slack[j] + slack[current]
        if math.hypot(x[current] - x[j], y[current] - y[j]) <= reachable:
            segment.append(j)
            current = j
    return segment


def _warn_bad_covariances(records: list, what: str) -> None:
    """One warning for the records refused for a covariance no sensor can mean (negative or NaN variance)."""
    bad = [r for r in records if r.covariance_error]
    if bad:
        log.warning("refused %d of %d %s whose covariance is unusable (first at stamp %d ns: %s); a negative or NaN "
                    "variance is neither exact nor unknown", len(bad), len(records), what, bad[0].stamp_ns,
                    bad[0].covariance_error)


def track_from_fixes(fixes: Iterable[GpsFix], max_horizontal_std_m: float, heading_baseline_m: float,
                     gate: MotionGate | None = None) -> Track:
    """Filter NavSatFix records (NO_FIX status, NaN, horizontal std above the limit, motion the vehicle cannot
    have made) and project them into the UTM zone of the first valid fix; heading from the track itself
    (NavSatFix carries none)."""
    records = list(fixes)
    counts = {"fixes_read": len(records), "fix_rejected_no_fix_status": 0, "fix_rejected_nan": 0,
              "fix_rejected_covariance": 0, "fix_rejected_bad_covariance": 0, "fix_covariance_unknown": 0}
    kept: list[GpsFix] = []
    for fix in records:
        if fix.status <= STATUS_NO_FIX:
            counts["fix_rejected_no_fix_status"] += 1
        elif not (math.isfinite(fix.lat) and math.isfinite(fix.lon)) or not (-80 <= fix.lat <= 84):
            counts["fix_rejected_nan"] += 1
        elif fix.covariance_error:
            counts["fix_rejected_bad_covariance"] += 1
        elif math.isnan(fix.horizontal_std_m):
            counts["fix_covariance_unknown"] += 1
            kept.append(fix)
        elif fix.horizontal_std_m > max_horizontal_std_m:
            counts["fix_rejected_covariance"] += 1
        else:
            kept.append(fix)
    _warn_bad_covariances(records, "GPS fixes")
    if not kept:
        counts["fixes_used"] = 0
        raise TrackError(f"no usable GPS fix among {len(records)} ({_counts_text(counts)})")
    stamps = np.array([f.stamp_ns for f in kept], dtype=np.int64)
    order = _sorted_unique(stamps)
    stamps = stamps[order]
    lat = np.array([f.lat for f in kept])[order]
    lon = np.array([f.lon for f in kept])[order]
    std = np.array([f.horizontal_std_m for f in kept])[order]
    gate = gate or MotionGate()
    gate.validate()
    passed, gate_counts, starts = gate_motion(stamps, *_local_metres(lat, lon), gate, std)
    counts.update(gate_counts)
    if not passed.all():
        log.warning("rejected %d GPS fix(es) the vehicle cannot have reached (%d outliers, %d too fast)",
                    int((~passed).sum()), gate_counts["fix_rejected_outlier"], gate_counts["fix_rejected_speed"])
    stamps, lat, lon = stamps[passed], lat[passed], lon[passed]
    counts["fixes_used"] = int(stamps.size)
    first_zone = int(zone_number(lat[0], lon[0]))
    letters = zone_letter(lat)
    if len(set((letters >= "N").tolist())) != 1:
        raise TrackError("the GPS track crosses the equator; a map must lie in one hemisphere (split the log)")
    zones = sorted(set(zone_number(lat, lon).tolist()))
    crossed = [z for z in zones if z != first_zone]
    if crossed:
        log.warning("the GPS track crosses into UTM zone(s) %s; all positions are projected into zone %d%s",
                    crossed, first_zone, letters[0])
    easting, northing, _, _ = latlon_to_utm(lat, lon, force_zone=first_zone)
    starts = starts[passed]
    bounds = np.concatenate([[0], np.flatnonzero(starts[1:]) + 1, [starts.size]])
    heading = np.concatenate([track_headings(easting[a:b], northing[a:b], heading_baseline_m)
                              for a, b in zip(bounds[:-1], bounds[1:])])  # never across a jump
    return Track(stamps, easting, northing, heading, first_zone, str(letters[0]), "track", counts, crossed, starts)


def track_from_odometry(poses: Iterable[OdomPose], utm_zone: str, max_horizontal_std_m: float,
                        heading_baseline_m: float) -> Track:
    """Odometry whose x/y are UTM easting/northing in `utm_zone` ('32U'); heading from its yaw where given,
    else from the track."""
    number, letter = parse_utm_zone(utm_zone)
    records = list(poses)
    counts = {"fixes_read": len(records), "fix_rejected_nan": 0, "fix_rejected_covariance": 0,
              "fix_rejected_bad_covariance": 0}
    kept: list[OdomPose] = []
    for pose in records:
        if not (math.isfinite(pose.x) and math.isfinite(pose.y)):
            counts["fix_rejected_nan"] += 1
        elif pose.covariance_error:
            counts["fix_rejected_bad_covariance"] += 1
        elif pose.horizontal_std_m > max_horizontal_std_m:
            counts["fix_rejected_covariance"] += 1
        else:
            kept.append(pose)
    counts["fixes_used"] = len(kept)
    _warn_bad_covariances(records, "odometry poses")
    if not kept:
        raise TrackError(f"no usable odometry pose among {len(records)} ({_counts_text(counts)})")
    stamps = np.array([p.stamp_ns for p in kept], dtype=np.int64)
    order = _sorted_unique(stamps)
    easting = np.array([p.x for p in kept])[order]
    northing = np.array([p.y for p in kept])[order]
    yaw = np.array([p.yaw for p in kept])[order]
    heading = yaw_to_heading(yaw)
    source = "odometry"
    if np.isnan(heading).all():
        heading = track_headings(easting, northing, heading_baseline_m)
        source = "track"
    return Track(stamps[order], easting, northing, heading, number, letter, source, counts, [])


def track_headings(easting: np.ndarray, northing: np.ndarray, baseline_m: float) -> np.ndarray:
    """Compass heading at each track point from the displacement over about `baseline_m` of travel centred on it;
    points where the vehicle stands still take the nearest known heading (NaN when it never moves)."""
    n = easting.size
    if n < 2:
        return np.full(n, np.nan)
    step = np.hypot(np.diff(easting), np.diff(northing))
    s = np.concatenate([[0.0], np.cumsum(step)])
    half = baseline_m / 2.0
    j = np.clip(np.searchsorted(s, s - half, side="right") - 1, 0, n - 1)
    k = np.clip(np.searchsorted(s, s + half, side="left"), 0, n - 1)
    de = easting[k] - easting[j]
    dn = northing[k] - northing[j]
    heading = np.mod(np.degrees(np.arctan2(de, dn)), 360.0)
    heading[np.hypot(de, dn) < half] = np.nan
    return _fill_nearest(heading)


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    """NaNs replaced by the previous finite value (the next one at the start)."""
    finite = np.isfinite(values)
    if not finite.any():
        return values
    idx = np.where(finite, np.arange(values.size), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = values[idx]
    first = int(np.flatnonzero(finite)[0])
    filled[:first] = values[first]
    return filled


def position_frames(track: Track, stamps_ns: np.ndarray, max_fix_gap_s: float) -> FramePositions:
    """Interpolate the track to frame stamps; a frame needs a fix within `max_fix_gap_s` on each side of it, and
    none between two fixes on either side of a jump (where the vehicle was in between is unknown)."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    t = track.stamp_ns
    n = stamps_ns.size
    reason = np.full(n, "", dtype=object)
    hi = np.searchsorted(t, stamps_ns, side="left")
    exact = (hi < t.size) & (t[np.minimum(hi, t.size - 1)] == stamps_ns)
    outside = ~exact & ((hi == 0) | (hi == t.size))
    lo = np.clip(hi - 1, 0, t.size - 1)
    hi_c = np.clip(hi, 0, t.size - 1)
    lo = np.where(exact, hi_c, lo)
    max_gap = int(max_fix_gap_s * NS_PER_S)
    gap = np.maximum(stamps_ns - t[lo], t[hi_c] - stamps_ns)
    reason[outside] = OUTSIDE_TRACK
    reason[~outside & ~exact & (gap > max_gap)] = FIX_GAP
    if track.segment_start is not None:
        reason[~outside & ~exact & (reason == "") & track.segment_start[hi_c]] = TRACK_JUMP
    span = (t[hi_c] - t[lo]).astype(np.float64)
    w = np.where(span > 0, (stamps_ns - t[lo]) / np.where(span > 0, span, 1.0), 0.0)
    w = np.clip(w, 0.0, 1.0)
    easting = track.easting[lo] + w * (track.easting[hi_c] - track.easting[lo])
    northing = track.northing[lo] + w * (track.northing[hi_c] - track.northing[lo])
    heading = _interp_heading(track.heading_deg[lo], track.heading_deg[hi_c], w)
    ok = reason == ""
    easting[~ok] = np.nan
    northing[~ok] = np.nan
    heading[~ok] = np.nan
    lat = np.full(n, np.nan)
    lon = np.full(n, np.nan)
    if ok.any():
        lat[ok], lon[ok] = utm_to_latlon(easting[ok], northing[ok], track.zone_number, track.zone_letter)
    return FramePositions(easting, northing, lat, lon, heading, reason.astype(str))


def _interp_heading(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Headings interpolated on the circle; where one side is unknown the other is used."""
    ra, rb = np.radians(a), np.radians(b)
    x = (1 - w) * np.cos(ra) + w * np.cos(rb)
    y = (1 - w) * np.sin(ra) + w * np.sin(rb)
    out = np.mod(np.degrees(np.arctan2(y, x)), 360.0)
    out = np.where(np.isnan(a), b, np.where(np.isnan(b), a, out))
    return out


def check_frame_stamps(stamps_ns: np.ndarray, what: str) -> None:
    """Raise TrackError when image header stamps cannot place the frames in time (all the same, typically 0: a
    driver that never sets them); warn when some are 0. `what` names the topic and the log."""
    stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
    if stamps_ns.size > 1 and (stamps_ns == stamps_ns[0]).all():
        raise TrackError(
            f"all {stamps_ns.size} image header stamps of {what} are {int(stamps_ns[0])}: the camera driver does not "
            "stamp its images, so they cannot be matched to positions"
        )
    zero = int((stamps_ns == 0).sum())
    if zero:
        log.warning("%d of %d image header stamps of %s are 0; those frames cannot be positioned", zero,
                    stamps_ns.size, what)


def select_keyframes(easting: np.ndarray, northing: np.ndarray, heading_deg: np.ndarray, spacing_m: float,
                     heading_change_deg: float) -> np.ndarray:
    """Indices of keyframes among positioned frames in stamp order: the first, then each frame at least
    `spacing_m` from the last keyframe or turned more than `heading_change_deg` from it (0 disables turns)."""
    n = easting.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keep = [0]
    last_e, last_n, last_h = easting[0], northing[0], heading_deg[0]
    reach = spacing_m - SPACING_TOLERANCE_M
    spacing2 = reach * reach
    for i in range(1, n):
        de = easting[i] - last_e
        dn = northing[i] - last_n
        turned = False
        if heading_change_deg > 0 and math.isfinite(heading_deg[i]) and math.isfinite(last_h):
            turned = heading_difference_deg(heading_deg[i], last_h) >= heading_change_deg
        if de * de + dn * dn >= spacing2 or turned:
            keep.append(i)
            last_e, last_n, last_h = easting[i], northing[i], heading_deg[i]
        elif not math.isfinite(last_h):
            last_h = heading_deg[i]
    return np.asarray(keep, dtype=np.int64)


def keyframe_alternates(easting: np.ndarray, northing: np.ndarray, keys: np.ndarray, spacing_m: float,
                        max_per_key: int) -> tuple[np.ndarray, np.ndarray]:
    """Stand-ins for keyframes whose image may turn out undecodable: for each keyframe (`keys`, ascending indices
    into frames in stamp order) the frames after it, before the next keyframe and less than `spacing_m` from it,
    at most `max_per_key`. Returns (keyframe index, stand-in index) pairs, nearest in time first."""
    pairs_key, pairs_alt = [], []
    bounds = np.append(keys, easting.size)
    for key, stop in zip(keys, bounds[1:]):
        following = np.arange(key + 1, stop)
        near = following[np.hypot(easting[following] - easting[key], northing[following] - northing[key]) < spacing_m]
        near = near[:max_per_key]
        pairs_key.extend([key] * near.size)
        pairs_alt.extend(near.tolist())
    return np.asarray(pairs_key, dtype=np.int64), np.asarray(pairs_alt, dtype=np.int64)


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())
