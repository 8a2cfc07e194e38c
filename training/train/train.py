"""`dsformer-vpr train`: EigenPlaces-style training of DSFormer with one LMCL classifier per group, groups rotating
by epoch, validation each epoch, best/last checkpoints, exact resume and DDP under torchrun.

Usage: `dsformer-vpr train --config training/configs/lite0_cpu.yaml [--set optim.epochs=3 ...]`;
several processes: `torchrun --nproc_per_node=2 -m training.cli train --config ...`.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, add_threads_argument, config_from_args, set_threads
from dsformer_ros.common.config import ConfigError, save_config, to_dict
from dsformer_ros.common.datafiles import file_sha256
from dsformer_ros.common.devices import resolve_device
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.inference.precision import autocast
from dsformer_ros.model.checkpoint import (
    load_state_dict_strict,
    read_checkpoint,
    save_checkpoint,
    state_dict_sha256,
)
from dsformer_ros.model.dsformer import DSFormer, build_model, preset
from dsformer_ros.model.loading import untrained_model
from training.eval.datasets import VPRDataset, open_dataset
from training.eval.evaluate import EvalConfig, evaluate_method
from training.train.config import TrainConfig
from training.train.data import GroupDataset, TrainingSet, build_training_set, epoch_plan, shard_plan
from training.train.losses import LMCLHead, lmcl_loss
from training.train.state import capture_rng, check_resume_config, load_state, restore_rng, save_state

log = logging.getLogger(__name__)


@dataclass
class Distributed:
    """This process's place in a torchrun job (world_size 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process validates, saves and logs."""
        return self.rank == 0


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    epochs_done: int
    best_metric: float | None
    history: list[dict[str, Any]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--config FILE`, `--set key=value`, the output folder, resuming and the process's threads."""
    add_config_flags(parser, TrainConfig, ("out", "resume"))
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Train as the configuration says; returns 0 when all epochs are done."""
    cfg = config_from_args(TrainConfig, args)
    set_threads(args)
    result = train(cfg)
    if result.best_metric is not None:
        log.info("done: %d epochs, best R@%d %.4f, checkpoints in %s", result.epochs_done,
                 min(cfg.val.recall_ns), result.best_metric, result.out_dir)
    else:
        log.info("done: %d epochs, checkpoints in %s", result.epochs_done, result.out_dir)
    return 0


def train(cfg: TrainConfig) -> TrainResult:
    """The whole training run (one process of a DDP job when WORLD_SIZE > 1)."""
    cfg.validate()
    dist_info = _init_distributed(cfg)
    try:
        return _train(cfg, dist_info)
    finally:
        if dist_info.world_size > 1:
            dist.destroy_process_group()


def _init_distributed(cfg: TrainConfig) -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if cfg.optim.batch_size % world_size:
        raise ConfigError(f"optim.batch_size: {cfg.optim.batch_size} does not split evenly over {world_size} processes")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = resolve_device(cfg.device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    info = Distributed(dist.get_rank(), dist.get_world_size(), local_rank)
    log.info("DDP process %d of %d (%s)", info.rank, info.world_size, dist.get_backend())
    return info


def _device(cfg: TrainConfig, dist_info: Distributed) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist_info.world_size > 1:
        return torch.device("cuda", dist_info.local_rank)
    if device.type == "cpu" and cfg.precision == "fp16":
        raise ConfigError("precision: fp16 needs a CUDA device (this run is on the CPU); use fp32 or bf16")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Run:
    """Everything one training run carries from epoch to epoch: config, model, optimisers, heads, data, logging."""

    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    dist_info: Distributed
    model: DSFormer
    net: nn.Module  # the model, wrapped in DistributedDataParallel when several processes train
    model_opt: torch.optim.Optimizer
    heads: dict[int, LMCLHead]
    head_opts: dict[int, torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    training_set: TrainingSet
    rotation: list[int]
    writer: Any = None
    start_epoch: int = 0
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _start_run(cfg: TrainConfig, dist_info: Distributed) -> Run:
    """Data, model, heads and optimisers of a fresh run, or of a resumed one restored exactly from last_state.pt."""
    out_dir = Path(cfg.out)
    device = _device(cfg, dist_info)
    _seed_everything(cfg.seed)
    state = None
    if cfg.resume:
        state = load_state(out_dir / "last_state.pt")
        check_resume_config(state["config"], cfg)
    training_set = build_training_set(cfg.data, cache_dir=cfg.data.cache_dir or out_dir / "cache")
    rotation = _group_rotation(cfg, training_set)
    model = _build_model(cfg, out_dir if state is not None else None, state)
    frozen = set(model.frozen_parameter_names())
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    model.to(device)
    heads = _build_heads(cfg, training_set, model.config.descriptor_dim)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info("model %s at %s: %d trainable / %d frozen parameters; groups rotate %s",
             model.config.variant, model.config.image_size, sum(p.numel() for p in trainable),
             sum(p.numel() for n, p in model.named_parameters() if n in frozen), rotation)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.world_size > 1 else model
    run = Run(cfg, out_dir, device, dist_info, model, net, torch.optim.Adam(trainable, lr=cfg.optim.lr_model), heads,
              {g: torch.optim.Adam(h.parameters(), lr=cfg.optim.lr_classifier) for g, h in heads.items()},
              torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"), training_set, rotation)
    if state is not None:
        run.model_opt.load_state_dict(state["model_optimizer"])
        for g, head in heads.items():
            head.load_state_dict(state["classifiers"][g])
            run.head_opts[g].load_state_dict(state["classifier_optimizers"][g])
        run.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        run.start_epoch, run.best, run.history = int(state["epoch"]), state["best_metric"], list(state["history"])
        log.info("resumed after epoch %d from %s", run.start_epoch, out_dir / "last_state.pt")
    run.writer = _writers(cfg, out_dir, dist_info, run.start_epoch)
    return run


def _train(cfg: TrainConfig, dist_info: Distributed) -> TrainResult:
    run = _start_run(cfg, dist_info)
    val_set = open_dataset(cfg.val.dataset) if cfg.val.dataset is not None and dist_info.main else None
    for epoch in range(run.start_epoch, cfg.optim.epochs):
        group = run.rotation[epoch % len(run.rotation)]
        started = time.perf_counter()
        losses = _train_epoch(run, group, epoch)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "group": group, "classes": run.heads[group].num_classes,
            "iterations": cfg.optim.iterations_per_epoch, "loss_mean": float(np.mean(losses)),
            "loss_first": losses[0], "loss_last": losses[-1],
            "seconds": time.perf_counter() - started,
        }
        row["seconds_per_iteration"] = row["seconds"] / cfg.optim.iterations_per_epoch
        if dist_info.main:
            if val_set is not None:
                row.update(_validate(run.model, val_set, cfg, run.out_dir))
                _train_mode(run.model)
            run.history.append(row)
            _save_epoch(run, epoch + 1, row)
            _log_epoch(run.writer, row, run.history, run.out_dir)
        if dist_info.world_size > 1:
            dist.barrier()
    if run.writer is not None:
        run.writer.close()
    return TrainResult(run.out_dir, cfg.optim.epochs, run.best, run.history)


def _group_rotation(cfg: TrainConfig, training_set: TrainingSet) -> list[int]:
    """The groups epochs rotate through: optim.groups, or every group with trainable classes."""
    available = sorted(training_set.groups)
    if not cfg.optim.groups:
        return available
    missing = [g for g in cfg.optim.groups if g not in training_set.groups]
    if missing:
        raise ConfigError(f"optim.groups: group(s) {missing} have no trainable classes (groups with classes: "
                          f"{available})")
    return list(cfg.optim.groups)


def _build_model(cfg: TrainConfig, resume_dir: Path | None, state: dict[str, Any] | None) -> DSFormer:
    """Fresh (pretrained backbone), from model.init_checkpoint, or the last checkpoint of a resumed run."""
    if resume_dir is not None:
        path = resume_dir / "last.pt"
        if not path.is_file() or file_sha256(path) != state["checkpoint_sha256"]:
            raise ConfigError(f"resume: {path} is missing or is not the checkpoint {resume_dir / 'last_state.pt'} "
                              "was saved with (interrupted while saving?)")
        return _from_checkpoint(path, None)
    if cfg.model.init_checkpoint:
        if cfg.model.config:
            raise ConfigError("model.config: the architecture comes from model.init_checkpoint; leave model.config empty")
        return _from_checkpoint(cfg.model.init_checkpoint, cfg.data.image_size)
    base = preset(cfg.model.variant)
    model_cfg = replace(base, **cfg.model.config, image_size=tuple(cfg.data.image_size or base.image_size))
    model_cfg.validate()
    return untrained_model(model_cfg, cfg.seed, cfg.model.backbone_weights or None, require_backbone=True)


def _from_checkpoint(path: str | Path, image_size: tuple[int, int] | None) -> DSFormer:
    ckpt = read_checkpoint(path)
    if image_size is not None and tuple(image_size) != tuple(ckpt.config.image_size):
        raise ConfigError(f"data.image_size: {tuple(image_size)} differs from the checkpoint's "
                          f"{tuple(ckpt.config.image_size)} ({path}); leave it unset to train at the checkpoint's size")
    model = build_model(ckpt.config)
    load_state_dict_strict(model, ckpt.state_dict, source=f"checkpoint {path}")
    return model


def _build_heads(cfg: TrainConfig, training_set: TrainingSet, dim: int) -> dict[int, LMCLHead]:
    """One LMCL classifier per group, seeded per group, kept on the CPU until its group's epoch."""
    heads = {}
    for group, classes in training_set.groups.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 1000 + group)
            heads[group] = LMCLHead(dim, classes.num_classes, cfg.loss.s, cfg.loss.m)
    return heads


def _train_mode(model: DSFormer) -> None:
    """Train mode, except BatchNorms whose parameters are all frozen: their running statistics stay fixed."""
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _move_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for param_state in optimizer.state.values():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                param_state[key] = value.to(device)


def _train_epoch(run: Run, group: int, epoch: int) -> list[float]:
    """One epoch over one group: a fixed number of iterations; returns the (all-process mean) loss per iteration."""
    cfg, model, device, dist_info = run.cfg, run.model, run.device, run.dist_info
    head, head_opt = run.heads[group], run.head_opts[group]
    head.to(device)
    _move_optimizer(head_opt, device)
    dataset = GroupDataset(run.training_set, group, cfg.data, model.config.image_size, model.config.mean,
                           model.config.std)
    plan = epoch_plan(dataset.classes.num_classes, cfg.optim.batch_size, cfg.optim.iterations_per_epoch,
                      cfg.seed, epoch)
    loader = DataLoader(dataset, batch_sampler=shard_plan(plan, dist_info.rank, dist_info.world_size),
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    _train_mode(model)
    losses = []
    bar = tqdm(loader, total=len(plan), desc=f"epoch {epoch + 1}/{cfg.optim.epochs} group {group}", unit="it",
               disable=not (cfg.progress and dist_info.main))
    for iteration, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        run.model_opt.zero_grad(set_to_none=True)
        head_opt.zero_grad(set_to_none=True)
        with autocast(cfg.precision, device.type):
            descriptors = run.net(images)
        loss = lmcl_loss(head, descriptors, labels)
        run.scaler.scale(loss).backward()
        if dist_info.world_size > 1:
            for param in head.parameters():
                dist.all_reduce(param.grad, op=dist.ReduceOp.AVG)
        run.scaler.step(run.model_opt)
        run.scaler.step(head_opt)
        run.scaler.update()
        value = loss.detach()
        if dist_info.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        losses.append(float(value))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        step = epoch * cfg.optim.iterations_per_epoch + iteration
        if run.writer is not None and step % cfg.log_every == 0:
            run.writer.add_scalar("train/loss", losses[-1], step)
    head.cpu()
    _move_optimizer(head_opt, torch.device("cpu"))
    return losses


def _validate(model: DSFormer, val_set: VPRDataset, cfg: TrainConfig, out_dir: Path) -> dict[str, float]:
    """Recall@N of the current weights on the validation set, through the evaluation module (no map cache)."""
    model.checkpoint_sha256 = state_dict_sha256(model.state_dict())
    method = DescriptorExtractor(model, batch_size=cfg.val.batch_size, precision=cfg.precision)
    ns = tuple(sorted(cfg.val.recall_ns))
    eval_cfg = EvalConfig(dataset=cfg.val.dataset, recall_ns=ns, top_k=max(ns), batch_size=cfg.val.batch_size,
                          precision=cfg.precision, device=cfg.device, out=str(out_dir / "val"), use_cache=False,
                          figures=False)
    eval_cfg.validate()
    section = evaluate_method(method, val_set, eval_cfg, cache_dir=None)
    return {f"R@{n}": float(section["recall"][str(n)]) for n in ns}


def _save_epoch(run: Run, epochs_done: int, row: dict[str, Any]) -> None:
    """last.pt every epoch, best.pt when the validation metric improves, then last_state.pt (refers to last.pt)."""
    cfg, out_dir, model = run.cfg, run.out_dir, run.model
    metric_key = f"R@{min(cfg.val.recall_ns)}"
    provenance = {"source": "dsformer-vpr train", "epoch": epochs_done, "metrics": dict(row),
                  "train_config": to_dict(cfg)}
    sha = save_checkpoint(out_dir / "last.pt", model, provenance)
    metric = row.get(metric_key)
    if metric is not None and (run.best is None or metric > run.best):
        run.best = float(metric)
        save_checkpoint(out_dir / "best.pt", model, provenance)
        log.info("epoch %d: new best %s %.4f -> %s", epochs_done, metric_key, run.best, out_dir / "best.pt")
    save_state(out_dir / "last_state.pt", {
        "epoch": epochs_done,
        "config": to_dict(cfg),
        "checkpoint_sha256": sha,
        "model_optimizer": run.model_opt.state_dict(),
        "classifiers": {g: h.state_dict() for g, h in run.heads.items()},
        "classifier_optimizers": {g: o.state_dict() for g, o in run.head_opts.items()},
        "scaler": run.scaler.state_dict(),
        "rng": capture_rng(),
        "best_metric": run.best,
        "history": run.history,
    })


def _writers(cfg: TrainConfig, out_dir: Path, dist_info: Distributed, start_epoch: int) -> Any:
    """TensorBoard writer on the main process (events after the resumed step purged); saves the config there too."""
    if not dist_info.main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_epoch * cfg.optim.iterations_per_epoch)


def _log_epoch(writer: Any, row: dict[str, Any], history: list[dict[str, Any]], out_dir: Path) -> None:
    """Epoch scalars to TensorBoard and the whole history to metrics.csv (rewritten atomically)."""
    for key, value in row.items():
        if key.startswith("R@") or key in ("loss_mean", "seconds_per_iteration"):
            writer.add_scalar(f"{'val' if key.startswith('R@') else 'train'}/{key}", value, row["epoch"])
    writer.flush()
    columns = list(dict.fromkeys(k for r in history for k in r))
    buffer = io.StringIO()
    out = csv.DictWriter(buffer, fieldnames=columns)
    out.writeheader()
    out.writerows(history)
    atomic_write_text(out_dir / "metrics.csv", buffer.getvalue())
    log.info("epoch %d (group %d): loss %.4f -> %.4f, %.2f s/it%s", row["epoch"], row["group"], row["loss_first"],
             row["loss_last"], row["seconds_per_iteration"],
             "".join(f", {k} {v:.4f}" for k, v in row.items() if k.startswith("R@")))
