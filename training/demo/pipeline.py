"""`dsformer-vpr demo` (`make demo`): the whole pipeline on synthetic drives, end to end, on a CPU.

1. synth: training drives of a procedural town ('@' folders, several conditions), a mapping drive (day, bag) and a
   query drive on the same route (dusk, the other lane, drifting wheel odometry, bag);
2. train: EfficientNet-Lite0 DSFormer, briefly, with the real training code (training/configs/lite0_cpu.yaml
   pointed at the '@' folders);
3. build-map: from the mapping bag with the trained model, its untrained starting point and raw pixels;
4. the query drive, described once per method, through the single-frame and the sequence localizer (offline), then
   through the running ROS 2 node (trained model, sequence localizer);
5. one table, the goals checked, `<out>/report.json` and the figures.
The study on more routes, kidnapped and off-map drives is `dsformer-vpr study`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.config import load_config, to_dict
from dsformer_ros.localization.localizer import Localizer
from dsformer_ros.model.checkpoint import read_checkpoint, save_checkpoint
from dsformer_ros.model.loading import untrained_model
from training.demo.config import DemoConfig
from training.demo.drives import IMAGE_TOPIC, ODOMETRY_TOPIC, mapping_and_query, training_folders
from training.demo.report import check_goals, demo_table, write_figures
from training.maps.build_map import BuildMapConfig, build_map
from training.replay.config import ReplayConfig
from training.replay.drives import describe_drive, localize_drive
from training.replay.metrics import ReplayResults
from training.replay.replay import FRAMES, REPORT, json_default, open_localizer, replay_metrics, run_replay
from training.train.config import TrainConfig
from training.train.train import train

log = logging.getLogger(__name__)

TRAIN_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lite0_cpu.yaml"
METHODS = ("trained", "untrained", "raw pixels")
LOCALIZERS = ("sequence", "single_frame")


class Steps:
    """Runs named steps with logging and wall-clock timings."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` as step `name`, logging its start and duration."""
        log.info("=== %s", name)
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        log.info("=== %s done in %.1f s", name, self.seconds[name])
        return out


