"""Toy LoRA finetuning problems: the paper's rank-1 single-sample toy and its generalisation.

A problem is the data ``X ∈ R^{N×n}``, targets ``y ∈ R^{N×m}``, the frozen ``W* ∈ R^{m×n}``, the
initial factors ``A0 ∈ R^{r×n}``, ``B0 ∈ R^{m×r}`` and the LoRA multiplier ``s``. The model is
``f(x) = (W* + s·B·A) x`` and the loss ``(1/N) Σ_i ½‖f(x_i) − y_i‖²``.

Random draws are coupled across widths (common random numbers), without changing their
distribution: every row of ``X`` and ``W*`` comes from its own stream seeded by
``(seed, stream, row)``, so the width-``n`` problem holds the first ``n`` coordinates of the
width-``2n`` one; and a Gaussian row ``g ~ N(0, I_n/n)`` that meets the data (``A0``, the
teacher's direction) is drawn as its component orthogonal to the span of the inputs plus a
component inside that span whose ``N`` coordinates come from a width-independent stream. Given
``X`` the two components are independent Gaussians, so ``g`` has exactly the distribution
``N(0, I_n/n)``; but the Θ(1) numbers the dynamics depend on, such as ``z_0 = a_0ᵀx``, no longer
jump from one width to the next, and slopes against width are measured without that noise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from threadpoolctl import ThreadpoolController

from loraplus_lab.sims.checks import InputError, nonnegative_int, positive_int
from loraplus_lab.sims.params import check_init, lora_scale

if TYPE_CHECKING:
    from loraplus_lab.theory.reduced import ReducedToy

# stream identifiers for np.random.default_rng([seed, stream, row])
(
    _X,
    _A,
    _B,
    _W,
    _TEACHER_U,
    _TEACHER_V,
    _TARGET,
    _NOISE,
    _SPAN,
    _X_TEST,
    _NOISE_TEST,
    _EMBED,
    _LATENT,
    _LATENT_TEST,
    _TEACHER_W,
) = range(15)


_blas: ThreadpoolController | None = None


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread inside the block. The products that draw a problem are small;
    on more threads they leave the BLAS workers spinning for a while afterwards (OpenBLAS waits
    ~0.1 s before they sleep), taking cores from the simulation that follows."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


def _coupled_rows(seed: int, stream: int, rows: int, X: np.ndarray) -> np.ndarray:
    """``rows × n`` draws of ``N(0, I_n/n)`` whose projections on the span of ``X``'s rows are
    width-independent: ``g = P⊥h/√n + Q ξ/√n`` with ``Q`` an orthonormal basis of that span
    (``Q = Xᵀ(XXᵀ)^{-1/2}``, so ``X g ≈ ξ`` when ``XXᵀ ≈ n·I``) and ``ξ ~ N(0, I_N)`` drawn from a
    stream that does not depend on ``n``. Falls back to plain draws when ``N ≥ n``.
    """
    N, n = X.shape
    h = _normal_rows(seed, stream, rows, n)
    if N >= n:
        return h / math.sqrt(n)
    evals, evecs = np.linalg.eigh(X @ X.T)
    keep = evals > evals.max() * N * np.finfo(float).eps  # inputs may span fewer than N dims
    inv_sqrt = np.zeros_like(evals)
    inv_sqrt[keep] = 1 / np.sqrt(evals[keep])
    # Q = Xᵀ(XXᵀ)^{+1/2}: QQᵀ projects on the span of the inputs, so Qξ ~ N(0, P_span)
    Q = X.T @ (evecs * inv_sqrt) @ evecs.T
    xi = np.random.default_rng([seed, stream, _SPAN]).standard_normal((rows, N))
    return (h - (h @ Q) @ Q.T + xi @ Q.T) / math.sqrt(n)


def _normal_rows(seed: int, stream: int, rows: int, n: int) -> np.ndarray:
    """``rows × n`` standard normals; row ``i`` is a prefix-stable stream ``(seed, stream, i)``."""
    out = np.empty((rows, n))
    for i in range(rows):
        out[i] = np.random.default_rng([seed, stream, i]).standard_normal(n)
    return out


@dataclass(frozen=True, eq=False)
class ToyProblem:
    """One toy finetuning problem (all arrays float64, read-only).

    Attributes:
        X: inputs, shape ``(N, n)``.
        y: targets, shape ``(N, m)``.
        W_star: frozen weight, shape ``(m, n)``.
        A0: initial ``A``, shape ``(r, n)``.
        B0: initial ``B``, shape ``(m, r)``.
        scale: the LoRA multiplier ``s`` (``α/r`` or ``α/√r``).
        X_test: optional held-out inputs, shape ``(N_test, n)`` (``None``: no test set).
        y_test: their targets, shape ``(N_test, m)``.
    """

    X: np.ndarray
    y: np.ndarray
    W_star: np.ndarray
    A0: np.ndarray
    B0: np.ndarray
    scale: float = 1.0
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        W_star: np.ndarray,
        A0: np.ndarray,
        B0: np.ndarray,
        scale: float = 1.0,
        X_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
    ) -> ToyProblem:
        """A problem from arrays X (N,n), y (N,m), W* (m,n), A0 (r,n), B0 (m,r), shapes checked.

        ``X_test`` (N_test, n) and ``y_test`` (N_test, m), both or neither, add a held-out set
        whose loss is recorded as ``test_loss``.

        Use it to replay a state you care about. Raises ``ValueError`` naming the first
        inconsistent shape or non-finite value.
        """
        if (X_test is None) != (y_test is None):
            raise InputError("X_test and y_test go together")
        arrays = {}
        named = [("X", X), ("y", y), ("W_star", W_star), ("A0", A0), ("B0", B0)]
        if X_test is not None:
            named += [("X_test", X_test), ("y_test", y_test)]
        for name, arr in named:
            a = np.array(arr, dtype=np.float64, copy=True)
            if a.ndim != 2:
                raise InputError(f"{name} must be a 2-D array, got shape {a.shape}")
            if not np.isfinite(a).all():
                raise InputError(f"{name} holds non-finite values")
            a.setflags(write=False)
            arrays[name] = a
        N, n = arrays["X"].shape
        r = arrays["A0"].shape[0]
        m = arrays["W_star"].shape[0]
        expected = {"X": (N, n), "y": (N, m), "W_star": (m, n), "A0": (r, n), "B0": (m, r)}
        if X_test is not None:
            n_test = arrays["X_test"].shape[0]
            expected.update({"X_test": (n_test, n), "y_test": (n_test, m)})
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise InputError(
                    f"{name} has shape {arrays[name].shape}, expected {shape} "
                    f"(N={N} samples, width n={n}, m={m} outputs, rank r={r})"
                )
        if min(N, n, m, r) < 1:
            raise InputError(f"empty dimension: N={N}, n={n}, m={m}, r={r}")
        if r > n:
            raise InputError(f"rank r={r} is above the width n={n}")
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise InputError(f"scale must be a positive number, got {scale!r}") from None
        if not math.isfinite(scale) or scale <= 0:
            raise InputError(f"scale must be a positive number, got {scale!r}")
        return cls(scale=scale, **arrays)

    @classmethod
    def paper(
        cls,
        width: int,
        seed: int,
        *,
        init: str = "A",
        alpha: float = 1.0,
        sigma_b: float = 1.0,
    ) -> ToyProblem:
        """The LoRA+ paper's toy (its §3): ``m = r = N = 1``, one sample with Θ(1) coordinates.

        ``x ~ N(0, I_n)``, ``W* ~ N(0, 1/n)``, target ``y = W*x + ζ`` with a width-independent
        shift ``|ζ| ∈ [0.5, 1.5]`` of random sign, so the initial residual ``U_0 = −ζ`` is Θ(1).
        Init[A]: ``A0 ~ N(0, 1/n)``, ``B0 = 0``; Init[B]: ``A0 = 0``, ``B0 ~ N(0, σ_B²)``.
        """
        width = positive_int("width", width)
        seed = nonnegative_int("seed", seed)
        check_init(init)
        x = _normal_rows(seed, _X, 1, width)
        W = _normal_rows(seed, _W, 1, width) / math.sqrt(width)
        t = np.random.default_rng([seed, _TARGET]).uniform(0.5, 1.5, size=2)
        zeta = t[0] * (1.0 if t[1] > 1.0 else -1.0)
        y = W @ x.T + zeta
        A0, B0 = _init_factors(seed, init, 1, 1, x, sigma_b)
        return cls.from_arrays(x, y, W, A0, B0, scale=lora_scale(alpha, 1))

    @classmethod
    def general(
        cls,
        width: int,
        seed: int,
        *,
        rank: int = 1,
        outputs: int | str = 1,
        samples: int = 1,
        init: str = "A",
        alpha: float = 1.0,
        alpha_rule: str = "lora",
        shift: float = 1.0,
        noise: float = 0.0,
        sigma_b: float = 1.0,
        test_samples: int = 0,
        latent_dim: int = 0,
    ) -> ToyProblem:
        """The generalised toy: rank ``r``, ``m`` outputs (an int, or ``"n"``: m = n), N samples.

        Targets come from a teacher with a Θ(1) low-rank shift:
        ``y_i = W* x_i + shift · u (vᵀ x_i)/√n + noise · ξ_i`` with ``u ~ N(0, I_m)``,
        ``v ~ N(0, I_n)``, ``ξ_i ~ N(0, I_m)``. ``test_samples`` held-out inputs from the same
        distribution and teacher give the ``test_loss`` column.

        ``latent_dim = k > 0`` puts the inputs on a ``k``-dimensional subspace, ``x = E z/√k``
        with ``E ∈ R^{n×k}`` (``N(0, 1)`` entries, so coordinates stay Θ(1)) and ``z ~ N(0, I_k)``,
        and makes the teacher's shift ``u (wᵀz)/√k`` (``w ~ N(0, I_k)``): the task is then
        learnable from ``N ≳ k`` samples at every width, which the test loss needs.
        """
        width = positive_int("width", width)
        seed = nonnegative_int("seed", seed)
        rank = positive_int("rank", rank)
        samples = positive_int("samples", samples)
        check_init(init)
        if outputs == "n":
            m = width
        else:
            m = positive_int("outputs", outputs)
        if rank > width:
            raise InputError(f"rank r={rank} is above the width n={width}")
        for name, v in (("shift", shift), ("noise", noise)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InputError(f"{name} must be a non-negative number, got {v!r}")
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, (int, np.integer)):
            raise InputError(f"latent_dim must be a non-negative integer, got {latent_dim!r}")
        if latent_dim < 0:
            raise InputError(f"latent_dim must be a non-negative integer, got {latent_dim!r}")
        k = int(latent_dim)
        if k:
            E = _normal_rows(seed, _EMBED, k, width).T  # (n, k), columns prefix-stable in n
            w = np.random.default_rng([seed, _TEACHER_W]).standard_normal(k)

            def inputs(stream: int, count: int) -> tuple[np.ndarray, np.ndarray]:
                Z = np.random.default_rng([seed, stream]).standard_normal((count, k))
                return Z @ E.T / math.sqrt(k), Z @ w / math.sqrt(k)

            X, t_train = inputs(_LATENT, samples)
        else:
            X = _normal_rows(seed, _X, samples, width)
            v = _coupled_rows(seed, _TEACHER_V, 1, X)[0]  # N(0, I/n): vᵀx = Θ(1)
            t_train = X @ v
        W = _normal_rows(seed, _W, m, width) / math.sqrt(width)
        u = np.random.default_rng([seed, _TEACHER_U]).standard_normal(m)
        y = X @ W.T + shift * np.outer(t_train, u)
        if noise > 0:
            y = y + noise * np.random.default_rng([seed, _NOISE]).standard_normal((samples, m))
        test: dict[str, np.ndarray] = {}
        if isinstance(test_samples, bool) or not isinstance(test_samples, (int, np.integer)):
            raise InputError(f"test_samples must be a non-negative integer, got {test_samples!r}")
        if test_samples < 0:
            raise InputError(f"test_samples must be a non-negative integer, got {test_samples!r}")
        if test_samples:
            if k:
                Xt, t_test = inputs(_LATENT_TEST, int(test_samples))
            else:
                Xt = _normal_rows(seed, _X_TEST, int(test_samples), width)
                t_test = Xt @ v
            yt = Xt @ W.T + shift * np.outer(t_test, u)
            if noise > 0:
                rng = np.random.default_rng([seed, _NOISE_TEST])
                yt = yt + noise * rng.standard_normal((int(test_samples), m))
            test = {"X_test": Xt, "y_test": yt}
        A0, B0 = _init_factors(seed, init, rank, m, X, sigma_b)
        return cls.from_arrays(X, y, W, A0, B0, scale=lora_scale(alpha, rank, alpha_rule), **test)

    @property
    def width(self) -> int:
        """``n``."""
        return self.X.shape[1]

    @property
    def samples(self) -> int:
        """``N``."""
        return self.X.shape[0]

    @property
    def outputs(self) -> int:
        """``m``."""
        return self.W_star.shape[0]

    @property
    def rank(self) -> int:
        """``r``."""
        return self.A0.shape[0]

    def residual0(self) -> np.ndarray:
        """``y − W* x`` per sample, shape ``(N, m)``: what ``Z_B`` has to fit."""
        return self.y - self.X @ self.W_star.T

    def residual0_test(self) -> np.ndarray | None:
        """``y − W* x`` on the held-out set, or ``None`` without one."""
        if self.X_test is None:
            return None
        return self.y_test - self.X_test @ self.W_star.T

    def reduced(self) -> ReducedToy:
        """The exact 2-D reduction ``(z, b)`` of a rank-1 single-sample single-output problem."""
        if (self.samples, self.outputs, self.rank) != (1, 1, 1):
            raise InputError(
                "the reduced dynamics need N = m = r = 1, got "
                f"N={self.samples}, m={self.outputs}, r={self.rank}"
            )
        from loraplus_lab.theory.reduced import CoordStats, ReducedToy

        x = self.X[0]
        return ReducedToy(
            z0=float(self.A0[0] @ x),
            b0=float(self.B0[0, 0]),
            e=float(-self.residual0()[0, 0]),
            scale=self.scale,
            coords=CoordStats.from_vector(x),
        )


def _init_factors(
    seed: int, init: str, rank: int, m: int, X: np.ndarray, sigma_b: float
) -> tuple[np.ndarray, np.ndarray]:
    """Init[A]: ``A0 ~ N(0, 1/n)``, ``B0 = 0``. Init[B]: ``A0 = 0``, ``B0 ~ N(0, σ_B²)``."""
    if not (isinstance(sigma_b, (int, float)) and math.isfinite(sigma_b) and sigma_b > 0):
        raise InputError(f"sigma_b must be a positive number, got {sigma_b!r}")
    if init == "A":
        return _coupled_rows(seed, _A, rank, X), np.zeros((m, rank))
    return np.zeros((rank, X.shape[1])), sigma_b * _normal_rows(seed, _B, m, rank)
