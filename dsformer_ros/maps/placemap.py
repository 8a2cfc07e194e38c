"""The on-disk reference map: descriptors, per-place metadata, a FAISS index and a manifest, in one directory.

Layout of a map directory (written atomically with `dsformer_ros.common.atomic.atomic_directory`):
- `manifest.json`: format version, model variant and checkpoint SHA-256, dimension, dtype, preprocessing, build
  info, count, index config and the SHA-256 of every other file;
- `descriptors.npy`: (N, D) float32 or float16, L2-normalised;
- `places.<column>.npy`: one array per metadata column (strings as numpy unicode, no pickle);
- `index.faiss`: the FAISS index over the descriptors with ids = row numbers.

Loading reads every file into memory once (hashed from those very bytes) and never memory-maps it: an operator's
`cp` of another map over a running node's map directory rewrites the files in place, which kills a process that
maps them (SIGBUS) or changes its answers; a loaded map keeps answering from what it read. What the values mean is
checked by `dsformer_ros.maps.validate` at every load.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import logging
import math
import re
from pathlib import Path
from typing import Iterable, Iterator

import faiss
import numpy as np

from dsformer_ros.common.atomic import OutputPathError, atomic_directory, atomic_write_text, recover_interrupted_save
from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.common.datafiles import file_sha256
from dsformer_ros.maps.map_index import IndexConfig, apply_search_params, build_index, index_kind_matches
from dsformer_ros.maps.validate import (
    CHUNK,
    DESCRIPTORS,
    MapError,
    check_column_dtype,
    check_descriptors,
    check_metadata,
    check_preprocessing,
    column_file,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.faiss"
_DTYPES = ("float32", "float16")
_MAX_MANIFEST_BYTES = 16 << 20
_HEX = set("0123456789abcdef")
_CROSS_CHECK_ROWS = 32
_CROSS_CHECK_MIN_COSINE = 0.98  # sq8 codes reconstruct to > 0.999 of their vector; a foreign vector is far below


@dataclasses.dataclass
class PlaceMetadata:
    """Per-place metadata as column arrays of length N (row i describes descriptor row i)."""

    place_id: np.ndarray
    easting: np.ndarray
    northing: np.ndarray
    zone_number: np.ndarray
    zone_letter: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    heading_deg: np.ndarray
    stamp_ns: np.ndarray
    source: np.ndarray

    KINDS = {
        "place_id": "int64",
        "easting": "float64",
        "northing": "float64",
        "zone_number": "int64",
        "zone_letter": "str",
        "lat": "float64",
        "lon": "float64",
        "heading_deg": "float64",
        "stamp_ns": "int64",
        "source": "str",
    }

    def __post_init__(self) -> None:
        for name, kind in self.KINDS.items():
            value = np.asarray(getattr(self, name))
            if kind == "str":
                if value.dtype.kind not in "UO" and value.size:
                    raise MapError(f"metadata column {name} must hold strings, got dtype {value.dtype}")
                value = value.astype(np.str_) if value.dtype.kind == "O" or not value.size else value
            else:
                try:
                    value = value.astype(kind, casting="same_kind" if kind == "float64" else "safe", copy=False)
                except TypeError:
                    raise MapError(f"metadata column {name} must be {kind}, got dtype {value.dtype}") from None
            if value.ndim != 1:
                raise MapError(f"metadata column {name} must be 1-D, got shape {value.shape}")
            setattr(self, name, value)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """Column names in storage order."""
        return tuple(cls.KINDS)

    def __len__(self) -> int:
        return int(self.place_id.shape[0])

    def take(self, rows: np.ndarray) -> "PlaceMetadata":
        """The metadata of `rows` (row indices), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        return PlaceMetadata(**{name: np.asarray(getattr(self, name))[rows] for name in self.columns()})

    @staticmethod
    def concatenate(parts: list["PlaceMetadata"]) -> "PlaceMetadata":
        """All rows of `parts`, one after the other."""
        if not parts:
            raise MapError("cannot concatenate an empty list of metadata")
        return PlaceMetadata(
            **{name: np.concatenate([np.asarray(getattr(p, name)) for p in parts]) for name in PlaceMetadata.columns()}
        )

    def validate(self) -> None:
        """Raise MapError unless the columns hold usable values (see `dsformer_ros.maps.validate.check_metadata`)."""
        check_metadata(self)


