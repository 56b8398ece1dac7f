"""What every command shares: the parser, its one-line errors, the argparse ``type=`` functions.

Every value is parsed and checked by argparse through a ``type=`` function before a command
runs; a bad value ends the command with one line naming the flag and the value, exit status 2.
:class:`UsageError` is the command line's own :class:`~loraplus_lab.sims.checks.InputError`, for
bad combinations that only a command can see. Nothing here imports numpy or torch.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, NoReturn

from loraplus_lab.sims import checks
from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.params import PRESETS, parse_exponent

PROG = "loraplus-lab"
#: The widest width a command accepts (the sweep specs' limit too).
MAX_LOG2_WIDTH = 40
#: The most seeds a command accepts (far beyond any memory limit, but a list that can be built).
MAX_SEEDS = 1_000_000


class UsageError(InputError):
    """Bad command-line input: reported as one line with exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2), no usage dump:
    ``loraplus-lab: error: --steps must be a positive integer, got 'zero'``."""

    def error(self, message: str) -> NoReturn:
        m = re.fullmatch(r"argument ([^:]+): (.*)", message, flags=re.S)
        if m:
            flags, rest = m.group(1), m.group(2)
            # a type function's message already names the flag
            shown = rest if rest.startswith(tuple(flags.split("/"))) else f"{flags}: {rest}"
        else:
            shown = message
        sys.stderr.write(f"{PROG}: error: {' '.join(shown.split())}\n")
        raise SystemExit(2)


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--c-a -1/2`` → ``--c-a=-1/2``, ``--widths -64,128`` → ``--widths=-64,128``: argparse
    reads a value that starts with ``-`` as an option unless it is a plain number."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a.startswith("--") and "=" not in a and re.match(r"-\.?\d", nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _type(flag: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` function: ``parse(text)``, whose :class:`InputError` becomes
    argparse's error (one line, naming ``flag``)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except InputError as e:
            message = str(e) if str(e).startswith(flag) else f"{flag}: {e}"
            raise argparse.ArgumentTypeError(message) from None

    convert.__name__ = flag
    return convert


def _number(flag: str, text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{flag} must be {what}, got {text!r}") from None


def _whole(flag: str, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{flag} must be {what}, got {text!r}") from None


def positive_float(flag: str) -> Callable[[str], float]:
    """``type=`` for a finite number > 0."""
    return _type(flag, lambda t: checks.positive(flag, _number(flag, t, "a positive number")))


def nonnegative_float(flag: str) -> Callable[[str], float]:
    """``type=`` for a finite number ≥ 0."""
    what = "a non-negative number"
    return _type(flag, lambda t: checks.nonnegative(flag, _number(flag, t, what)))


def positive_int(flag: str) -> Callable[[str], int]:
    """``type=`` for an integer ≥ 1."""
    return _type(flag, lambda t: _checked_int(flag, t, 1))


def nonnegative_int(flag: str) -> Callable[[str], int]:
    """``type=`` for an integer ≥ 0."""
    return _type(flag, lambda t: _checked_int(flag, t, 0))


def _checked_int(flag: str, text: str, minimum: int) -> int:
    what = "a positive integer" if minimum == 1 else "a non-negative integer"
    try:
        return checks.integer(flag, _whole(flag, text, what), minimum=minimum)
    except InputError:
        raise InputError(f"{flag} must be {what}, got {text!r}") from None


def exponent(flag: str) -> Callable[[str], Fraction]:
    """``type=`` for a learning-rate exponent: ``-1``, ``-0.5``, ``-1/2``."""

    def parse(text: str) -> Fraction:
        try:
            return parse_exponent(flag, text)
        except ValueError as e:
            raise InputError(str(e)) from None

    return _type(flag, parse)


def _power(token: str) -> int:
    """``64`` or ``2^6``; at most ``2^MAX_LOG2_WIDTH``."""
    t = token.strip()
    m = re.fullmatch(r"2\^(\d+)", t)
    if m:
        k = int(m.group(1))
        if k > MAX_LOG2_WIDTH:
            raise InputError(f"width {t} is above the widest, 2^{MAX_LOG2_WIDTH}")
        return 2**k
    if re.fullmatch(r"[+-]?\d+", t):
        w = int(t)
        if w > 2**MAX_LOG2_WIDTH:
            raise InputError(f"width {t} is above the widest, 2^{MAX_LOG2_WIDTH}")
        return w
    raise InputError(f"bad width {token!r}: use integers such as 64 or powers such as 2^6")


def parse_widths(text: str) -> list[int]:
    """``"64,128,256"``, ``"2^6,2^8"`` or a doubling range ``"2^6..2^14"``; sorted.

    Raises:
        InputError: a token that is not a width, a width ≤ 0 or above ``2^40``, a repeat.
    """
    if ".." in text:
        lo_s, _, hi_s = text.partition("..")
        lo, hi = _power(lo_s), _power(hi_s)
        if lo < 1 or hi < lo:
            raise InputError(f"bad width range {text!r}: need 1 <= start <= end")
        out, w = [], lo
        while w <= hi:
            out.append(w)
            w *= 2
    else:
        out = [_power(t) for t in text.split(",") if t.strip()]
    if not out:
        raise InputError(f"no width in {text!r}")
    for w in out:
        if w < 1:
            raise InputError(f"width must be positive, got {w}")
    if len(set(out)) != len(out):
        raise InputError(f"repeated width in {text!r}")
    return sorted(out)


def parse_seeds(text: str) -> list[int]:
    """``"8"`` (seeds 0..7), ``"0,3,5"`` or ``"10..17"``.

    Raises:
        InputError: not integers, a negative or repeated seed, none, or more than
            :data:`MAX_SEEDS`.
    """
    t = text.strip()
    many = f"at most {MAX_SEEDS:,} seeds, got {text!r}"
    try:
        if ".." in t:
            a, _, b = t.partition("..")
            lo, hi = int(a), int(b)
            if hi - lo >= MAX_SEEDS:
                raise InputError(many)
            seeds = list(range(lo, hi + 1))
        elif "," in t:
            seeds = [int(s) for s in t.split(",") if s.strip()]
        else:
            k = int(t)
            if k < 1:
                raise InputError(f"the number of seeds must be positive, got {text!r}")
            if k > MAX_SEEDS:
                raise InputError(many)
            seeds = list(range(k))
    except InputError:
        raise
    except ValueError:
        raise InputError(f"seeds must be integers such as 8, 0,1,2 or 0..7, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise InputError(f"seeds must be non-negative integers, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"repeated seed in {text!r}")
    return seeds


def parse_rates(flag: str, text: str) -> list[float]:
    """``1e-4,3e-4``, ``2^-10,2^-8`` or a doubling range ``2^-12..2^-8``; every rate > 0."""

    def one(tok: str) -> float:
        t = tok.strip()
        m = re.fullmatch(r"2\^(-?\d+(?:\.\d+)?)", t)
        try:
            v = 2.0 ** float(m.group(1)) if m else float(t)
        except (ValueError, OverflowError):
            raise InputError(f"{flag}: bad rate {tok!r}") from None
        try:
            return checks.positive(flag, v)
        except InputError:
            raise InputError(f"{flag}: rates must be positive, got {tok!r}") from None

    if ".." in text:
        lo, _, hi = text.partition("..")
        a, b = one(lo), one(hi)
        if b < a:
            raise InputError(f"{flag}: range {text!r} runs backwards")
        out = [a]
        while out[-1] * 2 <= b * (1 + 1e-12):
            out.append(out[-1] * 2)
        return out
    out = [one(t) for t in text.split(",") if t.strip()]
    if not out:
        raise InputError(f"{flag}: no rate in {text!r}")
    return out


def widths(flag: str) -> Callable[[str], list[int]]:
    """``type=`` of :func:`parse_widths`."""
    return _type(flag, parse_widths)


def width(flag: str) -> Callable[[str], int]:
    """``type=`` for one width: a positive integer (``4096``) or a power of two (``2^12``)."""

    def parse(text: str) -> int:
        w = _power(text)
        if w < 1:
            raise InputError(f"{flag} must be a positive width, got {text!r}")
        return w

    return _type(flag, parse)


def seeds(flag: str) -> Callable[[str], list[int]]:
    """``type=`` of :func:`parse_seeds`."""
    return _type(flag, parse_seeds)


def rates(flag: str) -> Callable[[str], list[float]]:
    """``type=`` of :func:`parse_rates`."""
    return _type(flag, lambda t: parse_rates(flag, t))


def presets(flag: str) -> Callable[[str], list[str]]:
    """``type=`` for a comma list of distinct preset names (possibly empty)."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        for name in names:
            if name not in PRESETS:
                raise InputError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        if len(set(names)) != len(names):
            raise InputError(f"repeated preset in {text!r}")
        return names

    return _type(flag, parse)


def names(flag: str) -> Callable[[str], list[str]]:
    """``type=`` for a comma list of names (e.g. target modules)."""
    return _type(flag, lambda t: [s.strip() for s in t.split(",") if s.strip()])


def use_agg() -> None:
    """Draw figures into files only (matplotlib's Agg backend): never open a window."""
    import matplotlib

    matplotlib.use("Agg")
