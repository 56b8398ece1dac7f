"""Figures, each a function of a tidy DataFrame (or of the calculus's phase diagram).

Collection and plotting meet only in DataFrames: nothing here runs a simulation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from loraplus_lab.theory.gamma import REGIME_LABELS, PhaseDiagram

DELTA_NAMES = {"delta1": "δ¹ (A moves)", "delta2": "δ² (B moves)", "delta3": "δ³ (cross)"}
#: Legend names of the other statistics a coordinate check may draw.
STAT_NAMES = {
    **DELTA_NAMES,
    "za_mean_abs": "|Z_A| = |A x|",
    "zb_mean_abs": "|Z_B|",
    "norm_a": "‖A‖",
    "norm_b": "‖B‖",
}
PALETTE = sns.color_palette("colorblind")
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D"]


def plot_delta_coordcheck(
    df: pd.DataFrame,
    *,
    quantities: Sequence[str] = ("delta1", "delta2", "delta3"),
    title: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """δ magnitudes against width, one panel per step, as a coordinate check looks.

    ``df`` is the tidy output of :func:`loraplus_lab.sims.toy.simulate_batch`. Each line is the
    mean over seeds of one quantity (colour: ``|δ^k|`` or another statistic such as ``|Z_A|``)
    under one parametrization (line style); the band is ± one standard error over seeds.
    Diverged rows are left out; a quantity that is exactly zero at a step is named in the panel
    instead of drawn (a log axis has no zero), and so is one that matches an earlier quantity to
    0.1% at every width, which a log axis cannot tell apart (it is drawn thinner, on top of the
    one it matches, which would otherwise vanish under it). The y label defaults to "mean |δ|
    over seeds" when every quantity is a δ.
    """
    d = df[(df["step"] >= 1) & ~df["diverged"]]
    steps = sorted(d["step"].unique())
    params = list(dict.fromkeys(df["param"]))
    ncol = min(len(steps), 4)
    nrow = int(np.ceil(len(steps) / ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow + 0.6), squeeze=False, sharex=True
    )
    for ax in axes.flat[len(steps) :]:
        ax.set_visible(False)
    for ax, t in zip(axes.flat, steps, strict=False):
        dt = d[d["step"] == t]
        zero_notes: dict[str, list[str]] = {}
        equal_notes: dict[tuple[str, str], list[str]] = {}
        for qi, q in enumerate(quantities):
            for pi, p in enumerate(params):
                g = dt[dt["param"] == p].groupby("width")[q]
                mean, se = g.mean(), g.sem().fillna(0.0)
                if len(mean) and (mean == 0).all():
                    zero_notes.setdefault(q, []).append(p)
                    continue
                same = next(
                    (
                        r
                        for r in quantities[:qi]
                        if np.allclose(
                            dt[dt["param"] == p].groupby("width")[r].mean(), mean, rtol=1e-3, atol=0
                        )
                    ),
                    None,
                )
                if same is not None:
                    equal_notes.setdefault((q, same), []).append(p)
                mean = mean[mean > 0]
                if mean.empty:
                    continue
                se = se.reindex(mean.index)
                ax.plot(
                    mean.index,
                    mean.values,
                    LINESTYLES[pi % len(LINESTYLES)],
                    marker=MARKERS[pi % len(MARKERS)],
                    ms=2 if same is not None else 3,
                    lw=0.8 if same is not None else 1.5,
                    color=PALETTE[qi],
                )
                lo = np.clip(mean - se, mean * 0.05, None)
                ax.fill_between(mean.index, lo, mean + se, color=PALETTE[qi], alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(f"step t = {t}")
        ax.set_xlabel("width n")
        notes = [f"{_short(q)} ≡ 0 ({', '.join(ps)})" for q, ps in zero_notes.items()] + [
            f"{_short(q)} ≈ {_short(r)} ({', '.join(ps)})" for (q, r), ps in equal_notes.items()
        ]
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom")
        ax.grid(True, which="major", alpha=0.3)
    if ylabel is None:
        deltas = all(q in DELTA_NAMES for q in quantities)
        ylabel = "mean |δ| over seeds" if deltas else "mean over seeds"
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    handles = [
        plt.Line2D([], [], color=PALETTE[i], label=STAT_NAMES.get(q, q))
        for i, q in enumerate(quantities)
    ] + [
        plt.Line2D(
            [],
            [],
            color="0.3",
            ls=LINESTYLES[i % len(LINESTYLES)],
            marker=MARKERS[i % len(MARKERS)],
            ms=3,
            label=p,
        )
        for i, p in enumerate(params)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _short(q: str) -> str:
    """A statistic's short name: ``δ¹`` for ``delta1``, ``|Z_A|`` for ``za_mean_abs``."""
    return STAT_NAMES.get(q, q).split(" (")[0].split(" = ")[0]


