"""The settings of the real-model ladder as plain data, importable without torch (so a spec is
checked in milliseconds): architectures and widths, a pretrained base (:class:`BaseSpec`), the
finetuning runs (:class:`FinetuneSetup`, :class:`RateConfig`) and the cache's location.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loraplus_lab.sims.checks import (
    InputError,
    integer,
    nonnegative,
    positive,
    positive_int,
)
from loraplus_lab.sims.params import DEFAULT_N0, check_init

ARCHS = ("gpt2", "llama", "roberta")
DEFAULT_HEAD_DIM = 32
#: A rung has at least this many attention heads (so the narrowest width is ``MIN_HEADS·head_dim``).
MIN_HEADS = 2

#: Default LoRA target modules per architecture, as in the LoRA+ paper's GLUE scripts.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "roberta": ("query", "value"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}


def check_arch(arch: str) -> str:
    """Validate an architecture name (one of :data:`ARCHS`)."""
    if arch not in ARCHS:
        raise InputError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def check_width(width: int, head_dim: int = DEFAULT_HEAD_DIM) -> int:
    """Validate a width: a multiple of ``head_dim`` with at least :data:`MIN_HEADS` heads."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)):
        raise InputError(f"width must be an integer, got {width!r}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 1:
        raise InputError(f"head_dim must be a positive integer, got {head_dim!r}")
    if width < MIN_HEADS * head_dim:
        raise InputError(
            f"width must be at least {MIN_HEADS * head_dim} ({MIN_HEADS} heads of {head_dim}), "
            f"got {width}"
        )
    if width % head_dim:
        raise InputError(f"width must be divisible by the head dimension {head_dim}, got {width}")
    return int(width)


#: Bump when pretraining's arithmetic changes: cached bases of an older version are not reused.
BASE_VERSION = 1
CACHE_ENV = "LORAPLUS_CACHE"


def default_cache() -> Path:
    """``$LORAPLUS_CACHE`` if set, else ``~/.cache/loraplus-lab``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "loraplus-lab"


@dataclass(frozen=True)
class BaseSpec:
    """Everything that determines a pretrained base's weights (with the corpus's content)."""

    arch: str
    width: int
    corpus: str = "stdlib-code"
    layers: int = 2
    head_dim: int = 16
    context: int = 64
    steps: int = 1000
    batch: int = 16
    lr: float = 2**-6
    warmup: int = 50
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    n0: int = DEFAULT_N0
    seed: int = 0
    val_windows: int = 256
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_arch(self.arch)
        check_width(self.width, self.head_dim)
        if self.dtype not in ("float32", "float64", "bfloat16"):
            raise InputError(f"dtype must be float32, float64 or bfloat16, got {self.dtype!r}")
        for name in ("layers", "context", "steps", "batch", "val_windows"):
            positive_int(f"pretraining {name}", getattr(self, name))
        integer("pretraining warmup", self.warmup, minimum=0)
        positive("pretraining lr", self.lr)
        if not 0 <= self.final_lr_fraction <= 1:
            raise InputError(
                f"final_lr_fraction must lie in [0, 1], got {self.final_lr_fraction!r}"
            )

    def key(self, corpus_sha256: str) -> str:
        """SHA-256 (first 16 hex) of this spec, the corpus content hash and the version."""
        spec = asdict(self)
        for name, default in (("device", "cpu"), ("dtype", "float32")):
            if spec[name] == default:  # the defaults leave the keys of earlier bases unchanged
                del spec[name]
        blob = json.dumps(
            {"spec": spec, "corpus": corpus_sha256, "version": BASE_VERSION}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def folder(self, cache: Path, corpus_sha256: str) -> Path:
        """Where the finished base lives."""
        return Path(cache) / "bases" / f"{self.arch}-n{self.width}-{self.key(corpus_sha256)}"


def lr_factor(step: int, total: int, warmup: int, final: float) -> float:
    """Schedule factor at optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps,
    then a cosine from 1 down to ``final`` at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup - 1, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class FinetuneSetup:
    """What every run of a landscape shares: LoRA, optimizer, schedule, data and evaluation.

    Evaluation: the validation curve on ``curve_windows`` fixed windows every ``eval_every``
    steps; the final loss (and the loss before finetuning) on ``eval_windows`` windows."""

    arch: str = "gpt2"
    r: int = 8
    alpha: float = 8.0
    targets: tuple[str, ...] | None = None
    init: str = "A"
    steps: int = 100
    batch: int = 4
    context: int = 64
    warmup: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eval_every: int = 10
    curve_windows: int = 16
    eval_windows: int = 128
    divergence_factor: float = 2.0
    targets_resolved: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        check_arch(self.arch)
        check_init(self.init)
        for name in (
            "r",
            "steps",
            "batch",
            "context",
            "eval_every",
            "curve_windows",
            "eval_windows",
        ):
            positive_int(name, getattr(self, name))
        integer("warmup", self.warmup, minimum=0)
        if self.warmup >= self.steps:
            raise InputError(f"warmup ({self.warmup}) must be shorter than steps ({self.steps})")
        positive("alpha", self.alpha)
        if not (self.divergence_factor > 1):
            raise InputError(f"divergence_factor must exceed 1, got {self.divergence_factor!r}")
        targets = tuple(self.targets) if self.targets else DEFAULT_TARGETS[self.arch]
        object.__setattr__(self, "targets_resolved", targets)

    def lr_factor(self, step: int) -> float:
        """Schedule factor of optimizer step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        return (self.steps - step) / (self.steps - self.warmup)

    def eval_steps(self) -> list[int]:
        """Steps after which the validation loss is measured (0 = before training)."""
        out = list(range(0, self.steps, self.eval_every))
        return out + [self.steps] if out[-1] != self.steps else out

    def to_dict(self) -> dict:
        """JSON-friendly fields (the resolved targets included)."""
        d = asdict(self)
        d["targets"] = list(self.targets_resolved)
        d.pop("targets_resolved")
        d["betas"] = list(self.betas)
        return d


@dataclass(frozen=True)
class RateConfig:
    """One run's rates: ``η_A`` on every ``A`` (0: ``A`` frozen) and ``η_B`` on every ``B``."""

    eta_a: float
    eta_b: float

    def __post_init__(self) -> None:
        nonnegative("eta_a", self.eta_a)
        positive("eta_b", self.eta_b)


#: What a finetuning run of the ladder records, one row per evaluation (``config``: the run's
#: index in its chunk; ``final_loss``, ``a_change``, ``b_norm``, ``val_loss_a0`` at the last step).
RUN_COLUMNS = (
    "config",
    "eta_a",
    "eta_b",
    "step",
    "val_loss",
    "train_loss",
    "final_loss",
    "diverged",
    "diverged_step",
    "a_change",
    "b_norm",
    "val_loss_a0",
)
