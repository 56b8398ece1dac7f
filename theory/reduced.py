"""Exact low-dimensional dynamics of the LoRA+ paper's rank-1 single-sample toy and its n → ∞ limit.

The toy (paper §3; ``docs/reduced.md``): one sample ``(x, y)``, ``x ∈ R^n``, one output, rank one::

    f = W* x + s·b·z,    z = aᵀx,    U = f − y = e + s·b·z,    e = W* x − y,    loss ½U².

The gradients are ``g_b = s·U·z`` and ``g_a = s·U·b·x = c·x`` with ``c = s·U·b``: the gradient of
``a`` always points along ``x``. Only ``z = aᵀx`` and ``b`` enter ``f``, so the pair ``(z, b)``
follows an exact 2-D recurrence in which the width ``n`` enters only through statistics of ``x``
(both right-hand sides use the old state)::

    GD       z ← z − η_a·c·‖x‖²                          b ← b − η_b·g_b
    sign-GD  z ← z − η_a·sign(c)·‖x‖₁                    b ← b − η_b·sign(g_b)
    Adam     z ← z − (η_a/bc1)·μ·Σ_i x_i²/(C|x_i| + ε)   b ← b − (η_b/bc1)·m_b/(√v_b/√bc2 + ε)

For Adam the moments of ``a`` stay ``m_a = μ·x`` and ``v_a = ν·x²`` (coordinate-wise) with scalars
``μ ← β1·μ + (1−β1)·c``, ``ν ← β2·ν + (1−β2)·c²``, and ``C = √ν/√bc2``, ``bc_k = 1 − β_k^t``
(``torch.optim.Adam``'s single-tensor path, operation for operation). With ``ε = 0`` the sum is
``‖x‖₁/C``. AdamW first multiplies ``a`` by ``1 − η_a·wd`` (so ``z`` too) and ``b`` by
``1 − η_b·wd``. GD with an L2 weight decay is the same as the decoupled decay and stays exact;
an L2 decay under sign-GD or Adam acts coordinate-wise on ``a`` and breaks the reduction.

The feature-update decomposition per step (same input) is ``ΔZ_B = δ¹ + δ² + δ³`` with
``δ¹ = s·b_{t−1}(z_t − z_{t−1})``, ``δ² = s(b_t − b_{t−1})z_{t−1}``,
``δ³ = s(b_t − b_{t−1})(z_t − z_{t−1})``.

Width limit: with LoRA+'s ``η_A = η̃_A·n0/n`` and i.i.d. coordinates, ``η_a‖x‖² → η̃_A n0 E[x²]``,
``η_a‖x‖₁ → η̃_A n0 E|x|`` and ``η_a Σ x_i²/(C|x_i|+ε) → η̃_A n0 E[x²/(C|x|+ε)]``, while ``η_a``
itself (which multiplies the decoupled weight decay of ``a``) goes to 0. :meth:`CoordStats.infinite`
holds these limits; the Gaussian expectation is computed in closed form (Dawson function and
exponential integral) to about 1e-13 relative.

Everything is vectorised in numpy over ``K`` configurations (rates, initial states, residuals);
the only Python loop is over steps. This module imports numpy, scipy and the standard library only.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy import special

from loraplus_lab.theory.optimizers import OPTIMIZERS

__all__ = [
    "DISTRIBUTIONS",
    "OPTIMIZERS",
    "CoordStats",
    "ReducedToy",
    "ReducedTrajectory",
    "gaussian_adam_mean",
    "run",
]

#: Coordinate distributions known to :meth:`CoordStats.infinite`.
DISTRIBUTIONS = ("gaussian", "rademacher")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_SQRT_PI = math.sqrt(math.pi)
# Above this k = ε/C the Gaussian expectation uses its asymptotic series (60 terms; relative
# error below 1e-15 there); below it the closed form, whose cancellation costs up to ~1e-13.
_SERIES_K = 9.0
_SERIES_TERMS = 60
# E|x|^p for x ~ N(0, 1), p = 2 .. _SERIES_TERMS + 1 (coefficients of the asymptotic series).
_GAUSS_ABS_MOMENTS = np.array(
    [
        2.0 ** (p / 2) * math.exp(math.lgamma((p + 1) / 2)) / _SQRT_PI
        for p in range(2, _SERIES_TERMS + 2)
    ]
)
# Distinct |x_i| values processed per block in the finite-width Adam sum (fixed, so the result
# for one configuration does not depend on how many others share the batch).
_VALUE_BLOCK = 256


def _finite_float(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return v


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite_array(name: str, value: object) -> float | np.ndarray:
    """A finite float (0-d input) or a finite 1-D float64 array."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number or 1-D array, got {value!r}") from None
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = arr.ravel()[~np.isfinite(arr.ravel())][0]
        raise ValueError(f"{name} must be finite, got {bad!r}")
    if arr.ndim == 0:
        return float(arr)
    arr = arr.copy()
    arr.setflags(write=False)
    return arr


