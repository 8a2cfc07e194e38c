"""Bad invocations of `dsformer-vpr`: each ends with exit code 2 and one `dsformer-vpr CMD: error: ...` line naming
the problem (argparse's own usage errors: its usage line plus one error line), never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dsformer_ros.common.devices import DEVICE_PATTERN
from training.cli import main

FUZZ = settings(max_examples=60, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    (root / "afile").write_text("not an image")
    (root / "adir").mkdir()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(root / "image.jpg"), image)
    (root / "not_yaml.yaml").write_text("a: [1, 2\n  b: {\n")
    (root / "binary.yaml").write_bytes(b"a: \x80\x81\x00\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "no_section.yaml").write_text("vpr_node:\n  top_k: 3\n")
    (root / "deep.yaml").write_text("[" * 5000 + "]" * 5000 + "\n")
    return {name: root / name for name in ("afile", "adir", "image.jpg", "not_yaml.yaml", "binary.yaml",
                                            "list.yaml", "no_section.yaml", "deep.yaml")} | {"root": root}


def _fails_cleanly(argv: list[str], capsys: pytest.CaptureFixture, match: str = "") -> str:
    """Run `dsformer-vpr argv` in-process: exit code 2 and one error line (plus argparse's usage line)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage line + error line
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and " INFO " not in line
             and " WARNING " not in line and "faiss.loader" not in line]
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in lines if f"dsformer-vpr {argv[0]}: error: " in line or line.startswith("[ERROR]")]
    assert len([line for line in errors if "dsformer-vpr" in line]) == 1, err
    message = next(line for line in errors if "dsformer-vpr" in line)
    assert match in message, (match, message)
    return message


@pytest.mark.parametrize("device", ["bogus", "cuda:abc", "cuda:", "CPU", "cuda:-1", "cuda:0:1", ""])
def test_bad_device_strings(paths, capsys, device: str) -> None:
    message = _fails_cleanly(["describe", str(paths["image.jpg"]), "--out", str(paths["root"] / "o.npy"),
                              "--device", device], capsys, "device")
    assert repr(device) in message


def test_unavailable_cuda_is_one_line(paths, capsys) -> None:
    import torch

    index = torch.cuda.device_count() + 3  # absent on every machine: no CUDA at all, or too few devices
    expected = "device(s) present" if torch.cuda.is_available() else "CUDA is not available"
    _fails_cleanly(["describe", str(paths["image.jpg"]), "--out", str(paths["root"] / "o.npy"),
                    "--device", f"cuda:{index}"], capsys, expected)


@pytest.mark.parametrize(("out", "match"), [("adir", "is a directory; name a file"),
                                            ("afile/x.npy", "is a file, not a directory"),
                                            ("afile/deeper/x.npy", "is a file, not a directory")])
def test_describe_out_that_cannot_be_a_file(paths, capsys, out: str, match: str) -> None:
    _fails_cleanly(["describe", str(paths["image.jpg"]), "--out", str(paths["root"] / out), "--device", "cpu"],
                   capsys, match)


def test_describe_a_directory_says_it_is_one(paths, capsys, tmp_path) -> None:
    _fails_cleanly(["describe", str(paths["adir"]), "--out", str(tmp_path / "o.npy"), "--device", "cpu"], capsys,
                   f"image {paths['adir']} is a directory; name the image files in it")


def test_describe_bad_images(paths, capsys, tmp_path) -> None:
    _fails_cleanly(["describe", str(paths["afile"]), "--out", str(tmp_path / "o.npy"), "--device", "cpu"], capsys,
                   "not a JPEG or PNG file")
    bomb = bytearray(paths["image.jpg"].read_bytes())
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5 : sof + 9] = (40000).to_bytes(2, "big") * 2
    (tmp_path / "bomb.jpg").write_bytes(bytes(bomb))
    _fails_cleanly(["describe", str(tmp_path / "bomb.jpg"), "--out", str(tmp_path / "o.npy"), "--device", "cpu"],
                   capsys, "40000x40000 = 1600000000 pixels, above the limit")
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(("name", "match"), [("not_yaml.yaml", "is not YAML"), ("binary.yaml", "is not YAML"),
                                             ("list.yaml", "must map node names"),
                                             ("no_section.yaml", "holds no 'ros__parameters' mapping"),
                                             ("deep.yaml", "nested too deeply"),
                                             ("adir", "is a directory"), ("missing.yaml", "does not exist")])
def test_node_params_file_that_is_not_a_parameter_file(paths, capsys, name: str, match: str) -> None:
    path = paths.get(name, paths["root"] / name)
    _fails_cleanly(["node", "--params-file", str(path)], capsys, match)


@pytest.mark.parametrize(("option", "match"), [("--out", "exists already"), ("--export-at", "exists already")])
def test_synth_refuses_existing_outputs(paths, capsys, option: str, match: str) -> None:
    _fails_cleanly(["synth", option, str(paths["adir"]), "--frames", "2"], capsys, match)


