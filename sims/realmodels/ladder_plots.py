"""Figures of the real-model ladder, each a function of the analysis tables
(:mod:`~loraplus_lab.sims.realmodels.ladder_analysis`); nothing here trains a model.

Losses are shown relative to the finetuning gain of their width: ``(L − L*)/(L_before − L*)``,
the fraction of the best run's gain that a run gives up (0 at the optimum, 1 for a run that
learned nothing), so widths whose bases differ can share one colour scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from loraplus_lab.sims.plots import MARKERS, PALETTE, fit_line
from loraplus_lab.sims.realmodels import ladder_analysis as LA

_NAMES = {"log2_eta_a": "η_A*", "log2_eta_b": "η_B*", "log2_ratio": "λ* = η_B*/η_A*"}
RUN_COLORS = {
    "LoRA (tuned η)": PALETTE[0],
    "best (η_A, η_B)": PALETTE[2],
    "B only (A frozen)": "0.55",
}


def _run_color(name: str) -> object:
    return RUN_COLORS.get(name, PALETTE[1])


def plot_real_landscapes(
    finals: pd.DataFrame, optima: pd.DataFrame, *, ratio: float | None, title: str = ""
) -> Figure:
    """One panel per width over ``(log2 η_A, log2 η_B)``: every run that trains ``A`` as a
    square coloured by the fraction of the gain it gives up (seed mean, log scale; grey crosses:
    diverged or worse than no finetuning), the equal-rate line (dashed), the fixed-ratio line
    (dotted), the fitted optimum (star), tuned LoRA (circle) and tuned LoRA+ (diamond).

    ``finals`` has one row per width × configuration: ``width, log2_eta_a, log2_eta_b,
    lost`` (the fraction of gain given up, NaN if diverged)."""
    widths = sorted(finals["width"].unique())
    n = len(widths)
    fig, axes = plt.subplots(
        1, n, figsize=(3.3 * n + 1.2, 4.2), squeeze=False, sharey=True, layout="constrained"
    )
    norm = LogNorm(vmin=1e-2, vmax=1.0)
    im = None
    for ax, w in zip(axes[0], widths, strict=True):
        f = finals[(finals["width"] == w) & np.isfinite(finals["log2_eta_a"])]
        ok = np.isfinite(f["lost"]) & (f["lost"] < 1)
        lost = f.loc[ok, "lost"].clip(lower=1e-2)
        im = ax.scatter(
            f.loc[ok, "log2_eta_a"],
            f.loc[ok, "log2_eta_b"],
            c=lost,
            s=55,
            marker="s",
            cmap="viridis",
            norm=norm,
            linewidths=0,
        )
        ax.scatter(
            f.loc[~ok, "log2_eta_a"],
            f.loc[~ok, "log2_eta_b"],
            marker="x",
            s=18,
            color="0.6",
            lw=0.8,
        )
        lo = min(f["log2_eta_a"].min(), f["log2_eta_b"].min())
        hi = max(f["log2_eta_a"].max(), f["log2_eta_b"].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        if ratio:
            lr = math.log2(ratio)
            ax.plot([lo, hi], [lo + lr, hi + lr], "k:", lw=0.9)
        o = optima[optima["width"] == w].iloc[0]
        ax.plot(o["log2_eta_a"], o["log2_eta_b"], "*", color="#d55e00", ms=14, mec="w")
        ax.plot(o["equal_log2_eta_a"], o["equal_log2_eta_b"], "o", color="#cc79a7", ms=8, mec="w")
        if ratio and np.isfinite(o.get("ratio_log2_eta_a", np.nan)):
            ax.plot(
                o["ratio_log2_eta_a"], o["ratio_log2_eta_b"], "D", color="#56b4e9", ms=7, mec="w"
            )
        ax.set_xlim(f["log2_eta_a"].min() - 0.6, f["log2_eta_a"].max() + 0.6)
        ax.set_ylim(f["log2_eta_b"].min() - 0.6, f["log2_eta_b"].max() + 0.6)
        ax.set_title(f"n = {w}", fontsize=9)
        ax.set_xlabel("log2 η_A")
        ax.grid(True, alpha=0.2)
    axes[0, 0].set_ylabel("log2 η_B")
    if im is not None:
        fig.colorbar(
            im, ax=list(axes[0]), fraction=0.025, pad=0.01, label="fraction of the gain given up"
        )
    handles = [
        plt.Line2D([], [], color="#d55e00", marker="*", ls="", ms=10, label="optimum (fit)"),
        plt.Line2D([], [], color="#cc79a7", marker="o", ls="", label="tuned LoRA (η_A = η_B)"),
        plt.Line2D(
            [],
            [],
            color="#56b4e9",
            marker="D",
            ls="",
            label=f"tuned LoRA+ (λ = {ratio:g})" if ratio else "LoRA+",
        ),
        plt.Line2D([], [], color="k", ls="--", label="η_A = η_B"),
        plt.Line2D([], [], color="k", ls=":", label=f"η_B = {ratio:g}·η_A" if ratio else ""),
        plt.Line2D([], [], color="0.6", marker="x", ls="", label="diverged / no gain"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_rate_pictures(
    slices: pd.DataFrame, equal: pd.DataFrame, *, n0: int, axes: Sequence | None = None
) -> Figure:
    """The two pictures of rate transfer, one curve per width, the loss as the fraction of the
    width's best gain given up. Left, LoRA+ scaling: the runs along ``η_A`` at one fixed
    ``η_B`` against ``log2 (η_A·n/n0)`` — the curves line up if the best ``η_A`` falls like
    ``1/n``. Right, equal-rate
    scaling: the runs with ``η_A = η_B`` against ``log2 (η·n/n0)`` — under the theory their
    optimum drifts with the width, since no single exponent serves both factors."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.0), layout="constrained")
    else:
        fig = axes[0].figure
    widths = sorted(set(slices["width"]) | set(equal["width"]))
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.1, 0.9, len(widths))), strict=True))
    for ax, data, what in ((axes[0], slices, "η_A"), (axes[1], equal, "η (= η_A = η_B)")):
        for w in widths:
            s = data[data["width"] == w].sort_values("log2_eta_a")
            if s.empty:
                continue
            label = f"n = {w}"
            ax.plot(
                s["log2_eta_a"] + math.log2(w / n0),
                s["lost"].clip(lower=1e-3),
                "o-",
                color=colors[w],
                ms=3,
                lw=1.2,
                label=label,
            )
        ax.set_yscale("log")
        ax.set_ylim(8e-4, 1.5)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(f"log2 ({what} · n/{n0})")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("fraction of the gain given up")
    row = slices["log2_eta_b"].iloc[0] if len(slices) else float("nan")
    axes[0].set_title(f"LoRA+ scaling: η_A at a fixed η_B = 2^{row:g}", fontsize=8)
    axes[1].set_title("equal rates (plain LoRA)", fontsize=8)
    return fig


