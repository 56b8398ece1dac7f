"""LoRA finetuning of a pretrained base at many rate pairs ``(η_A, η_B)``: the runs behind a
landscape, batched (:func:`finetune_rates`) or one at a time (:func:`finetune_one`).

Every run of one width and seed starts from the same adapters (PEFT's LoRA layers, drawn from the
seed: Init[A] ``B0 = 0``, ``A0 ~ U(±1/√n_in)``) and sees the same batches (random windows of the
finetuning corpus whose offsets depend only on ``(seed, step)``), so runs differ only in their
rates: a landscape's cells are paired comparisons. The optimizer is AdamW with ``η_A`` on every
``A`` and ``η_B`` on every ``B``; ``η_A = 0`` freezes ``A`` (the B-only baseline). Both rates follow
one schedule: linear warmup over ``warmup`` steps (factor ``(t+1)/warmup``), then linear decay to
0 at step ``steps``, so every run ends at a low rate as real finetuning does.

What is recorded, in tidy rows (one per configuration × evaluation step): the validation loss
(mean next-byte cross-entropy in nats over fixed windows of the corpus's validation split, the
same windows for every run) at step 0, every ``eval_every`` steps and at the end; the mean
training loss since the previous evaluation; and, on the last row of a run, how far the adapters
moved: ``a_change = ‖A_T − A_0‖/‖A_0‖`` and ``b_norm = ‖B_T‖`` (Frobenius norms over every LoRA
layer together) and ``val_loss_a0``, the validation loss with every ``A`` put back to ``A_0`` (``B``
kept), which measures what ``A``'s movement is worth: ``val_loss_a0 − val_loss`` is the part of the
gain that needs ``A`` to have moved (the δ¹ and δ³ terms of the feature update), the rest is what
``B`` learned on the initial random features ``A_0·x`` (δ²).

A run diverges when its training loss is not finite or exceeds ``divergence_factor`` times the
loss at step 0; it is then frozen, recorded with ``diverged = True`` and the step it happened at,
and its later losses are NaN. The other runs of a batch are unaffected.

The batched path runs ``K`` configurations as one model
(:mod:`~loraplus_lab.sims.realmodels.stacked`); the one-at-a-time path is PEFT's model with
``torch.optim.AdamW``. They compute the same thing (the tests check them against each other in
float64 to 1e-9 and report the float32 difference).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from loraplus_lab.sims.realmodels import corpus as corpora
from loraplus_lab.sims.realmodels.bases import lm_loss
from loraplus_lab.sims.realmodels.ladder_config import FinetuneSetup, RateConfig  # noqa: F401
from loraplus_lab.sims.realmodels.ladders import lora_model
from loraplus_lab.sims.realmodels.stacked import StackedAdamW, stack_peft_model, stacked_layers

_SALT_FINETUNE = 0x46494E45  # "FINE": seeds the finetuning batches
COLUMNS = (
    "config",
    "eta_a",
    "eta_b",
    "step",
    "val_loss",
    "train_loss",
    "diverged",
    "diverged_step",
    "a_change",
    "b_norm",
    "val_loss_a0",
)


def batch_tokens(stream: np.ndarray, setup: FinetuneSetup, seed: int, step: int) -> torch.Tensor:
    """The training batch of ``step`` for ``seed``: ``(batch, context)`` byte tokens."""
    return torch.from_numpy(
        corpora.random_windows(stream, setup.context, setup.batch, (seed, _SALT_FINETUNE, step))
    )


def validation_tokens(stream: np.ndarray, setup: FinetuneSetup) -> torch.Tensor:
    """The fixed validation windows: ``(eval_windows, context)`` byte tokens."""
    return torch.from_numpy(corpora.fixed_windows(stream, setup.context, setup.eval_windows))


def _peft(base: nn.Module, setup: FinetuneSetup, seed: int, dtype: torch.dtype) -> nn.Module:
    model = copy.deepcopy(base).to(dtype)
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
def _stacked_val(
    model: nn.Module, val: torch.Tensor, K: int, chunk_tokens: int = 1 << 15
) -> torch.Tensor:
    """Validation loss of each of the ``K`` stacked configurations."""
    rows = max(1, chunk_tokens // (K * val.shape[1]))
    total = torch.zeros(K, dtype=torch.float64)
    for i in range(0, val.shape[0], rows):
        w = val[i : i + rows]
        loss = lm_loss(model(input_ids=w.repeat(K, 1)).logits, w.repeat(K, 1), K)
        total += loss.double() * w.shape[0]
    return total / val.shape[0]


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
        Tidy rows (see the module docstring), columns :data:`COLUMNS` (``config`` indexes
        ``configs``).
    """
    configs = list(configs)
    if not configs:
        raise ValueError("no rate configuration to run")
    K = len(configs)
    model = stack_peft_model(_peft(base, setup, seed, dtype), K)
    layers = [lay for _, lay in stacked_layers(model)]
    eta_a = [c.eta_a for c in configs]
    eta_b = [c.eta_b for c in configs]
    groups = []
    for lay in layers:
        groups += [(lay.lora_A, eta_a), (lay.lora_B, eta_b)]
    opt = StackedAdamW(groups, betas=setup.betas, eps=setup.eps, weight_decay=setup.weight_decay)
    A0 = [lay.lora_A.detach().clone() for lay in layers]
    val = validation_tokens(corpus.val, setup)
    evals = set(setup.eval_steps())
    alive = torch.ones(K, dtype=torch.bool)
    diverged_step = torch.full((K,), -1, dtype=torch.long)
    rows: dict[str, list] = {c: [] for c in COLUMNS[:8]}
    train_sum = torch.zeros(K, dtype=torch.float64)
    train_count = 0
    loss0 = None

    def record(step: int, val_loss: torch.Tensor, train: torch.Tensor | None) -> None:
        for k in range(K):
            dead = not bool(alive[k])
            rows["config"].append(k)
            rows["eta_a"].append(eta_a[k])
            rows["eta_b"].append(eta_b[k])
            rows["step"].append(step)
            rows["val_loss"].append(float("nan") if dead else float(val_loss[k]))
            rows["train_loss"].append(float("nan") if dead or train is None else float(train[k]))
            rows["diverged"].append(dead)
            rows["diverged_step"].append(int(diverged_step[k]))

    record(0, _stacked_val(model, val, K), None)
    for step in range(setup.steps):
        tokens = batch_tokens(corpus.train, setup, seed, step)
        tokensK = tokens.repeat(K, 1)
        with torch.enable_grad():
            per_config = lm_loss(model(input_ids=tokensK).logits, tokensK, K)
            opt.zero_grad()
            torch.where(alive, per_config, torch.zeros_like(per_config)).sum().backward()
        losses = per_config.detach().double()
        if loss0 is None:
            loss0 = losses.clone()
        bad = alive & (~torch.isfinite(losses) | (losses > setup.divergence_factor * loss0))
        if bad.any():
            alive &= ~bad
            diverged_step[bad] = step + 1
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
            record(step + 1, _stacked_val(model, val, K), train_sum / train_count)
            train_sum.zero_()
            train_count = 0
    # how far the adapters moved, and what A's movement is worth
    with torch.no_grad():
        a_num = sum(
            (lay.lora_A - a0).flatten(1).pow(2).sum(1) for lay, a0 in zip(layers, A0, strict=True)
        )
        a_den = sum(a0.flatten(1).pow(2).sum(1) for a0 in A0)
        a_change = (a_num / a_den).sqrt().double()
        b_norm = sum(lay.lora_B.flatten(1).pow(2).sum(1) for lay in layers).sqrt().double()
        moved = [lay.lora_A.detach().clone() for lay in layers]
        for lay, a0 in zip(layers, A0, strict=True):
            lay.lora_A.copy_(a0)
        val_a0 = _stacked_val(model, val, K)
        for lay, a in zip(layers, moved, strict=True):
            lay.lora_A.copy_(a)
    df = pd.DataFrame(rows)
    df["diverged"] = ~alive.numpy()[df["config"].to_numpy()]  # a run's flag, on all its rows
    df["diverged_step"] = diverged_step.numpy()[df["config"].to_numpy()]
    last = df["step"] == setup.steps
    for name, values in (("a_change", a_change), ("b_norm", b_norm), ("val_loss_a0", val_a0)):
        col = np.full(len(df), np.nan)
        vals = np.where(alive.numpy(), values.numpy(), np.nan)
        col[last.to_numpy()] = vals[df.loc[last, "config"].to_numpy()]
        df[name] = col
    return df[list(COLUMNS)]


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
        groups,
        betas=setup.betas,
        eps=setup.eps,
        weight_decay=setup.weight_decay,
        foreach=False,
    )
    A0 = [p.detach().clone() for p in a_params]
    val = validation_tokens(corpus.val, setup)
    evals = set(setup.eval_steps())
    rows: dict[str, list] = {c: [] for c in COLUMNS[:8]}

    def val_loss() -> float:
        with torch.no_grad():
            return float(lm_loss(model(input_ids=val).logits, val)[0].double())

    def record(step: int, v: float, train: float) -> None:
        for name, value in (
            ("config", 0),
            ("eta_a", config.eta_a),
            ("eta_b", config.eta_b),
            ("step", step),
            ("val_loss", v),
            ("train_loss", train),
            ("diverged", False),
            ("diverged_step", -1),
        ):
            rows[name].append(value)

    if model_hook is not None:
        model_hook(model)
    record(0, val_loss(), float("nan"))
    loss0 = None
    train_sum, train_count, dead_at = 0.0, 0, -1
    for step in range(setup.steps):
        tokens = batch_tokens(corpus.train, setup, seed, step)
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
            record(step + 1, val_loss(), train_sum / train_count)
            train_sum, train_count = 0.0, 0
    df = pd.DataFrame(rows)
    if dead_at >= 0:
        rest = [s for s in setup.eval_steps() if s > df["step"].max()]
        extra = pd.DataFrame(
            {
                "config": 0,
                "eta_a": config.eta_a,
                "eta_b": config.eta_b,
                "step": rest,
                "val_loss": np.nan,
                "train_loss": np.nan,
                "diverged": True,
                "diverged_step": dead_at,
            }
        )
        df = pd.concat([df, extra], ignore_index=True)
        df["diverged"] = True
        df["diverged_step"] = dead_at
        for name in ("a_change", "b_norm", "val_loss_a0"):
            df[name] = np.nan
        return df[list(COLUMNS)]
    with torch.no_grad():
        a_change = math.sqrt(
            sum(float((p - a0).double().pow(2).sum()) for p, a0 in zip(a_params, A0, strict=True))
            / sum(float(a0.double().pow(2).sum()) for a0 in A0)
        )
        b_norm = math.sqrt(sum(float(p.double().pow(2).sum()) for p in b_params))
        moved = [p.detach().clone() for p in a_params]
        for p, a0 in zip(a_params, A0, strict=True):
            p.copy_(a0)
        v_a0 = val_loss()
        for p, a in zip(a_params, moved, strict=True):
            p.copy_(a)
    last = df["step"] == setup.steps
    df["a_change"] = np.where(last, a_change, np.nan)
    df["b_norm"] = np.where(last, b_norm, np.nan)
    df["val_loss_a0"] = np.where(last, v_a0, np.nan)
    return df[list(COLUMNS)]