def train_config(cfg: DemoConfig, train_dirs: list[str], out: Path) -> TrainConfig:
    """training/configs/lite0_cpu.yaml pointed at the synthetic '@' folders, with the demo's sizes."""
    base = Path(cfg.train_config) if cfg.train_config else TRAIN_CONFIG
    if not base.is_file():
        raise FileNotFoundError(f"the demo derives its training config from {base}, which does not exist")
    overrides = {
        "data.roots": train_dirs,
        "data.image_size": list(cfg.image_size),
        "optim.epochs": cfg.epochs,
        "optim.iterations_per_epoch": cfg.iterations // cfg.epochs,
        "optim.batch_size": cfg.batch_size,
        "val.dataset": None,
        "device": "cpu",
        "seed": cfg.seed,
        "out": str(out),
        "resume": False,
    }
    return load_config(TrainConfig, base, list(cfg.train_overrides) + [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def train_model(cfg: DemoConfig, train_dirs: list[str], out: Path) -> Path:
    """Train (or reuse) the model; the last checkpoint."""
    checkpoint = out / "last.pt"
    if cfg.reuse and checkpoint.is_file():
        log.info("reusing %s", checkpoint)
        return checkpoint
    if out.exists():
        shutil.rmtree(out)
    train(train_config(cfg, train_dirs, out))
    return checkpoint


def save_untrained(trained: Path, seed: int, path: Path) -> Path:
    """The exact starting point of training (same architecture, seed and ImageNet backbone), as a checkpoint."""
    model = untrained_model(read_checkpoint(trained).config, seed)
    save_checkpoint(path, model.eval(), {"source": "untrained", "seed": seed, "note": "the demo's training start"})
    return path


def make_map(checkpoint: Path | None, mapping_bag: str, out: Path, reuse: bool) -> Path:
    """build-map from the mapping bag with `checkpoint` (None: the raw-pixel baseline's map of the same places)."""
    if reuse and (out / "manifest.json").is_file():
        log.info("reusing %s", out)
        return out
    method = {"method": "raw_pixels"} if checkpoint is None else {"checkpoint": str(checkpoint)}
    build_map(BuildMapConfig(input=mapping_bag, image_topic=IMAGE_TOPIC, device="cpu", out=str(out), restart=True,
                             **method))
    return out


def replay_config(cfg: DemoConfig, query: str, map_dir: Path, checkpoint: Path | None, out: Path,
                  **fields: Any) -> ReplayConfig:
    """The query drive's replay against one method's map (checkpoint None: raw pixels)."""
    method = {"method": "raw_pixels"} if checkpoint is None else {"checkpoint": str(checkpoint)}
    return ReplayConfig(bag=query, map=str(map_dir), image_topic=IMAGE_TOPIC, odometry_topic=ODOMETRY_TOPIC,
                        radius_m=cfg.radius_m, recall_ns=list(cfg.recall_ns), device="cpu", threads=cfg.threads,
                        out=str(out), **method, **fields)


def offline_runs(base: ReplayConfig) -> dict[str, dict[str, Any]]:
    """The query drive described once with `base`'s method, then through each localizer: {localizer: {"metrics",
    "results"}}."""
    first = open_localizer(base)
    drive = describe_drive(base, first)
    runs = {}
    for mode in LOCALIZERS:
        localizer = Localizer(dataclasses.replace(base, localizer=mode).localizer_config(), first.method,
                              first.place_map)
        results = localize_drive(drive, localizer, base.top_k)
        runs[mode] = {"metrics": replay_metrics(results, first.place_map, base.radius_m, base.recall_ns),
                      "results": results}
    return runs


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """The whole demo; returns (and writes) the report, its goals included."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_LOG_DIR", str((out / "ros_logs").resolve()))
    steps = Steps()
    t0 = time.perf_counter()
    train_dirs = steps.run("synth training drives", lambda: training_folders(
        cfg.town, cfg.train_conditions, cfg.route_seed, cfg.train_length_m, cfg.train_fps, out / "train_images",
        cfg.reuse))
    mapping, query = steps.run("synth mapping and query drives",
                               lambda: mapping_and_query(cfg.town, cfg.route_seed, out / "bags", cfg.reuse))
    trained = steps.run("train", lambda: train_model(cfg, train_dirs, out / "train"))
    untrained = steps.run("untrained checkpoint", lambda: save_untrained(trained, cfg.seed, out / "untrained.pt"))
    checkpoints = {"trained": trained, "untrained": untrained, "raw pixels": None}
    maps = {name: steps.run(f"build map ({name})", lambda name=name: make_map(
        checkpoints[name], mapping, out / "maps" / name.replace(" ", "_"), cfg.reuse and name == "trained"))
        for name in METHODS}
    replays = out / "replay"
    # Offline first: after a node-mode replay this process measures slower offline latencies.
    offline = {name: steps.run(f"query drive offline ({name}: described once, both localizers)", lambda name=name:
                               offline_runs(replay_config(cfg, query, maps[name], checkpoints[name], replays)))
               for name in METHODS}
    node = steps.run("query drive through the node (trained)", lambda: run_replay(replay_config(
        cfg, query, maps["trained"], trained, replays / "trained_node", mode="node", name="trained (node)", figures=False)))
    node_results = ReplayResults.load_npz(replays / "trained_node" / FRAMES)
    node_summary = {"metrics": node["metrics"], **node.get("node", {})}
    offline_metrics = {name: {mode: run["metrics"] for mode, run in runs.items()} for name, runs in offline.items()}
    goals = check_goals(cfg.goals, node_summary, offline_metrics)
    report = {
        "tool": "dsformer-vpr demo",
        "table": demo_table(node_summary, offline_metrics, cfg.recall_ns),
        "goals": goals,
        "goals_met": all(g["ok"] for g in goals),
        "node": node_summary,
        "offline": offline_metrics,
        "figures": write_figures(cfg, node, node_results, offline["trained"]["single_frame"]["results"],
                                 offline_metrics, maps["trained"], out),
        "inputs": {"train_dirs": train_dirs, "mapping_bag": mapping, "query_bag": query, "checkpoint": str(trained),
                   "untrained_checkpoint": str(untrained), "maps": {k: str(v) for k, v in maps.items()}},
        "timings_s": {**steps.seconds, "total": round(time.perf_counter() - t0, 2)},
        "config": to_dict(cfg),
    }
    atomic_write_text(out / REPORT, json.dumps(report, indent=2, default=json_default) + "\n")
    return report
