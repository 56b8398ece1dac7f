"""The real-model ladder experiment: pretrained width ladders, LoRA finetuning landscapes over
``(η_A, η_B)``, as jobs of the sweep engine.

One TOML spec file fixes the whole experiment (architecture, widths, corpora, pretraining,
finetuning, the rate grid, the seeds). It runs in stages, each a set of jobs of the sweep engine
(one Parquet file per finished job in the store, any executor, resumable after a kill):

1. **pretrain**: one job per width pretrains the base on the pretraining corpus
   (:mod:`~loraplus_lab.sims.realmodels.bases`; cached and reused across ladders);
2. **coarse**: per width × seed, the runs of a coarse log2 grid of ``(η_A, η_B)`` and of three
   lines: equal rates ``η_A = η_B`` (plain LoRA), ``η_A = 0`` (only ``B`` trained) and
   ``η_B = λ·η_A`` at a fixed λ (LoRA+ as practised, ``λ = 2^4``), batched ``chunk``
   configurations per job (:func:`~loraplus_lab.sims.realmodels.multirate.finetune_rates`);
3. **refine**: per width, a finer patch of the grid (``refine`` octaves apart, ``refine_radius``
   octaves each way) around the coarse grid's best cell (the lowest seed-mean loss at the
   validation curve's last point), once every coarse run of that width is stored.

A landscape job that finds its base missing pretrains it first (under a file lock), so jobs may
run in any order on any executor. Stage 3 depends on stage 2's results, so :func:`run_ladder`
(``loraplus-lab ladder``) runs the stages until nothing is left; ``--resume`` continues it.

Spec format (every key not marked optional is required; values shown are examples)::

    name = "gpt2-cpu"            # optional, default the file stem
    arch = "gpt2"                # gpt2 | llama
    widths = { log2 = [5, 8] }   # or a list; each a multiple of head_dim with >= 2 heads
    layers = 2                   # optional (2); so are head_dim (16) and context (64 bytes)
    seeds = 4                    # finetuning seeds (adapter initialisation, batch order)
    chunk = 8                    # optional (8): configurations per finetuning job
    dtype = "float32"            # optional: float32 | float64 | bfloat16
    device = "cpu"               # optional: cpu | cuda

    [pretrain]                   # optional table; defaults shown
    corpus = "stdlib-code"       # stdlib-code | pydoc-topics | hf:NAME[:CONFIG] | a path
    steps = 2000
    batch = 16
    lr = 0.015625                # one muP base rate for every width
    warmup = 100
    final_lr_fraction = 0.1
    seed = 0

    [finetune]                   # optional table; defaults shown
    corpus = "pydoc-topics"
    r = 8
    alpha = 8
    steps = 100
    batch = 4
    warmup = 10
    eval_every = 10
    curve_windows = 16           # the validation curve's windows (every eval_every steps)
    eval_windows = 128           # the final loss's windows (the landscape's value)
    weight_decay = 0.0

    [grid]
    log2_eta_a = [-14, -5]       # coarse grid: every `step` octaves, ends included
    log2_eta_b = [-10, -3]
    step = 1.0                   # optional (1)
    refine = 0.5                 # optional (0.5; 0 = no refinement)
    refine_radius = 1.0          # optional (1)

    [lines]                      # optional; each entry optional
    equal = [-13, -3]            # log2 η of the equal-rate line
    b_only = [-10, -2]           # log2 η_B of the A-frozen line
    ratio = 16                   # λ of the fixed-ratio line ...
    ratio_log2_eta_a = [-14, -6] # ... over this log2 η_A range
    step = 0.5                   # optional (0.5): spacing of every line

Every value is checked before anything runs; a bad one raises
:class:`~loraplus_lab.sims.sweep.spec.SpecError` naming the file, the key and the value.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraplus_lab.sims.realmodels.ladder_config import (
    BaseSpec,
    FinetuneSetup,
    RateConfig,
    check_width,
    default_cache,
)
from loraplus_lab.sims.sweep.spec import (
    _Checker,
    _pair,
    _seeds,
    _widths,
    parse_toml,
    read_spec_text,
)

KIND = "ladder"
#: Bump when a ladder job's results change for the same spec.
LADDER_VERSION = 1
ARCHS = ("gpt2", "llama")
DTYPES = ("float32", "float64", "bfloat16")
DEVICES = ("cpu", "cuda")
STAGES = ("pretrain", "coarse", "refine", "predicted")

_TOP = (
    "name",
    "arch",
    "widths",
    "layers",
    "head_dim",
    "context",
    "seeds",
    "chunk",
    "dtype",
    "device",
    "pretrain",
    "finetune",
    "grid",
    "lines",
    "predicted",
)
_PRETRAIN = (
    "corpus",
    "steps",
    "batch",
    "lr",
    "warmup",
    "final_lr_fraction",
    "seed",
    "val_windows",
    "weight_decay",
)
_FINETUNE = (
    "corpus",
    "curve_windows",
    "r",
    "alpha",
    "targets",
    "steps",
    "batch",
    "warmup",
    "eval_every",
    "eval_windows",
    "weight_decay",
)
_GRID = ("log2_eta_a", "log2_eta_b", "step", "refine", "refine_radius")
_LINES = ("equal", "b_only", "ratio", "ratio_log2_eta_a", "step")
_PRETRAIN_DEFAULTS = {
    "corpus": "stdlib-code",
    "steps": 2000,
    "batch": 16,
    "lr": 2**-6,
    "warmup": 100,
    "final_lr_fraction": 0.1,
    "seed": 0,
    "val_windows": 256,
    "weight_decay": 0.0,
}
_FINETUNE_DEFAULTS = {
    "corpus": "pydoc-topics",
    "r": 8,
    "alpha": 8.0,
    "steps": 100,
    "batch": 4,
    "warmup": 10,
    "eval_every": 10,
    "curve_windows": 16,
    "eval_windows": 128,
    "weight_decay": 0.0,
}


def _log2_points(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo + step, …`` up to ``hi`` (included when it lies on the lattice)."""
    n = int(math.floor((hi - lo) / step + 1e-9))
    return [round(lo + k * step, 9) for k in range(n + 1)]


