"""Hostile and broken map directories: every one loads as a valid map or is refused with one MapError; what loads
never names a file outside itself, holds an index of other vectors, positions that are not UTM, or search rows
beyond the map."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsformer_ros.common.config import to_dict
from dsformer_ros.inference.preprocess import preprocess_config_for
from dsformer_ros.localization.localizer import Localizer, LocalizerConfig, LocalizerError
from dsformer_ros.maps.map_index import IndexConfig
from dsformer_ros.maps.placemap import MANIFEST, MapError, PlaceMap, PlaceMetadata, map_file_names

FUZZ = settings(max_examples=120, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CKPT = "ab" * 32
N, DIM = 120, 32


def _unit(seed: int, n: int = N, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _metadata(n: int = N) -> PlaceMetadata:
    i = np.arange(n)
    return PlaceMetadata(
        place_id=i.astype(np.int64), easting=500000.0 + 2.0 * i, northing=np.full(n, 5_000_000.0),
        zone_number=np.full(n, 32, dtype=np.int64), zone_letter=np.array(["U"] * n),
        lat=np.full(n, 45.0), lon=np.full(n, 9.0), heading_deg=np.full(n, 90.0),
        stamp_ns=(i * 100_000_000).astype(np.int64), source=np.array([f"images/{s:06d}.jpg" for s in i]),
    )


def _build(seed: int = 0, index: IndexConfig | None = None, sha: str = CKPT, preprocessing: dict | None = None,
           dim: int = DIM, variant: str = "dsformer-s") -> PlaceMap:
    return PlaceMap.build(_unit(seed, dim=dim), _metadata(), model_variant=variant, checkpoint_sha256=sha,
                          preprocessing=preprocessing or {}, build_info={"tool": "test"}, index=index)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("maps") / "map"
    _build().save(path)
    return path


@pytest.fixture
def map_dir(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "map"
    shutil.copytree(template, path)
    return path


def _fresh_copy(template: Path) -> Path:
    """A copy of the template map in a new temporary directory (Hypothesis examples share one tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="hostile_map_")) / "map"
    shutil.copytree(template, path)
    return path


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text())


def _write_manifest(path: Path, data: dict) -> None:
    (path / MANIFEST).write_text(json.dumps(data))


