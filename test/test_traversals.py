"""Synthetic traversal pairs (the suite's stand-in for outside image data): layout, ground truth, refusals."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dsformer_ros.inference.preprocess import read_image
from training.eval.datasets import read_index_folders
from training.synth.traversals import render_frames, small_traversal_configs, write_traversal_pair


def test_pair_layout_ground_truth_and_frames(tmp_path: Path) -> None:
    ref, query = small_traversal_configs(frames=6, width=64, height=48)
    root = write_traversal_pair(tmp_path / "pair", ref, query, tolerance=1)
    assert sorted(p.name for p in root.iterdir()) == ["ground_truth.csv", "query", "ref"]
    dataset = read_index_folders(root)
    assert [p.name for p in dataset.database_paths] == [f"{i:07d}.jpg" for i in range(6)]
    assert [p.tolist() for p in dataset.positives] == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5]]
    rendered = render_frames(ref)
    written = [read_image(p) for p in dataset.database_paths]
    assert len(rendered) == 6 and rendered[0].shape == (48, 64, 3) and rendered[0].dtype == np.uint8
    diff = np.array([[np.abs(a.astype(int) - b).mean() for a in rendered] for b in written])
    assert diff.argmin(axis=1).tolist() == list(range(6)) and diff.diagonal().max() < 8  # file k: JPEG of frame k
    assert np.abs(rendered[0].astype(int) - rendered[5]).mean() > 5  # 5 m further on, the view changed
    dusk = [read_image(p) for p in dataset.query_paths]
    assert np.mean(dusk) < 0.8 * np.mean(written)  # the query drive is the dusk one


def test_pair_refuses_drives_of_different_places_and_existing_output(tmp_path: Path) -> None:
    ref, query = small_traversal_configs(frames=4, width=32, height=24)
    with pytest.raises(ValueError, match="route_seed: the ref and query drives must share it"):
        write_traversal_pair(tmp_path / "a", ref, replace(query, route_seed=5))
    with pytest.raises(ValueError, match="tolerance"):
        write_traversal_pair(tmp_path / "a", ref, query, tolerance=-1)
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError, match="exists already"):
        write_traversal_pair(tmp_path / "b", ref, query)
