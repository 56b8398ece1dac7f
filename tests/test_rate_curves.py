"""Loss against the learning rate, one curve per width: curves, their minima, transfer slopes,
the equal-rate gap of a refined landscape, the plot, and the experiments behind notebook 03."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims import figures, landscape
from loraplus_lab.sims.params import Parametrization
from loraplus_lab.sims.plots import plot_rate_curves

matplotlib.use("Agg")

ETAS = np.arange(-12.0, 0.01, 0.25)
WIDTHS = [64, 256, 1024, 4096]


def curve(u0: float, floor: float, *, a: float = 0.5) -> np.ndarray:
    """A loss curve over ``ETAS`` with its minimum ``floor`` at ``log2 η̃ = u0``."""
    return floor * np.exp(a * (ETAS - u0) ** 2)


def rows(rule: str, width: int, L: np.ndarray, seeds=range(6), noise=0.02) -> pd.DataFrame:
    rng = np.random.default_rng([width, len(rule)])
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "rule": rule,
                    "width": width,
                    "seed": s,
                    "log2_eta": ETAS,
                    "diverged": False,
                    "test_loss": L * np.exp(noise * rng.standard_normal(L.shape)),
                }
            )
            for s in seeds
        ],
        ignore_index=True,
    )


def transfer_data() -> pd.DataFrame:
    """Two rules over four widths: "flat" has its minimum at log2 η̃ = −5 at every width and a
    best loss that does not move; "drift" moves half an octave down per doubling of the width
    (−5 at n = 64) and its best loss grows like n^0.2."""
    frames = []
    for w in WIDTHS:
        x = np.log2(w / 64)
        frames.append(rows("flat", w, curve(-5.0, 0.1)))
        frames.append(rows("drift", w, curve(-5.0 - 0.5 * x, 0.1 * 2 ** (0.2 * x))))
    return pd.concat(frames, ignore_index=True)


def test_minima_and_transfer_slopes_are_recovered() -> None:
    curves = landscape.rate_curves(transfer_data())
    assert [(c.rule, c.width) for c in curves][:2] == [("drift", 64), ("drift", 256)]
    optima = landscape.curve_optima(curves, reference="flat", n_boot=200).set_index(
        ["rule", "width"]
    )
    for w in WIDTHS:
        x = np.log2(w / 64)
        assert optima.loc[("flat", w), "log2_eta"] == pytest.approx(-5.0, abs=0.25)
        assert optima.loc[("drift", w), "log2_eta"] == pytest.approx(-5.0 - 0.5 * x, abs=0.25)
        assert optima.loc[("drift", w), "vs_reference"] == pytest.approx(2 ** (0.2 * x), rel=0.05)
        assert optima.loc[("flat", w), "vs_reference"] == 1.0
    lo, hi = optima["best_loss_low"], optima["best_loss_high"]
    assert ((lo <= optima["best_loss"] + 1e-12) & (optima["best_loss"] <= hi + 1e-12)).all()
    assert not optima["at_edge"].any()

    fits = landscape.transfer_fits(curves, n_boot=200).set_index("rule")
    assert fits.loc["flat", "eta_slope"] == pytest.approx(0.0, abs=0.1)
    assert fits.loc["drift", "eta_slope"] == pytest.approx(-0.5, abs=0.1)
    assert fits.loc["drift", "loss_slope"] == pytest.approx(0.2, abs=0.03)
    assert fits.loc["flat", "loss_slope"] == pytest.approx(0.0, abs=0.03)
    # the intervals hold the truth and exclude the other rule's slope
    tol = 1e-9
    assert fits.loc["drift", "eta_low"] - tol <= -0.5 <= fits.loc["drift", "eta_high"] + tol
    assert fits.loc["flat", "eta_low"] - tol <= 0.0 <= fits.loc["flat", "eta_high"] + tol
    assert fits.loc["drift", "eta_high"] < -0.25 < fits.loc["flat", "eta_low"]
    assert fits.loc["drift", "loss_low"] > 0.1


def test_a_rate_where_one_seed_diverged_does_not_count() -> None:
    df = rows("r", 64, curve(-5.0, 0.1))
    best = (df["seed"] == 3) & np.isclose(df["log2_eta"], -5.0)
    df.loc[best, "diverged"] = True
    (c,) = landscape.rate_curves(df)
    assert np.isnan(c.mean()[ETAS == -5.0]).all()
    assert abs(c.best()[0] + 5.0) == 0.25  # the minimum moves to a neighbour
    table = landscape.curve_table([c])
    assert np.isnan(table.loc[np.isclose(table["log2_eta"], -5.0), "loss"]).all()


def test_a_minimum_at_the_last_surviving_rate_is_flagged() -> None:
    df = rows("r", 64, curve(-2.0, 0.1))
    df.loc[df["log2_eta"] > -3.0, "diverged"] = True  # runs diverge before the minimum
    (c,) = landscape.rate_curves(df)
    assert c.best()[0] == -3.0
    assert bool(landscape.curve_optima([c], n_boot=20)["at_edge"].iloc[0])


def test_bad_curve_input() -> None:
    df = rows("r", 64, curve(-5.0, 0.1))
    with pytest.raises(ValueError, match="no column 'test_loss'"):
        landscape.rate_curves(df.drop(columns="test_loss"))
    with pytest.raises(ValueError, match="at least 3 rates"):
        landscape.rate_curves(df[df["log2_eta"] > -0.4])
    other = rows("r", 256, curve(-5.0, 0.1), seeds=range(1, 7))
    with pytest.raises(ValueError, match="not every seed"):
        landscape.rate_curves(pd.concat([df, other]))
    with pytest.raises(ValueError, match="two widths"):
        landscape.transfer_fits(landscape.rate_curves(df))
    with pytest.raises(ValueError, match="reference"):
        landscape.curve_optima(landscape.rate_curves(df), reference="nope")


def _surface(width: int, u0: float, v0: float, line_floor: float) -> landscape.Surface:
    """A quadratic bowl with minimum 0.1 at (u0, v0) and an equal-rate line whose best is
    ``line_floor`` (at log2 η = −6), three seeds with no noise."""
    u = v = np.arange(-8.0, -3.9, 0.5)
    du, dv = np.meshgrid(u - u0, v - v0, indexing="ij")
    M = 0.1 * np.exp(0.3 * du**2 + 0.3 * dv**2)
    line_u = np.arange(-10.0, -1.9, 0.25)
    line = line_floor * np.exp(0.2 * (line_u + 6.0) ** 2)
    return landscape.Surface(
        width, u, v, np.stack([M] * 3), np.arange(3), line_u, np.stack([line] * 3)
    )


def test_equal_rate_gap_counts_the_line_as_part_of_the_plane() -> None:
    surfs = [_surface(64, -6.0, -5.0, 0.13), _surface(256, -7.0, -5.0, 0.08)]
    gap = landscape.equal_rate_gap(surfs, n_boot=50).set_index("width")
    assert gap.loc[64, "best_pair"] == pytest.approx(0.1)
    assert gap.loc[64, "gap"] == pytest.approx(0.3)
    # where the line beats every grid cell, the best pair is on the line: no gap, never negative
    assert gap.loc[256, "best_pair"] == pytest.approx(0.08)
    assert gap.loc[256, "gap"] == 0.0
    assert gap.loc[64, "gap_low"] == pytest.approx(0.3) and gap.loc[64, "gap_high"] == (
        pytest.approx(0.3)
    )  # no seed noise: a degenerate interval


def test_plot_marks_each_minimum_and_the_best_losses() -> None:
    df = transfer_data()
    curves = landscape.rate_curves(df)
    table = landscape.curve_table(curves)
    optima = landscape.curve_optima(curves, n_boot=50)
    fig = plot_rate_curves(
        table,
        optima,
        rules=["flat", "drift"],
        labels={"flat": "lines up", "drift": "drifts"},
        best_of={"flat": "best: lines up"},
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "lines up",
        "drifts",
        "best loss (95% bootstrap over seeds)",
    ]
    # one curve and one circle per width; the circles sit at the minima of curve_optima
    circles = [ln for ln in axes[1].lines if ln.get_marker() == "o"]
    assert len(axes[1].lines) == 2 * len(WIDTHS) and len(circles) == len(WIDTHS)
    drift = optima[optima["rule"] == "drift"].sort_values("width")
    assert [float(c.get_xdata()[0]) for c in circles] == list(drift["log2_eta"])
    # the y-axis stops at twice the loss where nothing is learnt yet
    first = table[table["log2_eta"] == ETAS[0]]["loss"].max()
    assert axes[0].get_ylim()[1] == pytest.approx(2 * first)
    # the last panel: one error bar series (best_of has one rule) at every width
    (series,) = [ln for ln in axes[2].lines if ln.get_marker() == "o"]
    assert np.allclose(series.get_ydata(), optima[optima["rule"] == "flat"]["best_loss"])


@pytest.mark.slow
def test_rate_curves_experiment_in_fast_mode() -> None:
    """The experiment behind notebook 03's first figure: LoRA+ with its base ratio tuned at the
    smallest width, and equal rates, along one base rate."""
    tuning = figures.tune_base_ratio(True, "adam")
    ratio0 = figures.best_base_ratio(tuning)
    assert set(tuning["width"]) == {64} and np.log2(ratio0) in set(tuning["log2_ratio0"])
    best = {c.rule: c.best()[1] for c in landscape.rate_curves(tuning)}
    assert best[f"λ0=2^{np.log2(ratio0):g}"] == min(best.values())

    df = figures.collect_rate_curves(True, "adam", ratio0=ratio0)
    assert set(df["rule"]) == set(figures.CURVE_RULES)
    n0 = df["width"].min()
    eta = 2.0 ** df["log2_eta"]
    lp = df["rule"] == "loraplus"
    assert np.allclose(df.loc[lp, "eta_a"], eta[lp] * n0 / df.loc[lp, "width"], rtol=1e-12)
    assert np.allclose(df.loc[lp, "eta_b"], ratio0 * eta[lp], rtol=1e-12)
    eq = ~lp
    assert (df.loc[eq, "eta_a"] == df.loc[eq, "eta_b"]).all()
    sq = df["rule"] == "lora-sqrt"
    assert np.allclose(df.loc[sq, "eta_a"], eta[sq] * np.sqrt(n0 / df.loc[sq, "width"]))
    # the same (rule, rate, seed) at n0 gives the same loss in the tuning runs and here
    a = df[lp & (df["width"] == n0)].set_index(["log2_eta", "seed"])["test_loss"]
    t = tuning[np.isclose(tuning["ratio"], ratio0)].set_index(["log2_eta", "seed"])["test_loss"]
    assert np.allclose(a.sort_index(), t.sort_index().loc[a.sort_index().index], rtol=1e-9)


@pytest.mark.slow
def test_local_refinement_evaluates_the_rates_it_claims() -> None:
    coarse = figures.collect_linear_landscape(True)
    # one window per width, centred on the coarse optimum (later windows may leave the grid)
    fine = figures.refine_linear_landscape(coarse, "adam", half_width=1.0, step=0.5, rounds=1)
    assert set(fine["seed"]) == set(coarse["seed"])
    for w, g in fine.groupby("width"):
        u = np.unique(np.log2(g["eta_a"]))
        v = np.unique(np.log2(g["eta_b"]))
        assert (
            len(u) == len(v) == 5 and np.allclose(np.diff(u), 0.5) and np.allclose(np.diff(v), 0.5)
        )
        # every coarse cell inside the window was run again: same rates, seed, loss
        c = coarse[(coarse["width"] == w) & ~coarse["param"].str.startswith("diag")]
        inside = c[np.isin(np.log2(c["eta_a"]), u) & np.isin(np.log2(c["eta_b"]), v)]
        key = ["eta_a", "eta_b", "seed"]
        both = inside.merge(g, on=key, suffixes=("_c", "_f"))
        assert len(inside) >= len(g["seed"].unique())  # a 2-octave window holds a coarse cell
        assert len(both) == len(inside)
        assert np.allclose(both["test_loss_c"], both["test_loss_f"], rtol=1e-9, atol=0)


def test_a_refinement_window_moves_to_a_minimum_on_its_edge(monkeypatch) -> None:
    """The window follows the fine loss to its minimum when it starts off-centre: a stand-in
    simulator whose loss has its minimum at (−3, −9), and a coarse landscape whose optimum is at
    (−6, −6)."""
    import loraplus_lab.sims.toy as toy

    def bowl_rows(widths, params, seeds, *, u0, v0, **_):
        rows = []
        for w in widths:
            for p in params:
                u, v = np.log2(p.eta_a), np.log2(p.eta_b)
                for s in seeds:
                    loss = 0.1 * np.exp(0.2 * (u - u0) ** 2 + 0.2 * (v - v0) ** 2)
                    rows.append(
                        {"width": w, "param": p.name, "seed": s, "step": 8, "eta_a": p.eta_a,
                         "eta_b": p.eta_b, "diverged": False, "test_loss": loss}
                    )  # fmt: skip
        return pd.DataFrame(rows)

    grid = [
        Parametrization(f"a{i}b{j}", 2.0**a, 2.0**b, 0, 0)
        for i, a in enumerate(range(-12, 0))
        for j, b in enumerate(range(-12, 0))
    ]
    coarse = bowl_rows([64], grid, range(2), u0=-6.0, v0=-6.0)
    calls = []

    def fake(widths, params, seeds, **kw):
        calls.append(params)
        return bowl_rows(widths, params, seeds, u0=-3.0, v0=-9.0)

    monkeypatch.setattr(toy, "simulate_batch", fake)
    moved = figures.refine_linear_landscape(coarse, "adam", half_width=1.5, step=0.25, rounds=4)
    (s,) = landscape.surfaces(moved, loss="test_loss")
    o = landscape.find_optimum(s.u, s.v, s.mean(), smooth=0)
    assert not o.at_edge and abs(o.u + 3.0) < 0.01 and abs(o.v + 9.0) < 0.01
    assert 2 <= len(calls) <= 4  # it moved, and stopped once the minimum was inside
    calls.clear()
    stay = figures.refine_linear_landscape(coarse, "adam", half_width=1.5, step=0.25, rounds=1)
    assert len(calls) == 1
    assert np.log2(stay["eta_a"]).mean() == pytest.approx(-6.0)
