"""`dsformer-vpr bench`: every available backend side by side against this machine's GEMM roofline, quiet and contended.

Per variant (random weights, random non-zero iRPE tables) and batch size the rows are: torch eager with the authors'
iRPE formulation (the reference), torch eager (fast iRPE) per precision, ONNX Runtime fp32 and int8 (dynamic
quantization of the MatMul/Gemm weights) on the CPU and TensorRT on a GPU; int8 rows are judged against the fp32
roofline. Each row has the model's GFLOPs, ms per image, the roofline time (GFLOPs / the rate of a large matmul of
the same dtype timed in this run, on the same threads), `x_roofline` (measured / roofline: 1.0 is the machine's
limit), the speed-up over the reference and the lowest cosine to torch fp32. `--contended` times every row again
while another process keeps 2 threads busy on the same cores (as SLAM and planning do on a robot) and adds the
contended time and its ratio to the quiet one. All ratios come from one run, so they compare like with like.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.cpus import physical_cores
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.backends import BACKENDS, BackendError, DescriptorBackend
from dsformer_ros.inference.backends.torch_backend import TorchBackend
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.model.dsformer import VARIANTS, DSFormer, build_model, preset
from training.reports import markdown_table

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOAD_THREADS = 2
LOAD_SETTLE_S = 1.0
COLUMNS = (
    "variant", "input", "GFLOPs", "device", "backend", "precision", "batch", "ms_per_image", "images_per_s",
    "roofline_ms", "x_roofline", "vs_reference", "min_cosine_vs_fp32", "contended_ms", "contended_x",
)


@dataclass
class BenchConfig:
    """What to time: variants, backends, batch sizes, precisions, devices, repetitions, contention."""

    variants: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    backends: list[str] = field(default_factory=lambda: list(BACKENDS))
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    onnxruntime_precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    tensorrt_precisions: list[str] = field(default_factory=lambda: ["fp16"])
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])
    image_size: list[int] = field(default_factory=list)
    reference: bool = setting(True, "also time torch with the authors' iRPE formulation (the reference row)")
    repeats: int = setting(5, "timed runs per row (the median is reported)", low=1)
    warmup: int = setting(2, "untimed runs before each row", low=0)
    threads: int = setting(0, "CPU threads of torch and ONNX Runtime (0: the physical cores)", low=0)
    contended: bool = setting(False, "time every CPU row again with another 2-thread process busy on the same cores")
    gemm_size: int = setting(2048, "side of the square fp32 matmul that measures the roofline", low=64)
    exporter: str = setting("dynamo", "ONNX exporter for the onnxruntime/tensorrt rows", choices=("dynamo", "legacy"))
    out: str = setting("", "also write the rows as JSON here")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"variants: {v!r} is not one of {', '.join(VARIANTS)}")
        for b in self.backends:
            if b not in BACKENDS:
                raise ConfigError(f"backends: {b!r} is not one of {', '.join(BACKENDS)}")
        for p in [*self.precisions, *self.tensorrt_precisions]:
            if p not in PRECISIONS:
                raise ConfigError(f"precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
        for d in self.devices:
            if d not in ("cpu", "cuda"):
                raise ConfigError(f"devices: {d!r} is not cpu or cuda")
        for p in self.onnxruntime_precisions:
            if p not in ("fp32", "int8"):
                raise ConfigError(f"onnxruntime_precisions: {p!r} is not fp32 or int8")
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"image_size: expected [height, width] > 0, got {self.image_size}")
        check_fields(self)
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes: must be >= 1, got {self.batch_sizes}")


def count_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) counted by torch's flop counter."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (GPU work synchronised)."""

    def once() -> float:
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))


