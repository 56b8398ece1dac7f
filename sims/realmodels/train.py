"""Training LoRA / LoRA+ models: a ``transformers.Trainer`` subclass and a plain accelerate loop.

:class:`LoraPlusTrainer` is a ``transformers.Trainer`` whose optimizer is
:func:`loraplus_lab.sims.realmodels.optimizer.create_loraplus_optimizer`: it overrides
``create_optimizer`` (the hook transformers 5.x documents for custom optimizers), takes the
optimizer class and its hyperparameters (betas, eps, fused, ...) from the ``TrainingArguments``
exactly as the stock Trainer does (``optim=``, or ``optimizer_cls_and_kwargs=``), and uses ``η_A =
args.learning_rate``, ``η_B = λ·η_A``, ``weight_decay = args.weight_decay``. The scheduler,
mixed precision, logging and distribution are the Trainer's own.

:func:`train_loop` is a plain loop on ``accelerate.Accelerator``: one optimizer step per batch,
DDP when started with ``accelerate launch`` (on CPU-only machines:
``accelerate launch --multi_gpu --num_processes 2 script.py`` runs two gloo processes),
a tqdm progress bar on the main process, one metrics row per logged step, and checkpoints that
resume bit-identically:

* trainable weights in ``trainable.safetensors`` (``safetensors.torch.save_file``);
* optimizer and scheduler state with ``torch.save``, read back with
  ``torch.load(..., weights_only=True)``;
* each process's RNG states (torch, CUDA, Python, NumPy) in ``rng-<rank>.pt``, same format;
* ``state.json`` (step, seed, process count, trainable names) and ``metrics.csv`` so far.

Bit-identical resumption rests on two rules. The data order of an epoch is a function of
``(seed, epoch)`` only (the sampler is reseeded at every epoch start), and a resumed run skips
the batches already consumed in its epoch. The global RNG is reseeded before every step from
``(seed, step, rank)``, so dropout masks do not depend on what ran before the step.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from loraplus_lab.sims.checks import InputError, positive, positive_int
from loraplus_lab.sims.files import publish_dir
from loraplus_lab.sims.realmodels.optimizer import POLICIES, create_loraplus_optimizer

try:  # the Trainer subclass needs transformers; the loop only needs accelerate
    from transformers import Trainer as _Trainer
except ImportError:  # pragma: no cover - transformers is part of the realmodels extra
    _Trainer = object  # type: ignore[assignment,misc]

CHECKPOINT_PREFIX = "step-"
WEIGHTS_FILE = "trainable.safetensors"
STATE_FILE = "state.json"


# --------------------------------------------------------------------------------------------
# LoRA+ arguments and the Trainer


@dataclass(frozen=True)
class LoraPlusArguments:
    """The LoRA+ hyperparameters besides ``η_A`` and weight decay (which the trainer owns).

    Attributes:
        ratio: ``λ = η_B/η_A`` (> 0); ``1`` is plain LoRA, the paper recommends ``≈ 2^4``.
        policy: ``"theory"`` or ``"peft"`` (see :mod:`loraplus_lab.sims.realmodels.optimizer`).
        lr_embedding: Rate of LoRA on embeddings (``None``: the policy's default).
        lr_other: Rate of the other trainable parameters, e.g. the head (theory policy only).
        fan_in_aware: Scale each ``A``'s rate by ``n_0/fan_in`` (theory policy only).
        base_fan_in: ``n_0`` for ``fan_in_aware``.
    """

    ratio: float = 16.0
    policy: str = "theory"
    lr_embedding: float | None = None
    lr_other: float | None = None
    fan_in_aware: bool = False
    base_fan_in: int | None = None

    def __post_init__(self) -> None:
        positive("loraplus ratio (λ = η_B/η_A)", self.ratio)
        if self.policy not in POLICIES:
            raise InputError(
                f"loraplus policy must be one of {', '.join(POLICIES)}, got {self.policy!r}"
            )
        if self.lr_embedding is not None:
            positive("loraplus lr_embedding", self.lr_embedding)
        if self.lr_other is not None:
            positive("loraplus lr_other", self.lr_other)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON records."""
        return asdict(self)

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`create_loraplus_optimizer` (besides lr, decay)."""
        return {
            "ratio": self.ratio,
            "policy": self.policy,
            "lr_embedding": self.lr_embedding,
            "lr_other": self.lr_other,
            "fan_in_aware": self.fan_in_aware,
            "base_fan_in": self.base_fan_in,
        }


class LoraPlusTrainer(_Trainer):  # type: ignore[misc,valid-type]
    """A ``transformers.Trainer`` that trains with the LoRA+ optimizer.

    Pass the LoRA+ settings either as ``loraplus=LoraPlusArguments(...)`` or as
    ``loraplus_ratio=``, ``loraplus_policy=``, ``loraplus_lr_embedding=``,
    ``loraplus_lr_other=``, ``loraplus_fan_in_aware=``, ``loraplus_base_fan_in=`` keywords
    (keywords override the dataclass); everything else goes to ``transformers.Trainer``. The
    optimizer class and its hyperparameters come from ``args.optim`` (or
    ``optimizer_cls_and_kwargs=``), its rate ``η_A`` from ``args.learning_rate`` and its decay
    from ``args.weight_decay``; the learning-rate scheduler is the Trainer's. With a
    bitsandbytes 8-bit optimizer (``optim="adamw_bnb_8bit"`` and the like) the embedding
    weights keep 32-bit optimizer state, as with the stock Trainer and PEFT.

    ``args.weight_decay`` is honoured (matrices decayed, biases, norms and other 1-D
    parameters not). The LoRA+ authors' own ``LoraPlusTrainer`` reads the decay from the
    optimizer keyword arguments that ``Trainer.get_optimizer_cls_and_kwargs`` returns, which
    never hold it, so it trains every group with ``weight_decay = 0`` whatever
    ``args.weight_decay`` says.

    Raises:
        ValueError: at construction for bad LoRA+ settings (``λ ≤ 0``, unknown policy) or an
            ``optimizers=(optimizer, ...)`` argument (the optimizer is built here); when the
            optimizer is built, for an ``optim`` that is not a ``torch.optim.Optimizer`` class
            (factories, layer-wise optimizers) or a model without trainable LoRA factors.
    """

    def __init__(
        self,
        *args: Any,
        loraplus: LoraPlusArguments | None = None,
        loraplus_ratio: float | None = None,
        loraplus_policy: str | None = None,
        loraplus_lr_embedding: float | None = None,
        loraplus_lr_other: float | None = None,
        loraplus_fan_in_aware: bool | None = None,
        loraplus_base_fan_in: int | None = None,
        **kwargs: Any,
    ) -> None:
        base = asdict(loraplus) if loraplus is not None else asdict(LoraPlusArguments())
        overrides = {
            "ratio": loraplus_ratio,
            "policy": loraplus_policy,
            "lr_embedding": loraplus_lr_embedding,
            "lr_other": loraplus_lr_other,
            "fan_in_aware": loraplus_fan_in_aware,
            "base_fan_in": loraplus_base_fan_in,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        self.loraplus = LoraPlusArguments(**base)
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers and optimizers[0] is not None:
            raise InputError(
                "LoraPlusTrainer builds its own optimizer; pass optimizers=(None, scheduler) "
                "or use transformers.Trainer"
            )
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the LoRA+ optimizer once (transformers 5.x hook; ``model`` defaults to
        ``self.model``)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
                    self.args, opt_model
                )
            if not (
                isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)
            ):
                raise InputError(
                    f"optim {self.args.optim!r} gives {optimizer_cls!r}, not a "
                    "torch.optim.Optimizer class; LoRA+ needs one (e.g. adamw_torch)"
                )
            kwargs = dict(optimizer_kwargs)
            kwargs.pop("lr", None)
            kwargs.pop("weight_decay", None)
            unsupported = [k for k in ("params", "model", "optimizer_dict") if k in kwargs]
            if unsupported:
                raise InputError(
                    f"optim {self.args.optim!r} builds its own parameter groups "
                    f"({unsupported[0]}); LoRA+ cannot be combined with it"
                )
            self.optimizer = create_loraplus_optimizer(
                opt_model,
                optimizer_cls,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                **self.loraplus.optimizer_kwargs(),
                **kwargs,
            )
        return self.optimizer


# --------------------------------------------------------------------------------------------
# accelerate: accelerator, data loader, seeds


def make_accelerator(
    *, seed: int = 0, mixed_precision: str = "no", cpu: bool = False, **kwargs: Any
) -> Any:
    """An ``accelerate.Accelerator`` whose data order depends on ``seed`` and the epoch only.

    Under ``accelerate launch`` it joins the launched process group (DDP; gloo on CPU).

    Args:
        seed: Data seed (``DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed)``).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"``.
        cpu: Force the CPU even when a GPU is present.
        **kwargs: Further ``Accelerator`` arguments.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=int(seed))
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    if launched and not gpu:
        cpu = True  # accelerate joins a multi-CPU (gloo) process group only when told cpu=True
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu, dataloader_config=config, **kwargs)


