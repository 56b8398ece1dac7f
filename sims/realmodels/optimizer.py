"""The LoRA+ optimizer for PEFT LoRA models, and an audit of its parameter groups.

A LoRA layer computes ``W = W* + s·B·A`` with ``A ∈ R^{r×n}``, ``B ∈ R^{m×r}``. LoRA+ (Hayou,
Ghosh, Yu, ICML 2024) trains ``A`` at ``η_A`` and ``B`` at ``η_B = λ·η_A``: with Adam-type
optimizers equal rates are never efficient as the width ``n`` grows, ``η_A = Θ(n⁻¹)``,
``η_B = Θ(1)`` is, so ``λ`` grows like ``n`` (the paper recommends ``λ ≈ 2^4`` at its widths).

:func:`create_loraplus_optimizer` builds the parameter groups from PEFT's module structure (the
``lora_A``/``lora_B`` ``ModuleDict``\\s, the ``lora_embedding_A``/``lora_embedding_B``
``ParameterDict``\\s and the DoRA ``lora_magnitude_vector`` of every
:class:`peft.tuners.lora.layer.LoraLayer`), never from parameter names alone. Two policies:

``"theory"`` (default)
    ========================  ==========================================  ==============
    group                     rate                                        weight decay
    ========================  ==========================================  ==============
    ``lora_A``                ``η_A`` (× ``n_0/fan_in`` if fan-in-aware)  as passed
    ``lora_B``                ``λ·η_A``                                   as passed
    ``lora_embedding``        ``lr_embedding`` (default ``λ·η_A``)        as passed
    ``other``                 ``lr_other`` (default ``η_A``)              as passed
    ``other_no_decay``        ``lr_other`` (default ``η_A``)              0
    ========================  ==========================================  ==============

    ``lora_embedding`` holds both factors of LoRA on embeddings: the input is one-hot, so
    ``ΔZ_A = ΔA·x`` has no sum over the fan-in and ``η_A = Θ(1)`` — the same order as
    ``η_B``. ``other`` holds every remaining trainable matrix (classification heads,
    ``modules_to_save`` copies, trainable base weights); ``other_no_decay`` every 1-D parameter,
    bias and normalisation weight, DoRA magnitudes and ``lora_bias`` included. With
    ``fan_in_aware=True`` there is one ``lora_A[fan_in=k]`` group per distinct fan-in ``k`` at
    ``η_A·n_0/k`` (``n_0 = base_fan_in``, default the smallest LoRA fan-in): a layer with
    fan-in ``4n`` (GPT-2's MLP ``c_proj``) gets ``η_A/4``. At ``λ = 1`` (and default
    ``lr_embedding``/``lr_other``, ``fan_in_aware=False``) every trainable parameter is at
    ``η_A`` with decay on matrices only: vanilla LoRA, bit for bit.

``"peft"``
    PEFT's :func:`peft.optimizers.create_loraplus_optimizer` reproduced exactly (same four
    groups ``groupA``, ``embedding``, ``groupB``, ``groupB_no_decay`` in that order, empty ones
    included, same rates, decays and parameter order) — pitfalls included: every 1-D parameter
    (biases, norms, DoRA magnitudes, heads' biases) is at ``λ·η_A``; other matrices (heads) at
    ``η_A``; embedding LoRA at a fixed ``lr_embedding`` (default ``1e-6``) whatever ``η_A``;
    decay (``weight_decay`` here, PEFT's ``loraplus_weight_decay``) on every group except
    ``groupB_no_decay`` (parameters whose name contains ``"bias"`` or that live in an
    ``nn.LayerNorm``; an RMSNorm weight *is* decayed). Useful for comparisons only.

    The grouping reproduced is that of PEFT 0.21 and later, the floor this package requires
    (``peft>=0.21``; an older PEFT is refused with a ``ValueError``). Up to 0.20 PEFT's
    ``embedding`` group was always empty — it looked up the parameter instead of the layer
    holding it — so both factors of embedding LoRA trained at ``η_A`` in ``groupA``; PEFT 0.21
    moved them to ``embedding`` at ``lr_embedding``. Earlier versions are not reproduced.

Both policies pass ``lr``, ``ratio`` and the other rates to the optimizer as given, as PEFT does:
a numpy scalar stays a numpy scalar (``λ·η_A`` is then computed in its precision) and a 0-d
tensor stays a tensor (torch's optimizers take one on their single-tensor and fused paths). With
a bitsandbytes 8-bit optimizer (``Adam8bit``, ``AdamW8bit``, ``PagedAdam8bit``,
``PagedAdamW8bit``, or a bitsandbytes optimizer with ``optim_bits=8``), every ``nn.Embedding``
weight of the model is registered for 32-bit optimizer state, as PEFT and the stock
``transformers.Trainer`` do (8-bit state is unstable for embeddings).

A model without LoRA layers: ``policy="peft"`` returns PEFT's optimizer (every matrix at
``η_A``, every 1-D parameter at ``λ·η_A``: a full fine-tune with PEFT's pitfalls), as PEFT does;
``policy="theory"`` refuses it with a ``ValueError`` — with no LoRA factor there is no ``η_B``
to set, and the usual cause is a model that was never wrapped with ``peft.get_peft_model``.

Every parameter group carries an extra ``"name"`` key; optimizers ignore it.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from peft.tuners.lora.layer import Embedding as LoraEmbedding
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from loraplus_lab.sims.checks import InputError

__all__ = [
    "POLICIES",
    "OptimizerAudit",
    "create_loraplus_optimizer",
    "format_audit",
    "optimizer_audit",
]

POLICIES = ("theory", "peft")

PEFT_DEFAULT_LR_EMBEDDING = 1e-6  # PEFT's loraplus_lr_embedding default
#: The first PEFT release whose grouping ``policy="peft"`` reproduces (see the module docstring).
PEFT_MIN_VERSION = "0.21"
#: Optimizer class names for which PEFT registers 32-bit state for embeddings.
EIGHT_BIT_NAMES = ("Adam8bit", "AdamW8bit", "PagedAdam8bit", "PagedAdamW8bit")

# Kinds of parameters found in a LoRA layer's adapter dicts.
_LORA_A, _LORA_B, _LORA_EMB, _LORA_BIAS, _DORA_MAG = (
    "lora_A",
    "lora_B",
    "lora_embedding",
    "lora_bias",
    "dora_magnitude",
)
_LORA_FACTORS = (_LORA_A, _LORA_B, _LORA_EMB)


#: A learning rate or decay as PEFT accepts it: a number (Python or numpy) or a 0-d tensor.
Rate = float | np.floating | torch.Tensor


@dataclass(frozen=True)
class _LoraParam:
    kind: str
    fan_in: int | None = None  # lora_A only: the number of inputs summed in ΔZ_A = ΔA·x


# --------------------------------------------------------------------------------------------
# validation


def _positive_finite(name: str, value: object, *, allow_zero: bool = False) -> float:
    """The float value of a rate-like argument, for checks only (the argument itself is passed
    on unchanged): a real number (Python or numpy) or a 0-d real tensor, finite, > 0 (≥ 0)."""
    if isinstance(value, torch.Tensor):
        ok = value.ndim == 0 and (value.is_floating_point() or value.dtype != torch.bool)
        ok = ok and not value.is_complex()
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        need = "a finite number ≥ 0" if allow_zero else "a finite number > 0"
        raise InputError(f"{name} must be {need} (or a 0-d tensor), got {value!r}")
    return v


def _describe(obj: object) -> str:
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__} instance"


def _check_inputs(
    optimizer_cls: object,
    lr: object,
    ratio: object,
    policy: object,
    lr_embedding: object,
    lr_other: object,
    weight_decay: object,
    fan_in_aware: bool,
    base_fan_in: object,
    optimizer_kwargs: dict,
) -> None:
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise InputError(
            "optimizer_cls must be a torch.optim.Optimizer subclass, "
            f"got {_describe(optimizer_cls)}"
        )
    if policy not in POLICIES:
        raise InputError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    _positive_finite("lr (η_A)", lr)
    _positive_finite("ratio (λ = η_B/η_A)", ratio)
    if lr_embedding is not None:
        _positive_finite("lr_embedding", lr_embedding)
    if lr_other is not None:
        _positive_finite("lr_other", lr_other)
    _positive_finite("weight_decay", weight_decay, allow_zero=True)
    if policy == "peft":
        if fan_in_aware:
            raise InputError("fan_in_aware=True needs policy='theory'; PEFT has no per-layer rates")
        if lr_other is not None:
            raise InputError("lr_other needs policy='theory'; PEFT puts other params at η or λ·η")
    if base_fan_in is not None:
        if not fan_in_aware:
            raise InputError(f"base_fan_in={base_fan_in!r} needs fan_in_aware=True")
        if not (isinstance(base_fan_in, numbers.Integral) and base_fan_in > 0) or isinstance(
            base_fan_in, bool
        ):
            raise InputError(f"base_fan_in must be a positive integer, got {base_fan_in!r}")
    bad = sorted(k for k in optimizer_kwargs if k.startswith("loraplus_") or k in ("params",))
    if bad:
        raise InputError(
            f"unexpected optimizer keyword {bad[0]!r}: use weight_decay=/lr_embedding= instead"
        )


# --------------------------------------------------------------------------------------------
# classification


def _tensors(entry: nn.Module | nn.Parameter) -> Iterable[tuple[str, nn.Parameter]]:
    """The parameters held by one adapter entry of a ModuleDict/ParameterDict."""
    if isinstance(entry, nn.Parameter):
        return [("", entry)]
    return entry.named_parameters()


def _lora_params(model: nn.Module) -> dict[int, _LoraParam]:
    """Map ``id(param)`` → its LoRA role, by walking PEFT's LoRA layers (isinstance checks)."""
    roles: dict[int, _LoraParam] = {}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for entry in module.lora_A.values():
            for pname, p in _tensors(entry):
                if pname in ("", "weight"):
                    # A: (r, n) for Linear, (r, c_in, k...) for conv; fan-in = elements per row
                    roles[id(p)] = _LoraParam(_LORA_A, int(p[0].numel()) if p.ndim >= 2 else 1)
                else:
                    roles[id(p)] = _LoraParam(_LORA_BIAS)
        for entry in module.lora_B.values():
            for pname, p in _tensors(entry):
                kind = _LORA_B if pname in ("", "weight") else _LORA_BIAS
                roles[id(p)] = _LoraParam(kind)
        for pdict in (module.lora_embedding_A, module.lora_embedding_B):
            for entry in pdict.values():
                for _, p in _tensors(entry):
                    roles[id(p)] = _LoraParam(_LORA_EMB)
        magnitudes = getattr(module, "lora_magnitude_vector", None)
        if isinstance(magnitudes, nn.ModuleDict):
            for entry in magnitudes.values():
                for _, p in _tensors(entry):
                    roles[id(p)] = _LoraParam(_DORA_MAG)
    return roles


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith("Norm")


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """Parameter name → the module that directly holds it (same names as named_parameters)."""
    owners: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owners.setdefault(f"{mname}.{pname}" if mname else pname, module)
    return owners


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------------------------
# policies


