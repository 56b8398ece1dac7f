"""Checks of input values, shared by the whole package, and the one error they raise.

Every check of a value a user gives (a width, a rate, a seed, a name from a fixed list) is one of
the functions here, so the same bad value gets the same one-line message wherever it is given.
Each raises :class:`InputError`, the base class of every validation error of the package (bad
spec files, stores, data files, models, command-line values): the command line reports an
:class:`InputError` as one line with exit status 2 and treats any other exception as a bug.
:class:`InputError` is a :class:`ValueError`, so code that catches ``ValueError`` is unaffected.

This module imports nothing but the standard library (numpy's scalars are ``numbers.Real``
and ``numbers.Integral``), so checking a value never imports torch.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any


class InputError(ValueError):
    """Bad input: the message is one line that names the bad value.

    Raised by every check of the package; subclasses name where the input came from (a spec
    file, a store, a data file, the command line).
    """

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).split()))


def _integer(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer (not a bool, not a float), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def integer(name: str, value: Any, *, minimum: int = 1) -> int:
    """``value`` as an ``int``, checked to be an integer ``≥ minimum``.

    Raises:
        InputError: ``"{name} must be a positive integer, got …"`` (``minimum = 1``), ``"… a
            non-negative integer …"`` (``minimum = 0``) or ``"… an integer ≥ {minimum} …"``.
    """
    v = _integer(value)
    if v is None or v < minimum:
        what = {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer ≥ {minimum}"
        )
        raise InputError(f"{name} must be {what}, got {value!r}")
    return v


def positive_int(name: str, value: Any) -> int:
    """An integer ``≥ 1`` (:func:`integer`)."""
    return integer(name, value, minimum=1)


def nonnegative_int(name: str, value: Any) -> int:
    """An integer ``≥ 0`` (:func:`integer`)."""
    return integer(name, value, minimum=0)


def real(name: str, value: Any, *, positive: bool = True) -> float:
    """``value`` as a finite ``float``, checked to be ``> 0`` (``positive``) or ``≥ 0``.

    Accepts Python and numpy reals (``numbers.Real``), never a bool or a string.

    Raises:
        InputError: ``"{name} must be a positive number, got …"`` (or ``non-negative``).
    """
    what = "a positive number" if positive else "a non-negative number"
    if not is_real(value):
        raise InputError(f"{name} must be {what}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise InputError(f"{name} must be {what}, got {value!r}")
    return v


def positive(name: str, value: Any) -> float:
    """A finite number ``> 0`` (:func:`real`)."""
    return real(name, value, positive=True)


def nonnegative(name: str, value: Any) -> float:
    """A finite number ``≥ 0`` (:func:`real`)."""
    return real(name, value, positive=False)


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value``, checked to be one of ``choices``.

    Raises:
        InputError: ``"{name} must be one of a, b, c, got 'x'"``.
    """
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise InputError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool): for checks that accept several types."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
