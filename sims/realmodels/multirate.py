"""LoRA finetuning of a pretrained base at many rate pairs ``(η_A, η_B)``: the runs behind a
landscape, batched (:func:`finetune_rates`) or one at a time (:func:`finetune_one`).

Every run of one width and seed starts from the same adapters (PEFT's LoRA layers, drawn from the
seed: Init[A] ``B0 = 0``, ``A0 ~ U(±1/√n_in)``) and sees the same batches (random windows of the
finetuning corpus whose offsets depend only on ``(seed, step)``), so runs differ only in their
rates: a landscape's cells are paired comparisons. The optimizer is AdamW with ``η_A`` on every
``A`` and ``η_B`` on every ``B``; ``η_A = 0`` freezes ``A`` (the B-only baseline). Both rates follow
one schedule: linear warmup over ``warmup`` steps (factor ``(t+1)/warmup``), then linear decay to
0 at step ``steps``, so every run ends at a low rate as real finetuning does.

What is recorded, in tidy rows (one per configuration × evaluation step), all losses being mean
next-byte cross-entropies in nats over fixed windows of the corpus's validation split (the same
windows for every run):

- ``val_loss``: the validation curve, on ``curve_windows`` windows, at step 0, every
  ``eval_every`` steps and at the end; ``train_loss``: the mean training loss since the
  previous evaluation;
- ``final_loss``: on the larger set of ``eval_windows`` windows, before finetuning (step 0: the
  base's loss) and at the end (the landscape's value);
- on the last row of a run, how far the adapters moved: ``a_change = ‖A_T − A_0‖/‖A_0‖`` and
  ``b_norm = ‖B_T‖`` (Frobenius norms over every LoRA layer together), and ``val_loss_a0``, the
  final loss with every ``A`` put back to ``A_0`` (``B`` kept): ``val_loss_a0 − final_loss`` is the
  part of the gain that needs ``A`` to have moved (the δ¹ and δ³ terms of the feature update), the
  rest is what ``B`` learned on the initial random features ``A_0·x`` (δ²).

A run diverges when its training loss is not finite or exceeds ``divergence_factor`` times the
loss at step 0; it is then frozen, recorded with ``diverged = True`` and the step it happened at,
and its later losses are NaN. The other runs of a batch are unaffected.

The batched path runs ``K`` configurations as one model
(:mod:`~loraplus_lab.sims.realmodels.stacked`); the one-at-a-time path is PEFT's model with
``torch.optim.AdamW``. They compute the same thing (the tests check them against each other in
float64 to 1e-9; in float32 they differ by the summation order of the batched products, about
1e-6 relative).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.realmodels import corpus as corpora
from loraplus_lab.sims.realmodels.bases import lm_loss, precision
from loraplus_lab.sims.realmodels.ladder_config import (  # noqa: F401
    RUN_COLUMNS,
    FinetuneSetup,
    RateConfig,
)
from loraplus_lab.sims.realmodels.ladders import lora_model
from loraplus_lab.sims.realmodels.stacked import StackedAdamW, stack_peft_model, stacked_layers

_SALT_FINETUNE = 0x46494E45  # "FINE": seeds the finetuning batches
_RECORDED = RUN_COLUMNS[:7]


def batch_tokens(stream: np.ndarray, setup: FinetuneSetup, seed: int, step: int) -> torch.Tensor:
    """The training batch of ``step`` for ``seed``: ``(batch, context)`` byte tokens."""
    return torch.from_numpy(
        corpora.random_windows(stream, setup.context, setup.batch, (seed, _SALT_FINETUNE, step))
    )


def validation_tokens(stream: np.ndarray, setup: FinetuneSetup) -> tuple[torch.Tensor, ...]:
    """The fixed validation windows: the curve's ``(curve_windows, context)`` and the final
    loss's ``(eval_windows, context)`` byte tokens."""
    return tuple(
        torch.from_numpy(corpora.fixed_windows(stream, setup.context, n))
        for n in (setup.curve_windows, setup.eval_windows)
    )


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _peft(base: nn.Module, setup: FinetuneSetup, seed: int, dtype: torch.dtype) -> nn.Module:
    model = copy.deepcopy(base).to(precision(dtype, _device(base))[0])
    for p in model.parameters():
        p.requires_grad_(False)
    return lora_model(
        model,
        setup.arch,
        r=setup.r,
        alpha=setup.alpha,
        target_modules=setup.targets_resolved,
        init=setup.init,
        seed=seed,
    )


