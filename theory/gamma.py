r"""Exponent calculus of the rank-1, single-sample LoRA toy (Hayou–Ghosh–Yu 2024, §3).

The model (``docs/exponents.md``) is ``f(x) = W* x + s·b·z`` with ``z = aᵀx`` (``a ∈ R^n``, ``b`` a
scalar), loss ``½U²`` with ``U = f − y = e + s·b·z`` and ``e = W* x − y = Θ(1) ≠ 0``. The input has
Θ(1) coordinates, so ``‖x‖² = Θ(n)`` and ``‖x‖₁ = Θ(n)``. The learning rates are ``η_A = n^{c_A}``
and ``η_B = n^{c_B}``.

For a quantity ``v = Θ(n^γ)`` we write ``γ[v]``. Products add exponents and sums take the max
(the generic case: no cancellation). A quantity that is *exactly* zero (``b0 = 0`` under
Init[A], ``a0 = 0`` under Init[B], and whatever they annihilate) is the marker :data:`ZERO`, the
``−∞`` of the max-plus semiring: ``ZERO + γ = ZERO`` for products and ``max(ZERO, γ) = γ`` for sums.

Update rules at step ``t`` (from ``t − 1``), with ``U = U_{t−1}``, ``b = b_{t−1}``,
``z = z_{t−1}``:

* GD: ``Δz_t = −η_A s U b ‖x‖²`` (``γ = c_A + γ[U] + γ[b] + 1``) and ``Δb_t = −η_B s U z``
  (``γ = c_B + γ[U] + γ[z]``).
* sign-GD: ``Δz_t = −η_A sign(sUb) ‖x‖₁`` (``γ = c_A + 1``, ``ZERO`` if ``b`` is ``ZERO``) and
  ``Δb_t = −η_B sign(sUz)`` (``γ = c_B``, ``ZERO`` if ``z`` is ``ZERO``).
* Adam (``ε → 0``; AdamW without weight decay): as sign-GD, except that a factor keeps moving by
  ``Θ(η)`` once *any* of its past gradients was nonzero (the first moment remembers it).

Then ``z_t = z_{t−1} + Δz_t``, ``b_t = b_{t−1} + Δb_t``, ``Z_B,t = s b_t z_t``,
``γ[U_t] = γ[f_t] = max(0, γ[Z_B,t])``, ``γ[loss_t] = 2γ[U_t]`` and the feature-update terms
(``docs/lora.md``) ``δ¹_t = s b_{t−1} Δz_t``, ``δ²_t = s Δb_t z_{t−1}``, ``δ³_t = s Δb_t Δz_t``.

The update rules are written once (:func:`_propagate`) over an abstract max-plus algebra and run
in three of them: exact rationals at one point ``(c_A, c_B)`` (:func:`predict`), vectorised exact
integers over a grid (:func:`phase_diagram`), and max-plus polynomials in ``c`` along a line
``c_A = c, c_B = c + gap`` (:func:`largest_stable_rate`, :func:`efficient_rates`), where every
condition ``γ ≤ 0`` or ``γ = 0`` becomes finitely many linear inequalities, solved exactly.

A remark that follows from the rules: a factor that has become nonzero never becomes exactly zero
again (``b_t = max(b_{t−1}, Δb_t)``), so in this toy Adam's memory never comes into play and
sign-GD and Adam have identical exponents.
"""

from __future__ import annotations

import abc
import functools
import itertools
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from loraplus_lab.theory.optimizers import calculus_optimizer

__all__ = [
    "DEFAULT_STEPS",
    "INITS",
    "OPTIMIZERS",
    "QUANTITIES",
    "REGIME_LABELS",
    "ZERO",
    "Exponent",
    "PhaseDiagram",
    "Prediction",
    "Regime",
    "classify",
    "efficient_rates",
    "largest_stable_equal_rate",
    "largest_stable_rate",
    "phase_diagram",
    "predict",
]


