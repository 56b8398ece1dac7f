"""Measurement: log-log slopes against width with bootstrap confidence intervals, and verdicts.

A statistic ``v`` scales as ``Θ(n^γ)``; its measured exponent is the least-squares slope of
``log2 mean_seeds |v|`` against ``log2 n``. The confidence interval resamples seeds with
replacement (``scipy.stats.bootstrap``, percentile method). Diverged rows are left out: a
diverged seed is dropped at the widths where it diverged and kept where it did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import pandas as pd
from scipy import stats

from sims.params import Parametrization

#: Simulator column → quantity of the exponent calculus (``theory.gamma``).
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


def log_slope(
    values: np.ndarray,
    widths: Sequence[float],
    *,
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Slope of ``log2 mean_seeds |v|`` against ``log2 n`` and its bootstrap interval over seeds.

    Args:
        values: array ``(seeds, widths)``; NaN marks a missing (diverged) entry.
        widths: the widths ``n`` of the columns.
        n_boot: bootstrap resamples.
        confidence: confidence level of the interval.
        seed: seed of the resampling.

    Returns:
        ``(slope, low, high)``; the interval is NaN with fewer than two seeds.
    """
    M = np.abs(np.asarray(values, dtype=float))
    if M.ndim != 2 or M.shape[1] != len(widths):
        raise ValueError(f"values must have shape (seeds, {len(widths)}), got {M.shape}")
    x = np.log2(np.asarray(widths, dtype=float))

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx, dtype=int), axis, -1)
        sub = M[idx]  # (..., seeds, widths)
        with np.errstate(invalid="ignore", divide="ignore"), _quiet():
            mean = np.nanmean(sub, axis=-2)
            y = np.log2(mean)
        y[~np.isfinite(y)] = np.nan
        return _slope(x, y)

    seeds = np.arange(M.shape[0])
    point = float(statistic(seeds))
    ok_seeds = np.isfinite(M).any(axis=1).sum()
    if ok_seeds < 2 or not np.isfinite(point):
        return point, float("nan"), float("nan")
    res = stats.bootstrap(
        (seeds,),
        statistic,
        n_resamples=n_boot,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


class _quiet:
    """Silence numpy's 'mean of empty slice' warnings inside a block."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

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
    and the quantities. Returns the columns ``*by, quantity, slope, ci_low, ci_high, zero``
    (every kept value is exactly 0), ``n_widths`` and ``n_diverged`` (diverged seed × width
    entries left out).
    """
    quantities = list(quantities)
    missing = [c for c in [*by, "width", "seed", "diverged", *quantities] if c not in df.columns]
    if missing:
        raise ValueError(f"the results have no column {missing[0]!r}")
    rows = []
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        widths = np.sort(g["width"].unique())
        for q in quantities:
            vals = g[q].where(~g["diverged"])
            M = (
                pd.DataFrame({"seed": g["seed"], "width": g["width"], "v": vals})
                .pivot_table(index="seed", columns="width", values="v", dropna=False)
                .reindex(columns=widths)
                .to_numpy()
            )
            n_div = int(g.loc[g["diverged"], ["seed", "width"]].drop_duplicates().shape[0])
            finite = M[np.isfinite(M)]
            zero = finite.size > 0 and bool(np.all(finite == 0))
            if zero or finite.size == 0:
                slope = lo = hi = float("nan")
            else:
                slope, lo, hi = log_slope(
                    M, widths, n_boot=n_boot, confidence=confidence, seed=seed
                )
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "quantity": q,
                    "slope": slope,
                    "ci_low": lo,
                    "ci_high": hi,
                    "zero": zero,
                    "n_widths": int(np.isfinite(M).any(axis=0).sum()),
                    "n_diverged": n_div,
                }
            )
    return pd.DataFrame(rows)


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
    from theory import gamma

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


def verdict(
    slope: float,
    zero: bool,
    predicted: float,
    *,
    n_widths: int = 2,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """``"agrees"`` / ``"differs"`` / ``"no data"`` for a measured slope against a prediction.

    An exactly-zero prediction (``-inf``) agrees only with values that are exactly zero.
    """
    if zero:
        return "agrees" if predicted == -np.inf else "differs"
    if n_widths < 2 or not np.isfinite(slope):
        return "no data"
    if predicted == -np.inf:
        return "differs"
    return "agrees" if abs(slope - predicted) <= tolerance else "differs"


def compare(
    fits: pd.DataFrame, predictions: pd.DataFrame, *, tolerance: float = DEFAULT_TOLERANCE
) -> pd.DataFrame:
    """Join measured slopes and predicted exponents and add a ``verdict`` per row."""
    on = [c for c in ("param", "step", "quantity") if c in fits.columns]
    out = fits.merge(predictions, on=on, how="left")
    out["verdict"] = [
        verdict(r.slope, r.zero, r.predicted, n_widths=r.n_widths, tolerance=tolerance)
        if pd.notna(r.predicted)
        else "no prediction"
        for r in out.itertuples()
    ]
    return out


def exponent_label(value: Fraction | float) -> str:
    """Text of an exponent: ``-1/2``, ``0`` or ``zero`` for an exactly-zero quantity."""
    if isinstance(value, float) and value == -np.inf:
        return "zero"
    return str(value)