def gemm_gflops_per_s(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Measured rate of a size x size x size matmul: this machine's GEMM roofline for `dtype` on these threads."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    with torch.inference_mode():
        seconds = median_seconds(lambda: a @ b, device, repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9


def busy_load(threads: int, stop: "multiprocessing.synchronize.Event") -> None:
    """Keep `threads` threads busy with matmuls until `stop` is set (the other process of `--contended`)."""
    torch.set_num_threads(threads)
    a = torch.randn(384, 384)
    with torch.inference_mode():
        while not stop.is_set():
            a = torch.tanh(a @ a)


class ContendingProcess:
    """Context manager: another process busy on LOAD_THREADS threads while the block runs."""

    def __enter__(self) -> "ContendingProcess":
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._process = context.Process(target=busy_load, args=(LOAD_THREADS, self._stop), daemon=True)
        self._process.start()
        time.sleep(LOAD_SETTLE_S)
        log.info("contending process %d busy on %d threads", self._process.pid, LOAD_THREADS)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


@dataclass
class Runner:
    """One row's backend: `run(x)` -> descriptors, with what the row reports about it."""

    backend_name: str
    precision: str
    device: torch.device
    run: Callable[[torch.Tensor], torch.Tensor]


def random_model(variant: str, image_size: list[int] | tuple[int, int] = ()) -> DSFormer:
    """The variant with seeded random weights and non-zero iRPE tables (so every term is timed and compared)."""
    config = preset(variant)
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lookup_table_weight" in name:
                torch.nn.init.normal_(param, std=0.02)
    model.checkpoint_sha256 = f"bench-{variant}-{'x'.join(map(str, image_size or config.image_size))}"
    model.provenance = {"source": "dsformer-vpr bench, random weights"}
    return model


def _torch_runner(model: DSFormer, device: torch.device, precision: str, impl: str) -> Runner:
    backend = TorchBackend(model, precision)

    def run(x: torch.Tensor) -> torch.Tensor:
        model.set_irpe_impl(impl)
        return backend.forward(x)

    name = "torch (authors' iRPE)" if impl == "reference" else "torch"
    return Runner(name, precision, device, run)


def _onnx_backend(name: str, model: DSFormer, size: tuple[int, int], cfg: BenchConfig, workdir: Path,
                  device: torch.device, precision: str, batch: int) -> DescriptorBackend:
    from dsformer_ros.inference.export import export_onnx

    quantize = "int8" if precision == "int8" else ""
    path = workdir / f"{model.config.variant}-{size[0]}x{size[1]}{'-' + quantize if quantize else ''}.onnx"
    if not path.is_file():  # a CPU copy: the timed torch rows keep the model where it is
        export_onnx(copy.deepcopy(model).to("cpu"), path, size, exporter=cfg.exporter, quantize=quantize)
    if name == "onnxruntime":
        from dsformer_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=cfg.threads or physical_cores())
    from dsformer_ros.inference.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(path, str(device), precision, opt_batch=batch, max_batch=max(64, batch))


def _runners(model: DSFormer, size: tuple[int, int], device: torch.device, batch: int, cfg: BenchConfig,
             workdir: Path) -> list[Runner]:
    """The rows that can run here; unavailable backends are logged and left out."""
    out = []
    if "torch" in cfg.backends:
        if cfg.reference:
            out.append(_torch_runner(model, device, "fp32", "reference"))
        for precision in cfg.precisions:
            if device.type == "cpu" and precision == "fp16":
                continue
            out.append(_torch_runner(model, device, precision, "fast"))
    wanted = {"onnxruntime": ("cpu", cfg.onnxruntime_precisions), "tensorrt": ("cuda", cfg.tensorrt_precisions)}
    for name, (device_type, precisions) in wanted.items():
        if name not in cfg.backends or device.type != device_type:
            continue
        for precision in precisions:
            try:
                backend = _onnx_backend(name, model, size, cfg, workdir, device, precision, batch)
            except BackendError as exc:
                log.warning("skipping %s: %s", name, exc)
                break
            out.append(Runner(name, precision, device, backend.forward))
    return out


def bench_variant(variant: str, cfg: BenchConfig, rates: dict[tuple[str, str], float], workdir: Path) -> list[dict]:
    """Rows of the benchmark table for one variant."""
    model = random_model(variant, cfg.image_size)
    size = tuple(cfg.image_size) if cfg.image_size else tuple(model.config.image_size)
    gflops = count_gflops(model, torch.randn(1, 3, *size))
    rows = []
    for device_name in cfg.devices:
        if device_name == "cuda" and not torch.cuda.is_available():
            log.info("CUDA not available: no GPU rows")
            continue
        device = torch.device(device_name)
        model.to(device)
        for batch in cfg.batch_sizes:
            x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1)).to(device)
            runners = _runners(model, size, device, batch, cfg, workdir)
            model.set_irpe_impl("fast")
            with torch.inference_mode():
                expected = model(x).float()
            timed = []
            for runner in runners:
                seconds = median_seconds(lambda r=runner: r.run(x), device, cfg.repeats, cfg.warmup)
                cosine = float(torch.nn.functional.cosine_similarity(
                    runner.run(x).float().to(device), expected, dim=1).min())
                timed.append((runner, seconds, cosine))
                log.info("%s %s %s %s batch %d: %.1f ms/image", variant, device_name, runner.backend_name,
                         runner.precision, batch, 1000 * seconds / batch)
            contended = {}
            if cfg.contended and device.type == "cpu":
                with ContendingProcess():
                    for runner, _, _ in timed:
                        contended[id(runner)] = median_seconds(lambda r=runner: r.run(x), device, cfg.repeats,
                                                               cfg.warmup)
            reference = next((s for r, s, _ in timed if r.backend_name.startswith("torch (")), None)
            for runner, seconds, cosine in timed:
                ms = 1000 * seconds / batch
                rate = rates[(device_name, "fp32" if runner.precision == "int8" else runner.precision)]
                roofline_ms = 1000 * gflops / rate
                row = {
                    "variant": variant, "input": f"{size[0]}x{size[1]}", "GFLOPs": round(gflops, 2),
                    "device": device_name, "backend": runner.backend_name, "precision": runner.precision,
                    "batch": batch, "ms_per_image": round(ms, 2), "images_per_s": round(1000 / ms, 1),
                    "roofline_ms": round(roofline_ms, 3), "x_roofline": round(ms / roofline_ms, 3),
                    "min_cosine_vs_fp32": round(cosine, 5),
                }
                if reference is not None:
                    row["vs_reference"] = round(reference / seconds, 2)
                if id(runner) in contended:
                    row["contended_ms"] = round(1000 * contended[id(runner)] / batch, 2)
                    row["contended_x"] = round(contended[id(runner)] / seconds, 2)
                rows.append(row)
        model.to("cpu")
    return rows


