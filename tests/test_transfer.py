"""Transfer from proxy widths: exact recovery of known power laws, interval coverage on synthetic
noise, the validation machinery against a landscape whose optimum is known, the evaluators, the
input adapters (toy rows, per-width tables, the ladder's rows through its analysis) and refusals."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims import transfer as tr
from loraplus_lab.sims.params import Parametrization

U = np.arange(-16.0, 0.01, 0.5)  # log2 η_A grid
V = np.arange(-12.0, 4.01, 0.5)  # log2 η_B grid
H = np.array([[0.30, 0.08], [0.08, 0.20]])  # curvature of log loss (positive definite)


def bowl(u0: float, v0: float, u: np.ndarray = U, v: np.ndarray = V) -> np.ndarray:
    """``L = 0.05·exp((d)ᵀH(d))`` with ``d = (u − u0, v − v0)``: log L is exactly quadratic, so
    the landscape's quadratic fit finds (u0, v0) to round-off."""
    du, dv = np.meshgrid(u - u0, v - v0, indexing="ij")
    return 0.05 * np.exp(H[0, 0] * du**2 + 2 * H[0, 1] * du * dv + H[1, 1] * dv**2)


def grid_rows(centres: dict[int, tuple[float, float] | list], seeds: int = 3) -> pd.DataFrame:
    """Tidy toy-grid rows: at each width one bowl per seed (one centre for every seed, or one
    centre per seed)."""
    uu, vv = np.meshgrid(U, V, indexing="ij")
    frames = []
    for width, c in centres.items():
        per_seed = c if isinstance(c, list) else [c] * seeds
        for s, (u0, v0) in enumerate(per_seed):
            frames.append(
                pd.DataFrame(
                    {
                        "width": width,
                        "param": "grid",
                        "c_a": "0",
                        "c_b": "0",
                        "seed": s,
                        "step": 8,
                        "eta_a": 2.0 ** uu.ravel(),
                        "eta_b": 2.0 ** vv.ravel(),
                        "diverged": False,
                        "loss": bowl(u0, v0).ravel(),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def law(log2_c: float, k: float, n: float) -> float:
    return log2_c + k * math.log2(n)


@pytest.mark.parametrize("exponents", [(-1.0, 0.0), (-0.8, 0.3), (-1.25, -0.2)])
def test_known_power_laws_are_recovered_exactly(exponents: tuple[float, float]) -> None:
    """Noise-free landscapes whose optimum follows η_A* = c_A·n^a, η_B* = c_B·n^b: every mode
    that is free to (free; blend, since noise-free data contradict the theory beyond their
    zero spread; theory when the law is the theory's) finds c_A, a, c_B, b and predicts the
    rates at a width 2^6 above the widest proxy to round-off."""
    a, b = exponents
    ca, cb = 1.7, -4.3  # log2 c_A, log2 c_B
    widths = [64, 128, 256, 512]
    df = grid_rows({w: (law(ca, a, w), law(cb, b, w)) for w in widths})
    optima = tr.optima_from_results(df, n_boot=50)
    assert np.allclose(optima.u, [law(ca, a, w) for w in widths], atol=1e-9)
    assert np.allclose(optima.boot_v, optima.v, atol=1e-9)  # every seed the same: no spread
    modes = ["free", "blend"] + (["theory"] if exponents == tr.THEORY_EXPONENTS else [])
    target = 2**15
    for mode in modes:
        rule = tr.fit_rule(optima, mode=mode)
        assert rule.a == pytest.approx(a, abs=1e-9) and rule.b == pytest.approx(b, abs=1e-9)
        assert rule.log2_c_a == pytest.approx(ca, abs=1e-8)
        assert rule.log2_c_b == pytest.approx(cb, abs=1e-8)
        p = rule.predict(target)
        assert p.log2_eta_a == pytest.approx(law(ca, a, target), abs=1e-8)
        assert p.log2_eta_b == pytest.approx(law(cb, b, target), abs=1e-8)
        assert p.log2_ratio == pytest.approx(p.log2_eta_b - p.log2_eta_a, abs=1e-12)
        assert p.eta_a == pytest.approx(2.0 ** law(ca, a, target), rel=1e-8)
        assert f"n^{a:+.3f}" in rule.formula() and f"n^{b:+.3f}" in rule.formula()
    if exponents != tr.THEORY_EXPONENTS:  # the theory's exponents are then wrong, visibly
        p = tr.fit_rule(optima, mode="theory").predict(target)
        assert abs(p.log2_eta_a - law(ca, a, target)) > 0.5


def _seed_optima(rng: np.random.Generator, widths, seeds: int, sigma: float, law_a, law_b):
    rows = []
    for w in widths:
        for s in range(seeds):
            rows.append(
                {
                    "width": w,
                    "seed": s,
                    "log2_eta_a": law_a(w) + sigma * rng.standard_normal(),
                    "log2_eta_b": law_b(w) + sigma * rng.standard_normal(),
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mode", ["free", "theory"])
def test_intervals_cover_the_truth_at_their_nominal_rate(mode: str) -> None:
    """Over 400 independent draws of 8 seeds' noisy optima at 3 proxy widths (the law is the
    theory's, so both modes are unbiased), the 95% interval of the predicted log2 η_A and log2
    η_B four octaves above the widest proxy covers the truth 95% of the time (binomial band
    ±3 standard errors: 0.917–0.983)."""
    rng = np.random.default_rng(1)
    widths, target = [64, 128, 256], 4096

    def la(w: float) -> float:
        return law(1.5, -1.0, w)

    def lb(w: float) -> float:
        return law(-3.0, 0.0, w)

    draws, hits = 400, np.zeros(2)
    for k in range(draws):
        df = _seed_optima(rng, widths, 8, 0.3, la, lb)
        p = tr.fit_rule(tr.optima_from_seed_optima(df, n_boot=199, seed=k), mode=mode).predict(
            target
        )
        hits += [
            p.log2_eta_a_low <= la(target) <= p.log2_eta_a_high,
            p.log2_eta_b_low <= lb(target) <= p.log2_eta_b_high,
        ]
    coverage = hits / draws
    assert np.all((coverage > 0.917) & (coverage < 0.983)), coverage


def test_the_command_offers_the_predictors_modes() -> None:
    from loraplus_lab.sims.cli import transfer as cli_transfer

    assert cli_transfer.MODES == tr.MODES  # the command line lists them without importing pandas


def test_small_sample_factor() -> None:
    # √(S/(S−1))·t_{S−1}/z: exact for the mean of S normal seeds
    assert tr.small_sample_factor(8) == pytest.approx(math.sqrt(8 / 7) * 2.364624 / 1.959964, 1e-5)
    assert tr.small_sample_factor(None) == 1.0
    assert tr.small_sample_factor(10_000) == pytest.approx(1.0, abs=1e-3)


def test_blend_keeps_the_theory_unless_the_proxies_contradict_it() -> None:
    """Noisy optima that follow the theory: the blend's weight on the free exponent is 0 and its
    rule is the theory's; optima that depart from it far beyond their noise: weight near 1."""
    rng = np.random.default_rng(3)
    widths = [64, 128, 256, 512]
    df = _seed_optima(rng, widths, 8, 0.4, lambda w: law(1.0, -1.0, w), lambda w: law(-3, 0, w))
    rule = tr.fit_rule(tr.optima_from_seed_optima(df), mode="blend")
    assert rule.weight_a == 0.0 and rule.a == -1.0 and rule.weight_b == 0.0 and rule.b == 0.0
    theory = tr.fit_rule(tr.optima_from_seed_optima(df), mode="theory")
    assert rule.log2_c_a == pytest.approx(theory.log2_c_a)
    df = _seed_optima(rng, widths, 8, 0.05, lambda w: law(1.0, -0.5, w), lambda w: law(-3, 0, w))
    rule = tr.fit_rule(tr.optima_from_seed_optima(df), mode="blend")
    assert rule.weight_a > 0.95 and rule.a == pytest.approx(-0.5, abs=0.05)
    assert rule.se_a < 0.05
    # the weight: 0 until the fitted exponent is 1.96 standard errors from the theory's
    assert tr.blend_weight(-0.5, -1.0, 0.3) == 0.0 and tr.blend_weight(-1.5, -1.0, 0.26) == 0.0
    d = 0.5 - 1.959964 * 0.1
    assert tr.blend_weight(-0.5, -1.0, 0.1) == pytest.approx(d * d / (d * d + 0.01), rel=1e-6)


def test_validation_against_a_known_landscape() -> None:
    """The whole validation on landscapes whose optimum follows the theory exactly, with the
    target's loss computed from the same formula: the LoRA+ transfers land on the target's
    optimum (regret 0 to round-off, rate errors 0), carrying equal rates or λ = 16 over does
    not; every replicate's seeds are the same, so the intervals are points."""
    widths, target = [64, 128, 256], 4096

    def centre(w: float) -> tuple[float, float]:
        return law(2.0, -1.0, w), -3.0

    rows = grid_rows({w: centre(w) for w in [*widths, target]})
    surfs = tr.grid_surfaces(rows)
    draws = tr.seed_resamples(3, 30, 0)
    summary = tr.width_summaries(surfs, draws)

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        u0, v0 = centre(target)
        du, dv = u - u0, v - v0
        L = 0.05 * np.exp(H[0, 0] * du**2 + 2 * H[0, 1] * du * dv + H[1, 1] * dv**2)
        return np.tile(L, (3, 1))

    table = tr.validation_table(summary, draws, target, evaluate, task="bowl").set_index("strategy")
    for key in ("d", "e", "f", "target"):
        assert table.loc[key, "regret"] == pytest.approx(0.0, abs=1e-9)
        assert table.loc[key, "err_log2_eta_a"] == pytest.approx(0.0, abs=1e-8)
        assert table.loc[key, "regret_high"] == pytest.approx(0.0, abs=1e-9)
    # (a) carries the widest proxy's best equal rate: the right η_A at n = 256 is 4 octaves too
    # large at 4096; (c) carries λ = 16's η_A: both are visibly worse, (b) too
    for key in ("a", "b", "c"):
        assert table.loc[key, "regret"] > 0.3, (key, table.loc[key, "regret"])
    # the rates they pick are what they say: (b) = (a) scaled by 256/4096
    assert table.loc["b", "log2_eta_a"] == pytest.approx(table.loc["a", "log2_eta_a"] - 4)
    assert table.loc["c", "log2_ratio"] == pytest.approx(4.0)
    assert list(table["proxies"].unique()) == ["64,128,256"] and set(table["seeds"]) == {3}


def test_regret_counts_a_diverged_seed_and_intervals_reach_it() -> None:
    losses = np.array([[1.0, 2.0], [np.inf, 2.0], [1.0, np.nan]])
    w = np.array([[1, 1, 0], [1, 0, 1], [2, 0, 1]], dtype=float)
    m = tr._seed_means(losses, w)
    assert np.isposinf(m[0, 0]) and m[0, 1] == 2.0 and np.isnan(m[1, 1]) and m[1, 0] == 1.0
    lo, hi = tr.percentile_interval(np.r_[np.zeros(90), np.full(10, np.inf)])
    assert lo == 0.0 and np.isposinf(hi)
    assert np.isnan(tr.percentile_interval(np.ones(5))[0])


# ----------------------------------------------------------------------------- held-out seeds
def _bowl_at(u: np.ndarray, v: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    du, dv = np.asarray(u) - centre[0], np.asarray(v) - centre[1]
    return 0.05 * np.exp(H[0, 0] * du**2 + 2 * H[0, 1] * du * dv + H[1, 1] * dv**2)


def test_holdout_runs_every_strategy_on_the_held_out_seeds_of_its_replicate() -> None:
    """On held-out seeds each replicate averages the seeds its own held-out resample drew
    (not the tuning seeds' resample), for every strategy and for the target's tuned rates,
    which are the reference: the loss is the bowl times that resample's mean seed factor, to
    round-off, and the regret is the bowl's ratio."""
    widths, target = [64, 128, 256], 4096
    centre = {w: (law(2.0, -1.0, w), -3.0) for w in [*widths, target]}
    surfs = tr.grid_surfaces(grid_rows(centre))
    draws = tr.seed_resamples(3, 25, 0)
    summary = tr.width_summaries(surfs, draws)
    factor = 1.0 + 0.1 * np.arange(7)  # the 7 held-out seeds differ by a factor
    hdraws = tr.seed_resamples(7, 25, 1)

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return factor[:, None] * _bowl_at(u, v, centre[target])[None, :]

    reps = tr.holdout_replicates(summary, draws, target, evaluate, hdraws)
    mean_factor = np.r_[factor.mean(), factor[hdraws].mean(axis=1)]
    r = reps["replicate"].to_numpy()
    bowl_here = _bowl_at(reps["log2_eta_a"], reps["log2_eta_b"], centre[target])
    # (the evaluator sees the rates rounded to 1e-9 octaves)
    assert np.allclose(reps["loss"], bowl_here * mean_factor[r + 1], rtol=1e-7)
    tgt = reps[reps["strategy"] == "target"].set_index("replicate")
    assert np.allclose(reps["reference_loss"], tgt["loss"].reindex(r).to_numpy(), rtol=0)
    assert (tgt["regret"] == 0).all()
    expected = bowl_here / _bowl_at(*tgt[["log2_eta_a", "log2_eta_b"]].reindex(r).T.values,
                                    centre[target]) - 1  # fmt: skip
    assert np.allclose(reps["regret"], expected, rtol=1e-9, atol=1e-12)
    table = tr.summarize_validation(reps).set_index("strategy")
    assert table.loc["d", "regret"] == pytest.approx(0.0, abs=1e-9)
    assert table.loc["a", "regret"] > 0.3 and table.loc["c", "regret"] > 0.3
    with pytest.raises(tr.TransferError, match="each replicate resamples both"):
        tr.holdout_replicates(summary, draws, target, evaluate, hdraws[:10])


def test_holdout_regret_has_no_winners_curse() -> None:
    """A landscape where the rates do not matter at all (every cell and seed an independent
    draw around 1): in-sample, the reference is the luckiest of a thousand noisy cells, so every
    strategy shows a large regret that is pure selection bias; on held-out seeds the regrets
    are centred on 0 and their intervals cover it."""
    rng = np.random.default_rng(3)
    widths, target, S, E = [64, 128, 256], 1024, 3, 400
    rows = grid_rows({w: (-5.0, -3.0) for w in [*widths, target]}, seeds=S)
    rows["loss"] = np.exp(0.3 * rng.standard_normal(len(rows)))
    surfs = tr.grid_surfaces(rows)
    draws = tr.seed_resamples(S, 100, 0)
    summary = tr.width_summaries(surfs, draws)
    noise = {}

    def held_out(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.empty((E, len(u)))
        for k, key in enumerate(zip(np.round(u, 9), np.round(v, 9), strict=True)):
            if key not in noise:
                noise[key] = np.exp(0.3 * rng.standard_normal(E))
            out[:, k] = noise[key]
        return out

    in_target = surfs[-1]

    def in_sample(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # the tuning seeds' own noise at the target: the nearest cell of its landscape
        iu = np.abs(in_target.u[:, None] - np.asarray(u)[None, :]).argmin(axis=0)
        iv = np.abs(in_target.v[:, None] - np.asarray(v)[None, :]).argmin(axis=0)
        return in_target.loss[:, iu, iv]

    biased = tr.validation_table(summary, draws, target, in_sample).set_index("strategy")
    fair = tr.summarize_validation(
        tr.holdout_replicates(summary, draws, target, held_out, tr.seed_resamples(E, 100, 1))
    ).set_index("strategy")
    assert biased.loc[list("abcdef"), "regret"].mean() > 0.3
    for key in "abcdef":
        assert biased.loc[key, "regret"] > 0.1, (key, biased.loc[key, "regret"])
        assert abs(fair.loc[key, "regret"]) < 0.08, (key, fair.loc[key, "regret"])
        assert fair.loc[key, "regret_low"] < 0 < fair.loc[key, "regret_high"], key


def test_holdout_regret_when_the_reference_diverged() -> None:
    """Held out, the target's tuned rates can diverge on a fresh seed: a strategy that did not
    then has regret −100%; one that diverged too, even on another seed, has an unknown regret
    (NaN: left out of the intervals, counted in ``unknown``); the target's own rates regret 0."""
    summary = pd.DataFrame(
        [
            {"width": w, "replicate": -1, "log2_eta_a": -5.0 - k, "log2_eta_b": -3.0,
             "equal_log2_eta": e, "ratio_log2_eta_a": -6.0, "best_loss": 1.0}
            for k, (w, e) in enumerate(((64, -4.0), (128, -4.0), (256, -4.0), (1024, -6.0)))
        ]
    )  # fmt: skip

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # held-out seed 0 diverges at the target's tuned rates (η_A = 2^-8), seed 1 at the
        # equal rates (2^-4) of (a)
        out = np.full((2, len(u)), 2.0)
        out[0, np.isclose(u, -8.0)] = np.inf
        out[1, np.isclose(u, -4.0)] = np.inf
        return out

    reps = tr.holdout_replicates(
        summary, np.zeros((0, 1), int), 1024, evaluate, np.zeros((0, 2), int)
    ).set_index("strategy")
    assert np.isnan(reps.loc["a", "regret"]) and reps.loc["d", "regret"] == -1.0
    assert reps.loc["target", "regret"] == 0.0
    table = tr.summarize_validation(reps.reset_index()).set_index("strategy")
    assert table.loc["a", "unknown"] == 1.0 and table.loc["d", "unknown"] == 0.0


def test_holdout_picks_the_same_rates_as_the_in_sample_validation() -> None:
    """Held out only the evaluation changes: every strategy's rates, in every replicate, are
    those of the in-sample validation, chosen again on each resample of the tuning seeds (seeds
    with different optima, so the replicates' rates differ)."""
    widths, target = [64, 128, 256], 2048
    jitter = [(-0.6, 0.3), (0.0, 0.0), (0.7, -0.4)]
    centres = {
        w: [(law(2.0, -1.0, w) + du, -3.0 + dv) for du, dv in jitter] for w in [*widths, target]
    }
    surfs = tr.grid_surfaces(grid_rows(centres))
    draws = tr.seed_resamples(3, 30, 0)
    summary = tr.width_summaries(surfs, draws)

    def evaluate(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.tile(_bowl_at(u, v, centres[target][1]), (3, 1))

    cols = ["strategy", "replicate", "log2_eta_a", "log2_eta_b"]
    inside = tr.validation_replicates(summary, draws, target, evaluate)[cols]
    held = tr.holdout_replicates(summary, draws, target, evaluate, tr.seed_resamples(3, 30, 1))
    pd.testing.assert_frame_equal(held[cols], inside)
    d = held[(held["strategy"] == "d") & (held["replicate"] >= 0)]
    assert d["log2_eta_a"].round(6).nunique() > 3


def test_interpolating_evaluator() -> None:
    """Linear interpolation of log loss between scattered runs: exact for a loss that is
    exponential-linear in (u, v); a triangle with a diverged corner counts as diverged; outside
    the runs: unknown."""
    uu, vv = np.meshgrid(np.arange(-10.0, -1.0), np.arange(-6.0, 1.0), indexing="ij")
    u, v = uu.ravel(), vv.ravel()
    loss = np.stack([np.exp(0.3 * u - 0.2 * v + s) for s in range(2)])
    loss[1, (u == -2) & (v == 0)] = np.nan  # seed 1 diverged in one corner
    ev = tr.interpolating_evaluator(u, v, loss)
    q = ev(np.array([-5.3, -2.2, -20.0]), np.array([-2.7, -0.1, -3.0]))
    assert q.shape == (2, 3)
    assert q[0, 0] == pytest.approx(math.exp(0.3 * -5.3 + 0.2 * 2.7), rel=1e-12)
    assert q[1, 0] == pytest.approx(math.exp(0.3 * -5.3 + 0.2 * 2.7 + 1), rel=1e-12)
    assert np.isfinite(q[0, 1]) and np.isposinf(q[1, 1])
    assert np.isnan(q[:, 2]).all()


def test_simulator_evaluator_runs_the_rates_it_is_given() -> None:
    calls = []

    def simulate(params):
        calls.append(params)
        rows = [
            {"param": p.name, "seed": s, "step": 3, "diverged": p.eta_a > 1, "test_loss": p.eta_b}
            for p in params
            for s in (4, 7)
        ]
        return pd.DataFrame(rows)

    ev = tr.simulator_evaluator(simulate, [4, 7])
    out = ev(np.array([-3.0, 1.0]), np.array([-1.0, -2.0]))
    assert len(calls) == 1 and [p.c_a for p in calls[0]] == [0, 0]
    assert out.shape == (2, 2) and np.all(out[:, 0] == 0.5) and np.isposinf(out[:, 1]).all()


def test_per_width_tables_and_their_long_form() -> None:
    wide = pd.DataFrame(
        {
            "width": [64, 256, 1024],
            "log2_eta_a": [-4.0, -6.0, -8.0],
            "log2_eta_b": [-3.0, -3.0, -3.0],
            "se_log2_eta_a": [0.1, 0.1, 0.1],
            "se_log2_eta_b": [0.2, 0.2, 0.2],
        }
    )
    assert tr.results_kind(wide) == "table"
    o = tr.optima_from_results(wide, seed=1)
    assert o.seeds is None and o.n_boot == 999
    assert np.std(o.boot_u[:, 0]) == pytest.approx(0.1, rel=0.1)
    rule = tr.fit_rule(o, mode="free")
    assert rule.a == pytest.approx(-1.0) and rule.b == pytest.approx(0.0, abs=1e-12)
    long = pd.DataFrame(
        [
            {"width": w, "quantity": q, "value": val, "ci_low": val - 0.392, "ci_high": val + 0.392}
            for w, a in zip([64, 256, 1024], [-4.0, -6.0, -8.0], strict=True)
            for q, val in (("log2_eta_a", a), ("log2_eta_b", -3.0), ("speedup", 2.0))
        ]
    )
    o2 = tr.optima_from_results(long, seed=1)
    assert np.allclose(o2.u, [-4, -6, -8]) and np.std(o2.boot_v[:, 1]) == pytest.approx(0.2, 0.1)
    with pytest.raises(tr.TransferError, match="no uncertainty"):
        tr.optima_from_table(wide.drop(columns=["se_log2_eta_a"]))


def _fake_ladder_analysis(monkeypatch: pytest.MonkeyPatch, seen: list) -> None:
    """A stand-in for ``loraplus_lab.sims.realmodels.ladder_analysis`` (the lead's module): three
    widths, four seeds, a log2 grid per width with a B-only run (``u = −inf``), every seed's loss
    an exact bowl at ``(3 − log2 n, −2)``; ``width_summary`` reports the optimum, shifted by the
    seed weights, and records what it is asked."""
    uu, vv = np.meshgrid(np.arange(-12.0, 0.01), np.arange(-6.0, 2.01), indexing="ij")
    u = np.r_[uu.ravel(), -np.inf]
    v = np.r_[vv.ravel(), -2.0]

    class L:
        widths = np.array([32, 64, 128])
        seeds = np.array([0, 1, 2, 3])

    L.u = [u] * 3
    L.v = [v] * 3
    L.loss = [
        np.tile(np.r_[bowl(3 - math.log2(n), -2.0, uu[:, 0], vv[0]).ravel(), 1.0], (4, 1))
        for n in L.widths
    ]

    def width_summary(landscapes, i, w, ratio):
        seen.append((i, tuple(w), ratio))
        shift = float(np.dot(w, [0.0, 0.1, -0.1, 0.0])) / w.sum()
        n = float(landscapes.widths[i])
        return {
            "log2_eta_a": 3.0 - math.log2(n) + shift,
            "log2_eta_b": -2.0,
            "equal_log2_eta_a": -3.0,
            "ratio_log2_eta_a": -5.0,
            "best_loss": 0.05,
            "at_edge": False,
        }

    fake = types.ModuleType("loraplus_lab.sims.realmodels.ladder_analysis")
    fake.landscapes = lambda df: L()
    fake.width_summary = width_summary
    monkeypatch.setitem(sys.modules, "loraplus_lab.sims.realmodels.ladder_analysis", fake)
    import loraplus_lab.sims.realmodels as rm

    monkeypatch.setattr(rm, "ladder_analysis", fake, raising=False)


def _ladder_rows() -> pd.DataFrame:
    cols = ["part", "width", "seed", "eta_a", "eta_b", "step", "final_loss", "val_loss"]
    rows = pd.DataFrame([["finetune", 32, 0, 1e-3, 1e-2, 10, 1.0, 1.0]], columns=cols)
    return rows.assign(diverged=False)


def test_ladder_rows_go_through_the_ladder_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ladder's rows are read by its own analysis (``landscapes``, then ``width_summary``
    for the seed weights of every resample)."""
    seen: list = []
    _fake_ladder_analysis(monkeypatch, seen)
    rows = _ladder_rows()
    assert tr.results_kind(rows) == "ladder"
    o = tr.optima_from_results(rows, n_boot=20)
    assert o.seeds == 4 and o.n_boot == 20
    assert np.allclose(o.u, 3.0 - np.log2([32, 64, 128]))
    assert len(seen) == 3 * 21 and {r for _, _, r in seen} == {16.0}
    assert all(sum(w) == 4 for _, w, _ in seen)


def test_ladder_validation_interpolates_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ladder's validation row: its widest width predicted from the two below, the target's
    loss interpolated between its runs (exact at its grid points); the theory's rule lands on the
    target's optimum (regret 0), the equal rate carried over pays what the bowl says."""
    _fake_ladder_analysis(monkeypatch, [])
    table = tr.ladder_validation(_ladder_rows(), n_boot=20).set_index("strategy")
    assert table.loc["d", "regret"] == pytest.approx(0.0, abs=1e-9)
    # (a) runs η = 2^-3 against the optimum (2^-4, 2^-2): log L rises by H00 − 2·H01 + H11
    assert table.loc["a", "regret"] == pytest.approx(math.expm1(0.30 - 0.16 + 0.20), rel=1e-9)
    assert table.loc["d", "target"] == 128
    assert table.loc["d", "proxies"] == "32,64" and table.loc["d", "task"] == "real-model ladder"
    with pytest.raises(tr.TransferError, match="no width 100"):
        tr.ladder_validation(_ladder_rows(), target_width=100, n_boot=10)


@pytest.mark.parametrize(
    "frame, message",
    [
        (grid_rows({64: (-5.0, -3.0)}), "two or more widths"),
        (pd.DataFrame({"width": [64], "what": [1]}), "another kind"),
        (grid_rows({64: (-5.0, -3.0), 128: (-6.0, -3.0)}).assign(c_a="-1"), "scale their rates"),
        (pd.DataFrame(), "no rows"),
    ],
)
def test_results_the_predictor_refuses(frame: pd.DataFrame, message: str) -> None:
    with pytest.raises(tr.TransferError, match=message):
        tr.optima_from_results(frame, n_boot=10)


@pytest.mark.parametrize("width", [0, -64, float("nan"), float("inf"), "abc"])
def test_bad_target_width(width) -> None:
    df = grid_rows({64: (-5.0, -3.0), 128: (-6.0, -3.0)})
    rule = tr.fit_rule(tr.optima_from_results(df, n_boot=10))
    with pytest.raises(tr.TransferError, match="target width"):
        rule.predict(width)


# ----------------------------------------------------------------------------- the command line
GRID_SPEC = """
name = "grid"
steps = 3
seeds = 3
widths = {widths}
chunk = 64

[problem]
kind = "general"
rank = 2
samples = 16
test_samples = 32
latent_dim = 4
noise = 0.1

[[parametrizations]]
preset = "lora-fixed"
eta_a = {{ log2 = [-10, 0], num = 6 }}
eta_b = {{ log2 = [-8, 2], num = 6 }}
"""


def _tree(path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, object]:
    """A toy grid sweep at two widths and one at a single width (the sweep engine's stores)."""
    from loraplus_lab.sims.cli import main

    root = tmp_path_factory.mktemp("stores")
    out = {}
    for name, widths in (("grid", "[32, 64]"), ("one", "[32]")):
        spec = root / f"{name}.toml"
        spec.write_text(GRID_SPEC.format(widths=widths))
        argv = ["sweep", str(spec), "--out", str(root / name), "--executor", "serial", "--quiet"]
        assert main(argv) == 0
        out[name] = root / name
    return out


def test_transfer_command_prints_the_rule_and_the_rates(stores, capsys) -> None:
    from loraplus_lab.sims.cli import main

    capsys.readouterr()
    assert main(["transfer", str(stores["grid"]), "--width", "2^10"]) == 0
    text = capsys.readouterr().out
    assert "proxies n = 32, 64 (3 seeds" in text and "rule (blend): η_A = " in text
    assert "·n^" in text and "at n = 1024 (95% intervals):" in text and "λ   = " in text
    assert "below every proxy" not in text
    assert main(["transfer", str(stores["grid"]), "--width", "16"]) == 0
    assert "warning: n = 16 lies below every proxy" in capsys.readouterr().out
    assert main(["transfer", str(stores["grid"]), "--width", "1024", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    df = tr.load_results(stores["grid"])
    rule, p = tr.predict(tr.optima_from_results(df), 1024)
    assert payload["prediction"]["log2_eta_a"] == pytest.approx(p.log2_eta_a, abs=1e-12)
    assert payload["rule"]["formula"] == rule.formula() and payload["optima"]["seeds"] == 3
    optima = tr.optima_from_results(df)  # the per-width intervals the text prints, in the JSON
    for k in range(len(optima.widths)):
        for f, boot in (("a", optima.boot_u[:, k]), ("b", optima.boot_v[:, k])):
            lo, hi = tr.percentile_interval(boot)
            assert payload["optima"][f"log2_eta_{f}_low"][k] == pytest.approx(lo, abs=1e-12)
            assert payload["optima"][f"log2_eta_{f}_high"][k] == pytest.approx(hi, abs=1e-12)
            assert f"{lo:+.2f}, {hi:+.2f}]" in text
    # any mode, and a CSV of the same rows, give the same numbers as the library
    csv = stores["grid"].parent / "rows.csv"
    df.to_csv(csv, index=False)
    assert main(["transfer", str(csv), "--width", "1024", "--json", "--mode", "theory"]) == 0
    payload = json.loads(capsys.readouterr().out)
    _, p = tr.predict(tr.optima_from_results(df), 1024, mode="theory")
    assert payload["rule"]["a"] == -1.0 and payload["rule"]["b"] == 0.0
    assert payload["prediction"]["log2_eta_b"] == pytest.approx(p.log2_eta_b, abs=1e-12)


@pytest.mark.parametrize(
    "case, message",
    [
        ("one width", "two or more widths"),
        ("width 0", "--width must be a positive width"),
        ("width -64", "--width must be a positive width"),
        ("width abc", "--width: bad width 'abc'"),
        ("scaled rates", "scale their rates with the width"),
        ("foreign csv", "results of another kind"),
        ("missing", "does not exist"),
        ("not a store", "holds no sweep"),
    ],
)
def test_transfer_bad_input_one_line_exit_2_nothing_written(
    stores, tmp_path, capsys, case: str, message: str
) -> None:
    from loraplus_lab.sims.cli import main

    store, width = str(stores["grid"]), "4096"
    if case == "one width":
        store = str(stores["one"])
    elif case.startswith("width "):
        width = case.split()[1]
    elif case == "scaled rates":  # a width sweep of LoRA/LoRA+ rules, not a landscape
        rows = tr.load_results(stores["grid"]).assign(c_a="-1", c_b="0")
        store = str(tmp_path / "sweep.csv")
        rows.to_csv(store, index=False)
    elif case == "foreign csv":
        store = str(tmp_path / "metrics.csv")
        pd.DataFrame({"step": [1, 2], "train_loss": [0.5, 0.4]}).to_csv(store, index=False)
    elif case == "missing":
        store = str(tmp_path / "nowhere")
    elif case == "not a store":
        store = str(tmp_path / "folder")
        (tmp_path / "folder").mkdir()
    capsys.readouterr()
    before, stored = _tree(tmp_path), _tree(stores["grid"])
    assert main(["transfer", store, "--width", width]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _tree(tmp_path) == before and _tree(stores["grid"]) == stored


def test_transfer_figures_in_fast_mode(tmp_path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """``figures --only transfer`` prints the regret table with the goal's verdict and draws the
    figure (here only the linear task under Adam, in fast mode); the infinite-width figure too."""
    from loraplus_lab.sims import figures
    from loraplus_lab.sims.cli import main

    monkeypatch.setattr(figures, "TRANSFER_TASKS", figures.TRANSFER_TASKS[:1])
    out = tmp_path / "figs"
    argv = ["figures", "--fast", "--only", "transfer,transfer_infinite_width", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "linear, Adam: proxies n = 32,64 → target n = 512, 2 seeds, 20 replicates" in text
    assert "goal (LoRA+ transfer ≤ 5% and below (a), (c)): (f)" in text
    assert "rule (theory) η_A = " in text and "n^-1.000" in text
    assert "distance to the limit's optimum ∝ n^" in text and "(expected −1/2)" in text
    for name in ("transfer", "transfer_infinite_width"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    data = pd.read_csv(out / "data" / "transfer.csv")
    assert set(data["kind"]) == {"strategy", "replicate", "optimum", "rule", "holdout"}
    for kind in ("strategy", "holdout"):
        st = data[data["kind"] == kind]
        assert list(st["strategy"]) == ["a", "b", "c", "d", "e", "f", "target"]
    held = data[data["kind"] == "holdout"].set_index("strategy")
    assert held.loc["target", "regret"] == 0 and set(held["holdout_seeds"]) == {3}
    assert "held out: the same rates run at n = 512 on 3 seeds no tuning saw" in text
    assert "goal, held out (LoRA+ transfer ≤ 5% and below (a), (c)): (f)" in text
    assert (data.loc[data["kind"] == "replicate", "replicate"].max()) == 19
    readme = (out / "README.md").read_text()
    assert "## transfer" in readme and "Measured loss regret at the target" in readme
    assert "on 3 held-out seeds against the target's tuned rates run there: (a)" in readme


def test_the_validation_uses_the_rules_the_predictor_gives() -> None:
    """Strategies (d)–(f) at the target are exactly the predictor's rules fitted to the proxies
    with the same number of seeds: here the fitted exponent departs from the theory's by 0.5
    with a bootstrap spread of 0.15, which the blend follows for many seeds (κ ≈ 1) and not for
    3 (κ = 2.7)."""
    rng = np.random.default_rng(0)
    widths, target, B = [64.0, 128.0, 256.0], 4096.0, 400
    x = np.log2(widths)
    eps = 0.15 * rng.standard_normal(B)
    rows = []
    for k, w in enumerate(widths):
        u = 2.0 - 0.5 * x[k]
        for r in range(-1, B):
            du = 0.0 if r < 0 else eps[r] * (x[k] - x.mean())
            rows.append(
                {
                    "width": w,
                    "replicate": r,
                    "log2_eta_a": u + du,
                    "log2_eta_b": -3.0,
                    "equal_log2_eta": -5.0,
                    "ratio_log2_eta_a": -6.0,
                    "best_loss": 1.0,
                }
            )
    for r in range(-1, B):
        rows.append(
            {
                "width": target,
                "replicate": r,
                "log2_eta_a": -9.0,
                "log2_eta_b": -3.0,
                "equal_log2_eta": -7.0,
                "ratio_log2_eta_a": -9.0,
                "best_loss": 1.0,
            }
        )
    summary = pd.DataFrame(rows)
    weights = {}
    for seeds in (3, 10_000):
        rates = tr.strategy_rates(summary, target, seeds=seeds).set_index(["strategy", "replicate"])
        optima = tr.ProxyOptima.from_frame(summary[summary["width"] < target], seeds=seeds)
        for key, mode in (("d", "theory"), ("e", "free"), ("f", "blend")):
            rule = tr.fit_rule(optima, mode=mode)
            p = rule.predict(target)
            assert rates.loc[(key, -1), "log2_eta_a"] == pytest.approx(p.log2_eta_a, abs=1e-12)
            assert rates.loc[(key, -1), "log2_eta_b"] == pytest.approx(p.log2_eta_b, abs=1e-12)
            weights[seeds, mode] = rule.weight_a
    assert weights[3, "blend"] == 0.0 and weights[10_000, "blend"] > 0.5
    one = tr.strategy_rates(summary, target, proxies=[256.0], seeds=3)
    assert set(one["strategy"]) == {"a", "b", "c", "target"}  # one proxy: no rule


def test_a_transfer_task_tunes_on_its_own_seeds() -> None:
    """A task of the figure with its own number of tuning seeds runs the proxies, the target's
    landscape and the strategies' rates on seeds 0 … k−1, and the held-out rates on its fresh
    seeds: the runner is asked for exactly those (here the 64-seed GD task in fast mode: 4
    tuning seeds, 3 held out)."""
    import dataclasses

    from loraplus_lab.sims import figures

    asked: set = set()

    def run(widths, params, fast, seeds=None):
        asked.add(None if seeds is None else tuple(seeds))
        return figures.run_linear_gd(widths, params, fast, seeds=seeds)

    task = dataclasses.replace(figures.TRANSFER_TASKS[3], run=run)
    assert task.name == "linear, GD, 64 seeds" and task.seeds == (4, 64)
    df = figures.transfer_task_rows(task, True)
    held = tuple(range(figures.TRANSFER_HOLDOUT_SEED0, figures.TRANSFER_HOLDOUT_SEED0 + 3))
    assert asked == {(0, 1, 2, 3), held}
    assert set(df.loc[df["kind"] == "strategy", "seeds"]) == {4}


def test_the_averaged_gd_task_judges_each_run_by_the_area_under_its_curve() -> None:
    """The fifth task's runner gives, per run, the test loss averaged over steps 1 … T of the
    very runs the last-step GD task makes (same rows otherwise, in the same order), NaN for a run
    that diverged; a frame with a missing step is refused."""
    from loraplus_lab.sims import figures
    from loraplus_lab.sims.toy import simulate_batch

    task = figures.TRANSFER_TASKS[4]
    assert task.run is figures.run_linear_gd_mean and task.holdout == (3, 256)
    params = [Parametrization("lo", 2.0**-6, 2.0**-1, 0, 0), Parametrization("hi", 4.0, 8.0, 0, 0)]
    seeds = [0, 1, 2]
    mean = figures.run_linear_gd_mean([64], params, True, seeds=seeds)
    last = figures.run_linear_gd([64], params, True, seeds=seeds)
    full = simulate_batch(
        [64], params, seeds, steps=figures.LINEAR_STEPS, problem="general",
        problem_options=figures.LINEAR_GD_TASK, optimizer="gd", chunk=4096 // len(seeds),
    )  # fmt: skip
    T = figures.LINEAR_STEPS
    assert (mean["step"] == T).all() and len(mean) == len(last) == len(params) * len(seeds)
    others = [c for c in mean.columns if c != "test_loss"]
    pd.testing.assert_frame_equal(mean[others], last[others], check_exact=True)
    for row in mean.itertuples():
        curve = full[(full["param"] == row.param) & (full["seed"] == row.seed)]
        curve = curve.sort_values("step")["test_loss"].to_numpy()[1:]
        assert len(curve) == T
        if row.diverged:
            assert np.isnan(row.test_loss)
        else:
            assert row.test_loss == pytest.approx(curve.sum() / T, rel=1e-12)
            assert row.test_loss != pytest.approx(curve[-1], rel=1e-3)  # not the last step
    assert mean["diverged"].any() and not mean["diverged"].all()
    with pytest.raises(ValueError, match="one row at each step"):
        figures.mean_over_steps(full[full["step"] != 3])


@pytest.mark.parametrize(
    ("index", "runner", "optimizer", "options"),
    [(5, "run_linear_gd_long_mean", "gd", "LINEAR_GD_TASK"),
     (6, "run_linear_long_mean", "adam", "LINEAR_TASK")],
)  # fmt: skip
def test_the_long_tasks_average_64_steps_of_their_own_optimizer(
    index: int, runner: str, optimizer: str, options: str
) -> None:
    """The sixth and seventh tasks, as registered: T = 64 steps under their optimizer, each run
    judged by its test loss averaged over steps 1 … 64 of those very runs (NaN where it
    diverged), tuning seeds 0 … 15 (fast: 0, 1), their proxies, targets and half-octave grids."""
    from loraplus_lab.sims import figures
    from loraplus_lab.sims.toy import simulate_batch

    task = figures.TRANSFER_TASKS[index]
    run = getattr(figures, runner)
    assert task.run is run and task.seeds == (2, 16) and task.holdout == (3, 256)
    assert figures.LONG_STEPS == 64
    proxies, target, lo, hi = {
        5: ((128, 256, 512), 8192, -16, 2), 6: ((64, 128, 256), 4096, -16, -1)
    }[index]  # fmt: skip
    assert task.proxies[1] == proxies and task.target[1] == target
    grid = [p for p in task.params(False) if not p.name.startswith("diag")]
    u = np.unique(np.log2([p.eta_a for p in grid]))
    np.testing.assert_allclose(u, np.arange(lo, hi + 0.01, 0.5), rtol=0, atol=1e-12)
    assert len(grid) == len(u) ** 2
    params = [Parametrization("lo", 2.0**-7, 2.0**-3, 0, 0), Parametrization("hi", 2.0, 4.0, 0, 0)]
    seeds = [0, 1]
    got = run([64], params, True, seeds=seeds)
    full = simulate_batch(
        [64], params, seeds, steps=64, problem="general",
        problem_options=getattr(figures, options), optimizer=optimizer, chunk=4096 // len(seeds),
    )  # fmt: skip
    assert (got["step"] == 64).all() and len(got) == len(params) * len(seeds)
    for row in got.itertuples():
        curve = full[(full["param"] == row.param) & (full["seed"] == row.seed)]
        curve = curve.sort_values("step")["test_loss"].to_numpy()[1:]
        assert len(curve) == 64
        if row.diverged:
            assert np.isnan(row.test_loss)
        else:
            assert row.test_loss == pytest.approx(curve.mean(), rel=1e-12)
            assert row.test_loss != pytest.approx(curve[-1], rel=1e-3)  # not the last step
    assert np.isfinite(got.loc[got["param"] == "lo", "test_loss"]).all()
    assert got.loc[got["param"] == "hi", "diverged"].all() == (optimizer == "gd")


def test_like_for_like_regret_against_the_targets_own_run() -> None:
    """(f) against the target's tuned rates run on the same seeds: the point from replicate −1,
    the percentile interval over the others, with the held-out reading's conventions — (f)
    diverged → +∞, the reference diverged → −100%, both diverged or a loss unknown → left out,
    (f)'s rates equal to the target's → 0 whatever happened to them."""
    from loraplus_lab.sims import figures

    def frame(f, t, same=()):
        return pd.DataFrame(
            [{"replicate": r - 1, "strategy": s, "loss": v,
              "err_log2_eta_a": 0.0 if s == "target" or r - 1 in same else 0.5,
              "err_log2_eta_b": 0.0}
             for r, (a, b) in enumerate(zip(f, t, strict=True))
             for s, v in (("f", a), ("target", b))]
        )  # fmt: skip

    f = [2.2, 1.0, 3.0, np.inf, 5.0, np.inf, np.nan] + [1.5] * 16
    t = [2.0, 2.0, 1.0, 1.0, np.inf, np.inf, np.inf] + [1.0] * 16
    point, lo, hi = figures.like_for_like(frame(f, t))
    assert point == pytest.approx(0.1, rel=1e-12)
    boot = np.array([-0.5, 2.0, np.inf, -1.0] + [0.5] * 16)  # both diverged, NaN: left out
    assert (lo, hi) == tuple(np.quantile(boot, [0.025, 0.975], method="inverted_cdf"))
    assert (lo, hi) == (-1.0, np.inf)  # 20 known: the lowest and the highest
    both = frame([1.5] * 11 + [np.inf] * 5, [1.0] * 11 + [np.inf] * 5)
    assert figures.like_for_like(both) == (0.5, 0.5, 0.5)  # the 5 both-diverged left out
    same = frame([1.5] * 11 + [np.inf] * 5, [1.0] * 11 + [np.inf] * 5, same=range(10, 15))
    point, lo, hi = figures.like_for_like(same)  # the same rates, diverged: 0, not unknown
    assert point == 0.5 and lo == 0.0 and hi == 0.5
    worse = frame([np.inf] * 16, [1.0] * 16)
    assert figures.like_for_like(worse)[1:] == (np.inf, np.inf)
    assert figures.like_for_like(worse[worse["strategy"] == "f"]) is None
