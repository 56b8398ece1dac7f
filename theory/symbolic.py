"""Symbolic (sympy) checks of the identities behind the exponent calculus.

Notation as in ``docs/lora.md``: a LoRA layer ``W* + s·B·A``, features ``Z_A = A x`` and
``Z_B = s·B Z_A``, and for one step ``t−1 → t`` on the same input

    ΔZ_B = δ¹ + δ² + δ³,   δ¹ = s B_{t−1}(Z_A^t − Z_A^{t−1}),   δ² = s (B_t − B_{t−1}) Z_A^{t−1},
                            δ³ = s (B_t − B_{t−1})(Z_A^t − Z_A^{t−1}).

Each function returns sympy expressions built from the definitions (not from the closed forms
they are compared with), so that a test can assert that a difference simplifies to 0:

* :func:`delta_decomposition_residual`: ``ΔZ_B − (δ¹ + δ² + δ³)`` for generic matrices.
* :func:`gd_toy_deltas`: one explicit GD step of the rank-1 toy ``f = W* x + s b aᵀx`` against
  ``δ¹ = −η_a s² b² U ‖x‖²``, ``δ² = −η_b s² (aᵀx)² U``, ``δ³ = η_a η_b s³ U² b (aᵀx) ‖x‖²``
  (the paper's forms at ``s = 1``).
* :func:`signgd_toy_dz` and :func:`adam_toy_dz`: the step of ``z = aᵀx`` under sign-GD and under
  Adam with ``ε = 0`` is ``‖x‖₁`` times a scalar, the fact that keeps the toy one-dimensional.
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "adam_toy_dz",
    "delta_decomposition_residual",
    "delta_terms",
    "gd_toy_deltas",
    "signgd_toy_dz",
]


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _matrix(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))


def delta_terms(m: int = 2, r: int = 2, n: int = 3) -> dict[str, sp.Matrix]:
    """``ΔZ_B``, ``δ¹``, ``δ²``, ``δ³`` for generic ``B_{t−1}, ΔB ∈ R^{m×r}``,
    ``A_{t−1}, ΔA ∈ R^{r×n}``, ``x ∈ R^n`` and scalar ``s``, straight from the definitions.

    ``B_t = B_{t−1} + ΔB`` and ``A_t = A_{t−1} + ΔA`` are arbitrary (any optimizer), so the
    decomposition is an algebraic identity, not a property of a particular update rule.
    """
    m, r, n = _check_size("m", m), _check_size("r", r), _check_size("n", n)
    s = sp.Symbol("s", real=True)
    b_prev, d_b = _matrix("B", m, r), _matrix("dB", m, r)
    a_prev, d_a = _matrix("A", r, n), _matrix("dA", r, n)
    x = _matrix("x", n, 1)
    b_new, a_new = b_prev + d_b, a_prev + d_a
    za_prev, za_new = a_prev * x, a_new * x
    return {
        "dZ_B": s * b_new * za_new - s * b_prev * za_prev,
        "delta1": s * b_prev * (za_new - za_prev),
        "delta2": s * (b_new - b_prev) * za_prev,
        "delta3": s * (b_new - b_prev) * (za_new - za_prev),
    }


def delta_decomposition_residual(m: int = 2, r: int = 2, n: int = 3) -> sp.Matrix:
    """The expanded ``ΔZ_B − (δ¹ + δ² + δ³)`` (an ``m × 1`` matrix; identically zero)."""
    t = delta_terms(m, r, n)
    return (t["dZ_B"] - t["delta1"] - t["delta2"] - t["delta3"]).applyfunc(sp.expand)


def _toy(n: int) -> dict[str, sp.Expr | list[sp.Expr]]:
    """Symbols of the rank-1 toy: ``a, x, w ∈ R^n`` (``w`` the row of ``W*``), scalars."""
    a = [sp.Symbol(f"a_{i}", real=True) for i in range(n)]
    x = [sp.Symbol(f"x_{i}", real=True) for i in range(n)]
    w = [sp.Symbol(f"w_{i}", real=True) for i in range(n)]
    b, y, s = sp.symbols("b y s", real=True)
    eta_a, eta_b = sp.symbols("eta_a eta_b", positive=True)
    z = sum(ai * xi for ai, xi in zip(a, x, strict=True))
    f = sum(wi * xi for wi, xi in zip(w, x, strict=True)) + s * b * z
    return {"a": a, "x": x, "b": b, "y": y, "s": s, "eta_a": eta_a, "eta_b": eta_b, "z": z, "f": f}


def gd_toy_deltas(n: int = 3, unit_scale: bool = False) -> dict[str, tuple[sp.Expr, sp.Expr]]:
    """One explicit GD step of the toy ``f(x) = W* x + s·b·aᵀx``, loss ``½(f − y)²``.

    The gradients are taken with sympy (``∂loss/∂a_i``, ``∂loss/∂b``), the step is
    ``a ← a − η_a ∇_a``, ``b ← b − η_b ∇_b``, and the terms are formed from their definitions
    with ``z = aᵀx``: ``δ¹ = s b (z_t − z)``, ``δ² = s (b_t − b) z``,
    ``δ³ = s (b_t − b)(z_t − z)``.

    Returns:
        name → ``(from the step, closed form)`` with ``U = f − y`` before the step:
        ``"delta1"``: ``−η_a s² b² U ‖x‖²``; ``"delta2"``: ``−η_b s² z² U``;
        ``"delta3"``: ``η_a η_b s³ U² b z ‖x‖²``; ``"dU"``: ``U_t − U`` against ``δ¹ + δ² + δ³``
        (``W*`` is frozen, so the residual moves exactly by ``ΔZ_B``). With ``unit_scale=True``
        ``s = 1``, the paper's forms.
    """
    n = _check_size("n", n)
    toy = _toy(n)
    a, x, b, y, s = toy["a"], toy["x"], toy["b"], toy["y"], toy["s"]
    eta_a, eta_b, z, f = toy["eta_a"], toy["eta_b"], toy["z"], toy["f"]
    loss = (f - y) ** 2 / 2
    a_new = [ai - eta_a * sp.diff(loss, ai) for ai in a]
    b_new = b - eta_b * sp.diff(loss, b)
    step = {ai: ni for ai, ni in zip(a, a_new, strict=True)}
    z_new = z.xreplace(step)
    u, u_new = f - y, (f - y).xreplace({**step, b: b_new})
    d1, d2, d3 = s * b * (z_new - z), s * (b_new - b) * z, s * (b_new - b) * (z_new - z)
    sq_norm = sum(xi**2 for xi in x)
    out = {
        "delta1": (d1, -eta_a * s**2 * b**2 * u * sq_norm),
        "delta2": (d2, -eta_b * s**2 * z**2 * u),
        "delta3": (d3, eta_a * eta_b * s**3 * u**2 * b * z * sq_norm),
        "dU": (u_new - u, d1 + d2 + d3),
    }
    if unit_scale:
        out = {k: (lhs.subs(s, 1), rhs.subs(s, 1)) for k, (lhs, rhs) in out.items()}
    return out


def _signed_input(n: int) -> tuple[list[sp.Expr], sp.Expr]:
    """``x`` with coordinates ``±p_i`` (alternating signs, ``p_i > 0``) and ``‖x‖₁ = Σ p_i``."""
    p = [sp.Symbol(f"p_{i}", positive=True) for i in range(n)]
    x = [pi if i % 2 == 0 else -pi for i, pi in enumerate(p)]
    return x, sum(p)


def signgd_toy_dz(n: int = 3) -> tuple[sp.Expr, sp.Expr]:
    """Sign-GD on ``a`` with gradient ``g = u·x`` (``u = s U b``): ``Δz = Σ_i Δa_i x_i`` with
    ``Δa_i = −η_a sign(g_i)``, against ``−η_a sign(u) ‖x‖₁``."""
    n = _check_size("n", n)
    x, l1 = _signed_input(n)
    u = sp.Symbol("u", real=True)
    eta = sp.Symbol("eta_a", positive=True)
    dz = sum(-eta * sp.sign(u * xi) * xi for xi in x)
    return dz, -eta * sp.sign(u) * l1


def adam_toy_dz(steps: int = 2, n: int = 3) -> tuple[sp.Expr, sp.Expr]:
    """Adam (``ε = 0``, bias-corrected) on ``a`` after ``steps`` gradients ``g_k = u_k·x``.

    Coordinatewise ``m_i = Σ_k (1−β₁)β₁^{t−k} u_k x_i / (1−β₁^t)``,
    ``v_i = Σ_k (1−β₂)β₂^{t−k} u_k² x_i² / (1−β₂^t)``, ``Δa_i = −η_a m_i / √v_i``; returns
    ``Δz = Σ_i Δa_i x_i`` against ``−η_a (M/√V) ‖x‖₁`` with ``M``, ``V`` the scalar moments of
    the ``u_k``: the moments stay proportional to ``x`` and ``x²``, so the step of ``z`` is
    ``‖x‖₁ = Θ(n)`` times a width-free scalar.
    """
    steps, n = _check_size("steps", steps), _check_size("n", n)
    x, l1 = _signed_input(n)
    u = [sp.Symbol(f"u_{k}", real=True) for k in range(1, steps + 1)]
    beta1, beta2 = sp.symbols("beta_1 beta_2", positive=True)
    eta = sp.Symbol("eta_a", positive=True)
    t = steps
    m_scalar = sum((1 - beta1) * beta1 ** (t - k) * uk for k, uk in enumerate(u, 1))
    v_scalar = sum((1 - beta2) * beta2 ** (t - k) * uk**2 for k, uk in enumerate(u, 1))
    m_hat, v_hat = m_scalar / (1 - beta1**t), v_scalar / (1 - beta2**t)
    m = [sum((1 - beta1) * beta1 ** (t - k) * uk * xi for k, uk in enumerate(u, 1)) for xi in x]
    v = [
        sum((1 - beta2) * beta2 ** (t - k) * (uk * xi) ** 2 for k, uk in enumerate(u, 1))
        for xi in x
    ]
    dz = sum(
        -eta * (mi / (1 - beta1**t)) / sp.sqrt(vi / (1 - beta2**t)) * xi
        for mi, vi, xi in zip(m, v, x, strict=True)
    )
    return dz, -eta * m_hat / sp.sqrt(v_hat) * l1
