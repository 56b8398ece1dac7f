"""Figures of the real-model LoRA coordinate check, each a function of its tidy DataFrame.

Nothing here runs a model: :func:`loraplus_lab.sims.realmodels.coordcheck.run_coordcheck` collects,
these functions draw (microsoft/mup's coordinate-check layout: one panel per step, width on a log2
axis, one line per layer type).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.plots import MARKERS, PALETTE

STAT_LABELS = {
    "Z": "|Z| (layer input)",
    "Z_A": "|Z_A| = |A·Z|",
    "Z_B": "|Z_B| = |s·B·Z_A|",
    "delta1": "|δ¹| (A moves)",
    "delta2": "|δ²| (B moves)",
    "delta3": "|δ³| (cross)",
    "dZ_B": "|ΔZ_B|",
    "dZ": "|ΔZ| (input change)",
    "loss": "loss",
}


def plot_lora_coordcheck(
    df: pd.DataFrame,
    stat: str = "delta1",
    *,
    params: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    layer_types: Sequence[str] | None = None,
    title: str | None = None,
    sharey: bool = True,
) -> Figure:
    """One statistic of the LoRA coordinate check against width, as mup's coordinate check.

    ``df`` is the tidy output of :func:`loraplus_lab.sims.realmodels.coordcheck.run_coordcheck`.
    The grid has one row per parametrization and one column per step; each line is one layer type
    (colour and marker, colour-blind palette): the mean over seeds of the mean over that type's
    layers, with a ± one-standard-error band over seeds. A flat line means the statistic is Θ(1) in
    the width. Diverged rows are left out; a layer type whose statistic is exactly zero at a step
    is named in the panel instead of drawn (a log axis has no zero).

    Args:
        df: coordinate-check results.
        stat: ``Z``, ``Z_A``, ``Z_B``, ``delta1``, ``delta2``, ``delta3``, ``dZ_B`` or ``dZ``.
        params: parametrizations (rows) to draw, default all in order of appearance.
        steps: steps (columns), default every step at which ``stat`` was recorded.
        layer_types: layer types (lines), default all.
        title: figure title.
        sharey: one y-scale for every panel (growth under one parametrization against flat
            lines under another reads directly).
    """
    d = df[(df["stat"] == stat) & ~df["diverged"]]
    if d.empty:
        raise InputError(f"no rows with stat {stat!r} to plot")
    params = list(dict.fromkeys(d["param"])) if params is None else list(params)
    steps = sorted(d["step"].unique()) if steps is None else list(steps)
    if layer_types is None:
        layer_types = list(dict.fromkeys(d["layer_type"]))
    per_seed = (
        d[d["layer_type"].isin(layer_types)]
        .groupby(["param", "step", "layer_type", "width", "seed"])["value"]
        .mean()
        .reset_index()
    )
    ncol, nrow = len(steps), len(params)
    fig, axes = plt.subplots(
        nrow,
        ncol,
        figsize=(2.7 * ncol + 0.6, 2.5 * nrow + 0.7),
        squeeze=False,
        sharex=True,
        sharey=sharey,
    )
    for i, p in enumerate(params):
        for j, t in enumerate(steps):
            ax = axes[i, j]
            dt = per_seed[(per_seed["param"] == p) & (per_seed["step"] == t)]
            zero_notes = []
            for k, lt in enumerate(layer_types):
                g = dt[dt["layer_type"] == lt].groupby("width")["value"]
                mean, se = g.mean(), g.sem().fillna(0.0)
                if mean.empty:
                    continue
                if (mean == 0).all():
                    zero_notes.append(f"{lt} ≡ 0")
                    continue
                mean = mean[mean > 0]
                se = se.reindex(mean.index)
                color = PALETTE[k % len(PALETTE)]
                ax.plot(
                    mean.index,
                    mean.values,
                    "-",
                    marker=MARKERS[k % len(MARKERS)],
                    ms=3,
                    color=color,
                )
                lo = np.clip(mean - se, mean * 0.05, None)
                ax.fill_between(mean.index, lo, mean + se, color=color, alpha=0.15, lw=0)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.grid(True, which="major", alpha=0.3)
            if i == 0:
                ax.set_title(f"step t = {t}", fontsize=9)
            if i == nrow - 1:
                ax.set_xlabel("width n")
            if j == 0:
                ax.set_ylabel(f"{p}\n{STAT_LABELS.get(stat, stat)}", fontsize=8)
            if zero_notes:
                ax.text(
                    0.02,
                    0.02,
                    "\n".join(zero_notes),
                    transform=ax.transAxes,
                    fontsize=7,
                    va="bottom",
                )
    handles = [
        plt.Line2D(
            [],
            [],
            color=PALETTE[k % len(PALETTE)],
            marker=MARKERS[k % len(MARKERS)],
            ms=3,
            label=lt,
        )
        for k, lt in enumerate(layer_types)
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), 4),
        fontsize=8,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=10)
    rows_legend = int(np.ceil(len(handles) / 4))
    fig.tight_layout(rect=(0, 0.04 + 0.03 * rows_legend, 1, 1))
    return fig


def plot_lora_slopes(
    slopes: pd.DataFrame,
    *,
    stats: Sequence[str] = ("Z", "delta1", "delta2"),
    min_step: int = 2,
    title: str | None = None,
) -> Figure:
    """Measured width exponents (slope of ``log2 |stat|`` against ``log2 n``) per layer type.

    ``slopes`` is :func:`loraplus_lab.sims.realmodels.coordcheck.coordcheck_slopes`' output. One
    panel per statistic; per parametrization (x position) the slope of each layer type (colour)
    averaged over steps ``≥ min_step``, with the widest bootstrap interval over those steps as
    error bar. The dashed line is 0 (flat in width).
    """
    s = slopes[(slopes["step"] >= min_step) & slopes["stat"].isin(stats) & ~slopes["zero"]]
    if s.empty:
        raise InputError(f"no slopes at steps ≥ {min_step} for {', '.join(stats)}")
    g = (
        s.groupby(["stat", "param", "layer_type"], sort=False)
        .agg(slope=("slope", "mean"), lo=("ci_low", "min"), hi=("ci_high", "max"))
        .reset_index()
    )
    params = list(dict.fromkeys(g["param"]))
    ltypes = list(dict.fromkeys(g["layer_type"]))
    stats = [q for q in stats if q in set(g["stat"])]
    fig, axes = plt.subplots(
        1, len(stats), figsize=(3.2 * len(stats) + 0.4, 3.2), squeeze=False, sharey=True
    )
    width = 0.8 / max(len(ltypes), 1)
    for ax, q in zip(axes[0], stats, strict=True):
        gq = g[g["stat"] == q]
        for k, lt in enumerate(ltypes):
            gl = gq[gq["layer_type"] == lt].set_index("param").reindex(params)
            x = np.arange(len(params)) - 0.4 + width * (k + 0.5)
            err = np.vstack([gl["slope"] - gl["lo"], gl["hi"] - gl["slope"]])
            ax.errorbar(
                x,
                gl["slope"],
                yerr=np.nan_to_num(np.clip(err, 0, None)),
                fmt=MARKERS[k % len(MARKERS)],
                ms=4,
                color=PALETTE[k % len(PALETTE)],
                label=lt if q == stats[0] else None,
                capsize=2,
            )
        ax.axhline(0.0, color="0.4", ls="--", lw=0.8)
        ax.set_xticks(np.arange(len(params)), params, fontsize=8)
        ax.set_title(STAT_LABELS.get(q, q), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"slope vs log2 n (steps ≥ {min_step})")
    fig.legend(loc="lower center", ncol=min(len(ltypes), 4), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.04 * int(np.ceil(len(ltypes) / 4)), 1, 1))
    return fig
