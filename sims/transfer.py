"""Choosing ``η_A``, ``η_B`` and ``λ`` at a width you cannot afford to tune: transfer from proxies.

Tune on a few cheap proxy widths, fit how the optimum moves with the width, and predict it at the
width you will train — the μTransfer idea applied to LoRA+.

**Inputs.** Per proxy width ``n_i``: the optimum ``(u_i, v_i) = (log2 η_A*, log2 η_B*)`` of its
learning-rate landscape and its uncertainty, as :class:`ProxyOptima` — a point estimate per width
and ``B`` bootstrap replicates. Every source is turned into that one form:

- a toy grid sweep (the sweep store's rows, or any tidy DataFrame with ``width, seed, step,
  eta_a, eta_b, diverged`` and a loss column): :func:`optima_from_surfaces`, a *free* bootstrap
  over seeds that re-finds every optimum in every resample (the same resampled seeds at every
  width, so the replicates are joint across widths);
- the real-model ladder's rows (``part, width, seed, eta_a, eta_b, step, final_loss, val_loss,
  diverged``): :func:`optima_from_ladder`, the same free bootstrap through
  ``loraplus_lab.sims.realmodels.ladder_analysis``;
- per-seed optima (``width, seed, log2_eta_a, log2_eta_b``: each seed tuned on its own):
  :func:`optima_from_seed_optima`;
- a per-width table with intervals or standard errors (``width, log2_eta_a, log2_eta_b`` with
  ``se_*`` or ``*_low``/``*_high`` columns, or the long ``width, quantity, value, ci_low,
  ci_high`` form): :func:`optima_from_table`, a parametric bootstrap (independent normals).

:func:`optima_from_results` tells these apart by their columns; :func:`load_results` reads a
sweep store folder, a CSV or a Parquet file.

**The rule.** For each factor separately, ``log2 η*(n) = log2 c + k·log2 n`` — the rule
``η_A = c_A·n^a``, ``η_B = c_B·n^b`` — fitted by least squares across the proxy widths, every
width counting equally. (Weighting the widths by the inverse spread of their replicates favours,
with a few seeds, the widths whose spread came out small by chance, and the intervals then fall
short: 90% measured for a nominal 95% on the synthetic test of ``tests/test_transfer.py``.) The
exponent is chosen in one of three modes (:func:`fit_rule`):

- ``"theory"``: LoRA+'s exponents ``(a, b) = (−1, 0)`` (η_A = Θ(1/n), η_B = Θ(1)), only ``c_A``,
  ``c_B`` fitted;
- ``"free"``: the exponents fitted too;
- ``"blend"`` (the default): the fitted exponent shrunk toward the theory's by the departure
  the data establish, ``k = k_th + w·(k̂ − k_th)`` with ``w = δ²/(δ² + s²)``, ``δ = max(0,
  |k̂ − k_th| − 1.96·s)`` and ``s`` the standard error of ``k̂`` that its bootstrap interval
  implies (:func:`blend_weight`, :func:`slope_spread`).

Why the blend. Every mode's line passes through the centre ``(x̄, ȳ)`` of the proxies, so at the
target ``x_t = log2 n_t`` the modes differ only by ``(k − k_true)·(x_t − x̄)``: the error of the
exponent times the distance extrapolated, four octaves or more. The free exponent is unbiased but
noisy — two to four proxies one to three octaves apart leave it an uncertainty ``s`` of tenths
(Adam's landscapes have a long, nearly flat valley along ``η_A·η_B ≈ const``), which four octaves
turn into a factor of 2 or more in the rates. The theory's exponent has no variance but is exact
only as ``n → ∞``; at finite widths the optimum can move a little faster or slower (the linear
task under GD: ``η_A*`` slope −1.08). Writing ``δ = k_true − k_th``, the weight minimising the
squared error of ``k_th + w(k̂ − k_th)`` is ``w* = δ²/(δ² + s²)``. The data know ``δ`` only
through ``k̂``; the blend plugs in the smallest departure they establish at 95% — zero (the
theory kept) unless the fitted exponent's 95% interval excludes the theory's, and beyond that
a weight that grows towards 1 as the departure grows past its noise. (Plugging in the unbiased
``(k̂ − k_th)² − s²`` instead, the positive-part James–Stein rule, follows a fitted exponent
barely one standard error from the theory; with few proxies that is mostly noise.) The weight is
decided once, from all the data; the replicates use the same weight (deciding it afresh in each
would let the rare replicate whose optimum jumped along a valley drag the blend to an absurd
exponent), so the blend's interval is conditional on its weight.

**Intervals.** Every bootstrap replicate is fitted the same way, and the prediction's interval is
the percentile interval of the replicates' predictions, widened about the point estimate by
``κ = √(S/(S−1))·t_{S−1}/z`` for replicates that resample ``S`` seeds (the small-sample
correction that makes a percentile bootstrap of a mean of ``S`` normal seeds an exact Student
interval: κ = 1.29 for 8 seeds, 1.12 for 16; κ = 1 for a parametric bootstrap). Checked on
synthetic noise: the 95% intervals of the free and the theory fits cover the truth 95% of the
time. The ``"theory"`` interval holds only the uncertainty of ``c_A``, ``c_B``: it does not know
whether the theory's exponents hold at these widths — the validation below measures that.

**Validation.** :func:`width_summaries` and :func:`validation_table` compare, on the same runs, the
loss reached at the target width by six ways of choosing the rates from the proxies (the
:data:`STRATEGIES`) with tuning directly at the target: loss regret in %, and the error in
``log2 η_A``, ``log2 η_B``, with percentile intervals from the same free bootstrap over seeds (the
proxies' optima, the strategies' rates and the target's own tuning found again in every
resample). The target's loss at any rates comes from an *evaluator*: new runs of a simulator
(:func:`simulator_evaluator`), or interpolation in the target's landscape
(:func:`interpolating_evaluator`) where runs are expensive.

That reference, the best cell of the target's landscape over the seeds that chose it, is the
minimum of many noisy seed means and so biased low (the winner's curse); on a noisy landscape the
regrets it gives are inflated for every strategy. Where fresh runs are cheap,
:func:`holdout_replicates` judges every strategy, tuning at the target included, on seeds that
no tuning saw.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from loraplus_lab.sims import landscape
from loraplus_lab.sims.checks import InputError

#: LoRA+'s exponents of the optimal rates against the width: η_A* ∝ n^-1, η_B* ∝ n^0.
THEORY_EXPONENTS = (-1.0, 0.0)
#: How the exponents are chosen (see the module docstring).
MODES = ("blend", "theory", "free")
#: The ratio practitioners fix (PEFT's advice, the LoRA+ paper's "about 2^4").
PRACTICE_RATIO = 16.0
#: Columns of a per-width summary (one row per width and bootstrap replicate; replicate −1 is the
#: point estimate from every seed).
SUMMARY_COLUMNS = (
    "width",
    "replicate",
    "log2_eta_a",
    "log2_eta_b",
    "equal_log2_eta",
    "ratio_log2_eta_a",
    "best_loss",
)


class TransferError(InputError):
    """Input the predictor cannot use (one width, a bad target width, results of another kind):
    one line, exit status 2 at the command line."""


# ----------------------------------------------------------------------------- proxy optima
@dataclass(frozen=True)
class ProxyOptima:
    """The optimum ``(u, v) = (log2 η_A*, log2 η_B*)`` at each proxy width, with replicates.

    Attributes:
        widths: ``(W,)`` the widths, ascending, at least two.
        u, v: ``(W,)`` point estimates.
        boot_u, boot_v: ``(B, W)`` bootstrap replicates; replicate ``r`` of every width comes from
            the same resample (NaN where a replicate has no optimum). ``B = 0``: no interval.
        seeds: how many seeds the replicates resample (``None`` for a parametric bootstrap); it
            sets the small-sample factor κ of the intervals.
        source: what the optima were computed from, in words.
        at_edge: ``(W,)`` whether the point optimum lies on its grid's edge (then it is a bound,
            not an estimate); all False when unknown.
    """

    widths: np.ndarray
    u: np.ndarray
    v: np.ndarray
    boot_u: np.ndarray
    boot_v: np.ndarray
    seeds: int | None = None
    source: str = ""
    at_edge: np.ndarray | None = None

    def __post_init__(self) -> None:
        w = np.asarray(self.widths, dtype=float).ravel()
        if w.size < 2 or len(np.unique(w)) < 2:
            raise TransferError(
                f"a transfer needs optima at two or more widths, got {w.size and len(np.unique(w))}"
                f" ({', '.join(f'{x:g}' for x in np.unique(w))})"
            )
        if not (np.isfinite(w).all() and (w > 0).all()):
            raise TransferError(f"widths must be positive, got {w.tolist()}")
        if len(np.unique(w)) != w.size:
            raise TransferError(f"repeated width in {w.tolist()}")
        order = np.argsort(w)
        arrays = {}
        for name in ("u", "v"):
            a = np.asarray(getattr(self, name), dtype=float).ravel()
            if a.shape != w.shape:
                raise TransferError(f"{name} has {a.size} values for {w.size} widths")
            if not np.isfinite(a).all():
                raise TransferError(f"the optimum at some width is not finite: {name} = {a}")
            arrays[name] = a[order]
        for name in ("boot_u", "boot_v"):
            b = np.asarray(getattr(self, name), dtype=float)
            if b.size == 0:
                b = np.empty((0, w.size))
            if b.ndim != 2 or b.shape[1] != w.size:
                raise TransferError(f"{name} must have shape (B, {w.size}), got {b.shape}")
            arrays[name] = b[:, order]
        if arrays["boot_u"].shape != arrays["boot_v"].shape:
            raise TransferError("boot_u and boot_v hold different numbers of replicates")
        edge = np.zeros(w.size, bool) if self.at_edge is None else np.asarray(self.at_edge, bool)
        if edge.shape != w.shape:
            raise TransferError(f"at_edge has {edge.size} values for {w.size} widths")
        arrays["at_edge"] = edge[order]
        object.__setattr__(self, "widths", w[order])
        for name, a in arrays.items():
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        if self.seeds is not None and (not isinstance(self.seeds, int) or self.seeds < 1):
            raise TransferError(f"seeds must be a positive integer or None, got {self.seeds!r}")

    @property
    def n_boot(self) -> int:
        """The number of bootstrap replicates."""
        return int(self.boot_u.shape[0])

    def select(self, widths: Sequence[float]) -> ProxyOptima:
        """The optima at some of the widths (the same replicates)."""
        keep = np.isin(self.widths, np.asarray(widths, dtype=float))
        missing = set(np.asarray(widths, dtype=float).tolist()) - set(self.widths.tolist())
        if missing:
            raise TransferError(f"no optimum at width(s) {sorted(missing)}")
        return ProxyOptima(
            self.widths[keep],
            self.u[keep],
            self.v[keep],
            self.boot_u[:, keep],
            self.boot_v[:, keep],
            self.seeds,
            self.source,
            self.at_edge[keep],
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows ``width, replicate, log2_eta_a, log2_eta_b`` (replicate −1: the point)."""
        W = len(self.widths)
        reps = np.concatenate([[-1], np.arange(self.n_boot)])
        return pd.DataFrame(
            {
                "width": np.tile(self.widths, len(reps)),
                "replicate": np.repeat(reps, W),
                "log2_eta_a": np.concatenate([self.u, self.boot_u.ravel()]),
                "log2_eta_b": np.concatenate([self.v, self.boot_v.ravel()]),
            }
        )

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, *, seeds: int | None = None, source: str = ""
    ) -> ProxyOptima:
        """The inverse of :meth:`to_frame` (also reads a :func:`width_summaries` frame)."""
        _require(frame, ("width", "replicate", "log2_eta_a", "log2_eta_b"), "optima")
        point = frame[frame["replicate"] == -1].sort_values("width")
        widths = point["width"].to_numpy(float)
        boot = frame[frame["replicate"] >= 0]
        B = int(boot["replicate"].max()) + 1 if not boot.empty else 0
        bu = np.full((B, len(widths)), np.nan)
        bv = np.full((B, len(widths)), np.nan)
        if B:
            r = boot["replicate"].to_numpy(int)
            k = np.searchsorted(widths, boot["width"].to_numpy(float))
            bu[r, k] = boot["log2_eta_a"].to_numpy(float)
            bv[r, k] = boot["log2_eta_b"].to_numpy(float)
        edge = point["at_edge"].to_numpy(bool) if "at_edge" in point.columns else None
        return cls(
            widths,
            point["log2_eta_a"].to_numpy(float),
            point["log2_eta_b"].to_numpy(float),
            bu,
            bv,
            seeds,
            source,
            edge,
        )


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TransferError(f"the {what} have no column {missing[0]!r}")