@torch.no_grad()
def _loss(
    model: nn.Module, windows: torch.Tensor, K: int = 1, rows: int = 64, ctx: Any = None
) -> torch.Tensor:
    """Validation loss of each of the ``K`` stacked configurations (``K = 1``: a plain model),
    over ``windows`` in chunks of ``rows`` windows (under the forward context ``ctx``); float64
    ``(K,)`` on the CPU."""
    total = torch.zeros(K, dtype=torch.float64)
    device = _device(model)
    for i in range(0, windows.shape[0], rows):
        w = windows[i : i + rows].repeat(K, 1).to(device)
        with ctx if ctx is not None else contextlib.nullcontext():
            loss = lm_loss(model(input_ids=w).logits, w, K)
        total += loss.double().cpu() * (w.shape[0] // K)
    return total / windows.shape[0]


class _Rows:
    """Collects the recorded columns of the rows."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {c: [] for c in _RECORDED}

    def add(self, **values: object) -> None:
        for c in _RECORDED:
            self.cols[c].append(values[c])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.cols)


def _finish(
    df: pd.DataFrame,
    setup: FinetuneSetup,
    diverged: np.ndarray,
    diverged_step: np.ndarray,
    a_change: np.ndarray,
    b_norm: np.ndarray,
    loss_a0: np.ndarray,
) -> pd.DataFrame:
    """Per-run columns: the divergence flag and step on every row of a run, the movement and
    A-reset loss on its last row (NaN for a diverged run)."""
    c = df["config"].to_numpy()
    df["diverged"] = diverged[c]
    df["diverged_step"] = diverged_step[c]
    last = (df["step"] == setup.steps).to_numpy()
    for name, values in (("a_change", a_change), ("b_norm", b_norm), ("val_loss_a0", loss_a0)):
        col = np.full(len(df), np.nan)
        col[last] = np.where(diverged, np.nan, values)[c[last]]
        df[name] = col
    for name in ("val_loss", "train_loss", "final_loss"):
        df.loc[diverged[c] & (df["step"] >= diverged_step[c]).to_numpy(), name] = np.nan
    return df[list(RUN_COLUMNS)]


def finetune_rates(
    base: nn.Module,
    setup: FinetuneSetup,
    configs: Sequence[RateConfig],
    *,
    seed: int,
    corpus: corpora.Corpus,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Finetune every configuration of ``configs`` on ``base`` together (one stacked model).

    Args:
        base: the pretrained model (not modified; its weights are copied).
        setup: the shared settings.
        configs: the rate pairs.
        seed: seed of the adapters' initialisation and of the batches.
        corpus: the finetuning corpus (training windows from ``train``, validation from ``val``).
        dtype: computation dtype.
        progress: called with ``(step, steps)`` after each step.

    Returns:
        Tidy rows (see the module docstring), columns :data:`RUN_COLUMNS` (``config`` indexes
        ``configs``).
    """
    configs = list(configs)
    if not configs:
        raise InputError("no rate configuration to run")
    K = len(configs)
    device = _device(base)
    _, ctx = precision(dtype, device)
    peft = _peft(base, setup, seed, dtype)
    curve, final = validation_tokens(corpus.val, setup)
    before = float(_loss(peft, final, ctx=ctx)[0])  # B0 = 0: every configuration starts there
    model = stack_peft_model(peft, K)
    layers = [lay for _, lay in stacked_layers(model)]
    eta_a = [c.eta_a for c in configs]
    eta_b = [c.eta_b for c in configs]
    groups = []
    for lay in layers:
        groups += [(lay.lora_A, eta_a), (lay.lora_B, eta_b)]
    opt = StackedAdamW(groups, betas=setup.betas, eps=setup.eps, weight_decay=setup.weight_decay)
    A0 = [lay.lora_A.detach().clone() for lay in layers]
    evals = set(setup.eval_steps())
    alive = torch.ones(K, dtype=torch.bool, device=device)
    diverged_step = np.full(K, -1)
    rows = _Rows()
    train_sum = torch.zeros(K, dtype=torch.float64, device=device)
    train_count = 0
    loss0 = None

    def record(step: int, curve_loss: torch.Tensor, train: torch.Tensor | None, fin) -> None:
        for k in range(K):
            rows.add(
                config=k,
                eta_a=eta_a[k],
                eta_b=eta_b[k],
                step=step,
                val_loss=float(curve_loss[k]),
                train_loss=float("nan") if train is None else float(train[k]),
                final_loss=float("nan") if fin is None else float(fin[k]),
            )

    record(0, _loss(model, curve, K, ctx=ctx), None, [before] * K)
    for step in range(setup.steps):
        tokens = batch_tokens(corpus.train, setup, seed, step).repeat(K, 1).to(device)
        with torch.enable_grad():
            with ctx:
                per_config = lm_loss(model(input_ids=tokens).logits, tokens, K)
            opt.zero_grad()
            torch.where(alive, per_config, torch.zeros_like(per_config)).sum().backward()
        losses = per_config.detach().double()
        loss0 = losses.clone() if loss0 is None else loss0
        bad = alive & (~torch.isfinite(losses) | (losses > setup.divergence_factor * loss0))
        if bad.any():
            alive &= ~bad
            diverged_step[bad.cpu().numpy()] = step + 1
            for s in opt.slots:  # freeze the diverged configurations from now on
                s.lr[bad] = 0.0
                if s.param.grad is not None:
                    s.param.grad[bad] = 0.0
        opt.step(setup.lr_factor(step))
        train_sum += torch.where(alive, losses, torch.zeros_like(losses))
        train_count += 1
        if progress is not None:
            progress(step + 1, setup.steps)
        if step + 1 in evals:
            last = step + 1 == setup.steps
            fin = _loss(model, final, K, ctx=ctx) if last else None
            record(step + 1, _loss(model, curve, K, ctx=ctx), (train_sum / train_count).cpu(), fin)
            train_sum.zero_()
            train_count = 0
    with torch.no_grad():  # how far the adapters moved, and what A's movement is worth
        pairs = list(zip(layers, A0, strict=True))
        a_num = sum((lay.lora_A - a0).flatten(1).pow(2).sum(1) for lay, a0 in pairs)
        a_den = sum(a0.flatten(1).pow(2).sum(1) for a0 in A0)
        a_change = (a_num / a_den).sqrt().double().cpu().numpy()
        b_norm = sum(lay.lora_B.flatten(1).pow(2).sum(1) for lay in layers).sqrt()
        b_norm = b_norm.double().cpu().numpy()
        moved = [lay.lora_A.detach().clone() for lay in layers]
        for lay, a0 in pairs:
            lay.lora_A.copy_(a0)
        loss_a0 = _loss(model, final, K, ctx=ctx).numpy()
        for lay, a in zip(layers, moved, strict=True):
            lay.lora_A.copy_(a)
    diverged = ~alive.cpu().numpy()
    return _finish(rows.frame(), setup, diverged, diverged_step, a_change, b_norm, loss_a0)


def finetune_one(
    base: nn.Module,
    setup: FinetuneSetup,
    config: RateConfig,
    *,
    seed: int,
    corpus: corpora.Corpus,
    dtype: torch.dtype = torch.float32,
    model_hook: Callable[[nn.Module], None] | None = None,
    step_hook: Callable[[int, nn.Module], None] | None = None,
) -> pd.DataFrame:
    """The same run as one configuration of :func:`finetune_rates`, on PEFT's LoRA model with
    ``torch.optim.AdamW`` (the reference path; also the one the coordinate-check probe attaches
    to: ``model_hook(model)`` is called once before training, ``step_hook(t, model)`` after every
    step). Returns the same columns (``config`` is 0)."""
    device = _device(base)
    _, ctx = precision(dtype, device)
    model = _peft(base, setup, seed, dtype)
    a_params = [p for n, p in model.named_parameters() if "lora_A" in n]
    b_params = [p for n, p in model.named_parameters() if "lora_B" in n]
    if config.eta_a == 0:
        for p in a_params:
            p.requires_grad_(False)
    groups = [{"params": b_params, "lr": config.eta_b, "base_lr": config.eta_b}]
    if config.eta_a > 0:
        groups.insert(0, {"params": a_params, "lr": config.eta_a, "base_lr": config.eta_a})
    opt = torch.optim.AdamW(
        groups, betas=setup.betas, eps=setup.eps, weight_decay=setup.weight_decay, foreach=False
    )
    A0 = [p.detach().clone() for p in a_params]
    curve, final = validation_tokens(corpus.val, setup)
    evals = set(setup.eval_steps())
    rows = _Rows()

    def record(step: int, train: float, fin: float) -> None:
        rows.add(
            config=0,
            eta_a=config.eta_a,
            eta_b=config.eta_b,
            step=step,
            val_loss=float(_loss(model, curve, ctx=ctx)[0]),
            train_loss=train,
            final_loss=fin,
        )

    if model_hook is not None:
        model_hook(model)
    record(0, float("nan"), float(_loss(model, final, ctx=ctx)[0]))
    loss0, train_sum, train_count, dead_at = None, 0.0, 0, -1
    for step in range(setup.steps):
        tokens = batch_tokens(corpus.train, setup, seed, step).to(device)
        with ctx:
            loss = lm_loss(model(input_ids=tokens).logits, tokens)[0]
        value = float(loss.detach().double())
        loss0 = value if loss0 is None else loss0
        if not math.isfinite(value) or value > setup.divergence_factor * loss0:
            dead_at = step + 1
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * setup.lr_factor(step)
        opt.step()
        if step_hook is not None:
            step_hook(step + 1, model)
        train_sum += value
        train_count += 1
        if step + 1 in evals:
            last = step + 1 == setup.steps
            record(
                step + 1,
                train_sum / train_count,
                float(_loss(model, final, ctx=ctx)[0]) if last else math.nan,
            )
            train_sum, train_count = 0.0, 0
    df = rows.frame()
    if dead_at >= 0:
        for step in (s for s in setup.eval_steps() if s > df["step"].max()):
            rows.add(
                config=0,
                eta_a=config.eta_a,
                eta_b=config.eta_b,
                step=step,
                val_loss=math.nan,
                train_loss=math.nan,
                final_loss=math.nan,
            )
        nan = np.array([np.nan])
        return _finish(rows.frame(), setup, np.array([True]), np.array([dead_at]), nan, nan, nan)
    with torch.no_grad():
        a_change = math.sqrt(
            sum(float((p - a0).double().pow(2).sum()) for p, a0 in zip(a_params, A0, strict=True))
            / sum(float(a0.double().pow(2).sum()) for a0 in A0)
        )
        b_norm = math.sqrt(sum(float(p.double().pow(2).sum()) for p in b_params))
        moved = [p.detach().clone() for p in a_params]
        for p, a0 in zip(a_params, A0, strict=True):
            p.copy_(a0)
        loss_a0 = float(_loss(model, final, ctx=ctx)[0])
        for p, a in zip(a_params, moved, strict=True):
            p.copy_(a)
    return _finish(
        df,
        setup,
        np.array([False]),
        np.array([-1]),
        np.array([a_change]),
        np.array([b_norm]),
        np.array([loss_a0]),
    )
