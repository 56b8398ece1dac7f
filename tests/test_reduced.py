"""Tests of loraplus_lab.theory.reduced: the exact (z, b) dynamics of the rank-1 single-sample toy.

The reduced recurrence is checked against (a) a naive n-dimensional numpy implementation written
here, (b) torch.optim itself, and (c) the n-dimensional simulator ``loraplus_lab.sims.toy``
(skipped when it is absent), and its n → ∞ limit against finite widths.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

from loraplus_lab.theory.reduced import (
    OPTIMIZERS,
    CoordStats,
    ReducedToy,
    ReducedTrajectory,
    gaussian_adam_mean,
    run,
)

RTOL = 1e-10

# (optimizer, extra keyword arguments) covering every exact case
CASES = [
    ("gd", {}),
    ("gd", {"weight_decay": 0.3}),
    ("signgd", {}),
    ("adam", {"eps": 1e-8}),
    ("adam", {"eps": 0.05}),
    ("adamw", {"eps": 1e-8, "weight_decay": 0.2}),
    ("adamw", {"eps": 0.0, "weight_decay": 0.2, "betas": (0.8, 0.99)}),
]
CASE_IDS = [f"{o}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for o, kw in CASES]


def assert_rel_close(actual, ref, rtol: float = RTOL, floor: float | None = None) -> None:
    """Elementwise ``|a − r| ≤ rtol·max(|r|, floor)`` (NaN must match NaN).

    ``floor`` defaults to ``1e-4·max|r|``. It keeps values that pass through zero (a residual at
    convergence, a δ that has died out) from demanding relative accuracy below the round-off of
    the quantities they are differences of; for the δ's pass ``1e-3·max|s·b·z|``
    (:func:`zb_floor`), the size of the features they are increments of.
    """
    actual = np.asarray(actual, dtype=float)
    ref = np.asarray(ref, dtype=float)
    assert actual.shape == ref.shape
    assert np.array_equal(np.isnan(actual), np.isnan(ref))
    ok = ~np.isnan(ref)
    a, r = actual[ok], ref[ok]
    if r.size == 0:
        return
    if floor is None:
        floor = 1e-4 * np.max(np.abs(r))
    scale = np.maximum(np.abs(r), floor)
    err = np.abs(a - r) / np.where(scale > 0, scale, 1.0)
    assert err.max() <= rtol, f"max relative error {err.max():.3e} > {rtol:g}"


def zb_floor(tr: ReducedTrajectory, scale: float, k: int = 0) -> float:
    """``1e-3·max_t |s·b_t·z_t|``: the error floor for the δ's of configuration ``k``."""
    return 1e-3 * float(np.nanmax(np.abs(scale * tr.b[:, k] * tr.z[:, k])))


def draw_problem(rng: np.random.Generator, n: int, init: str):
    """x, W*, y, a0, b0, s of a random rank-1 single-sample toy (Init[A] or Init[B])."""
    x = rng.standard_normal(n)
    w_star = rng.standard_normal(n) / math.sqrt(n)
    y = w_star @ x + rng.uniform(0.5, 1.5) * rng.choice([-1.0, 1.0])
    if init == "A":
        a0, b0 = rng.standard_normal(n) / math.sqrt(n), 0.0
    else:
        a0, b0 = np.zeros(n), float(rng.standard_normal())
    s = float(rng.uniform(0.5, 2.0))
    return x, w_star, y, a0, b0, s