def seed_resamples(seeds: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, seeds)`` seed indices drawn with replacement: resample ``r`` takes seeds
    ``draws[r]`` at every width (the seeds are shared across widths, so are the resamples)."""
    if seeds < 1:
        raise TransferError(f"need at least one seed, got {seeds}")
    return np.random.default_rng(seed).integers(0, seeds, size=(int(n_boot), int(seeds)))


def _line_best(x: np.ndarray, loss: np.ndarray) -> float:
    """``x`` of the smallest finite ``loss`` along a line of ``log2`` rates, refined by the vertex
    of the parabola through ``log loss`` at the best point and its two neighbours (kept when it
    is convex and the vertex lies between them); NaN if every point diverged."""
    ok = np.isfinite(loss) & (loss > 0)
    if not ok.any():
        return float("nan")
    k = int(np.argmin(np.where(ok, loss, np.inf)))
    if 0 < k < len(x) - 1 and ok[k - 1] and ok[k + 1]:
        y0, y1, y2 = np.log(loss[k - 1 : k + 2])
        h0, h1 = x[k] - x[k - 1], x[k + 1] - x[k]
        # the parabola through (−h0, y0), (0, y1), (h1, y2)
        d0, d1 = (y1 - y0) / h0, (y2 - y1) / h1
        curv = 2 * (d1 - d0) / (h0 + h1)
        if curv > 0:
            slope0 = d0 + curv * h0 / 2  # derivative at 0
            dx = -slope0 / curv
            if -h0 <= dx <= h1:
                return float(x[k] + dx)
    return float(x[k])


def _surface_summary(
    s: landscape.Surface, idx: np.ndarray, ratio: float, **kwargs: Any
) -> dict[str, float]:
    """The optimum, the best equal rate, the best ``η_A`` on the ``λ = ratio`` line and the best
    loss of one surface's mean over the seeds ``idx``."""
    M = s.mean(idx)
    opt = landscape.find_optimum(s.u, s.v, M, **kwargs)
    best = float(np.nanmin(M)) if np.isfinite(M).any() else float("nan")
    # equal rates: the separate fine line if there is one, else the grid's diagonal
    if s.diag_loss is not None:
        line = s.diag_loss[idx].mean(axis=0)
        eq = _line_best(s.diag_u, line)
        if np.isfinite(line).any():
            best = min(best, float(np.nanmin(line)))
    else:
        common = np.intersect1d(np.round(s.u, 9), np.round(s.v, 9))
        iu = np.searchsorted(np.round(s.u, 9), common)
        iv = np.searchsorted(np.round(s.v, 9), common)
        eq = _line_best(common, M[iu, iv]) if common.size else float("nan")
    # the fixed-ratio line v = u + log2(ratio), on the grid
    lr = math.log2(ratio)
    iu, iv = np.nonzero(np.isclose(s.v[None, :] - s.u[:, None], lr, atol=1e-9))
    order = np.argsort(s.u[iu])
    iu, iv = iu[order], iv[order]
    rl = _line_best(s.u[iu], M[iu, iv]) if iu.size else float("nan")
    return {
        "log2_eta_a": opt.u,
        "log2_eta_b": opt.v,
        "equal_log2_eta": eq,
        "ratio_log2_eta_a": rl,
        "best_loss": best,
        "at_edge": bool(opt.at_edge),
    }


