"""GLUE-style fine-tuning with LoRA (``ratio=1``) or LoRA+: one run.

:func:`finetune` is the whole experiment the LoRA+ paper runs on GLUE: load a model (a local
folder or a Hub name) and a task (``glue/<name>`` or a local CSV/JSONL file), put LoRA adapters
on the paper's target modules (:func:`loraplus_lab.sims.realmodels.models.lora_config_for`), train
them with the LoRA+ optimizer (``η_A = lr``, ``η_B = ratio·lr``) through :class:`LoraPlusTrainer`
or the plain accelerate loop, evaluate on the validation split, and write into ``out``:

``config.json``
    the full configuration (arguments, resolved device/precision/steps, model summary, LoRA
    config, data source, optimizer audit, package versions);
``metrics.csv``
    one row per logged step (``step, epoch, loss, lr, lr/<group>…, grad_norm, diverged``),
    written as training goes;
``summary.json``
    final and evaluation metrics, divergence, wall time.

Everything is validated before anything is written: arguments, the output folder, the model,
the data, the target modules, ``λ > 0`` and the optimizer itself; a bad input raises
:class:`~loraplus_lab.sims.checks.InputError` (a ``ValueError``) with a one-line message and
leaves ``out`` untouched. A run writes into a hidden sibling folder and renames it to ``out`` when
done, so ``out`` is never half-written.

A grid of ``(η_A, η_B)`` points, one run each, is
:func:`loraplus_lab.sims.realmodels.grid.finetune_grid`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from loraplus_lab.sims.checks import (
    InputError,
    choice,
    is_real,
    nonnegative,
    nonnegative_int,
    positive,
    positive_int,
)
from loraplus_lab.sims.files import check_output, partial_dir, publish_dir, versions
from loraplus_lab.sims.realmodels import data as data_mod
from loraplus_lab.sims.realmodels import models as models_mod
from loraplus_lab.sims.realmodels.optimizer import (
    POLICIES,
    create_loraplus_optimizer,
    optimizer_audit,
)
from loraplus_lab.sims.realmodels.train import (
    LoraPlusArguments,
    LoraPlusTrainer,
    make_accelerator,
    make_dataloader,
    train_loop,
)

SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine")
#: Optimizers for ``use_trainer=False`` (the Trainer accepts every ``optim`` it knows).
LOOP_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd")
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.csv", "summary.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of one fine-tuning run (see :func:`finetune` for their meaning)."""

    model: str
    task: str
    lr: float = 1e-4
    ratio: float = 16.0
    policy: str = "theory"
    epochs: float | None = None
    steps: int | None = None
    batch_size: int = 32
    r: int = 8
    alpha: float = 8.0  # the paper's GLUE scripts: lora_alpha 8 with r = 8 (s = 1)
    dropout: float = 0.1
    target_modules: tuple[str, ...] | str | None = None
    seed: int = 0
    bf16: bool | str = "auto"
    use_trainer: bool = True
    max_length: int = 128
    max_samples: int | None = None
    eval_task: str | None = None
    eval_max_samples: int | None = None
    eval_batch_size: int = 64
    weight_decay: float = 0.0
    warmup: float = 0.0
    scheduler: str = "linear"
    optim: str = "adamw_torch"
    adam_betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    lr_embedding: float | None = None
    lr_other: float | None = None
    fan_in_aware: bool = False
    base_fan_in: int | None = None
    log_every: int = 1
    eval_every: int | None = None
    checkpoint_every: int | None = None
    loss_bound: float | None = None
    trust_remote_code: bool = False
    offline: bool | None = None

    @property
    def eta_b(self) -> float:
        """``η_B = λ·η_A``."""
        return self.lr * self.ratio

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


# --------------------------------------------------------------------------------------------
# validation


