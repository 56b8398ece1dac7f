"""Tests of loraplus_lab.theory.symbolic: the identities behind the exponent calculus, checked with
sympy."""

from __future__ import annotations

import pytest
import sympy as sp

from loraplus_lab.theory.symbolic import (
    adam_toy_dz,
    delta_decomposition_residual,
    delta_terms,
    gd_toy_deltas,
    signgd_toy_dz,
)


def is_zero(expr: sp.Expr) -> bool:
    return sp.simplify(sp.expand(expr)) == 0


@pytest.mark.parametrize("m, r, n", [(2, 2, 3), (1, 1, 1), (3, 2, 4)])
def test_feature_update_decomposition_is_an_identity(m, r, n):
    residual = delta_decomposition_residual(m, r, n)
    assert residual.shape == (m, 1)
    assert residual == sp.zeros(m, 1)


def test_delta_terms_are_the_expected_products():
    t = delta_terms(2, 2, 3)
    s = sp.Symbol("s", real=True)
    d_b = sp.Matrix(2, 2, lambda i, j: sp.Symbol(f"dB_{i}{j}", real=True))
    d_a = sp.Matrix(2, 3, lambda i, j: sp.Symbol(f"dA_{i}{j}", real=True))
    x = sp.Matrix(3, 1, lambda i, j: sp.Symbol(f"x_{i}{j}", real=True))
    assert (t["delta3"] - s * d_b * d_a * x).applyfunc(sp.expand) == sp.zeros(2, 1)
    # δ¹ + δ² alone miss the update: the cross term δ³ is needed
    partial = (t["dZ_B"] - t["delta1"] - t["delta2"]).applyfunc(sp.expand)
    assert partial != sp.zeros(2, 1)


@pytest.mark.parametrize("unit_scale", [True, False])
def test_gd_toy_step_matches_closed_forms(unit_scale):
    terms = gd_toy_deltas(n=3, unit_scale=unit_scale)
    assert set(terms) == {"delta1", "delta2", "delta3", "dU"}
    for name, (from_step, closed_form) in terms.items():
        assert is_zero(from_step - closed_form), name


def test_gd_toy_s_powers():
    # Divide the step's terms by everything but the scale: what is left is -s², -s², s³.
    n = 2
    terms = gd_toy_deltas(n=n)
    real = {"real": True}
    a = [sp.Symbol(f"a_{i}", **real) for i in range(n)]
    x = [sp.Symbol(f"x_{i}", **real) for i in range(n)]
    w = [sp.Symbol(f"w_{i}", **real) for i in range(n)]
    b, y, s = sp.symbols("b y s", **real)
    eta_a, eta_b = sp.symbols("eta_a eta_b", positive=True)
    z = sum(ai * xi for ai, xi in zip(a, x, strict=True))
    u = sum(wi * xi for wi, xi in zip(w, x, strict=True)) + s * b * z - y
    sq_norm = sum(xi**2 for xi in x)
    expected = {
        "delta1": (eta_a * b**2 * u * sq_norm, -(s**2)),
        "delta2": (eta_b * z**2 * u, -(s**2)),
        "delta3": (eta_a * eta_b * u**2 * b * z * sq_norm, s**3),
    }
    for name, (rest, prefactor) in expected.items():
        from_step, _ = terms[name]
        assert sp.cancel(from_step / rest) == prefactor, name


def test_gd_toy_unit_scale_has_no_s():
    s = sp.Symbol("s", real=True)
    for from_step, closed_form in gd_toy_deltas(n=2, unit_scale=True).values():
        assert s not in from_step.free_symbols and s not in closed_form.free_symbols


def test_signgd_step_of_z_is_l1_norm():
    from_step, closed_form = signgd_toy_dz(n=4)
    assert is_zero(from_step - closed_form)
    p0 = sp.Symbol("p_0", positive=True)
    assert p0 in closed_form.free_symbols


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_adam_step_of_z_is_scalar_times_l1_norm(steps):
    from_step, closed_form = adam_toy_dz(steps=steps, n=3)
    assert is_zero(from_step - closed_form)
    # not the L2 norm squared: the Adam step sees ‖x‖₁, not ‖x‖² (check at one point)
    p = [sp.Symbol(f"p_{i}", positive=True) for i in range(3)]
    l1, l2sq = sum(p), sum(pi**2 for pi in p)
    wrong = closed_form / l1 * l2sq
    values = {"beta_1": sp.Rational(1, 2), "beta_2": sp.Rational(3, 4), "eta_a": 1}
    values |= {f"p_{i}": i + 1 for i in range(3)} | {f"u_{k}": 2 * k - 3 for k in range(1, 4)}
    point = {sym: values[sym.name] for sym in from_step.free_symbols}
    assert sp.simplify(from_step.subs(point) - closed_form.subs(point)) == 0
    assert sp.simplify((from_step - wrong).subs(point)) != 0


def test_adam_first_step_is_sign_descent():
    # At step 1 the bias-corrected moments give m/√v = g/|g|: Adam's first step is sign-GD.
    adam, _ = adam_toy_dz(steps=1, n=3)
    sign, _ = signgd_toy_dz(n=3)
    q = sp.Symbol("q", positive=True)
    for value in (q, -q):  # both signs of the scalar gradient factor
        lhs = adam.subs(sp.Symbol("u_1", real=True), value)
        rhs = sign.subs(sp.Symbol("u", real=True), value)
        assert is_zero(lhs - rhs)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_sizes_raise_value_error(bad):
    with pytest.raises(ValueError, match="positive integer"):
        delta_decomposition_residual(2, bad, 3)
    with pytest.raises(ValueError, match="positive integer"):
        adam_toy_dz(steps=bad)
