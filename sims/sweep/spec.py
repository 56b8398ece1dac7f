"""Sweep specifications: a TOML file that describes a width sweep of the toy, parsed and validated.

A spec says which toy problem to train, at which widths and seeds, for how many steps, with which
optimizer, and which learning-rate parametrizations (``docs/lora.md``) to compare. Each
``[[parametrizations]]`` entry may carry grids of base rates; it expands into one
:class:`~loraplus_lab.sims.params.Parametrization` per grid point. Everything is checked before any
work is done: a bad spec raises :class:`SpecError`, whose message is one line naming the file, the
key and the bad value, e.g. ``specs/x.toml: parametrizations[1].eta_a: rates must be positive, got
-0.1``.

Format (every key not marked optional is required)::

    name = "small"               # optional, default the file stem
    steps = 4                    # optimizer steps
    optimizer = "adam"           # optional (default adam): gd | signgd | adam | adamw
    seeds = 4                    # a count (seeds 0..3) or a list [0, 1, 5]
    widths = [64, 128, 256]      # a list, or { log2 = [6, 10] } = 2^6 .. 2^10 doubling, inclusive
    chunk = 16                   # optional (default 64): rate configurations per job
    memory_limit_mb = 1024       # optional (default 4096): the most one job may need
    betas = [0.9, 0.999]         # optional; so are eps (1e-8), weight_decay (0),
                                 # dtype ("float64" | "float32") and divergence_bound (1e8)

    [problem]                    # optional, default the paper toy; `problem = "paper"` also works
    kind = "paper"               # "paper" (takes sigma_b) | "general" (takes rank, outputs
                                 # (an int or "n": one output per input coordinate), samples,
                                 # shift, noise, sigma_b)

    [[parametrizations]]         # at least one
    preset = "loraplus"          # one of loraplus_lab.sims.params.PRESETS, or give c_a and c_b
    (numbers or
                                 # strings such as "-1/2")
    name = "loraplus"            # optional; default the preset name or "c_A=..,c_B=.."
    eta = 0.01                   # base rate of both factors, or eta_a and eta_b separately
    # eta_a = { log2 = [-12, -4], num = 9 }   a log2-spaced grid, num points, ends included
    #                                         (num defaults to one point per octave)
    # eta_b = [0.001, 0.01]                   a list
    init = "A"                   # optional; so are n0 (64), alpha (1) and alpha_rule ("lora")

Rates are the base rates ``η̃_A``, ``η̃_B`` at the base width ``n0``; the rate at width ``n`` is
``η̃·(n/n0)^c``. ``eta`` sets both factors to the same value; a grid of ``eta`` gives one
equal-rate configuration per value. ``eta_a`` and ``eta_b`` together give their product grid,
``eta_a``-major. A grid point is named after its entry and the rates that vary, e.g.
``loraplus[eta_a=2^-10,eta_b=2^-4]`` or ``lora[eta=0.001]``; an entry whose rates are single
values keeps its plain name. Names must be unique after expansion.

Each job of a sweep runs up to ``chunk`` rate configurations × every seed at one width;
:meth:`SweepSpec.job_memory_mb` estimates its peak memory, and a spec whose largest job would need
more than ``memory_limit_mb`` is refused with the largest ``chunk`` that fits.

This module imports neither torch nor the simulator, so a spec is checked in milliseconds; the
names it accepts (optimizers, dtypes, problem kinds and their options) are the simulator's, and
the tests hold the two in step.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from loraplus_lab.sims import checks
from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.params import (
    ALPHA_RULES,
    DEFAULT_N0,
    INITS,
    PRESETS,
    Parametrization,
    parse_exponent,
)
from loraplus_lab.theory.optimizers import OPTIMIZERS

#: The job kind of toy sweeps (stored as ``"kind"`` in a store's ``spec.json``).
KIND = "toy"
#: Floating-point types of the simulation (those of :data:`loraplus_lab.sims.toy.simulate.DTYPES`).
DTYPES = ("float64", "float32")
#: Problem kinds and the options each takes, with their defaults (those of
#: :meth:`loraplus_lab.sims.toy.problem.ToyProblem.paper` and
#: :meth:`~loraplus_lab.sims.toy.problem.ToyProblem.general`).
PROBLEM_OPTIONS: dict[str, dict[str, Any]] = {
    "paper": {"sigma_b": 1.0},
    "general": {
        "rank": 1,
        "outputs": 1,
        "samples": 1,
        "shift": 1.0,
        "noise": 0.0,
        "sigma_b": 1.0,
        "test_samples": 0,
        "latent_dim": 0,
    },
}
#: Defaults of the optional top-level keys.
DEFAULTS: dict[str, Any] = {
    "optimizer": "adam",
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "dtype": "float64",
    "divergence_bound": 1e8,  # loraplus_lab.sims.toy.engine.DEFAULT_DIVERGENCE_BOUND
    "chunk": 64,
    "memory_limit_mb": 4096.0,
}
#: Width-sized arrays the engine holds per configuration × seed (``A``, its gradient, optimizer
#: moments and work buffers, step and difference tensors), likewise for ``B`` and the features.
ARRAYS_PER_CONFIG = 10
#: Columns of the tidy result rows a job returns, 8 bytes each, per configuration × seed × step.
RESULT_COLUMNS = 33

_BYTES = {"float64": 8, "float32": 4}
_TOP_KEYS = (
    "name",
    "steps",
    "optimizer",
    "seeds",
    "widths",
    "chunk",
    "memory_limit_mb",
    "betas",
    "eps",
    "weight_decay",
    "dtype",
    "divergence_bound",
    "problem",
    "parametrizations",
)
_REQUIRED = ("steps", "seeds", "widths", "parametrizations")
_PARAM_KEYS = (
    "preset",
    "name",
    "eta",
    "eta_a",
    "eta_b",
    "c_a",
    "c_b",
    "init",
    "n0",
    "alpha",
    "alpha_rule",
)
_GRID_KEYS = ("log2", "num")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_MAX_LOG2_WIDTH = 40


class SpecError(InputError):
    """A bad spec: the message is ONE line naming the file, the key and the bad value, e.g.
    ``"specs/x.toml: parametrizations[1].eta_a: rates must be positive, got -0.1"``.

    Attributes:
        path: the spec's file (or ``"<spec>"``).
        key: the key path of the bad value (``"widths[2]"``, ``"problem.rank"``), or ``""`` for
            errors of the file as a whole (missing, unreadable, invalid TOML).
    """

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.key = key


# ----------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: widths × seeds × fully expanded parametrizations of one toy problem.

    Build one with :func:`load_spec`, :func:`parse_spec` or :meth:`from_dict`; those check every
    field. Two specs compare equal when they describe the same sweep (``source`` and ``path`` are
    left out of the comparison).

    Attributes:
        name: the sweep's name (letters, digits, ``._+-``).
        problem: ``"paper"`` or ``"general"``.
        problem_options: every keyword option of the problem constructor, defaults filled in
            (``sigma_b`` for the paper toy; ``rank, outputs, samples, shift, noise, sigma_b,
            test_samples, latent_dim``
            for the general one, ``outputs`` an int or ``"n"``).
        widths: sorted, unique, positive widths.
        seeds: sorted, unique, non-negative seeds.
        steps: optimizer steps.
        optimizer: ``gd``, ``signgd``, ``adam`` or ``adamw``.
        betas, eps, weight_decay: optimizer hyper-parameters.
        dtype: ``"float64"`` or ``"float32"``.
        divergence_bound: loss above which a configuration counts as diverged.
        chunk: rate configurations per job.
        memory_limit_mb: the most memory one job may need (see :meth:`job_memory_mb`).
        parametrizations: every grid point, in file order, names unique.
        source: the TOML text as read.
        path: where it was read from.
    """

    name: str
    problem: str
    problem_options: dict[str, Any] = field(hash=False)  # compared, not hashed
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    steps: int
    optimizer: str
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    dtype: str
    divergence_bound: float
    chunk: int
    memory_limit_mb: float
    parametrizations: tuple[Parametrization, ...]
    source: str = field(default="", compare=False, repr=False)
    path: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a canonical JSON-serialisable dictionary.

        Keys are sorted at every level; widths and seeds are sorted lists; exponents are strings
        such as ``"-1/2"``; rates and other reals are floats; defaults are filled in; ``kind`` is
        ``"toy"``. Equal specs, however they were written, give equal dictionaries (and equal
        ``json.dumps`` text); parametrizations keep their expansion order. :meth:`from_dict`
        reads it back.
        """
        d = {
            "kind": KIND,
            "name": self.name,
            "problem": self.problem,
            "problem_options": dict(self.problem_options),
            "widths": list(self.widths),
            "seeds": list(self.seeds),
            "steps": self.steps,
            "optimizer": self.optimizer,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "dtype": self.dtype,
            "divergence_bound": self.divergence_bound,
            "chunk": self.chunk,
            "memory_limit_mb": self.memory_limit_mb,
            "parametrizations": [p.to_dict() for p in self.parametrizations],
        }
        return _sort_keys(d)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "<dict>") -> SweepSpec:
        """Rebuild (and validate again) a spec from :meth:`to_dict`'s dictionary."""
        ck = _Checker(path)
        if not isinstance(data, Mapping):
            ck.fail("", "a spec dictionary must be a mapping", data)
        if data.get("kind", KIND) != KIND:
            ck.fail("kind", f'a toy sweep spec has kind "{KIND}"', data["kind"])
        raw = {k: v for k, v in data.items() if k not in ("kind", "problem", "problem_options")}
        options = data.get("problem_options", {})
        if not isinstance(options, Mapping):
            ck.fail("problem_options", "must be a table", options)
        raw["problem"] = {"kind": data.get("problem", "paper"), **options}
        return _build(raw, ck, source="")

    def job_memory_mb(self, width: int) -> float:
        """Estimated peak memory (MiB) of one job of ``chunk`` configurations × seeds at ``width``.

        Per configuration × seed the engine keeps about :data:`ARRAYS_PER_CONFIG` arrays of
        ``r·n`` floats for ``A`` and its optimizer state, likewise ``m·r`` for ``B`` and
        ``N·(r+m)`` for the features; the data ``X`` (``S·N·n``) and ``W*`` (``S·m·n``) are held
        once. Floats take 8 bytes in float64, 4 in float32. The recorded results add
        :data:`RESULT_COLUMNS` 8-byte values per configuration × seed × step. A job never holds
        more configurations than the spec has, so the count is ``min(chunk, configurations)``.
        """
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        return estimate_job_memory_mb(
            width,
            min(self.chunk, len(self.parametrizations)),
            len(self.seeds),
            self.steps,
            self.problem_options,
            self.dtype,
        )

    @property
    def configurations(self) -> int:
        """The number of rate configurations (expanded parametrizations)."""
        return len(self.parametrizations)


