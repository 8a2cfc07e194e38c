"""Training: config errors, panorama crops and frame choice towards focal points, a short real run on synthetic drives
(trained on the day reference drive and a dusk drive: loss falls, Recall@1 of a held-out dusk query drive against the
reference rises above the untrained model's), exact resume, and a two-process DDP run with gloo."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dsformer_ros import load_model
from dsformer_ros.common.config import ConfigError, load_config, save_config
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.model.checkpoint import read_checkpoint
from dsformer_ros.model.dsformer import preset
from training.cli import main as cli_main
from training.eval.datasets import DatasetConfig, open_dataset
from training.eval.evaluate import EvalConfig, evaluate_method
from training.io.at_names import AtName, format_at_name
from training.synth.traversals import render_frames, small_traversal_configs
from training.train.config import TrainConfig
from training.train.data import GroupDataset, build_training_set, epoch_plan, panorama_crop, shard_plan
from training.train.state import load_state
from training.train.train import train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
EAST, NORTH = 500000.5, 5000000.0
# Mild augmentation: a few hundred training images are too few for EigenPlaces' strong colour jitter to pay off
# in seconds.
MILD_AUGMENT = {"crop_scale": [0.6, 1.0], "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05}


def _at_folder(src: Path, dst: Path, headings: dict[int, float] | None = None, tag: str = "f") -> Path:
    """Copy frames named by index into '@' names: frame i at 1 m per frame northwards, facing north (or `headings`);
    `tag` + i is the name's note, so that several drives can share one folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.jpg")):
        i = int(path.stem)
        heading = (headings or {}).get(i, 0.0)
        name = AtName(easting=EAST, northing=NORTH + i, zone_number=33, zone_letter="T", heading_deg=heading,
                      note=f"{tag}{i}")
        shutil.copy(path, dst / format_at_name(name))
    return dst


@pytest.fixture(autouse=True)
def one_thread_per_process():
    """One torch thread: busy-waiting OpenMP threads slow training several-fold when the two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref_at(traversals: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic reference traversal as an '@' folder (positions from frame indices)."""
    return _at_folder(traversals / "ref", tmp_path_factory.mktemp("ref_at"))


