"""What a ladder's landscapes say: optimal rates per width, their scaling with intervals, the
best equal-rate and fixed-ratio runs, and LoRA+'s speed-up — all from the tidy store rows.

Per width, the landscape is the final validation loss (step ``T``) of every rate pair, averaged
over seeds. The optimum ``(log2 η_A*, log2 η_B*)`` is located by
:func:`~loraplus_lab.sims.landscape.find_optimum_scattered` (a quadratic fit around the best run,
the grid's refinement patch included); ``λ* = η_B*/η_A*``. Three references come from the lines:
tuned plain LoRA (the best run with ``η_A = η_B``), LoRA+ as practised (the best run with
``η_B = λ·η_A`` at the spec's λ, ``η_A`` tuned) and the ``B``-only baseline (the best run with
``η_A = 0``). Losses are compared through the finetuning gain ``L_before − L*`` (``L_before``: the
base's validation loss on the finetuning corpus, before any step): a gap of 0.1 means a run gave
up a tenth of the gain the best run achieved.

Intervals are percentile bootstraps over seeds that **re-find everything in every resample**:
the seeds are drawn with replacement (the same draw at every width), the seed-mean landscapes are
recomputed, the optimum is located afresh, the tuned runs are re-selected, and the statistic
(a slope across widths, a speed-up) is recomputed. The point estimate uses all seeds.

Speed-up: with ``L_target`` the last point of tuned LoRA's seed-mean validation curve, the step
from which LoRA+'s own seed-mean curve stays at or below it (linear interpolation at its last
crossing) gives the speed-up ``T / steps``. A curve that ends above the target gives no
speed-up (NaN), and the fraction of resamples in which it is reached is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loraplus_lab.sims import measure
from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.landscape import find_optimum_scattered, seed_bootstrap

#: Half-width of the window around a predicted slope that counts as agreement.
TOLERANCE = 0.3


@dataclass(frozen=True)
class Landscapes:
    """The losses of one ladder, as arrays: ``loss[w][s, c]`` the final loss (the landscape's
    value) for width index ``w``, seed ``s`` and configuration ``c`` (``u[c] = log2 η_A``,
    ``-inf`` for ``η_A = 0``; ``v[c] = log2 η_B``); ``curves[w][s, c, e]`` the validation curve at
    evaluation ``e`` (``steps[e]``); ``before[w]`` the base's final-set loss before finetuning;
    NaN where a run diverged or is missing."""

    widths: np.ndarray
    seeds: np.ndarray
    steps: np.ndarray
    u: list[np.ndarray]
    v: list[np.ndarray]
    loss: list[np.ndarray]
    curves: list[np.ndarray]
    before: np.ndarray
    extras: list[pd.DataFrame]


def landscapes(df: pd.DataFrame) -> Landscapes:
    """Arrange the ``part == "finetune"`` rows of a ladder store (every width must have the
    same seeds)."""
    ft = df[df["part"] == "finetune"] if "part" in df.columns else df
    if ft.empty:
        raise InputError("the results hold no finetuning run")
    widths = np.sort(ft["width"].unique())
    seeds = np.sort(ft["seed"].unique())
    steps = np.sort(ft["step"].unique())
    T = steps.max()
    us, vs, losses, curves, extras = [], [], [], [], []
    before = np.empty(len(widths))
    for i, w in enumerate(widths):
        g = ft[ft["width"] == w]
        if set(g["seed"].unique()) != set(seeds):
            raise InputError(f"width {w} lacks some seeds: every width needs the same seeds")
        pts = g[["eta_a", "eta_b"]].drop_duplicates().sort_values(["eta_a", "eta_b"])
        key = list(zip(pts["eta_a"], pts["eta_b"], strict=True))
        index = {k: j for j, k in enumerate(key)}
        c = np.array([index[k] for k in zip(g["eta_a"], g["eta_b"], strict=True)])
        s = np.searchsorted(seeds, g["seed"].to_numpy())
        e = np.searchsorted(steps, g["step"].to_numpy())
        dead = g["diverged"].to_numpy(dtype=bool)
        C = np.full((len(seeds), len(key), len(steps)), np.nan)
        C[s, c, e] = np.where(dead, np.nan, g["val_loss"].to_numpy(float))
        F = np.full((len(seeds), len(key)), np.nan)
        at_T = (g["step"] == T).to_numpy()
        F[s[at_T], c[at_T]] = np.where(dead[at_T], np.nan, g["final_loss"].to_numpy(float)[at_T])
        with np.errstate(divide="ignore"):
            us.append(np.log2(pts["eta_a"].to_numpy(float)))
        vs.append(np.log2(pts["eta_b"].to_numpy(float)))
        curves.append(C)
        losses.append(F)
        b = g.loc[g["step"] == 0, "final_loss"].to_numpy(float)
        before[i] = float(np.nanmedian(b)) if np.isfinite(b).any() else np.nan
        last = g[at_T].copy()
        last["c"] = c[at_T]
        extras.append(last)
    return Landscapes(widths, seeds, steps, us, vs, losses, curves, before, extras)


def _weights(idx: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(np.asarray(idx, dtype=int), minlength=n).astype(float)


def _mean(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over the first axis (seeds) with weights ``w``; NaN where a seed of positive
    weight is NaN (a configuration that diverged for one seed counts as diverged)."""
    x = np.moveaxis(values, 0, -1)
    bad = ~np.isfinite(x[..., w > 0]).all(-1)
    out = (np.where(np.isfinite(x), x, 0.0) * w).sum(-1) / w.sum()
    return np.where(bad, np.nan, out)


