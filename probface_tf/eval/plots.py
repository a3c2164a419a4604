"""PNG figures of an evaluation: reject-verification curves (TAR@FAR versus rejected portion, one panel per FAR,
one line per distance + uncertainty combination), error versus reject, the sigma_sq histogram, and the
multi-method comparison (one line per method).

Figures are drawn on Agg canvases created here, so no global matplotlib backend is touched and nothing needs
a display.
"""
from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from probface_tf.atomic import atomic_open


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as f:  # a full disk leaves no truncated PNG behind
        fig.savefig(f, dpi=100, format="png")
    return path


def plot_reject_verification(curves: dict, rejected_portions, path: str, title: str = "") -> str:
    """``curves``: {combination: {far: [TAR per rejected portion]}} -> one panel per FAR."""
    fars = list(next(iter(curves.values())))
    fig = Figure(figsize=(4.2 * len(fars), 3.8), layout="constrained")
    axes = fig.subplots(1, len(fars), squeeze=False)[0]
    for ax, far in zip(axes, fars):
        for combo, table in curves.items():
            ax.plot(rejected_portions, table[far], marker=".", label=combo)
        ax.set_title("TAR@FAR=%g" % float(far))
        ax.set_xlabel("rejected portion")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("TAR")
    axes[-1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_error_reject(reject_factors, errors, path: str, title: str = "",
                      ylabel: str = "FNMR @ FMR=1e-3 (fixed threshold)") -> str:
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(np.asarray(reject_factors)[: len(errors)], errors)
    ax.set_xlabel("reject fraction")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_sigma_histogram(sigma_sq, path: str, title: str = "", bins: int = 50) -> str:
    """Histogram of every sigma_sq value (all images, all dimensions)."""
    values = np.asarray(sigma_sq, dtype=np.float64).ravel()
    fig = Figure(figsize=(5, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
    ax.set_xlabel("sigma_sq")
    ax.set_ylabel("images" if values.size else "")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "sigma_sq (%d values)" % values.size)
    return _save(fig, path)


def plot_method_comparison(panels, path: str, title: str = "") -> str:
    """``panels``: ``[(y label, {method: (x, y)})]`` -> one panel each, x = rejected fraction, one line per method
    (a method without uncertainty has no curve and is left out)."""
    fig = Figure(figsize=(5.2 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, lines) in zip(axes, panels):
        for method, (x, y) in lines.items():
            ax.plot(x, y, marker="." if len(x) < 20 else None, label=method)
        ax.set_xlabel("rejected fraction")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[-1].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def dataset_figures(result: dict, sigma_sq, out_dir: str) -> dict:
    """Every figure of one dataset result; returns {caption: file name relative to ``out_dir``}."""
    if result["sigma"] == "none":
        return {}
    name = result["name"]
    rv = result["reject_verification"]
    files = {
        "%s reject verification" % name: plot_reject_verification(
            rv["curves"], rv["rejected_portions"], os.path.join(out_dir, "%s_reject_verification.png" % name),
            "%s: TAR@FAR vs rejected portion" % name),
        "%s error versus reject" % name: plot_error_reject(
            result["reject_fnmr"]["reject_factors"], result["reject_fnmr"]["fmr1000_fixed_threshold"],
            os.path.join(out_dir, "%s_error_reject.png" % name), "%s: cosine, max sigma_sq fusion" % name),
        "%s sigma_sq histogram" % name: plot_sigma_histogram(
            sigma_sq, os.path.join(out_dir, "%s_sigma_sq_hist.png" % name), "%s: sigma_sq" % name),
    }
    return {caption: os.path.relpath(path, out_dir) for caption, path in files.items()}
