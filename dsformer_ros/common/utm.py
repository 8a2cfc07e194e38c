"""WGS84 <-> UTM (zone number, letter and hemisphere), vectorised over numpy arrays.

Krüger series to 6th order (Karney 2011), accurate to well under a millimetre within a zone.
"""
from __future__ import annotations

import numpy as np

_A = 6378137.0
_F = 1 / 298.257223563
_K0 = 0.9996
_E0 = 500000.0
_N0_SOUTH = 10000000.0
_N = _F / (2 - _F)
_AA = _A / (1 + _N) * (1 + _N**2 / 4 + _N**4 / 64 + _N**6 / 256)
_ALPHA = (
    _N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16 + 41 * _N**4 / 180 - 127 * _N**5 / 288 + 7891 * _N**6 / 37800,
    13 * _N**2 / 48 - 3 * _N**3 / 5 + 557 * _N**4 / 1440 + 281 * _N**5 / 630 - 1983433 * _N**6 / 1935360,
    61 * _N**3 / 240 - 103 * _N**4 / 140 + 15061 * _N**5 / 26880 + 167603 * _N**6 / 181440,
    49561 * _N**4 / 161280 - 179 * _N**5 / 168 + 6601661 * _N**6 / 7257600,
    34729 * _N**5 / 80640 - 3418889 * _N**6 / 1995840,
    212378941 * _N**6 / 319334400,
)
_BETA = (
    _N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96 - _N**4 / 360 - 81 * _N**5 / 512 + 96199 * _N**6 / 604800,
    _N**2 / 48 + _N**3 / 15 - 437 * _N**4 / 1440 + 46 * _N**5 / 105 - 1118711 * _N**6 / 3870720,
    17 * _N**3 / 480 - 37 * _N**4 / 840 - 209 * _N**5 / 4480 + 5569 * _N**6 / 90720,
    4397 * _N**4 / 161280 - 11 * _N**5 / 504 - 830251 * _N**6 / 7257600,
    4583 * _N**5 / 161280 - 108847 * _N**6 / 3991680,
    20648693 * _N**6 / 638668800,
)
_E = np.sqrt(_F * (2 - _F))
_LETTERS = "CDEFGHJKLMNPQRSTUVWXX"


class UTMError(ValueError):
    """Coordinates outside what UTM covers, or an invalid zone."""