def naive_nd(x, w_star, y, a0, b0, s, *, eta_a, eta_b, steps, optimizer, betas=(0.9, 0.999),
             eps=1e-8, weight_decay=0.0):  # fmt: skip
    """The toy in n dimensions, written as plainly as possible (textbook Adam, no torch)."""
    a = np.array(a0, dtype=float)
    b = float(b0)
    b1, b2 = betas
    m_a, v_a, m_b, v_b = np.zeros_like(a), np.zeros_like(a), 0.0, 0.0
    rows = {k: [] for k in ("z", "b", "loss", "d1", "d2", "d3")}

    def record(a, b, d=(np.nan, np.nan, np.nan)):
        u = w_star @ x + s * b * (a @ x) - y
        rows["z"].append(a @ x)
        rows["b"].append(b)
        rows["loss"].append(0.5 * u * u)
        for k, v in zip(("d1", "d2", "d3"), d, strict=True):
            rows[k].append(v)

    record(a, b)
    for t in range(1, steps + 1):
        u = w_star @ x + s * b * (a @ x) - y
        g_a = s * u * b * x
        g_b = s * u * (a @ x)
        a_old, b_old = a.copy(), b
        if optimizer == "gd":
            a = a - eta_a * (g_a + weight_decay * a)
            b = b - eta_b * (g_b + weight_decay * b)
        elif optimizer == "signgd":
            a = a - eta_a * np.sign(g_a)
            b = b - eta_b * np.sign(g_b)
        else:
            if optimizer == "adamw":
                a = a * (1 - eta_a * weight_decay)
                b = b * (1 - eta_b * weight_decay)
            m_a = b1 * m_a + (1 - b1) * g_a
            v_a = b2 * v_a + (1 - b2) * g_a**2
            m_b = b1 * m_b + (1 - b1) * g_b
            v_b = b2 * v_b + (1 - b2) * g_b**2
            mhat_a, vhat_a = m_a / (1 - b1**t), v_a / (1 - b2**t)
            mhat_b, vhat_b = m_b / (1 - b1**t), v_b / (1 - b2**t)
            with np.errstate(invalid="ignore"):  # 0/0 := 0 while every gradient was 0
                a = a - eta_a * np.nan_to_num(mhat_a / (np.sqrt(vhat_a) + eps))
                b = b - eta_b * np.nan_to_num(mhat_b / (np.sqrt(vhat_b) + eps))
        dz = a @ x - a_old @ x
        d = (s * b_old * dz, s * (b - b_old) * (a_old @ x), s * (b - b_old) * dz)
        record(a, b, d)
    return {k: np.array(v) for k, v in rows.items()}


# --------------------------------------------------------------------------------------------
# (1) against a naive n-dimensional implementation