def plot_real_optimal_rates(
    optima: pd.DataFrame,
    intervals: pd.DataFrame,
    fits: pd.DataFrame,
    slices: pd.DataFrame,
    equal: pd.DataFrame,
    *,
    n0: int,
    title: str = "",
) -> Figure:
    """Left: ``log2 η_A*``, ``log2 η_B*``, ``log2 λ*`` against ``log2 n`` (per-width free
    bootstrap intervals as bars, the least-squares line, its slope with interval and verdict in
    the legend, the theory's slope dashed through the mean). Middle and right:
    :func:`plot_rate_pictures`."""
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.4), layout="constrained")
    ax = axes[0]
    x = np.log2(optima["width"].to_numpy(float))
    for k, (key, label) in enumerate(_NAMES.items()):
        y = optima[key].to_numpy(float)
        lo, hi = [], []
        for w in optima["width"]:
            _, a, b = LA.interval(intervals, int(w), key)
            lo.append(a)
            hi.append(b)
        err = np.array([y - np.array(lo), np.array(hi) - y])
        err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
        ax.errorbar(x, y, yerr=err, fmt=MARKERS[k], color=PALETTE[k], capsize=3, ms=6)
        f = fits[fits["quantity"] == key].iloc[0]
        ok = np.isfinite(y)
        label = (
            f"{label}: slope {f.slope:+.2f} [{f.ci_low:+.2f}, {f.ci_high:+.2f}] "
            f"({f.verdict}; theory {f.predicted:+.0f})"
        )
        if fit_line(ax, x, y, PALETTE[k], label):
            xm, ym = x[ok].mean(), y[ok].mean()
            ax.plot(x, ym + f.predicted * (x - xm), "--", color=PALETTE[k], lw=0.8, alpha=0.7)
    ax.set_xlabel("log2 width n")
    ax.set_ylabel("log2 optimal rate / ratio")
    ax.legend(fontsize=6.5, loc="best")
    ax.grid(True, alpha=0.3)
    ax.set_title("optimum per width (bars: 95% bootstrap over seeds)", fontsize=8)
    plot_rate_pictures(slices, equal, n0=n0, axes=axes[1:])
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_real_speedup(
    curves: pd.DataFrame, intervals: pd.DataFrame, *, steps: int, title: str = ""
) -> Figure:
    """One panel per width: seed-mean validation loss against the finetuning step for tuned
    LoRA, LoRA+ at the fixed ratio with ``η_A`` tuned, the best run and the ``B``-only baseline
    (bands: ± one standard error over seeds); the dashed line is tuned LoRA's final loss and the
    title gives LoRA+'s speed-up ``T / steps to reach it`` with its bootstrap interval."""
    widths = sorted(curves["width"].unique())
    n = len(widths)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 4.2), squeeze=False, layout="constrained")
    for ax, w in zip(axes[0], widths, strict=True):
        c = curves[curves["width"] == w]
        for name, g in c.groupby("run", sort=False):
            g = g.sort_values("step")
            col = _run_color(name)
            ax.plot(g["step"], g["val_loss"], "-", color=col, lw=1.4, label=name)
            ax.fill_between(
                g["step"],
                g["val_loss"] - g["sem"],
                g["val_loss"] + g["sem"],
                color=col,
                alpha=0.2,
                lw=0,
            )
        lora = c[c["run"] == "LoRA (tuned η)"]
        if not lora.empty:
            target = float(lora.loc[lora["step"].idxmax(), "val_loss"])
            ax.axhline(target, color=PALETTE[0], ls="--", lw=0.8)
        v, lo, hi = LA.interval(intervals, int(w), "speedup")
        reached = intervals[(intervals["width"] == w) & (intervals["quantity"] == "speedup")]
        frac = float(reached["reached"].iloc[0]) if not reached.empty else np.nan
        if np.isfinite(v):
            text = f"LoRA+ speed-up {v:.2f}× [{lo:.2f}, {hi:.2f}]"
        else:
            text = "LoRA+ never reaches tuned LoRA"
        ax.set_title(
            f"n = {w}\n{text}" + (f" (reached in {100 * frac:.0f}%)" if frac < 1 else ""),
            fontsize=8,
        )
        ax.set_xlabel("finetuning step")
        lo_y = float(np.nanmin(c["val_loss"]))
        hi_y = float(np.nanmax(c.loc[c["step"] > 0, "val_loss"])) if (c["step"] > 0).any() else lo_y
        ax.set_ylim(lo_y - 0.05 * (hi_y - lo_y), hi_y + 0.05 * (hi_y - lo_y))
        ax.set_xlim(0, steps)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("validation loss (nats / byte)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