def _theory_groups(
    model: nn.Module,
    trainable: list[tuple[str, nn.Parameter]],
    roles: dict[int, _LoraParam],
    *,
    lr: Rate,
    ratio: Rate,
    lr_embedding: Rate | None,
    lr_other: Rate | None,
    weight_decay: Rate,
    fan_in_aware: bool,
    base_fan_in: int | None,
) -> list[dict]:
    owners = _owners(model)
    lr_emb = lr * ratio if lr_embedding is None else lr_embedding
    lr_oth = lr if lr_other is None else lr_other

    a_params: dict[int, list[nn.Parameter]] = {}  # fan-in (0 when not fan-in-aware) → params
    b_params: list[nn.Parameter] = []
    emb_params: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    other_no_decay: list[nn.Parameter] = []
    for name, p in trainable:
        role = roles.get(id(p))
        kind = role.kind if role is not None else None
        if kind == _LORA_A:
            a_params.setdefault(role.fan_in if fan_in_aware else 0, []).append(p)  # type: ignore[union-attr]
        elif kind == _LORA_B:
            b_params.append(p)
        elif kind == _LORA_EMB:
            emb_params.append(p)
        elif (
            kind in (_LORA_BIAS, _DORA_MAG)
            or p.ndim < 2
            or name.rsplit(".", 1)[-1] == "bias"
            or _is_norm(owners[name])
        ):
            other_no_decay.append(p)
        else:
            other.append(p)

    groups: list[dict] = []
    if fan_in_aware and a_params:
        n0 = min(a_params) if base_fan_in is None else int(base_fan_in)
        for fan_in in sorted(a_params):
            rate = lr if fan_in == n0 else lr * n0 / fan_in
            groups.append(
                {
                    "name": f"{_LORA_A}[fan_in={fan_in}]",
                    "params": a_params[fan_in],
                    "lr": rate,
                    "weight_decay": weight_decay,
                }
            )
    elif a_params:
        groups.append(
            {"name": _LORA_A, "params": a_params[0], "lr": lr, "weight_decay": weight_decay}
        )
    for gname, params, rate, wd in (
        (_LORA_B, b_params, lr * ratio, weight_decay),
        (_LORA_EMB, emb_params, lr_emb, weight_decay),
        ("other", other, lr_oth, weight_decay),
        ("other_no_decay", other_no_decay, lr_oth, 0.0),
    ):
        if params:
            groups.append({"name": gname, "params": params, "lr": rate, "weight_decay": wd})
    return groups


