"""build-map, eval and replay take `backend`: an exported model builds the same map and scores the same recall."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.utm import utm_to_latlon
from dsformer_ros.inference.export import export_onnx
from dsformer_ros.inference.preprocess import read_image
from dsformer_ros.maps.placemap import PlaceMap
from dsformer_ros.model.checkpoint import save_checkpoint
from dsformer_ros.model.dsformer import preset
from dsformer_ros.model.loading import load_model
from training.cli import main as cli_main
from training.io.at_names import AtName, format_at_name
from training.maps.build_map import BuildMapConfig, build_map

pytestmark = pytest.mark.slow  # exports and whole tools on ONNX Runtime (make test-fast leaves them out)

pytest.importorskip("onnxruntime")
E0, N0 = 500_000.0, 5_000_000.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """small.pt (Lite0 at 96x128) and small.onnx exported from it."""
    out = tmp_path_factory.mktemp("models")
    model = load_model(config=dataclasses.replace(preset("efficientnet_lite0"), image_size=(96, 128)), device="cpu")
    save_checkpoint(out / "small.pt", model)
    export_onnx(load_model(out / "small.pt", device="cpu"), out / "small.onnx", exporter="legacy", verify=False)
    return {"pt": out / "small.pt", "onnx": out / "small.onnx"}


def test_build_map_with_onnxruntime_equals_torch(models: dict[str, Path], traversals: Path, tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    for k, path in enumerate(sorted((traversals / "ref").glob("*.jpg"))[:6]):
        lat, lon = utm_to_latlon(E0 + 5 * k, N0, 32, "U")
        name = format_at_name(AtName(E0 + 5 * k, N0, 32, "U", float(lat), float(lon), heading_deg=90.0,
                                     timestamp=str(k * 10**9)))
        cv2.imwrite(str(folder / name), cv2.cvtColor(read_image(path), cv2.COLOR_RGB2BGR))
    maps = {}
    for backend, checkpoint in (("torch", models["pt"]), ("onnxruntime", models["onnx"])):
        build_map(BuildMapConfig(input=str(folder), out=str(tmp_path / backend), device="cpu", batch_size=4,
                                 checkpoint=str(checkpoint), backend=backend))
        maps[backend] = PlaceMap.load(tmp_path / backend)
    assert maps["onnxruntime"].manifest.checkpoint_sha256 == maps["torch"].manifest.checkpoint_sha256
    np.testing.assert_allclose(np.asarray(maps["onnxruntime"].descriptors), np.asarray(maps["torch"].descriptors),
                               atol=1e-5)
    with pytest.raises(ConfigError, match="backend onnxruntime needs the exported .onnx"):
        BuildMapConfig(input=str(folder), out=str(tmp_path / "x"), backend="onnxruntime").validate()


def test_eval_with_onnxruntime_scores_like_torch(models: dict[str, Path], traversals: Path, tmp_path: Path) -> None:
    recall = {}
    for backend, checkpoint in (("torch", models["pt"]), ("onnxruntime", models["onnx"])):
        out = tmp_path / backend
        code = cli_main(["eval", "--dataset-root", str(traversals), "--dataset-format", "folders", "--device",
                         "cpu", "--checkpoint", str(checkpoint), "--backend", backend, "--out", str(out),
                         "--set", "recall_ns=[1,5]", "--set", "figures=false"])
        assert code == 0
        recall[backend] = json.loads((out / "report.json").read_text())["methods"]["dsformer"]["recall"]
    assert recall["onnxruntime"] == recall["torch"]
    assert cli_main(["eval", "--dataset-root", str(traversals), "--checkpoint", str(models["onnx"]), "--backend",
                     "onnxruntime", "--baselines", "--out", str(tmp_path / "bad")]) == 2


def test_replay_hands_the_backend_to_the_localizer_and_the_node(models: dict[str, Path], tmp_path: Path) -> None:
    from training.replay.config import ReplayConfig
    from training.replay.through_node import node_parameters

    cfg = ReplayConfig(bag=str(tmp_path / "bag"), map=str(tmp_path / "map"), checkpoint=str(models["onnx"]),
                       backend="onnxruntime", out=str(tmp_path / "out"))
    loc = cfg.localizer_config()
    assert loc.backend == "onnxruntime" and loc.checkpoint == str(models["onnx"])
    assert node_parameters(cfg, loc, "raw")["backend"] == "onnxruntime"
