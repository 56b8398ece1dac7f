"""Tests of loraplus_lab.theory.gamma: the exponent calculus of the rank-1 single-sample LoRA toy.

Expected exponents below are derived by hand from the update rules (``docs/exponents.md``;
gradient descent, sign-GD and Adam on the rank-1 toy ``f = W*x + s·b·aᵀx``), written out in the
comments; the companion-paper thresholds are checked exactly and against pointwise
classification; the phase diagrams and the thresholds along other lines against regions solved by
hand; and the predicted exponents against slopes measured on the exact reduced dynamics of the toy
at widths 2^16 … 2^40.
"""

from __future__ import annotations

import copy
import pickle
from fractions import Fraction as F

import numpy as np
import pytest

from loraplus_lab.theory import gamma
from loraplus_lab.theory.gamma import (
    OPTIMIZERS,
    QUANTITIES,
    REGIME_LABELS,
    ZERO,
    classify,
    efficient_rates,
    largest_stable_equal_rate,
    largest_stable_rate,
    phase_diagram,
    predict,
)

INITS = ("A", "B")
COMBOS = [(i, o) for i in INITS for o in OPTIMIZERS]
EQUAL_C = [F(-3, 2), F(-1), F(-3, 4), F(-1, 2), F(-1, 3), F(0), F(1, 4)]


def pos(x: F) -> F:
    return max(F(0), x)


def dense_rationals(lo: int, hi: int, max_den: int) -> list[F]:
    """Every p/q in [lo, hi] with q ≤ max_den."""
    return sorted({F(p, q) for q in range(1, max_den + 1) for p in range(lo * q, hi * q + 1)})


# ----------------------------------------------------------------------------------- ZERO
def test_zero_marker_behaves_like_minus_infinity_in_max_plus():
    assert str(ZERO) == repr(ZERO) == "zero"
    assert float(ZERO) == float("-inf")
    assert ZERO < F(-1000) and ZERO <= 0 and not ZERO > F(-1000) and not ZERO >= 0
    assert F(-1000) > ZERO and F(0) >= ZERO
    assert max(ZERO, F(-3)) == F(-3) and max(F(-3), ZERO) == F(-3)
    assert ZERO + F(5) is ZERO and F(5) + ZERO is ZERO and ZERO + ZERO is ZERO
    assert ZERO == ZERO and ZERO != F(0) and ZERO != float("-inf")
    assert sorted([F(1), ZERO, F(-2)]) == [ZERO, F(-2), F(1)]
    assert pickle.loads(pickle.dumps(ZERO)) is ZERO
    assert copy.deepcopy(ZERO) is ZERO and type(ZERO)() is ZERO
    assert isinstance(F(1, 2), gamma.Exponent) and isinstance(ZERO, gamma.Exponent)


# ------------------------------------------------------------------ hand-derived trajectories
@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
@pytest.mark.parametrize("c", EQUAL_C)
def test_normalised_optimizers_init_a_equal_rates_by_hand(optimizer, c):
    # z0 = 0, b0 = zero. Step 1: grad_a ∝ b0 = 0 so Δz1 = zero; Δb1 = c (grad_b ∝ z0 ≠ 0).
    # Step t ≥ 2: Δz = c + 1 (‖x‖₁ = Θ(n)), Δb = c; z_t = max(0, c + 1), b_t = c.
    p = predict("A", optimizer, c, c, 4)
    z2 = pos(c + 1)
    assert p.at("dz", 1) is ZERO and p.at("delta1", 1) is ZERO and p.at("delta3", 1) is ZERO
    assert p.at("db", 1) == c and p.at("b", 1) == c and p.at("delta2", 1) == c
    assert p.at("z", 1) == 0 and p.at("Z_B", 1) == c and p.at("U", 1) == pos(c)
    assert p.at("dz", 2) == c + 1 and p.at("z", 2) == z2
    assert p.at("delta1", 2) == 2 * c + 1  # b1 + Δz2
    assert p.at("delta2", 2) == c  # Δb2 + z1, and z1 = z0 = Θ(1)
    assert p.at("delta3", 2) == 2 * c + 1
    assert p.at("Z_B", 2) == c + z2 and p.at("U", 2) == pos(c + z2) == p.at("f", 2)
    assert p.at("loss", 2) == 2 * pos(c + z2)
    for t in (3, 4):
        assert p.at("delta1", t) == 2 * c + 1  # b_{t-1} + Δz_t
        assert p.at("delta2", t) == c + z2  # Δb_t + z_{t-1}
        assert p.at("z", t) == z2 and p.at("b", t) == c