def _layernorm_types() -> tuple[type[nn.Module], ...]:
    """The layer types whose parameters PEFT exempts from decay (transformers' list)."""
    try:
        from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    except ImportError:  # pragma: no cover - older/newer transformers
        return (nn.LayerNorm,)
    return tuple(ALL_LAYERNORM_LAYERS)


def _peft_groups(
    model: nn.Module,
    trainable: list[tuple[str, nn.Parameter]],
    *,
    lr: Rate,
    ratio: Rate,
    lr_embedding: Rate | None,
    weight_decay: Rate,
) -> list[dict]:
    # No decay for names containing "bias" and for anything below a LayerNorm-type child.
    ln_types = _layernorm_types()
    no_decay_prefixes = [
        f"{mname}." for mname, m in model.named_modules() if mname and isinstance(m, ln_types)
    ]

    def decayed(name: str) -> bool:
        return "bias" not in name and not any(name.startswith(q) for q in no_decay_prefixes)

    group_a, embedding, group_b, group_b_no_decay = [], [], [], []
    for name, p in trainable:
        # the tuner layer is two name parts up from a parameter held in one of its dicts
        holder = ".".join(name.split(".")[:-2])
        if holder and isinstance(model.get_submodule(holder), LoraEmbedding):
            embedding.append(p)
        elif "lora_B" in name or p.ndim == 1:
            (group_b if decayed(name) else group_b_no_decay).append(p)
        else:
            group_a.append(p)
    lr_emb = PEFT_DEFAULT_LR_EMBEDDING if lr_embedding is None else lr_embedding
    return [
        {"name": "groupA", "params": group_a, "weight_decay": weight_decay, "lr": lr},
        {"name": "embedding", "params": embedding, "weight_decay": weight_decay, "lr": lr_emb},
        {"name": "groupB", "params": group_b, "weight_decay": weight_decay, "lr": lr * ratio},
        {"name": "groupB_no_decay", "params": group_b_no_decay, "weight_decay": 0.0,
         "lr": lr * ratio},
    ]  # fmt: skip