def _rate_array(name: str, value: object) -> np.ndarray:
    """A learning rate: a positive finite number or 1-D array of them."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number or 1-D array, got {value!r}") from None
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-D array, got shape {arr.shape}")
    flat = arr.ravel()
    bad = ~(np.isfinite(flat) & (flat > 0))
    if bad.any():
        raise ValueError(f"{name} must be positive and finite, got {flat[bad][0]!r}")
    return arr


def _gauss_ratio(k: np.ndarray) -> np.ndarray:
    """``h(k) = E[x²/(|x| + k)]`` for ``x ~ N(0, 1)`` and ``k ≥ 0`` (elementwise).

    Writing ``x²/(x+k) = x − k + k²/(x+k)``,
    ``h(k) = √(2/π)·[1 − k√(π/2) + k²·G(k/√2)]`` with the Goodwin–Staton integral
    ``G(y) = ∫_0^∞ e^{−t²}/(t+y) dt = √π·D(y) − ½e^{−y²}·Ei(y²)`` (``D`` Dawson's function).
    For large ``k`` the bracket cancels, and the asymptotic series
    ``h(k) = Σ_j (−1)^j E|x|^{j+2}/k^{j+1}`` is used instead.
    """
    k = np.asarray(k, dtype=np.float64)
    flat = k.ravel()
    out = np.empty_like(flat)
    small = flat < _SERIES_K
    ks = flat[small]
    y = ks / math.sqrt(2.0)
    g = _SQRT_PI * special.dawsn(y) - 0.5 * np.exp(-y * y) * special.expi(y * y)
    closed = _SQRT_2_OVER_PI * (1.0 - ks * math.sqrt(math.pi / 2.0) + ks * ks * g)
    out[small] = np.where(ks == 0.0, _SQRT_2_OVER_PI, closed)
    kl = flat[~small]
    series = np.zeros_like(kl)
    for coef in _GAUSS_ABS_MOMENTS[::-1]:  # Horner in 1/k
        series = coef - series / kl
    out[~small] = series / kl
    return out.reshape(k.shape)


def gaussian_adam_mean(c: np.ndarray | float, eps: float) -> np.ndarray:
    """``E[x²/(c|x| + ε)]`` for ``x ~ N(0, 1)``, elementwise over ``c ≥ 0``.

    ``ε = 0`` gives ``E|x|/c = √(2/π)/c`` (``inf`` at ``c = 0``); ``c = 0`` gives ``E[x²]/ε = 1/ε``;
    otherwise ``h(ε/c)/c`` with :func:`_gauss_ratio`. Accurate to about 1e-13 relative.
    """
    c = np.asarray(c, dtype=np.float64)
    eps = float(eps)
    with np.errstate(all="ignore"):
        if eps == 0.0:
            return _SQRT_2_OVER_PI / c
        cpos = np.where(c > 0, c, 1.0)
        out = _gauss_ratio(eps / cpos) / cpos
        return np.where(c > 0, out, 1.0 / eps)


@dataclass(frozen=True, eq=False)
class CoordStats:
    """How the width enters: statistics of the input ``x``.

    Build it with :meth:`from_vector` (a concrete ``x``), :meth:`rademacher` (``|x_i| = 1``, O(1)
    at any width), :meth:`from_counts` (distinct ``|x_i|`` with multiplicities), :meth:`from_norms`
    (only ``‖x‖²`` and ``‖x‖₁``: enough for GD, sign-GD and Adam with ``ε = 0``) or
    :meth:`infinite` (the ``n → ∞`` limit under ``η_A = η̃_A·n0/n``).

    Attributes:
        width: ``n`` (``math.inf`` for the limit).
        sq_norm: ``‖x‖²``; in the limit ``n0·E[x²]``, the factor multiplying the base rate η̃_A.
        l1_norm: ``‖x‖₁``; in the limit ``n0·E|x|``.
        abs_values: the distinct values of ``|x_i|`` (``None`` when only norms are known or in the
            Gaussian limit).
        counts: their multiplicities (in the limit: multiplied by ``n0/n``, i.e. ``n0·P(|x| = v)``).
        n0: the base width of the limit (``None`` at finite width).
        distribution: the coordinate distribution of the limit (``None`` at finite width).
    """

    width: float
    sq_norm: float
    l1_norm: float
    abs_values: np.ndarray | None = None
    counts: np.ndarray | None = None
    n0: float | None = None
    distribution: str | None = None

    def __post_init__(self) -> None:
        width = float(self.width)
        if not width > 0:  # also catches NaN
            raise ValueError(f"width must be positive, got {self.width!r}")
        if self.n0 is None and not math.isfinite(width):
            raise ValueError("an infinite width needs n0 (use CoordStats.infinite)")
        for name in ("sq_norm", "l1_norm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
        if (self.abs_values is None) != (self.counts is None):
            raise ValueError("abs_values and counts must be given together")
        object.__setattr__(self, "width", width)

    # -- constructors -------------------------------------------------------------------------

    @classmethod
    def from_counts(cls, abs_values: np.ndarray, counts: np.ndarray) -> CoordStats:
        """Finite width from distinct ``|x_i|`` and their multiplicities (``n = Σ counts``)."""
        v = np.asarray(abs_values, dtype=np.float64).ravel()
        c = np.asarray(counts, dtype=np.float64).ravel()
        if v.shape != c.shape:
            raise ValueError(f"abs_values and counts differ in length: {v.size} vs {c.size}")
        if v.size == 0:
            raise ValueError("width must be positive, got 0 coordinates")
        bad = ~(np.isfinite(v) & (v >= 0))
        if bad.any():
            raise ValueError(f"abs_values must be finite and non-negative, got {v[bad][0]!r}")
        if not (np.isfinite(c).all() and (c > 0).all() and (c == np.round(c)).all()):
            raise ValueError("counts must be positive integers")
        v = v.copy()
        c = c.copy()
        v.setflags(write=False)
        c.setflags(write=False)
        return cls(
            width=float(c.sum()),
            sq_norm=float(np.dot(c, v * v)),
            l1_norm=float(np.dot(c, v)),
            abs_values=v,
            counts=c,
        )

    @classmethod
    def from_vector(cls, x: np.ndarray) -> CoordStats:
        """Finite width ``n = len(x)`` from the input vector ``x`` itself."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"x must be a 1-D array, got shape {x.shape}")
        if x.size == 0:
            raise ValueError("width must be positive, got an empty x")
        if not np.isfinite(x).all():
            raise ValueError("x holds non-finite values")
        ax = np.abs(x)
        values, counts = np.unique(ax, return_counts=True)
        out = cls.from_counts(values, counts)
        # the norms straight from x (same rounding as a dot product over the vector)
        object.__setattr__(out, "sq_norm", float(np.dot(x, x)))
        object.__setattr__(out, "l1_norm", float(ax.sum()))
        return out

    @classmethod
    def rademacher(cls, n: int) -> CoordStats:
        """``|x_i| = 1`` for all ``n`` coordinates: every statistic exact and O(1) at any ``n``."""
        n = _positive_int("width", n)
        return cls.from_counts(np.array([1.0]), np.array([float(n)]))

    @classmethod
    def from_norms(cls, width: float, sq_norm: float, l1_norm: float) -> CoordStats:
        """Finite width known only by ``‖x‖²`` and ``‖x‖₁`` (GD, sign-GD, Adam with ``ε = 0``)."""
        w = _finite_float("width", width)
        if w <= 0:
            raise ValueError(f"width must be positive, got {width!r}")
        sq = _finite_float("sq_norm", sq_norm)
        l1 = _finite_float("l1_norm", l1_norm)
        if sq < 0 or l1 < 0:
            raise ValueError(f"norms must be non-negative, got sq_norm={sq!r}, l1_norm={l1!r}")
        tol = 1e-12
        if l1 * l1 > w * sq * (1 + tol) or l1 * l1 < sq * (1 - tol):
            raise ValueError(
                f"no x of width {w:g} has ‖x‖²={sq!r} and ‖x‖₁={l1!r} (need ‖x‖² ≤ ‖x‖₁² ≤ n‖x‖²)"
            )
        return cls(width=w, sq_norm=sq, l1_norm=l1)

    @classmethod
    def infinite(cls, n0: int, distribution: str = "gaussian") -> CoordStats:
        """The ``n → ∞`` limit with ``η_A = η̃_A·n0/n``; :func:`run`'s ``eta_a`` is then ``η̃_A``.

        ``distribution`` is the law of the i.i.d. coordinates: ``"gaussian"`` (``N(0, 1)``:
        ``E x² = 1``, ``E|x| = √(2/π)``) or ``"rademacher"`` (``±1``).
        """
        n0 = _positive_int("n0", n0)
        if distribution == "gaussian":
            return cls(
                width=math.inf,
                sq_norm=float(n0),
                l1_norm=n0 * _SQRT_2_OVER_PI,
                n0=float(n0),
                distribution=distribution,
            )
        if distribution == "rademacher":
            return cls(
                width=math.inf,
                sq_norm=float(n0),
                l1_norm=float(n0),
                abs_values=np.array([1.0]),
                counts=np.array([float(n0)]),
                n0=float(n0),
                distribution=distribution,
            )
        raise ValueError(
            f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}"
        )

    # -- statistics ---------------------------------------------------------------------------

    @property
    def is_limit(self) -> bool:
        """Whether this is the ``n → ∞`` limit."""
        return self.n0 is not None

    def lr(self, eta_a: np.ndarray | float) -> np.ndarray:
        """The rate applied to each coordinate of ``a``: ``η_a``; in the limit ``η̃_A·n0/n → 0``.

        It multiplies the decoupled weight decay ``a ← a(1 − η_a·wd)``, which vanishes in the limit.
        """
        eta_a = np.asarray(eta_a, dtype=np.float64)
        return np.zeros_like(eta_a) if self.is_limit else eta_a

    def gd_gain(self, eta_a: np.ndarray | float) -> np.ndarray:
        """``η_a·‖x‖²`` (limit: ``η̃_A·n0·E[x²]``): the GD move of ``z`` per unit of ``c = sUb``."""
        return np.asarray(eta_a, dtype=np.float64) * self.sq_norm

    def sign_gain(self, eta_a: np.ndarray | float) -> np.ndarray:
        """``η_a·‖x‖₁`` (limit: ``η̃_A·n0·E|x|``): the sign-GD move of ``z``."""
        return np.asarray(eta_a, dtype=np.float64) * self.l1_norm

    def adam_gain(self, eta_a: np.ndarray | float, c: np.ndarray | float, eps: float) -> np.ndarray:
        """``η_a·Σ_i x_i²/(c|x_i| + ε)`` (limit: ``η̃_A·n0·E[x²/(c|x| + ε)]``), elementwise.

        ``eta_a`` and ``c ≥ 0`` broadcast against each other. For ``ε = 0`` this is ``η_a‖x‖₁/c``
        (``inf`` at ``c = 0``). For ``ε > 0`` it sums over the distinct ``|x_i|`` with their
        multiplicities (cost proportional to their number), or uses the Gaussian expectation.
        """
        eta_a = np.asarray(eta_a, dtype=np.float64)
        c = np.asarray(c, dtype=np.float64)
        eps = float(eps)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a non-negative finite number, got {eps!r}")
        with np.errstate(all="ignore"):
            if eps == 0.0:
                return eta_a * (self.l1_norm / c)
            if self.abs_values is not None:
                return eta_a * self._value_sum(c, eps)
            if self.distribution == "gaussian":
                return eta_a * (self.n0 * gaussian_adam_mean(c, eps))
        raise ValueError(
            "Adam with eps > 0 needs the distinct |x_i| values; build the CoordStats with "
            "from_vector, from_counts or rademacher, or use eps=0"
        )

    def _value_sum(self, c: np.ndarray, eps: float) -> np.ndarray:
        """``Σ_j counts_j·v_j²/(c·v_j + ε)`` over the distinct values, blockwise."""
        v = self.abs_values
        w = self.counts * v * v
        shape = c.shape
        cf = c.reshape(-1, 1)
        total = np.zeros(cf.shape[0])
        for lo in range(0, v.size, _VALUE_BLOCK):
            vb = v[lo : lo + _VALUE_BLOCK]
            wb = w[lo : lo + _VALUE_BLOCK]
            total += np.add.reduce(wb / (cf * vb + eps), axis=1)
        return total.reshape(shape)


