"""Recall@N evaluation: recall maths, ground truth, the data set readers, exact recalls on a constructed data set, the
baselines on real imagery (corridor, Gardens Point), report, figures, cache."""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from dsformer_ros.maps.placemap import PlaceMap
from training.cli import main as cli_main
from training.eval.datasets import (
    DatasetConfig,
    DatasetError,
    open_dataset,
    read_at_dataset,
    read_index_folders,
    read_msls_val,
    read_nordland,
)
from training.eval.evaluate import EvalConfig, evaluate
from training.eval.recall import first_correct_rank, positives_within_frames, positives_within_radius, recall_at_n
from training.io.at_names import AtName, format_at_name


def _png_ok(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 5, f"{path} looks blank"


def test_recall_at_n_hand_made_cases() -> None:
    predictions = np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 1, 2], [3, -1, -1]])
    positives = [np.array([1]), np.array([0]), np.array([], dtype=np.int64), np.array([5]), np.array([3])]
    result = recall_at_n(predictions, positives, (1, 2, 3))
    assert result["queries"] == 5
    assert result["queries_without_positives"] == 1
    assert result["recall"] == {1: pytest.approx(1 / 5), 2: pytest.approx(2 / 5), 3: pytest.approx(3 / 5)}
    assert result["recall_queries_with_positives"][3] == pytest.approx(3 / 4)
    assert first_correct_rank(predictions, positives).tolist() == [1, 2, -1, -1, 0]
    with pytest.raises(ValueError, match="Recall@5 needs at least 5"):
        recall_at_n(predictions, positives, (1, 5))
    with pytest.raises(ValueError, match="prediction rows"):
        recall_at_n(predictions[:2], positives, (1,))


def test_positives_by_radius_respect_distance_and_zone_groups() -> None:
    db = np.array([[0.0, 0.0], [10.0, 0.0], [30.0, 0.0], [0.0, 0.0]])
    queries = np.array([[0.0, 24.0], [20.0, 0.0], [500.0, 0.0]])
    found = positives_within_radius(db, queries, 25.0)
    assert [p.tolist() for p in found] == [[0, 3], [0, 1, 2, 3], []]  # (0, 24) to (10, 0) is 26 m
    grouped = positives_within_radius(db, queries, 25.0, np.array([0, 0, 0, 1]), np.array([1, 0, 0]))
    assert [p.tolist() for p in grouped] == [[3], [0, 1, 2], []]
    assert [p.tolist() for p in positives_within_radius(db, queries, 12.0)] == [[], [1, 2], []]
    frames = positives_within_frames(np.array([0, 1, 2, 3, 10]), np.array([2, 8, 20]), 2)
    assert [p.tolist() for p in frames] == [[0, 1, 2, 3], [4], []]


def test_at_reader_and_geotagged_report(traversals: Path, tmp_path: Path) -> None:
    images = sorted((traversals / "ref").glob("*.jpg"))
    root = tmp_path / "mini_at"
    for part, offset, count in (("database", 0.0, 12), ("queries", 3.0, 6)):
        folder = root / "test" / part
        folder.mkdir(parents=True)
        for i in range(count):
            step = 20.0 if part == "database" else 40.0
            name = AtName(550000.0 + i * step + offset, 4180000.0, 10, "S", 37.77, -122.4, heading_deg=90.0 + i)
            shutil.copy(images[i * 8 if part == "database" else i * 16 + 2], folder / format_at_name(name))
    dataset = read_at_dataset(root, "test", radius_m=25.0)
    assert dataset.kind == "utm" and dataset.geotagged and dataset.utm_zone == (10, "S")
    assert len(dataset.database_paths) == 12 and len(dataset.query_paths) == 6
    # query i sits at 40 i + 3 m: database 2i (3 m away) and 2i+1 (17 m away) are within 25 m, 2i-1 (23 m) too
    assert dataset.positives[0].tolist() == [0, 1]
    assert dataset.positives[2].tolist() == [3, 4, 5]
    assert math.isclose(float(dataset.database_heading[3]), 93.0)

    cfg = EvalConfig(
        dataset=DatasetConfig(format="at", root=str(root), split="test"), method="raw_pixels", out=str(tmp_path / "out")
    )
    report = evaluate(cfg)
    assert report["dataset"]["geotagged"] and report["figures"]["queries_map"] == "queries_map.png"
    _png_ok(tmp_path / "out" / "queries_map.png")
    _png_ok(tmp_path / "out" / "recall_at_n.png")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["methods"]["raw_pixels"]["queries"] == 6