def validate_config(cfg: FinetuneConfig) -> None:
    """Check every argument that can be checked without loading anything (one-line errors)."""
    positive("lr (η_A)", cfg.lr)
    positive("ratio (λ = η_B/η_A)", cfg.ratio)
    choice("policy", cfg.policy, POLICIES)
    if cfg.epochs is not None and cfg.steps is not None:
        raise InputError("give epochs or steps, not both")
    if cfg.epochs is not None:
        positive("epochs", cfg.epochs)
    if cfg.steps is not None:
        positive_int("steps", cfg.steps)
    for name in ("batch_size", "r", "max_length", "log_every", "eval_batch_size"):
        positive_int(name, getattr(cfg, name))
    for name in ("max_samples", "eval_max_samples", "checkpoint_every", "base_fan_in",
                 "eval_every"):  # fmt: skip
        if getattr(cfg, name) is not None:
            positive_int(name, getattr(cfg, name))
    nonnegative_int("seed", cfg.seed)
    positive("alpha", cfg.alpha)
    if not (is_real(cfg.dropout) and 0 <= cfg.dropout < 1):
        raise InputError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if cfg.bf16 not in (True, False, "auto"):
        raise InputError(f"bf16 must be True, False or 'auto', got {cfg.bf16!r}")
    nonnegative("weight_decay", cfg.weight_decay)
    nonnegative("warmup", cfg.warmup)
    if not float(cfg.warmup) < 1 and not float(cfg.warmup).is_integer():
        raise InputError(
            f"warmup must be a ratio in [0, 1) or a whole number of steps, got {cfg.warmup!r}"
        )
    choice("scheduler", cfg.scheduler, SCHEDULERS)
    from transformers.training_args import OptimizerNames

    known_optim = {o.value for o in OptimizerNames}
    if cfg.optim not in known_optim:
        raise InputError(
            f"optim: unknown {cfg.optim!r} (transformers' OptimizerNames, e.g. "
            "adamw_torch, adamw_torch_fused, sgd)"
        )
    if not cfg.use_trainer and cfg.optim not in LOOP_OPTIMIZERS:
        raise InputError(
            f"optim {cfg.optim!r} needs use_trainer=True; the plain loop takes "
            f"{', '.join(LOOP_OPTIMIZERS)}"
        )
    if cfg.use_trainer and cfg.checkpoint_every is not None:
        raise InputError("checkpoint_every needs use_trainer=False (the plain accelerate loop)")
    if cfg.eval_every is not None and not cfg.use_trainer:
        raise InputError("eval_every needs use_trainer=True (the Trainer's callbacks)")
    b1, b2 = cfg.adam_betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise InputError(f"adam_betas must lie in [0, 1), got {cfg.adam_betas!r}")
    positive("adam_eps", cfg.adam_eps)
    for name in ("max_grad_norm", "lr_embedding", "lr_other", "loss_bound"):
        if getattr(cfg, name) is not None:
            positive(name, getattr(cfg, name))
    if cfg.policy == "peft" and (cfg.fan_in_aware or cfg.lr_other is not None):
        raise InputError("fan_in_aware and lr_other need policy='theory'")
    if cfg.base_fan_in is not None and not cfg.fan_in_aware:
        raise InputError("base_fan_in needs fan_in_aware=True")


def resolve_bf16(bf16: bool | str) -> bool:
    """``"auto"``: bf16 on a CUDA GPU that supports it, float32 otherwise."""
    if bf16 == "auto":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(bf16)