# --------------------------------------------------------------------------------------- ZERO
class _Zero:
    """Type of :data:`ZERO`, the exponent of an exactly-zero quantity (``−∞`` in max-plus).

    It orders below every real exponent, ``float(ZERO) == -inf``, and ``ZERO + γ = ZERO`` (the
    max-plus product: multiplying by an exactly-zero quantity gives an exactly-zero quantity).
    """

    _instance: _Zero | None = None

    def __new__(cls) -> _Zero:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "zero"

    __str__ = __repr__

    def __float__(self) -> float:
        return -math.inf

    def __hash__(self) -> int:
        return hash("loraplus-lab ZERO exponent")

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def __lt__(self, other: object) -> bool:
        if other is self:
            return False
        if isinstance(other, numbers.Real):
            return float(other) > -math.inf
        return NotImplemented

    def __le__(self, other: object) -> bool:
        if other is self or isinstance(other, numbers.Real):
            return True
        return NotImplemented

    def __gt__(self, other: object) -> bool:
        if other is self or isinstance(other, numbers.Real):
            return False
        return NotImplemented

    def __ge__(self, other: object) -> bool:
        if other is self:
            return True
        if isinstance(other, numbers.Real):
            return float(other) == -math.inf
        return NotImplemented

    def __add__(self, other: object) -> _Zero:
        if other is self or isinstance(other, numbers.Real):
            return self
        return NotImplemented

    __radd__ = __add__

    def __reduce__(self) -> str:
        return "ZERO"


ZERO = _Zero()
"""The exponent of an exactly-zero quantity (structurally zero, not merely small)."""

Exponent = Fraction | _Zero
"""An exponent ``γ``: an exact rational, or :data:`ZERO` for an exactly-zero quantity."""

INITS = ("A", "B")
OPTIMIZERS = ("gd", "signgd", "adam")
QUANTITIES = ("z", "b", "U", "f", "Z_B", "loss", "dz", "db", "delta1", "delta2", "delta3")
_OUTPUT = ("Z_B", "f", "U")
_INTERNAL = ("z", "b")
REGIME_LABELS = (
    "unstable",
    "internally unstable",
    "A and B under-trained",
    "A under-trained",
    "B under-trained",
    "efficient",
)
"""Regime labels, in a fixed order (worst to best) for colouring phase diagrams."""

DEFAULT_STEPS = 10
_FLOAT_MAX_DENOMINATOR = 10**6