def test_index_folders_without_ground_truth_match_by_index(traversals: Path, tmp_path: Path) -> None:
    root = tmp_path / "pairs"  # ten image pairs named by index, like gardens_point_mini: no ground_truth.csv
    for part in ("ref", "query"):
        (root / part).mkdir(parents=True)
        for i in (9, 10, 2, 1, 3, 4, 5, 6, 7, 8):  # written out of order; numerically 10 comes after 9, not after 1
            shutil.copy(traversals / part / f"{i * 10:07d}.jpg", root / part / f"{i}.jpg")
    dataset = read_index_folders(root)
    assert len(dataset.database_paths) == len(dataset.query_paths) == 10
    assert [p.name for p in dataset.database_paths] == [f"{i}.jpg" for i in range(1, 11)]
    assert [p.tolist() for p in dataset.positives] == [[i] for i in range(10)]
    wide = open_dataset(DatasetConfig(format="folders", root=str(root), frame_tolerance=1))
    assert wide.positives[0].tolist() == [0, 1] and wide.positives[5].tolist() == [4, 5, 6]
    assert "query i matches ref i" in dataset.description


def test_nordland_frames_and_errors(traversals: Path, tmp_path: Path) -> None:
    images = sorted((traversals / "ref").glob("*.jpg"))
    for season, frames in (("summer", range(0, 20)), ("winter", (3, 10, 40))):
        (tmp_path / season).mkdir()
        for f in frames:
            shutil.copy(images[f % len(images)], tmp_path / season / f"{season}_{f:05d}.png")
    dataset = read_nordland(tmp_path, "summer", "winter", tolerance=2)
    assert dataset.kind == "index" and not dataset.geotagged
    assert [p.tolist() for p in dataset.positives] == [[1, 2, 3, 4, 5], [8, 9, 10, 11, 12], []]
    shutil.copy(images[0], tmp_path / "winter" / "dup_00003.png")
    with pytest.raises(DatasetError, match="frame number 3 appears more than once"):
        read_nordland(tmp_path, "summer", "winter")
    with pytest.raises(DatasetError, match="does not exist"):
        read_nordland(tmp_path, "summer", "spring")


def _write_msls_part(folder: Path, image: Path, rows: list[tuple[str, float, float, bool]], lat: float, lon: float) -> None:
    (folder / "images").mkdir(parents=True)
    post = [",key,easting,northing,night,view_direction,unique_cluster"]
    raw = [",key,lon,lat,ca,captured_at,pano"]
    for i, (key, east, north, pano) in enumerate(rows):
        post.append(f"{i},{key},{east},{north},False,Forward,0")
        raw.append(f"{i},{key},{lon},{lat},0.0,0,{pano}")
        shutil.copy(image, folder / "images" / f"{key}.jpg")
    (folder / "postprocessed.csv").write_text("\n".join(post) + "\n")
    (folder / "raw.csv").write_text("\n".join(raw) + "\n")


def test_msls_reader_excludes_panoramas_and_keeps_cities_apart(traversals: Path, tmp_path: Path) -> None:
    image = traversals / "ref" / "0000000.jpg"
    base = tmp_path / "train_val"
    _write_msls_part(base / "cph" / "database", image, [("c0", 100.0, 200.0, False), ("c1", 150.0, 200.0, True)], 55.7, 12.5)
    _write_msls_part(base / "cph" / "query", image, [("cq", 110.0, 200.0, False)], 55.7, 12.5)
    _write_msls_part(base / "sf" / "database", image, [("s0", 105.0, 200.0, False)], 37.7, -122.4)
    _write_msls_part(base / "sf" / "query", image, [("sq", 500.0, 200.0, False), ("sp", 104.0, 200.0, True)], 37.7, -122.4)
    dataset = read_msls_val(tmp_path, ("cph", "sf"), radius_m=25.0)
    assert [p.name for p in dataset.database_paths] == ["c0.jpg", "s0.jpg"]
    assert [p.name for p in dataset.query_paths] == ["cq.jpg", "sq.jpg"]
    # cq is 5 m from s0 numerically, but s0 is in another city: only c0 counts
    assert [p.tolist() for p in dataset.positives] == [[0], []]
    assert dataset.utm_zone is None and not dataset.geotagged