@dataclass(frozen=True)
class _Best:
    index: int
    loss: float


def _best_on(mask: np.ndarray, mean: np.ndarray) -> _Best | None:
    m = np.where(mask & np.isfinite(mean), mean, np.inf)
    if not np.isfinite(m).any():
        return None
    k = int(np.argmin(m))
    return _Best(k, float(mean[k]))


def line_masks(u: np.ndarray, v: np.ndarray, ratio: float | None) -> dict[str, np.ndarray]:
    """Which configurations lie on the equal-rate line, the fixed-ratio line, the ``B``-only line
    and the two-rate landscape (every run that trains ``A``)."""
    out = {
        "equal": np.isclose(u, v, atol=1e-6),
        "b_only": ~np.isfinite(u),
        "landscape": np.isfinite(u),
    }
    out["ratio"] = (
        np.isclose(v - u, math.log2(ratio), atol=1e-6) & np.isfinite(u)
        if ratio
        else np.zeros_like(u, dtype=bool)
    )
    return out


def _optimum(u: np.ndarray, v: np.ndarray, mean: np.ndarray):  # noqa: ANN202
    m = np.isfinite(u)
    return find_optimum_scattered(u[m], v[m], mean[m])


def _hit(curve: np.ndarray, steps: np.ndarray, target: float) -> float:
    """The step from which ``curve`` stays at or below ``target`` to its end (linear
    interpolation at its last crossing from above), or NaN where it ends above: a noisy curve
    that dips below the target and comes back up has not reached it yet."""
    ok = np.isfinite(curve)
    c, s = curve[ok], steps[ok]
    if c.size == 0 or c[-1] > target:
        return float("nan")
    above = np.flatnonzero(c > target)
    if above.size == 0:
        return float(s[0])
    k = above[-1] + 1  # the first evaluation of the final stretch at or below the target
    c0, c1 = c[k - 1], c[k]
    return float(s[k - 1] + (s[k] - s[k - 1]) * (c0 - target) / (c0 - c1))