def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a spec file.

    Raises:
        SpecError: the file is missing or unreadable, is not valid TOML (the message carries the
            parser's line and column), or holds a bad value.
    """
    return parse_spec(*read_spec_text(path))


def read_spec_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(text, where)`` of a spec file (of any kind); a missing, unreadable or non-UTF-8 file
    raises :class:`SpecError` naming it."""
    where = os.fspath(path)
    try:
        text = Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{where}: no such spec file", path=where) from None
    except IsADirectoryError:
        raise SpecError(f"{where}: is a folder, not a spec file", path=where) from None
    except UnicodeDecodeError:
        raise SpecError(f"{where}: not UTF-8 text", path=where) from None
    except OSError as e:
        raise SpecError(f"{where}: cannot read ({e.strerror})", path=where) from None
    return text, where


def parse_toml(text: str, path: str = "<spec>") -> dict[str, Any]:
    """The TOML table of a spec's ``text``; invalid TOML raises :class:`SpecError` naming
    ``path``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}", path=path) from None


def parse_spec(text: str, path: str = "<spec>") -> SweepSpec:
    """Parse and validate a spec's TOML text; ``path`` names it in error messages."""
    return _build(parse_toml(text, path), _Checker(path), source=text)


# ----------------------------------------------------------------------------- checking
class _Checker:
    """Raises :class:`SpecError` with the file and key path in front of the message."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str, value: Any = ..., *, hint: str = "") -> NoReturn:
        got = "" if value is ... else f", got {_show(value)}"
        where = f"{self.path}: {key}: " if key else f"{self.path}: "
        raise SpecError(f"{where}{message}{got}{hint}", path=self.path, key=key)

    def keys(self, key: str, table: Mapping[str, Any], valid: tuple[str, ...]) -> None:
        for k in table:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f"; valid keys: {', '.join(valid)}"
                )
                self.fail(_join(key, k), f"unknown key {k!r}", hint=hint)

    def integer(self, key: str, value: Any, minimum: int, what: str) -> int:
        try:
            return checks.integer(key, value, minimum=minimum)
        except InputError:
            self.fail(key, f"must be {what}", value)

    def real(self, key: str, value: Any, *, positive: bool) -> float:
        try:
            return checks.real(key, value, positive=positive)
        except InputError:
            what = "a positive number" if positive else "a non-negative number"
            self.fail(key, f"must be {what}", value)

    def choice(self, key: str, value: Any, choices: tuple[str, ...], what: str) -> str:
        if isinstance(value, str) and value in choices:
            return value
        if not isinstance(value, str):
            self.fail(key, f"{what} must be one of {', '.join(choices)}", value)
        close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.fail(key, f"unknown {what} {_show(value)}{hint} (choose from {', '.join(choices)})")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _show(value: Any, limit: int = 80) -> str:
    """A value as TOML would spell it, on one line and cut to ``limit`` characters."""

    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {show(x)}" for k, x in v.items()) + " }"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(show(x) for x in v) + "]"
        return repr(v)

    s = " ".join(show(value).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _sort_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sort_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sort_keys(v) for v in value]
    return value


def _rate_label(v: float) -> str:
    """``2^k`` for an exact power of two, else the shortest decimal if short, else ``2^x.xxxx``."""
    mantissa, exponent = math.frexp(v)
    if mantissa == 0.5:
        return f"2^{exponent - 1}"
    text = repr(v)
    if len(text) <= 8:
        return text
    return "2^" + f"{math.log2(v):.4f}".rstrip("0").rstrip(".")


# ----------------------------------------------------------------------------- building
def _build(raw: dict[str, Any], ck: _Checker, *, source: str) -> SweepSpec:
    ck.keys("", raw, _TOP_KEYS)
    for key in _REQUIRED:
        if key not in raw:
            what = "at least one [[parametrizations]] entry" if key == "parametrizations" else ""
            ck.fail(key, f"required key missing{': give ' + what if what else ''}")

    name = _spec_name(ck, raw.get("name"))
    steps = ck.integer("steps", raw["steps"], 1, "a positive integer")
    seeds = _seeds(ck, raw["seeds"])
    widths = _widths(ck, raw["widths"])
    optimizer = ck.choice(
        "optimizer", raw.get("optimizer", DEFAULTS["optimizer"]), OPTIMIZERS, "optimizer"
    )
    betas = _betas(ck, raw.get("betas", DEFAULTS["betas"]))
    eps = ck.real("eps", raw.get("eps", DEFAULTS["eps"]), positive=False)
    weight_decay = ck.real(
        "weight_decay", raw.get("weight_decay", DEFAULTS["weight_decay"]), positive=False
    )
    dtype = ck.choice("dtype", raw.get("dtype", DEFAULTS["dtype"]), DTYPES, "dtype")
    divergence_bound = ck.real(
        "divergence_bound",
        raw.get("divergence_bound", DEFAULTS["divergence_bound"]),
        positive=True,
    )
    chunk = ck.integer("chunk", raw.get("chunk", DEFAULTS["chunk"]), 1, "a positive integer")
    memory_limit_mb = ck.real(
        "memory_limit_mb", raw.get("memory_limit_mb", DEFAULTS["memory_limit_mb"]), positive=True
    )
    problem, options = _problem(ck, raw.get("problem", "paper"), widths)
    params = _parametrizations(ck, raw["parametrizations"])

    spec = SweepSpec(
        name=name,
        problem=problem,
        problem_options=options,
        widths=widths,
        seeds=seeds,
        steps=steps,
        optimizer=optimizer,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        dtype=dtype,
        divergence_bound=divergence_bound,
        chunk=chunk,
        memory_limit_mb=memory_limit_mb,
        parametrizations=params,
        source=source,
        path=ck.path,
    )
    _check_memory(ck, spec)
    return spec


def _spec_name(ck: _Checker, value: Any) -> str:
    if value is None:
        stem = Path(ck.path).stem if not ck.path.startswith("<") else "spec"
        if not _NAME_RE.fullmatch(stem):
            ck.fail("name", 'the file name is not a valid sweep name; give name = "..."', stem)
        return stem
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        ck.fail(
            "name",
            "must be a name of letters, digits and ._+- (starting with a letter or digit)",
            value,
        )
    return value


def _seeds(ck: _Checker, value: Any) -> tuple[int, ...]:
    what = "a count (seeds 0..count-1) or a list of non-negative integers"
    if isinstance(value, bool):
        ck.fail("seeds", f"must be {what}", value)
    if isinstance(value, int):
        if value < 1:
            ck.fail("seeds", "the number of seeds must be positive", value)
        return tuple(range(value))
    if not isinstance(value, list):
        ck.fail("seeds", f"must be {what}", value)
    if not value:
        ck.fail("seeds", "the list is empty", value)
    for i, s in enumerate(value):
        ck.integer(f"seeds[{i}]", s, 0, "a non-negative integer")
    if len(set(value)) != len(value):
        ck.fail("seeds", "repeated seed", value)
    return tuple(sorted(value))


def _widths(ck: _Checker, value: Any) -> tuple[int, ...]:
    if isinstance(value, dict):
        ck.keys("widths", value, ("log2",))
        if "log2" not in value:
            ck.fail("widths.log2", "required key missing: give { log2 = [lo, hi] }")
        lo, hi = _pair(ck, "widths.log2", value["log2"], integer=True)
        if lo < 0 or hi > _MAX_LOG2_WIDTH:
            ck.fail("widths.log2", f"exponents must lie in 0..{_MAX_LOG2_WIDTH}", value["log2"])
        return tuple(2**k for k in range(lo, hi + 1))
    if not isinstance(value, list):
        ck.fail("widths", "must be a list of widths or { log2 = [lo, hi] }", value)
    if not value:
        ck.fail("widths", "the list is empty", value)
    for i, w in enumerate(value):
        ck.integer(f"widths[{i}]", w, 1, "a positive integer")
    if len(set(value)) != len(value):
        ck.fail("widths", "repeated width", value)
    return tuple(sorted(value))


def _pair(ck: _Checker, key: str, value: Any, *, integer: bool) -> tuple[Any, Any]:
    """An increasing ``[lo, hi]`` pair of integers (or of finite numbers)."""
    kind = "integers" if integer else "numbers"
    ok = isinstance(value, list) and len(value) == 2
    if ok:
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
                ok = False
            elif isinstance(v, float) and not math.isfinite(v):
                ok = False
    if not ok:
        ck.fail(key, f"must be a pair [lo, hi] of {kind}", value)
    lo, hi = value
    if lo > hi:
        ck.fail(key, "the range must be increasing (lo <= hi)", value)
    return lo, hi


def _betas(ck: _Checker, value: Any) -> tuple[float, float]:
    what = "two numbers in [0, 1)"
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        ck.fail("betas", f"must be {what}", value)
    out = []
    for i, b in enumerate(value):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1:
            ck.fail(f"betas[{i}]", "must be a number in [0, 1)", b)
        out.append(float(b))
    return out[0], out[1]


def _problem(ck: _Checker, value: Any, widths: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        ck.fail("problem", 'must be a kind ("paper" or "general") or a table', value)
    every = ("kind", *dict.fromkeys(k for opts in PROBLEM_OPTIONS.values() for k in opts))
    ck.keys("problem", value, every)
    kind = ck.choice(
        "problem.kind", value.get("kind", "paper"), tuple(PROBLEM_OPTIONS), "problem kind"
    )
    defaults = PROBLEM_OPTIONS[kind]
    for k in value:
        if k != "kind" and k not in defaults:
            ck.fail(
                f"problem.{k}",
                f"{k} = {_show(value[k])}: the {kind} toy takes only {', '.join(defaults)}; "
                f'use kind = "general" for {k}',
            )
    opts = dict(defaults)
    for k, v in value.items():
        key = f"problem.{k}"
        if k in ("rank", "samples"):
            opts[k] = ck.integer(key, v, 1, "a positive integer")
        elif k == "outputs":
            opts[k] = v if v == "n" else ck.integer(key, v, 1, 'a positive integer or "n"')
        elif k in ("shift", "noise"):
            opts[k] = ck.real(key, v, positive=False)
        elif k == "sigma_b":
            opts[k] = ck.real(key, v, positive=True)
        elif k in ("test_samples", "latent_dim"):
            opts[k] = ck.integer(key, v, 0, "a non-negative integer")
    rank = opts.get("rank", 1)
    if rank > widths[0]:
        ck.fail("problem.rank", f"rank {rank} is above the smallest width {widths[0]}")
    return kind, _sort_keys(opts)


def _parametrizations(ck: _Checker, value: Any) -> tuple[Parametrization, ...]:
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        ck.fail("parametrizations", "must be [[parametrizations]] tables", value)
    if not value:
        ck.fail("parametrizations", "no entry: give at least one [[parametrizations]]", value)
    out: list[Parametrization] = []
    origin: dict[str, int] = {}
    for i, entry in enumerate(value):
        for p in _expand(ck, f"parametrizations[{i}]", entry):
            if p.name in origin:
                j = origin[p.name]
                ck.fail(
                    f"parametrizations[{i}].name",
                    f"duplicate name after expansion (also from parametrizations[{j}]); "
                    "give each entry its own name",
                    p.name,
                )
            origin[p.name] = i
            out.append(p)
    return tuple(out)


def _expand(ck: _Checker, key: str, entry: dict[str, Any]) -> list[Parametrization]:
    """One ``[[parametrizations]]`` entry → a Parametrization per grid point."""
    ck.keys(key, entry, _PARAM_KEYS)

    def k(name: str) -> str:
        return f"{key}.{name}"

    if _single_or_pair(ck, k, entry, "preset", ("c_a", "c_b")):
        preset = ck.choice(k("preset"), entry["preset"], tuple(PRESETS), "preset")
        c_a, c_b = PRESETS[preset][:2]
        default_name = preset
    else:
        c_a = _exponent(ck, k("c_a"), entry["c_a"])
        c_b = _exponent(ck, k("c_b"), entry["c_b"])
        default_name = f"c_A={c_a},c_B={c_b}"
    name = entry.get("name", default_name)
    if not isinstance(name, str) or not name.strip() or any(ord(ch) < 32 for ch in name):
        ck.fail(k("name"), "must be a non-empty one-line string", name)

    init = ck.choice(k("init"), entry.get("init", "A"), INITS, "init")
    n0 = ck.integer(k("n0"), entry.get("n0", DEFAULT_N0), 1, "a positive integer")
    alpha = ck.real(k("alpha"), entry.get("alpha", 1.0), positive=True)
    alpha_rule = ck.choice(
        k("alpha_rule"), entry.get("alpha_rule", "lora"), ALPHA_RULES, "alpha rule"
    )

    if _single_or_pair(ck, k, entry, "eta", ("eta_a", "eta_b")):
        etas = _rates(ck, k("eta"), entry["eta"])
        points = [((v, v), [("eta", v)] if len(etas) > 1 else []) for v in etas]
    else:
        grid_a = _rates(ck, k("eta_a"), entry["eta_a"])
        grid_b = _rates(ck, k("eta_b"), entry["eta_b"])
        points = []
        for a, b in itertools.product(grid_a, grid_b):
            varying = [("eta_a", a)] if len(grid_a) > 1 else []
            varying += [("eta_b", b)] if len(grid_b) > 1 else []
            points.append(((a, b), varying))

    out = []
    for (eta_a, eta_b), varying in points:
        label = name
        if varying:
            label += "[" + ",".join(f"{n}={_rate_label(v)}" for n, v in varying) + "]"
        try:
            out.append(
                Parametrization(
                    name=label,
                    eta_a=eta_a,
                    eta_b=eta_b,
                    c_a=c_a,
                    c_b=c_b,
                    n0=n0,
                    init=init,
                    alpha=alpha,
                    alpha_rule=alpha_rule,
                )
            )
        except ValueError as e:  # not reached: every field is checked above
            ck.fail(key, str(e))
    return out


def _single_or_pair(
    ck: _Checker, k: Callable[[str], str], entry: dict[str, Any], single: str, pair: tuple[str, str]
) -> bool:
    """Check that ``entry`` gives ``single`` (``preset``, ``eta``) or both keys of ``pair``
    (``c_a`` and ``c_b``, ``eta_a`` and ``eta_b``), not both forms; whether it gives
    ``single``."""
    a, b = pair
    if single in entry:
        for key in pair:
            if key in entry:
                ck.fail(k(key), f"give {single}, or {a} and {b}, not both", entry[key])
        return True
    if a not in entry and b not in entry:
        ck.fail(k(single), f"required: give {single}, or {a} and {b}")
    for key, other in ((a, b), (b, a)):
        if key not in entry:
            ck.fail(k(key), f"required with {other} (or give {single})")
    return False


def _exponent(ck: _Checker, key: str, value: Any) -> Fraction:
    if not isinstance(value, (int, float, str)) or isinstance(value, bool):
        ck.fail(key, 'must be a number such as -1, -0.5 or "-1/2"', value)
    try:
        return parse_exponent(key, value)
    except ValueError:
        ck.fail(key, 'must be a number such as -1, -0.5 or "-1/2"', value)


def _rates(ck: _Checker, key: str, value: Any) -> list[float]:
    """A rate: a number, a list of numbers, or ``{ log2 = [lo, hi], num = k }``."""
    if isinstance(value, dict):
        ck.keys(key, value, _GRID_KEYS)
        if "log2" not in value:
            ck.fail(f"{key}.log2", "required key missing: give { log2 = [lo, hi], num = k }")
        lo, hi = _pair(ck, f"{key}.log2", value["log2"], integer=False)
        if "num" in value:
            num = ck.integer(f"{key}.num", value["num"], 1, "a positive integer")
        elif float(lo).is_integer() and float(hi).is_integer():
            num = int(hi - lo) + 1
        else:
            ck.fail(f"{key}.num", "required when the log2 ends are not integers", value)
        if lo == hi and num != 1:
            ck.fail(f"{key}.num", "must be 1 when the log2 ends are equal", num)
        if num == 1 and lo != hi:
            ck.fail(f"{key}.num", "must be at least 2 for a range with distinct ends", num)
        exps = [lo + (hi - lo) * i / (num - 1) for i in range(num)] if num > 1 else [lo]
        values = [2.0 ** float(e) for e in exps]
        for v in values:
            if not (math.isfinite(v) and v > 0):
                ck.fail(f"{key}.log2", "rates must be positive and finite", value["log2"])
        return values
    if isinstance(value, list):
        if not value:
            ck.fail(key, "the list is empty", value)
        out = [_rate(ck, f"{key}[{i}]", v) for i, v in enumerate(value)]
        if len(set(out)) != len(out):
            ck.fail(key, "repeated rate", value)
        return out
    return [_rate(ck, key, value)]


def _rate(ck: _Checker, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ck.fail(key, "a rate must be a number, a list of numbers or { log2 = [lo, hi] }", value)
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        ck.fail(key, "rates must be positive and finite", value)
    return v


# ----------------------------------------------------------------------------- memory
def estimate_job_memory_mb(
    width: int,
    configs: int,
    seeds: int,
    steps: int,
    options: Mapping[str, Any],
    dtype: str,
) -> float:
    """Estimated peak memory (MiB) of one job: ``configs`` configurations × ``seeds`` seeds of
    the problem with ``options`` at ``width`` for ``steps`` steps (see
    :meth:`SweepSpec.job_memory_mb`)."""
    r = int(options.get("rank", 1))
    m = width if options.get("outputs", 1) == "n" else int(options.get("outputs", 1))
    N = int(options.get("samples", 1))
    per_config = ARRAYS_PER_CONFIG * (r * width + m * r + N * (r + m))
    shared = seeds * N * width + seeds * m * width
    floats = configs * seeds * per_config + shared
    results = 8 * RESULT_COLUMNS * configs * seeds * (steps + 1)
    return (floats * _BYTES[dtype] + results) / 2**20


def _check_memory(ck: _Checker, spec: SweepSpec) -> None:
    """Refuse a spec whose largest job needs more than ``memory_limit_mb``."""
    limit = spec.memory_limit_mb
    width = max(spec.widths, key=spec.job_memory_mb)
    need = spec.job_memory_mb(width)
    if need <= limit:
        return
    configs = min(spec.chunk, spec.configurations)
    seeds = len(spec.seeds)

    def fits(c: int) -> bool:
        mb = estimate_job_memory_mb(width, c, seeds, spec.steps, spec.problem_options, spec.dtype)
        return mb <= limit

    plural = "s" if configs != 1 else ""
    job = f"one job ({configs} configuration{plural} × {seeds} seeds at width {width})"
    if not fits(1):
        ck.fail(
            "memory_limit_mb",
            f"memory_limit_mb = {limit:g} is too small: {job} needs about {need:.0f} MB, and "
            "more than the limit even with chunk = 1; use fewer seeds or smaller widths, "
            "or raise memory_limit_mb",
        )
    lo, hi = 1, configs  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    ck.fail(
        "chunk",
        f"chunk = {spec.chunk} is too large: {job} needs about {need:.0f} MB, above "
        f"memory_limit_mb = {limit:g}; use chunk = {lo} or less (or raise memory_limit_mb)",
    )
