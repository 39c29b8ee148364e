"""DET plot (FNIR against FPIR, log axes) for `tillface eval --plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_det(results: dict[str, Any] | list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results if isinstance(results, list) else [results]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for run in runs:
        curve = run.get("det_curve") or {}
        fpir = np.asarray(curve.get("fpir", []), dtype=float)
        fnir = np.asarray(curve.get("fnir", []), dtype=float)
        keep = fpir > 0
        if keep.any():
            ax.step(fpir[keep], fnir[keep], where="post", label=run["pipeline"])
    for x in (0.01, 0.001):
        ax.axvline(x, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("FPIR (non-mated searches returning a member)")
    ax.set_ylabel("FNIR (members missed)")
    ax.set_title(f"1:N open-set DET, {runs[0]['images']} images")
    ax.grid(True, which="both", lw=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