def make_config(
    model: str | os.PathLike[str], task: str | os.PathLike[str], **settings: Any
) -> FinetuneConfig:
    """A :class:`FinetuneConfig` from keyword settings (sequences become tuples).

    Raises:
        InputError: an unknown setting.
    """
    known = {f.name for f in fields(FinetuneConfig)} - {"model", "task"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise InputError(f"finetune: unknown option {unknown[0]!r}")
    for k in ("target_modules", "adam_betas"):
        v = settings.get(k)
        if v is not None and not isinstance(v, str):
            settings[k] = tuple(str(t) for t in v) if k == "target_modules" else tuple(v)
    return FinetuneConfig(model=os.fspath(model), task=os.fspath(task), **settings)


# --------------------------------------------------------------------------------------------
# preparation: everything that can fail, before anything is written


@dataclass
class Prepared:
    """A validated run: model with adapters, tokenizer, data and the resolved settings."""

    cfg: FinetuneConfig
    model: Any
    tokenizer: Any
    train: data_mod.TaskData
    eval: data_mod.TaskData | None
    bf16: bool
    total_steps: int
    lora: dict[str, Any]
    audit: list[dict[str, Any]] = field(default_factory=list)


def _load_tokenizer(cfg: FinetuneConfig) -> Any:
    return models_mod.load_tokenizer(
        cfg.model, trust_remote_code=cfg.trust_remote_code, offline=cfg.offline
    )


def load_inputs(cfg: FinetuneConfig) -> tuple[Any, tuple[Any, Any]]:
    """The tokenizer and the ``(train, evaluation)`` data of ``cfg``, to :func:`prepare` several
    runs on the same inputs."""
    tokenizer = _load_tokenizer(cfg)
    return tokenizer, _load_data(cfg, tokenizer)


def _load_data(cfg: FinetuneConfig, tokenizer: Any) -> tuple[Any, Any]:
    train = data_mod.load_task(
        cfg.task, tokenizer, max_length=cfg.max_length, split="train",
        max_samples=cfg.max_samples,
    )  # fmt: skip
    evaluation = None
    if cfg.eval_task is not None:
        evaluation = data_mod.load_task(
            cfg.eval_task, tokenizer, max_length=cfg.max_length, split="validation",
            max_samples=cfg.eval_max_samples, label_names=train.label_names,
        )  # fmt: skip
    elif data_mod.is_glue(cfg.task):
        evaluation = data_mod.load_task(
            cfg.task, tokenizer, max_length=cfg.max_length, split="validation",
            max_samples=cfg.eval_max_samples,
        )  # fmt: skip
    if evaluation is not None and evaluation.num_labels > train.num_labels:
        raise InputError(
            f"eval_task: {evaluation.num_labels} labels but the training data has "
            f"{train.num_labels}"
        )
    return train, evaluation


def _build_model(cfg: FinetuneConfig, num_labels: int) -> tuple[Any, dict]:
    """Model with LoRA adapters (seeded); raises for bad target modules."""
    from transformers import set_seed

    set_seed(cfg.seed)
    base = models_mod.load_model(
        cfg.model, num_labels=num_labels, trust_remote_code=cfg.trust_remote_code,
        offline=cfg.offline,
    )  # fmt: skip
    targets = cfg.target_modules
    if isinstance(targets, tuple):
        targets = list(targets)
    lora = models_mod.lora_config_for(
        base, r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=targets
    )
    lora_dict = {
        k: (sorted(v) if isinstance(v, set) else v)
        for k, v in lora.to_dict().items()
        if isinstance(v, (str, int, float, bool, list, set, type(None)))
    }
    model = models_mod.apply_lora(base, lora)
    return model, lora_dict


def _total_steps(cfg: FinetuneConfig, n_train: int) -> int:
    if cfg.steps is not None:
        return int(cfg.steps)
    per_epoch = math.ceil(n_train / cfg.batch_size)
    epochs = 3.0 if cfg.epochs is None else float(cfg.epochs)
    return max(1, math.ceil(per_epoch * epochs))


def _loop_optimizer(cfg: FinetuneConfig, model: Any) -> torch.optim.Optimizer:
    lp = LoraPlusArguments(
        ratio=cfg.ratio, policy=cfg.policy, lr_embedding=cfg.lr_embedding,
        lr_other=cfg.lr_other, fan_in_aware=cfg.fan_in_aware, base_fan_in=cfg.base_fan_in,
    )  # fmt: skip
    if cfg.optim == "sgd":
        cls: type[torch.optim.Optimizer] = torch.optim.SGD
        kwargs: dict[str, Any] = {}
    else:
        cls = torch.optim.AdamW
        kwargs = {"betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps}
        if cfg.optim == "adamw_torch_fused":
            kwargs["fused"] = True
    return create_loraplus_optimizer(
        model, cls, lr=cfg.lr, weight_decay=cfg.weight_decay, **lp.optimizer_kwargs(), **kwargs
    )


def prepare(cfg: FinetuneConfig, *, tokenizer: Any = None, data: tuple | None = None) -> Prepared:
    """Validate ``cfg`` and load model, tokenizer and data; build adapters and the optimizer
    once to check them. Raises :class:`InputError` (one line) for any bad input; writes nothing."""
    validate_config(cfg)
    data_mod.check_task(cfg.task)
    if cfg.eval_task is not None:
        data_mod.check_task(cfg.eval_task)
    bf16 = resolve_bf16(cfg.bf16)
    if tokenizer is None:
        tokenizer = _load_tokenizer(cfg)
    train, evaluation = data if data is not None else _load_data(cfg, tokenizer)
    model, lora = _build_model(cfg, train.num_labels)
    optimizer = _loop_optimizer(cfg, model)  # validates λ, rates and the LoRA parameters
    audit = optimizer_audit(optimizer, model)
    del optimizer
    total = _total_steps(cfg, len(train))
    return Prepared(
        cfg=cfg, model=model, tokenizer=tokenizer, train=train, eval=evaluation, bf16=bf16,
        total_steps=total, lora=lora,
        audit=pd.DataFrame(audit).to_dict("records"),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# evaluation


def _glue_name(task: str | None) -> str | None:
    if task is None or not data_mod.is_glue(task):
        return None
    return data_mod.glue_task(task)[0]


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, *, num_labels: int, glue: str | None = None
) -> dict[str, float]:
    """Accuracy (classification) or Pearson/Spearman/MSE (regression); GLUE's task metric too
    (Matthews correlation for CoLA, F1 for MRPC and QQP)."""
    from scipy import stats

    out: dict[str, float] = {}
    if num_labels == 1:
        preds = predictions.reshape(-1).astype(np.float64)
        y = labels.astype(np.float64)
        out["mse"] = float(np.mean((preds - y) ** 2))
        if len(y) > 1 and np.std(preds) > 0 and np.std(y) > 0:
            out["pearson"] = float(stats.pearsonr(preds, y)[0])
            out["spearman"] = float(stats.spearmanr(preds, y)[0])
        return out
    preds = predictions.argmax(axis=-1)
    y = labels.astype(np.int64)
    out["accuracy"] = float(np.mean(preds == y))
    if num_labels == 2 and glue in ("mrpc", "qqp"):
        tp = float(np.sum((preds == 1) & (y == 1)))
        fp = float(np.sum((preds == 1) & (y == 0)))
        fn = float(np.sum((preds == 0) & (y == 1)))
        out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
    if glue == "cola":
        tp = float(np.sum((preds == 1) & (y == 1)))
        tn = float(np.sum((preds == 0) & (y == 0)))
        fp = float(np.sum((preds == 1) & (y == 0)))
        fn = float(np.sum((preds == 0) & (y == 1)))
        den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["matthews_correlation"] = (tp * tn - fp * fn) / den if den > 0 else 0.0
    return out


@torch.no_grad()
def evaluate(
    model: Any,
    task_data: data_mod.TaskData,
    tokenizer: Any,
    *,
    batch_size: int = 64,
    bf16: bool = False,
    glue: str | None = None,
) -> dict[str, float]:
    """Loss and metrics of ``model`` on a tokenized split (in order, no dropout)."""
    loader = make_dataloader(task_data.dataset, tokenizer, batch_size=batch_size, shuffle=False)
    device = next(p.device for p in model.parameters())
    was_training = model.training
    model.eval()
    logits, labels, losses, counts = [], [], [], []
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(**batch)
            logits.append(out.logits.float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
            losses.append(float(out.loss))
            counts.append(len(batch["labels"]))
    finally:
        model.train(was_training)
    metrics = classification_metrics(
        np.concatenate(logits), np.concatenate(labels), num_labels=task_data.num_labels, glue=glue
    )
    metrics["loss"] = float(np.average(losses, weights=counts))
    return metrics


# --------------------------------------------------------------------------------------------
# running


class _CsvLog:
    """Append metric rows to a CSV as they come (header from the first row)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None
        self.rows: list[dict[str, Any]] = []

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        if self.columns is None:
            self.columns = list(row)
            pd.DataFrame([row], columns=self.columns).to_csv(self.path, index=False)
        elif list(row) != self.columns:  # a new column: rewrite with the union
            for k in row:
                if k not in self.columns:
                    self.columns.append(k)
            pd.DataFrame(self.rows, columns=self.columns).to_csv(self.path, index=False)
        else:
            pd.DataFrame([row], columns=self.columns).to_csv(
                self.path, mode="a", header=False, index=False
            )


def _trainer_callback(log: _CsvLog, loss_bound: float | None) -> Any:
    from transformers import TrainerCallback

    class _Metrics(TrainerCallback):
        """Per-step rows: the loss the Trainer logs and the rates each step used."""

        def __init__(self) -> None:
            self.lrs: dict[str, float] = {}
            self.diverged = False

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            if optimizer is not None:
                self.lrs = {
                    f"lr/{g.get('name', f'group{i}')}": float(g["lr"])
                    for i, g in enumerate(optimizer.param_groups)
                }

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            loss = float(logs["loss"])
            diverged = not math.isfinite(loss) or (loss_bound is not None and loss > loss_bound)
            row: dict[str, Any] = {
                "step": state.global_step,
                "epoch": logs.get("epoch"),
                "loss": loss,
            }
            if "grad_norm" in logs:
                row["grad_norm"] = float(logs["grad_norm"])
            if self.lrs:
                row["lr"] = next(iter(self.lrs.values()))
                row.update(self.lrs)
            row["diverged"] = diverged
            log(row)
            if diverged:
                self.diverged = True
                control.should_training_stop = True

    return _Metrics()


def _eval_callback(prep: Prepared, log: _CsvLog) -> Any:
    """Every ``eval_every`` steps (and before the first), the validation loss of the model as it
    is, with :func:`evaluate`, logged as a row ``step, eval_loss`` (the validation curve)."""
    from transformers import TrainerCallback

    cfg = prep.cfg
    glue = _glue_name(cfg.eval_task or cfg.task)

    def record(step: int) -> None:
        m = evaluate(prep.model, prep.eval, prep.tokenizer, batch_size=cfg.eval_batch_size,
                     bf16=prep.bf16, glue=glue)  # fmt: skip
        log({"step": step, "eval_loss": m["loss"]})

    class _Curve(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record(0)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % cfg.eval_every == 0 or state.global_step == state.max_steps:
                record(state.global_step)

    return _Curve()


def _quiet_progress() -> Any:
    """The Trainer's progress bar, showing the loss instead of printing every log."""
    from transformers import ProgressCallback

    class _QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            bar = getattr(self, "training_bar", None)
            if state.is_world_process_zero and bar is not None and logs and "loss" in logs:
                bar.set_postfix(loss=f"{float(logs['loss']):.4g}")

    return _QuietProgress()


def _train_with_trainer(
    prep: Prepared, run_dir: Path, log: _CsvLog, progress: bool
) -> dict[str, Any]:
    from transformers import (
        DataCollatorWithPadding,
        PrinterCallback,
        ProgressCallback,
        TrainingArguments,
    )

    cfg = prep.cfg
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=prep.total_steps,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup if cfg.warmup < 1 else int(cfg.warmup),
        optim=cfg.optim,
        adam_beta1=cfg.adam_betas[0],
        adam_beta2=cfg.adam_betas[1],
        adam_epsilon=cfg.adam_eps,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
        bf16=prep.bf16,
        logging_strategy="steps",
        logging_steps=cfg.log_every,
        logging_nan_inf_filter=False,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
        use_cpu=not torch.cuda.is_available(),
    )
    callback = _trainer_callback(log, cfg.loss_bound)
    trainer = LoraPlusTrainer(
        model=prep.model,
        args=args,
        train_dataset=prep.train.dataset,
        data_collator=DataCollatorWithPadding(prep.tokenizer),
        callbacks=[callback],
        loraplus=LoraPlusArguments(
            ratio=cfg.ratio, policy=cfg.policy, lr_embedding=cfg.lr_embedding,
            lr_other=cfg.lr_other, fan_in_aware=cfg.fan_in_aware, base_fan_in=cfg.base_fan_in,
        ),
    )  # fmt: skip
    if cfg.eval_every is not None and prep.eval is not None:
        trainer.add_callback(_eval_callback(prep, log))
    # Metrics go to metrics.csv: no log line per step on stdout, only the bar's loss.
    trainer.remove_callback(PrinterCallback)
    if progress and trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_quiet_progress())
    result = trainer.train()
    shutil.rmtree(run_dir / "trainer", ignore_errors=True)
    return {
        "train_loss": float(result.training_loss),
        "steps_done": int(result.global_step),
        "diverged": callback.diverged,
    }


def _train_with_loop(prep: Prepared, run_dir: Path, log: _CsvLog, progress: bool) -> dict:
    from transformers import get_scheduler

    cfg = prep.cfg
    accelerator = make_accelerator(seed=cfg.seed, mixed_precision="bf16" if prep.bf16 else "no")
    optimizer = _loop_optimizer(cfg, prep.model)
    warmup = int(round(cfg.warmup * prep.total_steps)) if cfg.warmup < 1 else int(cfg.warmup)
    scheduler = get_scheduler(
        cfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=prep.total_steps
    )
    loader = make_dataloader(
        prep.train.dataset, prep.tokenizer, batch_size=cfg.batch_size, shuffle=True,
        seed=cfg.seed,
    )  # fmt: skip
    frame = train_loop(
        prep.model, optimizer, loader, steps=prep.total_steps, accelerator=accelerator,
        scheduler=scheduler, log_every=cfg.log_every, seed=cfg.seed,
        max_grad_norm=cfg.max_grad_norm, progress=progress, on_log=log,
        checkpoint_dir=run_dir / "checkpoints" if cfg.checkpoint_every else None,
        checkpoint_every=cfg.checkpoint_every, loss_bound=cfg.loss_bound,
    )  # fmt: skip
    prep.model = accelerator.unwrap_model(prep.model)
    losses = frame["loss"].to_numpy() if len(frame) else np.array([])
    return {
        "train_loss": float(np.mean(losses)) if len(losses) else float("nan"),
        "steps_done": int(frame["step"].iloc[-1]) if len(frame) else 0,
        "diverged": bool(frame["diverged"].any()) if len(frame) else False,
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str, allow_nan=True) + "\n")


