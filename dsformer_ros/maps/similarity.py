"""The map's measurement model: how descriptor similarity depends on distance, fitted from the map's own places.

The sequence localizer turns retrieval scores into likelihoods. Instead of guessing how much a score of 0.7 says,
we fit it from the map: pairs of places that look the same way (headings within 45 degrees) close together are
"positives", pairs far apart are "negatives". An equal-variance Gaussian model of the two score populations gives
the log-likelihood ratio of a score as a straight line with slope delta / sigma^2; its zero point lies above the
query's own negative level (`reference`: its median score against a fixed sample of places) by what the best of the
map's unrelated places typically reaches, so a change of light or weather that lowers every score alike does not
move the evidence. The same fit gives the map's visual
resolution: the distance at which neighbouring places' similarity has fallen half-way to the negative level,
converted to the sigma of a Gaussian (`place_sigma_m`), which bounds how precisely one place can say where a robot
is. `build-map` stores the model in the manifest's `similarity` section; `dsformer-vpr fit-similarity MAP` adds it
to an existing map.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import norm

from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.common.geometry import angle_difference, heading_to_yaw

if TYPE_CHECKING:
    from dsformer_ros.maps.placemap import PlaceMap

log = logging.getLogger(__name__)

HEADING_TOLERANCE_RAD = math.radians(45.0)
# Distance bins of the similarity profile, in keyframe spacings, and pairs sampled per population.
PROFILE_BINS = 16
MAX_PAIRS = 20000
MIN_PAIRS = 10
# Half-height of a Gaussian kernel: d_half = sigma * sqrt(2 ln 2).
HALF_HEIGHT = math.sqrt(2.0 * math.log(2.0))
REFERENCE_SAMPLE = 512
# Map views held out (their surroundings removed) to measure how well the best unrelated place scores.
HELD_OUT_VIEWS = 256
DRIVE_BASELINE_M = 16.0


class SimilarityFitError(ValueError):
    """The map's places cannot give a measurement model (too few places, pairs, or no contrast); says why."""


@dataclasses.dataclass
class SimilarityModel:
    """Fitted score populations (positives: nearby same-heading places; negatives: distant places) and resolution."""

    positive_mean: float
    positive_std: float
    negative_mean: float
    negative_std: float
    place_sigma_m: float
    positive_radius_m: float
    negative_radius_m: float
    keyframe_spacing_m: float
    positive_pairs: int
    negative_pairs: int
    places: int = 0  # places of the map the model was fitted on (for the null level and the alias rate)
    alias_rate: float = 0.0  # share of distant place pairs scoring above the null level: how often a view aliases
    # Median of how far the best place beyond negative_radius_m of a held-out map view scores above the null level
    # (0 when it does not beat it): what an unmapped view of a look-alike street reaches (SequenceConfig.alias_margin).
    alias_excess: float = 0.0
    profile_m: list[float] = dataclasses.field(default_factory=list)
    profile_similarity: list[float] = dataclasses.field(default_factory=list)

    @property
    def delta(self) -> float:
        """Mean score gap between positives and negatives."""
        return self.positive_mean - self.negative_mean

    @property
    def pooled_std(self) -> float:
        """Common standard deviation of the equal-variance model."""
        return math.sqrt((self.positive_std**2 + self.negative_std**2) / 2.0)

    @property
    def slope(self) -> float:
        """Log-likelihood ratio per unit of score."""
        return self.delta / self.pooled_std**2

    def null_level(self, places: int) -> float:
        """How far above a query's negative level the best of `places` unrelated places typically scores."""
        z = float(norm.isf(math.log(2.0) / max(places, 2)))
        return min(self.negative_std * z, self.delta / 2.0)

    def log_likelihood_ratio(self, scores: np.ndarray, reference: float, places: int) -> np.ndarray:
        """Evidence (log-likelihood ratio) that the query is at each scored place rather than elsewhere.

        The slope is the equal-variance Gaussian model's; the zero point lies `null_level(places)` above the query's
        negative level `reference`: a score counts for a place only when it beats what the best of the map's
        unrelated places would typically reach. The zero point does not use the positive mean of the map's own
        (same-condition) pairs, because a query in other light or weather scores lower against its true place.
        """
        return self.slope * (np.asarray(scores, dtype=np.float64) - reference - self.null_level(places))

    def validate(self) -> None:
        """Raise SimilarityFitError unless the populations are separated and the numbers are finite."""
        values = [self.positive_mean, self.positive_std, self.negative_mean, self.negative_std, self.place_sigma_m]
        if not all(math.isfinite(v) for v in values):
            raise SimilarityFitError(f"similarity model has non-finite values: {values}")
        if not self.delta > 0:
            raise SimilarityFitError(
                f"nearby places are not more similar than distant ones (positive mean {self.positive_mean:.3f}, "
                f"negative mean {self.negative_mean:.3f}): the descriptors do not tell places apart"
            )
        if not (self.positive_std > 0 and self.negative_std > 0 and self.place_sigma_m > 0):
            raise SimilarityFitError("similarity model needs positive standard deviations and place sigma")
        if not (math.isfinite(self.alias_excess) and self.alias_excess >= 0):
            raise SimilarityFitError(f"similarity model's alias_excess must be finite and >= 0, got {self.alias_excess}")

    def to_manifest(self) -> dict:
        """The manifest's `similarity` section."""
        return to_dict(self)

    @classmethod
    def from_manifest(cls, section: dict) -> "SimilarityModel":
        """Parse and check a manifest `similarity` section."""
        try:
            model = from_dict(cls, section)
        except ConfigError as exc:
            raise SimilarityFitError(f"the manifest's similarity section is not understood: {exc}") from None
        model.validate()
        return model


