"""Figure output for every report (eval, replay, partition, demo): matplotlib without a display, PNGs written
atomically at one resolution."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from dsformer_ros.common.atomic import atomic_path  # noqa: E402

DPI = 120


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Write `fig` as a PNG at `path` (temp file, then rename) and close it."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