def width_summaries(
    surfs: Sequence[landscape.Surface],
    draws: np.ndarray,
    *,
    ratio: float = PRACTICE_RATIO,
    **kwargs: Any,
) -> pd.DataFrame:
    """Per width and replicate (−1: every seed; ``r ≥ 0``: the seeds ``draws[r]``), what the
    strategies read from a landscape: the optimum ``log2_eta_a``, ``log2_eta_b``
    (:func:`~loraplus_lab.sims.landscape.find_optimum`, found afresh in every resample), the best
    equal rate ``equal_log2_eta`` (on the fine equal-rate line when the landscape has one, else
    on the grid's diagonal; refined by a parabola through its neighbours), the best ``η_A`` on the
    line ``η_B = ratio·η_A`` (``ratio_log2_eta_a``), and the best mean loss of the grid and line
    (``best_loss``). Every width must have the same seeds."""
    if not surfs:
        raise TransferError("no landscapes")
    seeds = surfs[0].seeds
    for s in surfs:
        if not np.array_equal(s.seeds, seeds):
            raise TransferError("every width must have the same seeds")
    draws = np.asarray(draws, dtype=int).reshape(-1, len(seeds))
    rows = []
    for s in surfs:
        for r, idx in enumerate([np.arange(len(seeds)), *draws]):
            rows.append(
                {"width": s.width, "replicate": r - 1, **_surface_summary(s, idx, ratio, **kwargs)}
            )
    return pd.DataFrame(rows)


def optima_from_surfaces(
    surfs: Sequence[landscape.Surface], *, n_boot: int = 200, seed: int = 0, **kwargs: Any
) -> ProxyOptima:
    """The optima of toy landscapes with a free bootstrap over seeds (every resample's optimum
    found afresh, the same resampled seeds at every width)."""
    if len(surfs) < 2:
        raise TransferError(
            f"a transfer needs landscapes at two or more widths, got {len(surfs)}"
            + (f" (width {surfs[0].width})" if surfs else "")
        )
    S = len(surfs[0].seeds)
    draws = seed_resamples(S, n_boot if S >= 2 else 0, seed)
    summary = width_summaries(surfs, draws, **kwargs)
    return ProxyOptima.from_frame(
        summary,
        seeds=S if S >= 2 else None,
        source="toy landscapes, free bootstrap over seeds",
    )


def optima_from_seed_optima(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0) -> ProxyOptima:
    """Per-seed optima (``width, seed, log2_eta_a, log2_eta_b``: each seed tuned on its own):
    the point is the mean over seeds at each width, the replicates the means over resampled
    seeds (the same resample at every width). Every width must have the same seeds."""
    _require(df, ("width", "seed", "log2_eta_a", "log2_eta_b"), "per-seed optima")
    widths = np.sort(df["width"].unique()).astype(float)
    seeds = np.sort(df["seed"].unique())
    U = np.full((len(seeds), len(widths)), np.nan)
    V = np.full_like(U, np.nan)
    si = np.searchsorted(seeds, df["seed"].to_numpy())
    wi = np.searchsorted(widths, df["width"].to_numpy(float))
    U[si, wi] = df["log2_eta_a"].to_numpy(float)
    V[si, wi] = df["log2_eta_b"].to_numpy(float)
    if not (np.isfinite(U).all() and np.isfinite(V).all()):
        raise TransferError("every width needs a finite optimum for every seed")
    S = len(seeds)
    draws = seed_resamples(S, n_boot if S >= 2 else 0, seed)
    Wt = np.stack([np.bincount(d, minlength=S) for d in draws]) / S if len(draws) else None
    return ProxyOptima(
        widths,
        U.mean(axis=0),
        V.mean(axis=0),
        Wt @ U if Wt is not None else np.empty((0, len(widths))),
        Wt @ V if Wt is not None else np.empty((0, len(widths))),
        S if S >= 2 else None,
        "per-seed optima, bootstrap of the seed means",
    )


_Z95 = stats.norm.ppf(0.975)


def optima_from_table(df: pd.DataFrame, *, n_boot: int = 999, seed: int = 0) -> ProxyOptima:
    """Per-width optima with their uncertainty, as a table, with a parametric bootstrap.

    Accepted forms: wide — ``width, log2_eta_a, log2_eta_b`` with standard errors
    ``se_log2_eta_a``, ``se_log2_eta_b`` or 95% intervals ``log2_eta_a_low``,
    ``log2_eta_a_high``, ``log2_eta_b_low``, ``log2_eta_b_high``; long — ``width, quantity,
    value, ci_low, ci_high`` with the quantities ``log2_eta_a`` and ``log2_eta_b`` (the form of
    the ladder's per-width intervals). A 95% interval becomes a standard error of
    ``(high − low)/(2·1.96)``. The replicates draw every width independently from
    ``N(point, se²)``."""
    if {"quantity", "value"} <= set(df.columns):
        _require(df, ("width", "quantity", "value", "ci_low", "ci_high"), "per-width intervals")
        rows = {}
        for q in ("log2_eta_a", "log2_eta_b"):
            g = df[df["quantity"] == q].set_index("width").sort_index()
            if g.empty:
                raise TransferError(f"the per-width intervals have no quantity {q!r}")
            rows[q] = g["value"].to_numpy(float)
            rows[f"se_{q}"] = ((g["ci_high"] - g["ci_low"]) / (2 * _Z95)).to_numpy(float)
            rows["width"] = g.index.to_numpy(float)
        df = pd.DataFrame(rows)
    _require(df, ("width", "log2_eta_a", "log2_eta_b"), "per-width optima")
    df = df.sort_values("width")
    widths = df["width"].to_numpy(float)
    out = {}
    for q in ("log2_eta_a", "log2_eta_b"):
        if f"se_{q}" in df.columns:
            se = df[f"se_{q}"].to_numpy(float)
        elif f"{q}_low" in df.columns and f"{q}_high" in df.columns:
            se = (df[f"{q}_high"] - df[f"{q}_low"]).to_numpy(float) / (2 * _Z95)
        else:
            raise TransferError(
                f"the per-width optima give no uncertainty for {q} (columns se_{q}, or "
                f"{q}_low and {q}_high)"
            )
        if not (np.isfinite(se).all() and (se >= 0).all()):
            raise TransferError(f"the uncertainty of {q} must be finite and non-negative")
        out[q] = (df[q].to_numpy(float), se)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((2, int(n_boot), len(widths)))
    (u, su), (v, sv) = out["log2_eta_a"], out["log2_eta_b"]
    return ProxyOptima(
        widths,
        u,
        v,
        u + su * z[0],
        v + sv * z[1],
        None,
        "per-width optima with their intervals, parametric bootstrap",
    )


