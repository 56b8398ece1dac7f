"""The LoRA coordinate check on real transformers: feature-update magnitudes across widths.

For every PEFT LoRA layer (``W = W* + s·B·A``) forward hooks record, on a fixed probe batch and
after every optimizer step ``t``, the mean absolute value per coordinate (``abs().mean()``, as
microsoft/mup's coordinate check) of

- ``Z``: the layer's input; ``Z_A = A·Z``; ``Z_B = s·B·Z_A`` (the LoRA branch's output);
- ``delta1 = s·B_{t−1}(Z_A^t − Z_A^{t−1})`` (A moved, B held), ``delta2 = s·(B_t − B_{t−1})
  Z_A^{t−1}`` (B moved), ``delta3 = s·(B_t − B_{t−1})(Z_A^t − Z_A^{t−1})`` (cross term);
- ``dZ_B = Z_B^t − Z_B^{t−1}`` and ``dZ = Z^t − Z^{t−1}``.

Input convention. In a deep network the probe's input to a layer changes between steps too
(earlier layers moved). ``Z_A^t = A_t·Z^t`` uses the probe's *current* input and
``Z_A^{t−1} = A_{t−1}·Z^{t−1}`` the previous one, so ``δ¹ = s·B_{t−1}(A_t Z^t − A_{t−1} Z^{t−1})``
contains the upstream change ``A_{t−1}(Z^t − Z^{t−1})`` besides the layer's own ``ΔA·Z^t``. With
this convention ``δ¹ + δ² + δ³ = s·B_t Z_A^t − s·B_{t−1} Z_A^{t−1} = ΔZ_B`` holds exactly (every
coordinate, to round-off), which the tests check in float64; the statistic ``dZ`` shows how much
of the change comes from upstream.

The statistics can use a fixed strided sample of each layer's coordinates (``max_coords``,
default 256 in :func:`run_coordcheck`): coordinates are exchangeable at initialisation, the
sample mean estimates the per-coordinate mean, and the hooks' cost stops growing with the width.

The probe batch is the (fixed) training batch: the hooks read the features in the forward pass of
each training step, before its update, so ``step t`` are the features at the parameters after
``t`` updates, and one extra forward (no gradient) gives the last step. Recording adds no
forward pass to the training steps: the overhead is the hooks' arithmetic
(``benchmarks/bench_coordcheck.py`` measures it).

Parametrizations are :class:`loraplus_lab.sims.params.Parametrization` objects or preset names. The
default comparison is ``lora-fixed`` (equal rates ``η_A = η_B = lr`` held fixed across widths:
under Adam ``δ¹`` grows like ``n``) against ``loraplus`` (``η_A = lr·n0/n``, ``η_B = ratio·lr``:
``δ¹`` and ``δ²`` flat), while ``Z`` stays flat as the control. Predicted exponents are the toy's
exponent calculus (``loraplus_lab.theory.gamma`` through
:func:`loraplus_lab.sims.measure.predicted_exponents`) applied layer by layer.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from loraplus_lab.sims.checks import InputError, choice, positive_int
from loraplus_lab.sims.params import DEFAULT_N0, PRESETS, Parametrization, preset
from loraplus_lab.sims.realmodels.ladders import (
    DEFAULT_HEAD_DIM,
    DEFAULT_VOCAB,
    check_arch,
    check_width,
    iter_lora_layers,
    layer_coordinates,
    lm_batch,
    lora_model,
    make_model,
    pretrain,
)
from loraplus_lab.sims.realmodels.optimizer import create_loraplus_optimizer

STATS = ("Z", "Z_A", "Z_B", "delta1", "delta2", "delta3", "dZ_B", "dZ")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT_PARAMS = ("lora-fixed", "loraplus")
# order of the statistics in one hook's record (first recorded step: no δ's)
_M_STATS = ("Z_B", "delta1", "delta2", "delta3", "dZ_B")
_FIRST_STATS = ("Z", "Z_A", "Z_B")
_LATER_STATS = ("Z", "Z_A", "dZ", *_M_STATS)
MODEL_LAYER_TYPE = "model"
COLUMNS = [
    "arch",
    "param",
    "width",
    "seed",
    "step",
    "layer",
    "layer_type",
    "stat",
    "value",
    "diverged",
]

#: Coordinate-check statistic → the exponent calculus's quantity (see
#: ``loraplus_lab.sims.measure``).
_THEORY_STAT = {
    "delta1": "delta1",
    "delta2": "delta2",
    "delta3": "delta3",
    "Z_A": "za_mean_abs",
    "Z_B": "zb_mean_abs",
    "loss": "loss",
}


# ------------------------------------------------------------------------------------ the probe


class _LayerState:
    """Previous-step tensors of one LoRA layer (on the sampled coordinates)."""

    __slots__ = ("z", "za", "b", "bza", "z_in", "seen", "idx_in", "idx_out")

    def __init__(self) -> None:
        self.z: torch.Tensor | None = None
        self.za: torch.Tensor | None = None
        self.b: torch.Tensor | None = None  # B (unscaled)
        self.bza: torch.Tensor | None = None  # B·Z_A (unscaled)
        self.z_in: torch.Tensor | None = None  # current forward's input (set by lora_A's hook)
        self.seen = False
        self.idx_in = slice(None)
        self.idx_out = slice(None)


def _sample(size: int, max_coords: int | None) -> slice:
    """Every ``k``-th coordinate, ``k = ceil(size / max_coords)`` (a strided view, no copy)."""
    if max_coords is None or size <= max_coords:
        return slice(None)
    return slice(None, None, -(-size // max_coords))


class LoraCoordProbe:
    """Forward hooks on every PEFT LoRA layer of ``model`` that record the coordinate check.

    Hooks sit on each layer's ``lora_A[adapter]`` (input ``Z``) and ``lora_B[adapter]`` (input
    ``Z_A``, output ``B·Z_A``), so nothing of the forward is recomputed; they only record inside
    :meth:`recording`. Each recorded forward compares with the previously recorded one (the
    previous step); the first has no δ's. The arithmetic is done without the factor ``s``, which
    :meth:`rows` applies to the sums.

    Args:
        model: a PEFT model with LoRA layers (``lora_dropout`` must be 0, or the model in eval
            mode).
        adapter: the adapter name.
        keep_tensors: also keep the last step's tensors (``Z_B``, previous ``Z_B``, the δ's,
            scaled by ``s``) in :attr:`tensors`, for checking ``δ¹+δ²+δ³ = ΔZ_B``.
        max_coords: statistics over a fixed, evenly strided sample of at most this many
            coordinates of each layer's input and output (every coordinate of narrower layers);
            ``None``: every coordinate. Coordinates of a layer are exchangeable at
            initialisation, so the sample mean estimates the per-coordinate mean while the cost
            stops growing with the width.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        adapter: str = "default",
        keep_tensors: bool = False,
        max_coords: int | None = None,
    ):
        if max_coords is not None:
            max_coords = positive_int("max_coords", max_coords)
        self.layers: dict[str, nn.Module] = dict(iter_lora_layers(model, adapter))
        if not self.layers:
            raise InputError("the model has no PEFT LoRA layers to probe")
        for name, layer in self.layers.items():
            drop = layer.lora_dropout[adapter]
            if not isinstance(drop, nn.Identity) and drop.training:
                raise InputError(f"LoRA dropout is active in {name}: use lora_dropout=0 or eval()")
        self.adapter = adapter
        self.keep_tensors = keep_tensors
        self.max_coords = max_coords
        self.coords = {name: layer_coordinates(name) for name in self.layers}
        self.scales = {name: float(layer.scaling[adapter]) for name, layer in self.layers.items()}
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        self._state = {name: _LayerState() for name in self.layers}
        self._step: int | None = None
        self._records: list[tuple[str, int, bool, list[torch.Tensor], torch.Tensor, tuple]] = []
        self._handles: list[Any] = []
        for name, layer in self.layers.items():
            self._handles.append(layer.lora_A[adapter].register_forward_hook(self._hook_a(name)))
            self._handles.append(layer.lora_B[adapter].register_forward_hook(self._hook_b(name)))

    def _hook_a(self, name: str) -> Callable[..., None]:
        st = self._state[name]

        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._step is None:
                return
            z = inputs[0].detach()
            if st.z is None:
                st.idx_in = _sample(z.shape[-1], self.max_coords)
            st.z_in = z[..., st.idx_in]

        return hook

    def _hook_b(self, name: str) -> Callable[..., None]:
        st = self._state[name]
        scale = self.scales[name]

        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self._step is None:
                return
            if st.seen:
                raise InputError(f"LoRA layer {name} ran twice in one recorded forward")
            st.seen = True
            with torch.no_grad():
                z, za, w = st.z_in, inputs[0].detach(), mod.weight.detach()
                first = st.za is None
                if first:
                    st.idx_out = _sample(w.shape[0], self.max_coords)
                b = w[st.idx_out].clone()  # B_t on the sampled rows, a copy
                # the output-side tensors share one buffer: one reduction for all of them
                buf = output.new_empty((1 if first else 5, *output.shape[:-1], b.shape[0]))
                buf[0].copy_(output.detach()[..., st.idx_out])  # B·Z_A
                small = [z.abs().sum(), za.abs().sum()]
                if not first:
                    dza = za - st.za
                    db = b - st.b
                    torch.matmul(dza, st.b.T, out=buf[1])  # δ¹/s = B_{t−1}(Z_A^t − Z_A^{t−1})
                    torch.matmul(st.za, db.T, out=buf[2])  # δ²/s = (B_t − B_{t−1})Z_A^{t−1}
                    torch.matmul(dza, db.T, out=buf[3])  # δ³/s = (B_t − B_{t−1})ΔZ_A
                    torch.sub(buf[0], st.bza, out=buf[4])  # ΔZ_B/s
                    dz = z - st.z
                    small.append(dz.abs().sum())
                mags = buf.flatten(1).abs().sum(1)  # sums of |·|; rows() scales and divides
                sizes = (z.numel(), za.numel(), buf[0].numel())
                self._records.append((name, self._step, first, small, mags, sizes))
                if self.keep_tensors and not first:
                    self.tensors[name] = {
                        "Z": z,
                        "Z_A": za,
                        "dZ": dz,
                        "Z_B_prev": st.bza * scale,
                        **{k: v * scale for k, v in zip(_M_STATS, buf, strict=True)},
                    }
                st.z, st.za, st.b, st.bza = z, za, b, buf[0]
                st.z_in = None

        return hook

    @contextlib.contextmanager
    def recording(self, step: int) -> Iterator[LoraCoordProbe]:
        """Record the forward passes run inside the block as step ``step``."""
        self._step = int(step)
        for st in self._state.values():
            st.seen = False
        try:
            yield self
        finally:
            self._step = None

    def rows(self) -> list[dict[str, Any]]:
        """The recorded statistics as ``layer, layer_type, step, stat, value`` dicts (clears)."""
        if not self._records:
            return []
        small = torch.stack([v for rec in self._records for v in rec[3]]).double().cpu().tolist()
        mags = torch.cat([rec[4] for rec in self._records]).double().cpu().tolist()
        out = []
        i = j = 0
        for name, step, first, _, _, (nz, nza, nzb) in self._records:
            layer, ltype = self.coords[name]
            s = self.scales[name]
            if first:
                values = [small[i] / nz, small[i + 1] / nza, s * mags[j] / nzb]
                i, j = i + 2, j + 1
            else:
                values = [small[i] / nz, small[i + 1] / nza, small[i + 2] / nz]
                values += [s * m / nzb for m in mags[j : j + 5]]
                i, j = i + 3, j + 5
            for stat, v in zip(_FIRST_STATS if first else _LATER_STATS, values, strict=True):
                out.append(
                    {"layer": layer, "layer_type": ltype, "step": step, "stat": stat, "value": v}
                )
        self._records = []
        return out

    def remove(self) -> None:
        """Detach every hook."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LoraCoordProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ----------------------------------------------------------------------------- parametrizations


def resolve_params(
    parametrizations: Sequence[str | Parametrization],
    *,
    lr: float,
    ratio: float = 1.0,
    n0: int = DEFAULT_N0,
    init: str = "A",
    alpha: float = 16.0,
) -> list[Parametrization]:
    """Parametrization objects from preset names (others pass through unchanged).

    A preset with equal exponents (``lora``, ``lora-fixed``, ``lora-sqrt``) gets
    ``η̃_A = η̃_B = lr``; one with unequal exponents (``loraplus``) ``η̃_A = lr``,
    ``η̃_B = ratio·lr``, so its ``λ(n) = ratio·n/n0`` (``ratio=1``: the two coincide at ``n0``,
    and ``λ = 12`` at GPT-2's 768, near the paper's ``2^4``).
    """
    if not parametrizations:
        raise InputError("parametrizations must name at least one parametrization")
    out = []
    for p in parametrizations:
        if isinstance(p, Parametrization):
            out.append(p)
            continue
        if p not in PRESETS:
            raise InputError(f"unknown parametrization {p!r}; choose one of {', '.join(PRESETS)}")
        c_a, c_b, _ = PRESETS[p]
        out.append(
            preset(
                p,
                eta=lr,
                eta_b=lr if c_a == c_b else lr * ratio,
                n0=n0,
                init=init,
                alpha=alpha,
            )
        )
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise InputError(f"parametrization names must be unique, got {names}")
    return out


def make_optimizer(
    model: nn.Module,
    param: Parametrization,
    width: int,
    *,
    optimizer: str = "adam",
    eps: float = 1e-12,
) -> torch.optim.Optimizer:
    """The optimizer of one coordinate-check run: ``lora_A`` at ``η_A(n)``, ``lora_B`` at
    ``η_B(n)`` (:func:`loraplus_lab.sims.realmodels.optimizer.create_loraplus_optimizer` with
    ``lr = η_A(n)``, ``ratio = η_B(n)/η_A(n)``); Adam's ``ε`` is tiny so that it never caps the
    normalised update at large widths."""
    choice("optimizer", optimizer, OPTIMIZERS)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    kwargs: dict[str, Any] = {} if optimizer == "sgd" else {"eps": eps}
    if optimizer == "adamw":
        kwargs["weight_decay"] = 0.0
    lr_a, lr_b = param.rate_a(width), param.rate_b(width)
    return create_loraplus_optimizer(model, cls, lr=lr_a, ratio=lr_b / lr_a, **kwargs)


# ------------------------------------------------------------------------------------ collection


def train_and_record(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    loss_bound: float = 1e3,
    max_coords: int | None = None,
) -> tuple[list[dict[str, Any]], list[float]]:
    """Train ``model`` on the fixed ``batch`` for ``steps`` steps, recording the coordinate check
    at steps ``0..steps`` (features at the parameters after ``t`` updates).

    A non-finite loss or one above ``loss_bound`` stops the run after recording that step.
    ``max_coords``: see :class:`LoraCoordProbe`.
    Returns ``(rows, losses)``; each row is ``layer, layer_type, step, stat, value``.
    """
    steps = positive_int("steps", steps)
    losses: list[float] = []
    rows: list[dict[str, Any]] = []
    with LoraCoordProbe(model, max_coords=max_coords) as probe:
        for t in range(steps + 1):
            with probe.recording(t):
                if t < steps:
                    loss = model(**batch).loss
                else:
                    with torch.no_grad():
                        loss = model(**batch).loss
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value) or value > loss_bound or t == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        rows = probe.rows()
    return rows, losses


#: ``factory(seed, param)`` → a LoRA-wrapped model on its device (one rung of a ladder).
ModelFactory = Callable[[int, Parametrization], nn.Module]


def lora_ladder(
    arch: str,
    widths: Sequence[int],
    *,
    r: int = 8,
    target_modules: Sequence[str] | None = None,
    pretrain_steps: int = 0,
    n0: int = DEFAULT_N0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> dict[int, ModelFactory]:
    """LoRA-wrapped model factories keyed by width (microsoft/mup's ``coord_check`` idea).

    ``lora_ladder(...)[n](seed, param)`` builds
    :func:`~loraplus_lab.sims.realmodels.ladders.make_model` at width ``n`` from ``seed``
    (pretrained for ``pretrain_steps`` when asked), casts it to ``dtype`` and wraps it with
    :func:`~loraplus_lab.sims.realmodels.ladders.lora_model` using the parametrization's ``init``,
    ``alpha`` and α-rule. The last base model is cached, so calling the same width and seed for
    several parametrizations builds it once.
    """
    check_arch(arch)
    head_dim = int(model_kwargs.get("head_dim", DEFAULT_HEAD_DIM))
    widths = [check_width(n, head_dim) for n in widths]
    if isinstance(pretrain_steps, bool) or pretrain_steps < 0:
        raise InputError(f"pretrain_steps must be an integer ≥ 0, got {pretrain_steps!r}")
    device = torch.device(device)
    cache: dict[tuple[int, int], nn.Module] = {}

    def build(n: int, seed: int, param: Parametrization) -> nn.Module:
        if (n, seed) not in cache:
            cache.clear()
            base = make_model(arch, n, seed=seed, n0=n0, device=device, **model_kwargs)
            if pretrain_steps:
                pretrain(base, pretrain_steps, seed=seed, arch=arch, n0=n0)
            cache[(n, seed)] = base.to(dtype=dtype)
        return lora_model(
            copy.deepcopy(cache[(n, seed)]),
            arch,
            r=r,
            alpha=param.alpha,
            target_modules=target_modules,
            init=param.init,
            seed=seed,
            use_rslora=param.alpha_rule == "rslora",
        ).to(device)

    return {n: functools.partial(build, n) for n in widths}


def collect_coordcheck(
    factories: Mapping[int, ModelFactory],
    batch_fn: Callable[[int], Mapping[str, torch.Tensor]],
    params: Sequence[Parametrization],
    *,
    steps: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    optimizer: str = "adam",
    eps: float = 1e-12,
    loss_bound: float = 1e3,
    max_coords: int | None = 256,
    label: str = "model",
    progress: bool = True,
) -> pd.DataFrame:
    """The coordinate check of any width ladder: ``factories[n](seed, param)`` gives the LoRA
    model, ``batch_fn(seed)`` its fixed training batch (the same at every width, on the model's
    device). Each parametrization × width × seed trains the adapters for ``steps`` steps with
    :func:`make_optimizer` and :func:`train_and_record`. Columns as :func:`run_coordcheck`
    (``arch`` is ``label``)."""
    if not factories:
        raise InputError("widths must name at least one width")
    steps = positive_int("steps", steps)
    if not seeds:
        raise InputError("seeds must name at least one seed")
    choice("optimizer", optimizer, OPTIMIZERS)
    jobs = [(n, s, p) for n in sorted(factories) for s in seeds for p in params]
    bar = tqdm(jobs, desc=f"coordcheck {label}", disable=not progress, file=sys.stderr)
    frames = []
    for n, s, p in bar:
        model = factories[n](s, p)
        opt = make_optimizer(model, p, n, optimizer=optimizer, eps=eps)
        rows, losses = train_and_record(
            model, batch_fn(s), opt, steps, loss_bound=loss_bound, max_coords=max_coords
        )
        df = pd.DataFrame(rows, columns=["layer", "layer_type", "step", "stat", "value"])
        loss_df = pd.DataFrame(
            {
                "layer": -1,
                "layer_type": MODEL_LAYER_TYPE,
                "step": np.arange(len(losses)),
                "stat": "loss",
                "value": losses,
            }
        )
        df = pd.concat([df, loss_df], ignore_index=True)
        bad = [t for t, v in enumerate(losses) if not math.isfinite(v) or v > loss_bound]
        df["diverged"] = df["step"] >= bad[0] if bad else False
        df["arch"], df["param"], df["width"], df["seed"] = label, p.name, n, s
        frames.append(df[COLUMNS])
        del model, opt
    out = pd.concat(frames, ignore_index=True)
    out["diverged"] = out["diverged"].astype(bool)
    out.attrs["parametrizations"] = {p.name: p.to_dict() for p in params}
    out.attrs["config"] = {
        "arch": label,
        "widths": sorted(int(n) for n in factories),
        "steps": steps,
        "seeds": [int(s) for s in seeds],
        "optimizer": optimizer,
        "eps": eps,
        "loss_bound": loss_bound,
        "max_coords": max_coords,
    }
    return out


def run_coordcheck(
    arch: str,
    widths: Sequence[int],
    *,
    steps: int = 5,
    seeds: Sequence[int] = (0, 1, 2),
    parametrizations: Sequence[str | Parametrization] = DEFAULT_PARAMS,
    lr: float = 1e-3,
    ratio: float = 1.0,
    n0: int = DEFAULT_N0,
    init: str = "A",
    r: int = 8,
    alpha: float = 16.0,
    optimizer: str = "adam",
    eps: float = 1e-12,
    layers: int = 2,
    head_dim: int = DEFAULT_HEAD_DIM,
    vocab: int = DEFAULT_VOCAB,
    target_modules: Sequence[str] | None = None,
    batch: int = 2,
    seq: int = 16,
    pretrain_steps: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    loss_bound: float = 1e3,
    max_coords: int | None = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """The LoRA coordinate check of a width ladder: a tidy DataFrame, one row per
    parametrization × width × seed × step × LoRA layer × statistic.

    Every run builds the ladder's model at ``width`` from ``seed`` (:func:`lora_ladder`;
    optionally pretrained for ``pretrain_steps`` on the seed's bigram language), wraps it with
    LoRA (``r``, ``alpha``, ``init`` — a :class:`Parametrization`'s own ``init``/``alpha``
    win), and trains the adapters for ``steps`` steps on one fixed batch (``batch × seq`` tokens
    of a second bigram language of the seed; the same tokens at every width), recording the
    statistics of :class:`LoraCoordProbe`. Rates: ``η_A(n)``, ``η_B(n)`` of each
    parametrization (see :func:`resolve_params` for preset names), with
    :func:`make_optimizer`.

    Columns: ``arch, param, width, seed, step, layer, layer_type, stat, value, diverged``, with
    :data:`STATS` per LoRA layer and a ``loss`` row per step (``layer=-1``,
    ``layer_type="model"``). ``diverged`` marks the step at which the loss went non-finite or
    above ``loss_bound`` (the run stops there). The configuration and the parametrizations are
    in ``df.attrs``.

    The statistics use a fixed strided sample of at most ``max_coords`` coordinates of each
    layer's input and output (:class:`LoraCoordProbe`; ``None`` for every coordinate), which
    keeps the hooks' cost from growing with the width.
    """
    check_arch(arch)
    if not widths:
        raise InputError("widths must name at least one width")
    batch = positive_int("batch", batch)
    seq = positive_int("seq", seq)
    steps = positive_int("steps", steps)
    choice("optimizer", optimizer, OPTIMIZERS)
    factories = lora_ladder(
        arch,
        sorted(set(widths)),
        r=r,
        target_modules=target_modules,
        pretrain_steps=pretrain_steps,
        n0=n0,
        dtype=dtype,
        device=device,
        layers=layers,
        head_dim=head_dim,
        vocab=vocab,
    )
    params = resolve_params(parametrizations, lr=lr, ratio=ratio, n0=n0, init=init, alpha=alpha)
    dev = torch.device(device)

    def batch_fn(seed: int) -> dict[str, torch.Tensor]:
        data = lm_batch(arch, batch, seq, vocab=vocab, seed=seed, chain_seed=seed + 7919)
        return {k: v.to(dev) for k, v in data.items()}

    out = collect_coordcheck(
        factories,
        batch_fn,
        params,
        steps=steps,
        seeds=seeds,
        optimizer=optimizer,
        eps=eps,
        loss_bound=loss_bound,
        max_coords=max_coords,
        label=arch,
        progress=progress,
    )
    out.attrs["config"].update(
        {
            "lr": lr,
            "ratio": ratio,
            "n0": n0,
            "init": init,
            "r": r,
            "alpha": alpha,
            "layers": layers,
            "head_dim": head_dim,
            "vocab": vocab,
            "target_modules": list(target_modules) if target_modules else None,
            "batch": batch,
            "seq": seq,
            "pretrain_steps": pretrain_steps,
            "dtype": str(dtype).replace("torch.", ""),
            "device": str(dev),
        }
    )
    return out


# ----------------------------------------------------------------------------------- analysis


def _params_from_attrs(df: pd.DataFrame) -> list[Parametrization]:
    stored = df.attrs.get("parametrizations", {})
    out = []
    for name in dict.fromkeys(df["param"]):
        if name in stored:
            out.append(Parametrization(**stored[name]))
        elif name in PRESETS:
            out.append(preset(name))
        else:
            raise InputError(f"no definition of parametrization {name!r}: pass params=")
    return out


def predicted_coordcheck(
    params: Sequence[Parametrization], optimizer: str, steps: int
) -> pd.DataFrame:
    """Predicted exponents ``param, step, stat, predicted, predicted_label`` per statistic.

    ``delta1..3``, ``Z_A``, ``Z_B``, ``loss``: the toy's calculus; ``dZ_B``: the largest δ
    exponent; ``Z``: 0 at step 0, and at every step for a parametrization whose predicted
    ``Z_B`` exponent stays ≤ 0 (every branch stays O(1), so later layers' inputs do too).

    The toy has one layer; in a deep model the "current input" convention adds upstream input
    changes. Under Init[A] the toy's ``δ³ = 0`` at step 1 therefore holds only in the first
    LoRA layer: later layers' inputs moved, so their ``δ³`` (and verdict) at step 1 differ.
    """
    from loraplus_lab.sims.measure import predicted_exponents

    pred = predicted_exponents(
        params,
        "adam" if optimizer == "adamw" else optimizer,
        steps,
        quantities=list(dict.fromkeys(_THEORY_STAT.values())),
    )
    back = {v: k for k, v in _THEORY_STAT.items()}
    pred["stat"] = pred["quantity"].map(back)
    pred = pred.drop(columns=["quantity"])
    extra = []
    for p in params:
        pp = pred[pred["param"] == p.name]
        zb_ok = bool((pp.loc[pp["stat"] == "Z_B", "predicted"] <= 0).all())
        for t in range(steps + 1):
            if t == 0 or zb_ok:
                extra.append(
                    {
                        "param": p.name,
                        "step": t,
                        "stat": "Z",
                        "predicted": 0.0,
                        "predicted_label": "0",
                    }
                )
            if t >= 1:
                d = pp[(pp["step"] == t) & pp["stat"].isin(["delta1", "delta2", "delta3"])]
                if len(d):
                    e = float(d["predicted"].max())
                    label = d.loc[d["predicted"].idxmax(), "predicted_label"]
                    extra.append(
                        {
                            "param": p.name,
                            "step": t,
                            "stat": "dZ_B",
                            "predicted": e,
                            "predicted_label": label,
                        }
                    )
    cols = ["param", "step", "stat", "predicted", "predicted_label"]
    return pd.concat([pred[cols], pd.DataFrame(extra, columns=cols)], ignore_index=True)


def coordcheck_slopes(
    df: pd.DataFrame,
    *,
    stats: Sequence[str] | None = None,
    params: Sequence[Parametrization] | None = None,
    optimizer: str | None = None,
    n_boot: int = 999,
    tolerance: float = 0.25,
    seed: int = 0,
) -> pd.DataFrame:
    """Measured exponents across widths per ``param × layer_type × step × stat``, with bootstrap
    intervals over seeds and a verdict against the prediction.

    The value of a layer type is the mean over its layers (blocks) of each seed × width; the
    slope is :func:`loraplus_lab.sims.measure.fit_slopes` (``log2`` of the seed-mean against ``log2
    n``). Diverged entries are left out. Predictions come from :func:`predicted_coordcheck` (the
    parametrizations stored in ``df.attrs`` unless ``params`` is given); ``verdict`` is
    :func:`loraplus_lab.sims.measure.verdict` (the interval read against the prediction and the band
    ``± tolerance``; real models at modest widths are pre-asymptotic, hence a looser default
    than the toy's).

    Columns: ``param, layer_type, step, stat, slope, ci_low, ci_high, zero, n_widths,
    n_diverged, predicted, predicted_label, verdict``.
    """
    from loraplus_lab.sims.measure import compare, fit_slopes

    need = {"param", "layer_type", "step", "stat", "value", "width", "seed", "diverged"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise InputError(f"the coordinate-check results have no column {missing[0]!r}")
    if df.empty:
        raise InputError("the coordinate-check results are empty")
    stats = list(dict.fromkeys(df["stat"])) if stats is None else list(stats)
    d = df[df["stat"].isin(stats)]
    keys = ["param", "layer_type", "step", "seed", "width"]
    agg = d.groupby([*keys, "stat"], sort=False).agg(
        value=("value", "mean"), diverged=("diverged", "any")
    )
    wide = agg["value"].unstack("stat")
    div = agg["diverged"].groupby(level=keys, sort=False).any()
    wide = wide.reindex(columns=stats)
    wide["diverged"] = div.reindex(wide.index).fillna(True).astype(bool)
    wide = wide.reset_index()
    fits = fit_slopes(
        wide,
        stats,
        by=("param", "layer_type", "step"),
        n_boot=n_boot,
        seed=seed,
    )
    # a stat absent at some (group) gives an all-NaN row: drop it
    fits = fits[fits["n_widths"] > 0].reset_index(drop=True)
    if params is None:
        params = _params_from_attrs(df)
    if optimizer is None:
        optimizer = df.attrs.get("config", {}).get("optimizer", "adam")
    pred = predicted_coordcheck(params, optimizer, int(df["step"].max()))
    out = compare(fits, pred.rename(columns={"stat": "quantity"}), tolerance=tolerance)
    return out.rename(columns={"quantity": "stat"})


def headline(
    slopes: pd.DataFrame, *, stats: Sequence[str] = ("Z", "delta1", "delta2"), min_step: int = 2
) -> pd.DataFrame:
    """The summary table: mean slope over steps ``≥ min_step`` per ``param × layer_type × stat``
    (with the smallest ``ci_low`` and largest ``ci_high``), columns pivoted by stat."""
    s = slopes[(slopes["step"] >= min_step) & slopes["stat"].isin(stats) & ~slopes["zero"]]
    g = s.groupby(["param", "layer_type", "stat"]).agg(
        slope=("slope", "mean"), ci_low=("ci_low", "min"), ci_high=("ci_high", "max")
    )
    return g["slope"].unstack("stat").reindex(columns=list(stats))
