"""Measurement: log-log slopes against width with bootstrap confidence intervals, and verdicts.

A statistic ``v`` scales as ``Θ(n^γ)``; its measured exponent is the least-squares slope of
``log2 mean_seeds |v|`` against ``log2 n``. The confidence interval resamples seeds with
replacement (``scipy.stats.bootstrap``, percentile method). Diverged rows are left out: a
diverged seed is dropped at the widths where it diverged and kept where it did not. A verdict
(:func:`verdict`) reads the interval against the prediction and against a tolerance band around
it: ``agrees``, ``close`` (a real departure smaller than the tolerance), ``inconclusive`` or
``differs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.params import Parametrization

#: Simulator column → quantity of the exponent calculus (``loraplus_lab.theory.gamma``).
THEORY_QUANTITY = {
    "delta1": "delta1",
    "delta2": "delta2",
    "delta3": "delta3",
    "za_mean_abs": "z",
    "norm_b": "b",
    "zb_mean_abs": "Z_B",
    "loss": "loss",
}
DEFAULT_TOLERANCE = 0.15


def _slope(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``y`` on ``x`` along the last axis, ignoring non-finite ``y``."""
    w = np.isfinite(y)
    yz = np.where(w, y, 0.0)
    cnt = w.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = (w * x).sum(-1) / cnt
        ym = yz.sum(-1) / cnt
        dx = np.where(w, x - xm[..., None], 0.0)
        num = (dx * (yz - ym[..., None])).sum(-1)
        den = (dx * dx).sum(-1)
        out = num / den
    return np.where(cnt >= 2, out, np.nan)