@dataclass(frozen=True)
class LadderSpec:
    """A validated ladder experiment (see the module docstring for every field's meaning)."""

    name: str
    arch: str
    widths: tuple[int, ...]
    layers: int
    head_dim: int
    context: int
    seeds: tuple[int, ...]
    chunk: int
    dtype: str
    device: str
    pretrain: dict[str, Any] = field(hash=False)
    finetune: dict[str, Any] = field(hash=False)
    grid: dict[str, Any] = field(hash=False)
    lines: dict[str, Any] = field(hash=False)
    predicted: dict[int, tuple[float, float]] = field(default_factory=dict, hash=False)
    source: str = field(default="", compare=False, repr=False)
    path: str = field(default="", compare=False)

    kind = KIND

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec (defaults filled in, keys sorted)."""
        d = {
            "kind": KIND,
            "name": self.name,
            "arch": self.arch,
            "widths": list(self.widths),
            "layers": self.layers,
            "head_dim": self.head_dim,
            "context": self.context,
            "seeds": list(self.seeds),
            "chunk": self.chunk,
            "dtype": self.dtype,
            "device": self.device,
            "pretrain": dict(self.pretrain),
            "finetune": dict(self.finetune),
            "grid": dict(self.grid),
            "lines": dict(self.lines),
        }
        if self.predicted:
            d["predicted"] = {str(w): list(p) for w, p in sorted(self.predicted.items())}
        return json.loads(json.dumps(d, sort_keys=True))

    # ------------------------------------------------------------------ derived settings
    def base_spec(self, width: int) -> BaseSpec:
        """The pretrained base of ``width``."""
        p = self.pretrain
        return BaseSpec(
            self.arch,
            width,
            corpus=p["corpus"],
            layers=self.layers,
            head_dim=self.head_dim,
            context=self.context,
            steps=p["steps"],
            batch=p["batch"],
            lr=p["lr"],
            warmup=p["warmup"],
            final_lr_fraction=p["final_lr_fraction"],
            weight_decay=p["weight_decay"],
            seed=p["seed"],
            val_windows=p["val_windows"],
            device=self.device,
            dtype=self.dtype,
        )

    def setup(self) -> FinetuneSetup:
        """The finetuning settings every run shares."""
        f = self.finetune
        return FinetuneSetup(
            arch=self.arch,
            r=f["r"],
            alpha=f["alpha"],
            targets=tuple(f["targets"]) if f.get("targets") else None,
            steps=f["steps"],
            batch=f["batch"],
            context=self.context,
            warmup=f["warmup"],
            weight_decay=f["weight_decay"],
            eval_every=f["eval_every"],
            curve_windows=f["curve_windows"],
            eval_windows=f["eval_windows"],
        )

    def coarse_points(self) -> list[tuple[float, float]]:
        """:func:`coarse_points` of this spec's grid and lines."""
        return coarse_points(self.grid, self.lines)

    def refine_points(self, center: tuple[float, float]) -> list[tuple[float, float]]:
        """:func:`refine_points` of this spec's grid around ``center``."""
        return refine_points(self.grid, center)


