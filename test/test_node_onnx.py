"""The VPR node serving a map with the onnxruntime backend: a real node process over DDS on loopback.

The map is built with the PyTorch model of checkpoint model.pt; the node runs model.onnx exported from that very
checkpoint, whose metadata carries the checkpoint's SHA-256, so the map accepts it. An ONNX model exported from
another checkpoint is refused at configure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("onnxruntime")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from test_node import (  # noqa: E402
    ANSWER_TIMEOUT_S,
    START_TIMEOUT_S,
    NodeProcess,
    RosClient,
    image_msg,
    latest_diag,
    stamped,
    wait_linked,
    write_params,
)

from dsformer_ros.inference.export import export_onnx  # noqa: E402
from dsformer_ros.inference.extractor import DescriptorExtractor  # noqa: E402
from dsformer_ros.inference.preprocess import read_image  # noqa: E402
from dsformer_ros.maps.placemap import PlaceMap, PlaceMetadata  # noqa: E402
from dsformer_ros.model.checkpoint import save_checkpoint  # noqa: E402
from dsformer_ros.model.loading import load_model  # noqa: E402
from dsformer_ros.ros.messages import read_candidates_cloud  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # an export served by the node
NS = "/onnx"
NODE = f"{NS}/vpr_node"
QUERIES = (5, 40, 77)
TOP_K = 3


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, traversals: Path, repo_root: Path) -> dict[str, Any]:
    """model.pt + model.onnx (same weights), other.onnx (other weights), a map of every third ref image."""
    out = tmp_path_factory.mktemp("vpr_node_onnx")
    sha = save_checkpoint(out / "model.pt", load_model(device="cpu", seed=11))
    other_sha = save_checkpoint(out / "other.pt", load_model(device="cpu", seed=12))
    model = load_model(out / "model.pt", device="cpu")
    export_onnx(model, out / "model.onnx", exporter="legacy", verify=False)
    export_onnx(load_model(out / "other.pt", device="cpu"), out / "other.onnx", exporter="legacy", verify=False)
    extractor = DescriptorExtractor(model, batch_size=8)
    refs = sorted((traversals / "ref").glob("*.jpg"))[::3]
    index = np.array([int(p.stem) for p in refs])
    n = len(refs)
    metadata = PlaceMetadata(
        place_id=index, easting=500_000.0 + index, northing=np.full(n, 5_000_000.0), zone_number=np.full(n, 32),
        zone_letter=np.array(["U"] * n), lat=np.full(n, 45.1), lon=np.full(n, 9.0), heading_deg=np.full(n, 90.0),
        stamp_ns=index * 1_000_000_000, source=np.array(["traversals/ref"] * n),
    )
    place_map = PlaceMap.build(extractor.describe_paths(refs), metadata, model_variant=model.config.variant,
                               checkpoint_sha256=sha, preprocessing={}, build_info={"source": "test_node_onnx"})
    place_map.save(out / "map")
    queries = [read_image(traversals / "query" / f"{i:07d}.jpg") for i in QUERIES]
    expected = place_map.search(extractor.describe(queries), TOP_K)
    return {"dir": out, "sha": sha, "other_sha": other_sha, "queries": queries, "expected": expected,
            "repo_root": repo_root}


def _params(assets: dict[str, Any], name: str, onnx_file: str) -> Path:
    return write_params(
        assets["dir"] / f"{name}.yaml", assets["repo_root"], autostart=True, backend="onnxruntime",
        checkpoint=str(assets["dir"] / onnx_file), map_path=str(assets["dir"] / "map"), device="cpu", top_k=TOP_K,
        temporal_window=0, diagnostics_period_s=0.25, warmup_iterations=1,
    )


def test_node_serves_the_map_with_onnxruntime(assets: dict[str, Any]) -> None:
    client = RosClient("vpr_onnx_client")
    client.subscribe(PointCloud2, f"{NODE}/candidates")
    client.subscribe(DiagnosticArray, "/diagnostics")
    node = NodeProcess(_params(assets, "onnx", "model.onnx"), assets["dir"] / "onnx.log", "-r", f"__ns:={NS}")
    try:
        publisher = client.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        wait_linked(client, node, {"input_publishers": publisher}, NODE)
        for i, rgb in enumerate(assets["queries"]):
            sec = 100 + i
            publisher.publish(image_msg(rgb, sec))
            _, cloud = client.wait_for(lambda: next(iter(stamped(client.messages(f"{NODE}/candidates"), sec)), None),
                                       ANSWER_TIMEOUT_S, f"candidates for stamp {sec}", node)
            points = read_candidates_cloud(cloud)
            np.testing.assert_allclose(points["score"], assets["expected"].scores[i], atol=1e-4)
            if points["place_id"][0] != assets["expected"].place_ids[i][0]:  # a near-tie may flip
                assert abs(points["score"][0] - points["score"][1]) < 1e-4
        diag = client.wait_for(lambda: latest_diag(client, NODE), ANSWER_TIMEOUT_S, "diagnostics", node)
        assert diag["backend"] == "onnxruntime" and diag["device"] == "cpu"
    finally:
        code = node.stop()
        client.close()
    assert code == 0, node.log()
    assert "ONNX Runtime" in node.log()


def test_an_exported_model_of_another_checkpoint_is_refused_at_configure(assets: dict[str, Any]) -> None:
    node = NodeProcess(_params(assets, "other", "other.onnx"), assets["dir"] / "other.log")
    node.proc.wait(START_TIMEOUT_S)
    node.stop()
    log = node.log()
    assert node.proc.returncode == 1, log
    assert "checkpoint mismatch" in log and assets["sha"] in log and assets["other_sha"] in log, log
