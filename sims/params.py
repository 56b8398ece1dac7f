"""Parametrizations of LoRA finetuning: initialisation, learning-rate exponents, the α rule.

One place defines how a learning rate depends on the width ``n``::

    η_A(n) = η̃_A · (n / n0) ** c_A        η_B(n) = η̃_B · (n / n0) ** c_B

Plain LoRA uses the same exponent for both factors; LoRA+ uses ``c_A = -1, c_B = 0`` so that the
ratio ``λ = η_B / η_A`` grows like ``n`` (``docs/lora.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from fractions import Fraction
from typing import Any

from loraplus_lab.sims.checks import InputError, choice, positive, positive_int

INITS = ("A", "B")
ALPHA_RULES = ("lora", "rslora")
DEFAULT_N0 = 64


def parse_exponent(name: str, value: Any) -> Fraction:
    """Parse a learning-rate exponent (``-1``, ``-0.5``, ``"-1/2"``) into an exact ``Fraction``."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number such as -1, -0.5 or -1/2, got {value!r}")
    try:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError
            return Fraction(value).limit_denominator(1 << 20)
        return Fraction(str(value).strip())
    except (TypeError, ValueError, ZeroDivisionError):
        raise InputError(
            f"{name} must be a number such as -1, -0.5 or -1/2, got {value!r}"
        ) from None


def check_init(init: str) -> str:
    """Validate an initialisation name: ``"A"`` (B0 = 0, PEFT's default) or ``"B"`` (A0 = 0)."""
    return choice("init", init, INITS)


def lora_scale(alpha: float, rank: int, rule: str = "lora") -> float:
    """The LoRA multiplier ``s``: ``α/r`` (``rule="lora"``) or ``α/√r`` (``rule="rslora"``)."""
    choice("alpha rule", rule, ALPHA_RULES)
    rank = positive_int("rank", rank)
    alpha = positive("alpha", alpha)
    return alpha / rank if rule == "lora" else alpha / math.sqrt(rank)


@dataclass(frozen=True)
class Parametrization:
    """How the learning rates of ``A`` and ``B`` scale with the width.

    Attributes:
        name: a label used in tables and figures.
        eta_a: base rate ``η̃_A`` at the base width ``n0``.
        eta_b: base rate ``η̃_B`` at the base width ``n0``.
        c_a: exponent ``c_A`` of ``η_A`` in ``n / n0`` (exact rational).
        c_b: exponent ``c_B`` of ``η_B`` in ``n / n0`` (exact rational).
        n0: base width.
        init: ``"A"`` (``B0 = 0``, ``A0 ~ N(0, 1/n)``) or ``"B"`` (``A0 = 0``, ``B0 ~ N(0, σ_B²)``).
        alpha: LoRA ``α``.
        alpha_rule: ``"lora"`` (``s = α/r``) or ``"rslora"`` (``s = α/√r``).
    """

    name: str
    eta_a: float
    eta_b: float
    c_a: Fraction
    c_b: Fraction
    n0: int = DEFAULT_N0
    init: str = "A"
    alpha: float = 1.0
    alpha_rule: str = "lora"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eta_a", positive("eta_a", self.eta_a))
        object.__setattr__(self, "eta_b", positive("eta_b", self.eta_b))
        object.__setattr__(self, "c_a", parse_exponent("c_a", self.c_a))
        object.__setattr__(self, "c_b", parse_exponent("c_b", self.c_b))
        object.__setattr__(self, "n0", positive_int("n0", self.n0))
        check_init(self.init)
        object.__setattr__(self, "alpha", positive("alpha", self.alpha))
        choice("alpha rule", self.alpha_rule, ALPHA_RULES)

    def rate_a(self, n: int) -> float:
        """``η_A(n) = η̃_A · (n/n0)^{c_A}``."""
        return self.eta_a * (n / self.n0) ** float(self.c_a)

    def rate_b(self, n: int) -> float:
        """``η_B(n) = η̃_B · (n/n0)^{c_B}``."""
        return self.eta_b * (n / self.n0) ** float(self.c_b)

    def ratio(self, n: int) -> float:
        """``λ(n) = η_B(n) / η_A(n)``."""
        return self.rate_b(n) / self.rate_a(n)

    def scale(self, rank: int) -> float:
        """The LoRA multiplier ``s`` for rank ``r``."""
        return lora_scale(self.alpha, rank, self.alpha_rule)

    def with_(self, **changes: Any) -> Parametrization:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dictionary (exponents as strings such as ``"-1/2"``)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # flat: no deep copy needed
        d["c_a"] = str(self.c_a)
        d["c_b"] = str(self.c_b)
        return d


#: Named presets: (c_A, c_B) and a one-line description.
PRESETS: dict[str, tuple[Fraction, Fraction, str]] = {
    "lora": (
        Fraction(-1),
        Fraction(-1),
        "equal rates scaled as n^-1: the largest equal rate that keeps Z_A and Z_B stable",
    ),
    "lora-fixed": (Fraction(0), Fraction(0), "equal rates held fixed as the width grows"),
    "lora-sqrt": (
        Fraction(-1, 2),
        Fraction(-1, 2),
        "equal rates scaled as n^-1/2: Init[A]'s largest output-stable equal rate",
    ),
    "loraplus": (Fraction(-1), Fraction(0), "LoRA+: eta_A = Theta(1/n), eta_B = Theta(1)"),
}


def preset(
    name: str,
    *,
    eta: float = 1e-2,
    eta_b: float | None = None,
    n0: int = DEFAULT_N0,
    init: str = "A",
    alpha: float = 1.0,
    alpha_rule: str = "lora",
) -> Parametrization:
    """A named parametrization (see :data:`PRESETS`) with base rates ``η̃_A = eta``, ``η̃_B = eta_b``.

    ``eta_b`` defaults to ``eta``: LoRA and LoRA+ then share the same base rates at ``n0``.
    """
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    c_a, c_b, _ = PRESETS[name]
    return Parametrization(
        name=name,
        eta_a=eta,
        eta_b=eta if eta_b is None else eta_b,
        c_a=c_a,
        c_b=c_b,
        n0=n0,
        init=init,
        alpha=alpha,
        alpha_rule=alpha_rule,
    )
