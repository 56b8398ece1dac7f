"""Slope fits with bootstrap CIs, divergence handling and verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims.measure import fit_slopes, log_slope, verdict

WIDTHS = [2**k for k in range(6, 15)]


def test_exact_power_law_gives_exact_slope() -> None:
    rng = np.random.default_rng(0)
    consts = rng.uniform(0.5, 2.0, size=6)
    for gamma in (-1.0, -0.5, 0.0, 0.75):
        M = consts[:, None] * np.asarray(WIDTHS, float)[None, :] ** gamma
        slope, lo, hi = log_slope(M, WIDTHS)
        assert slope == pytest.approx(gamma, abs=1e-12)
        assert lo == pytest.approx(gamma, abs=1e-12) and hi == pytest.approx(gamma, abs=1e-12)


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_seeds() -> None:
    rng = np.random.default_rng(1)
    w = np.asarray(WIDTHS, float)
    covered, widths_ci = 0, {}
    for n_seeds in (4, 32):
        for rep in range(20):
            noise = rng.lognormal(0.0, 0.8, size=(n_seeds, len(WIDTHS)))
            slope, lo, hi = log_slope(noise * w**-0.5, WIDTHS, seed=rep)
            covered += lo <= -0.5 <= hi
            widths_ci.setdefault(n_seeds, []).append(hi - lo)
            assert lo <= slope <= hi
    assert covered >= 30  # 40 intervals at 95%: a generous floor
    assert np.mean(widths_ci[32]) < 0.6 * np.mean(widths_ci[4])


def test_single_seed_has_no_interval() -> None:
    slope, lo, hi = log_slope(np.asarray(WIDTHS, float)[None, :] ** 0.3, WIDTHS)
    assert slope == pytest.approx(0.3)
    assert np.isnan(lo) and np.isnan(hi)


def _frame(values: np.ndarray, diverged: np.ndarray | None = None) -> pd.DataFrame:
    S, W = values.shape
    seed, wi = np.meshgrid(np.arange(S), np.arange(W), indexing="ij")
    return pd.DataFrame(
        {
            "param": "p",
            "step": 1,
            "seed": seed.ravel(),
            "width": np.asarray(WIDTHS)[wi.ravel()],
            "delta1": values.ravel(),
            "diverged": np.zeros(S * W, bool) if diverged is None else diverged.ravel(),
        }
    )


def test_diverged_seeds_stay_out_of_fits() -> None:
    w = np.asarray(WIDTHS, float)
    vals = np.tile(w**-1.0, (5, 1))
    div = np.zeros_like(vals, dtype=bool)
    vals[2, 4:] = 1e30  # a seed that blew up from the fifth width on
    div[2, 4:] = True
    fit = fit_slopes(_frame(vals, div), ["delta1"])
    row = fit.iloc[0]
    assert row.slope == pytest.approx(-1.0, abs=1e-12)
    assert row.n_diverged == len(WIDTHS) - 4
    # without the flag the blown-up seed would dominate
    assert fit_slopes(_frame(vals), ["delta1"]).iloc[0].slope > 1


def test_exact_zero_is_reported_not_fitted() -> None:
    fit = fit_slopes(_frame(np.zeros((3, len(WIDTHS)))), ["delta1"]).iloc[0]
    assert fit.zero and np.isnan(fit.slope)


def test_all_diverged_is_no_data() -> None:
    vals = np.ones((3, len(WIDTHS)))
    fit = fit_slopes(_frame(vals, np.ones_like(vals, dtype=bool)), ["delta1"]).iloc[0]
    assert not fit.zero and np.isnan(fit.slope) and fit.n_widths == 0
    assert verdict(fit.slope, fit.zero, 0.0, n_widths=fit.n_widths) == "no data"


@pytest.mark.parametrize(
    "slope, zero, predicted, expected",
    [
        (0.05, False, 0.0, "agrees"),
        (-0.2, False, 0.0, "differs"),
        (-0.9, False, -1.0, "agrees"),
        (float("nan"), True, -np.inf, "agrees"),
        (float("nan"), True, 0.0, "differs"),
        (0.0, False, -np.inf, "differs"),
    ],
)
def test_verdicts_without_an_interval(
    slope: float, zero: bool, predicted: float, expected: str
) -> None:
    assert verdict(slope, zero, predicted) == expected


NAN = float("nan")


@pytest.mark.parametrize(
    "slope, lo, hi, predicted, expected",
    [
        # the interval contains the prediction and lies within ±0.15 of it
        (0.01, -0.02, 0.04, 0.0, "agrees"),
        (-0.99, -1.02, -0.97, -1.0, "agrees"),
        # LoRA+ δ¹ in the default sweep: the interval excludes 0, all of it within ±0.15
        (0.01, 0.002, 0.020, 0.0, "close"),
        (-0.93, -0.95, -0.90, -1.0, "close"),
        # contains the prediction but reaches beyond the band: too wide to tell
        (0.05, -0.10, 0.30, 0.0, "inconclusive"),
        # excludes the prediction and leaves the band
        (0.12, 0.05, 0.20, 0.0, "differs"),
        (1.25, 1.20, 1.34, 1.0, "differs"),
        # a point estimate inside the band does not rescue an interval outside it
        (0.14, 0.13, 0.40, 0.0, "differs"),
        # exactly at the edges (round-off slack)
        (0.0, 0.0, 0.15, 0.0, "agrees"),
    ],
)
def test_verdicts_read_the_interval_against_prediction_and_tolerance(
    slope: float, lo: float, hi: float, predicted: float, expected: str
) -> None:
    assert verdict(slope, False, predicted, ci_low=lo, ci_high=hi) == expected


def test_compare_uses_the_intervals() -> None:
    """A slope whose interval excludes the prediction by less than the tolerance is "close",
    not "agrees", through fit_slopes and compare as the sweep uses them."""
    from loraplus_lab.sims.measure import compare

    rng = np.random.default_rng(2)
    w = np.asarray(WIDTHS, float)
    vals = w**0.05 * rng.lognormal(0.0, 0.01, size=(16, len(WIDTHS)))  # slope 0.05, tight
    fits = fit_slopes(_frame(vals), ["delta1"])
    pred = pd.DataFrame({"param": ["p"], "step": [1], "quantity": ["delta1"], "predicted": [0.0]})
    row = compare(fits, pred).iloc[0]
    assert row.ci_low > 0 and row.ci_high < 0.15
    assert row.verdict == "close"
    assert compare(fits, pred.assign(predicted=0.05)).iloc[0].verdict == "agrees"
    assert compare(fits, pred.assign(predicted=-0.2)).iloc[0].verdict == "differs"


def test_missing_column_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="delta9"):
        fit_slopes(_frame(np.ones((2, len(WIDTHS)))), ["delta9"])