def test_synth_output_under_a_file(paths, capsys) -> None:
    _fails_cleanly(["synth", "--out", str(paths["afile"] / "bag"), "--frames", "2"], capsys,
                   "is a file, not a directory")


@pytest.mark.parametrize("argv", [["train", "--config", "<not_yaml.yaml>"], ["train", "--config", "<binary.yaml>"],
                                  ["train", "--config", "<missing.yaml>"], ["synth", "--config", "<list.yaml>"],
                                  ["synth", "--set", "frames=many", "--out", "<new>"],
                                  ["synth", "--set", "nokey=1", "--out", "<new>"],
                                  ["synth", "--set", "frames", "--out", "<new>"]])
def test_bad_config_files_and_overrides(paths, capsys, argv: list[str]) -> None:
    names = {name: str(paths.get(name, paths["root"] / name)) for name in
             ("not_yaml.yaml", "binary.yaml", "missing.yaml", "list.yaml", "new")}
    _fails_cleanly([a.format(**names) if a.startswith("<") else a for a in argv], capsys)


@FUZZ
@given(device=st.text(max_size=12))
def test_any_invalid_device_text_is_one_line(paths, capsys, device: str) -> None:
    assume(not DEVICE_PATTERN.fullmatch(device) and not device.startswith("-"))
    _fails_cleanly(["describe", str(paths["image.jpg"]), "--out", str(paths["root"] / "o.npy"),
                    "--device", device], capsys, "device")


@FUZZ
@given(key=st.sampled_from(["frames", "fps", "width", "speed_mps", "jpeg_quality", "storage", "condition",
                            "origin_lat", "gps_no_fix_fraction", "route"]),
       value=st.one_of(st.text(max_size=8), st.integers(-10**6, -1), st.floats(allow_nan=True), st.just("[1, 2")))
def test_any_bad_synth_setting_is_one_line(paths, capsys, key: str, value) -> None:
    text = str(value)
    try:
        code = main(["synth", "--set", f"{key}={text}", "--benchmark", "0"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code != 0:  # some values are valid for some keys; "nothing to write" then ends it cleanly
        assert code == 2 and "dsformer-vpr synth: error: " in err, err


def test_a_real_process_prints_one_line_and_exits_2(paths) -> None:
    result = subprocess.run([sys.executable, "-m", "training.cli", "describe", str(paths["image.jpg"]), "--out",
                             str(paths["adir"]), "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if "faiss.loader" not in line]
    assert result.returncode == 2 and lines == [f"dsformer-vpr describe: error: output {paths['adir']} is a "
                                                 "directory; name a file to write"], result.stderr


@pytest.mark.parametrize("override", ["frames=[1, 2", "frames={", "=3", "a..b=1", "frames=" + "[" * 3000])
def test_overrides_that_are_not_yaml_values(paths, capsys, override: str) -> None:
    _fails_cleanly(["synth", "--set", override, "--out", str(paths["root"] / "new")], capsys, "override")


def test_deep_config_file(paths, capsys) -> None:
    _fails_cleanly(["synth", "--config", str(paths["deep.yaml"])], capsys, "nested too deeply")


@pytest.mark.parametrize(("argv", "match"), [
    (["build-map", "<adir>", "--method", "raw_pixels", "--out", "<afile>"], "exists and is not a directory"),
    (["build-map", "<adir>", "--method", "raw_pixels", "--out", "<afile>/map"], "is a file, not a directory"),
    (["build-map", "<adir>", "--device", "cuda:abc", "--out", "<root>/map"], "'cuda:abc' is not auto"),
    (["bench-map", "--sizes", "100", "--out", "<afile>/x"], "is a file, not a directory"),
    (["partition", "--synthetic", "100", "--out", "<afile>/x"], "Not a directory: "),
    (["partition", "--synthetic", "100", "--out", "<afile>"], "File exists: "),
])
def test_outputs_the_system_refuses_are_one_line(paths, capsys, argv: list[str], match: str) -> None:
    """Paths the operating system refuses reach the dispatcher as OSError: one line with the reason and the path."""
    filled = [a.replace("<afile>", str(paths["afile"])).replace("<adir>", str(paths["adir"]))
              .replace("<root>", str(paths["root"])) for a in argv]
    _fails_cleanly(filled, capsys, match)


def test_describe_with_a_nan_checkpoint_writes_nothing(paths, capsys, tmp_path) -> None:
    import torch

    torch.save({"backbone.effnet._conv_stem.weight": torch.full((4, 3, 3, 3), float("nan"))}, tmp_path / "nan.pth")
    _fails_cleanly(["describe", str(paths["image.jpg"]), "--out", str(tmp_path / "o.npy"), "--device", "cpu",
                    "--checkpoint", str(tmp_path / "nan.pth")], capsys, "non-finite value(s) (NaN or inf)")
    assert not (tmp_path / "o.npy").exists()