def _mean_log2(M: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``log2`` of the weighted mean over seeds of ``|v|``, NaN-aware.

    ``M``: ``(rows, seeds, widths)`` with NaN for missing entries; ``weights``: ``(..., seeds)``
    resampling multiplicities. Returns ``(rows, ..., widths)``.
    """
    ok = np.isfinite(M)
    filled = np.where(ok, M, 0.0)
    num = np.einsum("...s,rsw->r...w", weights, filled)
    den = np.einsum("...s,rsw->r...w", weights, ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.log2(num / den)
    y[~np.isfinite(y)] = np.nan
    return y


def log_slopes(
    values: np.ndarray,
    widths: Sequence[float],
    *,
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes of ``log2 mean_seeds |v|`` against ``log2 n``, with bootstrap intervals over seeds.

    Args:
        values: ``(rows, seeds, widths)``; NaN marks a missing (diverged) entry.
        widths: the widths ``n`` of the last axis.
        n_boot: bootstrap resamples (seeds drawn with replacement, the same draws for every row).
        confidence: confidence level of the percentile interval.
        seed: seed of the resampling.
        chunk: rows per bootstrap call (bounds the memory).

    Returns:
        ``(slope, low, high)``, each ``(rows,)``; intervals are NaN with fewer than two seeds.
    """
    M = np.abs(np.asarray(values, dtype=float))
    if M.ndim != 3 or M.shape[2] != len(widths):
        raise InputError(f"values must have shape (rows, seeds, {len(widths)}), got {M.shape}")
    R, S, _ = M.shape
    x = np.log2(np.asarray(widths, dtype=float))
    slope = _slope(x, _mean_log2(M, np.ones(S)))
    low = np.full(R, np.nan)
    high = np.full(R, np.nan)
    todo = np.flatnonzero(np.isfinite(slope) & (np.isfinite(M).any(axis=2).sum(axis=1) >= 2))
    for start in range(0, len(todo), chunk):
        rows = todo[start : start + chunk]
        sub = M[rows]

        def statistic(idx: np.ndarray, axis: int = -1, sub: np.ndarray = sub) -> np.ndarray:
            idx = np.moveaxis(np.asarray(idx, dtype=int), axis, -1)
            counts = (idx[..., None] == np.arange(S)).sum(-2).astype(float)  # (..., S)
            return _slope(x, _mean_log2(sub, counts))

        with _quiet():
            res = stats.bootstrap(
                (np.arange(S),),
                statistic,
                n_resamples=n_boot,
                vectorized=True,
                confidence_level=confidence,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        low[rows] = res.confidence_interval.low
        high[rows] = res.confidence_interval.high
    return slope, low, high


def log_slope(
    values: np.ndarray,
    widths: Sequence[float],
    *,
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """One statistic: ``values`` is ``(seeds, widths)``; see :func:`log_slopes`."""
    M = np.asarray(values, dtype=float)
    if M.ndim != 2 or M.shape[1] != len(widths):
        raise InputError(f"values must have shape (seeds, {len(widths)}), got {M.shape}")
    s, lo, hi = log_slopes(M[None], widths, n_boot=n_boot, confidence=confidence, seed=seed)
    return float(s[0]), float(lo[0]), float(hi[0])


class _quiet:
    """Silence numpy's and scipy's runtime warnings (empty slices, degenerate resamples)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def fit_slopes(
    df: pd.DataFrame,
    quantities: Iterable[str] = ("delta1", "delta2", "delta3"),
    *,
    by: Sequence[str] = ("param", "step"),
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Measured exponents of ``quantities`` against width, one row per group × quantity.

    ``df`` is a tidy frame with columns ``width``, ``seed``, ``diverged``, the columns in ``by``
    and the quantities, one row per group × seed × width. Returns the columns ``*by, quantity,
    slope, ci_low, ci_high, zero`` (every kept value is exactly 0), ``n_widths`` (widths with
    data) and ``n_diverged`` (diverged seed × width entries left out).
    """
    quantities = list(quantities)
    by = list(by)
    missing = [c for c in [*by, "width", "seed", "diverged", *quantities] if c not in df.columns]
    if missing:
        raise InputError(f"the results have no column {missing[0]!r}")
    if df.empty:
        raise InputError("the results are empty")
    keys = [*by, "seed", "width"]
    if df.duplicated(keys).any():
        raise InputError(f"more than one row per {' × '.join(keys)}")
    d = df[keys + quantities].copy()
    d.loc[df["diverged"].to_numpy(), quantities] = np.nan
    d["_div"] = df["diverged"].to_numpy()
    widths = np.sort(d["width"].unique())
    seeds = np.sort(d["seed"].unique())
    groups = d[by].drop_duplicates()
    full = pd.MultiIndex.from_frame(
        groups.merge(pd.DataFrame({"seed": seeds}), how="cross").merge(
            pd.DataFrame({"width": widths}), how="cross"
        )
    )
    cube = d.set_index(keys).reindex(full)
    G, S, W = len(groups), len(seeds), len(widths)
    vals = cube[quantities].to_numpy().reshape(G, S, W, len(quantities))
    M = np.moveaxis(vals, 3, 1).reshape(G * len(quantities), S, W)
    n_div = cube["_div"].fillna(False).to_numpy(bool).reshape(G, S * W).sum(1)
    finite = np.isfinite(M)
    has = finite.any(axis=(1, 2))
    zero = has & np.all(np.where(finite, M, 0.0) == 0.0, axis=(1, 2))
    slope, low, high = log_slopes(
        np.where(zero[:, None, None], np.nan, M),
        widths,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
    out = groups.loc[groups.index.repeat(len(quantities))].reset_index(drop=True)
    out["quantity"] = quantities * G
    out["slope"] = slope
    out["ci_low"] = low
    out["ci_high"] = high
    out["zero"] = zero
    out["n_widths"] = finite.any(axis=1).sum(axis=1)
    out["n_diverged"] = np.repeat(n_div, len(quantities))
    return out


def predicted_exponents(
    params: Sequence[Parametrization],
    optimizer: str,
    steps: int,
    quantities: Iterable[str] = ("delta1", "delta2", "delta3"),
) -> pd.DataFrame:
    """The calculus's exponents for each parametrization: ``param, step, quantity, predicted``.

    ``predicted`` is a float (``-inf`` marks an exactly-zero quantity); ``predicted_label`` is
    the exact rational as text (``"-1/2"``) or ``"zero"``; ``regime`` the classification.
    """
    from loraplus_lab.theory import gamma

    opt = "adam" if optimizer == "adamw" else optimizer
    rows = []
    for p in params:
        pred = gamma.predict(p.init, opt, p.c_a, p.c_b, steps)
        for q in quantities:
            tq = THEORY_QUANTITY[q]
            for t in range(steps + 1):
                e = pred.at(tq, t)
                if e is None:
                    continue
                rows.append(
                    {
                        "param": p.name,
                        "step": t,
                        "quantity": q,
                        "predicted": float(e),
                        "predicted_label": str(e),
                        "regime": pred.regime.label,
                    }
                )
    return pd.DataFrame(rows)


#: The verdicts, from best to worst (see :func:`verdict`).
VERDICTS = ("agrees", "close", "inconclusive", "differs", "no data")
_SLACK = 1e-9  # round-off slack when an interval's end meets the prediction or the band


def verdict(
    slope: float,
    zero: bool,
    predicted: float,
    *,
    ci_low: float = float("nan"),
    ci_high: float = float("nan"),
    n_widths: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """A measured slope against a predicted exponent ``γ``, using its interval and a tolerance.

    With a confidence interval ``[lo, hi]`` the verdict reads it against the prediction and
    against the band ``[γ − tol, γ + tol]`` of departures too small to matter:

    ``"agrees"``
        the interval contains ``γ`` and lies inside the band;
    ``"close"``
        the interval excludes ``γ`` but lies inside the band: a real departure, smaller than the
        tolerance (at finite widths, typically a correction that fades as ``n`` grows);
    ``"inconclusive"``
        the interval contains ``γ`` but reaches outside the band: too wide to rule out a
        departure larger than the tolerance;
    ``"differs"``
        the interval excludes ``γ`` and reaches outside the band.

    Without an interval (one seed, or a deterministic fit) only the point is judged: ``"agrees"``
    within the tolerance, else ``"differs"``. An exactly-zero prediction (``-inf``) agrees only
    with values that are exactly zero; ``"no data"`` when fewer than two widths have data.
    """
    if zero:
        return "agrees" if predicted == -np.inf else "differs"
    if n_widths < 2 or not np.isfinite(slope):
        return "no data"
    if predicted == -np.inf:
        return "differs"
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "agrees" if abs(slope - predicted) <= tolerance + _SLACK else "differs"
    covers = ci_low - _SLACK <= predicted <= ci_high + _SLACK
    inside = predicted - tolerance - _SLACK <= ci_low and ci_high <= predicted + tolerance + _SLACK
    if covers:
        return "agrees" if inside else "inconclusive"
    return "close" if inside else "differs"


def compare(
    fits: pd.DataFrame, predictions: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE
) -> pd.DataFrame:
    """Join measured slopes and predicted exponents and add a ``verdict`` per row
    (:func:`verdict`, from the slope, its interval and ``tolerance``)."""
    on = [c for c in ("param", "step", "quantity") if c in fits.columns]
    out = fits.merge(predictions, on=on, how="left")
    out["verdict"] = [
        verdict(
            r.slope,
            r.zero,
            r.predicted,
            ci_low=r.ci_low,
            ci_high=r.ci_high,
            n_widths=r.n_widths,
            tolerance=tolerance,
        )
        if pd.notna(r.predicted)
        else "no prediction"
        for r in out.itertuples()
    ]
    return out