def zone_number(lat: np.ndarray | float, lon: np.ndarray | float) -> np.ndarray:
    """UTM zone number of each position, with the Norway and Svalbard exceptions."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    lon_wrapped = (lon + 180.0) % 360.0 - 180.0
    zone = (np.floor((lon_wrapped + 180.0) / 6.0).astype(np.int64) % 60) + 1
    zone = np.where((lat >= 56) & (lat < 64) & (lon_wrapped >= 3) & (lon_wrapped < 12), 32, zone)
    svalbard = (lat >= 72) & (lat <= 84)
    for lo, hi, z in ((0, 9, 31), (9, 21, 33), (21, 33, 35), (33, 42, 37)):
        zone = np.where(svalbard & (lon_wrapped >= lo) & (lon_wrapped < hi), z, zone)
    return zone


def zone_letter(lat: np.ndarray | float) -> np.ndarray:
    """Latitude band letter (C..X) of each latitude."""
    lat = np.asarray(lat, dtype=np.float64)
    if np.any((lat < -80) | (lat > 84)):
        raise UTMError("latitude outside the UTM range [-80, 84] degrees")
    idx = np.clip(np.floor((lat + 80) / 8).astype(np.int64), 0, 20)
    return np.array(list(_LETTERS))[idx]


def is_northern(letter: str | np.ndarray) -> np.ndarray:
    """True for latitude bands N..X (northern hemisphere)."""
    letters = np.asarray(letter).astype(str)
    upper = np.char.upper(letters)
    bad = ~np.isin(upper, list(set(_LETTERS)))
    if np.any(bad):
        raise UTMError(f"invalid UTM zone letter {str(letters[bad].flat[0])!r}")
    return upper >= "N"


def latlon_to_utm(
    lat: np.ndarray | float, lon: np.ndarray | float, force_zone: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """WGS84 degrees -> (easting, northing, zone_number, zone_letter); `force_zone` projects all into one zone."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if np.any(~np.isfinite(lat)) or np.any(~np.isfinite(lon)):
        raise UTMError("latitude/longitude must be finite")
    letters = zone_letter(lat)
    if force_zone is not None:
        if not 1 <= int(force_zone) <= 60:
            raise UTMError(f"UTM zone number must be 1..60, got {force_zone}")
        zones = np.full(lat.shape, int(force_zone), dtype=np.int64)
    else:
        zones = zone_number(lat, lon)
    lon0 = np.radians((zones - 1) * 6 - 180 + 3)
    phi = np.radians(lat)
    dlam = np.radians(lon) - lon0
    dlam = (dlam + np.pi) % (2 * np.pi) - np.pi
    t = np.sinh(np.arctanh(np.sin(phi)) - _E * np.arctanh(_E * np.sin(phi)))
    xi_p = np.arctan2(t, np.cos(dlam))
    eta_p = np.arctanh(np.sin(dlam) / np.sqrt(1 + t**2))
    xi = xi_p.copy()
    eta = eta_p.copy()
    for j, a in enumerate(_ALPHA, start=1):
        xi = xi + a * np.sin(2 * j * xi_p) * np.cosh(2 * j * eta_p)
        eta = eta + a * np.cos(2 * j * xi_p) * np.sinh(2 * j * eta_p)
    easting = _E0 + _K0 * _AA * eta
    northing = _K0 * _AA * xi
    northing = np.where(lat < 0, northing + _N0_SOUTH, northing)
    return easting, northing, zones, letters


def utm_to_latlon(
    easting: np.ndarray | float,
    northing: np.ndarray | float,
    zone: np.ndarray | int,
    letter: np.ndarray | str,
) -> tuple[np.ndarray, np.ndarray]:
    """UTM (easting, northing, zone number, zone letter) -> WGS84 degrees (lat, lon)."""
    easting = np.asarray(easting, dtype=np.float64)
    northing = np.asarray(northing, dtype=np.float64)
    zone = np.asarray(zone, dtype=np.int64)
    if np.any((zone < 1) | (zone > 60)):
        raise UTMError("UTM zone number must be 1..60")
    north = is_northern(letter)
    y = np.where(north, northing, northing - _N0_SOUTH)
    xi = y / (_K0 * _AA)
    eta = (easting - _E0) / (_K0 * _AA)
    xi_p = xi.copy()
    eta_p = eta.copy()
    for j, b in enumerate(_BETA, start=1):
        xi_p = xi_p - b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p = eta_p - b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    tau_p = np.sin(xi_p) / np.sqrt(np.sinh(eta_p) ** 2 + np.cos(xi_p) ** 2)
    tau = tau_p.copy()
    for _ in range(5):
        sigma = np.sinh(_E * np.arctanh(_E * tau / np.sqrt(1 + tau**2)))
        tau_i_p = tau * np.sqrt(1 + sigma**2) - sigma * np.sqrt(1 + tau**2)
        dtau = (
            (tau_p - tau_i_p)
            / np.sqrt(1 + tau_i_p**2)
            * (1 + (1 - _E**2) * tau**2)
            / ((1 - _E**2) * np.sqrt(1 + tau**2))
        )
        tau = tau + dtau
    lat = np.degrees(np.arctan(tau))
    lon0 = (zone - 1) * 6 - 180 + 3
    lon = lon0 + np.degrees(np.arctan2(np.sinh(eta_p), np.cos(xi_p)))
    return lat, (lon + 180.0) % 360.0 - 180.0