def width_summary(L: Landscapes, i: int, w: np.ndarray, ratio: float | None) -> dict[str, float]:
    """Every per-width quantity for seed weights ``w`` (all ones: the point estimate)."""
    u, v = L.u[i], L.v[i]
    mean = _mean(L.loss[i], w)
    masks = line_masks(u, v, ratio)
    opt = _optimum(u, v, mean)
    before = L.before[i]
    best = _best_on(masks["landscape"], mean)
    out: dict[str, float] = {
        "log2_eta_a": opt.u,
        "log2_eta_b": opt.v,
        "log2_ratio": opt.v - opt.u,
        "opt_loss": opt.loss,
        "opt_method": opt.method,
        "at_edge": opt.at_edge,
        "loss_before": before,
        "best_loss": best.loss if best else np.nan,
        "_best_index": best.index if best else -1,
        "best_log2_eta_a": u[best.index] if best else np.nan,
        "best_log2_eta_b": v[best.index] if best else np.nan,
    }
    gain = before - out["best_loss"]
    out["gain"] = gain
    T = L.steps[-1]
    curves = _mean(L.curves[i], w)  # (configs, evals)
    for name in ("equal", "ratio", "b_only"):
        b = _best_on(masks[name], mean)
        out[f"{name}_loss"] = b.loss if b else np.nan
        out[f"{name}_log2_eta_a"] = u[b.index] if b else np.nan
        out[f"{name}_log2_eta_b"] = v[b.index] if b else np.nan
        out[f"{name}_gap"] = (b.loss - out["best_loss"]) / gain if b and gain > 0 else np.nan
        out[f"_{name}_index"] = b.index if b else -1
    # speed-up of the fixed-ratio line (LoRA+) over tuned LoRA
    ie, ir = int(out["_equal_index"]), int(out["_ratio_index"])
    if ie >= 0 and ir >= 0:
        target = curves[ie, -1]  # tuned LoRA's last point, on the curve's own windows
        t = _hit(curves[ir], L.steps, target)
        out["steps_to_target"] = t
        out["speedup"] = T / t if t > 0 else np.nan
        out["ratio_vs_equal"] = (out["equal_loss"] - out["ratio_loss"]) / out["equal_loss"]
    else:
        out["steps_to_target"] = out["speedup"] = out["ratio_vs_equal"] = np.nan
    # near-optimal set relative to the gain
    near = masks["landscape"] & np.isfinite(mean) & (mean - out["best_loss"] <= 0.05 * gain)
    out["near_optimal"] = int(near.sum())
    out["near_span_eta_a"] = float(np.ptp(u[near])) if near.any() else np.nan
    out["near_span_eta_b"] = float(np.ptp(v[near])) if near.any() else np.nan
    return out


def _weights_all(n: int) -> np.ndarray:
    return np.ones(n)


def optima_table(L: Landscapes, ratio: float | None) -> pd.DataFrame:
    """Per width, the point estimates of :func:`width_summary`, and how far ``A`` moved at the
    optimum and at tuned LoRA (``a_change``) and how much of their gain needs ``A`` to move
    (``gain_through_a = (L(A_0, B_T) − L(A_T, B_T)) / (L_before − L(A_T, B_T))``, mean over
    seeds)."""
    rows = []
    for i, width in enumerate(L.widths):
        r = width_summary(L, i, _weights_all(len(L.seeds)), ratio)
        ex = L.extras[i]
        for tag, idx in (("best", int(r["_best_index"])), ("equal", int(r["_equal_index"]))):
            if idx < 0:
                continue
            e = ex[ex["c"] == idx]
            if "a_change" not in e or "val_loss_a0" not in e:  # runs that do not record them
                r[f"{tag}_a_change"] = r[f"{tag}_gain_through_a"] = np.nan
                continue
            r[f"{tag}_a_change"] = float(e["a_change"].mean())
            through_a = (e["val_loss_a0"] - e["final_loss"]) / (L.before[i] - e["final_loss"])
            r[f"{tag}_gain_through_a"] = float(through_a.mean())
        rows.append({"width": int(width), **{k: v for k, v in r.items() if not k.startswith("_")}})
    return pd.DataFrame(rows)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def verdict(slope: float, low: float, high: float, predicted: float, tol: float = TOLERANCE) -> str:
    """:func:`loraplus_lab.sims.measure.verdict` with this module's tolerance: ``agrees`` (the
    interval holds the prediction and lies within ``± tol`` of it), ``close`` (it excludes the
    prediction but lies within the band), ``inconclusive`` (it holds the prediction but reaches
    beyond the band), ``differs`` (neither)."""
    return measure.verdict(slope, False, predicted, ci_low=low, ci_high=high, tolerance=tol)