@pytest.mark.slow
def test_corridor_protocol_baselines_report_and_cache(corridor: Path, tmp_path: Path) -> None:
    def run(method: str, **extra: Any) -> dict:
        cfg = EvalConfig(
            dataset=DatasetConfig(format="folders", root=str(corridor)),
            method=method,
            device="cpu",
            batch_size=32,
            out=str(tmp_path / method),
            cache_dir=str(tmp_path / "cache"),
            **extra,
        )
        return evaluate(cfg)["methods"][method]

    raw = run("raw_pixels")
    assert 0.2 <= raw["recall"]["1"] <= 0.35, raw["recall"]
    assert raw["database_cache"] == "miss" and raw["queries_without_positives"] == 0
    again = run("raw_pixels")
    assert again["database_cache"] == "hit" and again["extraction_ms_per_image"]["database"] is None
    assert again["recall"] == raw["recall"]
    cache = Path(again["database_cache_path"])
    assert not PlaceMap.load(cache).manifest.similarity, "a single-frame evaluation needs no measurement model"
    sequence = run("raw_pixels", localizer="sequence", figures=False)
    assert sequence["database_cache"] == "hit" and sequence["database_cache_path"] == str(cache)
    assert PlaceMap.load(cache).manifest.similarity, "the model fitted on a cache hit must be stored with the cache"
    gem = run("backbone_gem")
    assert gem["recall"]["1"] > raw["recall"]["1"] + 0.1, (gem["recall"], raw["recall"])
    assert gem["descriptor_dim"] == 320

    report = json.loads((tmp_path / "raw_pixels" / "report.json").read_text())
    result = report["methods"]["raw_pixels"]
    assert report["dataset"]["database_images"] == report["dataset"]["queries"] == 111
    assert len(result["per_query"]) == 111 and len(result["per_query"][0]["top_k"]) == 10
    assert sorted(result["recall"]) == ["1", "10", "20", "5"]
    assert result["map_memory_bytes"]["descriptors"] == 111 * 24 * 32 * 4
    assert result["search_ms_per_query"] > 0 and result["extraction_ms_per_image"]["queries"] > 0
    _png_ok(tmp_path / "raw_pixels" / "recall_at_n.png")
    _png_ok(tmp_path / "raw_pixels" / "queries_strip.png")


def _check_ranking(result: dict, positives: list[list[int]], n_db: int) -> None:
    """Each query's reported ranking is a ranking of the database, and recall and first correct ranks follow from it."""
    for entry, pos in zip(result["per_query"], positives):
        ranking = entry["top_k"]
        assert len(set(ranking)) == len(ranking) and all(0 <= r < n_db for r in ranking), ranking
        assert entry["scores"] == sorted(entry["scores"], reverse=True), "best first"
        hits = [rank for rank, r in enumerate(ranking) if r in pos]
        assert entry["first_correct_rank"] == (hits[0] if hits else -1)
        assert entry["num_positives"] == len(pos)
    for n, value in result["recall"].items():
        found = sum(0 <= e["first_correct_rank"] < int(n) for e in result["per_query"])
        assert value == pytest.approx(found / len(positives)), (n, value)


def _blocks(seed: int) -> np.ndarray:
    """A 120x160 image of 5x5-pixel random blocks: exact at the raw-pixel baseline's 24x32, unlike any street."""
    blocks = np.random.default_rng(seed).integers(0, 256, size=(24, 32, 3)).astype(np.float64)
    return np.kron(blocks, np.ones((5, 5, 1)))