@dataclass(frozen=True, eq=False)
class ReducedToy:
    """The rank-1 single-sample toy reduced to ``(z, b)``.

    Attributes:
        z0: initial ``z = a_0ᵀx`` (Θ(1)); a number or a 1-D array (e.g. one per seed).
        b0: initial ``b``.
        e: ``W*x − y`` (so ``U = e + s·b·z``).
        scale: the LoRA multiplier ``s``.
        coords: the statistics of ``x`` (:class:`CoordStats`).
    """

    z0: float | np.ndarray
    b0: float | np.ndarray
    e: float | np.ndarray
    scale: float
    coords: CoordStats

    def __post_init__(self) -> None:
        for name in ("z0", "b0", "e"):
            object.__setattr__(self, name, _finite_array(name, getattr(self, name)))
        scale = _finite_float("scale", self.scale)
        if scale == 0:
            raise ValueError(f"scale must be a finite non-zero number, got {self.scale!r}")
        object.__setattr__(self, "scale", scale)
        if not isinstance(self.coords, CoordStats):
            raise ValueError(f"coords must be a CoordStats, got {type(self.coords).__name__}")

    @property
    def U0(self) -> float | np.ndarray:
        """The initial residual ``U_0 = e + s·b_0·z_0``."""
        return self.e + self.scale * self.b0 * self.z0