@pytest.mark.parametrize("c", EQUAL_C)
def test_gd_init_a_equal_rates_by_hand(c):
    # Step 1: Δz1 = zero (b0 = 0), Δb1 = c + γ[U0] + γ[z0] = c; U1 = max(0, c).
    # Step 2: Δz2 = c + U1 + b1 + 1, Δb2 = c + U1 + z1 = c + U1.
    p = predict("A", "gd", c, c, 3)
    u1 = pos(c)
    dz2 = c + u1 + c + 1
    assert p.at("dz", 1) is ZERO and p.at("db", 1) == c and p.at("U", 1) == u1
    assert p.at("dz", 2) == dz2 and p.at("db", 2) == c + u1
    assert p.at("delta1", 2) == c + dz2 and p.at("delta2", 2) == c + u1
    assert p.at("delta3", 2) == c + u1 + dz2
    if c <= 0:
        # the paper's step-2 exponents: efficiency would need c = 0 and c = -1/3 at once
        assert (p.at("dz", 2), p.at("delta1", 2), p.at("delta2", 2)) == (2 * c + 1, 3 * c + 1, c)


@pytest.mark.parametrize("c", EQUAL_C)
def test_gd_init_b_equal_rates_by_hand(c):
    # z0 = zero, b0 = 0. Step 1: Δz1 = c + U0 + b0 + 1 = c + 1, Δb1 = zero (grad_b ∝ z0 = 0).
    # Step 2: U1 = max(0, c + 1), Δz2 = c + U1 + 1, Δb2 = c + U1 + (c + 1).
    p = predict("B", "gd", c, c, 2)
    u1 = pos(c + 1)
    assert p.at("dz", 1) == c + 1 and p.at("db", 1) is ZERO
    assert p.at("delta1", 1) == c + 1 and p.at("delta2", 1) is ZERO and p.at("delta3", 1) is ZERO
    assert p.at("z", 1) == c + 1 and p.at("b", 1) == 0 and p.at("U", 1) == u1
    assert p.at("dz", 2) == c + u1 + 1 and p.at("db", 2) == 2 * c + u1 + 1
    assert p.at("delta1", 2) == c + u1 + 1  # b1 = Θ(1)
    assert p.at("delta2", 2) == (2 * c + u1 + 1) + (c + 1)


@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
@pytest.mark.parametrize("c", EQUAL_C)
def test_normalised_optimizers_init_b_equal_rates_by_hand(optimizer, c):
    # Step 1: Δz1 = c + 1, Δb1 = zero. Step t ≥ 2: Δz = c + 1, Δb = c, z = c + 1, b = max(0, c).
    p = predict("B", optimizer, c, c, 3)
    assert p.at("dz", 1) == c + 1 and p.at("db", 1) is ZERO and p.at("delta2", 1) is ZERO
    assert p.at("delta1", 1) == c + 1 and p.at("b", 1) == 0
    for t in (2, 3):
        assert p.at("db", t) == c and p.at("z", t) == c + 1 and p.at("b", t) == pos(c)
        assert p.at("delta2", t) == 2 * c + 1  # Δb_t + z_{t-1}
        assert p.at("delta3", t) == 2 * c + 1
    assert p.at("delta1", 2) == c + 1  # b1 = b0 = Θ(1)
    assert p.at("delta1", 3) == pos(c) + c + 1
    assert p.at("Z_B", 3) == pos(c) + c + 1


