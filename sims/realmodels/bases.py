"""Pretrained width ladders: one base model per width, pretrained on real text, cached and reused.

A base is a rung of a width ladder (:func:`~loraplus_lab.sims.realmodels.ladders.make_model`:
fixed depth and head dimension, width-consistent initialisation, byte vocabulary) pretrained on a
corpus (:mod:`~loraplus_lab.sims.realmodels.corpus`) by AdamW with muP-style per-layer rates: a
hidden matrix of fan-in ``f`` learns at ``lr·n0/f``, embeddings, norms and biases at ``lr``
(Adam's update of a matrix entry is Θ(lr) whatever the width, so ``n0/f`` keeps a matrix's effect
on its output Θ(lr) as the fan-in grows: the same ``lr`` suits every width). The rate warms up
linearly and decays along a cosine to ``lr·final_lr_fraction``; each step draws a fresh batch of
random windows whose offsets depend only on ``(seed, step)``.

The rule for ``lr`` is therefore one base rate for the whole ladder (muP transfer), fixed in the
ladder's spec; :func:`pretrain_base` records the training and validation loss so a table per width
shows whether wider is better, as it should be.

Caching. A base is named by a SHA-256 of everything that determines its weights (the
:class:`BaseSpec`, the corpus's content hash and :data:`BASE_VERSION`) and kept as
``CACHE/<arch>-n<width>-<key>/`` in transformers' ``save_pretrained`` layout
(``config.json``, ``model.safetensors``) plus ``pretrain.json``; a second request loads it.
Pretraining writes a checkpoint (weights and optimizer state as safetensors, the step in JSON)
into ``<folder>.partial/`` every ``checkpoint_every`` steps, each file written to a temporary name
and renamed; after a kill the next call resumes from the last checkpoint, and the result is
bit-identical to an uninterrupted run (one torch thread; the batches depend only on the step).
The finished folder appears by one rename, so a folder that exists is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.files import atomic_write, partial_dir, publish_dir
from loraplus_lab.sims.realmodels import corpus as corpora
from loraplus_lab.sims.realmodels.ladder_config import (  # noqa: F401 - re-exported
    BASE_VERSION,
    CACHE_ENV,
    BaseSpec,
    default_cache,
    lr_factor,
)
from loraplus_lab.sims.realmodels.ladders import make_model

_SALT_PRETRAIN = 0x50524554  # "PRET": seeds the pretraining batches


def mup_param_groups(model: nn.Module, lr: float, n0: int) -> list[dict[str, Any]]:
    """AdamW groups with muP-style rates: hidden and readout matrices ``lr·n0/fan_in``,
    embeddings, norms and biases ``lr``."""
    from transformers.pytorch_utils import Conv1D

    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, Conv1D)) and mod.weight.requires_grad:
            fan_in = mod.weight.shape[1] if isinstance(mod, nn.Linear) else mod.weight.shape[0]
            seen.add(id(mod.weight))
            groups.append(
                {"params": [mod.weight], "lr": lr * n0 / fan_in, "base_lr": lr * n0 / fan_in}
            )
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.append({"params": rest, "lr": lr, "base_lr": lr})
    return groups


def precision(dtype: torch.dtype, device: torch.device) -> tuple[torch.dtype, Any]:
    """Parameter dtype and forward context for a computation dtype: float32 and float64 run as
    they are; bfloat16 keeps float32 parameters (adapters, optimizer state) and runs the forward
    passes under ``torch.autocast`` (bf16 matrix products), as mixed-precision training does."""
    if dtype == torch.bfloat16:
        return torch.float32, torch.autocast(device.type, dtype=torch.bfloat16)
    return dtype, contextlib.nullcontext()


def lm_loss(logits: torch.Tensor, tokens: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Mean next-token cross-entropy (nats per byte) of each of ``groups`` equal blocks of the
    batch: ``logits (G·b, L, V)`` for ``tokens (G·b, L)``; returns ``(G,)``."""
    lg = logits[:, :-1].reshape(-1, logits.shape[-1])
    if lg.dtype in (torch.float16, torch.bfloat16):
        lg = lg.float()
    target = tokens[:, 1:].reshape(-1)
    return F.cross_entropy(lg, target, reduction="none").view(groups, -1).mean(1)


@torch.no_grad()
def eval_loss(
    model: nn.Module, windows: torch.Tensor, *, chunk: int = 64, ctx: Any = None
) -> float:
    """Mean next-token loss of ``model`` over the token ``windows`` (in chunks of rows, under the
    forward context ``ctx``)."""
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], chunk):
        w = windows[i : i + chunk]
        with ctx if ctx is not None else contextlib.nullcontext():
            loss = lm_loss(model(input_ids=w).logits, w)
        total += float(loss) * w.shape[0]
        count += w.shape[0]
    return total / count


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2))


def _atomic_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                meta[f"{pid}.{k}"] = v
    return tensors, meta


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = opt.state_dict()
    new_state: dict[int, dict[str, Any]] = {}
    for name, v in {**tensors, **meta}.items():
        pid, _, k = name.partition(".")
        new_state.setdefault(int(pid), {})[k] = v
    state["state"] = new_state
    opt.load_state_dict(state)