def coarse_points(grid: Mapping[str, Any], lines: Mapping[str, Any]) -> list[tuple[float, float]]:
    """``(log2 η_A, log2 η_B)`` of the coarse grid and the lines (``log2 η_A = -inf`` for the
    A-frozen line), without repeats, sorted."""
    g, ln = grid, lines
    pts = {
        (u, v)
        for u in _log2_points(*g["log2_eta_a"], g["step"])
        for v in _log2_points(*g["log2_eta_b"], g["step"])
    }
    if ln.get("equal"):
        pts |= {(u, u) for u in _log2_points(*ln["equal"], ln["step"])}
    if ln.get("b_only"):
        pts |= {(-math.inf, v) for v in _log2_points(*ln["b_only"], ln["step"])}
    if ln.get("ratio"):
        lr = math.log2(ln["ratio"])
        pts |= {(u, round(u + lr, 9)) for u in _log2_points(*ln["ratio_log2_eta_a"], ln["step"])}
    return sorted(pts)


def refine_points(
    grid: Mapping[str, Any], center: tuple[float, float]
) -> list[tuple[float, float]]:
    """The refinement patch: ``refine`` octaves apart, ``refine_radius`` octaves each way around
    ``center`` (log2 η_A, log2 η_B); empty when ``refine`` is 0."""
    if not grid["refine"]:
        return []
    radius = grid["refine_radius"]
    u0, v0 = center
    return sorted(
        (round(u0 + du, 9), round(v0 + dv, 9))
        for du in _log2_points(-radius, radius, grid["refine"])
        for dv in _log2_points(-radius, radius, grid["refine"])
    )


def rate_config(point: tuple[float, float]) -> RateConfig:
    """The rates of a ``(log2 η_A, log2 η_B)`` point (``-inf`` → ``η_A = 0``)."""
    u, v = point
    return RateConfig(0.0 if u == -math.inf else 2.0**u, 2.0**v)


# --------------------------------------------------------------------------------- parsing
def load_ladder_spec(path: str | os.PathLike[str]) -> LadderSpec:
    """Read and validate a ladder spec file (:class:`SpecError` on any problem)."""
    return parse_ladder_spec(*read_spec_text(path))


def parse_ladder_spec(text: str, path: str = "<spec>") -> LadderSpec:
    """Parse and validate a ladder spec's TOML text."""
    return _build(parse_toml(text, path), _Checker(path), text)


def _table(ck: _Checker, raw: Mapping[str, Any], key: str, valid: tuple[str, ...]) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        ck.fail(key, "must be a table", value)
    ck.keys(key, value, valid)
    return dict(value)


def _range(ck: _Checker, key: str, value: Any) -> list[float]:
    lo, hi = _pair(ck, key, value, integer=False)
    return [float(lo), float(hi)]


