"""PlaceMap: build, atomic save, validated load, exact and approximate search with real FAISS on real files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsformer_ros.common.atomic import OutputPathError
from dsformer_ros.maps.map_index import IndexConfig
from dsformer_ros.maps.placemap import MapError, MapManifest, PlaceMap, PlaceMetadata

CKPT = "ab" * 32
DIM = 64


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, clusters: int, dim: int = DIM) -> np.ndarray:
    centres = unit(np.random.default_rng(99), clusters, dim)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)).astype(np.float32) * (0.8 / np.sqrt(dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def metadata(n: int, spacing: float = 2.0) -> PlaceMetadata:
    i = np.arange(n)
    return PlaceMetadata(
        place_id=(i * 3 + 100).astype(np.int64),
        easting=500000.0 + spacing * i,
        northing=np.full(n, 5_000_000.0),
        zone_number=np.full(n, 32, dtype=np.int64),
        zone_letter=np.array(["U"] * n),
        lat=np.full(n, np.nan),
        lon=np.full(n, np.nan),
        heading_deg=np.where(i % 2 == 0, np.nan, 90.0),
        stamp_ns=(i * 100_000_000).astype(np.int64),
        source=np.array([f"bag:/data/drive.mcap#/cam/image@{s}" if s % 3 else f"images/{s:06d}.jpg" for s in i]),
    )


def build(descriptors: np.ndarray, **kwargs) -> PlaceMap:
    return PlaceMap.build(
        descriptors,
        kwargs.pop("meta", None) or metadata(len(descriptors)),
        model_variant=kwargs.pop("variant", "dsformer-s"),
        checkpoint_sha256=CKPT,
        preprocessing={"resize": [224, 224], "normalize": "imagenet"},
        build_info={"tool": "test", "source": "random"},
        **kwargs,
    )


def assert_metadata_equal(a: PlaceMetadata, b: PlaceMetadata) -> None:
    for name in PlaceMetadata.columns():
        np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)), err_msg=name)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def saved(tmp_path: Path, rng: np.random.Generator) -> tuple[PlaceMap, Path]:
    place_map = build(unit(rng, 300))
    path = tmp_path / "map"
    place_map.save(path)
    return place_map, path


def test_round_trip(saved: tuple[PlaceMap, Path], rng: np.random.Generator) -> None:
    original, path = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["manifest.json", "descriptors.npy", "index.faiss"] + [f"places.{c}.npy" for c in PlaceMetadata.columns()]
    )
    loaded = PlaceMap.load(path, expect_variant="dsformer-s", expect_checkpoint_sha256=CKPT.upper(), expect_dim=DIM)
    assert not isinstance(loaded.descriptors, np.memmap) and not loaded.descriptors.flags.writeable
    np.testing.assert_array_equal(loaded.descriptors, original.descriptors)
    assert_metadata_equal(loaded.metadata, original.metadata)
    assert loaded.manifest == original.manifest
    assert loaded.manifest.count == len(loaded) == 300 and loaded.dim == DIM
    assert set(loaded.manifest.files) == {p.name for p in path.iterdir()} - {"manifest.json"}
    assert loaded.manifest.build["tool"] == "test" and "date" in loaded.manifest.build
    queries = unit(rng, 7)
    a, b = original.search(queries, 5), loaded.search(queries, 5)
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_exact_search_matches_brute_force(saved: tuple[PlaceMap, Path], rng: np.random.Generator) -> None:
    _, path = saved
    place_map = PlaceMap.load(path)
    queries = unit(rng, 25)
    result = place_map.search(queries, 10)
    scores = queries @ np.asarray(place_map.descriptors).T
    expected = np.argsort(-scores, axis=1)[:, :10]
    np.testing.assert_array_equal(result.rows, expected)
    np.testing.assert_allclose(result.scores, np.take_along_axis(scores, expected, axis=1), atol=1e-5)
    np.testing.assert_array_equal(result.place_ids, np.asarray(place_map.metadata.place_id)[expected])
    assert result.rows.dtype == np.int64 and result.place_ids.dtype == np.int64 and result.scores.dtype == np.float32
    hits = result.metadata(3)
    np.testing.assert_array_equal(hits.place_id, result.place_ids[3])
    np.testing.assert_array_equal(hits.source, np.asarray(place_map.metadata.source)[expected[3]])


def test_fewer_places_than_k(rng: np.random.Generator) -> None:
    place_map = build(unit(rng, 4))
    result = place_map.search(unit(rng, 2), 6)
    assert (result.rows[:, 4:] == -1).all() and (result.place_ids[:, 4:] == -1).all()
    assert np.isneginf(result.scores[:, 4:]).all()
    assert sorted(result.rows[0, :4].tolist()) == [0, 1, 2, 3]
    assert len(result.metadata(1)) == 4


def test_float16_storage(tmp_path: Path, rng: np.random.Generator) -> None:
    descriptors = unit(rng, 500)
    place_map = build(descriptors, dtype="float16")
    place_map.save(tmp_path / "m16")
    loaded = PlaceMap.load(tmp_path / "m16")
    assert loaded.descriptors.dtype == np.float16 and loaded.manifest.descriptor_dtype == "float16"
    assert np.load(tmp_path / "m16" / "descriptors.npy", allow_pickle=False).dtype == np.float16
    np.testing.assert_array_equal(loaded.descriptors, descriptors.astype(np.float16))
    queries = unit(rng, 10)
    expected = np.argsort(-(queries @ descriptors.astype(np.float16).astype(np.float32).T), axis=1)[:, :5]
    np.testing.assert_array_equal(loaded.search(queries, 5).rows, expected)


@pytest.mark.parametrize(
    "config",
    [
        IndexConfig(kind="hnsw", storage="fp32"),
        IndexConfig(kind="hnsw", storage="fp16"),
        IndexConfig(kind="ivf", storage="fp16"),
        IndexConfig(kind="ivf", storage="sq8"),
        IndexConfig(kind="flat", storage="sq8"),
    ],
    ids=lambda c: f"{c.kind}-{c.storage}",
)
def test_approximate_indexes_recall(tmp_path: Path, config: IndexConfig) -> None:
    rng = np.random.default_rng(1)
    data = clustered(rng, 6000, clusters=300)
    queries = clustered(np.random.default_rng(2), 100, clusters=300)
    place_map = build(data, index=config)
    place_map.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.manifest.index["kind"] == config.kind
    if config.kind == "ivf":
        assert loaded.manifest.index["ivf_nlist"] == config.resolved_nlist(6000) > 1
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    rows = loaded.search(queries, 10).rows
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.tolist(), exact.tolist())])
    assert recall >= 0.95, recall


def test_index_config_validation(rng: np.random.Generator) -> None:
    with pytest.raises(MapError, match="index.kind"):
        build(unit(rng, 10), index=IndexConfig(kind="lsh"))  # type: ignore[arg-type]
    with pytest.raises(MapError, match="index.ef_search"):
        build(unit(rng, 10), index=IndexConfig(kind="hnsw", ef_search=0))
    assert IndexConfig(kind="ivf").resolved_nlist(1_000_000) == 4096
    assert IndexConfig(kind="ivf").resolved_nlist(100) == 2


def _edit_manifest(path: Path, **changes) -> None:
    data = json.loads((path / "manifest.json").read_text())
    data.update(changes)
    (path / "manifest.json").write_text(json.dumps(data))


def _rehash(path: Path, name: str) -> None:
    import hashlib

    data = json.loads((path / "manifest.json").read_text())
    data["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(data))


def test_refuses_missing_things(saved: tuple[PlaceMap, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(MapError, match="does not exist"):
        PlaceMap.load(tmp_path / "nowhere")
    (path / "index.faiss").unlink()
    with pytest.raises(MapError, match="missing file index.faiss"):
        PlaceMap.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(MapError, match="has no manifest.json"):
        PlaceMap.load(path)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"format_version": 2}, "format version 2 is newer than this code supports"),
        ({"format_version": "one"}, "unknown map format version 'one'"),
        ({"format_version": 0}, "unknown map format version 0"),
        ({"descriptor_dim": 65}, "dimension mismatch: descriptors.npy has 64, manifest says 65"),
        ({"count": 301}, "count mismatch: descriptors.npy has 300 rows, manifest says 301"),
        ({"descriptor_dtype": "float16"}, "descriptors.npy holds float32"),
        ({"model_variant": 7}, "field 'model_variant' must be str"),
        ({"index": {"kind": "annoy"}}, "index section is invalid: kind: .annoy. is not one of"),
    ],
)
def test_refuses_bad_manifest(saved: tuple[PlaceMap, Path], changes: dict, match: str) -> None:
    _, path = saved
    _edit_manifest(path, **changes)
    with pytest.raises(MapError, match=match):
        PlaceMap.load(path)


def test_refuses_garbled_manifest(saved: tuple[PlaceMap, Path]) -> None:
    _, path = saved
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(MapError, match="manifest.json is not valid JSON"):
        PlaceMap.load(path)
    (path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(MapError, match="lacks the field 'model_variant'"):
        PlaceMap.load(path)


def test_refuses_model_mismatch(saved: tuple[PlaceMap, Path]) -> None:
    _, path = saved
    with pytest.raises(MapError, match=r"variant mismatch: map was built with 'dsformer-s', expected 'dsformer-b'"):
        PlaceMap.load(path, expect_variant="dsformer-b")
    with pytest.raises(MapError, match=f"checkpoint mismatch: .*{CKPT}, expected {'cd' * 32}"):
        PlaceMap.load(path, expect_checkpoint_sha256="cd" * 32)
    with pytest.raises(MapError, match="dimension mismatch: map has 64, expected 512"):
        PlaceMap.load(path, expect_dim=512)


def test_refuses_flipped_bytes(saved: tuple[PlaceMap, Path]) -> None:
    _, path = saved
    for name in ("descriptors.npy", "places.source.npy", "index.faiss"):
        raw = bytearray((path / name).read_bytes())
        raw[-5] ^= 0xFF
        (path / name).write_bytes(bytes(raw))
        with pytest.raises(MapError, match=f"checksum mismatch for {name.replace('.', '[.]')}: manifest says"):
            PlaceMap.load(path)
        raw[-5] ^= 0xFF
        (path / name).write_bytes(bytes(raw))
    PlaceMap.load(path)


def test_refuses_truncated_and_corrupt_files_without_checksums(saved: tuple[PlaceMap, Path]) -> None:
    _, path = saved
    good = (path / "descriptors.npy").read_bytes()
    (path / "descriptors.npy").write_bytes(good[: len(good) // 2])
    with pytest.raises(MapError, match="descriptors.npy is corrupt or truncated"):
        PlaceMap.load(path, verify_checksums=False)
    (path / "descriptors.npy").write_bytes(good)
    index_bytes = (path / "index.faiss").read_bytes()
    (path / "index.faiss").write_bytes(b"XXXX" + index_bytes[4:])
    with pytest.raises(MapError, match="index.faiss is corrupt or unreadable"):
        PlaceMap.load(path, verify_checksums=False)
    (path / "index.faiss").write_bytes(index_bytes[: len(index_bytes) // 2])
    with pytest.raises(MapError, match="index.faiss is corrupt or unreadable"):
        PlaceMap.load(path, verify_checksums=False)


def test_refuses_index_of_other_dimension_or_size(saved: tuple[PlaceMap, Path], tmp_path: Path) -> None:
    _, path = saved
    rng = np.random.default_rng(5)
    build(unit(rng, 300, dim=32)).save(tmp_path / "other_dim")
    (path / "index.faiss").write_bytes((tmp_path / "other_dim" / "index.faiss").read_bytes())
    _rehash(path, "index.faiss")
    with pytest.raises(MapError, match="dimension mismatch: index.faiss has 32, manifest says 64"):
        PlaceMap.load(path)
    build(unit(rng, 299)).save(tmp_path / "other_count")
    (path / "index.faiss").write_bytes((tmp_path / "other_count" / "index.faiss").read_bytes())
    _rehash(path, "index.faiss")
    with pytest.raises(MapError, match="count mismatch: index.faiss holds 299 vectors, manifest says 300"):
        PlaceMap.load(path)
    build(unit(rng, 300), index=IndexConfig(kind="hnsw")).save(tmp_path / "other_kind")
    (path / "index.faiss").write_bytes((tmp_path / "other_kind" / "index.faiss").read_bytes())
    _rehash(path, "index.faiss")
    with pytest.raises(MapError, match="not a flat/fp32 index"):
        PlaceMap.load(path)


def test_refuses_bad_metadata_file(saved: tuple[PlaceMap, Path]) -> None:
    _, path = saved
    np.save(path / "places.zone_number.npy", np.array([32] * 299 + [33], dtype=np.int64))
    _rehash(path, "places.zone_number.npy")
    with pytest.raises(MapError, match=r"single UTM zone; found zones \[32, 33\]"):
        PlaceMap.load(path)
    np.save(path / "places.lat.npy", np.zeros(10))
    _rehash(path, "places.lat.npy")
    with pytest.raises(MapError, match="column lat has 10 rows, place_id has 300"):
        PlaceMap.load(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d, m: m.place_id.__setitem__(5, m.place_id[2]), "place_id values must be unique; 106 appears"),
        (lambda d, m: m.easting.__setitem__(4, np.nan), "easting must be finite; row 4"),
        (lambda d, m: m.northing.__setitem__(9, np.inf), "northing must be finite; row 9"),
        (lambda d, m: m.zone_number.__setitem__(0, 31), "single UTM zone"),
        (lambda d, m: m.zone_letter.__setitem__(0, "H"), "one hemisphere"),
        (lambda d, m: m.zone_letter.__setitem__(0, "I"), "invalid UTM zone letter"),
        (lambda d, m: d.__setitem__((3, 0), np.nan), "descriptor row 3 is not finite"),
        (lambda d, m: d.__setitem__(6, d[6] * 2), "L2-normalised; row 6 has norm 2.0000"),
    ],
)
def test_build_rejects_bad_input(rng: np.random.Generator, mutate, match: str) -> None:
    descriptors, meta = unit(rng, 20), metadata(20)
    mutate(descriptors, meta)
    with pytest.raises(MapError, match=match):
        build(descriptors, meta=meta)


def test_build_rejects_mismatched_shapes(rng: np.random.Generator) -> None:
    with pytest.raises(MapError, match="20 descriptors but 19 metadata rows"):
        build(unit(rng, 20), meta=metadata(19))
    with pytest.raises(MapError, match="2-D float array"):
        build(np.ones(20, dtype=np.float32), meta=metadata(20))
    with pytest.raises(MapError, match="descriptor dtype"):
        build(unit(rng, 20), dtype="int8")
    with pytest.raises(MapError, match="checkpoint_sha256"):
        PlaceMap.build(unit(rng, 3), metadata(3), model_variant="s", checkpoint_sha256="x", preprocessing={}, build_info={})
    with pytest.raises(MapError, match="metadata column place_id must be int64"):
        PlaceMetadata(**{**vars(metadata(3)), "place_id": np.array([0.5, 1.5, 2.5])})
    with pytest.raises(MapError, match="metadata column source must hold strings"):
        PlaceMetadata(**{**vars(metadata(3)), "source": np.array([1, 2, 3])})


def test_search_rejects_bad_queries(rng: np.random.Generator) -> None:
    place_map = build(unit(rng, 20))
    with pytest.raises(MapError, match=r"shape \(Q, 64\)"):
        place_map.search(unit(rng, 2, dim=32), 3)
    with pytest.raises(MapError, match="wrap a single descriptor"):
        place_map.search(unit(rng, 1)[0], 3)
    with pytest.raises(MapError, match="k must be a positive integer"):
        place_map.search(unit(rng, 1), 0)
    bad = unit(rng, 2)
    bad[1, 3] = np.nan
    with pytest.raises(MapError, match="finite"):
        place_map.search(bad, 3)


def test_failed_save_keeps_previous_map(saved: tuple[PlaceMap, Path], rng: np.random.Generator) -> None:
    original, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    replacement = build(unit(rng, 400))
    replacement.descriptors[350, 0] = np.nan  # goes bad after validation; save finds it while streaming rows
    with pytest.raises(MapError, match="descriptor row 350 is not finite"):
        replacement.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["map"]
    loaded = PlaceMap.load(path)
    assert len(loaded) == len(original) == 300


def test_save_replaces_previous_map(saved: tuple[PlaceMap, Path], rng: np.random.Generator) -> None:
    _, path = saved
    build(unit(rng, 50), variant="dsformer-b").save(path)
    loaded = PlaceMap.load(path, expect_variant="dsformer-b")
    assert len(loaded) == 50
    assert sorted(p.name for p in path.parent.iterdir()) == ["map"]


def test_save_into_unwritable_place_leaves_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputPathError, match=f"output {blocker / 'map'}: {blocker} is a file, not a directory"):
        build(unit(rng, 5)).save(blocker / "map")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_metadata_take_and_concatenate() -> None:
    meta = metadata(10)
    part = meta.take(np.array([7, 2, 2]))
    assert len(part) == 3
    assert part.place_id.tolist() == [121, 106, 106]
    assert part.source.tolist() == [meta.source[7], meta.source[2], meta.source[2]]
    assert np.isnan(part.heading_deg[1]) and part.heading_deg[0] == 90.0
    joined = PlaceMetadata.concatenate([meta.take(np.arange(0, 4)), meta.take(np.arange(4, 10))])
    assert_metadata_equal(joined, meta)
    assert joined.zone_letter.dtype.kind == "U" and joined.place_id.dtype == np.int64
    with pytest.raises(MapError, match="empty list"):
        PlaceMetadata.concatenate([])


def test_keyframe_spacing(rng: np.random.Generator) -> None:
    place_map = build(unit(rng, 40), meta=metadata(40, spacing=2.0))
    assert place_map.keyframe_spacing_m() == pytest.approx(2.0)
    with pytest.raises(MapError, match="at least two places"):
        build(unit(rng, 1), meta=metadata(1)).keyframe_spacing_m()


def test_manifest_json_round_trip(saved: tuple[PlaceMap, Path]) -> None:
    original, path = saved
    manifest = MapManifest.from_json((path / "manifest.json").read_text())
    assert manifest == original.manifest
    assert manifest.index_config() == IndexConfig()
    assert manifest.preprocessing == {"resize": [224, 224], "normalize": "imagenet"}


def test_old_manifest_without_similarity_loads_and_gets_one_stored(tmp_path: Path, rng: np.random.Generator) -> None:
    from dsformer_ros.maps.similarity import SimilarityModel, map_similarity
    from training.maps.fit_similarity import store_similarity

    n = 120
    phase = np.linspace(0.0, 12.0, n)[:, None] * np.linspace(0.5, 1.5, 32)[None, :]
    descriptors = np.cos(phase + rng.uniform(0, 6.3, 32)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    place_map = build(descriptors, meta=metadata(n, spacing=2.0))
    place_map.save(tmp_path / "map")
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    del manifest["similarity"]  # a map written before the section existed
    (tmp_path / "map" / "manifest.json").write_text(json.dumps(manifest))
    old = PlaceMap.load(tmp_path / "map")
    assert old.manifest.similarity == {}
    fitted = map_similarity(old)  # fitted at load
    stored = store_similarity(tmp_path / "map")
    again = PlaceMap.load(tmp_path / "map")  # checksums still hold: only the manifest was rewritten
    assert SimilarityModel.from_manifest(again.manifest.similarity) == stored == fitted
    assert stored.positive_mean > stored.negative_mean