def common_row(L: Landscapes, ratio: float | None = None, min_points: int = 5) -> float:
    """The ``log2 η_B`` row of the grid on which to read the best ``η_A`` at one fixed ``η_B``:
    of the rows on which every width ran at least ``min_points`` values of ``η_A`` (or, where
    none has that many, the rows with the most, three at least), the one nearest the widths'
    median ``log2 η_B*``; NaN where no row has three runs at every width."""
    counts: dict[float, int] = {}
    for k, (u, v) in enumerate(zip(L.u, L.v, strict=True)):
        vals, n = np.unique(np.round(v[np.isfinite(u)], 9), return_counts=True)
        here = dict(zip(vals.tolist(), n.tolist(), strict=True))
        counts = here if k == 0 else {r: min(c, here[r]) for r, c in counts.items() if r in here}
    best = max(counts.values(), default=0)
    if best < 3:
        return float("nan")
    need = min(min_points, best)
    rows = np.array(sorted(r for r, c in counts.items() if c >= need))
    star = np.median([width_summary(L, i, np.ones(len(L.seeds)), ratio)["log2_eta_b"]
                      for i in range(len(L.widths))])  # fmt: skip
    return float(rows[np.argmin(np.abs(rows - star))])


def line_minimum(x: np.ndarray, loss: np.ndarray) -> float:
    """The ``x`` of the lowest ``loss`` along a line of runs, refined by the parabola through the
    best run and its two neighbours (the best run itself at the line's end or where the parabola
    is not convex); NaN for an empty line."""
    ok = np.isfinite(x) & np.isfinite(loss)
    x, loss = x[ok], loss[ok]
    if x.size == 0:
        return float("nan")
    order = np.argsort(x)
    x, loss = x[order], loss[order]
    k = int(np.argmin(loss))
    if 0 < k < x.size - 1:
        (x0, x1, x2), (y0, y1, y2) = x[k - 1 : k + 2], loss[k - 1 : k + 2]
        d = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / d
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / d
        if a > 0:
            return float(-b / (2 * a))
    return float(x[k])


def row_optimum(L: Landscapes, i: int, w: np.ndarray, v: float) -> float:
    """``log2 η_A`` of the lowest seed-mean (weights ``w``) loss along the row ``log2 η_B = v``
    of width ``i`` (:func:`line_minimum`)."""
    mean = _mean(L.loss[i], w)
    on = np.isfinite(L.u[i]) & np.isclose(L.v[i], v)
    return line_minimum(L.u[i][on], mean[on])


def equal_optimum(L: Landscapes, i: int, w: np.ndarray) -> float:
    """``log2 η`` of the lowest seed-mean (weights ``w``) loss along the equal-rate line
    ``η_A = η_B = η`` of width ``i`` (:func:`line_minimum`; the tuned run itself is the line's
    best run, this is the rate between runs that the line's shape points to)."""
    mean = _mean(L.loss[i], w)
    on = np.isfinite(L.u[i]) & np.isclose(L.u[i], L.v[i], atol=1e-6)
    return line_minimum(L.u[i][on], mean[on])


#: Every slope :func:`scaling_fits` reports: key → (what it is, the theory's slope or NaN).
SLOPES = {
    "log2_eta_a": ("log2 η_A*", -1.0),
    "log2_eta_b": ("log2 η_B*", 0.0),
    "log2_ratio": ("log2 λ*", 1.0),
    "log2_product": ("log2 η_A*·η_B* (the valley)", -1.0),
    "log2_eta_a_at_row": ("log2 η_A at a fixed η_B", -1.0),
    "equal_log2_eta": ("log2 η of the best equal rate", float("nan")),
}