def _rehash(path: Path, *names: str) -> None:
    data = _manifest(path)
    for name in names:
        data["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
    _write_manifest(path, data)


def _loads_or_map_error(path: Path, **kwargs) -> PlaceMap | None:
    try:
        loaded = PlaceMap.load(path, **kwargs)
    except MapError:
        event("refused")
        return None
    event("loaded")
    return loaded


def test_non_utf8_manifest_names_the_file(map_dir: Path) -> None:
    (map_dir / MANIFEST).write_bytes(b'{"format_version": 1, "model_variant": "\xff\xfe"}')
    with pytest.raises(MapError, match=f"{map_dir / MANIFEST} is not UTF-8 text: byte 40"):
        PlaceMap.load(map_dir)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_deeply_nested_manifest_is_a_map_error(map_dir: Path, depth: int) -> None:
    (map_dir / MANIFEST).write_text('{"build": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(MapError, match="nested too deeply"):
        PlaceMap.load(map_dir)


def test_huge_manifest_is_refused_unread(map_dir: Path) -> None:
    with open(map_dir / MANIFEST, "ab") as fh:
        fh.truncate(64 << 20)
    with pytest.raises(MapError, match="a manifest is at most"):
        PlaceMap.load(map_dir)


@pytest.mark.parametrize("name", ["/proc/self/pagemap", "../map2/descriptors.npy", "sub/../descriptors.npy",
                                  "notes.txt", "", "index.faiss/.."])
def test_manifest_may_only_name_the_maps_own_files(map_dir: Path, name: str) -> None:
    data = _manifest(map_dir)
    data["files"][name] = "00" * 32
    _write_manifest(map_dir, data)
    with pytest.raises(MapError, match="which is not a map file; a map may only name its own files"):
        PlaceMap.load(map_dir)


def test_map_files_may_not_be_links_out_of_the_map(map_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    shutil.move(map_dir / "places.source.npy", outside)
    (map_dir / "places.source.npy").symlink_to(outside)
    with pytest.raises(MapError, match="places.source.npy is a symbolic link"):
        PlaceMap.load(map_dir, verify_checksums=False)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_of_other_vectors_is_refused(tmp_path: Path, kind: str) -> None:
    config = IndexConfig(kind=kind, ivf_nlist=2, ivf_train_points_per_list=39)
    _build(0, config).save(tmp_path / "a")
    _build(1, config).save(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "index.faiss", tmp_path / "a" / "index.faiss")
    _rehash(tmp_path / "a", "index.faiss")
    with pytest.raises(MapError, match="index.faiss does not hold the vectors of descriptors.npy"):
        PlaceMap.load(tmp_path / "a")
    assert len(PlaceMap.load(tmp_path / "b")) == N


def _ivf_with_ids(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFFlat(quantizer, DIM, 2, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    return index


def test_ivf_rows_beyond_the_map_are_refused_at_load_and_at_search(tmp_path: Path) -> None:
    vectors = _unit(0)
    config = IndexConfig(kind="ivf", ivf_nlist=2, ivf_train_points_per_list=39)
    _build(0, config).save(tmp_path / "m")
    faiss.write_index(_ivf_with_ids(vectors, np.arange(N, dtype=np.int64) + 1000), str(tmp_path / "m" / "index.faiss"))
    _rehash(tmp_path / "m", "index.faiss")
    with pytest.raises(MapError, match=f"holds row id 10\\d\\d in list ., outside the map's {N} places"):
        PlaceMap.load(tmp_path / "m")
    good = _build(0, config)
    good.index = _ivf_with_ids(vectors, np.arange(N, dtype=np.int64) * 7)
    with pytest.raises(MapError, match=f"returned row \\d+ for a map of {N} places"):
        good.search(vectors[-5:], 3)


@pytest.mark.parametrize(("column", "value", "match"), [
    ("easting", np.inf, "easting must be finite"),
    ("northing", np.nan, "northing must be finite"),
    ("easting", -3.0, "easting must be a UTM coordinate"),
    ("easting", 2.5e6, "easting must be a UTM coordinate"),
    ("northing", 1.2e7, "northing must be a UTM coordinate"),
    ("lat", 91.0, "lat must be NaN or within"),
    ("lon", -np.inf, "lon must be NaN or within"),
])
def test_positions_must_be_finite_valid_utm(map_dir: Path, column: str, value: float, match: str) -> None:
    values = np.load(map_dir / f"places.{column}.npy")
    values[7] = value
    np.save(map_dir / f"places.{column}.npy", values)
    _rehash(map_dir, f"places.{column}.npy")
    with pytest.raises(MapError, match=match + ".*row 7"):
        PlaceMap.load(map_dir)


@FUZZ
@given(column=st.sampled_from(["easting", "northing", "lat", "lon", "heading_deg"]), row=st.integers(0, N - 1),
       value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_position_value_loads_valid_or_is_refused(template: Path, column: str, row: int, value: float) -> None:
    path = _fresh_copy(template)
    values = np.load(path / f"places.{column}.npy")
    values[row] = value
    np.save(path / f"places.{column}.npy", values)
    _rehash(path, f"places.{column}.npy")
    loaded = _loads_or_map_error(path)
    if loaded is not None:
        meta = loaded.metadata
        assert np.isfinite(meta.easting).all() and (0 <= meta.easting).all() and (meta.easting <= 1e6).all()
        assert np.isfinite(meta.northing).all() and (0 <= meta.northing).all() and (meta.northing <= 1e7).all()
        assert not np.isinf(meta.lat).any() and not (np.abs(meta.lat) > 90).any()
    shutil.rmtree(path.parent)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_FIELDS = ["format_version", "model_variant", "checkpoint_sha256", "descriptor_dim", "descriptor_dtype",
           "preprocessing", "build", "count", "index", "files"]


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS + ["extra"]), st.one_of(st.just("<delete>"), _json)),
                      min_size=1, max_size=3))
def test_manifest_field_edits_load_or_are_a_map_error(template: Path, edits) -> None:
    path = _fresh_copy(template)
    data = _manifest(path)
    for field, value in edits:
        if value == "<delete>":
            data.pop(field, None)
        else:
            data[field] = value
    _write_manifest(path, data)
    loaded = _loads_or_map_error(path)
    assert loaded is None or len(loaded) == N
    shutil.rmtree(path.parent)


@FUZZ
@given(name=st.sampled_from(map_file_names() + [MANIFEST]), flips=st.lists(
    st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=4))
def test_flipped_bytes_in_any_file_are_refused(template: Path, name: str, flips) -> None:
    path = _fresh_copy(template)
    original = (path / name).read_bytes()
    data = bytearray(original)
    for at, value in flips:
        data[at % len(data)] ^= value
    (path / name).write_bytes(bytes(data))
    loaded = _loads_or_map_error(path)
    # flips may cancel out, and a flip inside a manifest string can leave a valid manifest
    assert loaded is None or bytes(data) == original or name == MANIFEST
    shutil.rmtree(path.parent)


@FUZZ
@given(name=st.sampled_from([n for n in map_file_names() if n.endswith(".npy")]),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_damaged_arrays_without_checksums_load_valid_or_are_refused(template: Path, name: str, flips, cut) -> None:
    path = _fresh_copy(template)
    data = bytearray((path / name).read_bytes())
    for at, value in flips:
        data[at % len(data)] ^= value
    if cut is not None:
        del data[cut % len(data):]
    (path / name).write_bytes(bytes(data))
    loaded = _loads_or_map_error(path, verify_checksums=False)
    if loaded is not None:
        loaded.metadata.validate()
        hits = loaded.search(_unit(0)[:4], 5)
        assert ((hits.rows >= 0) & (hits.rows < N)).all() and np.isfinite(hits.scores).all()
    del loaded
    shutil.rmtree(path.parent)


def test_preprocessing_with_zero_std_is_refused_by_the_localizer(tmp_path: Path) -> None:
    import torch

    from dsformer_ros.model.checkpoint import save_checkpoint
    from dsformer_ros.model.loading import load_model

    torch.set_num_threads(1)
    model = load_model(variant="efficientnet_lite0", device="cpu", seed=2)
    sha = save_checkpoint(tmp_path / "model.pt", model)
    preprocessing = to_dict(preprocess_config_for(model.config))
    preprocessing["std"] = [0.0, 0.0, 0.0]
    place_map = _build(0, sha=sha, preprocessing=preprocessing, dim=model.config.descriptor_dim,
                       variant=model.config.variant)
    place_map.save(tmp_path / "map")
    config = LocalizerConfig(checkpoint=str(tmp_path / "model.pt"), map_path=str(tmp_path / "map"), device="cpu",
                             warmup_iterations=0)
    with pytest.raises(LocalizerError, match="preprocessing section is not understood: std: every channel's"):
        Localizer.load(config)


def _edit_column(path: Path, name: str, edit, rehash: bool = True) -> None:
    values = np.load(path / name)
    values = edit(values)
    np.save(path / name, values)
    if rehash:
        _rehash(path, name)


@pytest.mark.parametrize("checksums", ["off", "recomputed"])
@pytest.mark.parametrize(("damage", "match"), [
    ("nan", "descriptors.npy: descriptor row 101 is not finite"),
    ("scaled", "descriptors.npy: descriptors must be L2-normalised; row 0 has norm 7.0000"),
])
def test_descriptors_that_are_not_unit_vectors_are_refused_whatever_the_checksums(
        map_dir: Path, checksums: str, damage: str, match: str) -> None:
    """Row 101 is not among the rows the index cross-check samples; a map scaled by 7 passes any cosine check."""

    def edit(values: np.ndarray) -> np.ndarray:
        if damage == "nan":
            values[101, 5] = np.nan
            return values
        return values * 7.0

    _edit_column(map_dir, "descriptors.npy", edit, rehash=checksums == "recomputed")
    with pytest.raises(MapError, match=match):
        PlaceMap.load(map_dir, verify_checksums=checksums == "recomputed")


@pytest.mark.parametrize(("name", "dtype"), [("place_id", np.int32), ("place_id", np.uint64), ("place_id", np.float64),
                                             ("stamp_ns", np.float64), ("stamp_ns", np.uint32),
                                             ("heading_deg", np.float32), ("source", np.bytes_)])
def test_mistyped_metadata_columns_are_refused_naming_the_file(map_dir: Path, name: str, dtype) -> None:
    _edit_column(map_dir, f"places.{name}.npy", lambda values: values.astype(dtype), rehash=False)
    with pytest.raises(MapError, match=f"places.{name}.npy holds .*; a map stores {name} as"):
        PlaceMap.load(map_dir, verify_checksums=False)


@pytest.mark.parametrize(("name", "row", "value", "match"), [
    ("place_id", 50, 7, "places.place_id.npy: place_id values must be unique; 7 appears more than once \\(rows 7 "),
    ("heading_deg", 9, 1000.0, "places.heading_deg.npy: metadata heading_deg must be NaN or within \\+-360 degrees; "
                               "row 9"),
    ("stamp_ns", 11, 9 * 10**18, "places.stamp_ns.npy: metadata stamp_ns must be >= 0 and before the year 2200; row 11"),
])
def test_metadata_values_out_of_range_name_file_and_row(map_dir: Path, name: str, row: int, value, match: str) -> None:
    def edit(values: np.ndarray) -> np.ndarray:
        values[row] = value
        return values

    _edit_column(map_dir, f"places.{name}.npy", edit, rehash=False)
    with pytest.raises(MapError, match=match):
        PlaceMap.load(map_dir, verify_checksums=False)


@pytest.mark.parametrize(("preprocessing", "match"), [
    ({"resize": "square", "size": [4000, 4000]}, "preprocessing size 4000x4000 is not a model input"),
    ({"resize": "short_side", "short_side": 1}, "preprocessing short_side 1 is not a model input"),
    ({"resize": "square", "size": [224, 0]}, "preprocessing size 224x0 is not a model input"),
])
def test_preprocessing_sizes_no_model_can_run_are_refused_at_load(map_dir: Path, preprocessing: dict,
                                                                   match: str) -> None:
    data = _manifest(map_dir)
    data["preprocessing"] = preprocessing
    _write_manifest(map_dir, data)
    with pytest.raises(MapError, match=match):
        PlaceMap.load(map_dir)


@pytest.fixture(scope="module")
def model_and_map(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its 6-place map (node_assets) and a 3000-place map of the same model (random descriptors)."""
    from node_assets import make_checkpoint_and_map

    out = tmp_path_factory.mktemp("model_and_map")
    assets = make_checkpoint_and_map(out)
    small = PlaceMap.load(assets["map_path"])
    n = 3000
    big = PlaceMap.build(_unit(3, n=n, dim=small.dim), _metadata(n), model_variant=small.manifest.model_variant,
                         checkpoint_sha256=small.manifest.checkpoint_sha256, preprocessing={}, build_info={})
    big.save(out / "big")
    return {**assets, "big": out / "big"}


def test_non_utf8_manifest_is_reported_as_such_by_the_localizer(model_and_map: dict[str, Path],
                                                                tmp_path: Path) -> None:
    shutil.copytree(model_and_map["map_path"], tmp_path / "map")
    (tmp_path / "map" / MANIFEST).write_bytes(b'{"format_version": 1, "model_variant": "\xff\xfe"}')
    config = LocalizerConfig(checkpoint=str(model_and_map["checkpoint"]), map_path=str(tmp_path / "map"),
                             device="cpu", warmup_iterations=0, mode="single_frame")
    with pytest.raises(LocalizerError) as info:
        Localizer.load(config)
    assert "is not UTF-8 text: byte 40" in str(info.value) and "does not fit" not in str(info.value)


_ANSWER_WHILE_COPIED = """
import sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, sys.argv[3])
from node_assets import generated_images
from dsformer_ros.localization.localizer import Localizer, LocalizerConfig

torch.set_num_threads(1)
config = LocalizerConfig(checkpoint=sys.argv[1], map_path=sys.argv[2], device="cpu", warmup_iterations=0,
                         mode="single_frame")
localizer = Localizer.load(config)
images = generated_images(3, seed=5)
first = [localizer.localize(image).candidates.place_id.tolist() for image in images]
print("ready", flush=True)
stop, answers, changed = Path(sys.argv[2] + ".stop"), 0, 0
while not stop.exists():
    for image, expected in zip(images, first):
        changed += localizer.localize(image).candidates.place_id.tolist() != expected
        answers += 1
print(f"answers {answers} changed {changed}", flush=True)
"""


def test_a_map_copied_over_a_loaded_one_neither_kills_nor_changes_the_localizer(model_and_map: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    """`cp -r` of a smaller map over the directory a localizer loaded (files truncated and rewritten in place) while
    it answers frames: a memory-mapped map dies of SIGBUS; a loaded map keeps answering as before."""
    target = tmp_path / "map"
    shutil.copytree(model_and_map["big"], target)
    child = subprocess.Popen(
        [sys.executable, "-c", _ANSWER_WHILE_COPIED, str(model_and_map["checkpoint"]), str(target),
         str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert child.stdout.readline() == "ready\n", child.communicate()[1]
        for source in (model_and_map["map_path"], model_and_map["big"], model_and_map["map_path"]):
            subprocess.run(["cp", "-r", f"{source}/.", str(target)], check=True)
            time.sleep(0.5)
        Path(f"{target}.stop").touch()
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, f"the localizer died ({child.returncode}): {err[-2000:]}"
    answers, changed = (int(word) for word in out.split()[1::2])
    assert answers > 0 and changed == 0, out
