"""Hostile and broken checkpoints: wrong-typed config/provenance, meta tensors, zip bombs, NaN or zeroed weights and
random byte damage all end in one CheckpointError naming the file; no NaN descriptor ever leaves the extractor."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsformer_ros.common.config import to_dict
from dsformer_ros.common.datafiles import file_sha256, load_torch_file
from dsformer_ros.inference.extractor import DescriptorError, DescriptorExtractor
from dsformer_ros.model.checkpoint import DIGEST, FORMAT, CheckpointError, read_checkpoint, state_dict_sha256
from dsformer_ros.model.dsformer import preset
from dsformer_ros.model.loading import load_model
from dsformer_ros.model.pretrained import PretrainedWeightsError, init_backbone

FUZZ = settings(max_examples=150, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _weights(fill: float | None = None) -> dict[str, torch.Tensor]:
    """A small state_dict with backbone key names (enough for read_checkpoint to recognise a lite0 checkpoint)."""
    gen = torch.Generator().manual_seed(0)
    state = {
        "backbone.effnet._conv_stem.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "backbone.effnet._bn0.bias": torch.zeros(4),
        "head.weight": torch.randn(8, 4, generator=gen),
    }
    if fill is not None:
        state = {k: torch.full_like(v, fill) for k, v in state.items()}
    return state


def _ours(path: Path, **changes) -> Path:
    payload = {"format": FORMAT, "version": 1, "config": to_dict(preset("efficientnet_lite0")),
               "state_dict": _weights(), "provenance": {"run": "test"}}
    payload.update(changes)
    torch.save(payload, path)
    return path


def test_well_formed_small_checkpoints_read(tmp_path: Path) -> None:
    assert read_checkpoint(_ours(tmp_path / "ours.pt")).provenance == {"run": "test"}
    torch.save(_weights(), tmp_path / "raw.pth")
    assert read_checkpoint(tmp_path / "raw.pth").config.variant == "efficientnet_lite0"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(config=_json.filter(lambda v: v != {}))  # {} means "all defaults"
def test_config_of_any_wrong_type_is_a_checkpoint_error(tmp_path: Path, config) -> None:
    path = _ours(tmp_path / "config.pt", config=config)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}"):
        read_checkpoint(path)


@FUZZ
@given(field=st.sampled_from(sorted(to_dict(preset("efficientnet_lite0")))), value=_json)
def test_config_field_of_any_value_reads_or_is_a_checkpoint_error(tmp_path: Path, field: str, value) -> None:
    config = to_dict(preset("efficientnet_lite0"))
    config[field] = value
    path = _ours(tmp_path / "field.pt", config=config)
    try:
        read_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)


@FUZZ
@given(provenance=_json.filter(lambda v: not isinstance(v, dict)))
def test_provenance_that_is_not_a_mapping_is_a_checkpoint_error(tmp_path: Path, provenance) -> None:
    path = _ours(tmp_path / "provenance.pt", provenance=provenance)
    with pytest.raises(CheckpointError, match="provenance must be a mapping"):
        read_checkpoint(path)


def test_meta_device_weights_are_refused(tmp_path: Path) -> None:
    state = _weights()
    state["head.weight"] = torch.empty(8, 4, device="meta")
    torch.save(state, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="'head.weight' is on the meta device"):
        read_checkpoint(tmp_path / "meta.pth")


@pytest.mark.parametrize("value, match", [(float("nan"), "non-finite"), (float("inf"), "non-finite"),
                                          (0.0, "every weight matrix is all zeros")])
def test_nan_inf_and_zeroed_weights_are_refused_in_both_formats(tmp_path: Path, value: float, match: str) -> None:
    torch.save(_weights(value), tmp_path / "raw.pth")
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(tmp_path / "raw.pth")
    state = _weights()
    state["head.weight"] = torch.full((8, 4), value) if value else state["head.weight"]
    if not value:
        state = _weights(0.0)
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(_ours(tmp_path / "ours.pt", state_dict=state))


def _bomb(path: Path, declared_bytes: int) -> Path:
    """A real torch.save archive, re-zipped with deflate and an extra entry of `declared_bytes` zeros."""
    buffer = io.BytesIO()
    torch.save(_weights(), buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
        prefix = source.infolist()[0].filename.split("/")[0]
        with out.open(f"{prefix}/data/bomb", "w") as fh:
            block = bytes(1 << 20)
            for _ in range(declared_bytes >> 20):
                fh.write(block)
    return path


def test_zip_bomb_is_refused_before_torch_load(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.pth", 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match=r"declares \d+ bytes of content in a \d+-byte file \(a zip bomb\?\)"):
        read_checkpoint(bomb)
    with pytest.raises(PretrainedWeightsError, match="zip bomb"):
        init_backbone(load_model(variant="efficientnet_lite0", device="cpu"), bomb)


def _damaged_copy(good: Path, path: Path, flips: list[tuple[int, int]], cut: int | None = None) -> Path:
    """`good` with bytes XOR-ed at the (offset modulo size, value) pairs of `flips`, cut at `cut` when given."""
    data = bytearray(good.read_bytes())
    for at, value in flips:
        data[at % len(data)] ^= value
    if cut is not None:
        del data[cut % len(data):]
    path.write_bytes(bytes(data))
    return path


_damage = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=8)


@FUZZ
@given(flips=_damage, cut=st.one_of(st.none(), st.integers(0, 1 << 16)), version=st.sampled_from([1, 2]))
def test_damaged_checkpoint_bytes_read_or_are_a_checkpoint_error(tmp_path: Path, flips, cut, version: int) -> None:
    """Version 1 (no digest): what still reads is checked data; version 2: it holds exactly the saved tensors."""
    digest = {DIGEST: state_dict_sha256(_weights())} if version == 2 else {}
    path = _damaged_copy(_ours(tmp_path / "good.pt", version=version, **digest), tmp_path / "damaged.pt", flips, cut)
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        assert f"checkpoint {path}" in str(exc)
        event("refused")
    else:
        event("read")  # damage in padding or in a value: what loads is still checked data
        assert ckpt.sha256 == file_sha256(path)
        assert all(torch.isfinite(t).all() for t in ckpt.state_dict.values() if t.is_floating_point())
        if version == 2:
            assert state_dict_sha256(ckpt.state_dict) == digest[DIGEST]


def test_one_guarded_torch_load_for_every_reader(tmp_path: Path) -> None:
    """Checkpoints, pretrained backbones and training resume states share the bounded, weights-only loader."""
    from training.train.state import ResumeError, load_state

    bomb = _bomb(tmp_path / "state.pt", 64 << 20)
    with pytest.raises(ResumeError, match="resume state .* zip bomb"):
        load_state(bomb)
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(ResumeError, match=f"resume state {tmp_path / 'text.pt'} cannot be read"):
        load_state(tmp_path / "text.pt")

    class Boom(ValueError):
        pass

    with pytest.raises(Boom, match="thing .* cannot be read"):
        load_torch_file(tmp_path / "text.pt", "thing", Boom)


def test_nan_descriptors_never_leave_the_extractor() -> None:
    torch.set_num_threads(1)
    model = load_model(variant="efficientnet_lite0", device="cpu", seed=1)
    extractor = DescriptorExtractor(model, batch_size=2)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.isfinite(extractor.describe([image])).all()
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2).fill_(float("nan"))
    with pytest.raises(DescriptorError, match="NaN, inf or zero"):
        extractor.describe([image, image])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A real checkpoint in our format (an untrained EfficientNet-Lite0 DSFormer at 64 px)."""
    import dataclasses

    from dsformer_ros.model.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    model = load_model(config=dataclasses.replace(preset("efficientnet_lite0"), image_size=(64, 64)), device="cpu")
    path = tmp_path_factory.mktemp("saved") / "model.pt"
    save_checkpoint(path, model)
    return path


