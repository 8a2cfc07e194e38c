"""`dsformer-vpr bench`: backends side by side with the GEMM roofline, the reference iRPE, and contended timings."""
from __future__ import annotations

import json

import pytest

from training.bench.backends import BenchConfig, count_gflops, gemm_gflops_per_s, run_bench

pytest.importorskip("onnxruntime")


def test_bench_rows_compare_backends_with_the_roofline_quiet_and_contended():
    cfg = BenchConfig(variants=["efficientnet_lite0"], backends=["torch", "onnxruntime"], devices=["cpu"],
                      image_size=[64, 96], repeats=1, warmup=0, gemm_size=256, exporter="legacy", contended=True)
    rows, rates = run_bench(cfg)
    assert set(rates) == {("cpu", "fp32")} and rates[("cpu", "fp32")] > 0
    assert [(r["backend"], r["precision"]) for r in rows] == [
        ("torch (authors' iRPE)", "fp32"), ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    for row in rows:
        assert row["input"] == "64x96" and row["GFLOPs"] > 0 and row["ms_per_image"] > 0
        assert row["roofline_ms"] == pytest.approx(1000 * row["GFLOPs"] / rates[("cpu", "fp32")], rel=0.03)
        assert row["x_roofline"] == pytest.approx(row["ms_per_image"] / row["roofline_ms"], rel=0.01, abs=0.002)
        assert row["min_cosine_vs_fp32"] > (0.999 if row["precision"] == "int8" else 0.99999)
        assert row["contended_ms"] > 0 and row["contended_x"] > 0
    assert rows[0]["vs_reference"] == 1.0


def test_gemm_rate_and_flop_count_are_what_they_claim():
    import torch

    linear = torch.nn.Linear(128, 64, bias=False)
    assert count_gflops(linear, torch.randn(10, 128)) == pytest.approx(2 * 10 * 128 * 64 / 1e9)
    assert gemm_gflops_per_s(torch.device("cpu"), torch.float32, 128) > 0.01


def test_bench_cli_writes_json(tmp_path):
    from training.cli import main

    out = tmp_path / "bench.json"
    code = main(["bench", "--variants", "efficientnet_lite0", "--backends", "torch", "--devices", "cpu",
                 "--image-size", "64", "64", "--repeats", "1", "--set", "warmup=0", "--no-reference",
                 "--set", "gemm_size=128", "--out", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert [r["backend"] for r in payload["rows"]] == ["torch"] and "cpu/fp32" in payload["gemm_gflops_per_s"]
    assert main(["bench", "--backends", "openvino"]) == 2