@dataclasses.dataclass
class MapManifest:
    """What a map holds and how it was made; `files` maps each file name to its SHA-256."""

    format_version: int
    model_variant: str
    checkpoint_sha256: str
    descriptor_dim: int
    descriptor_dtype: str
    preprocessing: dict
    build: dict
    count: int
    index: dict
    files: dict
    # The fitted measurement model of the sequence localizer (dsformer_ros.maps.similarity); maps built before it
    # existed lack it and still load (the localizer then fits it at load).
    similarity: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def read(cls, path: Path) -> "MapManifest":
        """Read and parse a manifest file; every decoding problem is a MapError naming the file."""
        size = path.stat().st_size
        if size > _MAX_MANIFEST_BYTES:
            raise MapError(f"{path} is {size} bytes; a manifest is at most {_MAX_MANIFEST_BYTES}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MapError(f"{path} is not UTF-8 text: byte {exc.start} cannot be decoded") from None
        return cls.from_json(text, str(path))

    @classmethod
    def from_json(cls, text: str, source: str = MANIFEST) -> "MapManifest":
        """Parse manifest JSON, raising MapError on a missing or mistyped field or an unsupported version."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MapError(f"{source} is not valid JSON: {exc}") from None
        except RecursionError:
            raise MapError(f"{source} is nested too deeply to be a map manifest") from None
        if not isinstance(data, dict):
            raise MapError(f"{MANIFEST} must hold a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MapError(f"unknown map format version {version!r} (this code reads version {FORMAT_VERSION})")
        if version > FORMAT_VERSION:
            raise MapError(
                f"map format version {version} is newer than this code supports ({FORMAT_VERSION}); update dsformer_ros"
            )
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING}
        expected = {"int": int, "str": str, "dict": dict}
        for name, type_name in types.items():
            if name not in data and name in optional:
                continue
            if name not in data:
                raise MapError(f"{MANIFEST} lacks the field {name!r}")
            if not isinstance(data[name], expected[type_name]) or isinstance(data[name], bool):
                raise MapError(f"{MANIFEST} field {name!r} must be {type_name}, got {data[name]!r}")
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise MapError(f"{MANIFEST} has unknown field(s) {unknown}")
        allowed = set(map_file_names())
        for name, digest in data["files"].items():
            if name not in allowed:
                raise MapError(
                    f"{MANIFEST} lists the file {name!r}, which is not a map file; a map may only name its own "
                    f"files ({', '.join(sorted(allowed))})"
                )
            if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
                raise MapError(f"{MANIFEST} checksum of {name} must be 64 lower-case hex digits, got {digest!r}")
        return cls(**{name: data[name] for name in types if name in data})

    def index_config(self) -> IndexConfig:
        """The index config recorded in the manifest."""
        try:
            return from_dict(IndexConfig, self.index)
        except ConfigError as exc:
            raise MapError(f"{MANIFEST} index section is invalid: {exc}") from None


@dataclasses.dataclass
class SearchResult:
    """Top-k hits of a batch: row indices (-1 when fewer than k), place ids (-1 there), scores (-inf there)."""

    rows: np.ndarray
    place_ids: np.ndarray
    scores: np.ndarray
    _metadata: PlaceMetadata = dataclasses.field(repr=False, compare=False)

    def metadata(self, q: int) -> PlaceMetadata:
        """Metadata of query `q`'s hits in rank order (missing hits left out)."""
        rows = self.rows[q]
        return self._metadata.take(rows[rows >= 0])


def map_file_names() -> list[str]:
    """The files of a map directory besides the manifest: descriptors, index and one file per metadata column."""
    return [DESCRIPTORS, INDEX] + [f"places.{name}.npy" for name in PlaceMetadata.columns()]


def _as_index_vectors(descriptors: np.ndarray) -> np.ndarray:
    """float32 copy of descriptors for faiss, chunk by chunk (float16 maps never convert as a whole)."""
    out = np.empty(descriptors.shape, dtype=np.float32)
    for start in range(0, descriptors.shape[0], CHUNK):
        out[start : start + CHUNK] = descriptors[start : start + CHUNK]
    return out


class PlaceMap:
    """A reference map: descriptors (N, D), metadata, manifest and FAISS index, searchable by descriptor."""

    def __init__(
        self, descriptors: np.ndarray, metadata: PlaceMetadata, manifest: MapManifest, index: faiss.Index
    ) -> None:
        self.descriptors = descriptors
        self.metadata = metadata
        self.manifest = manifest
        self.index = index
        self._spacing: float | None = None

    @classmethod
    def build(
        cls,
        descriptors: np.ndarray,
        metadata: PlaceMetadata,
        *,
        model_variant: str,
        checkpoint_sha256: str,
        preprocessing: dict,
        build_info: dict,
        index: IndexConfig | None = None,
        dtype: str = "float32",
    ) -> "PlaceMap":
        """Validate descriptors and metadata and build the index (in memory; call `save` to write it)."""
        if dtype not in _DTYPES:
            raise MapError(f"descriptor dtype must be one of {_DTYPES}, got {dtype!r}")
        descriptors = np.asarray(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] == 0 or descriptors.dtype.kind != "f":
            raise MapError(f"descriptors must be a 2-D float array (N, D), got {descriptors.dtype} {descriptors.shape}")
        if descriptors.shape[0] == 0:
            raise MapError("a map needs at least one place")
        if descriptors.shape[0] != len(metadata):
            raise MapError(f"{descriptors.shape[0]} descriptors but {len(metadata)} metadata rows")
        metadata.validate()
        check_descriptors(descriptors)
        if not isinstance(model_variant, str) or not model_variant:
            raise MapError("model_variant must be a non-empty string")
        if not isinstance(checkpoint_sha256, str) or len(checkpoint_sha256) != 64:
            raise MapError(f"checkpoint_sha256 must be a 64-character hex string, got {checkpoint_sha256!r}")
        for name, value in (("preprocessing", preprocessing), ("build_info", build_info)):
            try:
                json.dumps(value)
            except (TypeError, ValueError) as exc:
                raise MapError(f"{name} must be JSON-serialisable: {exc}") from None
        check_preprocessing(json.loads(json.dumps(preprocessing)))
        config = index or IndexConfig()
        try:
            config.validate()
        except ConfigError as exc:
            raise MapError(str(exc)) from None
        stored = descriptors.astype(dtype, copy=False)
        config_dict = to_dict(config)
        if config.kind == "ivf":
            config_dict["ivf_nlist"] = config.resolved_nlist(stored.shape[0])
        faiss_index = build_index(_as_index_vectors(stored), from_dict(IndexConfig, config_dict))
        build = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **build_info}
        manifest = MapManifest(
            format_version=FORMAT_VERSION,
            model_variant=model_variant,
            checkpoint_sha256=checkpoint_sha256.lower(),
            descriptor_dim=int(stored.shape[1]),
            descriptor_dtype=dtype,
            preprocessing=dict(preprocessing),
            build=build,
            count=int(stored.shape[0]),
            index=config_dict,
            files={},
        )
        return cls(stored, metadata, manifest, faiss_index)

    def write_manifest(self, path: str | Path) -> None:
        """Rewrite only manifest.json of the saved map at `path` (atomically), e.g. after adding a similarity fit."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise MapError(f"map {path} has no {MANIFEST}")
        atomic_write_text(path / MANIFEST, self.manifest.to_json())

    def save(self, path: str | Path) -> None:
        """Write the map directory atomically: a failure part-way leaves any previous map at `path` untouched."""
        path = Path(path)
        with atomic_directory(path) as tmp:
            files: dict[str, str] = {}
            for name in PlaceMetadata.columns():
                values = np.asarray(getattr(self.metadata, name))
                files[column_file(name)] = _write_npy(tmp / column_file(name), values.dtype, values.shape, [values])
            try:
                faiss.write_index(self.index, str(tmp / INDEX))
            except RuntimeError as exc:  # FAISS reports failed writes (disk full) as RuntimeError
                raise MapError(f"cannot write map {path}: writing {INDEX} failed: {_faiss_reason(exc)}") from None
            files[INDEX] = file_sha256(tmp / INDEX)
            dtype = np.dtype(self.manifest.descriptor_dtype)
            files[DESCRIPTORS] = _write_npy(tmp / DESCRIPTORS, dtype, self.descriptors.shape, self._checked_chunks())
            self.manifest.files = dict(sorted(files.items()))
            (tmp / MANIFEST).write_text(self.manifest.to_json())
        log.info("saved map of %d places to %s", len(self), path)

    def _checked_chunks(self) -> Iterator[np.ndarray]:
        """The descriptors chunk by chunk, each checked (finite, unit norm) on its way to the file."""
        for start in range(0, self.descriptors.shape[0], CHUNK):
            chunk = np.asarray(self.descriptors[start : start + CHUNK])
            check_descriptors(chunk, start)
            yield chunk

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        expect_variant: str | None = None,
        expect_checkpoint_sha256: str | None = None,
        expect_dim: int | None = None,
        verify_checksums: bool = True,
    ) -> "PlaceMap":
        """Load and validate a map directory; raise MapError saying what is wrong (version, model, files, values).

        Every file is read into memory once (never memory-mapped, see the module's docstring); `verify_checksums`
        hashes those bytes against the manifest, and with it off only the hashing is skipped: the values are
        checked either way (`dsformer_ros.maps.validate`). A map a save left missing half-way (the kept old copy on
        filesystems without an atomic directory exchange) is put back first, as the next save would.
        """
        path = Path(path)
        _recover(path)
        if not path.is_dir():
            raise MapError(f"map {path} does not exist or is not a directory")
        if not (path / MANIFEST).is_file():
            raise MapError(f"map {path} has no {MANIFEST}")
        manifest = MapManifest.read(path / MANIFEST)
        _check_expectations(manifest, expect_variant, expect_checkpoint_sha256, expect_dim)
        if manifest.descriptor_dtype not in _DTYPES:
            raise MapError(f"{MANIFEST} descriptor_dtype {manifest.descriptor_dtype!r} is not one of {_DTYPES}")
        check_preprocessing(manifest.preprocessing)
        for name in map_file_names():
            if name not in manifest.files:
                raise MapError(f"{MANIFEST} lists no checksum for {name}")
            if (path / name).is_symlink():
                raise MapError(f"map {path}: {name} is a symbolic link; a map may only hold its own files")
            if not (path / name).is_file():
                raise MapError(f"map {path} is missing file {name}")
        contents = {name: _read_file(path / name, manifest.files[name] if verify_checksums else None)
                    for name in map_file_names()}
        descriptors = _npy_array(DESCRIPTORS, contents.pop(DESCRIPTORS))
        if descriptors.ndim != 2 or descriptors.dtype != np.dtype(manifest.descriptor_dtype):
            raise MapError(
                f"{DESCRIPTORS} holds {descriptors.dtype} {descriptors.shape}, "
                f"manifest says {manifest.descriptor_dtype} (N, {manifest.descriptor_dim})"
            )
        if descriptors.shape[1] != manifest.descriptor_dim:
            raise MapError(
                f"descriptor dimension mismatch: {DESCRIPTORS} has {descriptors.shape[1]}, "
                f"manifest says {manifest.descriptor_dim}"
            )
        if descriptors.shape[0] != manifest.count:
            raise MapError(f"count mismatch: {DESCRIPTORS} has {descriptors.shape[0]} rows, manifest says {manifest.count}")
        check_descriptors(descriptors)
        columns = {}
        for name, kind in PlaceMetadata.KINDS.items():
            columns[name] = _npy_array(column_file(name), contents.pop(column_file(name)))
            check_column_dtype(name, columns[name], kind)
        metadata = PlaceMetadata(**columns)
        if len(metadata) != manifest.count:
            raise MapError(f"count mismatch: metadata has {len(metadata)} rows, manifest says {manifest.count}")
        metadata.validate()
        config = manifest.index_config()
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(io.BytesIO(contents.pop(INDEX)).read))
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise MapError(f"{INDEX} is corrupt or unreadable: {first_line}") from None
        if index.d != manifest.descriptor_dim:
            raise MapError(f"descriptor dimension mismatch: {INDEX} has {index.d}, manifest says {manifest.descriptor_dim}")
        if index.ntotal != manifest.count:
            raise MapError(f"count mismatch: {INDEX} holds {index.ntotal} vectors, manifest says {manifest.count}")
        if not index_kind_matches(index, config):
            raise MapError(f"{INDEX} is not a {config.kind}/{config.storage} index as the manifest says")
        apply_search_params(index, config)
        place_map = cls(descriptors, metadata, manifest, index)
        place_map.cross_check_index()
        log.info("loaded map of %d places (%s, %s index) from %s", manifest.count, manifest.model_variant, config.kind, path)
        return place_map

    def cross_check_index(self, rows: int = _CROSS_CHECK_ROWS) -> None:
        """Raise MapError unless the index holds these descriptors: a sample of rows, spread over the map, must come
        back from the index (reconstructed, or for IVF found by search) as the same vectors, with row ids in range."""
        count = len(self)
        sample = np.unique(np.linspace(0, count - 1, min(count, rows)).round().astype(np.int64))
        expected = _as_index_vectors(np.asarray(self.descriptors[sample]))
        if self.manifest.index_config().kind == "ivf":
            _check_ivf_ids(self.index, count)
            _, found = self.index.search(expected, 1)
            found = found[:, 0]
            if (found < 0).any():
                raise MapError(f"{INDEX} does not find row {int(sample[found < 0][0])} of {DESCRIPTORS}")
            got = _as_index_vectors(np.asarray(self.descriptors[found]))
        else:
            got = np.stack([self.index.reconstruct(int(r)) for r in sample])
        cosine = np.einsum("ij,ij->i", got, expected)
        bad = ~(cosine >= _CROSS_CHECK_MIN_COSINE)
        if bad.any():
            row = int(sample[np.flatnonzero(bad)[0]])
            raise MapError(
                f"{INDEX} does not hold the vectors of {DESCRIPTORS}: row {row} has cosine similarity "
                f"{cosine[np.flatnonzero(bad)[0]]:.3f} to its index vector (an index of another map?)"
            )

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k places for each query descriptor (queries (Q, D) float32, L2-normalised), best first."""
        queries = np.asarray(queries)
        if queries.ndim == 1:
            raise MapError(f"queries must be 2-D (Q, {self.dim}); wrap a single descriptor as queries[None]")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MapError(f"queries must have shape (Q, {self.dim}), got {queries.shape}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise MapError(f"k must be a positive integer, got {k!r}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not np.isfinite(queries).all():
            raise MapError("queries must be finite (no NaN or inf)")
        scores, rows = self.index.search(queries, int(k))
        rows = rows.astype(np.int64, copy=False)
        outside = (rows < -1) | (rows >= len(self))
        if outside.any():
            raise MapError(
                f"{INDEX} returned row {int(rows[outside][0])} for a map of {len(self)} places (corrupt index)"
            )
        missing = rows < 0
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        place_ids = np.where(missing, -1, np.asarray(self.metadata.place_id)[np.where(missing, 0, rows)])
        return SearchResult(rows=rows, place_ids=place_ids.astype(np.int64), scores=scores, _metadata=self.metadata)

    def __len__(self) -> int:
        return int(self.manifest.count)

    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        return int(self.manifest.descriptor_dim)

    def keyframe_spacing_m(self) -> float:
        """Median distance (m) from each place to its nearest other place; a floor for the node's covariance."""
        if self._spacing is None:
            if len(self) < 2:
                raise MapError("keyframe spacing needs at least two places")
            from scipy.spatial import cKDTree

            xy = np.column_stack([np.asarray(self.metadata.easting), np.asarray(self.metadata.northing)])
            distances, _ = cKDTree(xy).query(xy, k=2)
            self._spacing = float(np.median(distances[:, 1]))
        return self._spacing


def _faiss_reason(exc: RuntimeError) -> str:
    """The system's reason at the end of a FAISS I/O error ('... (No space left on device)'), else its whole text."""
    text = " ".join(str(exc).split())
    match = re.search(r"\(([^()]+)\)$", text)
    return match.group(1) if match else text


def _check_ivf_ids(index: faiss.Index, count: int) -> None:
    """Raise MapError unless every id in the IVF lists is a row of the map (0..count-1)."""
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size)
        if ids.min() < 0 or ids.max() >= count:
            bad = int(ids[(ids < 0) | (ids >= count)][0])
            raise MapError(f"{INDEX} holds row id {bad} in list {list_no}, outside the map's {count} places")


class MapMismatchError(MapError):
    """A sound map built with another model variant, checkpoint or descriptor dimension than the caller runs."""


def _check_expectations(
    manifest: MapManifest, variant: str | None, checkpoint: str | None, dim: int | None
) -> None:
    """Raise MapError when the map was built with another model or dimension than the caller runs."""
    if variant is not None and manifest.model_variant != variant:
        raise MapMismatchError(f"model variant mismatch: map was built with {manifest.model_variant!r}, expected {variant!r}")
    if checkpoint is not None and manifest.checkpoint_sha256 != checkpoint.lower():
        raise MapMismatchError(
            f"checkpoint mismatch: map was built with checkpoint sha256 {manifest.checkpoint_sha256}, "
            f"expected {checkpoint.lower()}"
        )
    if dim is not None and manifest.descriptor_dim != dim:
        raise MapMismatchError(f"descriptor dimension mismatch: map has {manifest.descriptor_dim}, expected {dim}")


def _write_npy(path: Path, dtype: np.dtype, shape: tuple[int, ...], chunks: Iterable[np.ndarray]) -> str:
    """Write a .npy file from C-ordered chunks with plain writes and return its SHA-256. A full disk or file-size
    limit is an OSError counting the bytes of the file that were written (numpy's own writer counts array items
    instead, and a memory-mapped file dies of SIGBUS)."""
    header = io.BytesIO()
    descr = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(header, descr)
    total = header.tell() + math.prod(shape) * dtype.itemsize
    digest = hashlib.sha256()
    written = 0
    blocks = itertools.chain([header.getvalue()], (np.ascontiguousarray(c, dtype=dtype).reshape(-1).view(np.uint8)
                                                   for c in chunks))
    with open(path, "wb", buffering=0) as fh:
        for block in blocks:
            view = memoryview(block)
            digest.update(view)
            while view:
                try:
                    count = fh.write(view)
                except OSError as exc:
                    reason = f"{exc.strerror} after {written} of the {total} bytes of {path.name}"
                    raise OSError(exc.errno, reason) from None
                written += count
                view = view[count:]
    return digest.hexdigest()


def _recover(path: Path) -> None:
    """Put back the old copy of a map that a save interrupted between its two renames left missing."""
    try:
        recover_interrupted_save(path)
    except OutputPathError as exc:
        raise MapError(f"map {path} is missing after an interrupted save and cannot be restored: {exc}") from None


def _read_file(path: Path, expected_sha256: str | None) -> bytes:
    """The whole file, checked against its manifest checksum when one is given (hashing the very bytes used)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MapError(f"cannot read {path}: {exc.strerror or exc}") from None
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise MapError(f"checksum mismatch for {path.name}: manifest says {expected_sha256}, file has {actual}")
    return data


def _npy_array(name: str, data: bytes) -> np.ndarray:
    """A read-only array over the bytes of a .npy file, without pickle, after checking the header against the
    size (a damaged header can neither crash the parser nor make numpy allocate more than the file holds)."""
    try:
        with io.BytesIO(data) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
    except Exception as exc:  # numpy raises assorted types (ValueError, SyntaxError, TokenError...) for damaged headers
        raise MapError(f"{name} is corrupt or truncated: bad .npy header ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise MapError(f"{name} holds Python objects; map files hold plain numbers and strings")
    count = math.prod(shape)
    expected = offset + count * dtype.itemsize
    if len(data) != expected:
        raise MapError(
            f"{name} is corrupt or truncated: its header says {dtype} {shape} ({expected} bytes), "
            f"the file has {len(data)}"
        )
    values = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return values.reshape(shape[::-1]).T if fortran else values.reshape(shape)
