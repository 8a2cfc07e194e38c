"""The '@'-separated image names of the VPR-datasets-downloader family, parsed and written in one place.

`@east@north@zone_number@zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg`
(fields 1..14 after splitting on '@'; empty fields are allowed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class AtNameError(ValueError):
    """A file name is not in the '@' format."""


@dataclass(frozen=True)
class AtName:
    """The fields of one '@' name that positioning needs (heading NaN when unknown)."""

    easting: float
    northing: float
    zone_number: int
    zone_letter: str
    lat: float = math.nan
    lon: float = math.nan
    pano_id: str = ""
    heading_deg: float = math.nan
    timestamp: str = ""
    note: str = ""


def _float(fields: list[str], i: int) -> float:
    return float(fields[i]) if len(fields) > i and fields[i] != "" else math.nan


def parse_at_name(name: str | Path) -> AtName:
    """Parse the '@' fields of an image file name; raise AtNameError naming the file when it is not one."""
    base = Path(name).name
    fields = base.split("@")
    if len(fields) < 7:
        raise AtNameError(f"{base}: not an '@' name (expected at least 6 '@'-separated fields)")
    try:
        easting, northing = float(fields[1]), float(fields[2])
        zone_number = int(fields[3])
    except ValueError:
        raise AtNameError(f"{base}: fields 1-3 must be UTM easting, northing and zone number") from None
    letter = fields[4].strip().upper()
    if len(letter) != 1 or not letter.isalpha():
        raise AtNameError(f"{base}: field 4 must be a UTM zone letter, got {fields[4]!r}")
    try:
        return AtName(
            easting=easting,
            northing=northing,
            zone_number=zone_number,
            zone_letter=letter,
            lat=_float(fields, 5),
            lon=_float(fields, 6),
            pano_id=fields[7] if len(fields) > 7 else "",
            heading_deg=_float(fields, 9),
            timestamp=fields[13] if len(fields) > 13 else "",
            note=fields[14] if len(fields) > 14 else "",
        )
    except ValueError:
        raise AtNameError(f"{base}: latitude, longitude and heading (fields 5, 6, 9) must be numbers") from None


def format_at_name(name: AtName, suffix: str = ".jpg") -> str:
    """The '@' file name of `name` (inverse of parse_at_name)."""

    def num(x: float, digits: int) -> str:
        return "" if math.isnan(x) else f"{x:.{digits}f}"

    fields = [
        "",
        f"{name.easting:.2f}",
        f"{name.northing:.2f}",
        str(name.zone_number),
        name.zone_letter,
        num(name.lat, 7),
        num(name.lon, 7),
        name.pano_id,
        "",
        num(name.heading_deg, 2),
        "",
        "",
        "",
        name.timestamp,
        name.note,
        suffix,
    ]
    return "@".join(fields)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursively), sorted, so datasets read the same on every machine."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_at_folder(folder: str | Path) -> tuple[list[Path], list[AtName]]:
    """Every image under `folder` with its parsed '@' name; no images or a bad name is an error naming it."""
    folder = Path(folder)
    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    names = []
    for path in paths:
        try:
            names.append(parse_at_name(path))
        except AtNameError as exc:
            raise AtNameError(f"{path.parent}: {exc}") from None
    return paths, names
