"""One PNG per fidelity row: the engine's observed frequencies against the exact law."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_row", "plot_name"]


def plot_name(row: dict) -> str:
    """``fidelity_<scheme>_<level kind>.png`` (spaces and slashes as ``-``)."""
    return "fidelity_" + f"{row['scheme']}_{row['level_kind']}".replace(" ", "-").replace("/", "-") + ".png"


def plot_row(row: dict, path: Path) -> None:
    """Two panels: observed frequency against exact probability per sequence (log-log, with the
    3-sigma binomial band), and the standardised residual ``(O - E) / sqrt(E)`` per sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    law = {int(c): p for c, p in row["law"].items()}
    obs = {int(c): k for c, k in row["observed"].items()}
    n = max(row["n_samples"], 1)
    x = np.array(list(law.values()))
    counts = np.array([obs.get(c, 0) for c in law], dtype=np.float64)
    floor = 0.5 / n
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 4))
    seen = counts > 0
    ax.scatter(x[seen], counts[seen] / n, s=12, label="observed sequences")
    if (~seen).any():
        ax.scatter(x[~seen], np.full((~seen).sum(), floor), s=12, facecolors="none", edgecolors="C0", label="never observed (at 0.5/N)")
    off = [c for c in obs if c not in law]
    lo = min(x.min(), floor) / 3
    if off:
        ax.scatter([lo] * len(off), [obs[c] / n for c in off], s=28, c="red", marker="x", label="outside the support")
    grid = np.geomspace(lo, 1.0, 200)
    band = 3 * np.sqrt(grid * (1 - grid) / n)
    ax.plot(grid, grid, "k-", lw=0.8, label="exact law (hsd_ref)")
    ax.plot(grid, grid + band, "k:", lw=0.6, label="±3σ")
    ax.plot(grid, np.maximum(grid - band, floor / 2), "k:", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="exact probability", ylabel=f"observed frequency (N = {n})")
    ax.legend(fontsize=7, loc="upper left")
    ax2.scatter(x, (counts - n * x) / np.sqrt(n * x), s=12)
    for level in (-3, 0, 3):
        ax2.axhline(level, color="k", lw=0.8 if level == 0 else 0.6, ls="-" if level == 0 else ":")
    ax2.set(xscale="log", xlabel="exact probability", ylabel="(observed - expected) / sqrt(expected)")
    fig.suptitle(f"{row['label']}: {row['verdict']}   (G = {row['statistic']:.1f}, dof {row['dof']}, p = {row['p_value']:.3g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