def parse_rates(ck: _Checker, raw: Mapping[str, Any]) -> tuple[dict, dict]:
    """The ``[grid]`` and ``[lines]`` tables of a spec, checked, with defaults filled in."""
    g = _table(ck, raw, "grid", _GRID)
    for k in ("log2_eta_a", "log2_eta_b"):
        if k not in g:
            ck.fail(f"grid.{k}", "required key missing: give [lo, hi] (log2 of the rate)")
        g[k] = _range(ck, f"grid.{k}", g[k])
    g["step"] = ck.real("grid.step", g.get("step", 1.0), positive=True)
    g["refine"] = ck.real("grid.refine", g.get("refine", 0.5), positive=False)
    g["refine_radius"] = ck.real("grid.refine_radius", g.get("refine_radius", 1.0), positive=False)
    if g["refine"] and g["refine_radius"] < g["refine"]:
        ck.fail(
            "grid.refine_radius",
            f"must be at least grid.refine ({g['refine']})",
            g["refine_radius"],
        )
    ln = _table(ck, raw, "lines", _LINES)
    ln["step"] = ck.real("lines.step", ln.get("step", 0.5), positive=True)
    for k in ("equal", "b_only", "ratio_log2_eta_a"):
        if k in ln:
            ln[k] = _range(ck, f"lines.{k}", ln[k])
    if "ratio" in ln:
        ln["ratio"] = ck.real("lines.ratio", ln["ratio"], positive=True)
        if "ratio_log2_eta_a" not in ln:
            ck.fail("lines.ratio_log2_eta_a", "required with lines.ratio: give [lo, hi]")
    elif "ratio_log2_eta_a" in ln:
        ck.fail("lines.ratio", "required with lines.ratio_log2_eta_a")
    return g, ln


def _predicted(ck: _Checker, value: Any, widths: tuple[int, ...]) -> dict[int, tuple]:
    """``[predicted]``: one ``[log2 η_A, log2 η_B]`` per width (``--rates-from`` writes it)."""
    if not isinstance(value, Mapping):
        ck.fail("predicted", "must be a table of width = [log2 η_A, log2 η_B]", value)
    out = {}
    for k, v in value.items():
        if not (k.isdigit() and int(k) in widths):
            ck.fail(f"predicted.{k}", f"must be one of the widths {list(widths)}")
        lo, hi = v if isinstance(v, list) and len(v) == 2 else (None, None)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (lo, hi)):
            ck.fail(f"predicted.{k}", "must be [log2 η_A, log2 η_B]", v)
        out[int(k)] = (float(lo), float(hi))
    if out and set(out) != set(widths):
        ck.fail("predicted", f"needs every width {list(widths)}", sorted(out))
    return out