def _build(spec: BaseSpec) -> nn.Module:
    return make_model(
        spec.arch,
        spec.width,
        seed=spec.seed,
        layers=spec.layers,
        head_dim=spec.head_dim,
        vocab=corpora.VOCAB,
        context=spec.context,
        n0=spec.n0,
    )


def pretrain_base(
    spec: BaseSpec,
    *,
    cache: str | os.PathLike[str] | None = None,
    corpus: corpora.Corpus | None = None,
    checkpoint_every: int = 100,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> Path:
    """The folder of the pretrained base of ``spec`` (pretrained now unless cached).

    Args:
        spec: the base.
        cache: cache root (default :func:`default_cache`).
        corpus: the loaded corpus ``spec.corpus`` (loaded here when not given).
        checkpoint_every: steps between checkpoints of an unfinished run.
        progress: called with ``(step, steps)`` after each step.
        stop_after: stop (leaving the checkpoint) after this many steps of this call — for tests
            of resumption; the folder is then not finished.

    Returns:
        The finished folder, loadable with :func:`load_base` (or ``from_pretrained``).
    """
    cache = Path(cache) if cache is not None else default_cache()
    corpus = corpus if corpus is not None else corpora.load_corpus(spec.corpus)
    if corpus.name != spec.corpus:
        raise InputError(f"corpus {corpus.name!r} given for a base of {spec.corpus!r}")
    folder = spec.folder(cache, corpus.sha256)
    if (folder / "pretrain.json").is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    device = torch.device(spec.device)
    param_dtype, ctx = precision(getattr(torch, spec.dtype), device)
    model = _build(spec).to(device=device, dtype=param_dtype)
    opt = torch.optim.AdamW(
        mup_param_groups(model, spec.lr, spec.n0),
        betas=(0.9, 0.95),
        eps=1e-8,
        weight_decay=spec.weight_decay,
    )
    start, losses, seconds = 0, [], 0.0
    if (partial / "state.json").is_file():
        from safetensors.torch import load_file

        state = json.loads((partial / "state.json").read_text())
        model.load_state_dict(load_file(str(partial / "model.safetensors"), device=str(device)))
        optim = load_file(str(partial / "optimizer.safetensors"), device=str(device))
        _load_optimizer(opt, optim, state["optimizer"])
        start, losses, seconds = state["step"], state["losses"], state["seconds"]
    val = torch.from_numpy(corpora.fixed_windows(corpus.val, spec.context, spec.val_windows))
    val = val.to(device)
    model.train()
    t0 = time.perf_counter()
    done_here = 0
    for step in range(start, spec.steps):
        factor = lr_factor(step, spec.steps, spec.warmup, spec.final_lr_fraction)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        batch = torch.from_numpy(
            corpora.random_windows(
                corpus.train, spec.context, spec.batch, (spec.seed, _SALT_PRETRAIN, step)
            )
        ).to(device)
        with ctx:
            loss = lm_loss(model(input_ids=batch).logits, batch)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        done_here += 1
        if progress is not None:
            progress(step + 1, spec.steps)
        last = step + 1 == spec.steps
        stopping = stop_after is not None and done_here >= stop_after
        if not last and ((step + 1) % checkpoint_every == 0 or stopping):
            tensors, meta = _optimizer_tensors(opt)
            _atomic_safetensors(partial / "model.safetensors", model.state_dict())
            _atomic_safetensors(partial / "optimizer.safetensors", tensors)
            _atomic_json(
                partial / "state.json",
                {
                    "step": step + 1,
                    "losses": losses,
                    "optimizer": meta,
                    "seconds": seconds + time.perf_counter() - t0,
                },
            )
        if stopping and not last:
            return partial
    model.eval()
    record = {
        "spec": asdict(spec),
        "version": BASE_VERSION,
        "key": spec.key(corpus.sha256),
        **corpus.describe(),
        "train_loss": losses,
        "final_train_loss": float(np.mean(losses[-max(1, spec.steps // 20) :])),
        "val_loss": eval_loss(model, val, ctx=ctx),
        "seconds": seconds + time.perf_counter() - t0,
        "torch": torch.__version__,
    }
    staging = partial_dir(folder)
    with _no_hub_bars():
        model.save_pretrained(staging, safe_serialization=True)
    _atomic_json(staging / "pretrain.json", record)
    publish_dir(staging, folder)
    shutil.rmtree(partial, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _no_hub_bars() -> Iterator[None]:
    """transformers' progress bars off (loading or writing a small base, once per job, would
    bury the ladder's own progress), then as they were."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def load_base(folder: str | os.PathLike[str]) -> nn.Module:
    """A pretrained base from its folder (eval mode, float32, every parameter frozen)."""
    from loraplus_lab.sims.realmodels.models import load_model

    with _no_hub_bars():
        model = load_model(folder, task="causal-lm")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def base_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The pretraining record (``pretrain.json``) of a finished base."""
    return json.loads((Path(folder) / "pretrain.json").read_text())
