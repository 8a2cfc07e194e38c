"""WGS84 <-> UTM conversion against published coordinates, zone exceptions, round trips and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from dsformer_ros.common.utm import UTMError, is_northern, latlon_to_utm, utm_to_latlon, zone_letter, zone_number

# (lat, lon) -> (easting, northing, zone, letter); reference values from an independent Krüger/Karney implementation.
KNOWN = [
    ((37.7749, -122.4194), (551130.77, 4180998.88, 10, "S")),  # San Francisco
    ((-33.8688, 151.2093), (334368.63, 6250948.35, 56, "H")),  # Sydney
    ((0.0, 3.0), (500000.0, 0.0, 31, "N")),  # equator on a central meridian
    ((0.0, 0.0), (166021.44, 0.0, 31, "N")),  # Gulf of Guinea, well-known zone 31 western edge value
]


@pytest.mark.parametrize(("latlon", "expected"), KNOWN)
def test_known_coordinates(latlon: tuple[float, float], expected: tuple[float, float, int, str]) -> None:
    easting, northing, zone, letter = latlon_to_utm(*latlon)
    assert float(easting) == pytest.approx(expected[0], abs=0.01)
    assert float(northing) == pytest.approx(expected[1], abs=0.01)
    assert int(zone) == expected[2]
    assert str(letter) == expected[3]


def test_vectorised_matches_scalar() -> None:
    lats = np.array([p[0][0] for p in KNOWN])
    lons = np.array([p[0][1] for p in KNOWN])
    easting, northing, zones, letters = latlon_to_utm(lats, lons)
    assert easting.shape == northing.shape == zones.shape == letters.shape == (len(KNOWN),)
    for i, (_, (e, n, z, band)) in enumerate(KNOWN):
        assert easting[i] == pytest.approx(e, abs=0.01)
        assert northing[i] == pytest.approx(n, abs=0.01)
        assert zones[i] == z and letters[i] == band


def test_norway_exception() -> None:
    # Band V (56..64 N) between 3 E and 12 E is zone 32, west of 3 E stays 31; outside the band zones are regular.
    assert zone_number(60.39, 5.32) == 32  # Bergen
    assert zone_number(60.0, 2.9) == 31
    assert zone_number(56.0, 3.0) == 32
    assert zone_number(63.99, 11.99) == 32
    assert zone_number(64.0, 5.0) == 31
    assert zone_number(55.99, 5.0) == 31
    assert zone_number(60.0, 12.0) == 33
    _, _, zone, letter = latlon_to_utm(60.39, 5.32)
    assert (int(zone), str(letter)) == (32, "V")


def test_svalbard_exception() -> None:
    lons = np.array([0.5, 8.9, 9.0, 20.9, 21.0, 32.9, 33.0, 41.9, 42.0])
    assert zone_number(np.full(lons.shape, 78.0), lons).tolist() == [31, 31, 33, 33, 35, 35, 37, 37, 38]
    # Below band X the regular zones apply (zone 32 at 10 E).
    assert int(zone_number(71.9, 10.0)) == 32
    _, _, zone, letter = latlon_to_utm(78.22, 15.65)  # Longyearbyen
    assert (int(zone), str(letter)) == (33, "X")


def test_zone_numbers_and_letters() -> None:
    assert zone_number(0.0, [-180.0, -174.01, 179.99, 0.0, -0.01]).tolist() == [1, 1, 60, 31, 30]
    assert zone_letter([-80.0, -72.1, -0.0001, 0.0, 8.0, 72.0, 84.0]).tolist() == ["C", "C", "M", "N", "P", "X", "X"]
    assert "I" not in zone_letter(np.arange(-80.0, 84.0, 1.0)).tolist()
    assert "O" not in zone_letter(np.arange(-80.0, 84.0, 1.0)).tolist()
    assert is_northern(["N", "X", "s"]).tolist() == [True, True, True]
    assert is_northern(["M", "C", "h"]).tolist() == [False, False, False]


def test_southern_hemisphere_false_northing() -> None:
    _, n_south, _, letter = latlon_to_utm(-0.0001, 3.0)
    assert str(letter) == "M"
    assert float(n_south) == pytest.approx(10_000_000.0 - 11.06, abs=0.05)
    lat, lon = utm_to_latlon(500000.0, float(n_south), 31, "M")
    assert float(lat) == pytest.approx(-0.0001, abs=1e-9)
    assert float(lon) == pytest.approx(3.0, abs=1e-9)


def test_round_trip_everywhere() -> None:
    rng = np.random.default_rng(7)
    lats = rng.uniform(-79.9, 83.9, 2000)
    lons = rng.uniform(-180.0, 180.0, 2000)
    easting, northing, zones, letters = latlon_to_utm(lats, lons)
    lat2, lon2 = utm_to_latlon(easting, northing, zones, letters)
    assert np.max(np.abs(lat2 - lats)) < 1e-9
    dlon = (lon2 - lons + 180.0) % 360.0 - 180.0
    assert np.max(np.abs(dlon)) < 1e-9


def test_round_trip_metre_scale() -> None:
    # One metre north is ~1 m of northing near the central meridian (scale factor 0.9996).
    e0, n0, _, _ = latlon_to_utm(45.0, 9.0)
    e1, n1, _, _ = latlon_to_utm(45.0 + 1.0 / 111_132.0, 9.0)
    assert float(n1 - n0) == pytest.approx(0.9996, abs=0.002)
    assert float(e1 - e0) == pytest.approx(0.0, abs=1e-6)


def test_force_zone() -> None:
    # Points straddling the 10/11 boundary projected into one zone stay continuous.
    lats = np.array([37.0, 37.0])
    lons = np.array([-120.01, -119.99])
    _, _, natural, _ = latlon_to_utm(lats, lons)
    assert natural.tolist() == [10, 11]
    easting, northing, zones, _ = latlon_to_utm(lats, lons, force_zone=10)
    assert zones.tolist() == [10, 10]
    assert np.hypot(easting[1] - easting[0], northing[1] - northing[0]) == pytest.approx(1777.0, abs=5.0)
    lat2, lon2 = utm_to_latlon(easting, northing, zones, "S")
    np.testing.assert_allclose(lat2, lats, atol=1e-9)
    np.testing.assert_allclose(lon2, lons, atol=1e-9)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: latlon_to_utm(85.0, 0.0), "latitude outside"),
        (lambda: latlon_to_utm(-80.5, 0.0), "latitude outside"),
        (lambda: latlon_to_utm(float("nan"), 0.0), "finite"),
        (lambda: latlon_to_utm(10.0, float("inf")), "finite"),
        (lambda: latlon_to_utm(10.0, 0.0, force_zone=0), "1..60"),
        (lambda: latlon_to_utm(10.0, 0.0, force_zone=61), "1..60"),
        (lambda: utm_to_latlon(500000.0, 0.0, 0, "N"), "1..60"),
        (lambda: utm_to_latlon(500000.0, 0.0, 31, "I"), "zone letter 'I'"),
        (lambda: utm_to_latlon(500000.0, 0.0, 31, "Z"), "zone letter 'Z'"),
        (lambda: is_northern(["N", "A"]), "zone letter 'A'"),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(UTMError, match=match):
        call()
    assert issubclass(UTMError, ValueError)