def _check_peft_version() -> None:
    import peft
    from packaging.version import Version

    if Version(peft.__version__) < Version(PEFT_MIN_VERSION):
        raise InputError(
            f"policy='peft' reproduces PEFT >= {PEFT_MIN_VERSION}, but PEFT {peft.__version__} is "
            "installed (its embedding grouping differs); upgrade peft"
        )


def _is_eight_bit(optimizer_cls: type, optimizer_kwargs: dict) -> bool:
    """Whether PEFT (by class name) or transformers' Trainer (a bitsandbytes optimizer with
    ``optim_bits=8``) would treat ``optimizer_cls`` as an 8-bit optimizer."""
    from_bnb = "bitsandbytes" in (getattr(optimizer_cls, "__module__", "") or "")
    return optimizer_cls.__name__ in EIGHT_BIT_NAMES or (
        from_bnb and optimizer_kwargs.get("optim_bits") == 8
    )


def _embeddings_in_32_bit(model: nn.Module) -> None:
    """Register 32-bit optimizer state for every ``nn.Embedding`` weight with bitsandbytes."""
    import bitsandbytes

    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})


def _accepts(optimizer_cls: type, keyword: str) -> bool:
    try:
        params = inspect.signature(optimizer_cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


# --------------------------------------------------------------------------------------------
# public API


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls: type[torch.optim.Optimizer],
    *,
    lr: Rate,
    ratio: Rate,
    policy: str = "theory",
    lr_embedding: Rate | None = None,
    lr_other: Rate | None = None,
    weight_decay: Rate = 0.0,
    fan_in_aware: bool = False,
    base_fan_in: int | None = None,
    **optimizer_kwargs: object,
) -> torch.optim.Optimizer:
    """An optimizer that trains each LoRA factor at its LoRA+ rate.

    Args:
        model: a PEFT LoRA model (``peft.get_peft_model`` output or any module holding
            :class:`~peft.tuners.lora.layer.LoraLayer`\\s). Only parameters with
            ``requires_grad`` are optimized, each in exactly one group.
        optimizer_cls: a :class:`torch.optim.Optimizer` subclass, e.g. ``torch.optim.AdamW``.
        lr: ``η_A``, the rate of every ``A`` factor: a number or a 0-d tensor, passed to the
            optimizer as given (a numpy scalar keeps its precision in ``λ·η_A``).
        ratio: ``λ = η_B/η_A > 0``; ``B`` factors train at ``λ·η_A``. LoRA+ wants ``λ = Θ(n)``
            (``≈ 2^4`` at the paper's widths); ``λ = 1`` is vanilla LoRA.
        policy: ``"theory"`` (module docstring's table) or ``"peft"`` (PEFT ≥ 0.21's grouping,
            pitfalls included, for comparisons).
        lr_embedding: theory: the rate of both factors of LoRA on embeddings, ``Θ(1)`` since an
            embedding's input is one-hot (default ``λ·η_A``); peft: PEFT's
            ``loraplus_lr_embedding`` (default ``1e-6``).
        lr_other: theory only: the rate of every other trainable parameter (biases, norms,
            heads, DoRA magnitudes, ``modules_to_save``); default ``η_A``.
        weight_decay: theory: applied to LoRA factors and other matrices, never to 1-D
            parameters, biases or norms; peft: PEFT's ``loraplus_weight_decay`` (its groups).
        fan_in_aware: theory only: ``η_A`` of a LoRA layer with fan-in ``k`` becomes
            ``η_A·n_0/k``, since ``ΔZ_A = ΔA·x`` sums over the fan-in.
        base_fan_in: ``n_0``; default the smallest fan-in of a LoRA ``A`` in the model.
        **optimizer_kwargs: passed to ``optimizer_cls`` (betas, eps, ...).

    Returns:
        ``optimizer_cls`` over named parameter groups (extra ``"name"`` key per group); inspect
        it with :func:`optimizer_audit`.

    Raises:
        ValueError: ``λ ≤ 0`` or non-finite, ``lr ≤ 0``, unknown policy, no trainable LoRA
            factor in ``model`` with ``policy="theory"``, ``optimizer_cls`` not an Optimizer
            subclass, a theory-only option with ``policy="peft"``, PEFT older than 0.21 with
            ``policy="peft"``, or ``weight_decay > 0`` for an optimizer without a
            ``weight_decay`` hyperparameter.
    """
    _check_inputs(
        optimizer_cls, lr, ratio, policy, lr_embedding, lr_other, weight_decay,
        fan_in_aware, base_fan_in, optimizer_kwargs,
    )  # fmt: skip
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    roles = _lora_params(model)
    trainable = _trainable(model)
    kwargs = dict(optimizer_kwargs)
    if policy == "peft":
        _check_peft_version()
        groups = _peft_groups(
            model, trainable, lr=lr, ratio=ratio, lr_embedding=lr_embedding,
            weight_decay=weight_decay,
        )  # fmt: skip
    else:
        if not any(id(p) in roles and roles[id(p)].kind in _LORA_FACTORS for _, p in trainable):
            raise InputError(
                f"{type(model).__name__} has no trainable LoRA parameters "
                "(wrap it with peft.get_peft_model(model, LoraConfig(...)) first)"
            )
        groups = _theory_groups(
            model, trainable, roles, lr=lr, ratio=ratio, lr_embedding=lr_embedding,
            lr_other=lr_other, weight_decay=weight_decay, fan_in_aware=fan_in_aware,
            base_fan_in=base_fan_in,
        )  # fmt: skip
        if _accepts(optimizer_cls, "weight_decay"):
            kwargs["weight_decay"] = weight_decay  # so that optimizer.defaults agree
    optimizer = optimizer_cls(groups, lr=lr, **kwargs)
    if float(weight_decay) > 0 and "weight_decay" not in optimizer.defaults:
        raise InputError(
            f"weight_decay={weight_decay} but {optimizer_cls.__name__} has no weight_decay"
        )
    if _is_eight_bit(optimizer_cls, kwargs):
        _embeddings_in_32_bit(model)
    return optimizer