def test_gd_init_a_compounding_just_above_minus_half():
    # For -1/2 < c ≤ -1/3 (U stays Θ(1)), GD alternately grows z and b by n^{2c+1} per step:
    # γ[Z_B,t] = (2t-1)c + t - 1, which first turns positive after the T = 10 threshold -9/19.
    c = F(-9, 19)
    p = predict("A", "gd", c, c, 11)
    for t in range(1, 11):
        assert p.at("Z_B", t) == (2 * t - 1) * c + t - 1 and p.at("U", t) == 0
    assert p.at("Z_B", 10) == 0 and p.at("Z_B", 11) > 0 and p.at("U", 11) > 0
    assert [p.at("z", t) for t in range(1, 6)] == [0, 2 * c + 1, 2 * c + 1, 4 * c + 2, 4 * c + 2]


@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_structural_zeros_and_nothing_else(init, optimizer):
    p = predict(init, optimizer, F(-2, 3), F(-1, 5), 5)
    zero_at_0 = {"b", "Z_B"} if init == "A" else {"z", "Z_B"}
    zero_at_1 = {"dz", "delta1", "delta3"} if init == "A" else {"db", "delta2", "delta3"}
    for q in QUANTITIES:
        for t in range(6):
            e = p.at(q, t)
            if t == 0 and q in ("dz", "db", "delta1", "delta2", "delta3"):
                assert e is None
            elif (t == 0 and q in zero_at_0) or (t == 1 and q in zero_at_1):
                assert e is ZERO, (q, t)
            else:
                assert isinstance(e, F), (q, t, e)
    assert p.at("U", 0) == 0 and p.at("f", 0) == 0 and p.at("loss", 0) == 0


# ------------------------------------------------------------------------------ paper claims
@pytest.mark.parametrize("steps", [2, 5, 10])
@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_loraplus_is_efficient(init, optimizer, steps):
    p = predict(init, optimizer, -1, 0, steps)
    r = p.regime
    assert r.efficient and r.stable and r.output_stable and not r.internal_instability
    assert r.label == "efficient" and r.undertrained == ()
    for t in range(2, steps + 1):
        assert p.at("delta1", t) == 0 and p.at("delta2", t) == 0
        for q in ("z", "b", "U", "Z_B"):
            assert p.at(q, t) == 0


@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_equal_rates_never_efficient_on_dense_grid(init, optimizer):
    values = dense_rationals(-3, 1, 12)
    for steps in (3, 10):
        d = phase_diagram(init, optimizer, values, values, steps)
        diagonal = np.diag(d.labels)  # c_A = c_B
        assert len(diagonal) == len(values) > 180
        assert "efficient" not in set(diagonal)
        assert set(diagonal) & {"A and B under-trained", "B under-trained", "unstable"}


@pytest.mark.parametrize("steps", [2, 3, 10])
@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_efficient_sets_on_lines_exactly(init, optimizer, steps):
    assert efficient_rates(init, optimizer, steps, gap=0) is None  # plain LoRA: never
    assert efficient_rates(init, optimizer, steps, gap=1) == (F(-1), F(-1))  # LoRA+: one point
    assert efficient_rates(init, optimizer, steps, gap=F(1, 2)) is None


@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_phase_diagram_efficient_only_at_loraplus_on_quarter_grid(init, optimizer):
    grid = [F(k, 4) for k in range(-12, 5)]
    d = phase_diagram(init, optimizer, grid, grid, 10)
    hits = [(float(d.c_a[j]), float(d.c_b[i])) for i, j in np.argwhere(d.labels == "efficient")]
    assert hits == [(-1.0, 0.0)]
    assert d.label_at(-1, 0) == "efficient"