@dataclass(frozen=True, eq=False)
class ReducedTrajectory:
    """A reduced trajectory: arrays of shape ``(steps + 1, K)``, row ``t`` after ``t`` steps.

    Attributes:
        z, b: the state ``(z_t, b_t)``.
        U: the residual ``U_t = e + s·b_t·z_t`` (signed).
        loss: ``½U_t²``.
        delta1, delta2, delta3: the signed feature-update terms ``δ¹_t, δ²_t, δ³_t`` (NaN at
            step 0).
        diverged_step: shape ``(K,)``, the first step whose values were non-finite or whose loss
            exceeded the bound (−1 if never); that row and all later ones are NaN.
    """

    z: np.ndarray
    b: np.ndarray
    U: np.ndarray
    loss: np.ndarray
    delta1: np.ndarray
    delta2: np.ndarray
    delta3: np.ndarray
    diverged_step: np.ndarray

    @property
    def steps(self) -> int:
        """The number of optimizer steps."""
        return self.z.shape[0] - 1

    @property
    def dzb(self) -> np.ndarray:
        """``ΔZ_B = δ¹ + δ² + δ³ = s(b_t z_t − b_{t−1} z_{t−1})``."""
        return self.delta1 + self.delta2 + self.delta3


def run(
    toy: ReducedToy,
    *,
    eta_a: np.ndarray | float,
    eta_b: np.ndarray | float,
    steps: int,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    divergence_bound: float = 1e8,
) -> ReducedTrajectory:
    """Iterate the exact ``(z, b)`` recurrence of the toy for ``steps`` steps.

    Args:
        toy: the reduced problem; its ``z0``, ``b0``, ``e`` broadcast with the rates to ``(K,)``.
        eta_a: ``η_a`` (number or 1-D array). For :meth:`CoordStats.infinite` it is the base rate
            ``η̃_A`` of ``η_A = η̃_A·n0/n``.
        eta_b: ``η_b`` (number or 1-D array).
        steps: number of optimizer steps (≥ 1).
        optimizer: ``"gd"``, ``"signgd"`` (``sign(0) = 0``), ``"adam"`` or ``"adamw"``, each as
            ``torch.optim`` defines it (Adam's update is exactly 0 while every gradient so far
            was exactly 0, also for ``ε = 0``).
        betas: Adam's ``(β1, β2)``, each in ``[0, 1)``.
        eps: Adam's ``ε ≥ 0``.
        weight_decay: AdamW's decoupled decay, or GD's L2 decay (identical for GD). An L2 decay
            under Adam or sign-GD acts coordinate-wise and breaks the reduction: ValueError.
        divergence_bound: a configuration diverges at the first step where a value is non-finite
            or the loss exceeds this; its values are NaN from then on and it stops updating.

    Returns:
        A :class:`ReducedTrajectory` with arrays of shape ``(steps + 1, K)``.
    """
    if not isinstance(toy, ReducedToy):
        raise ValueError(f"toy must be a ReducedToy, got {type(toy).__name__}")
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    steps = _positive_int("steps", steps)
    eta_a = _rate_array("eta_a", eta_a)
    eta_b = _rate_array("eta_b", eta_b)
    try:
        beta1, beta2 = (float(v) for v in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}") from None
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    eps = _finite_float("eps", eps)
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps!r}")
    wd = _finite_float("weight_decay", weight_decay)
    if wd < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
    if wd > 0 and optimizer in ("adam", "signgd"):
        raise ValueError(
            f"weight_decay > 0 with optimizer {optimizer!r} (L2 added to the gradient) acts "
            "coordinate-wise on a and breaks the reduction; use 'adamw' (decoupled) or 'gd'"
        )
    try:
        bound = float(divergence_bound)
    except (TypeError, ValueError):
        raise ValueError(f"divergence_bound must be positive, got {divergence_bound!r}") from None
    if not bound > 0:
        raise ValueError(f"divergence_bound must be positive, got {divergence_bound!r}")
    coords = toy.coords
    if optimizer in ("adam", "adamw") and eps > 0 and coords.abs_values is None:
        if coords.distribution != "gaussian":
            raise ValueError(
                "Adam with eps > 0 needs the distinct |x_i| values; build the CoordStats with "
                "from_vector, from_counts or rademacher, or use eps=0"
            )

    parts = (toy.z0, toy.b0, toy.e, eta_a, eta_b)
    try:
        shape = np.broadcast_shapes(*(np.shape(p) for p in parts))
    except ValueError:
        shapes = ", ".join(
            f"{n}{np.shape(p)}"
            for n, p in zip(("z0", "b0", "e", "eta_a", "eta_b"), parts, strict=True)
        )
        raise ValueError(f"shapes do not broadcast: {shapes}") from None
    K = shape[0] if shape else 1

    def vec(p: object) -> np.ndarray:
        return np.array(np.broadcast_to(np.asarray(p, dtype=np.float64), (K,)))

    z, b, e, eta_a, eta_b = (vec(p) for p in parts)
    s = toy.scale

    out = {k: np.full((steps + 1, K), np.nan) for k in ("z", "b", "U", "loss", "d1", "d2", "d3")}
    diverged_step = np.full(K, -1, dtype=np.int64)

    with np.errstate(all="ignore"):
        U = e + s * b * z
        loss = 0.5 * U * U
        alive = np.isfinite(loss) & (loss <= bound)
        diverged_step[~alive] = 0
        for key, val in (("z", z), ("b", b), ("U", U), ("loss", loss)):
            out[key][0] = np.where(alive, val, np.nan)

        decay_a = 1.0 - coords.lr(eta_a) * wd
        decay_b = 1.0 - eta_b * wd
        decay = wd > 0
        if optimizer == "gd":
            gain_a = coords.gd_gain(eta_a)
        elif optimizer == "signgd":
            gain_a = coords.sign_gain(eta_a)
        else:
            m_b = np.zeros(K)
            v_b = np.zeros(K)
            mu = np.zeros(K)
            nu = np.zeros(K)

        for t in range(1, steps + 1):
            c = s * U * b  # g_a = c·x
            g_b = s * U * z
            if optimizer == "gd":
                z_new = (z * decay_a if decay else z) - gain_a * c
                b_new = (b * decay_b if decay else b) - eta_b * g_b
            elif optimizer == "signgd":
                z_new = z - gain_a * np.sign(c)
                b_new = b - eta_b * np.sign(g_b)
            else:
                bc1 = 1.0 - beta1**t
                bc2_sqrt = (1.0 - beta2**t) ** 0.5
                m_b = m_b + (1.0 - beta1) * (g_b - m_b)  # torch: lerp(m, g, 1 − β1)
                v_b = v_b * beta2 + (1.0 - beta2) * (g_b * g_b)
                denom_b = np.sqrt(v_b) / bc2_sqrt + eps
                step_b = np.where(m_b == 0.0, 0.0, (m_b * (-(eta_b / bc1))) / denom_b)
                mu = mu + (1.0 - beta1) * (c - mu)
                nu = nu * beta2 + (1.0 - beta2) * (c * c)
                gain = coords.adam_gain(eta_a, np.sqrt(nu) / bc2_sqrt, eps)
                step_z = np.where(mu == 0.0, 0.0, (mu * (-1.0 / bc1)) * gain)
                if optimizer == "adamw" and decay:
                    z_new = z * decay_a + step_z
                    b_new = b * decay_b + step_b
                else:
                    z_new = z + step_z
                    b_new = b + step_b
            U_new = e + s * b_new * z_new
            loss = 0.5 * U_new * U_new
            dz = z_new - z
            db = b_new - b
            d1 = s * b * dz
            d2 = s * db * z
            d3 = s * db * dz
            ok = (
                np.isfinite(z_new)
                & np.isfinite(b_new)
                & np.isfinite(U_new)
                & np.isfinite(d1)
                & np.isfinite(d2)
                & np.isfinite(d3)
                & (loss <= bound)
            )
            newly = alive & ~ok
            diverged_step[newly] = t
            alive = alive & ok
            row = (("z", z_new), ("b", b_new), ("U", U_new), ("loss", loss))
            row += (("d1", d1), ("d2", d2), ("d3", d3))
            for key, val in row:
                out[key][t] = np.where(alive, val, np.nan)
            # diverged configurations keep their last finite state and stop updating
            z = np.where(alive, z_new, z)
            b = np.where(alive, b_new, b)
            U = np.where(alive, U_new, U)
            if optimizer in ("adam", "adamw"):
                m_b = np.where(alive, m_b, 0.0)
                v_b = np.where(alive, v_b, 0.0)
                mu = np.where(alive, mu, 0.0)
                nu = np.where(alive, nu, 0.0)

    return ReducedTrajectory(
        z=out["z"],
        b=out["b"],
        U=out["U"],
        loss=out["loss"],
        delta1=out["d1"],
        delta2=out["d2"],
        delta3=out["d3"],
        diverged_step=diverged_step,
    )