def ladder_summaries(
    df: pd.DataFrame, *, ratio: float = PRACTICE_RATIO, n_boot: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """:func:`width_summaries` for the real-model ladder's rows, through
    ``loraplus_lab.sims.realmodels.ladder_analysis`` (its landscapes, its optimum per width and
    its tuned lines, found afresh for every resample of the seeds). Returns the summary and the
    resamples ``draws``."""
    try:
        from loraplus_lab.sims.realmodels import ladder_analysis as la
    except ImportError as e:  # the ladder's analysis is not in this installation
        raise TransferError(
            f"these are a ladder's rows, but the ladder analysis is missing ({e})"
        ) from None
    L = la.landscapes(df)
    S = len(L.seeds)
    draws = seed_resamples(S, n_boot if S >= 2 else 0, seed)
    rows = []
    for i, width in enumerate(L.widths):
        for r, idx in enumerate([np.arange(S), *draws]):
            w = np.bincount(idx, minlength=S).astype(float)
            ws = la.width_summary(L, i, w, ratio)
            rows.append(
                {
                    "width": int(width),
                    "replicate": r - 1,
                    "log2_eta_a": float(ws["log2_eta_a"]),
                    "log2_eta_b": float(ws["log2_eta_b"]),
                    "equal_log2_eta": float(ws.get("equal_log2_eta_a", np.nan)),
                    "ratio_log2_eta_a": float(ws.get("ratio_log2_eta_a", np.nan)),
                    "best_loss": float(ws.get("best_loss", np.nan)),
                    "at_edge": bool(ws.get("at_edge", False)),
                }
            )
    return pd.DataFrame(rows), draws


def ladder_validation(
    df: pd.DataFrame,
    *,
    target_width: float | None = None,
    proxies: Sequence[float] | None = None,
    ratio: float = PRACTICE_RATIO,
    n_boot: int = 200,
    seed: int = 0,
    task: str = "real-model ladder",
) -> pd.DataFrame:
    """The validation table (:func:`validation_table`) of the real-model ladder: its widest
    width (or ``target_width``) predicted from the others (or ``proxies``), the target's loss at
    any rates interpolated between its runs (:func:`interpolating_evaluator`: no new training;
    rates outside the region the ladder ran come out unknown, NaN)."""
    from loraplus_lab.sims.realmodels import ladder_analysis as la

    summary, draws = ladder_summaries(df, ratio=ratio, n_boot=n_boot, seed=seed)
    L = la.landscapes(df)
    widths = np.asarray(L.widths, dtype=float)
    nt = float(widths.max() if target_width is None else target_width)
    if nt not in widths:
        raise TransferError(f"the ladder has no width {nt:g} (widths {widths.tolist()})")
    i = int(np.flatnonzero(widths == nt)[0])
    ok = np.isfinite(L.u[i])  # the runs that train A (not the B-only line)
    evaluate = interpolating_evaluator(L.u[i][ok], L.v[i][ok], L.loss[i][:, ok])
    return validation_table(summary, draws, nt, evaluate, proxies=proxies, ratio=ratio, task=task)


def optima_from_ladder(
    df: pd.DataFrame, *, ratio: float = PRACTICE_RATIO, n_boot: int = 200, seed: int = 0
) -> ProxyOptima:
    """The optima of the real-model ladder's landscapes with the free bootstrap over seeds."""
    summary, draws = ladder_summaries(df, ratio=ratio, n_boot=n_boot, seed=seed)
    S = draws.shape[1] if draws.size else None
    return ProxyOptima.from_frame(
        summary,
        seeds=S if S and S >= 2 else None,
        source="real-model ladder, free bootstrap over seeds",
    )


#: Columns that mark each kind of result :func:`optima_from_results` reads.
_TOY_COLUMNS = ("width", "seed", "step", "eta_a", "eta_b", "diverged")
_LADDER_COLUMNS = ("part", "width", "seed", "eta_a", "eta_b", "step", "final_loss", "diverged")


def results_kind(df: pd.DataFrame) -> str:
    """Which kind of results ``df`` holds: ``"ladder"``, ``"grid"`` (toy landscapes),
    ``"seed-optima"``, ``"table"`` (per-width optima with intervals), or ``"other"``."""
    cols = set(df.columns)
    if set(_LADDER_COLUMNS) <= cols:
        return "ladder"
    if set(_TOY_COLUMNS) <= cols and ({"loss", "test_loss"} & cols):
        return "grid"
    if {"width", "seed", "log2_eta_a", "log2_eta_b"} <= cols:
        return "seed-optima"
    if {"width", "log2_eta_a", "log2_eta_b"} <= cols or {"width", "quantity", "value"} <= cols:
        return "table"
    return "other"


def grid_loss_column(df: pd.DataFrame) -> str:
    """The loss a toy landscape is read from: ``test_loss`` where every row has one (a held-out
    set), else the training ``loss``."""
    if "test_loss" in df.columns and df["test_loss"].notna().any():
        live = df[~df["diverged"].astype(bool)] if "diverged" in df.columns else df
        if live["test_loss"].notna().all():
            return "test_loss"
    return "loss"


def grid_surfaces(
    df: pd.DataFrame, *, loss: str | None = None, step: int | None = None, param: str | None = None
) -> list[landscape.Surface]:
    """The landscapes of toy grid rows (:func:`~loraplus_lab.sims.landscape.surfaces`), optionally
    of the parametrizations whose name starts with ``param``, at ``step`` (default: the last),
    of the column ``loss`` (default :func:`grid_loss_column`); one line of :class:`TransferError`
    for rows that are not a product grid of rates."""
    if param:
        if "param" not in df.columns:
            raise TransferError("the results have no parametrization names (column 'param')")
        df = df[df["param"].astype(str).str.startswith(param)]
        if df.empty:
            raise TransferError(f"no parametrization named {param}[...] in the results")
    loss = loss or grid_loss_column(df)
    if "c_a" in df.columns and "c_b" in df.columns:
        pairs = df[["c_a", "c_b"]].drop_duplicates().astype(str)
        for ca, cb in pairs.itertuples(index=False):
            if Fraction(ca) != 0 or Fraction(cb) != 0:
                raise TransferError(
                    f"the results scale their rates with the width (c_A = {ca}, c_B = {cb}): a "
                    "transfer needs landscapes of fixed rates (c_A = c_B = 0) at every width"
                )
    try:
        return landscape.surfaces(df, step=step, loss=loss)
    except ValueError as e:
        raise TransferError(f"not a learning-rate landscape: {e}") from None


def optima_from_results(
    df: pd.DataFrame,
    *,
    loss: str | None = None,
    step: int | None = None,
    param: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> ProxyOptima:
    """Per-width optima with replicates from any results the predictor reads (the kind is told
    by the columns, :func:`results_kind`); :class:`TransferError` for anything else."""
    if df.empty:
        raise TransferError("the results hold no rows")
    kind = results_kind(df)
    if kind == "ladder":
        return optima_from_ladder(df, n_boot=n_boot, seed=seed)
    if kind == "grid":
        surfs = grid_surfaces(df, loss=loss, step=step, param=param)
        return optima_from_surfaces(surfs, n_boot=n_boot, seed=seed)
    if kind == "seed-optima":
        return optima_from_seed_optima(df, n_boot=n_boot, seed=seed)
    if kind == "table":
        return optima_from_table(df, n_boot=max(n_boot, 999), seed=seed)
    shown = ", ".join(list(map(str, df.columns))[:8])
    raise TransferError(
        f"results of another kind (columns {shown}, …): transfer reads learning-rate landscapes "
        "(a toy grid sweep or the real-model ladder) or per-width optima"
    )


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Rows from a sweep store folder (any kind: the store's own loader), a ``.csv`` or a
    ``.parquet`` file; :class:`TransferError` if ``path`` holds none of them."""
    p = Path(path)
    if p.is_dir():
        from loraplus_lab.sims.sweep import Store

        try:
            return Store.open(p).load()
        except ValueError as e:  # StoreError: not a store, a damaged job file
            raise TransferError(str(e).splitlines()[0]) from None
    if p.is_file():
        try:
            if p.suffix == ".csv":
                return pd.read_csv(p)
            if p.suffix in (".parquet", ".pq"):
                return pd.read_parquet(p)
        except Exception as e:  # noqa: BLE001 - any parse error of a user's file is bad input
            raise TransferError(f"{p} is unreadable ({type(e).__name__}: {e})") from None
        raise TransferError(f"{p}: expected a sweep store folder, a .csv or a .parquet file")
    raise TransferError(f"{p} does not exist")


# ----------------------------------------------------------------------------- the rule
@functools.lru_cache(maxsize=256)
def small_sample_factor(seeds: int | None, confidence: float = 0.95) -> float:
    """``κ = √(S/(S−1))·t_{S−1}/z`` at the interval's level for ``S`` resampled seeds (1 for a
    parametric bootstrap): the widening that makes a percentile bootstrap of a mean of ``S``
    normal seeds an exact Student interval."""
    if seeds is None:
        return 1.0
    if seeds < 2:
        return float("nan")
    a = 0.5 + confidence / 2
    return math.sqrt(seeds / (seeds - 1)) * stats.t.ppf(a, seeds - 1) / stats.norm.ppf(a)


@dataclass(frozen=True)
class Prediction:
    """The predicted rates at one width, each ``log2`` value with its interval.

    ``log2_eta_a``, ``log2_eta_b``, ``log2_ratio`` and their ``*_low``, ``*_high``; ``eta_a``,
    ``eta_b``, ``ratio`` are the rates themselves."""

    width: float
    mode: str
    log2_eta_a: float
    log2_eta_b: float
    log2_ratio: float
    log2_eta_a_low: float
    log2_eta_a_high: float
    log2_eta_b_low: float
    log2_eta_b_high: float
    log2_ratio_low: float
    log2_ratio_high: float
    confidence: float

    @property
    def eta_a(self) -> float:
        """``η_A`` at the width."""
        return 2.0**self.log2_eta_a

    @property
    def eta_b(self) -> float:
        """``η_B`` at the width."""
        return 2.0**self.log2_eta_b

    @property
    def ratio(self) -> float:
        """``λ = η_B/η_A`` at the width."""
        return 2.0**self.log2_ratio

    def to_dict(self) -> dict[str, float | str]:
        """Every field and the rates themselves, with their intervals."""
        d: dict[str, float | str] = dict(self.__dict__)
        for k in ("eta_a", "eta_b", "ratio"):
            d[k] = 2.0 ** d[f"log2_{k}"]
            d[f"{k}_low"] = 2.0 ** d[f"log2_{k}_low"]
            d[f"{k}_high"] = 2.0 ** d[f"log2_{k}_high"]
        return d


@dataclass(frozen=True)
class ScalingRule:
    """``log2 η_A*(n) = log2 c_A + a·log2 n``, ``log2 η_B*(n) = log2 c_B + b·log2 n``, fitted
    to proxy optima (:func:`fit_rule`), with the replicates that give its intervals.

    Attributes:
        mode: ``"blend"``, ``"theory"`` or ``"free"``.
        log2_c_a, a, log2_c_b, b: the rule.
        free_a, free_b: the exponents fitted freely (whatever the mode), ``se_a``, ``se_b`` their
            standard errors (:func:`slope_spread`), ``weight_a``, ``weight_b`` the weight of the
            free exponent in the rule (1: free, 0: theory).
        theory: the theory's exponents ``(a, b)``.
        widths: the proxy widths; seeds, confidence: as in :class:`ProxyOptima`.
        boot: ``(B, 4)`` replicates of ``(log2 c_A, a, log2 c_B, b)``.
    """

    mode: str
    log2_c_a: float
    a: float
    log2_c_b: float
    b: float
    free_a: float
    free_b: float
    se_a: float
    se_b: float
    weight_a: float
    weight_b: float
    theory: tuple[float, float]
    widths: np.ndarray
    seeds: int | None
    boot: np.ndarray = field(repr=False)
    source: str = ""

    @property
    def c_a(self) -> float:
        """``c_A`` of ``η_A = c_A·n^a``."""
        return 2.0**self.log2_c_a

    @property
    def c_b(self) -> float:
        """``c_B`` of ``η_B = c_B·n^b``."""
        return 2.0**self.log2_c_b

    def formula(self) -> str:
        """The rule in words: ``η_A = c_A·n^a, η_B = c_B·n^b`` with the numbers."""
        return (
            f"η_A = {self.c_a:.4g}·n^{self.a:+.3f}, η_B = {self.c_b:.4g}·n^{self.b:+.3f}  "
            f"(λ = {self.c_b / self.c_a:.4g}·n^{self.b - self.a:+.3f})"
        )

    def predict(self, width: float, *, confidence: float = 0.95) -> Prediction:
        """The rates at ``width`` with percentile intervals of the replicates, widened by the
        small-sample factor (module docstring)."""
        try:
            n = float(width)
        except (TypeError, ValueError):
            raise TransferError(
                f"the target width must be a positive number, got {width!r}"
            ) from None
        if not (math.isfinite(n) and n > 0):
            raise TransferError(f"the target width must be positive, got {width!r}")
        if not 0 < confidence < 1:
            raise TransferError(f"confidence must lie in (0, 1), got {confidence!r}")
        x = math.log2(n)
        point = np.array([self.log2_c_a + self.a * x, self.log2_c_b + self.b * x])
        point = np.append(point, point[1] - point[0])
        bt = self.boot
        reps = np.column_stack([bt[:, 0] + bt[:, 1] * x, bt[:, 2] + bt[:, 3] * x])
        reps = np.column_stack([reps, reps[:, 1] - reps[:, 0]])
        reps = reps[np.isfinite(reps).all(axis=1)]
        kappa = small_sample_factor(self.seeds, confidence)
        if len(reps) >= 10 and math.isfinite(kappa):
            a = (1 - confidence) / 2
            lo, hi = np.quantile(reps, [a, 1 - a], axis=0)
            lo = point - kappa * np.maximum(point - lo, 0.0)
            hi = point + kappa * np.maximum(hi - point, 0.0)
        else:  # one seed, or no replicates: no interval
            lo = hi = np.full(3, np.nan)
        return Prediction(
            n,
            self.mode,
            *(float(p) for p in point),
            float(lo[0]),
            float(hi[0]),
            float(lo[1]),
            float(hi[1]),
            float(lo[2]),
            float(hi[2]),
            confidence,
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule's numbers (for JSON)."""
        return {
            "mode": self.mode,
            "c_a": self.c_a,
            "a": self.a,
            "c_b": self.c_b,
            "b": self.b,
            "free_a": self.free_a,
            "free_b": self.free_b,
            "se_a": self.se_a,
            "se_b": self.se_b,
            "weight_a": self.weight_a,
            "weight_b": self.weight_b,
            "theory": list(self.theory),
            "widths": [float(w) for w in self.widths],
            "seeds": self.seeds,
            "replicates": int(self.boot.shape[0]),
            "formula": self.formula(),
            "source": self.source,
        }


def _centre_and_slope(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``ȳ`` and least-squares slope of ``y`` (last axis) on ``x``."""
    dx = x - x.mean()
    return y.mean(axis=-1), (y * dx).sum(-1) / float(dx @ dx)


def slope_spread(replicates: np.ndarray, seeds: int | None, confidence: float = 0.95) -> float:
    """The standard error a slope's 95% interval implies: the half-width of the percentile
    interval of its replicates over ``z_{0.975}``, widened by the small-sample factor κ (so that
    rare replicates far out — an optimum that jumped along a flat valley — count); NaN with
    fewer than 10 replicates."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size < 10:
        return float("nan")
    a = (1 - confidence) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return float(small_sample_factor(seeds, confidence) * (hi - lo) / (2 * stats.norm.ppf(1 - a)))


def blend_weight(free: float, theory: float, se: float, confidence: float = 0.95) -> float:
    """The weight of the fitted exponent in the blend: ``w = δ²/(δ² + s²)`` with ``δ = max(0,
    |k̂ − k_th| − z·s)``, the departure from the theory that the data establish at the
    ``confidence`` level (``z = z_{(1+confidence)/2}``): 0 unless the fitted exponent's interval
    excludes the theory's."""
    if not (math.isfinite(free) and math.isfinite(se)):
        return 0.0
    z = stats.norm.ppf(0.5 + confidence / 2)
    d = max(0.0, abs(free - theory) - z * se)
    if d == 0.0:
        return 0.0
    return float(d * d / (d * d + se * se))


def fit_rule(
    optima: ProxyOptima,
    *,
    mode: str = "blend",
    theory: tuple[float, float] = THEORY_EXPONENTS,
) -> ScalingRule:
    """Fit ``η_A = c_A·n^a``, ``η_B = c_B·n^b`` to the proxy optima (module docstring: least
    squares through the centre of the proxies; ``mode`` chooses the exponents)."""
    if mode not in MODES:
        raise TransferError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    x = np.log2(optima.widths)
    fits = []
    for y, boot, k_th in (
        (optima.u, optima.boot_u, float(theory[0])),
        (optima.v, optima.boot_v, float(theory[1])),
    ):
        xbar = float(x.mean())
        ybar, k_free = _centre_and_slope(x, y)
        ybar_r, k_free_r = _centre_and_slope(x, boot)
        se = slope_spread(k_free_r, optima.seeds)
        if mode == "theory":
            weight = 0.0
        elif mode == "free" or not math.isfinite(se):  # no replicates: nothing to weigh with
            weight = 1.0
        else:
            weight = blend_weight(float(k_free), k_th, se)
        k = k_th + weight * (float(k_free) - k_th)
        k_r = k_th + weight * (k_free_r - k_th)
        fits.append(
            {
                "log2_c": float(ybar) - k * xbar,
                "k": k,
                "free": float(k_free),
                "se": se,
                "weight": weight,
                "boot": np.column_stack([ybar_r - k_r * xbar, k_r]),
            }
        )
    fa, fb = fits
    return ScalingRule(
        mode=mode,
        log2_c_a=fa["log2_c"],
        a=fa["k"],
        log2_c_b=fb["log2_c"],
        b=fb["k"],
        free_a=fa["free"],
        free_b=fb["free"],
        se_a=fa["se"],
        se_b=fb["se"],
        weight_a=fa["weight"],
        weight_b=fb["weight"],
        theory=(float(theory[0]), float(theory[1])),
        widths=optima.widths.copy(),
        seeds=optima.seeds,
        boot=np.column_stack([fa["boot"], fb["boot"]]),
        source=optima.source,
    )


def predict(
    optima: ProxyOptima,
    width: float,
    *,
    mode: str = "blend",
    confidence: float = 0.95,
    theory: tuple[float, float] = THEORY_EXPONENTS,
) -> tuple[ScalingRule, Prediction]:
    """Fit the rule to ``optima`` and predict the rates at ``width``."""
    rule = fit_rule(optima, mode=mode, theory=theory)
    return rule, rule.predict(width, confidence=confidence)


# ----------------------------------------------------------------------------- validation
#: The ways of choosing the rates at the target from the proxies, side by side in the validation.
STRATEGIES = {
    "a": "equal rates tuned at the widest proxy, carried over",
    "b": "equal rates tuned at the widest proxy, scaled like 1/n",
    "c": "λ = 16, η_A tuned at the widest proxy, carried over",
    "d": "LoRA+ transfer, the theory's exponents",
    "e": "LoRA+ transfer, fitted exponents",
    "f": "LoRA+ transfer, blend (the default)",
}
_RULE_MODES = {"d": "theory", "e": "free", "f": "blend"}


def strategy_rates(
    summary: pd.DataFrame,
    target_width: float,
    *,
    proxies: Sequence[float] | None = None,
    ratio: float = PRACTICE_RATIO,
    theory: tuple[float, float] = THEORY_EXPONENTS,
    seeds: int | None = None,
) -> pd.DataFrame:
    """The rates each strategy of :data:`STRATEGIES` picks at ``target_width`` from the proxies'
    rows of a per-width summary (:func:`width_summaries`), for the point estimate and every
    replicate, beside the target's own optimum (strategy ``"target"``: tuning there directly).

    ``proxies`` default to every width of the summary below the target; ``seeds`` is the number
    of seeds the replicates resample (:class:`ProxyOptima`). Columns ``strategy, replicate,
    log2_eta_a, log2_eta_b``."""
    _require(summary, SUMMARY_COLUMNS, "per-width summaries")
    widths = np.sort(summary["width"].unique()).astype(float)
    nt = float(target_width)
    if nt not in widths:
        raise TransferError(f"the summaries hold no landscape at the target width {nt:g}")
    proxies = widths[widths < nt] if proxies is None else np.sort(np.asarray(proxies, float))
    if len(proxies) < 1:
        raise TransferError(f"no proxy width below the target {nt:g}")
    reps = np.sort(summary["replicate"].unique())

    def at(width: float, col: str) -> np.ndarray:
        g = summary[summary["width"] == width].set_index("replicate")[col]
        return g.reindex(reps).to_numpy(float)

    wide = float(proxies.max())
    eq, r16 = at(wide, "equal_log2_eta"), at(wide, "ratio_log2_eta_a")
    dx = math.log2(nt) - math.log2(wide)
    picks = {
        "a": (eq, eq),
        "b": (eq - dx, eq - dx),
        "c": (r16, r16 + math.log2(ratio)),
        "target": (at(nt, "log2_eta_a"), at(nt, "log2_eta_b")),
    }
    if len(proxies) >= 2:
        boot_reps = reps[reps >= 0]
        optima = ProxyOptima.from_frame(
            summary[summary["width"].isin(proxies)], seeds=seeds, source="proxies"
        )
        x = math.log2(nt)
        for key, mode in _RULE_MODES.items():
            rule = fit_rule(optima, mode=mode, theory=theory)
            bu = rule.boot[:, 0] + rule.boot[:, 1] * x
            bv = rule.boot[:, 2] + rule.boot[:, 3] * x
            pu = np.full(len(reps), np.nan)
            pv = np.full(len(reps), np.nan)
            pu[reps == -1] = rule.log2_c_a + rule.a * x
            pv[reps == -1] = rule.log2_c_b + rule.b * x
            pu[reps >= 0] = bu[boot_reps]
            pv[reps >= 0] = bv[boot_reps]
            picks[key] = (pu, pv)
    rows = [
        pd.DataFrame({"strategy": key, "replicate": reps, "log2_eta_a": u, "log2_eta_b": v})
        for key, (u, v) in picks.items()
    ]
    return pd.concat(rows, ignore_index=True)


Evaluator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates, NaN (unknown) left out; ``inf`` (a
    diverged run) counts as the largest value (the empirical quantile, no interpolation, where
    any is infinite). NaN if fewer than 10 replicates are known."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 10:
        return float("nan"), float("nan")
    a = (1 - confidence) / 2
    method = "inverted_cdf" if np.isinf(x).any() else "linear"
    lo, hi = np.quantile(x, [a, 1 - a], method=method)
    return float(lo), float(hi)


def _seed_means(losses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(R, K)`` weighted means over seeds of ``losses`` ``(S, K)`` for seed weights ``(R, S)``:
    ``inf`` where a seed of positive weight diverged (``inf``), NaN where one is unknown."""
    fin = np.isfinite(losses)
    M = weights @ np.where(fin, losses, 0.0) / weights.sum(axis=1, keepdims=True)
    used = weights > 0
    inf = (used.astype(float) @ np.isposinf(losses).astype(float)) > 0
    nan = (used.astype(float) @ np.isnan(losses).astype(float)) > 0
    return np.where(nan, np.nan, np.where(inf, np.inf, M))


def _check_draws(draws: np.ndarray, name: str) -> np.ndarray:
    draws = np.asarray(draws, dtype=int)
    if draws.ndim != 2:
        raise TransferError(f"{name} must have shape (replicates, seeds), got {draws.shape}")
    return draws


def _losses_at(rates: pd.DataFrame, draws: np.ndarray, evaluate: Evaluator) -> np.ndarray:
    """The seed-mean loss at the target of every row of ``rates`` (``replicate, log2_eta_a,
    log2_eta_b``): ``evaluate`` is called once with every distinct pair of rates and returns
    ``(S, K)`` per-seed losses; replicate −1 averages every seed, replicate ``r ≥ 0`` the seeds
    ``draws[r]`` (with their multiplicities). NaN where the rates are unknown."""
    S = draws.shape[1]
    reps = np.sort(rates["replicate"].unique())
    wts = np.ones((len(reps), S))
    if len(reps) > 1:
        wts[1:] = np.stack([np.bincount(d, minlength=S) for d in draws[reps[reps >= 0]]])
    ok = (np.isfinite(rates["log2_eta_a"]) & np.isfinite(rates["log2_eta_b"])).to_numpy()
    keys = np.round(rates.loc[ok, ["log2_eta_a", "log2_eta_b"]].to_numpy(float), 9)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    losses = np.asarray(evaluate(uniq[:, 0], uniq[:, 1]), dtype=float)
    if losses.shape != (S, len(uniq)):
        raise TransferError(
            f"the evaluator returned shape {losses.shape}, expected {(S, len(uniq))}"
        )
    means = _seed_means(losses, wts)  # (R, K)
    ri = np.searchsorted(reps, rates["replicate"].to_numpy())
    loss_at = np.full(len(rates), np.nan)
    loss_at[ok] = means[ri[ok], inverse.ravel()]
    return loss_at


def _strategy_losses(
    summary: pd.DataFrame,
    draws: np.ndarray,
    target_width: float,
    evaluate: Evaluator,
    loss_draws: np.ndarray,
    proxies: Sequence[float] | None,
    ratio: float,
    theory: tuple[float, float],
) -> pd.DataFrame:
    """:func:`strategy_rates` from the tuning seeds' summaries (resampled by ``draws``), with the
    seed-mean ``loss`` at the target of every row over the evaluated seeds resampled by
    ``loss_draws`` (the tuning seeds' own ``draws``, or held-out ones)."""
    S = draws.shape[1]
    rates = strategy_rates(
        summary,
        target_width,
        proxies=proxies,
        ratio=ratio,
        theory=theory,
        seeds=S if S >= 2 else None,
    )
    return rates.assign(loss=_losses_at(rates, loss_draws, evaluate))


def _with_rate_errors(rates: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Adds ``err_log2_eta_a``, ``err_log2_eta_b`` (each row's rates minus the target's tuned
    rates of the same replicate) to ``rates``; returns the target's rows by replicate and the
    sorted replicates."""
    reps = np.sort(rates["replicate"].unique())
    target = rates[rates["strategy"] == "target"].set_index("replicate").reindex(reps)
    for col in ("log2_eta_a", "log2_eta_b"):
        rates[f"err_{col}"] = rates[col] - target[col].reindex(rates["replicate"]).to_numpy()
    return target, reps


def validation_replicates(
    summary: pd.DataFrame,
    draws: np.ndarray,
    target_width: float,
    evaluate: Evaluator,
    *,
    proxies: Sequence[float] | None = None,
    ratio: float = PRACTICE_RATIO,
    theory: tuple[float, float] = THEORY_EXPONENTS,
) -> pd.DataFrame:
    """Every strategy's rates at the target and the loss they reach there, for the point estimate
    (replicate −1) and every bootstrap replicate.

    Args:
        summary: per-width summaries of the proxies and the target, with replicates
            (:func:`width_summaries`, :func:`ladder_summaries`).
        draws: ``(B, S)`` the seeds of each replicate (:func:`seed_resamples`).
        target_width: the width predicted.
        evaluate: ``(u, v) → (S, K)`` the loss of every seed at the target at the rates
            ``(2^u[k], 2^v[k])`` (``inf`` where a run diverged, NaN where unknown):
            :func:`simulator_evaluator` or :func:`interpolating_evaluator`. It is called once,
            with every distinct pair of rates.
        proxies, ratio, theory: as in :func:`strategy_rates`.

    Returns:
        One row per strategy (and ``"target"``: tuning there) and replicate: ``strategy,
        replicate, log2_eta_a, log2_eta_b, loss`` (the seed-mean loss at the target over the
        replicate's seeds; ``inf`` if one diverged), ``reference_loss`` (tuning at the target: the
        best of its landscape and of a run at its own fitted optimum, over the same seeds),
        ``regret = loss/reference_loss − 1`` and ``err_log2_eta_a``, ``err_log2_eta_b`` (the
        rates minus the target's fitted optimum).
    """
    draws = _check_draws(draws, "draws")
    rates = _strategy_losses(summary, draws, target_width, evaluate, draws, proxies, ratio, theory)
    target, reps = _with_rate_errors(rates)
    best = summary[summary["width"] == float(target_width)].set_index("replicate")["best_loss"]
    ref = np.fmin(best.reindex(reps).to_numpy(float), target["loss"].to_numpy(float))
    rates["reference_loss"] = pd.Series(ref, index=reps).reindex(rates["replicate"]).to_numpy()
    rates["regret"] = rates["loss"] / rates["reference_loss"] - 1.0
    return rates


def holdout_replicates(
    summary: pd.DataFrame,
    draws: np.ndarray,
    target_width: float,
    evaluate: Evaluator,
    holdout_draws: np.ndarray,
    *,
    proxies: Sequence[float] | None = None,
    ratio: float = PRACTICE_RATIO,
    theory: tuple[float, float] = THEORY_EXPONENTS,
) -> pd.DataFrame:
    """The validation on held-out seeds: every strategy's rates, and the target's own tuned
    optimum (strategy ``"target"``), all picked from the tuning seeds, then run at the target on
    seeds that none of them saw.

    In :func:`validation_replicates` the reference is the best cell of the target's landscape
    over the very seeds that chose it: the minimum of many noisy seed means, biased low (the
    winner's curse), the more so the noisier the landscape. Here tuning at the target is one
    more strategy, judged like the others on fresh seeds, and ``regret = L(strategy)/L(target) −
    1`` compares two procedures that saw the same tuning seeds: it can be negative (the
    transfer's rates generalise better than the target's own noisy optimum).

    Args:
        summary, draws, target_width, proxies, ratio, theory: the tuning seeds' per-width
            summaries and their resamples, as in :func:`validation_replicates`.
        evaluate: ``(u, v) → (E, K)`` the loss of each of the ``E`` held-out seeds at the target.
        holdout_draws: ``(B, E)`` the held-out seeds of each replicate, drawn independently of
            ``draws`` (replicate ``r`` resamples both seed sets).

    Returns:
        The columns of :func:`validation_replicates`, with ``reference_loss`` the held-out
        seed-mean loss at the target's tuned rates of the same replicate (``inf`` if one of its
        seeds diverged there: a strategy that did not then has regret −100%; one that diverged
        too, on any seeds, has an unknown regret, NaN, which the intervals leave out and
        :func:`summarize_validation` counts; rates equal to the target's have regret 0).
    """
    draws = _check_draws(draws, "draws")
    hold = _check_draws(holdout_draws, "holdout_draws")
    if hold.shape[0] != draws.shape[0]:
        raise TransferError(
            f"holdout_draws has {hold.shape[0]} replicates and draws {draws.shape[0]}: "
            "each replicate resamples both seed sets"
        )
    rates = _strategy_losses(summary, draws, target_width, evaluate, hold, proxies, ratio, theory)
    target, _ = _with_rate_errors(rates)
    rates["reference_loss"] = target["loss"].reindex(rates["replicate"]).to_numpy()
    rates["regret"] = regret_against_target(rates)
    return rates


def regret_against_target(rates: pd.DataFrame) -> np.ndarray:
    """``L/L_ref − 1`` of rows with ``loss``, ``reference_loss`` (the target's tuned rates' loss
    on the same seeds) and the rate errors against those rates: a diverged strategy (``inf``)
    +∞, a diverged reference −100%, both diverged (or a loss unknown) NaN, and 0 for rates equal
    to the target's (the very same runs, diverged or not)."""
    loss = rates["loss"].to_numpy(float)
    ref = rates["reference_loss"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        regret = loss / ref - 1.0  # inf/inf and NaN: unknown
    same = (rates["err_log2_eta_a"] == 0) & (rates["err_log2_eta_b"] == 0)
    return np.where(same.to_numpy(), 0.0, regret)


def summarize_validation(
    reps: pd.DataFrame,
    *,
    confidence: float = 0.95,
    task: str = "",
    proxies: Sequence[float] = (),
    target: float = float("nan"),
    seeds: int = 0,
) -> pd.DataFrame:
    """One row per strategy of :func:`validation_replicates`: the point estimate (replicate −1)
    of the rates, the loss, the regret and the rate errors, the last three with ``*_low``,
    ``*_high`` (:func:`percentile_interval` over the replicates, which leaves unknown regrets
    out), ``diverged`` (the fraction of replicates whose rates diverged at the target) and
    ``unknown`` (the fraction whose regret is unknown: held out, where both these rates and the
    target's own diverged)."""
    rows = []
    order = [k for k in (*STRATEGIES, "target") if k in set(reps["strategy"])]
    for key in order:
        g = reps[reps["strategy"] == key].sort_values("replicate")
        p, boot = g.iloc[0], g[g["replicate"] >= 0]
        row: dict[str, Any] = {
            "task": task,
            "strategy": key,
            "label": STRATEGIES.get(key, "tuned at the target"),
            "log2_eta_a": float(p["log2_eta_a"]),
            "log2_eta_b": float(p["log2_eta_b"]),
            "log2_ratio": float(p["log2_eta_b"] - p["log2_eta_a"]),
            "loss": float(p["loss"]),
            "reference_loss": float(p["reference_loss"]),
        }
        for name in ("regret", "err_log2_eta_a", "err_log2_eta_b"):
            lo, hi = percentile_interval(boot[name].to_numpy(float), confidence)
            row.update({name: float(p[name]), f"{name}_low": lo, f"{name}_high": hi})
        lost = boot["loss"] if len(boot) else g["loss"]
        row["diverged"] = float(np.isposinf(lost.to_numpy(float)).mean())
        unknown = boot["regret"] if len(boot) else g["regret"]
        row["unknown"] = float(np.isnan(unknown.to_numpy(float)).mean())
        row["proxies"] = ",".join(f"{w:g}" for w in proxies)
        row["target"] = float(target)
        row["seeds"] = int(seeds)
        row["replicates"] = len(boot)
        rows.append(row)
    return pd.DataFrame(rows)


def validation_table(
    summary: pd.DataFrame,
    draws: np.ndarray,
    target_width: float,
    evaluate: Evaluator,
    *,
    proxies: Sequence[float] | None = None,
    ratio: float = PRACTICE_RATIO,
    theory: tuple[float, float] = THEORY_EXPONENTS,
    confidence: float = 0.95,
    task: str = "",
) -> pd.DataFrame:
    """The regret of every strategy at the target width against tuning there directly: the
    table rows of the validation for any task whose per-width optima (``summary``) and losses at
    the target (``evaluate``) are known — :func:`validation_replicates` summarised by
    :func:`summarize_validation` (percentile intervals over the replicates, in which the
    proxies' optima, the strategies' rates and the target's tuning are found again)."""
    reps = validation_replicates(
        summary, draws, target_width, evaluate, proxies=proxies, ratio=ratio, theory=theory
    )
    nt = float(target_width)
    used = sorted(summary.loc[summary["width"] < nt, "width"].unique()) if proxies is None else (
        sorted(proxies)
    )  # fmt: skip
    return summarize_validation(
        reps,
        confidence=confidence,
        task=task,
        proxies=used,
        target=nt,
        seeds=np.asarray(draws).shape[-1],
    )


def simulator_evaluator(
    simulate: Callable[[list], pd.DataFrame], seeds: Sequence[int], *, loss: str = "test_loss"
) -> Evaluator:
    """An evaluator that runs the target width: ``simulate(parametrizations)`` must return tidy
    rows (``param, seed, step, diverged`` and ``loss``) of fixed-rate parametrizations at one
    width (e.g. ``functools.partial`` of :func:`~loraplus_lab.sims.toy.simulate_batch` with the
    width, seeds and task); the loss is read at the last step, ``inf`` where a run diverged."""
    from loraplus_lab.sims.params import Parametrization

    seeds = list(seeds)

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        params = [
            Parametrization(f"p{k}", 2.0 ** float(a), 2.0 ** float(b), 0, 0)
            for k, (a, b) in enumerate(zip(u, v, strict=True))
        ]
        out = np.full((len(seeds), len(params)), np.nan)
        if not params:
            return out
        df = simulate(params)
        last = df[df["step"] == df["step"].max()]
        k = last["param"].str.slice(1).astype(int).to_numpy()
        s = np.searchsorted(seeds, last["seed"].to_numpy())
        vals = np.where(last["diverged"].to_numpy(bool), np.inf, last[loss].to_numpy(float))
        out[s, k] = vals
        return out

    return evaluate


def interpolating_evaluator(u: np.ndarray, v: np.ndarray, loss: np.ndarray) -> Evaluator:
    """An evaluator from a landscape that was already run (where new runs are expensive, e.g.
    the real-model ladder): per seed, ``log loss`` linearly interpolated between the runs at
    ``(u[c], v[c]) = (log2 η_A, log2 η_B)`` (scattered points, Delaunay triangles); ``loss`` is
    ``(S, C)``, NaN where a run diverged. A query in a triangle with a diverged corner counts as
    diverged (``inf``); outside the runs' hull the loss is unknown (NaN)."""
    from scipy.interpolate import LinearNDInterpolator

    pts = np.column_stack([np.asarray(u, float), np.asarray(v, float)])
    keep = np.isfinite(pts).all(axis=1)
    pts = pts[keep]
    L = np.asarray(loss, dtype=float)[:, keep]
    dead = ~(np.isfinite(L) & (L > 0))
    logL = np.where(dead, 0.0, np.log(np.where(dead, 1.0, L)))
    interp = LinearNDInterpolator(pts, np.column_stack([logL.T, dead.T.astype(float)]))

    def evaluate(uq: np.ndarray, vq: np.ndarray) -> np.ndarray:
        q = interp(np.column_stack([uq, vq]))  # (K, 2S)
        S = L.shape[0]
        val, bad = q[:, :S].T, q[:, S:].T
        return np.where(np.isnan(bad), np.nan, np.where(bad > 0, np.inf, np.exp(val)))

    return evaluate