REGIME_COLORS = dict(
    zip(
        REGIME_LABELS,
        ["#d9d9d9", "#fdb863", "#b2abd2", "#80cdc1", "#92c5de", "#1a9850"],
        strict=False,
    )
)


def plot_phase_diagrams(
    diagrams: Sequence[PhaseDiagram],
    titles: Sequence[str],
    *,
    mark: tuple[float, float] | None = None,
    suptitle: str | None = None,
) -> Figure:
    """Regimes of the exponent calculus over the ``(c_A, c_B)`` plane, one panel per diagram.

    The dashed diagonal is plain LoRA (``c_A = c_B``); the hollow star is LoRA+
    (``c_A = −1, c_B = 0``), drawn as an outline so that the colour of the cell under it (on a
    fine grid the single efficient cell) stays visible; ``mark`` adds a cross at a user's point.
    """
    n = len(diagrams)
    ncol = min(n, 3)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow + 0.8), squeeze=False)
    cmap = ListedColormap([REGIME_COLORS[k] for k in REGIME_LABELS])
    code = {k: i for i, k in enumerate(REGIME_LABELS)}
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, pd_, title in zip(axes.flat, diagrams, titles, strict=False):
        grid = np.vectorize(code.__getitem__)(pd_.labels)
        ca, cb = np.asarray(pd_.c_a, float), np.asarray(pd_.c_b, float)
        ax.pcolormesh(
            _edges(ca), _edges(cb), grid, cmap=cmap, vmin=-0.5, vmax=len(REGIME_LABELS) - 0.5
        )
        lo, hi = max(ca.min(), cb.min()), min(ca.max(), cb.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.plot([-1], [0], marker="*", ms=16, mfc="none", mec="k", mew=1.2)
        if mark is not None:
            ax.plot([mark[0]], [mark[1]], marker="X", color="#d62728", ms=9, mec="w")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("c_A  (η_A ∝ n^c_A)")
        ax.set_ylabel("c_B  (η_B ∝ n^c_B)")
    handles = [Patch(color=REGIME_COLORS[k], label=k) for k in REGIME_LABELS]
    handles += [
        plt.Line2D([], [], color="k", ls="--", label="LoRA: c_A = c_B"),
        plt.Line2D([], [], marker="*", ls="", ms=11, mfc="none", mec="k", label="LoRA+: (−1, 0)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _edges(c: np.ndarray) -> np.ndarray:
    """Cell edges for pcolormesh from cell centres."""
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def plot_landscapes(
    surfaces: Sequence, optima: pd.DataFrame, *, title: str | None = None, value: str = "loss"
) -> Figure:
    """One heatmap of ``log10`` mean loss per width over ``(log2 η_A, log2 η_B)`` (colours span
    two decades above the best; white where a seed diverged), with the
    near-optimal set (within 1% of the best) outlined, the equal-rate diagonal dashed, the fitted
    optimum (star) and the best equal-rate point (circle)."""
    from loraplus_lab.sims.landscape import near_optimal

    n = len(surfaces)
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.5), squeeze=False)
    for ax, s in zip(axes[0], surfaces, strict=True):
        M = s.mean()
        extent = [s.u[0] - 0.5, s.u[-1] + 0.5, s.v[0] - 0.5, s.v[-1] + 0.5]
        logm = np.log10(M)
        lo_c = float(np.nanmin(logm)) if np.isfinite(logm).any() else 0.0
        # two decades above the best: the structure near the optimum stays visible however
        # large the loss gets at the divergence edge (the colour bar saturates there)
        im = ax.imshow(
            logm.T,
            origin="lower",
            extent=extent,
            cmap="viridis",
            aspect="auto",
            vmin=lo_c,
            vmax=lo_c + 2.0,
        )
        du = s.u[1] - s.u[0] if len(s.u) > 1 else 1.0
        dv = s.v[1] - s.v[0] if len(s.v) > 1 else 1.0
        for i, j in zip(*np.nonzero(near_optimal(M)), strict=True):
            ax.add_patch(
                Rectangle((s.u[i] - du / 2, s.v[j] - dv / 2), du, dv, fill=False, ec="w", lw=1.2)
            )
        lo, hi = max(s.u[0], s.v[0]), min(s.u[-1], s.v[-1])
        ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
        row = optima[optima["width"] == s.width].iloc[0]
        ax.plot(row["log2_eta_a"], row["log2_eta_b"], "*", color="#d55e00", ms=13, mec="w")
        ax.plot(row["diag_log2_eta"], row["diag_log2_eta"], "o", color="#cc79a7", ms=7, mec="w")
        ax.set_title(f"n = {s.width}", fontsize=9)
        ax.set_xlabel("log2 η_A")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=f"log10 {value}", extend="max")
    axes[0, 0].set_ylabel("log2 η_B")
    handles = [
        plt.Line2D([], [], color="#d55e00", marker="*", ls="", ms=10, label="optimum (fit)"),
        plt.Line2D([], [], color="#cc79a7", marker="o", ls="", label="best equal rates"),
        plt.Line2D([], [], color="k", ls="--", label="η_A = η_B"),
        plt.Line2D([], [], color="0.5", lw=1.2, label="within 1% of best"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def fit_line(ax: Axes, x: np.ndarray, y: np.ndarray, color: object, label: str) -> bool:
    """Draw the least-squares line of ``y`` on ``x`` (finite points, at least two) on ``ax``
    with ``label``; whether it was drawn."""
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return False
    b = np.polyfit(x[ok], y[ok], 1)
    ax.plot(x, np.polyval(b, x), "-", color=color, lw=1.2, label=label)
    return True


def plot_optimal_rates(
    optima: pd.DataFrame, fits: pd.DataFrame, *, title: str | None = None
) -> Figure:
    """``log2 η_A*``, ``log2 η_B*`` and ``log2 λ*`` against ``log2 n`` with least-squares lines;
    the legend gives each fitted slope with its free bootstrap interval (the optimum found afresh
    in every resample), the anchored one in brackets when ``fits`` has it, and the predicted
    slope (see :func:`loraplus_lab.sims.landscape.scaling_fits`)."""
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    x = np.log2(optima["width"].to_numpy(float))
    names = {"log2_eta_a": "η_A*", "log2_eta_b": "η_B*", "log2_ratio": "λ* = η_B*/η_A*"}
    for k, (key, label) in enumerate(names.items()):
        y = optima[key].to_numpy(float)
        f = fits[fits["quantity"] == key].iloc[0]
        ax.plot(x, y, MARKERS[k], color=PALETTE[k])
        anchored = (
            f" (anchored [{f.anchored_low:+.2f}, {f.anchored_high:+.2f}])"
            if "anchored_low" in fits.columns
            else ""
        )
        fit_line(
            ax, x, y, PALETTE[k],
            f"log2 {label}: slope {f.slope:+.2f}, free [{f.ci_low:+.2f}, {f.ci_high:+.2f}]"
            f"{anchored}, predicted {f.predicted:+.0f}",
        )  # fmt: skip
    ax.set_xlabel("log2 width n")
    ax.set_ylabel("log2 of the optimal rate / ratio")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_loss_gap(
    optima: pd.DataFrame,
    fits: pd.DataFrame,
    *,
    title: str | None = None,
    gaps: pd.DataFrame | None = None,
) -> Figure:
    """Best loss with equal rates against the best loss overall, as the width grows; the gap
    per width with its bootstrap interval when ``gaps`` (``landscape.gap_table``) is given."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.4, 3.5))
    w = optima["width"]
    ax1.plot(w, optima["best_loss"], "o-", color=PALETTE[0], label="best on the (η_A, η_B) grid")
    ax1.plot(
        w, optima["diag_loss"], "s--", color=PALETTE[1], label="best with η_A = η_B (finer line)"
    )
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("width n")
    ax1.set_ylabel("loss after T steps")
    ax1.legend(fontsize=8)
    ax1.grid(True, alpha=0.3)
    f = fits[fits["quantity"] == "gap"].iloc[0]
    ax2.plot(w, 100 * optima["gap"], "D-", color=PALETTE[2])
    if gaps is not None:
        yerr = 100 * np.abs(gaps[["ci_low", "ci_high"]].to_numpy().T - gaps["gap"].to_numpy())
        ax2.errorbar(gaps["width"], 100 * gaps["gap"], yerr=yerr, fmt="none",
                     ecolor=PALETTE[2], capsize=3, lw=1)  # fmt: skip
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("width n")
    ax2.set_ylabel("equal-rate penalty (L_diag − L*)/L*  [%]")
    ax2.axhline(0, color="0.4", lw=0.8)
    ax2.set_title(
        f"gap per doubling of n: {100 * f.slope:+.1f} points\n"
        f"95% CI [{100 * f.ci_low:+.1f}, {100 * f.ci_high:+.1f}] (bootstrap over seeds)",
        fontsize=8,
    )
    ax2.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


#: Short names of the transfer strategies (``loraplus_lab.sims.transfer.STRATEGIES``).
STRATEGY_SHORT = {
    "a": "(a) equal,\ncarried over",
    "b": "(b) equal,\n∝ 1/n",
    "c": "(c) λ = 16,\nη_A carried",
    "d": "(d) theory\nexponents",
    "e": "(e) fitted\nexponents",
    "f": "(f) blend\n(default)",
}
_MODE_STYLE = {"theory": ("--", "d"), "free": (":", "e"), "blend": ("-", "f")}


def plot_transfer(df: pd.DataFrame, *, title: str | None = None, goal: float = 0.05) -> Figure:
    """The transfer validation, one column per task (rows of ``figures.collect_transfer``).

    Top: ``log2 η_A*`` (circles) and ``log2 η_B*`` (squares) against ``log2 n`` with percentile
    intervals over the bootstrap replicates — filled at the proxies, open at the target (tuned
    there directly) — and the rules fitted to the proxies extended to the target (dashed: the
    theory's exponents, dotted: fitted, solid: blend). Bottom: each strategy's loss regret at the
    target against tuning there (%, symmetric log scale) with its percentile interval; a hatched
    bar reaching the top marks rates at which a seed diverged; the dashed line is ``goal``, the
    dotted one the regret of tuning at the target itself (its fitted optimum run on the same
    seeds, against the best cell: how much of the reference is luck). A
    third row, where a task has held-out seeds: the same on the held-out seeds, against the
    target's tuned rates run there."""
    tasks = list(dict.fromkeys(df["task"]))
    held = bool((df["kind"] == "holdout").any())
    rows = 3 if held else 2
    fig, axes = plt.subplots(
        rows, len(tasks), figsize=(4.6 * len(tasks), 3.7 * rows), squeeze=False
    )
    for col, task in enumerate(tasks):
        d = df[df["task"] == task]
        ax = axes[0, col]
        opt = d[d["kind"] == "optimum"].sort_values("width")
        x = np.log2(opt["width"].to_numpy(float))
        for k, (key, name) in enumerate((("log2_eta_a", "η_A*"), ("log2_eta_b", "η_B*"))):
            y = opt[key].to_numpy(float)
            err = np.abs(opt[[f"{key}_low", f"{key}_high"]].to_numpy(float).T - y)
            for role, face, where in (
                ("proxy", PALETTE[k], "at the proxies"),
                ("target", "none", "tuned at the target"),
            ):
                m = (opt["role"] == role).to_numpy()
                ax.errorbar(
                    x[m], y[m], yerr=err[:, m], fmt=MARKERS[k], color=PALETTE[k], mfc=face,
                    capsize=3, lw=1, ms=6, label=f"{name} {where}",
                )  # fmt: skip
        xs = np.linspace(x.min() - 0.3, x.max() + 0.3, 50)
        for r in d[d["kind"] == "rule"].itertuples():
            ls, key = _MODE_STYLE[r.mode]
            for k, (c, s) in enumerate(((r.log2_c_a, r.a), (r.log2_c_b, r.b))):
                ax.plot(xs, c + s * xs, ls, color=PALETTE[k], lw=1, alpha=0.8)
        ax.set_xlabel("log2 width n")
        ax.set_ylabel("log2 optimal rate")
        ax.set_title(task, fontsize=9)
        ax.grid(True, alpha=0.3)
        if col == 0:
            extra = [
                plt.Line2D([], [], color="0.3", ls=_MODE_STYLE[m][0], label=f"rule: {m}")
                for m in ("theory", "free", "blend")
            ]
            h, _ = ax.get_legend_handles_labels()
            ax.legend(handles=h + extra, fontsize=6, loc="best")
        st = d[(d["kind"] == "strategy") & (d["strategy"] != "target")]
        tuned = d.loc[(d["kind"] == "strategy") & (d["strategy"] == "target"), "regret"]
        t = st.iloc[0]
        _regret_bars(
            axes[1, col],
            st,
            goal,
            f"proxies n = {t['proxies']} → target n = {int(t['target'])}\n"
            f"{int(t['seeds'])} seeds, {int(t['replicates'])} bootstrap replicates",
            "loss regret at the target [%]",
            float(tuned.iloc[0]) if len(tuned) else None,
        )
        if held:
            hall = d[d["kind"] == "holdout"]
            ho = hall[hall["strategy"] != "target"]
            ax = axes[2, col]
            if len(ho):
                own = hall.loc[hall["strategy"] == "target", "diverged"]
                risk = float(own.iloc[0]) if len(own) else 0.0
                _regret_bars(
                    ax,
                    ho,
                    goal,
                    f"held out: the same rates on {int(ho['holdout_seeds'].iloc[0])} fresh "
                    "seeds,\nagainst the target's tuned rates run there"
                    + (
                        f"\n(which diverge on a fresh seed in {100 * risk:.0f}% of replicates)"
                        if risk > 0
                        else ""
                    ),
                    "regret on held-out seeds [%]",
                )
            else:
                ax.axis("off")
                ax.text(0.5, 0.5, "no held-out seeds", ha="center", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _regret_bars(
    ax, st: pd.DataFrame, goal: float, title: str, ylabel: str, own: float | None = None
) -> None:
    """Bars of each strategy's regret (%, symmetric log scale) with its percentile interval;
    hatched where its rates diverged, the dashed line at ``goal``; where ``own`` (a regret) is
    given, a dotted line at it: tuning at the target itself, its rates run on the same seeds."""
    pos = np.arange(len(st))
    reg = 100 * st["regret"].to_numpy(float)
    lo = 100 * st["regret_low"].to_numpy(float)
    hi = 100 * st["regret_high"].to_numpy(float)
    finite = np.isfinite(reg)
    shown = np.concatenate([reg[finite], hi[np.isfinite(hi)]])
    top = max(10.0, float(np.max(shown, initial=10.0)) * 3)
    colors = [PALETTE[2] if s in ("d", "e", "f") else PALETTE[7] for s in st["strategy"]]
    ax.bar(pos[finite], reg[finite], color=np.array(colors, dtype=object)[finite], alpha=0.8)
    for p in pos[~finite]:
        ax.bar(p, top, color="none", edgecolor="#d62728", hatch="//", lw=1)
        ax.text(p, top / 3, "diverged", rotation=90, ha="center", va="center", fontsize=7)
    ok = finite & np.isfinite(lo)
    hi_c = np.where(np.isfinite(hi), hi, top)
    ax.errorbar(pos[ok], reg[ok], yerr=[reg[ok] - lo[ok], hi_c[ok] - reg[ok]], fmt="none",
                ecolor="k", capsize=3, lw=1)  # fmt: skip
    for p, r, frac in zip(pos, reg, st["diverged"].to_numpy(float), strict=True):
        if np.isfinite(r):
            ax.text(p, max(r, 0) + 0.02, f"{r:.1f}%", ha="center", va="bottom", fontsize=6)
        if 0 < frac < 1 and np.isfinite(r):
            ax.text(p, top, f"{100 * frac:.0f}% of\nresamples\ndiverge", ha="center",
                    va="top", fontsize=5, color="#d62728")  # fmt: skip
    ax.axhline(100 * goal, color="0.3", ls="--", lw=0.8)
    if own is not None and np.isfinite(own):
        ax.axhline(100 * own, color="#9467bd", ls=":", lw=1.2)
        ax.text(len(st) - 0.5, 100 * own, f"tuning at the target, run: {100 * own:+.1f}%",
                ha="right", va="bottom", fontsize=6, color="#9467bd")  # fmt: skip
    ax.set_yscale("symlog", linthresh=1.0)
    low = np.concatenate([reg[finite], lo[np.isfinite(lo)]])
    ax.set_ylim(bottom=min(-1.0, float(np.min(low, initial=0.0)) * 1.5), top=top)
    ax.set_xticks(pos, [STRATEGY_SHORT.get(s, s) for s in st["strategy"]], fontsize=6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def plot_infinite_width(df: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The paper's toy tuned at ``n = ∞`` (rows of ``figures.collect_infinite_width``).

    Left: the limit's objective (log of the loss averaged over the steps, seed set 0) over the base
    rates, with its optimum (star) and the optima of the finite widths (dots, ``log2 n`` beside).
    Middle: the distance of each seed set's finite-width optimum from its limit optimum
    (octaves; thin: one set; thick: the root mean square over the sets) with ``n^{-1/2}``
    for reference. Right: what the limit's rates cost at width ``n`` (the objective there minus
    the width's own optimum, i.e. the log of the loss ratio), with ``n^{-1}`` for reference."""
    from loraplus_lab.sims.infinite_width import approach_rate

    grid = df[df["kind"] == "landscape"]
    app = df[df["kind"] == "approach"]
    fig, axes = plt.subplots(1, 3, figsize=(13.2, 3.9))
    ax = axes[0]
    u = np.sort(grid["log2_eta_a"].unique())
    v = np.sort(grid["log2_eta_b"].unique())
    J = grid.pivot(index="log2_eta_a", columns="log2_eta_b", values="objective").loc[u, v]
    Jm = J.to_numpy(float)
    best = np.nanmin(Jm)
    im = ax.pcolormesh(_edges(u), _edges(v), Jm.T, cmap="viridis", vmin=best, vmax=best + 3)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="log mean loss over the steps")
    s0 = app[app["set"] == 0].sort_values("width")
    lim = s0[~np.isfinite(s0["width"])].iloc[0]
    fin = s0[np.isfinite(s0["width"])]
    ax.plot(fin["log2_eta_a"], fin["log2_eta_b"], "o", color="w", ms=3)
    for r in fin.itertuples():
        ax.annotate(f"{np.log2(r.width):.0f}", (r.log2_eta_a, r.log2_eta_b), fontsize=6,
                    color="w", xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.plot(lim["log2_eta_a"], lim["log2_eta_b"], "*", color="#d55e00", ms=13, mec="w")
    ax.set_xlabel("log2 η̃_A  (η_A = η̃_A·n0/n)")
    ax.set_ylabel("log2 η̃_B  (η_B = η̃_B)")
    ax.set_title("n = ∞, seed set 0: the limit's optimum (star)\nand the finite widths' (log2 n)",
                 fontsize=8)  # fmt: skip
    for ax, col, ref, name in (
        (axes[1], "distance", -0.5, "distance of the optimum from n = ∞ [octaves]"),
        (axes[2], "regret", -1.0, "log loss at the limit's rates − at the width's own"),
    ):
        fa = app[np.isfinite(app["width"])]
        for _, g in fa.groupby("set"):
            g = g.sort_values("width")
            ax.plot(g["width"], g[col].clip(lower=1e-12), "-", color="0.7", lw=0.6)
        rms = np.sqrt(fa.groupby("width")[col].apply(lambda s: np.mean(s.to_numpy() ** 2)))
        rate = approach_rate(app, column=col)
        ax.plot(rms.index, rms.to_numpy(), "o-", color=PALETTE[0], lw=2,
                label=f"RMS over {rate['sets']} sets: slope {rate['slope']:+.2f} "
                f"[{rate['ci_low']:+.2f}, {rate['ci_high']:+.2f}]")  # fmt: skip
        w0 = float(rms.index[0])
        ax.plot(rms.index, rms.iloc[0] * (rms.index.to_numpy(float) / w0) ** ref, "--",
                color="0.3", lw=1, label=f"n^{ref:+g}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("width n")
        ax.set_ylabel(name, fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_rate_curves(
    curves: pd.DataFrame,
    optima: pd.DataFrame | None = None,
    *,
    rules: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    best_of: Mapping[str, str] | None = None,
    title: str | None = None,
    value: str = "loss",
    xlabel: str = "log2 η̃  (the rates at the smallest width n0)",
) -> Figure:
    """Loss against ``log2 η̃``, one curve per width (colour), one panel per rate rule: the
    picture of learning-rate transfer. Under a rule that scales the rates right with the width,
    the curves line up (their minima sit at the same ``η̃``) and their minima do not rise.

    ``curves`` is the tidy table of :func:`loraplus_lab.sims.landscape.curve_table` (``rule,
    width, log2_eta, loss``); a rate where a seed diverged (NaN) is left out, so a curve ends
    where the runs start to diverge. The y-axis stops at twice the largest loss at the smallest
    rate (where nothing is learnt yet). With ``optima``
    (:func:`loraplus_lab.sims.landscape.curve_optima`) each curve's minimum is marked (circles
    shrinking with the width, so that minima at the same place stay visible) and a last panel
    shows the best loss against the width, with its bootstrap interval, for the rules of
    ``best_of`` (rule → legend label; default: every rule, labelled as its panel). ``labels``
    maps a rule to its panel title.
    """
    rules = list(dict.fromkeys(curves["rule"])) if rules is None else list(rules)
    labels = dict(labels or {})
    widths = sorted(curves["width"].unique())
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.0, 0.85, len(widths))), strict=True))
    sizes = dict(zip(widths, np.linspace(11, 4, len(widths)), strict=True))
    npanel = len(rules) + (optima is not None)
    fig, axes = plt.subplots(1, npanel, figsize=(3.5 * npanel, 3.4), squeeze=False)
    axes = axes[0]
    d = curves[curves["rule"].isin(rules)]
    first = d[d["log2_eta"] == d.groupby(["rule", "width"])["log2_eta"].transform("min")]
    top = 2.0 * float(first["loss"].max())
    bottom = 0.7 * float(d["loss"].min())
    for ax, rule in zip(axes, rules, strict=False):
        for w in widths:
            g = d[(d["rule"] == rule) & (d["width"] == w)].sort_values("log2_eta")
            ax.plot(g["log2_eta"], g["loss"], "-", color=colors[w], lw=1.3)
            if optima is not None:
                o = optima[(optima["rule"] == rule) & (optima["width"] == w)]
                if len(o) and np.isfinite(o["best_loss"].iloc[0]):
                    ax.plot(
                        o["log2_eta"],
                        o["best_loss"],
                        "o",
                        mfc="none",
                        mec=colors[w],
                        mew=1.6,
                        ms=sizes[w],
                    )
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        ax.set_title(labels.get(rule, rule), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(value)
    handles = [plt.Line2D([], [], color=colors[w], lw=1.5, label=f"n = {w}") for w in widths]
    if optima is not None:
        ax = axes[-1]
        best_of = dict(best_of) if best_of else {r: labels.get(r, r) for r in rules}
        offsets = np.linspace(-0.1, 0.1, len(best_of)) if len(best_of) > 1 else [0.0]
        for k, ((rule, label), dx) in enumerate(zip(best_of.items(), offsets, strict=True)):
            g = optima[optima["rule"] == rule].sort_values("width")
            x = np.log2(g["width"].to_numpy(float)) + dx
            y = g["best_loss"].to_numpy(float)
            err = np.vstack([y - g["best_loss_low"].to_numpy(float), g["best_loss_high"] - y])
            style = MARKERS[k % len(MARKERS)] + LINESTYLES[k % len(LINESTYLES)]
            ax.errorbar(
                x, y, yerr=np.clip(err, 0, None), fmt=style, color=PALETTE[k], ms=5, capsize=3
            )
            handles.append(
                plt.Line2D([], [], color=PALETTE[k], marker=style[0], ls=style[1:], label=label)
            )
        ax.set_xlabel("log2 width n", fontsize=8)
        ax.set_title("best loss (95% bootstrap over seeds)", fontsize=9)
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    nrows = int(np.ceil(len(handles) / 4))
    fig.tight_layout(rect=(0, 0.06 + 0.05 * nrows, 1, 1))
    return fig