def _flip_a_weight_bit(source: Path, out: Path) -> Path:
    """A copy of `source` with the lowest bit of one float of its largest tensor flipped (still finite)."""
    state = read_checkpoint(source).state_dict
    tensor = max(state.values(), key=lambda t: t.numel())
    data = bytearray(source.read_bytes())
    at = data.find(tensor.contiguous().numpy().tobytes()[:256])
    assert at > 0
    data[at + 64] ^= 1
    out.write_bytes(bytes(data))
    return out


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run `dsformer-vpr argv` in-process; it must fail with exit code 2 and one error line, returned."""
    from training.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if f"dsformer-vpr {argv[0]}: error: " in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_flipped_tensor_bytes_are_refused_by_load_describe_and_export(saved: Path, tmp_path: Path, capsys) -> None:
    damaged = _flip_a_weight_bit(saved, tmp_path / "damaged.pt")
    assert torch.load(damaged, weights_only=True)["version"] == 2  # the file itself still reads
    message = f"checkpoint {damaged} is damaged: its tensors do not match the digest they were saved with"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(damaged)
    with pytest.raises(CheckpointError, match=message):
        load_model(damaged, device="cpu")
    image = tmp_path / "image.png"
    import cv2

    cv2.imwrite(str(image), np.zeros((64, 64, 3), dtype=np.uint8))
    assert message in _cli_error(["describe", str(image), "--out", str(tmp_path / "o.npy"), "--device", "cpu",
                                  "--checkpoint", str(damaged)], capsys)
    assert message in _cli_error(["export", "--checkpoint", str(damaged), "--out", str(tmp_path / "m.onnx")], capsys)
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "m.onnx").exists()
    assert read_checkpoint(saved).config.image_size == (64, 64)  # the intact file reads


def test_flipped_tensor_bytes_are_refused_when_training_resumes(saved: Path, tmp_path: Path) -> None:
    from training.train.train import _from_checkpoint

    damaged = _flip_a_weight_bit(saved, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=f"checkpoint {damaged} is damaged"):
        _from_checkpoint(damaged, None)


@pytest.mark.parametrize(("changes", "match"), [
    ({"version": 0}, "has format version 0; this build reads 1..2"),
    ({"version": True}, "has format version True; this build reads 1..2"),
    ({"version": 2}, "lacks the digest of its tensors"),
    ({"state_dict": {**_weights(), "head.weight": torch.randn(8, 4, dtype=torch.complex64)}},
     "weight 'head.weight' is torch.complex64; weights are real-valued tensors"),
])
def test_known_bad_payloads_are_one_checkpoint_error(tmp_path: Path, changes: dict, match: str) -> None:
    path = _ours(tmp_path / "bad.pt", **changes)
    with pytest.raises(CheckpointError, match=f"checkpoint {path}.*{match}"):
        read_checkpoint(path)


def test_version_1_checkpoints_without_a_digest_still_read_and_say_so(tmp_path: Path, caplog) -> None:
    path = _ours(tmp_path / "old.pt")
    with caplog.at_level("WARNING"):
        assert read_checkpoint(path).provenance == {"run": "test"}
    assert f"checkpoint {path} (format version 1) carries no digest of its tensors" in caplog.text



def test_a_damaged_zip_end_record_is_a_checkpoint_error(tmp_path: Path) -> None:
    """zipfile.is_zipfile itself raises for some damage (found by the fuzz test above on a version 2 file): still one CheckpointError."""
    data = bytearray(_ours(tmp_path / "good.pt").read_bytes())
    data[data.rfind(b"PK\x06\x07") + 4] ^= 1  # the zip64 locator's disk number: "spans multiple disks"
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be read"):
        read_checkpoint(path)