class OptimizerAudit(pd.DataFrame):
    """The DataFrame returned by :func:`optimizer_audit`; ``str()`` is :func:`format_audit`."""

    @property
    def _constructor(self) -> type[pd.DataFrame]:  # derived frames are plain DataFrames
        return pd.DataFrame

    def __str__(self) -> str:
        return format_audit(self)


AUDIT_COLUMNS = ("group", "kind", "n_tensors", "n_scalars", "lr", "weight_decay", "examples")


def optimizer_audit(
    optimizer: torch.optim.Optimizer, model: nn.Module | None = None, *, max_examples: int = 3
) -> OptimizerAudit:
    """One row per parameter group: what trains at which rate and decay.

    Columns: ``group`` (its ``"name"``, or ``group<i>`` for unnamed groups), ``kind`` (the
    name without a ``[fan_in=…]`` suffix), ``n_tensors``, ``n_scalars``, ``lr``,
    ``weight_decay`` and ``examples`` (up to ``max_examples`` parameter names when ``model`` is
    given, else shapes).
    """
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    rows = []
    for i, group in enumerate(optimizer.param_groups):
        gname = str(group.get("name", f"group{i}"))
        params = group["params"]
        labels = [names.get(id(p), "×".join(map(str, p.shape)) or "scalar") for p in params]
        examples = ", ".join(labels[:max_examples])
        if len(labels) > max_examples:
            examples += f", … (+{len(labels) - max_examples})"
        rows.append(
            {
                "group": gname,
                "kind": gname.split("[", 1)[0],
                "n_tensors": len(params),
                "n_scalars": int(sum(p.numel() for p in params)),
                "lr": float(group["lr"]) if "lr" in group else float("nan"),
                "weight_decay": float(group.get("weight_decay", float("nan"))),
                "examples": examples,
            }
        )
    return OptimizerAudit(pd.DataFrame(rows, columns=list(AUDIT_COLUMNS)))


def format_audit(df: pd.DataFrame) -> str:
    """A fixed-width, human-readable table of an :func:`optimizer_audit` frame."""
    if not set(AUDIT_COLUMNS) <= set(df.columns):
        return pd.DataFrame.__str__(df)
    header = ("group", "tensors", "scalars", "lr", "decay", "examples")
    body = [
        (
            str(r.group),
            str(r.n_tensors),
            f"{r.n_scalars:,}",
            f"{r.lr:.4g}",
            f"{r.weight_decay:.4g}",
            str(r.examples),
        )
        for r in df.itertuples(index=False)
    ]
    widths = [max(len(row[j]) for row in [header, *body]) for j in range(len(header))]
    right = (False, True, True, True, True, False)

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        return "  ".join(cells).rstrip()

    total = f"{int(df['n_tensors'].sum())} tensors, {int(df['n_scalars'].sum()):,} scalars"
    rule = "-" * max(len(line(header)), len(total))
    return "\n".join([line(header), rule, *map(line, body), rule, total])