# ------------------------------------------------------------------------------ input parsing
def _parse_rate(name: str, value: Any) -> Fraction:
    """An exponent ``c`` as an exact ``Fraction`` (floats via ``limit_denominator``)."""
    bad = ValueError(f"{name} must be a rational number such as -1, -0.5 or '-1/2', got {value!r}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, Fraction):
        return value
    if isinstance(value, numbers.Integral):
        return Fraction(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            raise bad
        return Fraction(float(value)).limit_denominator(_FLOAT_MAX_DENOMINATOR)
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise bad from None
    raise bad


def _parse_init(init: Any) -> str:
    if isinstance(init, str):
        key = init.strip().upper()
        if key.startswith("INIT[") and key.endswith("]"):
            key = key[5:-1]
        if key in INITS:
            return key
    raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def _parse_optimizer(optimizer: Any) -> str:
    if isinstance(optimizer, str):
        key = optimizer.strip().lower()
        key = calculus_optimizer(key)
        if key in OPTIMIZERS:
            return key
    raise ValueError(
        f"optimizer must be one of {', '.join(OPTIMIZERS)} (or adamw), got {optimizer!r}"
    )


def _parse_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _parse_kind(kind: Any) -> str:
    if kind not in ("output", "full"):
        raise ValueError(f"kind must be 'output' or 'full', got {kind!r}")
    return kind


# --------------------------------------------------------------------------------- algebras
class _Algebra(abc.ABC):
    """A max-plus semiring for exponents; :data:`ZERO` is its zero in every instance.

    Subclasses give the elements for ``c_A``, ``c_B`` and integer constants, and the product
    (``+`` of exponents) and sum (``max``) of two non-``ZERO`` elements.
    """

    c_a: Any
    c_b: Any

    @abc.abstractmethod
    def const(self, k: int) -> Any:
        """The element of the constant exponent ``k``."""

    @abc.abstractmethod
    def _mul2(self, x: Any, y: Any) -> Any:
        """Product (sum of exponents) of two non-``ZERO`` elements."""

    @abc.abstractmethod
    def _add2(self, x: Any, y: Any) -> Any:
        """Sum (max of exponents) of two non-``ZERO`` elements."""

    def mul(self, *xs: Any) -> Any:
        """``γ[∏ v_i] = Σ γ[v_i]``; ``ZERO`` if any factor is ``ZERO``."""
        out = xs[0]
        for x in xs[1:]:
            if out is ZERO or x is ZERO:
                return ZERO
            out = self._mul2(out, x)
        return out

    def add(self, *xs: Any) -> Any:
        """``γ[Σ v_i] = max γ[v_i]`` (generic: no cancellation); ``ZERO`` terms drop out."""
        out = ZERO
        for x in xs:
            if x is ZERO:
                continue
            out = x if out is ZERO else self._add2(out, x)
        return out


class _PointAlgebra(_Algebra):
    """Exact exponents at one point ``(c_A, c_B)``: elements are ``Fraction`` or ``ZERO``."""

    def __init__(self, c_a: Fraction, c_b: Fraction) -> None:
        self.c_a, self.c_b = c_a, c_b

    def const(self, k: int) -> Fraction:
        return Fraction(k)

    def _mul2(self, x: Fraction, y: Fraction) -> Fraction:
        return x + y

    def _add2(self, x: Fraction, y: Fraction) -> Fraction:
        return max(x, y)


class _GridAlgebra(_Algebra):
    """Exact exponents over a grid, vectorised: every exponent is stored times a common
    denominator ``L`` as Python integers in object arrays (so no rounding and no overflow).
    Comparisons with 0 are unaffected by the positive factor ``L``."""

    def __init__(self, c_a: Sequence[Fraction], c_b: Sequence[Fraction]) -> None:
        self.scale = math.lcm(*(c.denominator for c in (*c_a, *c_b)))
        ca = np.array([int(c * self.scale) for c in c_a], dtype=object)
        cb = np.array([int(c * self.scale) for c in c_b], dtype=object)
        self.c_a, self.c_b = np.meshgrid(ca, cb)  # shape (len(c_b), len(c_a))

    def const(self, k: int) -> int:
        return k * self.scale

    def _mul2(self, x: Any, y: Any) -> Any:
        return x + y

    def _add2(self, x: Any, y: Any) -> Any:
        return np.maximum(x, y)


class _LinePoly:
    """A max-plus polynomial in one variable ``c``: ``max_i (p_i c + K_i / D)``.

    Stored as the upper envelope of its affine forms (``(p, K)`` with integer ``p ≥ 0`` and
    integer ``K``, sorted by slope; forms that are nowhere strictly maximal are dropped, which
    leaves the function unchanged). ``D`` is the common denominator of the line's offsets.
    """

    __slots__ = ("forms",)

    def __init__(self, forms: dict[int, int]) -> None:
        hull: list[tuple[int, int]] = []
        for p, k in sorted(forms.items()):
            while len(hull) >= 2:
                (p1, k1), (p2, k2) = hull[-2], hull[-1]
                # (p2, k2) is redundant if lines 1 and 3 cross at or left of where 1 and 2 cross.
                if (k1 - k) * (p2 - p1) <= (k1 - k2) * (p - p1):
                    hull.pop()
                else:
                    break
            hull.append((p, k))
        self.forms: tuple[tuple[int, int], ...] = tuple(hull)


def _breakpoints(forms: tuple[tuple[int, int], ...]) -> list[Fraction]:
    """Where consecutive forms of an upper envelope cross (increasing)."""
    return [Fraction(k1 - k2, p2 - p1) for (p1, k1), (p2, k2) in itertools.pairwise(forms)]


class _LineAlgebra(_Algebra):
    """Max-plus polynomials in ``c`` on the line ``c_A = c``, ``c_B = c + gap``."""

    def __init__(self, gap: Fraction) -> None:
        self.scale = gap.denominator
        self.c_a = _LinePoly({1: 0})
        self.c_b = _LinePoly({1: gap.numerator})

    def const(self, k: int) -> _LinePoly:
        return _LinePoly({0: k * self.scale})

    @staticmethod
    def _merge(pairs: Iterable[tuple[int, int]]) -> _LinePoly:
        best: dict[int, int] = {}
        for p, k in pairs:
            if p not in best or best[p] < k:
                best[p] = k
        return _LinePoly(best)

    def _mul2(self, x: _LinePoly, y: _LinePoly) -> _LinePoly:
        """The sum of two convex piecewise-linear functions: walk both envelopes from
        ``c = −∞`` to ``+∞``, adding the forms that are active together (linear time)."""
        bx, by = _breakpoints(x.forms), _breakpoints(y.forms)
        i = j = 0
        out = [(x.forms[0][0] + y.forms[0][0], x.forms[0][1] + y.forms[0][1])]
        while i < len(bx) or j < len(by):
            nx = bx[i] if i < len(bx) else None
            ny = by[j] if j < len(by) else None
            step_x = ny is None or (nx is not None and nx <= ny)
            step_y = nx is None or (ny is not None and ny <= nx)
            i, j = i + step_x, j + step_y
            (p, k), (q, m) = x.forms[i], y.forms[j]
            out.append((p + q, k + m))
        return self._merge(out)

    def _add2(self, x: _LinePoly, y: _LinePoly) -> _LinePoly:
        return self._merge((*x.forms, *y.forms))


# ------------------------------------------------------------------------------ update rules
def _propagate(init: str, optimizer: str, steps: int, alg: _Algebra) -> dict[str, list[Any]]:
    """Exponents of every quantity of :data:`QUANTITIES` at steps ``0..steps``, in ``alg``.

    This is the single implementation of the update rules (see the module docstring).
    """
    norm = alg.const(1)  # ‖x‖² (GD) and ‖x‖₁ (sign-GD, Adam) are both Θ(n)
    if init == "A":
        z, b = alg.const(0), ZERO  # a0 ~ N(0, 1/n): z0 = a0ᵀx = Θ(1); b0 = 0
    else:
        z, b = ZERO, alg.const(0)  # a0 = 0; b0 = Θ(1)
    traj: dict[str, list[Any]] = {q: [None] * (steps + 1) for q in QUANTITIES}

    def record_state(t: int) -> Any:
        z_b = alg.mul(b, z)
        u = alg.add(alg.const(0), z_b)  # U = e + s b z with e = Θ(1) ≠ 0
        for q, v in (("z", z), ("b", b), ("Z_B", z_b), ("U", u), ("f", u)):
            traj[q][t] = v
        traj["loss"][t] = alg.mul(u, u)
        return u

    u = record_state(0)
    grad_a_seen = grad_b_seen = False
    for t in range(1, steps + 1):
        # ∂loss/∂a = s U b x and ∂loss/∂b = s U z: exactly zero iff b (resp. z) is; U never is.
        grad_a_nonzero, grad_b_nonzero = b is not ZERO, z is not ZERO
        grad_a_seen |= grad_a_nonzero
        grad_b_seen |= grad_b_nonzero
        if optimizer == "gd":
            dz = alg.mul(alg.c_a, u, b, norm)  # Δz = −η_A s U b ‖x‖²
            db = alg.mul(alg.c_b, u, z)  # Δb = −η_B s U z
        else:
            move_a = grad_a_nonzero if optimizer == "signgd" else grad_a_seen
            move_b = grad_b_nonzero if optimizer == "signgd" else grad_b_seen
            dz = alg.mul(alg.c_a, norm) if move_a else ZERO  # Δz = −η_A (±1)·‖x‖₁
            db = alg.c_b if move_b else ZERO  # Δb = −η_B (±1)
        traj["dz"][t], traj["db"][t] = dz, db
        traj["delta1"][t] = alg.mul(b, dz)
        traj["delta2"][t] = alg.mul(db, z)
        traj["delta3"][t] = alg.mul(db, dz)
        z, b = alg.add(z, dz), alg.add(b, db)
        u = record_state(t)
    return traj


# ---------------------------------------------------------------------------- classification
def _le0(x: Any) -> Any:
    return True if x is ZERO else x <= 0


def _eq0(x: Any) -> Any:
    return False if x is ZERO else x == 0


def _efficiency_window(steps: int) -> range:
    """Steps at which efficiency is judged: ``2..T`` (step 1 is special because ``B0·A0 = 0``);
    with ``T = 1`` only step 1 exists and is judged."""
    return range(2, steps + 1) if steps >= 2 else range(1, 2)


def _flags(traj: dict[str, list[Any]], steps: int, shape: tuple[int, ...]) -> dict[str, Any]:
    """Boolean arrays (of ``shape``) of the stability and efficiency conditions."""

    def every(values: Iterable[Any]) -> np.ndarray:
        acc = np.ones(shape, dtype=bool)
        for v in values:
            acc &= np.asarray(v, dtype=bool)
        return acc

    t_all = range(steps + 1)
    output_ok = every(_le0(traj[q][t]) for q in _OUTPUT for t in t_all)
    internal_ok = every(_le0(traj[q][t]) for q in _INTERNAL for t in t_all)
    window = _efficiency_window(steps)
    a_moves = every(_eq0(traj["delta1"][t]) for t in window)
    b_moves = every(_eq0(traj["delta2"][t]) for t in window)
    stable = output_ok & internal_ok
    return {
        "output_stable": output_ok,
        "stable": stable,
        "internal_instability": output_ok & ~internal_ok,
        "efficient": stable & a_moves & b_moves,
        "a_moves": a_moves,
        "b_moves": b_moves,
    }


def _labels(flags: dict[str, Any]) -> np.ndarray:
    """Regime label (one of :data:`REGIME_LABELS`) for each entry of the flag arrays."""
    a, b = flags["a_moves"], flags["b_moves"]
    return np.select(
        [~flags["output_stable"], ~flags["stable"], ~a & ~b, ~a, ~b],
        list(REGIME_LABELS[:5]),
        default=REGIME_LABELS[5],
    )


@dataclass(frozen=True)
class Regime:
    """Classification of a parametrization over steps ``t ≤ T``.

    Attributes:
        stable: ``γ[Z_B,t], γ[f_t], γ[U_t], γ[z_t], γ[b_t] ≤ 0`` for every ``t ≤ T``.
        output_stable: ``γ[Z_B,t], γ[f_t], γ[U_t] ≤ 0`` for every ``t ≤ T``.
        internal_instability: output-stable but not stable (``Z_A = z`` or ``B`` grows).
        efficient: stable and ``γ[δ¹_t] = γ[δ²_t] = 0`` for every ``2 ≤ t ≤ T``.
        undertrained: for stable, non-efficient cases, the factors that fail to move the
            features: ``"A"`` if some ``δ¹_t`` (``2 ≤ t ≤ T``) is ``o(1)`` or exactly zero,
            ``"B"`` likewise with ``δ²_t``; empty otherwise.
        label: one of :data:`REGIME_LABELS`.
        description: a short human-readable explanation.
    """

    stable: bool
    output_stable: bool
    internal_instability: bool
    efficient: bool
    undertrained: tuple[str, ...]
    label: str
    description: str


def _fmt(e: Exponent | None) -> str:
    return "" if e is None else str(e)


def _power(e: Fraction) -> str:
    """``n^γ`` as text, with parentheses around a fractional or negative ``γ``."""
    return f"n^{e}" if e.denominator == 1 and e >= 0 else f"n^({e})"


def _describe(traj: dict[str, list[Any]], steps: int, flags: dict[str, bool], label: str) -> str:
    t_all = range(steps + 1)
    if label == "unstable":
        t0 = next(t for t in t_all if not all(_le0(traj[q][t]) for q in _OUTPUT))
        return (
            f"unstable: the output blows up, first at step {t0} "
            f"(γ[Z_B] = {traj['Z_B'][t0]}, γ[U] = {traj['U'][t0]})"
        )
    if label == "internally unstable":
        parts = []
        for q, name in (("z", "Z_A = a·x"), ("b", "B")):
            grow = [traj[q][t] for t in t_all if not _le0(traj[q][t])]
            if grow:
                parts.append(f"{name} grows (up to {_power(max(grow))})")
        return "internally unstable: the output stays O(1), but " + " and ".join(parts)
    window = _efficiency_window(steps)
    span = f"{window.start}..{window.stop - 1}" if len(window) > 1 else f"{window.start}"
    if label == "efficient":
        return (
            f"efficient: stable, and both A and B move the features by Θ(1) at every step "
            f"t = {span} (γ[δ¹_t] = γ[δ²_t] = 0)"
        )
    parts = []
    for q, name, sym in (("delta1", "A", "δ¹"), ("delta2", "B", "δ²")):
        bad = [t for t in window if not _eq0(traj[q][t])]
        if bad:
            worst = min(traj[q][t] for t in bad)
            where = f"every step t = {span}" if len(bad) == len(window) else f"t = {bad}"
            parts.append(f"{name} under-trained ({sym}_t → 0 at {where}; smallest γ = {worst})")
    return "stable, but " + "; ".join(parts)


def _regime(traj: dict[str, list[Any]], steps: int) -> Regime:
    arrays = _flags(traj, steps, ())
    label = str(_labels(arrays).item())
    flags = {k: bool(v) for k, v in arrays.items()}
    undertrained: tuple[str, ...] = ()
    if flags["stable"] and not flags["efficient"]:
        undertrained = tuple(
            name for name, ok in (("A", flags["a_moves"]), ("B", flags["b_moves"])) if not ok
        )
    return Regime(
        stable=flags["stable"],
        output_stable=flags["output_stable"],
        internal_instability=flags["internal_instability"],
        efficient=flags["efficient"],
        undertrained=undertrained,
        label=label,
        description=_describe(traj, steps, flags, label),
    )


# --------------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class Prediction:
    """Predicted exponents of every tracked quantity at steps ``t = 0..T``, and the regime.

    Attributes:
        init: ``"A"`` (``b0 = 0``) or ``"B"`` (``a0 = 0``).
        optimizer: ``"gd"``, ``"signgd"`` or ``"adam"``.
        c_a: exponent of ``η_A = n^{c_A}``.
        c_b: exponent of ``η_B = n^{c_B}``.
        steps: ``T``.
        exponents: quantity → tuple of ``γ`` at ``t = 0..T`` (``Fraction`` or :data:`ZERO`);
            for the increments ``dz, db, delta1, delta2, delta3`` entry 0 is ``None``.
        regime: the classification (:class:`Regime`).
    """

    init: str
    optimizer: str
    c_a: Fraction
    c_b: Fraction
    steps: int
    exponents: dict[str, tuple[Exponent | None, ...]] = field(repr=False)
    regime: Regime

    def at(self, quantity: str, t: int) -> Exponent | None:
        """``γ[quantity_t]`` (``None`` for an increment at ``t = 0``)."""
        if quantity not in self.exponents:
            raise ValueError(f"quantity must be one of {', '.join(QUANTITIES)}, got {quantity!r}")
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t <= self.steps:
            raise ValueError(f"step must be an integer in 0..{self.steps}, got {t!r}")
        return self.exponents[quantity][int(t)]

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{"quantity", "step", "exponent"}``, one per quantity × step (no ``None``)."""
        return [
            {"quantity": q, "step": t, "exponent": e}
            for q in QUANTITIES
            for t, e in enumerate(self.exponents[q])
            if e is not None
        ]

    def table(self) -> str:
        """A readable table: one row per quantity, one column per step, exact exponents."""
        header = ["quantity", *(f"t={t}" for t in range(self.steps + 1))]
        body = [[q, *(_fmt(e) for e in self.exponents[q])] for q in QUANTITIES]
        widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return "  ".join((first, *rest)).rstrip()

        title = (
            f"Init[{self.init}], {self.optimizer}, c_A = {self.c_a}, c_B = {self.c_b}: "
            f"{self.regime.label}"
        )
        return "\n".join([title, line(header), *(line(r) for r in body)])


def predict(init: str, optimizer: str, c_a: Any, c_b: Any, steps: int) -> Prediction:
    """Exponents ``γ`` of every quantity of :data:`QUANTITIES` at steps ``0..steps``.

    Args:
        init: ``"A"`` (``B0 = 0``, PEFT's default) or ``"B"`` (``A0 = 0``).
        optimizer: ``"gd"``, ``"signgd"``, ``"adam"`` (``"adamw"`` is an alias of ``"adam"``).
        c_a: exponent of ``η_A = n^{c_A}``: a ``Fraction``, ``int``, ``float`` (made exact with
            ``limit_denominator``) or a string such as ``"-1/2"``.
        c_b: exponent of ``η_B = n^{c_B}``, same forms.
        steps: the horizon ``T ≥ 1``.

    Raises:
        ValueError: on an unknown init or optimizer, a non-rational exponent, or ``steps < 1``.
    """
    init, optimizer = _parse_init(init), _parse_optimizer(optimizer)
    ca, cb = _parse_rate("c_a", c_a), _parse_rate("c_b", c_b)
    steps = _parse_steps(steps)
    traj = _propagate(init, optimizer, steps, _PointAlgebra(ca, cb))
    return Prediction(
        init=init,
        optimizer=optimizer,
        c_a=ca,
        c_b=cb,
        steps=steps,
        exponents={q: tuple(v) for q, v in traj.items()},
        regime=_regime(traj, steps),
    )


def classify(init: str, optimizer: str, c_a: Any, c_b: Any, steps: int = DEFAULT_STEPS) -> Regime:
    """The :class:`Regime` of ``(c_A, c_B)`` over steps ``t ≤ steps`` (see :func:`predict`)."""
    return predict(init, optimizer, c_a, c_b, steps).regime


# ---------------------------------------------------------------------------- phase diagram
@dataclass(frozen=True, eq=False)
class PhaseDiagram:
    """Regime labels over a grid of ``(c_A, c_B)``.

    Attributes:
        init, optimizer, steps: as in :func:`predict`.
        c_a: the ``c_A`` values (1-D float array).
        c_b: the ``c_B`` values (1-D float array).
        labels: regime label strings, shape ``(len(c_b), len(c_a))``: ``labels[i, j]`` is the
            regime of ``(c_a[j], c_b[i])``.
        c_a_exact, c_b_exact: the grid as exact ``Fraction`` values.
    """

    init: str
    optimizer: str
    steps: int
    c_a: np.ndarray
    c_b: np.ndarray
    labels: np.ndarray
    c_a_exact: tuple[Fraction, ...]
    c_b_exact: tuple[Fraction, ...]

    def codes(self) -> np.ndarray:
        """Integer codes of :attr:`labels`: indices into :data:`REGIME_LABELS`."""
        lookup = {lab: i for i, lab in enumerate(REGIME_LABELS)}
        return np.vectorize(lookup.__getitem__, otypes=[int])(self.labels)

    def label_at(self, c_a: Any, c_b: Any) -> str:
        """The label at a grid point given by its exact (or float) coordinates."""
        ca, cb = _parse_rate("c_a", c_a), _parse_rate("c_b", c_b)
        try:
            return str(self.labels[self.c_b_exact.index(cb), self.c_a_exact.index(ca)])
        except ValueError:
            raise ValueError(f"({c_a}, {c_b}) is not a point of this grid") from None


def _grid_values(name: str, values: Any) -> tuple[Fraction, ...]:
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got an array of shape {values.shape}")
        items = values.tolist()
    elif isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a 1-D sequence of exponents, got {values!r}")
    else:
        items = list(values)
    if not items:
        raise ValueError(f"{name} must not be empty")
    return tuple(_parse_rate(name, v) for v in items)


def phase_diagram(
    init: str, optimizer: str, c_a_values: Any, c_b_values: Any, steps: int
) -> PhaseDiagram:
    """Regime of every grid point ``(c_A, c_B)``, computed exactly and vectorised.

    Args:
        init, optimizer, steps: as in :func:`predict`.
        c_a_values: 1-D sequence of ``c_A`` values (Fractions, ints, floats or strings).
        c_b_values: 1-D sequence of ``c_B`` values.
    """
    init, optimizer = _parse_init(init), _parse_optimizer(optimizer)
    steps = _parse_steps(steps)
    ca = _grid_values("c_a_values", c_a_values)
    cb = _grid_values("c_b_values", c_b_values)
    alg = _GridAlgebra(ca, cb)
    traj = _propagate(init, optimizer, steps, alg)
    labels = _labels(_flags(traj, steps, alg.c_a.shape))
    return PhaseDiagram(
        init=init,
        optimizer=optimizer,
        steps=steps,
        c_a=np.array([float(c) for c in ca]),
        c_b=np.array([float(c) for c in cb]),
        labels=np.asarray(labels, dtype=str),
        c_a_exact=ca,
        c_b_exact=cb,
    )


# ------------------------------------------------------------------------- exact line analysis
@functools.lru_cache(maxsize=64)
def _line_trajectory(
    init: str, optimizer: str, steps: int, gap: Fraction
) -> tuple[dict[str, list[Any]], int]:
    """Max-plus polynomials in ``c`` of every quantity on the line ``c_A = c, c_B = c + gap``,
    and the common denominator ``D`` of their constants (a form ``(p, K)`` means ``pc + K/D``)."""
    alg = _LineAlgebra(gap)
    return _propagate(init, optimizer, steps, alg), alg.scale


def _le0_bound(poly: Any, scale: int) -> Fraction | None:
    """Sup of ``{c : poly(c) ≤ 0}`` (``None`` = +∞), or raise if the set is empty.

    ``max_i (p_i c + K_i/D) ≤ 0`` iff every form is ``≤ 0``: ``c ≤ −K_i/(D p_i)`` when ``p_i > 0``,
    and ``K_i ≤ 0`` when ``p_i = 0``. Slopes are never negative (exponents grow with the rates).
    """
    if poly is ZERO:
        return None
    bound: Fraction | None = None
    for p, k in poly.forms:
        if p == 0:
            if k > 0:
                raise ValueError("this condition fails for every rate on the line")
            continue
        root = Fraction(-k, scale * p)
        bound = root if bound is None else min(bound, root)
    return bound


def _ge0_bound(poly: Any, scale: int) -> Fraction | None | bool:
    """Inf of ``{c : poly(c) ≥ 0}``: a ``Fraction``, ``None`` (= −∞), or ``False`` (empty)."""
    if poly is ZERO:
        return False
    lo: Fraction | None | bool = False
    for p, k in poly.forms:
        if p == 0:
            if k >= 0:
                return None
            continue
        root = Fraction(-k, scale * p)
        lo = root if lo is False else min(lo, root)  # type: ignore[type-var]
    return lo


def largest_stable_rate(
    init: str, optimizer: str, steps: int, kind: str = "output", gap: Any = 0
) -> Fraction:
    """Exact supremum of ``c`` such that ``c_A = c, c_B = c + gap`` is stable for all ``t ≤ T``.

    ``kind="output"`` asks for output stability (``γ[Z_B,t], γ[f_t], γ[U_t] ≤ 0``),
    ``kind="full"`` also for ``γ[z_t], γ[b_t] ≤ 0``. Each exponent is a max-plus polynomial in
    ``c`` with nonnegative slopes, so the stable set is ``(−∞, c*]`` and ``c*`` is the smallest
    root ``−k/p`` over all affine forms of all conditions: an exact rational.
    """
    init, optimizer = _parse_init(init), _parse_optimizer(optimizer)
    steps, kind = _parse_steps(steps), _parse_kind(kind)
    gap_f = _parse_rate("gap", gap)
    traj, scale = _line_trajectory(init, optimizer, steps, gap_f)
    names = _OUTPUT + (_INTERNAL if kind == "full" else ())
    bounds = [_le0_bound(traj[q][t], scale) for q in names for t in range(steps + 1)]
    finite = [b for b in bounds if b is not None]
    if not finite:
        raise ValueError(f"Init[{init}], {optimizer}: stable for every rate on this line")
    return min(finite)


def largest_stable_equal_rate(
    init: str, optimizer: str, steps: int, kind: str = "output"
) -> Fraction:
    """Exact supremum of ``c`` with ``c_A = c_B = c`` stable at every step ``t ≤ T``.

    ``kind="output"``: ``Z_B``, ``f`` and ``U`` stay ``O(1)``; ``kind="full"``: ``Z_A = z`` and
    ``b`` too. Values (companion paper, "The Impact of Initialization on LoRA Finetuning
    Dynamics"): Init[A] output-stable up to ``c = −1/2`` (``Z_A`` grows like ``n^{c+1}`` there:
    internal instability; fully stable up to ``−1``), Init[B] up to ``−1`` (both kinds). These are
    exact for sign-GD and Adam at any ``T ≥ 2``.

    Under GD Init[A] the finite-``T`` output threshold is ``−(T−1)/(2T−1)``, slightly above
    ``−1/2``: for ``c > −1/2`` each GD step multiplies ``z`` and ``b`` by ``n^{2c+1}`` (the step of
    one factor is proportional to the other), so while ``U`` stays Θ(1)
    ``γ[Z_B,T] = (2T−1)c + T − 1`` (beyond the threshold ``U`` grows too); the growth is
    finite at a finite horizon and the threshold tends to ``−1/2`` only as ``T → ∞``. Sign-GD and
    Adam normalise the step, so ``z_t = max(0, c + 1)`` does not compound.
    """
    return largest_stable_rate(init, optimizer, steps, kind=kind, gap=0)


def efficient_rates(
    init: str, optimizer: str, steps: int, gap: Any = 0
) -> tuple[Fraction, Fraction] | None:
    """The exact set of ``c`` for which ``c_A = c, c_B = c + gap`` is efficient over ``t ≤ T``.

    Efficient means stable and ``γ[δ¹_t] = γ[δ²_t] = 0`` for ``2 ≤ t ≤ T`` (step 1 when
    ``T = 1``). The set is an interval ``[lo, hi]`` (often a point), returned as ``(lo, hi)``, or
    ``None`` when it is empty. ``gap=0`` is plain LoRA (never efficient); ``gap=1`` the LoRA+
    scaling, efficient exactly at ``c_A = −1``.
    """
    init, optimizer = _parse_init(init), _parse_optimizer(optimizer)
    steps = _parse_steps(steps)
    gap_f = _parse_rate("gap", gap)
    traj, scale = _line_trajectory(init, optimizer, steps, gap_f)
    lo: Fraction | None = None  # None = −∞
    hi = largest_stable_rate(init, optimizer, steps, kind="full", gap=gap_f)
    for q in ("delta1", "delta2"):
        for t in _efficiency_window(steps):
            poly = traj[q][t]
            low = _ge0_bound(poly, scale)
            if low is False:
                return None
            if low is not None:
                lo = low if lo is None else max(lo, low)  # type: ignore[type-var]
            try:
                high = _le0_bound(poly, scale)
            except ValueError:
                return None
            if high is not None:
                hi = min(hi, high)
    if lo is None:  # cannot happen: every δ carries a rate factor, so δ → −∞ as c → −∞
        raise ValueError(f"Init[{init}], {optimizer}: the efficient set is unbounded below")
    return None if lo > hi else (lo, hi)
