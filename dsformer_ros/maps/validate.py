"""What a map's arrays and manifest must mean, checked at every load whether or not checksums are verified.

A checksum only says the files are the ones the manifest names; these checks say the values can be used: every
descriptor finite and L2-normalised (all rows, in chunks), metadata columns stored with the types the map writes,
ids unique, positions valid UTM, headings and stamps in range, and a preprocessing section a model can run. Each
refusal is one MapError naming the file (and the row). Shared by whole maps and by map tiles.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dsformer_ros.maps.placemap import PlaceMetadata

DESCRIPTORS = "descriptors.npy"
NORM_TOLERANCE = 1e-2
CHUNK = 65536
_CHECK_ROWS = 4096  # rows widened to float32 at a time by check_descriptors (stays in cache)
# UTM coordinates that exist: easting within a zone (the 6-degree zone is < 1000 km wide), northing from the
# equator (north) or the false northing 10,000 km (south); latitudes -80..84, longitudes -180..180.
_EASTING_RANGE = (0.0, 1_000_000.0)
_NORTHING_RANGE = (0.0, 10_000_000.0)
_LETTERS = set("CDEFGHJKLMNPQRSTUVWX")
_HEADING_LIMIT_DEG = 360.0  # compass degrees, 0..360 or -180..180
_STAMP_LIMIT_NS = 7_258_118_400 * 10**9  # 2200-01-01: a later stamp is a damaged value, not a recording
# Inputs a map's preprocessing may ask for: below 8 px a side an image shows no place (short_side: 1 answered every
# frame with noise; the raw-pixel baseline's thumbnails are 24 x 32); above ~2 Mpx one frame needs gigabytes of
# model activations (a 4000 x 4000 input asks for ~31 GB), far beyond what the node may take on a robot.
MIN_INPUT_SIDE = 8
MAX_INPUT_PIXELS = 1 << 21
_MAX_MULTIPLE = 64  # sides rounded to a multiple of the patch size (DINOv2: 14)


class MapError(ValueError):
    """A map cannot be built, saved or loaded; the message says what is wrong."""


def column_file(name: str) -> str:
    """The file of metadata column `name` in a map directory."""
    return f"places.{name}.npy"


def check_descriptors(descriptors: np.ndarray, start: int = 0, source: str = DESCRIPTORS) -> None:
    """Raise MapError unless every row is finite and L2-normalised within NORM_TOLERANCE (chunked: any size).

    One pass of squared norms finds both: a NaN or inf element makes its row's norm non-finite, so only a row
    already found bad is looked at again for the reason. fp16 rows are widened to float32 a few thousand at a time
    (in cache: twice as fast as numpy's mixed-type einsum; 1M x 512 in ~2 s on 2 busy cores).
    """
    for begin in range(0, descriptors.shape[0], _CHECK_ROWS):
        stored = np.asarray(descriptors[begin : begin + _CHECK_ROWS])
        values = np.asarray(stored, dtype=np.promote_types(stored.dtype, np.float32))
        norms = np.sqrt(np.einsum("ij,ij->i", values, values))
        off = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)
        if off.any():
            row = int(np.flatnonzero(off)[0])
            if not np.isfinite(values[row]).all():
                raise MapError(f"{source}: descriptor row {start + begin + row} is not finite (NaN or inf)")
            raise MapError(
                f"{source}: descriptors must be L2-normalised; row {start + begin + row} has norm {norms[row]:.4f}"
            )


def check_column_dtype(name: str, values: np.ndarray, kind: str) -> None:
    """Raise MapError unless a stored metadata column has the type maps are written with (int64, float64 or
    strings): ids or stamps stored narrower, unsigned or as floats would wrap or round without a word."""
    dtype = values.dtype
    ok = dtype.kind == "U" and dtype.byteorder in "=|<" if kind == "str" else dtype == np.dtype(kind)
    if not ok:
        wanted = "unicode strings" if kind == "str" else kind
        raise MapError(f"{column_file(name)} holds {dtype}; a map stores {name} as {wanted}")


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def check_metadata(metadata: PlaceMetadata) -> None:
    """Raise MapError unless the columns of `metadata` have one length, ids are unique, UTM is
    finite and in a single zone, lat/lon, headings and stamps in range."""
    n = len(metadata)
    columns = metadata.columns()
    for name in columns:
        if getattr(metadata, name).shape[0] != n:
            raise MapError(f"metadata column {name} has {getattr(metadata, name).shape[0]} rows, place_id has {n}")
    if n == 0:
        return
    values, first, counts = np.unique(metadata.place_id, return_index=True, return_counts=True)
    if values.shape[0] != n:
        twice = counts > 1
        raise MapError(f"{column_file('place_id')}: place_id values must be unique; {int(values[twice][0])} "
                       f"appears more than once (rows {int(first[twice][0])} and later)")
    for name, (low, high) in (("easting", _EASTING_RANGE), ("northing", _NORTHING_RANGE)):
        values = getattr(metadata, name)
        bad = ~np.isfinite(values)
        if bad.any():
            raise MapError(f"{column_file(name)}: metadata {name} must be finite; row {_first(bad)} is not")
        bad = (values < low) | (values > high)
        if bad.any():
            row = _first(bad)
            raise MapError(f"{column_file(name)}: metadata {name} must be a UTM coordinate in {low:.0f}..{high:.0f} "
                           f"m; row {row} has {values[row]}")
    for name, limit in (("lat", 90.0), ("lon", 180.0), ("heading_deg", _HEADING_LIMIT_DEG)):
        values = getattr(metadata, name)
        bad = np.isinf(values) | (np.abs(np.nan_to_num(values)) > limit)
        if bad.any():
            row = _first(bad)
            raise MapError(
                f"{column_file(name)}: metadata {name} must be NaN or within +-{limit:g} degrees; row {row} has "
                f"{values[row]}"
            )
    for name in ("zone_letter", "source"):
        _check_code_points(name, getattr(metadata, name))
    zones = np.unique(metadata.zone_number)
    if zones.shape[0] != 1:
        raise MapError(f"a map must lie in a single UTM zone; found zones {zones.tolist()}")
    if not 1 <= int(zones[0]) <= 60:
        raise MapError(f"UTM zone number must be 1..60, got {int(zones[0])}")
    letters = set(np.unique(np.char.upper(metadata.zone_letter.astype(np.str_))).tolist())
    if not letters <= _LETTERS:
        raise MapError(f"invalid UTM zone letter(s) {sorted(letters - _LETTERS)}")
    if len({letter >= "N" for letter in letters}) != 1:
        raise MapError(f"a map must lie in one hemisphere; found zone letters {sorted(letters)}")
    bad = (metadata.stamp_ns < 0) | (metadata.stamp_ns >= _STAMP_LIMIT_NS)
    if bad.any():
        row = _first(bad)
        raise MapError(f"{column_file('stamp_ns')}: metadata stamp_ns must be >= 0 and before the year 2200; "
                       f"row {row} has {int(metadata.stamp_ns[row])}")


def _check_code_points(name: str, values: np.ndarray) -> None:
    """Raise MapError when a string column holds code points that are not Unicode (damaged or hostile file)."""
    for start in range(0, values.shape[0], CHUNK):
        codes = np.ascontiguousarray(values[start : start + CHUNK]).view(np.uint32)
        bad = (codes > 0x10FFFF) | ((codes >= 0xD800) & (codes <= 0xDFFF))
        if bad.any():
            row = start + _first(bad.reshape(codes.shape[0], -1).any(axis=1))
            raise MapError(f"{column_file(name)}: metadata {name} row {row} holds invalid Unicode (a damaged file?)")


def _int_field(preprocessing: dict, name: str) -> int | None:
    value = preprocessing.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MapError(f"manifest.json preprocessing {name} must be an integer number of pixels, got {value!r}")
    return value


def check_preprocessing(preprocessing: dict) -> None:
    """Raise MapError unless the sizes of a manifest's preprocessing section give an input that shows a place and
    that the node can afford: sides >= MIN_INPUT_SIDE, at most MAX_INPUT_PIXELS (a square short side)."""
    size = preprocessing.get("size")
    if size is not None:
        if not isinstance(size, list) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in size
        ):
            raise MapError(f"manifest.json preprocessing size must be [height, width] in pixels, got {size!r}")
        height, width = size
        if min(height, width) < MIN_INPUT_SIDE or height * width > MAX_INPUT_PIXELS:
            raise MapError(
                f"manifest.json preprocessing size {height}x{width} is not a model input this node can run: sides "
                f"must be >= {MIN_INPUT_SIDE} px and the image at most {MAX_INPUT_PIXELS} px (a damaged manifest?)"
            )
    short_side = _int_field(preprocessing, "short_side")
    if short_side is not None and not MIN_INPUT_SIDE <= short_side <= int(MAX_INPUT_PIXELS**0.5):
        raise MapError(
            f"manifest.json preprocessing short_side {short_side} is not a model input this node can run: it must "
            f"lie in {MIN_INPUT_SIDE}..{int(MAX_INPUT_PIXELS**0.5)} px (a damaged manifest?)"
        )
    multiple = _int_field(preprocessing, "multiple")
    if multiple is not None and not 1 <= multiple <= _MAX_MULTIPLE:
        raise MapError(f"manifest.json preprocessing multiple {multiple} must lie in 1..{_MAX_MULTIPLE} px")