def format_table(rows: list[dict], rates: dict[tuple[str, str], float]) -> str:
    """Markdown table of benchmark rows, preceded by the measured GEMM rates."""
    lines = [f"GEMM roofline {device} {precision}: {rate:.1f} GFLOP/s" for (device, precision), rate in rates.items()]
    table = markdown_table(COLUMNS, [[str(row.get(c, "")) for c in COLUMNS] for row in rows])
    return "\n".join([*lines, "", table])


def _rates(cfg: BenchConfig) -> dict[tuple[str, str], float]:
    rates = {}
    for device_name in cfg.devices:
        if device_name == "cuda" and not torch.cuda.is_available():
            continue
        precisions = set(cfg.precisions) | {"fp32"}
        if device_name == "cuda" and "tensorrt" in cfg.backends:
            precisions |= set(cfg.tensorrt_precisions)
        for precision in sorted(precisions):
            if device_name == "cpu" and precision == "fp16":
                continue
            rate = gemm_gflops_per_s(torch.device(device_name), DTYPES[precision], cfg.gemm_size)
            rates[(device_name, precision)] = rate
            log.info("GEMM %s %s: %.1f GFLOP/s", device_name, precision, rate)
    return rates


def run_bench(cfg: BenchConfig) -> tuple[list[dict], dict[tuple[str, str], float]]:
    """Time everything `cfg` asks for; returns the rows and the GEMM rates they are judged against."""
    threads = cfg.threads or physical_cores()
    torch.set_num_threads(threads)
    log.info("torch %s, %d CPU threads (physical cores: %d), CUDA %s", torch.__version__, threads, physical_cores(),
             torch.cuda.is_available())
    if "cuda" in cfg.devices and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rates = _rates(cfg)
    with tempfile.TemporaryDirectory(prefix="dsformer_bench_") as tmp:
        rows = [row for variant in cfg.variants for row in bench_variant(variant, cfg, rates, Path(tmp))]
    return rows, rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `bench`."""
    add_config_flags(parser, BenchConfig, ("variants", "backends", "devices", "batch_sizes", "precisions", "image_size",
                                           "contended", "reference", "repeats", "threads", "out"))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    cfg = config_from_args(BenchConfig, args)
    rows, rates = run_bench(cfg)
    print(format_table(rows, rates))
    if cfg.out:
        payload = {"gemm_gflops_per_s": {f"{d}/{p}": r for (d, p), r in rates.items()}, "rows": rows}
        atomic_write_text(Path(cfg.out), json.dumps(payload, indent=2))
    return 0