def _build(raw: dict[str, Any], ck: _Checker, source: str) -> LadderSpec:
    from loraplus_lab.sims.realmodels.corpus import CorpusError, check_corpus_name

    ck.keys("", raw, _TOP)
    for key in ("arch", "widths", "seeds", "grid"):
        if key not in raw:
            ck.fail(key, "required key missing")
    name = raw.get("name", Path(ck.path).stem if not ck.path.startswith("<") else "ladder")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._+-" for c in name):
        ck.fail("name", "must be a name of letters, digits and ._+-", name)
    arch = ck.choice("arch", raw["arch"], ARCHS, "architecture")
    widths = _widths(ck, raw["widths"])
    layers = ck.integer("layers", raw.get("layers", 2), 1, "a positive integer")
    head_dim = ck.integer("head_dim", raw.get("head_dim", 16), 1, "a positive integer")
    context = ck.integer("context", raw.get("context", 64), 2, "an integer >= 2")
    for i, w in enumerate(widths):
        try:
            check_width(w, head_dim)
        except ValueError as e:
            ck.fail(f"widths[{i}]", str(e))
    if len(widths) < 2:
        ck.fail("widths", "a ladder needs at least two widths", list(widths))
    seeds = _seeds(ck, raw["seeds"])
    chunk = ck.integer("chunk", raw.get("chunk", 8), 1, "a positive integer")
    dtype = ck.choice("dtype", raw.get("dtype", "float32"), DTYPES, "dtype")
    device = ck.choice("device", raw.get("device", "cpu"), DEVICES, "device")

    pre = {**_PRETRAIN_DEFAULTS, **_table(ck, raw, "pretrain", _PRETRAIN)}
    ft = {**_FINETUNE_DEFAULTS, **_table(ck, raw, "finetune", _FINETUNE)}
    for sect, table in (("pretrain", pre), ("finetune", ft)):
        try:
            check_corpus_name(table["corpus"])
        except CorpusError as e:
            ck.fail(f"{sect}.corpus", str(e))
    for k in ("steps", "batch", "val_windows"):
        pre[k] = ck.integer(f"pretrain.{k}", pre[k], 1, "a positive integer")
    pre["seed"] = ck.integer("pretrain.seed", pre["seed"], 0, "a non-negative integer")
    pre["warmup"] = ck.integer("pretrain.warmup", pre["warmup"], 0, "a non-negative integer")
    pre["lr"] = ck.real("pretrain.lr", pre["lr"], positive=True)
    pre["weight_decay"] = ck.real("pretrain.weight_decay", pre["weight_decay"], positive=False)
    pre["final_lr_fraction"] = ck.real(
        "pretrain.final_lr_fraction", pre["final_lr_fraction"], positive=False
    )
    if pre["final_lr_fraction"] > 1:
        ck.fail("pretrain.final_lr_fraction", "must lie in [0, 1]", pre["final_lr_fraction"])
    for k in ("r", "steps", "batch", "eval_every", "curve_windows", "eval_windows"):
        ft[k] = ck.integer(f"finetune.{k}", ft[k], 1, "a positive integer")
    ft["warmup"] = ck.integer("finetune.warmup", ft["warmup"], 0, "a non-negative integer")
    if ft["warmup"] >= ft["steps"]:
        ck.fail(
            "finetune.warmup", f"must be shorter than finetune.steps ({ft['steps']})", ft["warmup"]
        )
    ft["alpha"] = ck.real("finetune.alpha", ft["alpha"], positive=True)
    ft["weight_decay"] = ck.real("finetune.weight_decay", ft["weight_decay"], positive=False)
    if "targets" in ft:
        t = ft["targets"]
        if not isinstance(t, list) or not t or not all(isinstance(x, str) and x for x in t):
            ck.fail("finetune.targets", "must be a non-empty list of module names", t)

    g, ln = parse_rates(ck, raw)
    predicted = _predicted(ck, raw.get("predicted", {}), widths)
    spec = LadderSpec(
        name=name,
        arch=arch,
        widths=widths,
        layers=layers,
        head_dim=head_dim,
        context=context,
        seeds=seeds,
        chunk=chunk,
        dtype=dtype,
        device=device,
        pretrain=pre,
        finetune={**ft, "alpha": float(ft["alpha"])},
        grid=g,
        lines=ln,
        predicted=predicted,
        source=source,
        path=ck.path,
    )
    try:
        spec.setup()
        for w in widths:
            spec.base_spec(w)
    except ValueError as e:  # anything the building blocks refuse
        ck.fail("", str(e))
    if not spec.coarse_points():
        ck.fail("grid", "the grid has no point")
    return spec