def test_adam_and_signgd_coincide_because_factors_never_return_to_zero():
    grid = [F(k, 6) for k in range(-15, 4)]
    for init in INITS:
        for steps in (1, 2, 6):
            a = phase_diagram(init, "adam", grid, grid, steps)
            s = phase_diagram(init, "signgd", grid, grid, steps)
            assert (a.labels == s.labels).all()
            pa = predict(init, "adam", F(-2, 3), F(1, 6), steps)
            ps = predict(init, "signgd", F(-2, 3), F(1, 6), steps)
            assert pa.exponents == ps.exponents


# -------------------------------------------------------------------------- companion paper
@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
@pytest.mark.parametrize("steps", [2, 3, 10, 50])
def test_largest_stable_equal_rate_normalised_optimizers(optimizer, steps):
    assert largest_stable_equal_rate("A", optimizer, steps, "output") == F(-1, 2)
    assert largest_stable_equal_rate("A", optimizer, steps, "full") == F(-1)
    assert largest_stable_equal_rate("B", optimizer, steps, "output") == F(-1)
    assert largest_stable_equal_rate("B", optimizer, steps, "full") == F(-1)


@pytest.mark.parametrize("steps", [2, 3, 4, 10, 50])
def test_largest_stable_equal_rate_gd(steps):
    # Init[A]: γ[Z_B,T] = (2T-1)c + T - 1 just above -1/2, hence -(T-1)/(2T-1) → -1/2 from above.
    out = largest_stable_equal_rate("A", "gd", steps, "output")
    assert out == F(-(steps - 1), 2 * steps - 1) > F(-1, 2)
    assert largest_stable_equal_rate("A", "gd", steps, "full") == F(-1, 2)
    assert largest_stable_equal_rate("B", "gd", steps, "output") == F(-1)
    assert largest_stable_equal_rate("B", "gd", steps, "full") == F(-1)


