"""Tuning the paper's toy at n = ∞: the batched finite-width dynamics against the reduced dynamics
built from each seed's own x, the limit's construction, the tuner's optimum, and the approach
rate's fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims import infinite_width as iw
from loraplus_lab.sims.toy import ToyProblem
from loraplus_lab.theory import reduced


@pytest.mark.parametrize("optimizer", ["gd", "signgd", "adam"])
def test_batched_finite_width_runs_equal_the_seeds_own_reduced_dynamics(optimizer: str) -> None:
    """All seeds at once, the width folded into η̃_A, against ``reduced.run`` on each seed's
    problem with its own x (η_A = η̃_A·n0/n): the same losses to round-off."""
    n, seeds, n0 = 1000, range(4), 64
    toy = iw.toy_seeds(seeds, n)
    u, v = np.array([-6.0, -4.5]), np.array([-1.0, -2.5])
    L = iw.losses(toy, u, v, steps=7, optimizer=optimizer, n0=n0)
    for k, s in enumerate(seeds):
        red = ToyProblem.paper(n, s).reduced()
        for j in range(2):
            ref = reduced.run(
                red, eta_a=2 ** u[j] * n0 / n, eta_b=2 ** v[j], steps=7, optimizer=optimizer, eps=0
            ).loss[:, 0]
            np.testing.assert_allclose(L[:, j, k], ref, rtol=1e-12, atol=1e-300)


def test_the_limit_is_the_same_seeds_at_infinite_width() -> None:
    """ξ = a_0ᵀx·√n/‖x‖ and e = −ζ do not depend on the width; the limit's runs are approached
    by the finite widths (the loss curves at n = 2^20 within 1% of the initial loss of the
    limit's)."""
    lim = iw.toy_seeds(range(3))
    assert math.isinf(lim.width) and np.all(lim.sq_ratio == 1) and np.all(lim.l1_ratio == 1)
    for n in (200, 5000):
        t = iw.toy_seeds(range(3), n)
        np.testing.assert_allclose(t.limit().z0, lim.z0, rtol=1e-12)
        np.testing.assert_allclose(t.e, lim.e, rtol=1e-12)
    big = iw.toy_seeds(range(3), 2**20)
    a = iw.losses(big, -6.0, -1.0, steps=10)
    b = iw.losses(lim, -6.0, -1.0, steps=10)
    scale = b[0].max()
    assert np.abs(a - b).max() < 1e-2 * scale
    assert np.abs(a - b).max() > 1e-6 * scale  # a finite width is not the limit


def test_tuning_finds_a_stationary_minimum_below_every_grid_point() -> None:
    toy = iw.toy_seeds(range(8))
    grid = (-10.0, -2.0, -4.0, 2.0, 0.25)
    t = iw.tune(toy, steps=10, grid=grid)
    assert t.converged and min(t.hessian_eigenvalues) > 0

    def f(u: float, v: float) -> float:
        return float(iw.objective(toy, u, v, steps=10)[0])

    h = 1e-5
    grad = [
        (f(t.u + h, t.v) - f(t.u - h, t.v)) / (2 * h),
        (f(t.u, t.v + h) - f(t.u, t.v - h)) / (2 * h),
    ]
    assert np.max(np.abs(grad)) < 1e-5, grad
    U, V = np.meshgrid(np.arange(-10, -1.99, 0.25), np.arange(-4, 2.01, 0.25), indexing="ij")
    assert t.value <= iw.objective(toy, U.ravel(), V.ravel(), steps=10).min() + 1e-12
    assert t.value == pytest.approx(f(t.u, t.v))


def test_approach_rate_fit() -> None:
    """RMS over the sets of distances that fall exactly like n^-1/2 and regrets like n^-1 (each
    set its own constant): slopes −1/2 and −1, intervals that collapse onto them."""
    widths = [2.0**k for k in (8, 10, 12, 14)]
    rows = [
        {"set": j, "width": w, "distance": (1 + j) * w**-0.5, "regret": (2 + j) / w}
        for j in range(5)
        for w in widths
    ]
    rows += [{"set": j, "width": math.inf, "distance": 0.0, "regret": 0.0} for j in range(5)]
    r = iw.approach_rate(pd.DataFrame(rows), n_boot=99)
    assert r["slope"] == pytest.approx(-0.5, abs=1e-12) and r["expected"] == -0.5
    assert r["ci_low"] == pytest.approx(-0.5, abs=1e-9) and r["ci_high"] == pytest.approx(-0.5)
    assert r["widths"] == 4 and r["sets"] == 5
    r = iw.approach_rate(pd.DataFrame(rows), column="regret", n_boot=99)
    assert r["slope"] == pytest.approx(-1.0, abs=1e-12) and r["expected"] == -1.0


def test_the_finite_width_optimum_approaches_the_limit() -> None:
    """Two seed sets, widths 2^10, 2^14, 2^18: every set's optimum ends nearer the limit's than it
    started, and the root mean square distance shrinks by more than 4× over the 8 octaves
    (n^-1/2 predicts 16×; the figure transfer_infinite_width measures the rate)."""
    table = iw.approach([2**10, 2**14, 2**18], sets=2, seeds_per_set=8, steps=10)
    fin = table[np.isfinite(table["width"])]
    assert fin["converged"].all()
    for _, g in fin.groupby("set"):
        g = g.sort_values("width")
        assert g["distance"].iloc[-1] < g["distance"].iloc[0]
    rms = fin.groupby("width")["distance"].apply(lambda s: np.sqrt(np.mean(s**2)))
    assert rms.iloc[-1] < rms.iloc[0] / 4, rms
