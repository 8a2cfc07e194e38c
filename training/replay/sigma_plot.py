"""The replay figure that shows whether a fix's covariance tells the truth: error against reported sigma per fix."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dsformer_ros.common.atomic import atomic_path  # noqa: E402

# Radius factors of a 2-D Gaussian: 39.3 % of the errors within 1 sigma, 95 % within 2.45 sigma.
K95 = float(np.sqrt(5.991))


def plot_error_vs_sigma(runs: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, radius_m: float) -> None:
    """Scatter of |error| (m) against reported 1-sigma (m) for each run {label: (sigma, error)}, with reference lines."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    upper = 1.0
    for (label, (sigma, error)), colour in zip(runs.items(), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        ok = np.isfinite(sigma) & np.isfinite(error)
        if ok.any():
            ax.scatter(sigma[ok], error[ok], s=14, alpha=0.7, c=colour, label=f"{label} ({int(ok.sum())} fixes)")
            upper = max(upper, float(np.percentile(sigma[ok], 99)) * 1.2)
    line = np.linspace(0.0, upper, 50)
    ax.plot(line, line, "k-", lw=0.8, label="error = 1 sigma")
    ax.plot(line, K95 * line, "k--", lw=0.8, label="95 % ellipse radius (2.45 sigma)")
    ax.axhline(radius_m, color="0.5", ls=":", lw=1, label=f"{radius_m:g} m")
    ax.set_xlim(0.0, upper)
    ax.set_yscale("symlog", linthresh=10.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("reported 1-sigma of the fix (m)")
    ax.set_ylabel("error against ground truth (m)")
    ax.set_title("Is the covariance honest? (points below the dashed line: inside the 95 % ellipse)")
    ax.legend(fontsize=8, loc="upper left")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