def test_gd_threshold_decreases_to_minus_half():
    values = [largest_stable_equal_rate("A", "gd", t) for t in range(2, 30)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert abs(values[-1] + F(1, 2)) < F(1, 100)


def test_one_step_thresholds():
    # T = 1: only Z_B,1 = γ[b1] + γ[z1] matters: c_B + 0 (Init[A]) or 0 + c_A + 1 (Init[B]).
    for optimizer in OPTIMIZERS:
        assert largest_stable_equal_rate("A", optimizer, 1) == 0
        assert largest_stable_equal_rate("B", optimizer, 1, "full") == -1


@pytest.mark.parametrize("kind", ["output", "full"])
@pytest.mark.parametrize("init, optimizer", COMBOS)
def test_thresholds_agree_with_pointwise_classification(init, optimizer, kind):
    steps = 6
    c_star = largest_stable_equal_rate(init, optimizer, steps, kind)

    def ok(c: F) -> bool:
        r = classify(init, optimizer, c, c, steps)
        return r.output_stable if kind == "output" else r.stable

    assert ok(c_star) and ok(c_star - F(1, 1000)) and ok(c_star - 3)
    assert not ok(c_star + F(1, 1000)) and not ok(c_star + 1)


def test_init_a_adam_at_minus_half_is_internally_unstable():
    c = F(-1, 2)
    p = predict("A", "adam", c, c, 10)
    r = p.regime
    assert r.output_stable and not r.stable and r.internal_instability and not r.efficient
    assert r.label == "internally unstable" and "Z_A" in r.description
    assert all(p.at("z", t) == c + 1 for t in range(2, 11))  # Z_A = Θ(n^{c+1}) = Θ(n^{1/2})
    assert all(p.at("delta1", t) == 0 for t in range(2, 11))
    assert all(p.at("delta2", t) == 0 for t in range(3, 11))
    assert p.at("delta2", 2) == c  # z1 = z0 = Θ(1): A has not moved yet at step 1


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_init_b_at_minus_one_leaves_b_undertrained(optimizer):
    p = predict("B", optimizer, -1, -1, 10)
    assert p.regime.stable and p.regime.undertrained == ("B",)
    assert p.regime.label == "B under-trained"
    assert all(p.at("delta2", t) == -1 for t in range(2, 11))
    assert all(p.at("delta1", t) == 0 for t in range(2, 11))


@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
def test_init_a_full_threshold_undertrains_both(optimizer):
    # c = -1: δ¹_t = b_{t-1} + Δz_t = c + (c + 1) = -1 and δ²_t = c + max(0, c + 1) = -1.
    r = classify("A", optimizer, -1, -1, 10)
    assert r.stable and r.label == "A and B under-trained" and r.undertrained == ("A", "B")


def test_gd_init_a_full_threshold_undertrains_both():
    r = classify("A", "gd", "-1/2", "-1/2", 10)
    assert r.stable and r.undertrained == ("A", "B") and r.label == "A and B under-trained"


def test_internal_instability_of_b():
    # Adam Init[B], c_A = -2, c_B = 1/2: z = c_A + 1 = -1, b = 1/2, Z_B = -1/2: B grows alone.
    r = classify("B", "adam", -2, "1/2", 5)
    assert r.output_stable and r.internal_instability and r.label == "internally unstable"
    assert "B grows" in r.description and "Z_A" not in r.description


def test_unstable_regime_reports_first_step():
    r = classify("B", "gd", 0, 0, 5)  # z1 = c_A + 1 = 1 > 0: Z_B blows up at step 1
    assert not r.output_stable and not r.stable and r.label == "unstable"
    assert "step 1" in r.description


# ------------------------------------------------------------------------- independent checks
def normalised_regime_by_hand(init: str, ca: F, cb: F) -> str:
    """The regime of Adam / sign-GD for T ≥ 3 steps, derived by hand from the update rules.

    A normalised step moves every coordinate by Θ(η), so Δz = c_A + 1 (‖x‖₁ = Θ(n)) and Δb = c_B
    at every step where the factor has a gradient. Init[A] (z0 = Θ(1), b0 = 0): step 1 moves b
    only; then z_t = max(0, c_A + 1), b_t = c_B, Z_B = c_B + max(0, c_A + 1), and for t ≥ 2
    δ¹ = b_{t-1} + Δz_t = c_A + c_B + 1, δ² = Δb_t + z_{t-1} = c_B + max(0, c_A + 1).
    Init[B] (z0 = 0, b0 = Θ(1)): step 1 moves z only; then z_t = c_A + 1, b_t = max(0, c_B),
    Z_B = max(0, c_B) + c_A + 1, and for t ≥ 3 δ¹ = max(0, c_B) + c_A + 1,
    δ² = c_B + c_A + 1.
    """
    if init == "A":
        z, b = pos(ca + 1), cb
        d1, d2 = ca + cb + 1, cb + pos(ca + 1)
    else:
        z, b = ca + 1, pos(cb)
        d1, d2 = pos(cb) + ca + 1, cb + ca + 1
    if z + b > 0:  # Z_B = b + z grows
        return "unstable"
    if z > 0 or b > 0:  # the output stays O(1) while a factor's feature grows
        return "internally unstable"
    return {
        (True, True): "efficient",
        (False, True): "A under-trained",
        (True, False): "B under-trained",
        (False, False): "A and B under-trained",
    }[(d1 == 0, d2 == 0)]


@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
@pytest.mark.parametrize("init", INITS)
def test_phase_diagram_matches_regimes_derived_by_hand(init, optimizer):
    """Every cell of the (vectorised) phase diagram and every pointwise classification against
    the regions derived by hand for normalised optimizers (all six labels occur)."""
    ca = [F(k, 4) for k in range(-12, 3)]
    cb = [F(k, 4) for k in range(-8, 5)]
    d = phase_diagram(init, optimizer, ca, cb, 5)
    assert d.labels.shape == (len(cb), len(ca))
    assert np.allclose(d.c_a, [float(c) for c in ca]) and np.allclose(d.c_b, [float(c) for c in cb])
    seen = set()
    for i, b in enumerate(cb):
        for j, a in enumerate(ca):
            expected = normalised_regime_by_hand(init, a, b)
            seen.add(expected)
            assert d.labels[i, j] == expected, (a, b)
            assert classify(init, optimizer, a, b, 5).label == expected, (a, b)
    assert len(seen) >= 5 and "efficient" in seen
    codes = d.codes()
    assert all(REGIME_LABELS[k] == lab for k, lab in zip(codes.flat, d.labels.flat, strict=True))


@pytest.mark.parametrize("optimizer", ["adam", "signgd"])
@pytest.mark.parametrize("gap", [F(-2), F(-1), F(-1, 2), F(0), F(1, 3), F(1), F(3, 2), F(3)])
def test_thresholds_along_lines_match_closed_forms(optimizer, gap):
    """The largest stable rate on the line c_B = c_A + g (from the max-plus polynomials along
    the line) against closed forms solved by hand from the exponents above: Init[A] keeps Z_B
    bounded up to c = −(1 + g)/2 for g < 1 and c = −g beyond; Init[B] up to c = −1 for g ≤ 1 and
    −(1 + g)/2 beyond; full stability (z and b bounded too) needs c ≤ min(−1, −g)."""
    out_a = -(1 + gap) / 2 if gap < 1 else -gap
    out_b = F(-1) if gap <= 1 else -(1 + gap) / 2
    full = min(F(-1), -gap)
    for init, output in (("A", out_a), ("B", out_b)):
        assert largest_stable_rate(init, optimizer, 6, "output", gap=gap) == output, init
        assert largest_stable_rate(init, optimizer, 6, "full", gap=gap) == full, init


REDUCED_WIDTHS = [2.0**k for k in range(16, 41, 4)]


@pytest.mark.parametrize("optimizer", ["gd", "signgd", "adam"])
@pytest.mark.parametrize("init", INITS)
def test_predicted_exponents_match_the_exact_reduced_dynamics(init, optimizer):
    """predict() against slopes measured on the exact (z, b) recurrence of the toy
    (loraplus_lab.theory.reduced: no exponent calculus, the update rules themselves) at widths
    2^16 … 2^40, where finite-width corrections are small: every tracked quantity at every step
    of every stable point of a (c_A, c_B) grid, within 0.05; exactly-zero predictions are exactly
    zero. A δ is an increment of features that are computed in float64, so a δ below 1e-9 of
    the product of the features it moves is lost to round-off at large widths and not judged."""
    from loraplus_lab.theory.reduced import CoordStats, ReducedToy, run

    steps, eta0 = 3, {"gd": 0.02, "signgd": 0.05, "adam": 0.05}[optimizer]
    grid = [
        (ca, cb)
        for ca in (F(0), F(-1, 2), F(-1), F(-5, 4), F(-3, 2), F(-2), F(-3))
        for cb in (F(0), F(-1, 4), F(-1, 2), F(-1), F(-2))
        if classify(init, optimizer, ca, cb, steps).stable
    ]
    assert len(grid) >= 10
    ca = np.array([float(a) for a, _ in grid])
    cb = np.array([float(b) for _, b in grid])
    logs: dict[str, list[np.ndarray]] = {}
    for n in REDUCED_WIDTHS:
        toy = ReducedToy(
            z0=0.8 if init == "A" else 0.0,
            b0=0.0 if init == "A" else 0.9,
            e=-1.0,
            scale=1.0,
            coords=CoordStats.rademacher(int(n)),
        )
        tr = run(toy, eta_a=eta0 * n**ca, eta_b=eta0 * n**cb, steps=steps, optimizer=optimizer,
                 eps=0.0, divergence_bound=1e300)  # fmt: skip
        assert (tr.diverged_step == -1).all()
        values = {"z": tr.z, "b": tr.b, "Z_B": tr.b * tr.z, "U": tr.U}
        # the size of the features a δ of step t is an increment of
        zz = np.maximum(np.abs(tr.z[1:]), np.abs(tr.z[:-1]))
        bb = np.maximum(np.abs(tr.b[1:]), np.abs(tr.b[:-1]))
        roundoff = np.vstack([np.full((1, len(grid)), np.nan), 1e-9 * zz * bb])
        for k in ("delta1", "delta2", "delta3"):
            d = getattr(tr, k)
            values[k] = d
            values[f"{k} lost"] = np.abs(d) < roundoff
        for q, v in values.items():
            logs.setdefault(q, []).append(np.abs(v))
    x = np.log2(REDUCED_WIDTHS)
    checked = {"states": 0, "deltas": 0}
    for k, (a, b) in enumerate(grid):
        p = predict(init, optimizer, a, b, steps)
        for q in ("z", "b", "Z_B", "U", "delta1", "delta2", "delta3"):
            v = np.stack([w[:, k] for w in logs[q]], axis=-1)  # (steps + 1, widths)
            lost = np.stack([w[:, k] for w in logs[f"{q} lost"]], -1) if "delta" in q else None
            for t in range(steps + 1):
                e = p.at(q, t)
                if e is None:
                    continue
                if e is ZERO:
                    assert (v[t] == 0).all(), (a, b, q, t, v[t])
                    continue
                if lost is not None and lost[t].any():  # below the round-off of its features
                    continue
                assert (v[t] > 0).all(), (a, b, q, t, e)
                slope = np.polyfit(x, np.log2(v[t]), 1)[0]
                assert abs(slope - float(e)) <= 0.05, (a, b, q, t, float(e), slope)
                checked["deltas" if lost is not None else "states"] += 1
    assert checked["states"] >= 60 and checked["deltas"] >= 30, checked


def test_exponents_are_monotone_in_both_rates():
    steps, step = 4, F(1, 4)
    for init, optimizer in COMBOS:
        for ca in (F(-2), F(-1), F(-1, 2), F(0)):
            for cb in (F(-1), F(-1, 2), F(0), F(1, 2)):
                base = predict(init, optimizer, ca, cb, steps).exponents
                for other in (
                    predict(init, optimizer, ca + step, cb, steps).exponents,
                    predict(init, optimizer, ca, cb + step, steps).exponents,
                ):
                    for q in QUANTITIES:
                        for e0, e1 in zip(base[q], other[q], strict=True):
                            assert (e0 is None and e1 is None) or e0 <= e1


def test_largest_stable_rate_on_other_lines():
    # Adam Init[A] with c_B = c_A + 1: Z_B = c_B + max(0, c_A + 1) ≤ 0 needs c_A ≤ -1.
    assert largest_stable_rate("A", "adam", 10, "output", gap=1) == -1
    # c_B = c_A - 1: Z_B = c - 1 + max(0, c + 1) ≤ 0 needs c ≤ 0; z ≤ 0 needs c ≤ -1.
    assert largest_stable_rate("A", "adam", 10, "output", gap=-1) == 0
    assert largest_stable_rate("A", "adam", 10, "full", gap=-1) == -1


# ------------------------------------------------------------------------------- public API
def test_input_conversion():
    p = predict("a", "AdamW", -0.5, "-1/2", 2)
    assert p.init == "A" and p.optimizer == "adam"
    assert p.c_a == F(-1, 2) and p.c_b == F(-1, 2)
    assert predict("Init[B]", "gd", np.float64(-1 / 3), np.int64(-1), 2).c_a == F(-1, 3)
    assert predict("B", "gd", 0.1, F(-1), np.int64(3)).c_a == F(1, 10)
    assert phase_diagram("A", "adam", np.linspace(-1, 0, 5), ["-1", "0"], 2).c_a_exact[1] == F(
        -3, 4
    )


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: predict("C", "adam", -1, 0, 2), "'C'"),
        (lambda: predict("A", "sgd", -1, 0, 2), "'sgd'"),
        (lambda: predict("A", "adam", "abc", 0, 2), "'abc'"),
        (lambda: predict("A", "adam", None, 0, 2), "None"),
        (lambda: predict("A", "adam", -1, [0], 2), "[0]"),
        (lambda: predict("A", "adam", float("nan"), 0, 2), "nan"),
        (lambda: predict("A", "adam", True, 0, 2), "True"),
        (lambda: predict("A", "adam", "1/0", 0, 2), "'1/0'"),
        (lambda: predict("A", "adam", -1, 0, 0), "0"),
        (lambda: predict("A", "adam", -1, 0, -3), "-3"),
        (lambda: predict("A", "adam", -1, 0, 2.5), "2.5"),
        (lambda: classify("A", "adam", -1, 0, steps=True), "True"),
        (lambda: largest_stable_equal_rate("A", "adam", 5, kind="inner"), "'inner'"),
        (lambda: largest_stable_equal_rate("A", "rmsprop", 5), "'rmsprop'"),
        (lambda: efficient_rates("A", "adam", 5, gap="x"), "'x'"),
        (lambda: phase_diagram("A", "adam", [], [0], 2), "c_a_values"),
        (lambda: phase_diagram("A", "adam", np.zeros((2, 2)), [0], 2), "(2, 2)"),
        (lambda: phase_diagram("A", "adam", "-1", [0], 2), "'-1'"),
        (lambda: phase_diagram("A", "adam", [0, "q"], [0], 2), "'q'"),
        (lambda: predict("A", "adam", -1, 0, 2).at("Z_C", 1), "'Z_C'"),
        (lambda: predict("A", "adam", -1, 0, 2).at("z", 3), "3"),
        (lambda: phase_diagram("A", "adam", [0], [0], 2).label_at(1, 0), "(1, 0)"),
    ],
)
def test_bad_input_raises_one_line_value_error(call, needle):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_rows_are_tidy():
    steps = 3
    p = predict("A", "adam", -1, 0, steps)
    rows = p.rows()
    assert len(rows) == 6 * (steps + 1) + 5 * steps
    assert all(set(r) == {"quantity", "step", "exponent"} for r in rows)
    assert {"quantity": "b", "step": 0, "exponent": ZERO} in rows
    assert {"quantity": "delta2", "step": 2, "exponent": F(0)} in rows
    assert not any(r["step"] == 0 and r["quantity"] == "dz" for r in rows)