# ----------------------------------------------------------------------------------- jobs
@lru_cache(maxsize=8)
def _corpus(name: str):  # noqa: ANN202 - a Corpus
    from loraplus_lab.sims.realmodels.corpus import load_corpus

    return load_corpus(name)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _torch_dtype(name: str):  # noqa: ANN202 - torch.dtype
    import torch

    return {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[name]


def ensure_base(spec: LadderSpec, width: int, cache: Path | None = None) -> Path:
    """The folder of the pretrained base of ``width``, pretraining it now (under a lock, so
    parallel jobs never pretrain the same base twice) if it is not in the cache."""
    from loraplus_lab.sims.realmodels.bases import pretrain_base

    cache = Path(cache) if cache is not None else default_cache()
    base = spec.base_spec(width)
    corpus = _corpus(base.corpus)
    folder = base.folder(cache, corpus.sha256)
    if (folder / "pretrain.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return pretrain_base(base, cache=cache, corpus=corpus)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class PretrainJob:
    """Stage 1: pretrain (or find in the cache) the base of one width."""

    spec: LadderSpec
    width: int

    stage = "pretrain"

    @property
    def key(self) -> str:
        base = self.spec.base_spec(self.width)
        return _hash(
            {
                "kind": KIND,
                "v": LADDER_VERSION,
                "stage": "pretrain",
                "base": base.key(_corpus(base.corpus).sha256),
            }
        )

    @property
    def resources(self) -> dict[str, float]:
        return {"num_gpus": 1} if self.spec.device == "cuda" else {"num_cpus": 1}

    def run(self) -> pd.DataFrame:
        """Rows ``part="pretrain"``: the training loss per step; the last row carries the
        validation loss, the parameter count, the seconds pretraining took and the corpus."""
        from loraplus_lab.sims.realmodels.bases import base_record, load_base

        with _threads(self.spec.device):
            folder = ensure_base(self.spec, self.width)
        rec = base_record(folder)
        losses = rec["train_loss"]
        n = len(losses)
        params = sum(p.numel() for p in load_base(folder).parameters())
        last = np.arange(n) == n - 1
        return pd.DataFrame(
            {
                "part": "pretrain",
                "stage": "pretrain",
                "width": self.width,
                "step": np.arange(1, n + 1),
                "train_loss": losses,
                "val_loss": np.where(last, rec["val_loss"], np.nan),
                "params": np.where(last, params, -1),
                "seconds": np.where(last, rec["seconds"], np.nan),
                "base": rec["key"],
            }
        )


@dataclass(frozen=True)
class FinetuneJob:
    """Stages 2–3: the runs of ``points`` at one width and seed, batched."""

    spec: LadderSpec
    width: int
    seed: int
    stage: str
    points: tuple[tuple[float, float], ...]

    @property
    def key(self) -> str:
        base = self.spec.base_spec(self.width)
        ft_corpus = _corpus(self.spec.finetune["corpus"])
        return _hash(
            {
                "kind": KIND,
                "v": LADDER_VERSION,
                "base": base.key(_corpus(base.corpus).sha256),
                "finetune": self.spec.setup().to_dict(),
                "corpus": ft_corpus.sha256,
                "seed": self.seed,
                "dtype": self.spec.dtype,
                "points": [[u if math.isfinite(u) else "-inf", v] for u, v in self.points],
            }
        )

    @property
    def resources(self) -> dict[str, float]:
        return {"num_gpus": 1} if self.spec.device == "cuda" else {"num_cpus": 1}

    def run(self) -> pd.DataFrame:
        """Rows ``part="finetune"`` (see :func:`~loraplus_lab.sims.realmodels.multirate.
        finetune_rates`), with ``stage``, ``width`` and ``seed``."""
        from loraplus_lab.sims.realmodels.bases import load_base
        from loraplus_lab.sims.realmodels.multirate import finetune_rates

        with _threads(self.spec.device):
            folder = ensure_base(self.spec, self.width)
            dtype = _torch_dtype(self.spec.dtype)
            base = load_base(folder).to(device=self.spec.device)
            df = finetune_rates(
                base,
                self.spec.setup(),
                [rate_config(p) for p in self.points],
                seed=self.seed,
                corpus=_corpus(self.spec.finetune["corpus"]),
                dtype=dtype,
            )
        df.insert(0, "part", "finetune")
        df.insert(1, "stage", self.stage)
        df.insert(2, "width", self.width)
        df.insert(3, "seed", self.seed)
        return df


class _threads:
    """One torch thread on the CPU (results must not depend on the thread count)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        if self.device == "cpu":
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)


def _chunks(points: Sequence[tuple[float, float]], size: int) -> list[tuple]:
    return [tuple(points[i : i + size]) for i in range(0, len(points), size)]


def refinement_patches(
    store_path: str | os.PathLike[str],
    groups: Mapping[Any, Sequence[Any]],
    coarse: Sequence[tuple[float, float]],
    grid: Mapping[str, Any],
    steps: int,
) -> dict[Any, list[tuple[float, float]]]:
    """For every group (a width, a model) whose coarse jobs are all in the store: the points of
    the refinement patch around its best coarse cell that the coarse stage did not run.

    The best cell has the lowest seed-mean final loss (``final_loss``, the larger evaluation set
    the landscape itself is read on; ``val_loss`` at step ``steps`` where a run records no
    final loss), over the runs that train ``A``."""
    from loraplus_lab.sims.sweep.store import Store

    if not grid["refine"]:
        return {}
    store = Store(store_path)
    done = store.done_keys()
    have = set(coarse)
    out = {}
    for group, jobs in groups.items():
        if not all(j.key in done for j in jobs):
            continue
        df = pd.concat([store.read_job(j.key) for j in jobs], ignore_index=True)
        last = df[(df["step"] == steps) & (df["eta_a"] > 0)]
        loss = (
            "final_loss"
            if "final_loss" in last and last["final_loss"].notna().any()
            else "val_loss"
        )
        means = last.groupby(["eta_a", "eta_b"])[loss].mean()
        means = means[np.isfinite(means)]
        if means.empty:
            continue
        ea, eb = means.idxmin()
        center = (round(math.log2(ea), 9), round(math.log2(eb), 9))
        out[group] = [p for p in refine_points(grid, center) if p not in have]
    return out


def ladder_jobs(spec: LadderSpec, store_path: str | os.PathLike[str] | None = None) -> list:
    """Every job whose prerequisites are met: stages 1–2 always; a width's refinement once the
    store at ``store_path`` holds all of that width's coarse runs. Pretraining widest first (the
    longest job starts first); finetuning narrowest first, so that narrow landscapes run while
    the widest base is still pretraining."""
    widths = sorted(spec.widths)
    jobs: list = [PretrainJob(spec, w) for w in reversed(widths)]
    if spec.predicted:  # the rates a transfer rule predicted: one run per width and seed
        for w in widths:
            jobs += [FinetuneJob(spec, w, s, "predicted", (spec.predicted[w],)) for s in spec.seeds]
        return jobs
    coarse = spec.coarse_points()
    by_width: dict[int, list[FinetuneJob]] = {}
    for w in widths:
        for s in spec.seeds:
            for chunk in _chunks(coarse, spec.chunk):
                by_width.setdefault(w, []).append(FinetuneJob(spec, w, s, "coarse", chunk))
        jobs += by_width[w]
    if store_path is None:
        return jobs
    patches = refinement_patches(store_path, by_width, coarse, spec.grid, spec.finetune["steps"])
    for w, patch in patches.items():
        for s in spec.seeds:
            for chunk in _chunks(patch, spec.chunk):
                jobs.append(FinetuneJob(spec, w, s, "refine", chunk))
    return jobs


class LadderKind:
    """The ``ladder`` job kind of the sweep engine."""

    name = KIND
    spec_file = "spec.toml"

    def load_spec(self, text: str, path: str) -> LadderSpec:
        return parse_ladder_spec(text, path)

    def jobs(self, spec: LadderSpec, store_path: Path) -> list:
        return ladder_jobs(spec, store_path)


KIND_OBJECT = LadderKind()


def run_stages(
    spec: Any,
    out: str | os.PathLike[str],
    jobs_of: Callable[[Any, Path], list],
    *,
    executor: str = "local",
    workers: int | None = None,
    progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the jobs ``jobs_of(spec, store)`` lists into the store ``out`` (created or resumed),
    again and again while a pass adds jobs (a later stage depends on an earlier one's results),
    until none is left. Returns the passes' records and the store's path."""
    from loraplus_lab.sims.sweep.executors import run
    from loraplus_lab.sims.sweep.store import Store

    store = Store.open_or_create(out, spec)
    passes = []
    while True:
        jobs = jobs_of(spec, store.path)
        todo = [j for j in jobs if j.key not in store.done_keys()]
        if not todo:
            break
        if on_stage is not None:
            on_stage(f"{len(todo)} jobs ({', '.join(sorted({j.stage for j in todo}))})")
        summary = run(store, jobs, executor=executor, workers=workers, progress=progress)
        passes.append(summary.record())
        if summary.jobs_run == 0:
            break
    return {"path": str(store.path), "passes": passes, "jobs": len(jobs_of(spec, store.path))}


def run_ladder(
    spec: LadderSpec,
    out: str | os.PathLike[str],
    *,
    executor: str = "local",
    workers: int | None = None,
    progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage of ``spec`` into the store ``out`` (creating or resuming it) until no
    job is left (:func:`run_stages`). A Hugging Face corpus is fetched first, so that one that
    cannot be had stops the run before anything is written."""
    from loraplus_lab.sims.realmodels.corpus import load_corpus

    for corpus in dict.fromkeys((spec.pretrain["corpus"], spec.finetune["corpus"])):
        if str(corpus).startswith("hf:"):
            load_corpus(corpus)
    return run_stages(
        spec, out, ladder_jobs, executor=executor, workers=workers, progress=progress,
        on_stage=on_stage,
    )  # fmt: skip