def test_eval_cli_exact_recalls_on_a_constructed_dataset(traversals: Path, tmp_path: Path) -> None:
    """Queries with known answers: copies of database images in shuffled order, a blend of two random images whose
    correct place is the weaker component (rank 2 for raw pixels), and a place outside the map (no positives)."""
    street = sorted((traversals / "ref").glob("*.jpg"))[::11][:8]  # 8 places 11 m apart
    root = tmp_path / "constructed"
    (root / "ref").mkdir(parents=True)
    (root / "query").mkdir()
    for i, path in enumerate(street):
        shutil.copy(path, root / "ref" / f"{i:07d}.jpg")
    for i, seed in ((8, 1), (9, 2)):
        cv2.imwrite(str(root / "ref" / f"{i:07d}.png"), _blocks(seed).astype(np.uint8))
    copies = [5, 2, 7, 0, 3, 6]  # query i is a byte copy of database image copies[i]
    for q, i in enumerate(copies):
        shutil.copy(root / "ref" / f"{i:07d}.jpg", root / "query" / f"{q:07d}.jpg")
    cv2.imwrite(str(root / "query" / "0000006.png"), (0.7 * _blocks(1) + 0.3 * _blocks(2)).round().astype(np.uint8))
    shutil.copy(sorted((traversals / "query").glob("*.jpg"))[-1], root / "query" / "0000007.jpg")
    positives = [[i] for i in copies] + [[9], []]
    rows = "".join(f"{q},{' '.join(map(str, p))}\n" for q, p in enumerate(positives))
    (root / "ground_truth.csv").write_text("query_index,correct_ref_indices\n" + rows)
    out = tmp_path / "out"
    code = cli_main(["eval", "--dataset-root", str(root), "--dataset-format", "folders", "--baselines",
                     "--device", "cpu", "--out", str(out), "--set", "recall_ns=[1,2,5]", "--set", "top_k=10",
                     "--set", "use_cache=false"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["dsformer", "raw_pixels", "backbone_gem"]
    assert report["dataset"]["database_images"] == 10 and report["dataset"]["queries"] == 8
    for name, result in report["methods"].items():
        _check_ranking(result, positives, 10)
        assert result["queries_without_positives"] == 1
        assert [e["top_k"][0] for e in result["per_query"][:6]] == copies, name  # a copy finds its original first
        assert all(e["scores"][0] == pytest.approx(1.0, abs=1e-4) for e in result["per_query"][:6]), name
        assert result["per_query"][7]["first_correct_rank"] == -1
    raw = report["methods"]["raw_pixels"]
    assert raw["per_query"][6]["top_k"][:2] == [8, 9]
    assert raw["recall"] == {"1": pytest.approx(6 / 8), "2": pytest.approx(7 / 8), "5": pytest.approx(7 / 8)}
    assert raw["recall_queries_with_positives"]["2"] == pytest.approx(1.0)
    _png_ok(out / "recall_at_n.png")


def test_eval_cli_with_baselines_on_gardens_point(gardens_point: Path, tmp_path: Path) -> None:
    """Day queries against night references (real imagery): hard for every untrained method."""
    out = tmp_path / "gp"
    code = cli_main(
        ["eval", "--dataset-root", str(gardens_point), "--dataset-format", "folders", "--baselines", "--device", "cpu",
         "--out", str(out), "--set", "recall_ns=[1,5]", "--set", "top_k=10"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["dsformer", "raw_pixels", "backbone_gem"]
    for result in report["methods"].values():
        assert set(result["recall"]) == {"1", "5"}
        _check_ranking(result, [[i] for i in range(10)], 10)
        assert sorted(result["per_query"][0]["top_k"]) == list(range(10))  # the whole database, ranked
        assert result["recall"]["1"] <= 0.5  # day against night: no untrained method finds most places first
    # the raw-pixel baseline is deterministic: 2 of 10 places first, 7 of 10 in the top 5 (../shared/data/README.md)
    assert report["methods"]["raw_pixels"]["recall"] == {"1": pytest.approx(0.2), "5": pytest.approx(0.7)}
    assert report["methods"]["dsformer"]["descriptor_dim"] == 256
    _png_ok(out / "recall_at_n.png")


def test_bad_configuration_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset.root"):
        EvalConfig(dataset=DatasetConfig(format="folders"), out=str(tmp_path)).dataset.validate()
    with pytest.raises(ValueError, match="method"):
        EvalConfig(method="sift", out=str(tmp_path)).validate()
    with pytest.raises(DatasetError, match="does not exist"):
        read_index_folders(tmp_path / "nowhere")


def test_sequence_localizer_on_the_ordered_corridor(corridor: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """--localizer sequence at its defaults (no speed to set: the filter estimates it): the corridor queries in order
    through the sequence filter beat each query alone (raw pixels: 27.0 -> 38.7 % R@1); the cached database map
    stores its measurement model (no "built before sequence localization" warning)."""
    cfg = EvalConfig(dataset=DatasetConfig(format="folders", root=str(corridor)), method="raw_pixels", device="cpu",
                     out=str(tmp_path / "seq"), figures=False, localizer="sequence")
    with caplog.at_level(logging.WARNING):
        report = evaluate(cfg)
    result = report["methods"]["raw_pixels"]
    assert "no similarity section" not in caplog.text
    cached = PlaceMap.load(Path(result["database_cache_path"]))
    assert cached.manifest.similarity, "the cached database map lacks its similarity model"
    sequence = result["sequence"]
    assert sorted(sequence["recall"]) == sorted(result["recall"])
    assert len(sequence["correct_at_1"]) == len(sequence["top_1"]) == 111
    assert sequence["recall"]["1"] >= result["recall"]["1"] + 0.08, (sequence["recall"], result["recall"])
    single = evaluate(EvalConfig(dataset=DatasetConfig(format="folders", root=str(corridor)), method="raw_pixels",
                                 device="cpu", out=str(tmp_path / "single"), use_cache=False, figures=False))
    assert single["methods"]["raw_pixels"]["sequence"] is None