def scaling_fits(
    L: Landscapes,
    ratio: float | None = None,
    *,
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Slopes against ``log2 n`` of the quantities in :data:`SLOPES` — the optimum's
    ``log2 η_A*``, ``log2 η_B*``, ``log2 λ*`` and ``log2 η_A*·η_B*``; the best ``log2 η_A``
    along one fixed ``η_B`` row shared by every width (:func:`common_row`, column ``row``); the
    best equal rate (:func:`equal_optimum`) — with percentile intervals from the free bootstrap
    over seeds (the same resamples for all), the theory's slope and a verdict
    (:func:`verdict`)."""
    if len(L.widths) < 2:
        raise InputError(f"scaling fits need at least two widths, got {len(L.widths)}")
    x = np.log2(L.widths.astype(float))
    keys = list(SLOPES)
    S = len(L.seeds)
    row = common_row(L, ratio)

    def statistic(idx: np.ndarray) -> np.ndarray:
        w = _weights(idx, S)
        vals = np.empty((len(keys), len(x)))
        for i in range(len(x)):
            r = width_summary(L, i, w, ratio)
            vals[:, i] = [
                r["log2_eta_a"],
                r["log2_eta_b"],
                r["log2_ratio"],
                r["log2_eta_a"] + r["log2_eta_b"],
                row_optimum(L, i, w, row),
                equal_optimum(L, i, w),
            ]
        return np.array([_slope(x, v) for v in vals])

    point = statistic(np.arange(S))
    low, high = seed_bootstrap(statistic, S, n_boot, confidence, seed)
    rows = []
    for k, key in enumerate(keys):
        pred = SLOPES[key][1]
        rows.append(
            {
                "quantity": key,
                "slope": float(point[k]),
                "ci_low": float(low[k]),
                "ci_high": float(high[k]),
                "predicted": pred,
                "verdict": verdict(point[k], low[k], high[k], pred) if pred == pred else "",
                "row": row if key == "log2_eta_a_at_row" else np.nan,
            }
        )
    return pd.DataFrame(rows)


def per_width_intervals(
    L: Landscapes,
    ratio: float | None,
    keys: Sequence[str] = (
        "log2_eta_a",
        "log2_eta_b",
        "log2_ratio",
        "speedup",
        "ratio_vs_equal",
        "equal_gap",
        "ratio_gap",
        "b_only_gap",
    ),
    *,
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per width and quantity: the point estimate and a percentile interval from the free
    bootstrap over seeds; for the speed-up also the fraction of resamples in which LoRA+ reached
    tuned LoRA's final loss (``reached``)."""
    S = len(L.seeds)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, S, size=(n_boot, S))
    rows = []
    for i, width in enumerate(L.widths):
        point = width_summary(L, i, np.ones(S), ratio)
        boot = [width_summary(L, i, _weights(d, S), ratio) for d in draws]
        for key in keys:
            vals = np.array([b[key] for b in boot], dtype=float)
            fin = vals[np.isfinite(vals)]
            a = (1 - confidence) / 2
            lo, hi = np.quantile(fin, [a, 1 - a]) if fin.size >= 10 else (np.nan, np.nan)
            rows.append(
                {
                    "width": int(width),
                    "quantity": key,
                    "value": float(point[key]),
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "reached": float(np.isfinite(vals).mean()),
                }
            )
    return pd.DataFrame(rows)


def curves_table(L: Landscapes, ratio: float | None) -> pd.DataFrame:
    """Seed-mean validation curves (with the standard error over seeds) of tuned LoRA, LoRA+ at
    the spec's λ with ``η_A`` tuned, the best two-rate run and the best ``B``-only run, per
    width."""
    rows = []
    S = len(L.seeds)
    for i, width in enumerate(L.widths):
        r = width_summary(L, i, np.ones(S), ratio)
        picks = {
            "LoRA (tuned η)": int(r["_equal_index"]),
            f"LoRA+ (λ = {ratio:g}, tuned η_A)" if ratio else "LoRA+": int(r["_ratio_index"]),
            "best (η_A, η_B)": int(r["_best_index"]),
            "B only (A frozen)": int(r["_b_only_index"]),
        }
        for name, c in picks.items():
            if c < 0:
                continue
            C = L.curves[i][:, c, :]
            m = np.nanmean(C, axis=0)
            se = np.nanstd(C, axis=0, ddof=1) / math.sqrt(S) if S > 1 else np.zeros_like(m)
            for e, step in enumerate(L.steps):
                rows.append(
                    {
                        "width": int(width),
                        "run": name,
                        "log2_eta_a": float(L.u[i][c]),
                        "log2_eta_b": float(L.v[i][c]),
                        "step": int(step),
                        "val_loss": float(m[e]),
                        "sem": float(se[e]),
                    }
                )
    return pd.DataFrame(rows)