@pytest.fixture(scope="module")
def two_drives_at(traversals: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training data like a real training set's: the reference drive plus a third drive of the route under the
    query's condition (dusk; its own jitter and noise), both in one '@' folder."""
    _, query = small_traversal_configs()
    frames = tmp_path_factory.mktemp("third_drive")
    for k, rgb in enumerate(render_frames(replace(query, drive_seed=3))):
        cv2.imwrite(str(frames / f"{k:07d}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    root = _at_folder(traversals / "ref", tmp_path_factory.mktemp("two_drives_at"), tag="r")
    return _at_folder(frames, root, tag="d")


def _config(traversals: Path, roots: Path, out_dir: Path, *overrides: str, val: bool = True) -> TrainConfig:
    data = {
        "model": {"variant": "efficientnet_lite0"},
        "data": {
            "kind": "perspective_at",
            "roots": [str(roots)],
            "image_size": [128, 128],
            "partition": {"method": "grid", "strip_width_m": 5, "groups_per_direction": 2, "min_images_per_class": 3},
            "min_frames_per_class": 3,
            "augment": MILD_AUGMENT,
        },
        "loss": {"s": 30.0, "m": 0.4},
        "optim": {"lr_model": 1e-4, "lr_classifier": 1e-2, "batch_size": 16, "iterations_per_epoch": 20, "epochs": 4},
        "val": {"dataset": {"format": "folders", "root": str(traversals)} if val else None, "recall_ns": [1, 5]},
        "device": "cpu",
        "num_workers": 0,
        "out": str(out_dir),
        "progress": False,
    }
    path = out_dir.parent / f"{out_dir.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_config(TrainConfig, path, overrides)


def test_bad_config_values_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["data.roots=[somewhere]"]
    with pytest.raises(ConfigError, match=r"optim\.lr_model: must be positive"):
        load_config(TrainConfig, None, base + ["optim.lr_model=-1"])
    with pytest.raises(ConfigError, match=r"unknown configuration key optim\.lr\b"):
        load_config(TrainConfig, None, base + ["optim.lr=0.1"])
    with pytest.raises(ConfigError, match=r"data\.kind: 'video'"):
        load_config(TrainConfig, None, base + ["data.kind=video"])
    with pytest.raises(ConfigError, match=r"data\.roots"):
        load_config(TrainConfig, None, [])
    with pytest.raises(ConfigError, match=r"model\.config\.image_size"):
        load_config(TrainConfig, None, base + ["model.config={image_size: [64, 64]}"])
    with pytest.raises(ConfigError, match=r"precision: fp16 mixed precision needs a CUDA device"):
        load_config(TrainConfig, None, base + ["precision=fp16", "device=cpu"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"roots": ["x"]}, "loss": {"m": 1.5}}))
    assert cli_main(["train", "--config", str(bad)]) == 2
    assert "dsformer-vpr train: error: loss.m: must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["dsformer_resnet50_sfxl.yaml", "dsformer_dinov2_sfxl.yaml", "lite0_cpu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(TrainConfig, CONFIGS / name)
    if name.startswith("dsformer_"):
        assert (cfg.optim.batch_size, cfg.optim.iterations_per_epoch, cfg.optim.epochs) == (32, 10000, 40)
        assert (cfg.optim.lr_model, cfg.optim.lr_classifier, cfg.loss.s, cfg.loss.m) == (1e-5, 1e-2, 100.0, 0.4)
        p = cfg.data.partition
        assert (p.method, p.strip_width_m, p.groups_per_direction, p.class_radius_m, p.min_peak_distance_m,
                p.focal_distance_m) == ("block", 10.0, 5, 7.5, 40.0, 15.0)
    else:
        assert cfg.model.variant == "efficientnet_lite0" and cfg.data.kind == "perspective_at"


def test_panorama_crop_points_at_the_bearing() -> None:
    rng = np.random.default_rng(0)
    world = rng.integers(0, 255, size=(8, 360, 3), dtype=np.uint8)  # one column per degree, north at column 0
    for heading in (0.0, 37.0, 180.0, 271.0):
        # In SF-XL panoramas north lies at column (180 - heading) / 360 * width.
        pano = np.roll(world, int((180 - heading) % 360), axis=1)
        for bearing in (0.0, 90.0, 200.0, 355.0):
            crop = panorama_crop(pano, heading, bearing, fov_deg=90.0)
            expected = world[:, (int(bearing) - 45 + np.arange(90)) % 360]
            np.testing.assert_array_equal(crop, expected)


def test_perspective_frames_are_chosen_by_heading(traversals: Path, tmp_path: Path) -> None:
    headings = {i: 180.0 for i in range(0, 111, 2)}  # even frames face south, away from the frontal focal points
    roots = _at_folder(traversals / "ref", tmp_path / "mixed", headings)
    cfg = _config(traversals, roots, tmp_path / "run", "data.min_frames_per_class=2")
    training_set = build_training_set(cfg.data, cache_dir=tmp_path / "cache")
    assert sorted(training_set.groups) == [4, 5]  # frontal groups only: no frame looks sideways
    names = [p.name for p in training_set.table.paths]
    for group in training_set.groups.values():
        assert group.direction == "frontal"
        for members, focal in zip(group.images, group.focal):
            frames = [int(names[i].split("@")[14][1:]) for i in members]
            assert all(f % 2 == 1 for f in frames) and len(frames) >= 2
            assert focal[1] > NORTH + max(frames)  # the focal point lies ahead (north)
    cfg = replace(cfg, data=replace(cfg.data, heading_tolerance_deg=1.0, min_frames_per_class=5))
    with pytest.raises(ValueError, match="no trainable class"):
        build_training_set(cfg.data)


def test_epoch_plan_is_deterministic_and_shards_cover_it() -> None:
    plan = epoch_plan(7, 8, 5, seed=3, epoch=2)
    np.testing.assert_array_equal(plan, epoch_plan(7, 8, 5, seed=3, epoch=2))
    assert not np.array_equal(plan, epoch_plan(7, 8, 5, seed=3, epoch=3))
    counts = np.bincount(plan[:, :, 0].ravel(), minlength=7)
    assert counts.max() - counts.min() <= 1  # shuffled passes over the classes
    shards = [shard_plan(plan, r, 2) for r in range(2)]
    rejoined = np.array([a + b for a, b in zip(*shards)])
    np.testing.assert_array_equal(rejoined, plan)


def _recall_at_1(model: torch.nn.Module, traversals: Path) -> float:
    dataset = open_dataset(DatasetConfig(format="folders", root=str(traversals)))
    cfg = EvalConfig(dataset=DatasetConfig(format="folders", root=str(traversals)), recall_ns=(1,), top_k=1,
                     out="unused", use_cache=False, figures=False)
    section = evaluate_method(DescriptorExtractor(model), dataset, cfg, cache_dir=None)
    return float(section["recall"]["1"])


@pytest.mark.slow
def test_training_lowers_loss_and_raises_recall(traversals: Path, two_drives_at: Path, tmp_path: Path) -> None:
    # One frontal group (N=1) so that every epoch trains the same classifier; rotation is covered by the resume test.
    cfg = _config(traversals, two_drives_at, tmp_path / "run", "data.partition.groups_per_direction=1",
                  "optim.iterations_per_epoch=40", "optim.epochs=2")
    result = train(cfg)
    rows = result.history
    assert [r["group"] for r in rows] == [1, 1]
    losses = [r["loss_mean"] for r in rows]
    assert losses[-1] < 0.75 * losses[0]  # measured: 13.4 -> 8.6
    size = tuple(cfg.data.image_size)
    untrained = _recall_at_1(
        load_model(variant="efficientnet_lite0", device="cpu", config=replace(preset("efficientnet_lite0"),
                                                                              image_size=size)), traversals)
    trained = _recall_at_1(load_model(tmp_path / "run" / "best.pt", device="cpu"), traversals)
    print(f"R@1 untrained {untrained:.3f}, trained {trained:.3f} at {size}; "
          f"per epoch {[round(r['R@1'], 3) for r in rows]}; loss {[round(x, 3) for x in losses]}")
    assert trained == pytest.approx(result.best_metric)
    assert trained >= untrained + 0.1  # measured: 0.69 -> 0.89
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch,group,classes")
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    assert read_checkpoint(tmp_path / "run" / "last.pt").provenance["epoch"] == 2


def _tiny(traversals: Path, roots: Path, out_dir: Path, *overrides: str) -> TrainConfig:
    return _config(traversals, roots, out_dir, "data.image_size=[64,64]", "optim.batch_size=4",
                   "optim.iterations_per_epoch=3", *overrides, val=False)


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(traversals: Path, ref_at: Path, tmp_path: Path) -> None:
    straight = train(_tiny(traversals, ref_at, tmp_path / "a", "optim.epochs=2"))
    train(_tiny(traversals, ref_at, tmp_path / "b", "optim.epochs=1"))
    with pytest.raises(ConfigError, match=r"loss\.s \(was 30\.0, now 31\.0\)"):
        train(_tiny(traversals, ref_at, tmp_path / "b", "optim.epochs=2", "resume=true", "loss.s=31"))
    # Resumed with a data-loading worker process: the samples come from the plan, not from who loads them.
    resumed = train(_tiny(traversals, ref_at, tmp_path / "b", "optim.epochs=2", "resume=true", "num_workers=1"))
    assert [r["loss_mean"] for r in resumed.history] == [r["loss_mean"] for r in straight.history]
    a = read_checkpoint(tmp_path / "a" / "last.pt").state_dict
    b = read_checkpoint(tmp_path / "b" / "last.pt").state_dict
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    state_a, state_b = load_state(tmp_path / "a" / "last_state.pt"), load_state(tmp_path / "b" / "last_state.pt")
    for group in state_a["classifiers"]:
        torch.testing.assert_close(state_a["classifiers"][group]["weight"], state_b["classifiers"][group]["weight"],
                                   rtol=0, atol=1e-6)
    assert state_a["epoch"] == state_b["epoch"] == 2
    initial = load_model(variant="efficientnet_lite0", device="cpu", config=replace(preset("efficientnet_lite0"),
                                                                                    image_size=(64, 64)))
    assert not torch.equal(initial.state_dict()["fc.weight"], a["fc.weight"])  # training changed the weights


@pytest.mark.slow
def test_two_process_ddp_with_gloo(traversals: Path, ref_at: Path, tmp_path: Path) -> None:
    cfg = _tiny(traversals, ref_at, tmp_path / "ddp", "optim.epochs=2", "optim.iterations_per_epoch=2")
    save_config(cfg, tmp_path / "ddp.yaml")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training.cli",
           "train", "--config", str(tmp_path / "ddp.yaml")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP process 1 of 2 (gloo)" in proc.stderr
    state = load_state(tmp_path / "ddp" / "last_state.pt")
    assert state["epoch"] == 2 and state["config"]["optim"]["batch_size"] == cfg.optim.batch_size
    model = load_model(tmp_path / "ddp" / "last.pt", device="cpu")
    assert model.config.image_size == (64, 64)


def test_panorama_classes_give_model_sized_crops(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "panos"
    folder.mkdir()
    for i in range(24):  # two rows of panoramas along a street running east
        name = AtName(easting=EAST + 2.0 * (i % 12), northing=NORTH + 3.0 * (i // 12), zone_number=33,
                      zone_letter="T", heading_deg=float(rng.uniform(0, 360)), note=f"p{i}")
        cv2.imwrite(str(folder / format_at_name(name)), rng.integers(0, 255, size=(64, 416, 3), dtype=np.uint8))
    cfg = load_config(TrainConfig, None, [
        "data.kind=sfxl_panoramas", f"data.roots=[{folder}]", "data.image_size=[48,48]",
        "data.partition={method: grid, strip_width_m: 30, groups_per_direction: 1, min_images_per_class: 5}"])
    training_set = build_training_set(cfg.data)
    assert sorted(training_set.groups) == [0, 1]  # panoramas look both ways: lateral and frontal classes stay
    dataset = GroupDataset(training_set, 0, cfg.data, (48, 48), (0.5,) * 3, (0.25,) * 3)
    image, label = dataset[(0, 123)]
    assert image.shape == (3, 48, 48) and label == 0
    torch.testing.assert_close(image, dataset[(0, 123)][0])  # the sample seed fixes the view
    view = dataset.view(0, np.random.default_rng(5))
    assert view.shape == (64, 104, 3)  # a 90 degree window of the 416 px wide panorama