@pytest.mark.parametrize(("optimizer", "kw"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("init", ["A", "B"])
def test_matches_naive_n_dimensional(optimizer, kw, init):
    rng = np.random.default_rng([1, OPTIMIZERS.index(optimizer), ord(init)])
    for n in (64, 700):
        x, w_star, y, a0, b0, s = draw_problem(rng, n, init)
        toy = ReducedToy(
            z0=a0 @ x, b0=b0, e=w_star @ x - y, scale=s, coords=CoordStats.from_vector(x)
        )
        eta_a = np.array([0.05, 0.2, 0.4]) / n
        eta_b = np.array([0.1, 0.03, 0.2])
        steps = 25
        tr = run(toy, eta_a=eta_a, eta_b=eta_b, steps=steps, optimizer=optimizer, **kw)
        assert tr.z.shape == (steps + 1, 3)
        assert (tr.diverged_step == -1).all()
        for k in range(3):
            kw_naive = dict(kw)
            if kw_naive.get("eps", 1e-8) == 0.0:
                kw_naive["eps"] = 1e-30  # textbook Adam would divide 0 by 0
            ref = naive_nd(
                x, w_star, y, a0, b0, s, eta_a=eta_a[k], eta_b=eta_b[k], steps=steps,
                optimizer=optimizer, **kw_naive,
            )  # fmt: skip
            assert_rel_close(tr.z[:, k], ref["z"])
            assert_rel_close(tr.b[:, k], ref["b"])
            assert_rel_close(tr.loss[:, k], ref["loss"])
            fl = zb_floor(tr, s, k)
            assert_rel_close(tr.delta1[:, k], ref["d1"], floor=fl)
            assert_rel_close(tr.delta2[:, k], ref["d2"], floor=fl)
            assert_rel_close(tr.delta3[:, k], ref["d3"], floor=fl)


@pytest.mark.parametrize("optimizer", ["gd", "adam", "adamw"])
def test_matches_torch_optim(optimizer):
    """The reduced Adam/AdamW/SGD step is torch.optim's, on the n-dimensional parameters."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    n, steps, eta_a, eta_b, wd = 300, 20, 0.3 / 300, 0.05, 0.1
    for init in ("A", "B"):
        x, w_star, y, a0, b0, s = draw_problem(rng, n, init)
        a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor([b0], dtype=torch.float64, requires_grad=True)
        xt = torch.tensor(x, dtype=torch.float64)
        e = float(w_star @ x - y)
        if optimizer == "gd":
            opt_a = torch.optim.SGD([a], lr=eta_a, weight_decay=wd)
            opt_b = torch.optim.SGD([b], lr=eta_b, weight_decay=wd)
        else:
            cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
            w = 0.0 if optimizer == "adam" else wd
            opt_a = cls([a], lr=eta_a, weight_decay=w, foreach=False)
            opt_b = cls([b], lr=eta_b, weight_decay=w, foreach=False)
        z_ref, b_ref, loss_ref = [], [], []
        for t in range(steps + 1):
            u = e + s * b[0] * (a @ xt)
            loss = 0.5 * u * u
            z_ref.append(float((a @ xt).detach()))
            b_ref.append(float(b[0].detach()))
            loss_ref.append(float(loss.detach()))
            if t == steps:
                break
            opt_a.zero_grad()
            opt_b.zero_grad()
            loss.backward()
            opt_a.step()
            opt_b.step()
        toy = ReducedToy(z0=a0 @ x, b0=b0, e=e, scale=s, coords=CoordStats.from_vector(x))
        kw = {"weight_decay": 0.0 if optimizer == "adam" else wd}
        tr = run(toy, eta_a=eta_a, eta_b=eta_b, steps=steps, optimizer=optimizer, **kw)
        assert_rel_close(tr.z[:, 0], np.array(z_ref))
        assert_rel_close(tr.b[:, 0], np.array(b_ref))
        assert_rel_close(tr.loss[:, 0], np.array(loss_ref))


# --------------------------------------------------------------------------------------------
# (2) the decomposition identity, (3) the ε = 0 formula


@pytest.mark.parametrize("optimizer", ["gd", "signgd"])
def test_delta_terms_follow_the_step_formulas(optimizer):
    """δ¹, δ², δ³ of every step against the step formulas derived by hand from
    U = e + s·b·z, ∂L/∂a = s·U·b·x, ∂L/∂b = s·U·z. GD: δ¹ = −η_a s² b² U ‖x‖²,
    δ² = −η_b s² z² U, δ³ = η_a η_b s³ U² b z ‖x‖²; sign-GD: Δz = −η_a ‖x‖₁ sign(s U b),
    Δb = −η_b sign(s U z), δ¹ = s b Δz, δ² = s Δb z, δ³ = s Δb Δz (state of step t − 1).
    The trajectory itself is checked against torch.optim and a naive n-dimensional loop above."""
    rng = np.random.default_rng(3)
    K, s = 40, 1.7
    x = rng.standard_normal(128)
    toy = ReducedToy(
        z0=rng.standard_normal(K),
        b0=rng.standard_normal(K),
        e=rng.standard_normal(K),
        scale=s,
        coords=CoordStats.from_vector(x),
    )
    eta_a, eta_b = np.geomspace(1e-5, 2e-3, K), 0.02
    tr = run(toy, eta_a=eta_a, eta_b=eta_b, steps=30, optimizer=optimizer)
    assert isinstance(tr, ReducedTrajectory)
    assert (tr.diverged_step == -1).all()
    z, b = tr.z[:-1], tr.b[:-1]  # the state before each step
    U = toy.e + s * b * z
    if optimizer == "gd":
        sq = float(x @ x)
        d1 = -eta_a * s**2 * b**2 * U * sq
        d2 = -eta_b * s**2 * z**2 * U
        d3 = eta_a * eta_b * s**3 * U**2 * b * z * sq
    else:
        dz = -eta_a * np.abs(x).sum() * np.sign(s * U * b)
        db = -eta_b * np.sign(s * U * z)
        d1, d2, d3 = s * b * dz, s * db * z, s * db * dz
    fl = 1e-3 * np.abs(s * tr.b * tr.z).max()
    for got, want in ((tr.delta1, d1), (tr.delta2, d2), (tr.delta3, d3)):
        assert np.isnan(got[0]).all()
        assert_rel_close(got[1:], want, floor=fl)
    assert np.abs(d3).max() > 1e-6 * np.abs(d1).max()  # the cross term is not negligible


def test_eps_zero_formula_equals_per_coordinate_sum():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1000)
    coords = CoordStats.from_vector(x)
    c = np.geomspace(1e-6, 1e3, 50)
    eta = np.full(50, 0.01)
    explicit = eta * np.sum(x**2 / (c[:, None] * np.abs(x)), axis=1)
    np.testing.assert_allclose(coords.adam_gain(eta, c, 0.0), explicit, rtol=1e-12)
    np.testing.assert_allclose(coords.adam_gain(eta, c, 1e-300), explicit, rtol=1e-12)
    np.testing.assert_allclose(coords.sign_gain(eta), eta * np.abs(x).sum(), rtol=1e-14)
    np.testing.assert_allclose(coords.gd_gain(eta), eta * (x @ x), rtol=1e-14)
    # whole trajectories: the ε = 0 formula against the per-coordinate sum at a negligible ε
    toy = ReducedToy(z0=0.3, b0=rng.standard_normal(5), e=1.2, scale=1.0, coords=coords)
    for opt in ("adam", "adamw"):
        kw = {"optimizer": opt, "eta_a": 0.2 / 1000, "eta_b": 0.05, "steps": 40}
        if opt == "adamw":
            kw["weight_decay"] = 0.1
        exact = run(toy, eps=0.0, **kw)
        summed = run(toy, eps=1e-300, **kw)
        for name in ("z", "b", "loss"):
            assert_rel_close(getattr(exact, name), getattr(summed, name), rtol=1e-12)
        for name in ("delta1", "delta2", "delta3"):
            fl = float(np.max([zb_floor(exact, 1.0, k) for k in range(5)]))
            assert_rel_close(getattr(exact, name), getattr(summed, name), rtol=1e-12, floor=fl)


def test_zero_gradient_means_zero_adam_step_even_at_eps_zero():
    """Init[A]: b0 = 0 so g_a = 0 at step 1: z must not move (0/0 := 0), b must."""
    toy = ReducedToy(z0=0.5, b0=0.0, e=1.0, scale=1.0, coords=CoordStats.rademacher(64))
    for eps in (0.0, 1e-8):
        tr = run(toy, eta_a=0.01, eta_b=0.1, steps=3, eps=eps)
        assert tr.z[1, 0] == 0.5
        assert tr.b[1, 0] != 0.0
        assert np.isfinite(tr.z).all()
    # Init[B]: z0 = 0 so g_b = 0 at step 1
    toy = ReducedToy(z0=0.0, b0=0.7, e=1.0, scale=1.0, coords=CoordStats.rademacher(64))
    tr = run(toy, eta_a=0.01, eta_b=0.1, steps=3, eps=0.0)
    assert tr.b[1, 0] == 0.7 and tr.z[1, 0] != 0.0


# --------------------------------------------------------------------------------------------
# (4) any width at O(1) cost


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_width_two_to_the_thirty(optimizer):
    n0, eta_tilde = 64, 0.005
    results = []
    for n in (2**10, 2**30):
        coords = CoordStats.rademacher(n)
        assert coords.abs_values.size == 1  # one distinct |x_i|: O(1) work per step
        assert coords.width == n and coords.sq_norm == n and coords.l1_norm == n
        toy = ReducedToy(z0=0.8, b0=np.array([0.0, 0.5]), e=1.0, scale=1.0, coords=coords)
        kw = {"weight_decay": 0.1} if optimizer == "adamw" else {}
        tr = run(toy, eta_a=eta_tilde * n0 / n, eta_b=0.1, steps=50, optimizer=optimizer, **kw)
        assert np.isfinite(tr.z).all() and np.isfinite(tr.loss[1:]).all()
        results.append(tr)
    # under η_A = η̃ n0/n the Rademacher toy is width-independent (up to rounding of η_a·n and,
    # for AdamW, the decay η_a·wd of a, which vanishes as n grows) ...
    small, large = results
    assert_rel_close(large.z, small.z, rtol=1e-3 if optimizer == "adamw" else 1e-9)
    # ... and equals the Rademacher limit (up to the vanishing weight decay of a under AdamW)
    limit = CoordStats.infinite(n0, "rademacher")
    toy = ReducedToy(z0=0.8, b0=np.array([0.0, 0.5]), e=1.0, scale=1.0, coords=limit)
    kw = {"weight_decay": 0.1} if optimizer == "adamw" else {}
    tr = run(toy, eta_a=eta_tilde, eta_b=0.1, steps=50, optimizer=optimizer, **kw)
    assert_rel_close(tr.z, large.z, rtol=1e-7 if optimizer == "adamw" else 1e-9)
    assert_rel_close(tr.b, large.b, rtol=1e-7 if optimizer == "adamw" else 1e-9)


def test_norm_only_stats_reach_any_width():
    n = 2**30
    coords = CoordStats.from_norms(n, sq_norm=float(n), l1_norm=n * math.sqrt(2 / math.pi))
    toy = ReducedToy(z0=0.8, b0=0.0, e=1.0, scale=1.0, coords=coords)
    for opt, eps in (("gd", 1e-8), ("signgd", 1e-8), ("adam", 0.0), ("adamw", 0.0)):
        tr = run(toy, eta_a=0.005 * 64 / n, eta_b=0.1, steps=20, optimizer=opt, eps=eps)
        assert np.isfinite(tr.loss).all()
    with pytest.raises(ValueError, match="distinct"):
        run(toy, eta_a=1e-9, eta_b=0.1, steps=2, optimizer="adam", eps=1e-8)


# --------------------------------------------------------------------------------------------
# (5) the n → ∞ limit


@pytest.mark.parametrize("k", np.geomspace(1e-9, 1e9, 37).tolist() + [0.0, 8.9, 9.0, 9.1])
def test_gaussian_expectation_against_quadrature(k):
    """E[x²/(c|x|+ε)] in closed form vs 40-digit quadrature, across ε/c from 1e-9 to 1e9."""
    mp = pytest.importorskip("mpmath")
    c = 1.0 if k > 0 else 2.0
    eps = k * c
    with mp.workdps(40):
        kk = mp.mpf(eps) / c

        def f(x):
            return x * x / (c * x + eps) * mp.sqrt(2 / mp.pi) * mp.exp(-x * x / 2)

        pts = sorted({mp.mpf(0), mp.mpf(1), mp.mpf(5), mp.mpf(40), *([kk] if kk < 40 else [])})
        ref = float(mp.quad(f, pts))
    np.testing.assert_allclose(gaussian_adam_mean(c, eps), ref, rtol=5e-13)
    coords = CoordStats.infinite(64)
    np.testing.assert_allclose(coords.adam_gain(0.5, c, eps), 0.5 * 64 * ref, rtol=5e-13)
    if 1e-3 < k < 1e3:  # scipy's adaptive quadrature agrees too (to its own accuracy)
        ref_scipy = integrate.quad(lambda x: float(f(x)), 0, 40, points=[min(k, 30)])[0]
        np.testing.assert_allclose(ref, ref_scipy, rtol=1e-9)


def test_gaussian_expectation_edges():
    assert gaussian_adam_mean(0.0, 0.5) == 2.0  # E x² / ε
    np.testing.assert_allclose(gaussian_adam_mean(4.0, 0.0), math.sqrt(2 / math.pi) / 4)
    assert np.isinf(CoordStats.infinite(64).adam_gain(1.0, 0.0, 0.0))
    c = np.array([0.0, 1e-3, 1.0, 1e3])
    out = gaussian_adam_mean(c, 1e-2)
    assert out.shape == (4,) and np.isfinite(out).all() and (np.diff(out) < 0).all()


@pytest.mark.parametrize(
    ("optimizer", "eta_tilde", "eps"),
    [("gd", 0.01, 1e-8), ("signgd", 0.004, 1e-8), ("adam", 0.004, 0.05), ("adamw", 0.004, 0.0)],
)
def test_finite_width_converges_to_limit(optimizer, eta_tilde, eps):
    """With η_a = η̃·n0/n the finite-n trajectory → the limit, error ∝ n^{-1/2} (Gaussian x)."""
    n0, steps = 64, 12
    kw = {"optimizer": optimizer, "eta_b": 0.1, "steps": steps, "eps": eps}
    if optimizer == "adamw":
        kw["weight_decay"] = 0.5  # its effect on z vanishes like 1/n

    def traj(coords, eta_a):
        toy = ReducedToy(z0=0.8, b0=0.0, e=1.0, scale=1.0, coords=coords)
        tr = run(toy, eta_a=eta_a, **kw)
        return np.stack([tr.z[:, 0], tr.b[:, 0]])

    limit = traj(CoordStats.infinite(n0), eta_tilde)
    assert np.isfinite(limit).all()
    widths = 2 ** np.arange(6, 17, 2)
    rms = []
    for n in widths:
        errs = []
        for seed in range(16):
            x = np.random.default_rng([seed, int(n)]).standard_normal(n)
            errs.append(np.abs(traj(CoordStats.from_vector(x), eta_tilde * n0 / n) - limit).max())
        rms.append(math.sqrt(np.mean(np.square(errs))))
    slope = np.polyfit(np.log(widths), np.log(rms), 1)[0]
    assert -0.65 < slope < -0.35, (slope, rms)
    assert rms[-1] < 0.02


# --------------------------------------------------------------------------------------------
# (6) divergence


@pytest.mark.parametrize(("optimizer", "huge"), [("gd", 1e3), ("signgd", 1e9), ("adam", 1e9)])
def test_divergence_is_recorded_and_isolated(optimizer, huge):
    rng = np.random.default_rng(6)
    coords = CoordStats.from_vector(rng.standard_normal(1000))  # several blocks of |x_i| values
    z0, b0, e = np.array([0.3, -0.2, 0.5]), np.array([0.4, 1.0, -0.6]), np.array([1.0, -1.0, 0.7])
    eta_a = np.array([1e-4, huge, 2e-4])
    eta_b = np.array([0.05, 0.05, 0.02])
    toy = ReducedToy(z0=z0, b0=b0, e=e, scale=1.0, coords=coords)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = run(toy, eta_a=eta_a, eta_b=eta_b, steps=30, optimizer=optimizer)
        solos = [
            run(
                ReducedToy(z0=z0[k], b0=b0[k], e=e[k], scale=1.0, coords=coords),
                eta_a=eta_a[k],
                eta_b=eta_b[k],
                steps=30,
                optimizer=optimizer,
            )  # fmt: skip
            for k in (0, 2)
        ]
    t_div = tr.diverged_step[1]
    assert t_div >= 1 and tr.diverged_step[0] == tr.diverged_step[2] == -1
    for name in ("z", "b", "U", "loss", "delta1", "delta2", "delta3"):
        arr = getattr(tr, name)
        assert np.isnan(arr[t_div:, 1]).all()
        assert np.isfinite(arr[1:t_div, 1]).all()
        for k, solo in zip((0, 2), solos, strict=True):
            np.testing.assert_array_equal(arr[:, k], getattr(solo, name)[:, 0])


def test_divergence_bound_and_initial_state():
    coords = CoordStats.rademacher(16)
    toy = ReducedToy(z0=0.0, b0=0.0, e=np.array([1.0, 100.0]), scale=1.0, coords=coords)
    tr = run(toy, eta_a=0.01, eta_b=0.01, steps=5, divergence_bound=10.0)
    assert tr.diverged_step.tolist() == [-1, 0]
    assert np.isnan(tr.loss[:, 1]).all() and np.isfinite(tr.loss[:, 0]).all()


# --------------------------------------------------------------------------------------------
# (7) bad input and API shape


def _toy(**kw):
    base = {"z0": 0.5, "b0": 0.0, "e": 1.0, "scale": 1.0, "coords": CoordStats.rademacher(8)}
    base.update(kw)
    return ReducedToy(**base)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: run(_toy(), eta_a=0.0, eta_b=0.1, steps=3), "eta_a"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=np.array([0.1, -1.0]), steps=3), "eta_b"),
        (lambda: run(_toy(), eta_a=np.nan, eta_b=0.1, steps=3), "eta_a"),
        (lambda: run(_toy(), eta_a=np.ones((2, 2)), eta_b=0.1, steps=3), "eta_a"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=0), "steps"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=2.5), "steps"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, optimizer="sgd"), "optimizer"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, betas=(1.0, 0.9)), "betas"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, betas=(0.9,)), "betas"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, eps=-1e-8), "eps"),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, weight_decay=-1), "weight_decay"),
        (
            lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, optimizer="adam", weight_decay=0.1),
            "breaks the reduction",
        ),
        (
            lambda: run(
                _toy(), eta_a=0.1, eta_b=0.1, steps=3, optimizer="signgd", weight_decay=0.1
            ),
            "breaks the reduction",
        ),
        (lambda: run(_toy(), eta_a=0.1, eta_b=0.1, steps=3, divergence_bound=0), "bound"),
        (lambda: run(_toy(z0=np.ones(3)), eta_a=np.ones(2), eta_b=0.1, steps=3), "broadcast"),
        (lambda: run("toy", eta_a=0.1, eta_b=0.1, steps=3), "ReducedToy"),
        (lambda: _toy(z0=np.inf), "z0"),
        (lambda: _toy(e=np.ones((2, 2))), "e"),
        (lambda: _toy(scale=0.0), "scale"),
        (lambda: _toy(coords="x"), "coords"),
        (lambda: CoordStats.rademacher(0), "width"),
        (lambda: CoordStats.rademacher(2.0), "width"),
        (lambda: CoordStats.from_vector(np.array([])), "width"),
        (lambda: CoordStats.from_vector(np.ones((2, 2))), "x"),
        (lambda: CoordStats.from_vector(np.array([1.0, np.nan])), "non-finite"),
        (lambda: CoordStats.from_counts([1.0, -2.0], [1, 1]), "abs_values"),
        (lambda: CoordStats.from_counts([1.0], [0]), "counts"),
        (lambda: CoordStats.from_norms(-4, 1.0, 1.0), "width"),
        (lambda: CoordStats.from_norms(4, 1.0, 3.0), "no x"),
        (lambda: CoordStats.infinite(0), "n0"),
        (lambda: CoordStats.infinite(64, "cauchy"), "distribution"),
        (lambda: CoordStats(width=0.0, sq_norm=1.0, l1_norm=1.0), "width"),
        (lambda: CoordStats.rademacher(8).adam_gain(1.0, 1.0, -1.0), "eps"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_shapes_and_broadcasting():
    coords = CoordStats.rademacher(32)
    toy = ReducedToy(z0=np.array([0.1, 0.2, 0.3]), b0=0.0, e=1.0, scale=1.0, coords=coords)
    tr = run(toy, eta_a=0.01, eta_b=0.1, steps=7, optimizer="gd")
    for name in ("z", "b", "U", "loss", "delta1", "delta2", "delta3"):
        assert getattr(tr, name).shape == (8, 3)
    assert tr.diverged_step.shape == (3,) and tr.steps == 7
    assert np.isnan(tr.delta1[0]).all() and np.isfinite(tr.delta1[1:]).all()
    scalar = run(_toy(), eta_a=0.01, eta_b=0.1, steps=2)
    assert scalar.z.shape == (3, 1)
    assert math.isinf(CoordStats.infinite(64).width)
    assert CoordStats.infinite(64).lr(0.3) == 0.0 and coords.lr(0.3) == 0.3


# --------------------------------------------------------------------------------------------
# against the n-dimensional simulator loraplus_lab.sims.toy


def _sim_vs_reduced(problem, **kw):
    """Reduced run vs ``loraplus_lab.sims.toy.simulate``; ε = 0 is run as ε = 1e-30 in the
    simulator (whose torch Adam would divide 0 by 0 while a factor's gradient is exactly zero)."""
    sims_toy = pytest.importorskip("loraplus_lab.sims.toy")
    sim_kw = dict(kw)
    if sim_kw.get("eps", 1e-8) == 0.0:
        sim_kw["eps"] = 1e-30
    df = sims_toy.simulate(problem, **sim_kw)
    tr = run(problem.reduced(), **kw)
    assert (tr.diverged_step == -1).all() and not df["diverged"].any()
    pairs = [
        ("loss", tr.loss[:, 0]),
        ("za_mean_abs", np.abs(tr.z[:, 0])),
        ("norm_b", np.abs(tr.b[:, 0])),
        ("delta1", np.abs(tr.delta1[:, 0])),
        ("delta2", np.abs(tr.delta2[:, 0])),
        ("delta3", np.abs(tr.delta3[:, 0])),
    ]
    fl = zb_floor(tr, problem.scale)
    for col, ours in pairs:
        floor = fl if col.startswith("delta") else None
        assert_rel_close(ours, df[col].to_numpy(dtype=float), floor=floor)


SIM_CASES = CASES + [("adam", {"eps": 1e-30})]
SIM_IDS = CASE_IDS + ["adam-eps=1e-30"]


@pytest.mark.parametrize(("optimizer", "kw"), SIM_CASES, ids=SIM_IDS)
@pytest.mark.parametrize("init", ["A", "B"])
def test_matches_simulator_random_arrays(optimizer, kw, init):
    sims_toy = pytest.importorskip("loraplus_lab.sims.toy")
    rng = np.random.default_rng([2, SIM_CASES.index((optimizer, kw)), ord(init)])
    for n in (64, 4096):
        x, w_star, y, a0, b0, s = draw_problem(rng, n, init)
        problem = sims_toy.ToyProblem.from_arrays(
            x[None, :], np.array([[y]]), w_star[None, :], a0[None, :], np.array([[b0]]), scale=s
        )
        _sim_vs_reduced(
            problem,
            eta_a=0.2 / n if optimizer != "gd" else 0.05 / n,
            eta_b=0.05,
            steps=25,
            optimizer=optimizer,
            **kw,
        )


def test_eps_zero_formula_matches_simulator_at_tiny_eps():
    """The reduced ε = 0 closed form against the simulator's per-coordinate Adam at ε = 1e-30."""
    sims_toy = pytest.importorskip("loraplus_lab.sims.toy")
    for init in ("A", "B"):
        problem = sims_toy.ToyProblem.paper(512, 5, init=init)
        df = sims_toy.simulate(problem, eta_a=0.3 / 512, eta_b=0.05, steps=25, eps=1e-30)
        tr = run(problem.reduced(), eta_a=0.3 / 512, eta_b=0.05, steps=25, eps=0.0)
        assert_rel_close(tr.loss[:, 0], df["loss"].to_numpy(dtype=float))
        assert_rel_close(np.abs(tr.z[:, 0]), df["za_mean_abs"].to_numpy(dtype=float))
        assert_rel_close(
            np.abs(tr.delta1[:, 0]),
            df["delta1"].to_numpy(dtype=float),
            floor=zb_floor(tr, problem.scale),
        )


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("init", ["A", "B"])
def test_matches_simulator_paper_toy(optimizer, init):
    sims_toy = pytest.importorskip("loraplus_lab.sims.toy")
    for width in (128, 1024):
        problem = sims_toy.ToyProblem.paper(width, 11, init=init)
        kw = {"weight_decay": 0.1} if optimizer == "adamw" else {}
        _sim_vs_reduced(
            problem,
            eta_a=(0.05 if optimizer == "gd" else 0.3) / width,
            eta_b=0.03,
            steps=30,
            optimizer=optimizer,
            **kw,
        )
