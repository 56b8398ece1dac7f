"""Learning-rate landscapes across widths: optima, near-optimal sets and scaling fits.

A landscape is the loss after ``T`` steps over a log2 grid of ``(η_A, η_B)`` at one width,
averaged over seeds. The theory (``docs/exponents.md``) predicts for Adam-type optimizers that
the best ``η_A`` shrinks like ``1/n``, the best ``η_B`` stays put, the best ratio
``λ* = η_B*/η_A*`` grows like ``n``, and the best loss reachable with equal rates falls behind
the best overall as the width grows (measured on the linear task: under gradient descent it
does; under Adam no gap is resolved with 8 seeds, see ``figures/README.md``). This module
locates the optimum robustly (a quadratic fit of ``log loss`` in a window around the grid
minimum of a lightly smoothed surface, not a raw argmin), and fits the scaling of the optima
against width with bootstrap confidence intervals over seeds: a free bootstrap that finds the
optimum afresh in every resample, and beside it one anchored at the basin the full data selects
(see :func:`scaling_fits`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from loraplus_lab.sims.checks import InputError


@dataclass(frozen=True)
class Surface:
    """Loss on a log2 grid at one width: ``loss[s, i, j]`` for seed ``s``, ``u[i] = log2 η_A``,
    ``v[j] = log2 η_B`` (NaN where a run diverged)."""

    width: int
    u: np.ndarray
    v: np.ndarray
    loss: np.ndarray
    seeds: np.ndarray
    diag_u: np.ndarray | None = None
    diag_loss: np.ndarray | None = None

    def diagonal(self, idx: np.ndarray | None = None) -> tuple[float, float]:
        """Best loss with equal rates and its ``log2 η``: from the separate equal-rate runs when
        there are any (a finer line than the grid's diagonal), else from the grid's diagonal."""
        if self.diag_loss is None:
            return diagonal_best(self.u, self.v, self.mean(idx))
        line = (self.diag_loss if idx is None else self.diag_loss[idx]).mean(axis=0)
        if not np.isfinite(line).any():
            return float("nan"), float("nan")
        k = int(np.nanargmin(line))
        return float(line[k]), float(self.diag_u[k])

    def mean(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Mean over seeds (or the resampled seeds ``idx``); a diverged seed makes a cell NaN."""
        L = self.loss if idx is None else self.loss[idx]
        return L.mean(axis=0)


@dataclass(frozen=True)
class Optimum:
    """Where the loss is smallest: ``u = log2 η_A*``, ``v = log2 η_B*``, the loss there, how it
    was found (``"quadratic"`` fit or grid ``"argmin"``), and whether it sits on the grid's edge
    (then it is a bound, not an estimate); ``cell`` is the grid cell the local fit started from."""

    u: float
    v: float
    loss: float
    method: str
    at_edge: bool
    cell: tuple[int, int] = (0, 0)


def surfaces(df: pd.DataFrame, *, step: int | None = None, loss: str = "loss") -> list[Surface]:
    """Landscapes from tidy simulator rows (columns ``width, seed, step, eta_a, eta_b,
    diverged`` and ``loss``), at ``step`` (default: the last), one per width.

    The rate grid must be a full product grid at each width; ``η`` values are the actual rates
    at that width (``eta_a``, ``eta_b`` columns).
    """
    for c in ("width", "seed", "step", "eta_a", "eta_b", "diverged", loss):
        if c not in df.columns:
            raise InputError(f"the results have no column {c!r}")
    step = int(df["step"].max()) if step is None else step
    d = df[df["step"] == step]
    if d.empty:
        raise InputError(f"no rows at step {step}")
    is_line = (
        d["param"].astype(str).str.startswith("diag")
        if "param" in d.columns
        else pd.Series(False, index=d.index)
    )
    lines = d[is_line]
    d = d[~is_line]
    out = []
    for width, g in d.groupby("width"):
        u = np.log2(g["eta_a"].to_numpy())
        v = np.log2(g["eta_b"].to_numpy())
        ug, vg = np.unique(np.round(u, 9)), np.unique(np.round(v, 9))
        seeds = np.sort(g["seed"].unique())
        if len(ug) < 3 or len(vg) < 3:
            raise InputError(
                f"width {width}: the rate grid has {len(ug)} × {len(vg)} points; "
                "a landscape needs at least 3 × 3"
            )
        L = np.full((len(seeds), len(ug), len(vg)), np.nan)
        si = np.searchsorted(seeds, g["seed"].to_numpy())
        ui = np.searchsorted(ug, np.round(u, 9))
        vi = np.searchsorted(vg, np.round(v, 9))
        vals = g[loss].to_numpy(dtype=float)
        vals = np.where(g["diverged"].to_numpy(), np.nan, vals)
        L[si, ui, vi] = vals
        diag_u = diag_loss = None
        gl = lines[lines["width"] == width]
        if not gl.empty:
            du = np.log2(gl["eta_a"].to_numpy())
            diag_u = np.unique(np.round(du, 9))
            diag_loss = np.full((len(seeds), len(diag_u)), np.nan)
            dv = np.where(gl["diverged"].to_numpy(), np.nan, gl[loss].to_numpy(dtype=float))
            diag_loss[
                np.searchsorted(seeds, gl["seed"].to_numpy()),
                np.searchsorted(diag_u, np.round(du, 9)),
            ] = dv
        out.append(Surface(int(width), ug, vg, L, seeds, diag_u, diag_loss))
    return out


def find_optimum(
    u: np.ndarray,
    v: np.ndarray,
    loss: np.ndarray,
    *,
    window: int = 2,
    smooth: float = 0.5,
    anchor: tuple[int, int] | None = None,
) -> Optimum:
    """The minimum of a loss surface on a log2 grid.

    The grid minimum of ``log loss`` smoothed with a Gaussian of ``smooth`` grid cells (diverged
    cells count as the worst finite loss) picks the basin; a quadratic ``a + b·du + c·dv + d·du²
    + e·dv² + f·du·dv`` is then fitted by least squares to the unsmoothed ``log loss`` in a
    ``(2·window + 1)²`` window around it (``anchor``, a grid cell, fixes the basin instead). The
    vertex is the optimum when the fit is convex and the vertex lies inside the window;
    otherwise the grid minimum is kept. ``loss`` at the optimum is the (unsmoothed) grid value
    nearest to it.
    """
    u, v = np.asarray(u, float), np.asarray(v, float)
    L = np.asarray(loss, float)
    if L.shape != (len(u), len(v)):
        raise InputError(f"loss has shape {L.shape}, expected {(len(u), len(v))}")
    if len(u) < 3 or len(v) < 3:
        raise InputError(f"a landscape needs at least a 3 × 3 grid, got {len(u)} × {len(v)}")
    finite = np.isfinite(L) & (L > 0)
    if not finite.any():
        raise InputError("every cell of the landscape diverged")
    logL = np.where(finite, np.log(np.where(finite, L, 1.0)), np.log(L[finite]).max())
    S = ndimage.gaussian_filter(logL, smooth, mode="nearest") if smooth > 0 else logL
    i0, j0 = np.unravel_index(np.argmin(S), S.shape) if anchor is None else anchor
    at_edge = i0 in (0, len(u) - 1) or j0 in (0, len(v) - 1)
    cell = (int(i0), int(j0))
    grid_opt = Optimum(float(u[i0]), float(v[j0]), float(L[i0, j0]), "argmin", at_edge, cell)
    if at_edge:
        return grid_opt
    i_lo, i_hi = max(0, i0 - window), min(len(u), i0 + window + 1)
    j_lo, j_hi = max(0, j0 - window), min(len(v), j0 + window + 1)
    uu, vv = np.meshgrid(u[i_lo:i_hi] - u[i0], v[j_lo:j_hi] - v[j0], indexing="ij")
    z = logL[i_lo:i_hi, j_lo:j_hi]  # the fit itself on the unsmoothed surface: no edge bias
    X = np.column_stack(
        [
            np.ones(uu.size),
            uu.ravel(),
            vv.ravel(),
            uu.ravel() ** 2,
            vv.ravel() ** 2,
            (uu * vv).ravel(),
        ]
    )
    coef, *_ = np.linalg.lstsq(X, z.ravel(), rcond=None)
    _, b, c, d, e, f = coef
    H = np.array([[2 * d, f], [f, 2 * e]])
    if np.all(np.linalg.eigvalsh(H) > 1e-12):
        du, dv = np.linalg.solve(H, [-b, -c])
        if (
            u[i_lo] - u[i0] <= du <= u[i_hi - 1] - u[i0]
            and v[j_lo] - v[j0] <= dv <= v[j_hi - 1] - v[j0]
        ):
            ui, vi = u[i0] + du, v[j0] + dv
            ii = int(np.argmin(np.abs(u - ui)))
            jj = int(np.argmin(np.abs(v - vi)))
            return Optimum(float(ui), float(vi), float(L[ii, jj]), "quadratic", False, cell)
    return grid_opt


def near_optimal(loss: np.ndarray, tol: float = 0.01) -> np.ndarray:
    """Cells whose loss is within ``tol`` (relative) of the best finite loss."""
    L = np.asarray(loss, float)
    if not np.isfinite(L).any():
        raise InputError("every cell of the landscape diverged")
    best = np.nanmin(L)
    with np.errstate(invalid="ignore"):
        return np.isfinite(L) & (L <= best * (1 + tol) if best >= 0 else L <= best * (1 - tol))


def diagonal_best(u: np.ndarray, v: np.ndarray, loss: np.ndarray) -> tuple[float, float]:
    """The best loss with equal rates ``η_A = η_B`` (grid cells where ``u == v``) and its
    ``log2 η``. Raises if the two axes share no value."""
    u, v = np.asarray(u, float), np.asarray(v, float)
    common = np.intersect1d(np.round(u, 9), np.round(v, 9))
    if common.size == 0:
        raise InputError("the η_A and η_B grids share no value: no equal-rate diagonal")
    iu = np.searchsorted(np.round(u, 9), common)
    iv = np.searchsorted(np.round(v, 9), common)
    diag = np.asarray(loss, float)[iu, iv]
    if not np.isfinite(diag).any():
        return float("nan"), float("nan")
    k = int(np.nanargmin(diag))
    return float(diag[k]), float(common[k])


def optima_table(surfs: Sequence[Surface], **kwargs) -> pd.DataFrame:
    """Per width: ``log2 η_A*``, ``log2 η_B*``, ``log2 λ*``, the best loss, the best loss on the
    diagonal, their relative gap, how the optimum was found, and the near-optimal set's size."""
    rows = []
    for s in surfs:
        M = s.mean()
        opt = find_optimum(s.u, s.v, M, **kwargs)
        diag, diag_u = s.diagonal()
        best = float(np.nanmin(M))
        rows.append(
            {
                "width": s.width,
                "log2_eta_a": opt.u,
                "log2_eta_b": opt.v,
                "log2_ratio": opt.v - opt.u,
                "best_loss": best,
                "diag_loss": diag,
                "diag_log2_eta": diag_u,
                "gap": (diag - best) / best if best > 0 else float("nan"),
                "method": opt.method,
                "at_edge": opt.at_edge,
                "near_optimal_cells": int(near_optimal(M).sum()),
            }
        )
    return pd.DataFrame(rows)


def gap_table(
    surfs: Sequence[Surface], *, n_boot: int = 200, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Per width: the relative gap ``(L_diag − L*)/L*`` of the best equal-rate loss behind the
    best grid loss (as in :func:`optima_table`), with a percentile bootstrap interval over
    seeds (the same resamples at every width). Columns ``width, gap, ci_low, ci_high``."""
    if not surfs:
        raise ValueError("no landscapes")
    seeds = surfs[0].seeds

    def gaps(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)
        out = np.empty(len(surfs))
        for k, s in enumerate(surfs):
            best = float(np.nanmin(s.mean(idx)))
            diag, _ = s.diagonal(idx)
            out[k] = (diag - best) / best if best > 0 else np.nan
        return out

    point = gaps(np.arange(len(seeds)))
    low, high = seed_bootstrap(gaps, len(seeds), n_boot, confidence, seed)
    return pd.DataFrame(
        {"width": [s.width for s in surfs], "gap": point, "ci_low": low, "ci_high": high}
    )


#: The calculus's prediction for the slopes against log2 n (Adam-type optimizers).
PREDICTED = {"log2_eta_a": -1.0, "log2_eta_b": 0.0, "log2_ratio": 1.0}


def scaling_fits(
    surfs: Sequence[Surface],
    *,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    **kwargs,
) -> pd.DataFrame:
    """Slopes against ``log2 n`` of ``log2 η_A*``, ``log2 η_B*``, ``log2 λ*`` and of the relative
    gap ``(L_diag − L*)/L*`` (a linear fit: the gap is negative where the finer equal-rate line
    beats the grid), with two percentile bootstrap intervals over seeds (the same resampled
    seeds at every width, the same resamples for both), and the predicted slopes.

    ``ci_low``, ``ci_high`` — the free bootstrap: every resample finds its optimum afresh, as the
    full data's was found. Adam's landscapes have a long, nearly flat valley along
    ``η_A·η_B ≈ const``; where a resample's optimum jumps to another part of it, this interval
    shows it. ``anchored_low``, ``anchored_high`` — the anchored bootstrap: each resample's
    optimum is fitted from the grid cell the full data selects (its basin), so it measures the
    uncertainty of the optimum within that basin only, conditional on the basin being right.
    For ``gap`` (no optimum is located) both are the same.
    """
    if len(surfs) < 2:
        raise InputError(f"scaling fits need at least two widths, got {len(surfs)}")
    seeds = surfs[0].seeds
    for s in surfs:
        if not np.array_equal(s.seeds, seeds):
            raise InputError("every width must have the same seeds")
    x = np.log2([s.width for s in surfs])
    keys = ["log2_eta_a", "log2_eta_b", "log2_ratio", "gap"]
    anchors = [find_optimum(s.u, s.v, s.mean(), **kwargs).cell for s in surfs]

    def values(idx: np.ndarray, anchored: bool) -> np.ndarray:
        vals = np.empty((len(keys), len(surfs)))
        for k, s in enumerate(surfs):
            M = s.mean(idx)
            opt = find_optimum(s.u, s.v, M, anchor=anchors[k] if anchored else None, **kwargs)
            best = np.nanmin(M)
            diag, _ = s.diagonal(idx)
            gap = (diag - best) / best if best > 0 else np.nan
            vals[:, k] = [opt.u, opt.v, opt.v - opt.u, gap]
        return np.array([_ols_slope(x, row) for row in vals])

    def statistic(idx: np.ndarray) -> np.ndarray:  # free slopes, then the anchored ones
        idx = np.asarray(idx, dtype=int)
        return np.concatenate([values(idx, anchored=False), values(idx, anchored=True)[:3]])

    point = values(np.arange(len(seeds)), anchored=False)  # = a fit through optima_table
    low, high = seed_bootstrap(statistic, len(seeds), n_boot, confidence, seed)
    rows = []
    for k, key in enumerate(keys):
        pred = PREDICTED.get(key)
        a = len(keys) + k if k < 3 else k  # the anchored interval's index (gap: the same)
        rows.append(
            {
                "quantity": key,
                "slope": float(point[k]),
                "ci_low": float(low[k]),
                "ci_high": float(high[k]),
                "anchored_low": float(low[a]),
                "anchored_high": float(high[a]),
                "predicted": pred if pred is not None else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def find_optimum_scattered(
    u: np.ndarray,
    v: np.ndarray,
    loss: np.ndarray,
    *,
    radius: float = 1.0,
) -> Optimum:
    """The minimum of a loss known at scattered points ``(u, v)`` of the log2 plane (a coarse
    grid with a finer patch, lines, …).

    Around the best finite point ``(u0, v0)`` the points with ``|u − u0| ≤ radius`` and
    ``|v − v0| ≤ radius`` are fitted by least squares with ``a + b·du + c·dv + d·du² + e·dv² +
    f·du·dv``; the vertex is the optimum when the fit is convex and the vertex lies inside that
    box, otherwise the best point is (``method = "argmin"``). ``at_edge`` flags a best point with
    no evaluated point beyond it on one side along ``u`` or ``v`` (then it is a bound, not an
    estimate). ``loss`` at a quadratic optimum is the fitted value there.
    """
    u, v, L = (np.asarray(a, float) for a in (u, v, loss))
    if not (u.shape == v.shape == L.shape) or u.ndim != 1:
        raise ValueError("u, v and loss must be 1-D arrays of one length")
    ok = np.isfinite(u) & np.isfinite(v) & np.isfinite(L)
    if not ok.any():
        raise ValueError("every point of the landscape diverged")
    u, v, L = u[ok], v[ok], L[ok]
    k = int(np.argmin(L))
    u0, v0 = u[k], v[k]
    same_v, same_u = np.isclose(v, v0), np.isclose(u, u0)
    at_edge = bool(
        not (u[same_v] < u0).any()
        or not (u[same_v] > u0).any()
        or not (v[same_u] < v0).any()
        or not (v[same_u] > v0).any()
    )
    best = Optimum(float(u0), float(v0), float(L[k]), "argmin", at_edge)
    if at_edge:
        return best
    near = (np.abs(u - u0) <= radius + 1e-9) & (np.abs(v - v0) <= radius + 1e-9)
    du, dv, z = u[near] - u0, v[near] - v0, L[near]
    if near.sum() < 8 or len(np.unique(du)) < 3 or len(np.unique(dv)) < 3:
        return best
    X = np.column_stack([np.ones_like(du), du, dv, du**2, dv**2, du * dv])
    coef, *_ = np.linalg.lstsq(X, z, rcond=None)
    a, b, c, d, e, f = coef
    H = np.array([[2 * d, f], [f, 2 * e]])
    if not np.all(np.linalg.eigvalsh(H) > 1e-12):
        return best
    xu, xv = np.linalg.solve(H, [-b, -c])
    if abs(xu) > radius or abs(xv) > radius:
        return best
    value = a + b * xu + c * xv + d * xu**2 + e * xv**2 + f * xu * xv
    return Optimum(float(u0 + xu), float(v0 + xv), float(value), "quadratic", False)


# ----------------------------------------------------------------------------- rate curves
# The picture readers of learning-rate-transfer material expect: the loss against one base rate
# η̃, one curve per width, for a rule that says how the rates change with the width. Under a rule
# that scales the rates right the curves line up (their minima sit at the same η̃) and the best
# loss does not rise with the width.


@dataclass(frozen=True)
class RateCurve:
    """Loss along a line of base rates at one width: ``loss[s, k]`` for seed ``s`` at
    ``log2_eta[k] = log2 η̃`` (NaN where that seed diverged), under one ``rule``."""

    rule: str
    width: int
    log2_eta: np.ndarray
    loss: np.ndarray
    seeds: np.ndarray

    def mean(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Mean over seeds (or the resampled seeds ``idx``); a diverged seed makes a rate NaN:
        a rate counts only where every seed survives it."""
        L = self.loss if idx is None else self.loss[idx]
        return L.mean(axis=0)

    def best(self, idx: np.ndarray | None = None) -> tuple[float, float]:
        """``(log2 η̃*, L*)``: the grid minimum of the seed-mean curve (NaN, NaN if every rate
        diverged)."""
        m = self.mean(idx)
        if not np.isfinite(m).any():
            return float("nan"), float("nan")
        k = int(np.nanargmin(m))
        return float(self.log2_eta[k]), float(m[k])


def rate_curves(df: pd.DataFrame, *, loss: str = "test_loss") -> list[RateCurve]:
    """One :class:`RateCurve` per rule × width from tidy simulator rows at one step.

    ``df`` needs the columns ``rule, width, log2_eta, seed, diverged`` and ``loss``
    (:func:`loraplus_lab.sims.figures.collect_rate_curves` writes them); every rule × width must
    hold the same seeds.
    """
    for c in ("rule", "width", "log2_eta", "seed", "diverged", loss):
        if c not in df.columns:
            raise ValueError(f"the results have no column {c!r}")
    if df.empty:
        raise ValueError("no rows")
    seeds = np.sort(df["seed"].unique())
    out = []
    for (rule, width), g in df.groupby(["rule", "width"], sort=False):
        etas = np.unique(np.round(g["log2_eta"].to_numpy(float), 9))
        if len(etas) < 3:
            raise ValueError(f"{rule} at width {width}: a curve needs at least 3 rates")
        if not np.array_equal(np.sort(g["seed"].unique()), seeds):
            raise ValueError(f"{rule} at width {width}: not every seed is there")
        L = np.full((len(seeds), len(etas)), np.nan)
        vals = np.where(g["diverged"].to_numpy(), np.nan, g[loss].to_numpy(float))
        L[
            np.searchsorted(seeds, g["seed"].to_numpy()),
            np.searchsorted(etas, np.round(g["log2_eta"].to_numpy(float), 9)),
        ] = vals
        out.append(RateCurve(str(rule), int(width), etas, L, seeds))
    return sorted(out, key=lambda c: (c.rule, c.width))


def curve_table(curves: Sequence[RateCurve]) -> pd.DataFrame:
    """The curves as a tidy table for plotting: ``rule, width, log2_eta, loss`` (seed mean,
    NaN where a seed diverged), ``sem`` (standard error over seeds) and ``seeds``."""
    rows = []
    for c in curves:
        m = c.mean()
        sem = c.loss.std(axis=0, ddof=1) / np.sqrt(len(c.seeds)) if len(c.seeds) > 1 else 0 * m
        for k, e in enumerate(c.log2_eta):
            rows.append(
                {
                    "rule": c.rule,
                    "width": c.width,
                    "log2_eta": float(e),
                    "loss": float(m[k]),
                    "sem": float(sem[k]),
                    "seeds": len(c.seeds),
                }
            )
    return pd.DataFrame(rows)


def seed_bootstrap(
    statistic, n_seeds: int, n_boot: int, confidence: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (``confidence``, ``n_boot`` resamples, generator seeded
    with ``seed``) of a vector ``statistic`` of resampled seed indices ``0 … n_seeds − 1``; NaN
    with fewer than two seeds. Degenerate resamples are expected with few seeds and not warned
    about."""
    low = high = np.full(len(statistic(np.arange(n_seeds))), np.nan)
    if n_seeds >= 2:
        with warnings.catch_warnings():  # degenerate resamples (few seeds) are expected here
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (np.arange(n_seeds),),
                statistic,
                n_resamples=n_boot,
                vectorized=False,
                confidence_level=confidence,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval.low, res.confidence_interval.high
    return np.asarray(low, float), np.asarray(high, float)


def curve_optima(
    curves: Sequence[RateCurve],
    *,
    reference: str | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per rule × width: the best base rate ``log2 η̃*`` and the best loss ``L*`` of the
    seed-mean curve, with percentile bootstrap intervals over seeds (the same resampled seeds
    for every curve, the minimum re-found in every resample).

    With ``reference`` (a rule), also ``L* / L*_reference`` at the same width, with its interval:
    how much worse (> 1) or better (< 1) the best of each rule is than the reference's best.
    """
    curves = list(curves)
    _same_seeds(curves)
    ref = {}
    if reference is not None:
        ref = {c.width: i for i, c in enumerate(curves) if c.rule == reference}
        if not ref:
            raise ValueError(f"no curve of the reference rule {reference!r}")

    def statistic(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)
        best = np.array([c.best(idx) for c in curves])
        out = [best[:, 0], best[:, 1]]
        if ref:
            r = np.array([best[ref[c.width], 1] if c.width in ref else np.nan for c in curves])
            out.append(best[:, 1] / r)
        return np.concatenate(out)

    point = statistic(np.arange(len(curves[0].seeds)))
    low, high = seed_bootstrap(statistic, len(curves[0].seeds), n_boot, confidence, seed)
    k = len(curves)
    table = pd.DataFrame(
        {
            "rule": [c.rule for c in curves],
            "width": [c.width for c in curves],
            "log2_eta": point[:k],
            "log2_eta_low": low[:k],
            "log2_eta_high": high[:k],
            "best_loss": point[k : 2 * k],
            "best_loss_low": low[k : 2 * k],
            "best_loss_high": high[k : 2 * k],
            "at_edge": [_curve_edge(c) for c in curves],
        }
    )
    if ref:
        table["vs_reference"] = point[2 * k :]
        table["vs_reference_low"] = low[2 * k :]
        table["vs_reference_high"] = high[2 * k :]
    return table


def transfer_fits(
    curves: Sequence[RateCurve],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per rule, least-squares slopes against ``log2 n`` of ``log2 η̃*`` (octaves the best base
    rate moves per doubling of the width: 0 when the rate transfers) and of ``log2 L*`` (0 when
    the best loss does not change with the width), with percentile bootstrap intervals over
    seeds (the same resampled seeds at every width, each minimum re-found in every resample)."""
    curves = list(curves)
    _same_seeds(curves)
    rules = list(dict.fromkeys(c.rule for c in curves))
    groups = [[c for c in curves if c.rule == r] for r in rules]
    for r, g in zip(rules, groups, strict=True):
        if len(g) < 2:
            raise ValueError(f"{r}: a slope against width needs at least two widths")

    def statistic(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)
        out = []
        for g in groups:
            x = np.log2([c.width for c in g])
            best = np.array([c.best(idx) for c in g])
            out += [_ols_slope(x, best[:, 0]), _ols_slope(x, np.log2(best[:, 1]))]
        return np.array(out)

    point = statistic(np.arange(len(curves[0].seeds)))
    low, high = seed_bootstrap(statistic, len(curves[0].seeds), n_boot, confidence, seed)
    return pd.DataFrame(
        {
            "rule": rules,
            "widths": [len(g) for g in groups],
            "eta_slope": point[0::2],
            "eta_low": low[0::2],
            "eta_high": high[0::2],
            "loss_slope": point[1::2],
            "loss_low": low[1::2],
            "loss_high": high[1::2],
        }
    )


def _same_seeds(curves: Sequence[RateCurve]) -> None:
    if not curves:
        raise ValueError("no curves")
    for c in curves:
        if not np.array_equal(c.seeds, curves[0].seeds):
            raise ValueError("every curve must have the same seeds")


def _curve_edge(c: RateCurve) -> bool:
    """Whether the seed-mean curve's minimum is its first or last surviving rate: then it is a
    bound, not an estimate (the last one is where the runs start to diverge, or the grid's end)."""
    m = c.mean()
    finite = np.flatnonzero(np.isfinite(m))
    if finite.size == 0:
        return False
    k = int(np.nanargmin(m))
    return k in (finite[0], finite[-1])


# ----------------------------------------------------------------------------- equal-rate gap
def equal_rate_gap(
    surfs: Sequence[Surface],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per width: the best loss over every ``(η_A, η_B)`` evaluated (the surface and the
    equal-rate line, which lies in the same plane), the best loss with equal rates, and the
    relative gap ``(L_equal − L*)/L* ≥ 0``, each with a percentile bootstrap interval over seeds
    (minima re-found in every resample)."""
    surfs = list(surfs)
    if not surfs:
        raise ValueError("no surfaces")
    for s in surfs:
        if not np.array_equal(s.seeds, surfs[0].seeds):
            raise ValueError("every width must have the same seeds")

    def statistic(idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=int)
        pair, equal = [], []
        for s in surfs:
            eq, _ = s.diagonal(idx)
            M = s.mean(idx)
            grid = np.nanmin(M) if np.isfinite(M).any() else np.nan
            pair.append(np.nanmin([grid, eq]))
            equal.append(eq)
        pair, equal = np.array(pair), np.array(equal)
        return np.concatenate([pair, equal, (equal - pair) / pair])

    point = statistic(np.arange(len(surfs[0].seeds)))
    low, high = seed_bootstrap(statistic, len(surfs[0].seeds), n_boot, confidence, seed)
    k = len(surfs)
    return pd.DataFrame(
        {
            "width": [s.width for s in surfs],
            "best_pair": point[:k],
            "best_pair_low": low[:k],
            "best_pair_high": high[:k],
            "best_equal": point[k : 2 * k],
            "best_equal_low": low[k : 2 * k],
            "best_equal_high": high[k : 2 * k],
            "gap": point[2 * k :],
            "gap_low": low[2 * k :],
            "gap_high": high[2 * k :],
        }
    )
