"""Tuning the paper's toy at infinite width, and how the finite-width optimum approaches it.

Under LoRA+ scaling, ``η_A = η̃_A·n0/n`` and ``η_B = η̃_B``, the exact reduced dynamics of the
rank-1 single-sample toy (:mod:`loraplus_lab.theory.reduced`) have an ``n → ∞`` limit: the
width enters only through ``η_A·‖x‖² → η̃_A·n0·E[x²]`` (gradient descent) or ``η_A·‖x‖₁ →
η̃_A·n0·E|x|`` (sign-GD, Adam with ``ε = 0``), and the initial feature ``z_0 = a_0ᵀx =
ξ·‖x‖/√n → ξ``. A seed of the toy (:meth:`~loraplus_lab.sims.toy.ToyProblem.paper`) fixes
``ξ ~ N(0, 1)`` and the shift ``ζ`` (``e = W*x − y = −ζ``) independently of the width, so the
same seeds have a limit, and the loss of the limit dynamics is an explicit function of the base
rates ``(η̃_A, η̃_B)``: the rates can be tuned once, at ``n = ∞``, where no simulator of any
width can go.

**The objective** is the training loss averaged over the ``T`` steps (the area under the
training curve), averaged over the seeds, in log: ``J(u, v) = log mean_s (1/T) Σ_{t=1..T}
L_t``, with ``u = log2 η̃_A``, ``v = log2 η̃_B``. Not the loss at step ``T``: under gradient
descent that puts the optimum right at the stability edge of the seed with the largest ``|ξ|``
(a cliff, Hessian condition numbers of 10³–10⁴) among ripples along a long valley
``η̃_A·η̃_B ≈ const``, so that a small perturbation moves it to another ripple. Averaged over
the steps, the optimum is a well-conditioned minimum. A run that diverges counts its loss as the
divergence bound from then on.

**Tuning** (:func:`tune`): the grid minimum of ``J`` on a log2 grid, then Nelder–Mead, then
Newton's method with a finite-difference Hessian (step ``1e-4`` octaves) to ``1e-9`` octaves.

**Approach** (:func:`approach`): for the same seeds at width ``n``, ``‖x‖²/n − 1``, ``‖x‖₁/n −
E|x|`` and ``‖x‖/√n − 1`` are ``O(n^{-1/2})`` (central limit theorem), so the finite-width
objective is the limit's plus an ``O(n^{-1/2})`` perturbation, and at a non-degenerate minimum
the optimum moves by ``O(n^{-1/2})``: the distance ``|(u_n, v_n) − (u_∞, v_∞)|`` (octaves) is
expected to fall like ``n^{-1/2}``. It is a random quantity (the fluctuations of one seed set), so
it is measured over several independent seed sets: :func:`approach_rate` fits the slope of the
log2 root-mean-square distance over the sets against ``log2 n``, with a bootstrap over the sets.
(Averaged over the data distribution instead of a fixed seed set, the perturbation would cancel
to first order and the optimum would approach at ``O(1/n)``.)

Finite-width dynamics are computed exactly and in one batch for all seeds: the reduced dynamics
depend on ``x`` only through ``‖x‖²`` (GD) or ``‖x‖₁`` (sign-GD, Adam with ``ε = 0``), so a
seed's width-``n`` run is the limit's run with ``η̃_A`` multiplied by ``‖x‖²/(n·E x²)`` (or
``‖x‖₁/(n·E|x|)``) and ``z_0 = a_0ᵀx`` (tests check it against the reduced dynamics built from
the seed's own ``x``, and those against the ``n``-dimensional simulator).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from loraplus_lab.theory import reduced

#: Optimizers whose reduced dynamics see the width through one norm of ``x`` (folded into η̃_A).
OPTIMIZERS = ("gd", "signgd", "adam")
#: What is minimised: the loss averaged over the steps (default) or the loss at the last step.
OBJECTIVES = ("average", "final")
_E_ABS = math.sqrt(2.0 / math.pi)  # E|x| for x ~ N(0, 1)
_BOUND = 1e8  # the divergence bound of the reduced dynamics


@dataclass(frozen=True)
class ToySeeds:
    """Seeds of the paper's toy, reduced to what the dynamics see, at one width or the limit.

    Attributes:
        seeds: the toy's seeds.
        width: ``n`` (``math.inf``: the limit).
        z0: ``a_0ᵀx`` (the limit: ``ξ``).
        e: ``W*x − y`` (``= −ζ``, width-independent).
        sq_ratio: ``‖x‖²/(n·E x²)`` (1 in the limit).
        l1_ratio: ``‖x‖₁/(n·E|x|)`` (1 in the limit).
    """

    seeds: np.ndarray
    width: float
    z0: np.ndarray
    e: np.ndarray
    sq_ratio: np.ndarray
    l1_ratio: np.ndarray

    def limit(self) -> ToySeeds:
        """The same seeds at ``n = ∞`` (``z0 = ξ = a_0ᵀx·√n/‖x‖``)."""
        if not math.isfinite(self.width):
            return self
        one = np.ones_like(self.z0)
        return ToySeeds(self.seeds, math.inf, self.z0 / np.sqrt(self.sq_ratio), self.e, one, one)


def toy_seeds(seeds: Sequence[int], width: float = math.inf) -> ToySeeds:
    """The paper's toy (Init[A], ``s = 1``) for ``seeds`` at ``width``, or at ``n = ∞``
    (``width = inf``: ``ξ`` and ``ζ`` read from the problem at width 64, where they are the same
    as at any width)."""
    from loraplus_lab.sims.toy import ToyProblem

    seeds = np.asarray(list(seeds), dtype=int)
    if seeds.size == 0:
        raise ValueError("no seeds")
    limit = not math.isfinite(float(width))
    n = 64 if limit else int(width)
    if not limit and (n != width or n < 1):
        raise ValueError(f"width must be a positive integer or inf, got {width!r}")
    z0, e, sq, l1 = (np.empty(len(seeds)) for _ in range(4))
    for k, s in enumerate(seeds):
        p = ToyProblem.paper(n, int(s))
        x = p.X[0]
        z0[k] = float(p.A0[0] @ x)
        e[k] = float(-p.residual0()[0, 0])
        sq[k] = float(x @ x) / n
        l1[k] = float(np.abs(x).sum()) / (n * _E_ABS)
    out = ToySeeds(seeds, float(n), z0, e, sq, l1)
    return out.limit() if limit else out


def losses(
    toy: ToySeeds,
    log2_eta_a: np.ndarray,
    log2_eta_b: np.ndarray,
    *,
    steps: int,
    optimizer: str = "gd",
    n0: int = 64,
) -> np.ndarray:
    """The loss curves ``(steps + 1, K, S)`` of every seed at the base rates
    ``(2^u[k], 2^v[k])`` (``η_A = η̃_A·n0/n``, ``η_B = η̃_B``), exact, in one batch; after a
    divergence the loss is the divergence bound."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    u = np.atleast_1d(np.asarray(log2_eta_a, dtype=float))
    v = np.atleast_1d(np.asarray(log2_eta_b, dtype=float))
    K, S = len(u), len(toy.e)
    fold = toy.sq_ratio if optimizer == "gd" else toy.l1_ratio
    lim = reduced.ReducedToy(
        z0=np.tile(toy.z0, K),
        b0=0.0,
        e=np.tile(toy.e, K),
        scale=1.0,
        coords=reduced.CoordStats.infinite(n0),
    )
    traj = reduced.run(
        lim,
        eta_a=np.repeat(2.0**u, S) * np.tile(fold, K),
        eta_b=np.repeat(2.0**v, S),
        steps=steps,
        optimizer=optimizer,
        eps=0.0,
        divergence_bound=_BOUND,
    )
    L = np.where(np.isnan(traj.loss), _BOUND, traj.loss)
    return L.reshape(steps + 1, K, S)