def test_table_is_readable():
    p = predict("A", "adam", "-1/2", "-1/2", 3)
    text = p.table()
    lines = text.splitlines()
    assert len(lines) == 2 + len(QUANTITIES)
    assert "internally unstable" in lines[0] and "c_A = -1/2" in lines[0]
    assert lines[1].split() == ["quantity", "t=0", "t=1", "t=2", "t=3"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["b"] == ["zero", "-1/2", "-1/2", "-1/2"]
    assert rows["z"] == ["0", "0", "1/2", "1/2"]
    assert rows["delta1"] == ["zero", "0", "0"]  # blank at t = 0
    assert rows["delta2"] == ["-1/2", "-1/2", "0"]


def test_one_step_efficiency_is_judged_on_step_one():
    # With T = 1 only step 1 exists; it is the special step where B0·A0 = 0 stops one factor.
    assert classify("A", "adam", -1, 0, 1).label == "A under-trained"
    assert classify("B", "adam", -1, 0, 1).label == "B under-trained"


def test_large_phase_diagram_shape_and_labels():
    grid = np.linspace(-2, 1, 61)
    for init, optimizer in COMBOS:
        d = phase_diagram(init, optimizer, grid, grid, 10)
        assert d.labels.shape == (61, 61) and set(d.labels.flat) <= set(REGIME_LABELS)
        assert d.label_at(-1, 0) == "efficient" and d.label_at(1, 1) == "unstable"