def _dots(descriptors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Cosine similarity of row pairs (descriptors are L2-normalised), in chunks (works on memory maps)."""
    out = np.empty(i.shape[0], dtype=np.float64)
    for start in range(0, i.shape[0], 4096):
        a = np.asarray(descriptors[i[start : start + 4096]], dtype=np.float32)
        b = np.asarray(descriptors[j[start : start + 4096]], dtype=np.float32)
        out[start : start + 4096] = np.einsum("kd,kd->k", a, b)
    return out


def _subsample(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=limit, replace=False)) if n > limit else np.arange(n)


def fit_similarity(
    descriptors: np.ndarray,
    xy: np.ndarray,
    yaw: np.ndarray,
    *,
    negative_radius_m: float = 50.0,
    seed: int = 0,
) -> SimilarityModel:
    """Fit the measurement model from a map's descriptors (N, D), UTM positions (N, 2) and ENU yaws (N,; NaN unknown)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    yaw = np.asarray(yaw, dtype=np.float64)
    n = xy.shape[0]
    if n < 4:
        raise SimilarityFitError(f"a measurement model needs at least 4 places, the map has {n}")
    rng = np.random.default_rng(seed)
    tree = cKDTree(xy)
    nearest, _ = tree.query(xy, k=2)
    spacing = float(np.median(nearest[:, 1]))
    if not spacing > 0:
        raise SimilarityFitError("the median keyframe spacing is 0 m (places share positions)")
    bin_m = spacing
    reach = min(PROFILE_BINS * bin_m, negative_radius_m)
    pairs = tree.query_pairs(reach, output_type="ndarray")
    if pairs.shape[0]:
        pairs = pairs[_subsample(pairs.shape[0], 4 * MAX_PAIRS, rng)]
        known = np.isfinite(yaw[pairs[:, 0]]) & np.isfinite(yaw[pairs[:, 1]])
        same = ~known | (np.abs(angle_difference(yaw[pairs[:, 0]], yaw[pairs[:, 1]])) <= HEADING_TOLERANCE_RAD)
        pairs = pairs[same]
    if pairs.shape[0] < MIN_PAIRS:
        raise SimilarityFitError(f"only {pairs.shape[0]} same-heading place pairs within {reach:.1f} m: map too sparse")
    pair_d = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    pair_s = _dots(descriptors, pairs[:, 0], pairs[:, 1])
    a = rng.integers(0, n, size=8 * MAX_PAIRS)
    b = rng.integers(0, n, size=8 * MAX_PAIRS)
    far = np.linalg.norm(xy[a] - xy[b], axis=1) > negative_radius_m
    a, b = a[far][:MAX_PAIRS], b[far][:MAX_PAIRS]
    if a.shape[0] < MIN_PAIRS:
        raise SimilarityFitError(
            f"only {a.shape[0]} place pairs lie more than negative_radius_m={negative_radius_m:g} m apart: "
            "the map is too small to measure how distant places look"
        )
    neg = _dots(descriptors, a, b)
    negative_mean, negative_std = float(neg.mean()), float(neg.std())
    edges = np.arange(PROFILE_BINS + 1) * bin_m
    centres, levels = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (pair_d > lo) & (pair_d <= hi)
        if inside.sum() >= 3:
            centres.append(float((lo + hi) / 2.0))
            levels.append(float(pair_s[inside].mean()))
    if not levels:
        raise SimilarityFitError("no distance bin holds enough same-heading pairs for a similarity profile")
    half = (levels[0] + negative_mean) / 2.0
    radius = centres[-1]
    for k in range(1, len(levels)):
        if levels[k] <= half:
            d0, d1, s0, s1 = centres[k - 1], centres[k], levels[k - 1], levels[k]
            radius = d0 + (d1 - d0) * (s0 - half) / (s0 - s1) if s0 != s1 else d1
            break
    radius = max(radius, spacing)
    positives = pair_s[pair_d <= radius]
    if positives.shape[0] < MIN_PAIRS:
        positives = pair_s[np.argsort(pair_d)[:MIN_PAIRS]]
    z = float(norm.isf(math.log(2.0) / max(n, 2)))
    null = min(max(negative_std, 1e-3) * z, (float(positives.mean()) - negative_mean) / 2.0)
    alias = max(float((neg - negative_mean > null).mean()), math.log(2.0) / n)
    excess = held_out_alias_excess(descriptors, xy, negative_radius_m, null, rng)
    model = SimilarityModel(
        positive_mean=float(positives.mean()),
        positive_std=float(max(positives.std(), 1e-3)),
        negative_mean=negative_mean,
        negative_std=float(max(negative_std, 1e-3)),
        place_sigma_m=float(radius / HALF_HEIGHT),
        positive_radius_m=float(radius),
        negative_radius_m=float(negative_radius_m),
        keyframe_spacing_m=spacing,
        positive_pairs=int(positives.shape[0]),
        negative_pairs=int(neg.shape[0]),
        places=int(n),
        alias_rate=alias,
        alias_excess=excess,
        profile_m=[round(c, 3) for c in centres],
        profile_similarity=[round(v, 5) for v in levels],
    )
    model.validate()
    return model


def held_out_alias_excess(descriptors: np.ndarray, xy: np.ndarray, radius_m: float, null: float,
                          rng: np.random.Generator, views: int = HELD_OUT_VIEWS, chunk: int = 8192) -> float:
    """How far above the null level the best unrelated place scores for a view whose surroundings are not mapped.

    Sampled map views are held out with everything within `radius_m` of them, as if the robot drove a street the map
    lacks, and scored against the rest relative to their own negative level (as queries are). The Gaussian null
    assumes unrelated places score independently; streets of one town look alike, so the best of them reaches
    higher (on the demo's map by 0.17; its unmapped dusk streets, medians of 4 drives, by 0.11-0.14). Median over
    the views, >= 0.
    """
    n = xy.shape[0]
    rows = _subsample(n, views, rng)
    q = np.asarray(descriptors[rows], dtype=np.float32)
    reference = np.median(q @ np.asarray(descriptors[reference_rows(n)], dtype=np.float32).T, axis=1)
    best = np.full(rows.size, -np.inf)
    for start in range(0, n, chunk):
        block = np.asarray(descriptors[start : start + chunk], dtype=np.float32)
        far = np.hypot(*(xy[rows, None, :] - xy[None, start : start + chunk, :]).transpose(2, 0, 1)) > radius_m
        best = np.maximum(best, np.where(far, q @ block.T, -np.inf).max(axis=1))
    held = np.isfinite(best)
    if held.sum() < MIN_PAIRS:
        return 0.0
    return max(float(np.median(best[held] - reference[held])) - null, 0.0)


def reference_rows(n: int, size: int = REFERENCE_SAMPLE) -> np.ndarray:
    """Evenly spread rows of a map whose scores give a query's negative level (its median score against them)."""
    return np.unique(np.linspace(0, n - 1, num=min(n, size)).round().astype(np.int64))


def _drives(xy: np.ndarray, stamp_ns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Places in stamp order and that order cut into drives where consecutive places lie far apart."""
    order = np.argsort(np.asarray(stamp_ns), kind="stable")
    step = np.hypot(*np.diff(xy[order], axis=0).T)
    spacing = float(np.median(step)) if step.size else 0.0
    cut = np.flatnonzero(step > max(10.0, 5.0 * spacing)) + 1
    return order, np.split(np.arange(xy.shape[0]), cut)


def drive_yaw(xy: np.ndarray, stamp_ns: np.ndarray, stored_yaw: np.ndarray, baseline_m: float = DRIVE_BASELINE_M) -> np.ndarray:
    """Each place's ENU yaw as the direction of its drive through it, over `baseline_m` of that drive.

    Places are ordered by stamp and cut into drives where consecutive places lie far apart; the heading a map stores
    comes from a short GPS baseline and is easily tens of degrees off with metre-level GPS noise. The window reaches
    along the drive to the first place at least `baseline_m / 2` away in a straight line on each side (the path
    length of noisy positions zig-zags: with 1.5 m GPS noise on 1.7 m keyframes it reads 1.7x long, and a window cut
    by it spanned only 3-7 m), and the yaw is the direction of the least-squares line through its places against
    their order, good to a few degrees over 16 m (near a drive's end, the other side makes up the 16 m). A place
    alone in its drive keeps its stored yaw.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    out = np.asarray(stored_yaw, dtype=np.float64).copy()
    if xy.shape[0] < 2:
        return out
    order, parts = _drives(xy, stamp_ns)
    p = xy[order]
    for part in parts:
        if part.size < 2:
            continue
        q = p[part]
        half = np.full(part.size, baseline_m / 2.0)
        lo, hi = _window_ends(q, np.arange(part.size), half, half)
        # Near a drive's end one side is short: the other side makes up the baseline.
        back, ahead = np.hypot(*(q[lo] - q).T), np.hypot(*(q[hi] - q).T)
        short = np.flatnonzero((back < half) | (ahead < half))
        lo[short], hi[short] = _window_ends(q, short, np.maximum(half[short], baseline_m - ahead[short]),
                                            np.maximum(half[short], baseline_m - back[short]))
        direction = _window_direction(q, lo, hi)
        ok = np.hypot(direction[:, 0], direction[:, 1]) > 0
        out[order[part[ok]]] = np.arctan2(direction[ok, 1], direction[ok, 0])
    return out


def _window_ends(q: np.ndarray, rows: np.ndarray, back_m: np.ndarray, ahead_m: np.ndarray, max_places: int = 64,
                 chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For the places `rows` of one drive (M, 2): the first place before each at least `back_m` away in a straight
    line and the first after it at least `ahead_m` away (searched up to `max_places` along the drive; the drive's
    ends, or the farthest searched, otherwise)."""
    m = q.shape[0]
    steps = np.arange(1, min(max_places, m - 1) + 1)
    ends = (np.empty(rows.size, dtype=np.int64), np.empty(rows.size, dtype=np.int64))
    for begin in range(0, rows.size, chunk):
        part = slice(begin, begin + chunk)
        k = rows[part]
        for end, sign, reach in zip(ends, (-1, 1), (back_m, ahead_m)):
            idx = np.clip(k[:, None] + sign * steps[None, :], 0, m - 1)
            far = np.hypot(*(q[idx] - q[k, None, :]).transpose(2, 0, 1)) >= reach[part, None]
            end[part] = idx[np.arange(k.size), np.where(far.any(axis=1), far.argmax(axis=1), steps.size - 1)]
    return ends


def _window_direction(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(M, 2) slope of the least-squares line of positions against place order over each window [lo, hi]."""
    t = np.arange(q.shape[0], dtype=np.float64)
    sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (np.ones_like(t), t, q[:, 0], q[:, 1], t * q[:, 0],
                                                              t * q[:, 1], t * t)]
    n, st, sx, sy, stx, sty, stt = (c[hi + 1] - c[lo] for c in sums)
    var = stt - st * st / n
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.column_stack([(stx - st * sx / n) / var, (sty - st * sy / n) / var])
    return np.where(np.isfinite(slope) & (var[:, None] > 0), slope, 0.0)


def position_noise_m(xy: np.ndarray, stamp_ns: np.ndarray) -> float:
    """The map's own place-position noise (m, 1 sigma per axis), measured from its places: 0 when unmeasurable.

    Along each drive a place should lie on the line through its two neighbours; with independent position noise
    sigma per axis its distance from that line has variance sigma^2 (1 + a^2 + b^2), a and b the weights of the
    neighbours at the place's projection onto it (along the line the noise cannot be told from the spacing). The
    median absolute distance (robust to the corners, where the line is wrong) gives sigma; it reads low (by about
    a third) once the noise reaches half the keyframe spacing, where the neighbours' line itself wanders. Places
    come from GPS, so their positions carry its noise into every fix they give.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    order, parts = _drives(xy, stamp_ns)
    p = xy[order]
    scaled = []
    for part in parts:
        if part.size < 3:
            continue
        q = p[part]
        chord = q[2:] - q[:-2]
        length = np.hypot(chord[:, 0], chord[:, 1])
        ok = length > 0
        u = chord[ok] / length[ok, None]
        rel = (q[1:-1] - q[:-2])[ok]
        b = ((rel * u).sum(axis=1) / length[ok]).clip(0.0, 1.0)  # weight of the next neighbour
        distance = rel[:, 0] * u[:, 1] - rel[:, 1] * u[:, 0]
        scaled.append(distance / np.sqrt(1.0 + b**2 + (1.0 - b) ** 2))
    values = np.concatenate(scaled) if scaled else np.zeros(0)
    if values.size < MIN_PAIRS:
        return 0.0
    return float(np.median(np.abs(values)) / norm.ppf(0.75))


def place_poses(place_map: "PlaceMap") -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) UTM positions and (N,) ENU yaws (rad; from the drive's direction, see `drive_yaw`) of a map's places."""
    meta = place_map.metadata
    xy = np.column_stack([np.asarray(meta.easting, np.float64), np.asarray(meta.northing, np.float64)])
    return xy, drive_yaw(xy, np.asarray(meta.stamp_ns), heading_to_yaw(np.asarray(meta.heading_deg)))


def fit_map_similarity(place_map: "PlaceMap") -> SimilarityModel:
    """Fit the measurement model of a loaded map from its own descriptors and place poses."""
    xy, yaw = place_poses(place_map)
    return fit_similarity(place_map.descriptors, xy, yaw)


def map_similarity(place_map: "PlaceMap") -> SimilarityModel:
    """The map's stored measurement model; fitted now (with a warning saying how to store it) when the map has none."""
    if place_map.manifest.similarity:
        return SimilarityModel.from_manifest(place_map.manifest.similarity)
    started = time.monotonic()
    model = fit_map_similarity(place_map)
    log.warning("the map has no similarity section (built before sequence localization); fitted it at load in "
                "%.1f s; store it with: dsformer-vpr fit-similarity MAP", time.monotonic() - started)
    return model


def fit_into_manifest(place_map: "PlaceMap") -> SimilarityModel:
    """Fit the map's model and put it into its (in-memory) manifest; raises SimilarityFitError when it cannot."""
    model = fit_map_similarity(place_map)
    place_map.manifest.similarity = model.to_manifest()
    log.info("similarity model: positives %.3f +- %.3f, negatives %.3f +- %.3f, place sigma %.1f m, alias rate %.4f, "
             "alias excess %.3f", model.positive_mean, model.positive_std, model.negative_mean, model.negative_std,
             model.place_sigma_m, model.alias_rate, model.alias_excess)
    return model


def attach_similarity(place_map: "PlaceMap") -> SimilarityModel | None:
    """Fit the model of a map about to be saved into its manifest; None (logged) when the map cannot give one."""
    try:
        return fit_into_manifest(place_map)
    except SimilarityFitError as exc:
        log.warning("no similarity model stored in the map (sequence localization will refuse it): %s", exc)
        return None