def objective(
    toy: ToySeeds,
    log2_eta_a: np.ndarray,
    log2_eta_b: np.ndarray,
    *,
    steps: int,
    optimizer: str = "gd",
    n0: int = 64,
    kind: str = "average",
) -> np.ndarray:
    """``J = log mean_s L̄_s`` at each ``(u[k], v[k])``, ``L̄`` the loss averaged over steps
    ``1..T`` (``kind="average"``) or at step ``T`` (``"final"``)."""
    if kind not in OBJECTIVES:
        raise ValueError(f"kind must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
    L = losses(toy, log2_eta_a, log2_eta_b, steps=steps, optimizer=optimizer, n0=n0)
    per_seed = L[1:].mean(axis=0) if kind == "average" else L[-1]
    return np.log(per_seed.mean(axis=1))


@dataclass(frozen=True)
class Tuned:
    """An optimum of :func:`objective`: ``u = log2 η̃_A*``, ``v = log2 η̃_B*``, the objective
    there, the Hessian's eigenvalues (octaves⁻²) and whether Newton's method converged."""

    u: float
    v: float
    value: float
    hessian_eigenvalues: tuple[float, float]
    converged: bool


def _newton(f, x: np.ndarray, h: float = 1e-4, iterations: int = 40):  # noqa: ANN202
    E = np.eye(2) * h
    H = np.full((2, 2), np.nan)
    for _ in range(iterations):
        g = np.array([(f(x + E[i]) - f(x - E[i])) / (2 * h) for i in range(2)])
        H = np.array(
            [
                [
                    (
                        f(x + E[i] + E[j])
                        - f(x + E[i] - E[j])
                        - f(x - E[i] + E[j])
                        + f(x - E[i] - E[j])
                    )
                    / (4 * h * h)
                    for j in range(2)
                ]
                for i in range(2)
            ]
        )
        if not (np.isfinite(H).all() and np.all(np.linalg.eigvalsh(H) > 0)):
            return x, False, H
        step = np.linalg.solve(H, g)
        big = np.max(np.abs(step))
        if big > 0.25:
            step *= 0.25 / big
        x = x - step
        if big < 1e-9:
            return x, True, H
    return x, False, H


def tune(
    toy: ToySeeds,
    *,
    steps: int,
    optimizer: str = "gd",
    n0: int = 64,
    kind: str = "average",
    grid: tuple[float, float, float, float, float] = (-14.0, 2.0, -10.0, 4.0, 0.25),
    start: tuple[float, float] | None = None,
) -> Tuned:
    """Minimise :func:`objective` over ``(u, v)``: the minimum of a log2 grid
    ``grid = (u_lo, u_hi, v_lo, v_hi, spacing)`` (or ``start``), then Nelder–Mead, then Newton."""

    def f(p: np.ndarray) -> float:
        return float(
            objective(toy, p[0], p[1], steps=steps, optimizer=optimizer, n0=n0, kind=kind)[0]
        )

    if start is None:
        ulo, uhi, vlo, vhi, d = grid
        U, V = np.meshgrid(
            np.arange(ulo, uhi + d / 2, d), np.arange(vlo, vhi + d / 2, d), indexing="ij"
        )
        J = objective(toy, U.ravel(), V.ravel(), steps=steps, optimizer=optimizer, n0=n0, kind=kind)
        k = int(np.argmin(J))
        x0 = np.array([U.ravel()[k], V.ravel()[k]])
    else:
        x0 = np.asarray(start, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nm = optimize.minimize(
            f, x0, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-14, "maxiter": 4000}
        )
    x, ok, H = _newton(f, np.asarray(nm.x, dtype=float))
    if not ok or f(x) > nm.fun + 1e-12:
        x = np.asarray(nm.x, dtype=float)
    eig = np.linalg.eigvalsh(H) if np.isfinite(H).all() else np.full(2, np.nan)
    return Tuned(float(x[0]), float(x[1]), f(x), (float(eig[0]), float(eig[1])), bool(ok))


def approach(
    widths: Sequence[int],
    *,
    sets: int = 8,
    seeds_per_set: int = 32,
    steps: int = 10,
    optimizer: str = "gd",
    n0: int = 64,
    kind: str = "average",
    grid: tuple[float, float, float, float, float] = (-14.0, 2.0, -10.0, 4.0, 0.25),
) -> pd.DataFrame:
    """Tune every seed set at ``n = ∞`` and at each width (seed set ``j``: seeds
    ``j·S … (j+1)·S − 1``), and compare.

    Returns one row per set × width (and one per set with ``width = inf``): ``set, width,
    log2_eta_a, log2_eta_b`` (the base rates ``η̃`` tuned there), ``objective``, ``du``, ``dv``,
    ``distance`` (octaves, to the same set's limit optimum), ``regret`` (``J_n`` at the limit's
    rates minus ``J_n`` at the width's own, i.e. log of the loss ratio: what the rates tuned at
    ``n = ∞`` cost at width ``n``), ``cond`` (the Hessian's condition number at the width's
    optimum) and ``converged``."""
    rows = []
    for j in range(sets):
        seeds = range(j * seeds_per_set, (j + 1) * seeds_per_set)
        lim = toy_seeds(seeds)
        opt = dict(steps=steps, optimizer=optimizer, n0=n0, kind=kind)
        t_inf = tune(lim, grid=grid, **opt)
        rows.append(_approach_row(j, math.inf, t_inf, t_inf, 0.0))
        for n in widths:
            toy = toy_seeds(seeds, n)
            t_n = tune(toy, grid=grid, **opt)
            at_lim = float(objective(toy, t_inf.u, t_inf.v, **opt)[0])
            rows.append(_approach_row(j, float(n), t_n, t_inf, at_lim - t_n.value))
    return pd.DataFrame(rows)


def _approach_row(j: int, width: float, t: Tuned, t_inf: Tuned, regret: float) -> dict:
    du, dv = t.u - t_inf.u, t.v - t_inf.v
    lo, hi = t.hessian_eigenvalues
    return {
        "set": j,
        "width": width,
        "log2_eta_a": t.u,
        "log2_eta_b": t.v,
        "objective": t.value,
        "du": du,
        "dv": dv,
        "distance": math.hypot(du, dv),
        "regret": regret,
        "cond": hi / lo if lo > 0 else float("nan"),
        "converged": t.converged,
    }


#: The expected slopes against log2 n: the optimum's distance from the limit's falls like
#: n^-1/2 (the fluctuations of the seeds' norms), the cost of the limit's rates like n^-1 (a
#: quadratic minimum).
EXPECTED_RATES = {"distance": -0.5, "regret": -1.0}


def approach_rate(
    table: pd.DataFrame,
    *,
    min_width: float = 0,
    column: str = "distance",
    n_boot: int = 999,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """The slope of ``log2 RMS_sets(column)`` against ``log2 n`` over the widths ``≥
    min_width``, with a percentile bootstrap over the seed sets (resampled with replacement, the
    same resample at every width). Returns ``slope, ci_low, ci_high, expected`` (from
    :data:`EXPECTED_RATES`, NaN for another column), ``widths, sets``."""
    t = table[np.isfinite(table["width"]) & (table["width"] >= min_width)]
    pivot = t.pivot(index="set", columns="width", values=column)
    X = pivot.to_numpy(float)  # (sets, widths)
    x = np.log2(pivot.columns.to_numpy(float))

    def slope(idx: np.ndarray) -> float:
        rms = np.sqrt(np.mean(X[np.asarray(idx, dtype=int)] ** 2, axis=0))
        return float(np.polyfit(x, np.log2(rms), 1)[0])

    point = slope(np.arange(len(X)))
    lo = hi = float("nan")
    if len(X) >= 2:
        with warnings.catch_warnings():  # a degenerate resample (one set repeated) is expected
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (np.arange(len(X)),),
                slope,
                n_resamples=n_boot,
                vectorized=False,
                confidence_level=confidence,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {
        "slope": point,
        "ci_low": lo,
        "ci_high": hi,
        "expected": EXPECTED_RATES.get(column, float("nan")),
        "widths": len(x),
        "sets": len(X),
    }
