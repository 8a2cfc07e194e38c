"""Block clustering and grid partition on constructed and SF-XL-like synthetic positions."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dsformer_ros.common.config import ConfigError
from training import cli
from training.io.at_names import AtName, format_at_name
from training.partition.clustering import (
    Partition,
    PartitionConfig,
    block_partition,
    cache_key,
    focal_headings_deg,
    grid_partition,
    partition,
    principal_directions,
)
from training.partition.sfxl_positions import sfxl_like_positions

CFG = PartitionConfig(workers=1)


@pytest.fixture(scope="module")
def city() -> np.ndarray:
    return sfxl_like_positions(20_000, seed=3)


@pytest.fixture(scope="module")
def city_part(city: np.ndarray) -> Partition:
    return block_partition(city, CFG)


def blob(centre: tuple[float, float], n: int, seed: int, angle_deg: float = 0.0, length: float = 8.0) -> np.ndarray:
    """n positions spread `length` metres along a line at `angle_deg` (from east) with 0.3 m noise across."""
    rng = np.random.default_rng(seed)
    along = np.linspace(-length / 2, length / 2, n)
    across = rng.normal(0.0, 0.3, n)
    t = np.deg2rad(angle_deg)
    d, nrm = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    return np.asarray(centre) + along[:, None] * d + across[:, None] * nrm


def test_every_class_is_the_strip_points_within_r_of_its_peak(city: np.ndarray, city_part: Partition) -> None:
    part, cfg = city_part, CFG
    assert part.num_classes > 100
    for k in range(part.num_classes):
        info = part.class_info(k)
        axis = 0 if info.direction == "lateral" else 1
        strip = np.floor(city[:, axis] / cfg.strip_width_m)
        in_strip = strip == np.floor(info.peak[axis] / cfg.strip_width_m)
        within = np.linalg.norm(city - info.peak, axis=1) <= cfg.class_radius_m
        np.testing.assert_array_equal(info.members, np.flatnonzero(in_strip & within))
        assert len(info.members) >= cfg.min_images_per_class


def test_peaks_at_least_l_apart_within_groups_and_across_directions(city_part: Partition) -> None:
    part = city_part
    d = np.linalg.norm(part.class_peak[:, None] - part.class_peak[None], axis=2)
    same_group = part.class_group[:, None] == part.class_group[None]
    conflict = same_group | (part.class_view[:, None] != part.class_view[None])
    np.fill_diagonal(conflict, False)
    assert d[conflict].min() >= CFG.min_peak_distance_m
    # Classes of neighbouring groups in one direction may be close (EigenPlaces' design): the test is not vacuous.
    assert d[~conflict & ~np.eye(len(d), dtype=bool)].min() < CFG.min_peak_distance_m
    # With l >= 2r no image is in two classes.
    assert len(np.unique(part.member_indices)) == len(part.member_indices)


def test_groups_and_focal_points_as_specified(city: np.ndarray, city_part: Partition) -> None:
    part, n, cfg = city_part, CFG.groups_per_direction, CFG
    assert part.num_groups == 2 * n
    assert part.group_views() == ["lateral"] * n + ["frontal"] * n
    np.testing.assert_array_equal(part.class_view, (part.class_group >= n).astype(np.int8))
    assert (part.classes_per_group() > 0).all()
    lateral = part.class_view == 0
    strip_e = np.floor(part.class_peak[:, 0] / cfg.strip_width_m).astype(int)
    strip_n = np.floor(part.class_peak[:, 1] / cfg.strip_width_m).astype(int)
    np.testing.assert_array_equal(part.class_group[lateral], strip_e[lateral] % n)
    np.testing.assert_array_equal(part.class_group[~lateral], n + strip_n[~lateral] % n)
    for k in range(0, part.num_classes, 7):
        info = part.class_info(k)
        pts = city[info.members]
        np.testing.assert_allclose(info.centre, pts.mean(axis=0), atol=1e-6)
        principal = np.linalg.svd(pts - pts.mean(axis=0))[2][0]
        offset = info.focal - info.centre
        assert np.linalg.norm(offset) == pytest.approx(cfg.focal_distance_m)
        cos = abs(offset @ principal) / cfg.focal_distance_m
        assert cos == pytest.approx(0.0 if info.direction == "lateral" else 1.0, abs=1e-6)


def test_identical_on_rerun_and_with_more_workers(city: np.ndarray, city_part: Partition) -> None:
    again = block_partition(city, dataclasses.replace(CFG, workers=2))
    for f in dataclasses.fields(Partition):
        a, b = getattr(city_part, f.name), getattr(again, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        elif f.name != "config":
            assert a == b, f.name


def strip_with_three_segments() -> np.ndarray:
    """Three street segments in east strip 100 (east 1000..1010) at north 5, 205 and 405, 40 images each."""
    return np.concatenate([blob((1005.0, 5.0 + 200 * i), 40, seed=i, angle_deg=90) for i in range(3)])


def test_last_hdbscan_cluster_of_a_strip_gives_a_class() -> None:
    # The authors' loop stops one short; here every cluster of the strip must give a class.
    pos = strip_with_three_segments()
    part = block_partition(pos, CFG)
    assert part.stats["hdbscan_clusters"] == 3
    assert part.num_classes == 3
    segment = np.repeat(np.arange(3), 40)
    assert sorted(segment[part.members(k)[0]] for k in range(3)) == [0, 1, 2]
    assert (part.class_view == 0).all() and (part.class_group == 100 % 5).all()


def test_strips_with_one_or_too_few_positions_are_skipped_and_counted() -> None:
    lone = np.array([[5000.0, 5000.0]])
    few = blob((3005.0, 3005.0), CFG.min_cluster_size - 1, seed=9)
    part = block_partition(np.concatenate([strip_with_three_segments(), lone, few]), CFG)
    assert part.num_classes == 3
    # east: the lone point, the small blob; north: three single segments (enough points), the lone point, the blob.
    assert part.stats["strips_too_small"] == 4
    only_one = block_partition(lone, CFG)
    assert only_one.num_classes == 0 and only_one.stats["strips_too_small"] == 2


def test_too_close_pair_keeps_the_larger_class_not_neither() -> None:
    # Two segments 30 m apart (< l) in one strip: the authors' code drops both; we keep the one with more images.
    pos = np.concatenate([blob((1005.0, 0.0), 40, seed=1, angle_deg=90), blob((1005.0, 30.0), 30, seed=2, angle_deg=90),
                          blob((1005.0, 300.0), 30, seed=3, angle_deg=90)])
    part = block_partition(pos, CFG)
    assert part.stats["candidates"] == 3 and part.stats["removed_too_close"] == 1
    assert sorted(int(part.members(k)[0]) for k in range(part.num_classes)) == [0, 70]  # the middle one went
    assert sorted(part.class_sizes().tolist()) == [30, 40]


def test_same_place_in_both_directions_is_kept_once() -> None:
    # Segment X at (1005, 505) lies in east strip 100 and north strip 50, each also holding two other segments.
    east = [blob((1005.0, 5.0 + 250 * i), 40, seed=i, angle_deg=45) for i in (0, 1)]
    north = [blob((505.0 + 250 * i, 505.0), 40, seed=5 + i, angle_deg=45) for i in (0, 1)]
    cross = blob((1005.0, 505.0), 50, seed=7, angle_deg=45)
    pos = np.concatenate(east + north + [cross])
    part = block_partition(pos, CFG)
    assert part.stats["candidates"] == 6 and part.stats["removed_too_close"] == 1
    cross_ids = set(range(160, 210))
    holding = [k for k in range(part.num_classes) if cross_ids & set(part.members(k).tolist())]
    assert len(holding) == 1
    assert part.class_info(holding[0]).direction == "lateral"  # tie on size: east strips first


def test_focal_direction_is_a_right_singular_vector_not_a_row_of_u() -> None:
    street = blob((0.0, 0.0), 60, seed=4, angle_deg=30, length=14.0)
    direction = np.array([np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))])
    assert principal_directions(street) @ direction == pytest.approx(1.0, abs=1e-3)
    # The authors' choice, row 1 of U from svd(X^T), depends on the arbitrary signs of U's columns: of the two
    # equally valid U, one gives a row perpendicular to the 30-degree street and the other one at 30 degrees to it.
    u = np.linalg.svd((street - street.mean(axis=0)).T, full_matrices=False)[0]
    dots = sorted(abs(row @ direction) for row in (u[1], (u * [1.0, -1.0])[1]))
    assert dots[0] == pytest.approx(0.0, abs=1e-3) and dots[1] == pytest.approx(np.cos(np.deg2rad(30)), abs=1e-3)
    # In a partition: a lateral class looks perpendicular to its 30-degree street.
    pos = np.concatenate([blob((1005.0, 5.0 + 200 * i), 40, seed=i, angle_deg=30) for i in range(2)])
    part = block_partition(pos, CFG)
    assert part.num_classes == 2
    for k in range(2):
        offset = part.class_focal[k] - part.class_centre[k]
        assert abs(offset @ direction) < 0.05 * CFG.focal_distance_m


def test_focal_headings() -> None:
    obs = np.array([[0.0, 0.0], [0.0, 0.0], [10.0, 10.0]])
    focal = np.array([[0.0, 5.0], [5.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(focal_headings_deg(obs, focal), [0.0, 90.0, 180.0])


def test_grid_partition_cells_and_groups() -> None:
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 100, size=(5000, 2)) + [500_000.0, 4_000_000.0]
    cfg = PartitionConfig(method="grid", strip_width_m=10.0, groups_per_direction=3, min_images_per_class=40)
    part = grid_partition(pos, cfg)
    assert part.num_groups == 18
    cell = np.floor(pos / 10.0).astype(int)
    counts = {tuple(c): n for c, n in zip(*np.unique(cell, axis=0, return_counts=True))}
    big = sorted(c for c, n in counts.items() if n >= 40)
    assert part.num_classes == 2 * len(big) and part.stats["cells_too_few_images"] == len(counts) - len(big)
    seen = []
    for k in range(part.num_classes):
        info = part.class_info(k)
        cells = np.unique(cell[info.members], axis=0)
        assert len(cells) == 1
        ce, cn = cells[0]
        assert len(info.members) == counts[(ce, cn)]
        spatial = (ce % 3) * 3 + cn % 3
        assert info.group == spatial + (0 if info.direction == "lateral" else 9)
        seen.append((info.direction, ce, cn))
    assert sorted(seen) == sorted([("frontal", *c) for c in big] + [("lateral", *c) for c in big])


def test_cache_key_covers_every_parameter_and_the_input(tmp_path) -> None:
    pos = strip_with_three_segments()
    base = cache_key(pos, CFG)
    changed = {"method": "grid", "cluster_selection_method": "leaf", "allow_single_cluster": True}
    for f in dataclasses.fields(PartitionConfig):
        if f.name == "workers":
            assert cache_key(pos, dataclasses.replace(CFG, workers=2)) == base
            continue
        value = changed[f.name] if f.name in changed else getattr(CFG, f.name) + 1
        assert cache_key(pos, dataclasses.replace(CFG, **{f.name: value})) != base, f.name
    moved = pos.copy()
    moved[-1, 0] += 1e-6
    assert cache_key(moved, CFG) != base

    first = partition(pos, CFG, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:
        assert "member_indices" in data.files
    files[0].touch()
    second = partition(pos, CFG, cache_dir=tmp_path)
    assert list(tmp_path.glob("*.npz")) == files
    np.testing.assert_array_equal(first.member_indices, second.member_indices)
    np.testing.assert_array_equal(first.class_focal, second.class_focal)
    assert second.cache_key == first.cache_key == base


def test_bad_config_and_positions_are_named() -> None:
    with pytest.raises(ConfigError, match="class_radius_m"):
        block_partition(np.zeros((3, 2)), PartitionConfig(class_radius_m=0))
    with pytest.raises(ConfigError, match="min_cluster_size"):
        PartitionConfig(min_cluster_size=1).validate()
    with pytest.raises(ValueError, match="shape"):
        block_partition(np.zeros((3, 3)), CFG)
    with pytest.raises(ValueError, match="not finite"):
        grid_partition(np.array([[0.0, np.nan]]), CFG)


def test_sfxl_like_positions_are_seeded_streets() -> None:
    a = sfxl_like_positions(50_000, seed=1)
    assert a.shape == (50_000, 2) and a.dtype == np.float64
    np.testing.assert_array_equal(a, sfxl_like_positions(50_000, seed=1))
    assert not np.array_equal(a, sfxl_like_positions(50_000, seed=2))
    # Positions lie on streets: most are within a few metres of the nearest street line.
    local = (a - [543_000.0, 4_176_000.0]) % 100.0
    assert 0.0 <= local.min() and np.isfinite(a).all()
    grid = sfxl_like_positions(1000, seed=0, street_jitter_m=0.0, lane_sigma_m=0.0, gps_sigma_m=0.0)
    off = np.abs((grid - [543_000.0, 4_176_000.0]) % 100.0 - 50.0).min(axis=1)
    assert off.max() < 1e-6


def test_cli_on_synthetic_npy_and_at_folder(tmp_path) -> None:
    out = tmp_path / "synthetic"
    assert cli.main(["partition", "--synthetic", "8000", "--out", str(out), "--workers", "1"]) == 0
    summary = json.loads((out / "partition.json").read_text())
    assert summary["positions"] == 8000 and len(summary["groups"]) == 10
    assert summary["classes"] == sum(g["classes"] for g in summary["groups"]) > 0
    assert (out / "partition.png").stat().st_size > 10_000
    saved = Partition.load(out / "partition.npz")
    assert saved.num_classes == summary["classes"]

    pos = strip_with_three_segments() + [500_000.0, 4_000_000.0]
    np.save(tmp_path / "pos.npy", pos)
    out2 = tmp_path / "npy"
    assert cli.main(["partition", "--positions", str(tmp_path / "pos.npy"), "--out", str(out2), "--no-plot",
                     "--set", "workers=1", "--method", "grid"]) == 0
    assert json.loads((out2 / "partition.json").read_text())["method"] == "grid"

    folder = tmp_path / "images"
    folder.mkdir()
    for i, (e, n) in enumerate(pos):
        name = AtName(easting=e, northing=n, zone_number=10, zone_letter="S", pano_id=f"p{i}")
        (folder / format_at_name(name)).touch()
    out3 = tmp_path / "at"
    assert cli.main(["partition", "--images", str(folder), "--out", str(out3), "--no-plot", "--workers", "1"]) == 0
    names = (out3 / "images.txt").read_text().split()
    part = Partition.load(out3 / "partition.npz")
    assert part.num_classes == 3 and len(names) == 120