def make_dataloader(
    dataset: Any,
    tokenizer: Any,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    pad_to_multiple_of: int | None = None,
) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over a tokenized dataset, padding each batch with ``tokenizer``.

    The shuffled order is drawn from a generator seeded with ``seed``; :func:`train_loop`
    reseeds it from ``(seed, epoch)`` at every epoch start.
    """
    from transformers import DataCollatorWithPadding

    positive_int("batch_size", batch_size)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of),
        generator=generator,
        num_workers=0,
    )


_MASK63 = (1 << 63) - 1


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from integers (SplitMix64-style mixing)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & _MASK63


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global RNG for optimizer step ``step`` (0-based) on process ``rank``."""
    return _mix(seed, 1, step, rank)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the data order of ``epoch`` (the same on every process)."""
    return _mix(seed, 2, epoch)


def _base_samplers(dataloader: Any) -> Iterator[Any]:
    """Every sampler object reachable from a (possibly accelerate-wrapped) data loader."""
    seen: set[int] = set()
    stack = [dataloader]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.utils.data.Sampler):
            yield obj
        for attr in ("sampler", "batch_sampler", "base_dataloader"):
            child = getattr(obj, attr, None)
            if child is not None and child is not obj:
                stack.append(child)


def _start_epoch(dataloader: Any, seed: int, epoch: int) -> None:
    """Make the data order of ``epoch`` a function of ``(seed, epoch)`` only."""
    from accelerate.data_loader import SeedableRandomSampler

    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    for sampler in _base_samplers(dataloader):
        if isinstance(sampler, SeedableRandomSampler):
            sampler.set_epoch(epoch)  # reseeds itself from data_seed + epoch
        elif isinstance(sampler, torch.utils.data.RandomSampler):
            if sampler.generator is None:
                sampler.generator = torch.Generator()
            sampler.generator.manual_seed(epoch_seed(seed, epoch))


# --------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values, loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (restores the global state saved above)
        (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by name, detached, contiguous, on the CPU."""
    return {
        name: p.detach().contiguous().cpu()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def latest_checkpoint(path: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder with the highest step under ``path`` (or ``path`` itself)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = sorted(
        (p for p in path.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()),
        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
    )
    return found[-1] if found else None


def save_checkpoint(
    directory: str | os.PathLike[str],
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any | None,
    step: int,
    seed: int,
    rows: list[dict[str, Any]],
) -> Path:
    """Write ``directory/step-<step>`` atomically (a temporary folder renamed when complete).

    The main process writes weights, optimizer, scheduler, state and metrics; every process
    writes its RNG state. All processes must call this.
    """
    from safetensors.torch import save_file

    root = Path(directory)
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        weights = trainable_state(accelerator.unwrap_model(model))
        save_file(weights, str(tmp / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        pd.DataFrame(rows).to_csv(tmp / "metrics.csv", index=False)
        state = {
            "step": step,
            "seed": seed,
            "num_processes": accelerator.num_processes,
            "trainable": sorted(weights),
            "scheduler": scheduler is not None,
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    accelerator: Any,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any | None,
    seed: int,
) -> tuple[int, list[dict[str, Any]]]:
    """Restore a checkpoint written by :func:`save_checkpoint`; return ``(step, metric rows)``.

    Raises:
        ValueError: one line, when the checkpoint is missing or belongs to another run (other
            seed, process count or trainable parameters, scheduler present/absent).
    """
    from safetensors.torch import load_file

    found = latest_checkpoint(path)
    if found is None:
        raise InputError(f"resume_from: no checkpoint ({STATE_FILE}) under {path}")
    state = json.loads((found / STATE_FILE).read_text())
    if state["seed"] != seed:
        raise InputError(f"resume_from: {found} was written with seed {state['seed']}, not {seed}")
    if state["num_processes"] != accelerator.num_processes:
        raise InputError(
            f"resume_from: {found} was written by {state['num_processes']} processes, "
            f"this run has {accelerator.num_processes}"
        )
    if bool(state.get("scheduler")) != (scheduler is not None):
        raise InputError(f"resume_from: {found}: scheduler presence differs from this run")
    rng_file = found / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise InputError(f"resume_from: {found} lacks {rng_file.name}")
    unwrapped = accelerator.unwrap_model(model)
    params = {n: p for n, p in unwrapped.named_parameters() if p.requires_grad}
    weights = load_file(str(found / WEIGHTS_FILE))
    if sorted(weights) != sorted(params):
        extra = sorted(set(weights) ^ set(params))
        raise InputError(
            f"resume_from: {found}: trainable parameters differ from this model's (e.g. {extra[0]})"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(device=p.device, dtype=p.dtype))
    optimizer.load_state_dict(torch.load(found / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(found / "scheduler.pt", weights_only=True))
    _set_rng_state(torch.load(rng_file, weights_only=True))
    rows: list[dict[str, Any]] = []
    metrics = found / "metrics.csv"
    if metrics.is_file() and metrics.stat().st_size > 1:
        try:
            rows = pd.read_csv(metrics).to_dict("records")
        except pd.errors.EmptyDataError:
            rows = []
    return int(state["step"]), rows


# --------------------------------------------------------------------------------------------
# the loop


def _group_lrs(optimizer: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", f"group{i}"))
        out[f"lr/{name}"] = float(group["lr"])
    return out


def train_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataloader: torch.utils.data.DataLoader,
    *,
    steps: int,
    accelerator: Any | None = None,
    scheduler: Any | None = None,
    log_every: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_grad_norm: float | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    loss_bound: float | None = None,
) -> pd.DataFrame:
    """Train ``steps`` optimizer steps with accelerate; return one metrics row per logged step.

    Args:
        model: A model whose forward takes the batch's keys and returns ``.loss``.
        optimizer: Its optimizer (e.g. :func:`create_loraplus_optimizer`).
        dataloader: Batches of tensors; epochs repeat until ``steps`` are done. Use
            :func:`make_dataloader` (or ``shuffle=False``) for resumable data order.
        steps: Total optimizer steps (a resumed run continues up to the same total).
        accelerator: Default :func:`make_accelerator` with ``seed``. Under
            ``accelerate launch`` each process runs this function; gradients are averaged
            by DDP and parameters stay identical across processes.
        scheduler: A learning-rate scheduler stepped once per optimizer step (not prepared by
            accelerate, so the schedule is in optimizer steps whatever the process count).
        log_every: Record (and pass to ``on_log``) every ``log_every``-th step and the last.
        checkpoint_dir: Where checkpoints go (``<dir>/step-<step>``).
        checkpoint_every: Checkpoint every this many steps (and after the last step).
        resume_from: A checkpoint folder, or a ``checkpoint_dir`` (its latest checkpoint).
        seed: Seeds the data order per epoch and the global RNG per step (dropout).
        max_grad_norm: Clip the global gradient norm (``accelerator.clip_grad_norm_``).
        progress: Show a tqdm bar on the main process.
        on_log: Called on the main process with each recorded row (e.g. to write a CSV).
        loss_bound: Stop as diverged when the loss exceeds it (inf/NaN always do).

    Returns:
        A DataFrame with columns ``step`` (1-based), ``epoch``, ``loss`` (mean over processes),
        ``grad_norm`` (when clipping), ``lr`` (first group), ``lr/<group>`` per parameter
        group (the rates the step used), ``diverged``, ``seconds`` (wall time since the run's
        start); a resumed run's frame includes the rows of the run it resumed.

    Raises:
        InputError: one line for bad arguments or a checkpoint that does not fit this run.
    """
    positive_int("steps", steps)
    positive_int("log_every", log_every)
    if checkpoint_every is not None:
        positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_dir is None:
            raise InputError("checkpoint_every needs checkpoint_dir")
    if max_grad_norm is not None:
        positive("max_grad_norm", max_grad_norm)
    if accelerator is None:
        accelerator = make_accelerator(seed=seed)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    steps_per_epoch = len(dataloader)
    if steps_per_epoch < 1:
        raise InputError("dataloader yields no batch (dataset smaller than one batch?)")

    start, rows = 0, []
    if resume_from is not None:
        start, rows = load_checkpoint(
            resume_from, accelerator=accelerator, model=model, optimizer=optimizer,
            scheduler=scheduler, seed=seed,
        )  # fmt: skip
    from tqdm.auto import tqdm

    bar = tqdm(
        total=steps, initial=min(start, steps), desc="train", dynamic_ncols=True,
        disable=not (progress and accelerator.is_local_main_process),
    )  # fmt: skip
    t0 = time.perf_counter()
    offset = max(rows[-1]["seconds"], 0.0) if rows and "seconds" in rows[-1] else 0.0
    step = start
    epoch, skip = divmod(start, steps_per_epoch)
    model.train()
    diverged = bool(rows and rows[-1].get("diverged"))
    while step < steps and not diverged:
        _start_epoch(dataloader, seed, epoch)
        for i, batch in enumerate(dataloader):
            if i < skip:
                continue
            torch.manual_seed(step_seed(seed, step, accelerator.process_index))
            outputs = model(**batch)
            loss = outputs.loss
            accelerator.backward(loss)
            grad_norm = None
            if max_grad_norm is not None:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            lrs = _group_lrs(optimizer)  # the rates this step uses
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss = float(accelerator.reduce(loss.detach().float(), reduction="mean"))
            diverged = not math.isfinite(mean_loss) or (
                loss_bound is not None and mean_loss > loss_bound
            )
            bar.update(1)
            if step % log_every == 0 or step == steps or diverged:
                row: dict[str, Any] = {"step": step, "epoch": epoch, "loss": mean_loss}
                if grad_norm is not None:
                    row["grad_norm"] = float(grad_norm)
                row["lr"] = next(iter(lrs.values()))
                row.update(lrs)
                row["diverged"] = diverged
                row["seconds"] = offset + time.perf_counter() - t0
                rows.append(row)
                bar.set_postfix(loss=f"{mean_loss:.4g}")
                if on_log is not None and accelerator.is_main_process:
                    on_log(row)
            if checkpoint_dir is not None and (
                (checkpoint_every is not None and step % checkpoint_every == 0)
                or step == steps
                or diverged
            ):
                save_checkpoint(
                    checkpoint_dir, accelerator=accelerator, model=model, optimizer=optimizer,
                    scheduler=scheduler, step=step, seed=seed, rows=rows,
                )  # fmt: skip
            if step >= steps or diverged:
                break
        skip = 0
        epoch += 1
    bar.close()
    return pd.DataFrame(rows)
