"""The one way reports print numbers and tables, and the angle conventions of common/geometry.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dsformer_ros.common.geometry import angle_difference, heading_difference_deg, heading_to_yaw, wrap_angle
from training.reports import markdown_table, num, pct, text_table


def test_missing_values_print_as_n_a_whatever_their_kind() -> None:
    """None, float NaN and numpy NaN all print as n/a; real values with the asked decimals."""
    for missing in (None, float("nan"), np.float32("nan"), np.float64("nan")):
        assert pct(missing) == num(missing) == "n/a"
    assert pct(0.87654) == "87.7" and pct(1.0, 0) == "100" and pct(np.float32(0.5)) == "50.0"
    assert num(7.891) == "7.9" and num(1.2345, 2) == "1.23" and num(0.0) == "0.0"


def test_text_table_aligns_names_left_and_numbers_right() -> None:
    """Every column as wide as its widest cell, a rule under the header, a wrong row length refused."""
    table = text_table(["method", "R@1 %"], [["trained", "87.7"], ["raw pixels", "n/a"]])
    lines = table.splitlines()
    assert lines[0] == "method      R@1 %"
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[2] == "trained      87.7" and lines[3] == "raw pixels    n/a"
    with pytest.raises(ValueError, match="2 cells"):
        text_table(["a", "b"], [["only one"]])
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def test_angles_wrap_and_differ_across_the_seam() -> None:
    """wrap_angle keeps floats floats and works on arrays; differences cross +-pi and 0/360 the short way."""
    assert isinstance(wrap_angle(4.0), float) and wrap_angle(4.0) == pytest.approx(4.0 - 2 * math.pi)
    np.testing.assert_allclose(wrap_angle(np.array([3 * math.pi / 2, -3 * math.pi / 2, 0.5])),
                               [-math.pi / 2, math.pi / 2, 0.5])
    assert angle_difference(-3.0, 3.0) == pytest.approx(2 * math.pi - 6.0)
    np.testing.assert_allclose(heading_difference_deg(np.array([350.0, 10.0, 90.0]), np.array([10.0, 350.0, 270.0])),
                               [20.0, 20.0, 180.0])
    assert heading_to_yaw(90.0) == pytest.approx(0.0) and abs(heading_to_yaw(270.0)) == pytest.approx(math.pi)