def pretrain_table(df: pd.DataFrame, L: Landscapes | None = None) -> pd.DataFrame:
    """Per width: parameters, final pretraining loss (mean of the last 5 % of steps),
    validation loss on the pretraining corpus, and — with ``L`` — the base's validation loss on
    the finetuning corpus before finetuning."""
    pre = df[df["part"] == "pretrain"]
    rows = []
    for w, g in pre.groupby("width"):
        g = g.sort_values("step")
        tail = max(1, len(g) // 20)
        last = g.iloc[-1]
        row = {
            "width": int(w),
            "params": int(last["params"]),
            "pretrain_train_loss": float(g["train_loss"].iloc[-tail:].mean()),
            "pretrain_val_loss": float(last["val_loss"]),
            "pretrain_seconds": float(last["seconds"]),
        }
        if L is not None and int(w) in set(L.widths.tolist()):
            row["finetune_val_loss_before"] = float(L.before[list(L.widths).index(int(w))])
        rows.append(row)
    return pd.DataFrame(rows)


def finals_table(L: Landscapes, ratio: float | None) -> pd.DataFrame:
    """Per width × configuration: ``log2 η_A`` (``-inf``: ``A`` frozen), ``log2 η_B``, the
    seed-mean final loss and ``lost``, the fraction of the width's best gain it gives up."""
    rows = []
    S = len(L.seeds)
    for i, width in enumerate(L.widths):
        mean = _mean(L.loss[i], np.ones(S))
        best = width_summary(L, i, np.ones(S), ratio)["best_loss"]
        gain = L.before[i] - best
        for c in range(len(mean)):
            rows.append(
                {
                    "width": int(width),
                    "log2_eta_a": float(L.u[i][c]),
                    "log2_eta_b": float(L.v[i][c]),
                    "loss": float(mean[c]),
                    "lost": float((mean[c] - best) / gain) if gain > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def slices_table(finals: pd.DataFrame, row: float) -> pd.DataFrame:
    """Per width, the runs along ``η_A`` on the row ``log2 η_B = row`` (one row every width ran:
    the picture of loss against the rate, one curve per width, at one fixed ``η_B``)."""
    f = finals[np.isfinite(finals["log2_eta_a"]) & np.isclose(finals["log2_eta_b"], row)]
    return f.reset_index(drop=True)


def equal_line_table(finals: pd.DataFrame) -> pd.DataFrame:
    """Per width, the runs with equal rates ``η_A = η_B`` (plain LoRA's line)."""
    f = finals[np.isfinite(finals["log2_eta_a"])]
    return f[np.isclose(f["log2_eta_a"], f["log2_eta_b"])].reset_index(drop=True)


def analyze(df: pd.DataFrame, ratio: float | None, *, n_boot: int = 999, seed: int = 0) -> dict:
    """Every table of a ladder's results: ``optima``, ``fits``, ``intervals``, ``curves``,
    ``finals``, ``slices`` (along η_A at the fixed η_B ``row``), ``equal`` (the equal-rate line)
    and ``pretrain``."""
    L = landscapes(df)
    optima = optima_table(L, ratio)
    finals = finals_table(L, ratio)
    fits = scaling_fits(L, ratio, n_boot=n_boot, seed=seed)
    row = float(fits.loc[fits["quantity"] == "log2_eta_a_at_row", "row"].iloc[0])
    return {
        "optima": optima,
        "fits": fits,
        "intervals": per_width_intervals(L, ratio, n_boot=n_boot, seed=seed),
        "curves": curves_table(L, ratio),
        "finals": finals,
        "slices": slices_table(finals, row),
        "row": row,
        "equal": equal_line_table(finals),
        "pretrain": pretrain_table(df, L),
        "seeds": len(L.seeds),
        "steps": int(L.steps[-1]),
    }


def report(tables: dict, ratio: float | None) -> str:
    """The numbers a reader needs, as text: per width the optimum, the references and the
    speed-up with their intervals, then the slopes (free bootstrap over seeds)."""
    iv = tables["intervals"]
    lines = [
        f"Real-model ladder: {tables['seeds']} seeds, T = {tables['steps']} finetuning steps; "
        "intervals: 95% percentile bootstrap over seeds, optimum and tuned runs re-found in "
        "every resample.",
        "",
    ]
    pre = tables["pretrain"]
    if len(pre):
        lines.append("pretrained bases (validation loss in nats per byte):")
        for r in pre.itertuples():
            extra = (
                f", on the finetuning corpus before finetuning {r.finetune_val_loss_before:.3f}"
                if hasattr(r, "finetune_val_loss_before")
                else ""
            )
            lines.append(
                f"  n = {r.width:>5}: {r.params:>9,} parameters, pretraining validation "
                f"{r.pretrain_val_loss:.3f}{extra}"
            )
        v = pre.sort_values("width")["pretrain_val_loss"].to_numpy()
        lines.append(
            "  wider is better at every step of the ladder"
            if np.all(np.diff(v) < 0)
            else "  NOT monotone: a wider base is not better at every step"
        )
    lines += ["", "per width (log2 rates; λ* = η_B*/η_A*):"]

    def cell(w: int, key: str, fmt: str) -> str:
        val, lo, hi = interval(iv, w, key)
        if not np.isfinite(val):
            return "n/a"
        ci = f" [{lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) else ""
        return f"{val:{fmt}}{ci}"

    for r in tables["optima"].itertuples():
        w = int(r.width)
        edge = " (at the grid's edge: a bound)" if r.at_edge else ""
        lines.append(
            f"  n = {w:>5}: η_A* {cell(w, 'log2_eta_a', '+.2f')}, η_B* "
            f"{cell(w, 'log2_eta_b', '+.2f')}, λ* {cell(w, 'log2_ratio', '+.2f')}{edge}"
        )
        gaps = f"tuned LoRA gives up {cell(w, 'equal_gap', '.1%')} of it, LoRA+ (λ = {ratio:g}) "
        gaps += cell(w, "ratio_gap", ".1%")
        if np.isfinite(r.b_only_gap):
            gaps += f", B only {cell(w, 'b_only_gap', '.1%')}"
        lines.append(f"           gain {r.gain:.4f} nats; {gaps}")
        speed = cell(w, "speedup", ".2f")
        speed = "not reached" if speed == "n/a" else f"{speed}×"
        moved = ""
        if np.isfinite(r.best_a_change):
            moved = (
                f"; ‖A_T−A_0‖/‖A_0‖ at the optimum {r.best_a_change:.2f}, share of its gain "
                f"that needs A to move {100 * r.best_gain_through_a:.0f}%"
            )
        lines.append(
            f"           LoRA+ speed-up over tuned LoRA {speed}, final loss below tuned LoRA's "
            f"by {cell(w, 'ratio_vs_equal', '+.2%')} (negative: above){moved}"
        )
    lines += [
        "",
        "slopes against log2 n (verdicts read the interval against the theory's slope and a "
        "band of ±0.3 around it):",
    ]
    for r in tables["fits"].itertuples():
        name = SLOPES[r.quantity][0]
        if r.quantity == "log2_eta_a_at_row":
            name += f" (log2 η_B = {r.row:g})"
        theory = f"theory {r.predicted:+.0f} → {r.verdict}" if r.predicted == r.predicted else ""
        lines.append(f"  {name}: {r.slope:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]  {theory}")
    return "\n".join(lines)


def interval(iv: pd.DataFrame, width: int, key: str) -> tuple[float, float, float]:
    """``(value, ci_low, ci_high)`` of ``key`` at ``width`` in a :func:`per_width_intervals`
    table; NaNs where it has none."""
    r = iv[(iv["width"] == width) & (iv["quantity"] == key)]
    if r.empty:
        return (np.nan,) * 3
    r = r.iloc[0]
    return float(r["value"]), float(r["ci_low"]), float(r["ci_high"])