def _config_record(prep: Prepared, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg = prep.cfg
    record = {
        "kind": "finetune",
        "config": cfg.to_dict(),
        "eta_a": cfg.lr,
        "eta_b": cfg.eta_b,
        "resolved": {
            "bf16": prep.bf16,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "total_steps": prep.total_steps,
            "train_examples": len(prep.train),
            "eval_examples": len(prep.eval) if prep.eval is not None else 0,
            "num_labels": prep.train.num_labels,
            "label_names": prep.train.label_names,
        },
        "data": {
            "train": prep.train.source,
            "eval": prep.eval.source if prep.eval is not None else None,
        },
        "model": models_mod.describe_model(prep.model),
        "lora": prep.lora,
        "optimizer_audit": prep.audit,
        "versions": versions("torch", "transformers", "peft", "accelerate"),
    }
    if extra:
        record.update(extra)
    return record


def run_prepared(
    prep: Prepared,
    out: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate a prepared run, writing into a hidden sibling of ``out`` renamed to
    ``out`` at the end (removed again if anything fails)."""
    out = Path(out)
    partial = partial_dir(out)
    try:
        _write_json(partial / CONFIG_FILE, _config_record(prep, extra_config))
        log = _CsvLog(partial / METRICS_FILE)
        t0 = time.perf_counter()
        if prep.cfg.use_trainer:
            result = _train_with_trainer(prep, partial, log, progress)
        else:
            result = _train_with_loop(prep, partial, log, progress)
        if not log.rows:
            pd.DataFrame(columns=["step", "loss"]).to_csv(partial / METRICS_FILE, index=False)
        summary: dict[str, Any] = {
            "eta_a": prep.cfg.lr,
            "eta_b": prep.cfg.eta_b,
            "ratio": prep.cfg.ratio,
            **result,
            "final_loss": log.rows[-1]["loss"] if log.rows else float("nan"),
            "train_seconds": time.perf_counter() - t0,
        }
        if prep.eval is not None and not result["diverged"]:
            metrics = evaluate(
                prep.model, prep.eval, prep.tokenizer, batch_size=prep.cfg.eval_batch_size,
                bf16=prep.bf16, glue=_glue_name(prep.cfg.eval_task or prep.cfg.task),
            )  # fmt: skip
            summary.update({f"eval_{k}": v for k, v in metrics.items()})
        _write_json(partial / SUMMARY_FILE, summary)
        if out.exists() and not overwrite and any(out.iterdir()):
            raise InputError(f"out: {out} appeared while the run was going")
        publish_dir(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary


def finetune(
    model: str,
    task: str,
    *,
    out: str | os.PathLike[str],
    lr: float = 1e-4,
    ratio: float = 16.0,
    policy: str = "theory",
    epochs: float | None = None,
    steps: int | None = None,
    batch_size: int = 32,
    r: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.1,
    target_modules: Sequence[str] | str | None = None,
    seed: int = 0,
    bf16: bool | str = "auto",
    use_trainer: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` with LoRA (``ratio=1``) or LoRA+ and write the results.

    Args:
        model: Local model folder or Hub name (``roberta-base``, ``gpt2``, a Llama).
        task: ``glue/<name>`` (evaluated on its validation split) or a local CSV/JSONL file.
        out: Output folder (must not exist or be empty unless ``overwrite``).
        lr: ``η_A``, the optimizer's learning rate.
        ratio: ``λ = η_B/η_A`` (> 0); 1 is plain LoRA, the paper recommends ``≈ 2^4``.
        policy: LoRA+ grouping policy, ``"theory"`` or ``"peft"``.
        epochs, steps: Training length (one of them; default 3 epochs, as the paper).
        batch_size: Examples per step (the paper: 32).
        r, alpha, dropout, target_modules: LoRA settings
            (:func:`~loraplus_lab.sims.realmodels.models.lora_config_for`; ``None`` targets: the
            paper's).
        seed: Seeds model init (head, adapters), data order and dropout.
        bf16: ``"auto"`` (bf16 on a GPU that supports it), ``True`` or ``False``.
        use_trainer: ``True``: :class:`LoraPlusTrainer`; ``False``: the accelerate loop.
        overwrite: Replace an existing, non-empty ``out``.
        progress: Progress bar (plain loop).
        **options: Further :class:`FinetuneConfig` fields (``max_length``, ``max_samples``,
            ``eval_task``, ``eval_max_samples``, ``weight_decay``, ``warmup``, ``scheduler``,
            ``optim``, ``adam_betas``, ``adam_eps``, ``max_grad_norm``, ``lr_embedding``,
            ``lr_other``, ``fan_in_aware``, ``base_fan_in``, ``log_every``,
            ``checkpoint_every``, ``loss_bound``, ``trust_remote_code``, ``offline``;
            ``eval_every``: with the Trainer and an evaluation split, the validation loss
            every that many steps and before the first, as ``eval_loss`` rows of
            ``metrics.csv``).

    Returns:
        The run's summary (losses, steps, divergence, evaluation metrics).

    Raises:
        InputError: One line, before anything is written: bad argument, non-empty ``out``,
            unknown model, unreadable data or bad rows, target modules matching nothing,
            ``λ ≤ 0``.
    """
    cfg = make_config(
        model, task, lr=lr, ratio=ratio, policy=policy, epochs=epochs, steps=steps,
        batch_size=batch_size, r=r, alpha=alpha, dropout=dropout, target_modules=target_modules,
        seed=seed, bf16=bf16, use_trainer=use_trainer, **options,
    )  # fmt: skip
    out_path = Path(out).expanduser()
    validate_config(cfg)
    check_output(out_path, overwrite=overwrite)
    prep = prepare(cfg)
    return run_prepared(prep, out_path, overwrite=overwrite, progress=progress)
