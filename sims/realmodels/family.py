"""Hub model families: the ladder's landscapes, slopes and speed-up over pretrained models of one
family (Pythia 70m…1b, GPT-2 small…xl, …), finetuned on a classification task through the
toolkit's finetune path (transformers' Trainer with the LoRA+ optimizer).

A family spec names the models (Hub names, or local folders saved with ``save_pretrained``), the
task (``glue/<name>``, evaluated on its validation split, or a local CSV/JSONL file with an
``eval_task``), the seeds, the finetuning settings and the same ``[grid]``/``[lines]`` tables as
a ladder (no ``b_only`` line: the Trainer trains every LoRA factor). Each job is one finetune of
one model at one ``(η_A, η_B)`` and seed (``lr = η_A``, ``ratio = η_B/η_A``), with the validation
loss every ``eval_every`` steps; its rows have the ladder's columns, ``width`` being the model's
hidden size read from its config, so
:mod:`~loraplus_lab.sims.realmodels.ladder_analysis` finds the optimum per width, the slopes and
LoRA+'s speed-up exactly as for a ladder. A model's refinement patch is added once all its
coarse runs are stored (:func:`run_family` runs until nothing is left).

Spec format (values are examples)::

    name = "pythia-sst2"
    models = ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-410m"]
    task = "glue/sst2"
    eval_task = "dev.csv"        # optional (required for a local task file)
    seeds = 3
    gpus_per_job = 0             # optional: Ray GPUs each job asks for

    [finetune]                   # optional; defaults shown
    steps = 300
    batch_size = 32
    eval_every = 30
    eval_max_samples = 1000
    max_length = 128
    r = 8
    alpha = 8
    warmup = 0.06
    scheduler = "linear"
    weight_decay = 0.0
    offline = false

    [grid]   ...                 # as a ladder's
    [lines]  ...                 # equal, ratio, ratio_log2_eta_a, step
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.realmodels.ladder import (
    coarse_points,
    parse_rates,
    rate_config,
    refinement_patches,
)
from loraplus_lab.sims.sweep.spec import SpecError, _Checker, _seeds, parse_toml

KIND = "family"
FAMILY_VERSION = 1
_TOP = ("name", "models", "task", "eval_task", "seeds", "gpus_per_job", "finetune", "grid", "lines")
_FINETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 300,
    "batch_size": 32,
    "eval_every": 30,
    "eval_max_samples": 1000,
    "max_length": 128,
    "r": 8,
    "alpha": 8.0,
    "warmup": 0.06,
    "scheduler": "linear",
    "weight_decay": 0.0,
    "offline": False,
}


@dataclass(frozen=True)
class FamilySpec:
    """A validated family experiment (see the module docstring)."""

    name: str
    models: tuple[str, ...]
    task: str
    eval_task: str | None
    seeds: tuple[int, ...]
    gpus_per_job: float
    finetune: dict[str, Any] = field(hash=False)
    grid: dict[str, Any] = field(hash=False)
    lines: dict[str, Any] = field(hash=False)
    source: str = field(default="", compare=False, repr=False)
    path: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The normalised spec (defaults filled in, keys sorted)."""
        d = {
            "kind": KIND,
            "name": self.name,
            "models": list(self.models),
            "task": self.task,
            "eval_task": self.eval_task,
            "seeds": list(self.seeds),
            "gpus_per_job": self.gpus_per_job,
            "finetune": dict(self.finetune),
            "grid": dict(self.grid),
            "lines": dict(self.lines),
        }
        return json.loads(json.dumps(d, sort_keys=True))

    def coarse_points(self) -> list[tuple[float, float]]:
        """The coarse grid and the lines."""
        return coarse_points(self.grid, self.lines)


def parse_family_spec(text: str, path: str = "<spec>") -> FamilySpec:
    """Parse and validate a family spec's TOML text (:class:`SpecError` on a bad value)."""
    from loraplus_lab.sims.realmodels.data import check_task

    ck = _Checker(path)
    raw = parse_toml(text, path)
    ck.keys("", raw, _TOP)
    for key in ("models", "task", "seeds", "grid"):
        if key not in raw:
            ck.fail(key, "required key missing")
    name = raw.get("name", Path(path).stem if not path.startswith("<") else "family")
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._+-" for c in name):
        ck.fail("name", "must be a name of letters, digits and ._+-", name)
    models = raw["models"]
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        ck.fail("models", "must be a list of model names or folders", models)
    if len(models) < 2 or len(set(models)) != len(models):
        ck.fail("models", "a family needs at least two different models", models)
    for key in ("task", "eval_task"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            ck.fail(key, "must be glue/<name> or a CSV/JSONL file", value)
        try:
            check_task(value)
        except ValueError as e:
            ck.fail(key, str(e))
    if not raw["task"].startswith("glue/") and raw.get("eval_task") is None:
        ck.fail("eval_task", "required with a local task file (the validation curve needs it)")
    seeds = _seeds(ck, raw["seeds"])
    gpus = ck.real("gpus_per_job", raw.get("gpus_per_job", 0), positive=False)
    ft = dict(raw.get("finetune", {}))
    if not isinstance(raw.get("finetune", {}), Mapping):
        ck.fail("finetune", "must be a table", raw.get("finetune"))
    ck.keys("finetune", ft, tuple(_FINETUNE_DEFAULTS))
    ft = {**_FINETUNE_DEFAULTS, **ft}
    for k in ("steps", "batch_size", "eval_every", "eval_max_samples", "max_length", "r"):
        ft[k] = ck.integer(f"finetune.{k}", ft[k], 1, "a positive integer")
    for k in ("alpha",):
        ft[k] = ck.real(f"finetune.{k}", ft[k], positive=True)
    for k in ("warmup", "weight_decay"):
        ft[k] = ck.real(f"finetune.{k}", ft[k], positive=False)
    if not isinstance(ft["offline"], bool):
        ck.fail("finetune.offline", "must be true or false", ft["offline"])
    g, ln = parse_rates(ck, raw)
    if ln.get("b_only"):
        ck.fail("lines.b_only", "a family trains every LoRA factor: no A-frozen line")
    return FamilySpec(
        name=name,
        models=tuple(models),
        task=raw["task"],
        eval_task=raw.get("eval_task"),
        seeds=seeds,
        gpus_per_job=gpus,
        finetune=ft,
        grid=g,
        lines=ln,
        source=text,
        path=path,
    )


def load_family_spec(path: str | os.PathLike[str]) -> FamilySpec:
    """Read and validate a family spec file."""
    where = os.fspath(path)
    try:
        text = Path(where).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{where}: cannot read the spec file ({e})", path=where) from None
    return parse_family_spec(text, where)


def hidden_size(model: str, offline: bool = False) -> int:
    """The width ``n`` of a model: its config's hidden size (``hidden_size``, ``n_embd`` or
    ``d_model``)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model, local_files_only=offline)
    for attr in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, attr, None), int):
            return int(getattr(cfg, attr))
    raise SpecError(f"model {model!r}: its config names no hidden size")


@dataclass(frozen=True)
class FamilyJob:
    """One finetune of one model at one rate pair and seed."""

    spec: FamilySpec
    model: str
    seed: int
    stage: str
    point: tuple[float, float]
    store: str

    @property
    def key(self) -> str:
        d = self.spec.to_dict()
        blob = {
            "kind": KIND,
            "v": FAMILY_VERSION,
            "model": self.model,
            "task": d["task"],
            "eval_task": d["eval_task"],
            "finetune": d["finetune"],
            "seed": self.seed,
            "point": list(self.point),
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]

    @property
    def resources(self) -> dict[str, float]:
        gpus = self.spec.gpus_per_job
        return {"num_cpus": 1, "num_gpus": gpus} if gpus else {"num_cpus": 1}

    def run(self) -> pd.DataFrame:
        """Finetune, then the ladder's columns: the validation curve (``val_loss``), the final
        loss at step 0 and at the last step (``final_loss``), divergence."""
        from loraplus_lab.sims.realmodels.finetune import finetune

        ft = self.spec.finetune
        rc = rate_config(self.point)
        run_dir = Path(self.store) / "points" / self.key
        summary = finetune(
            self.model,
            self.spec.task,
            out=run_dir,
            lr=rc.eta_a,
            ratio=rc.eta_b / rc.eta_a,
            steps=ft["steps"],
            batch_size=ft["batch_size"],
            r=ft["r"],
            alpha=ft["alpha"],
            seed=self.seed,
            overwrite=True,
            progress=False,
            eval_task=self.spec.eval_task,
            eval_every=ft["eval_every"],
            eval_max_samples=ft["eval_max_samples"],
            max_length=ft["max_length"],
            warmup=ft["warmup"],
            scheduler=ft["scheduler"],
            weight_decay=ft["weight_decay"],
            offline=ft["offline"] or None,
        )
        metrics = pd.read_csv(run_dir / "metrics.csv")
        curve = metrics.dropna(subset=["eval_loss"]) if "eval_loss" in metrics else metrics[:0]
        curve = curve.drop_duplicates("step", keep="last").sort_values("step")
        diverged = bool(summary.get("diverged", False))
        steps = [0, *range(ft["eval_every"], ft["steps"], ft["eval_every"]), ft["steps"]]
        loss = dict(zip(curve["step"], curve["eval_loss"], strict=True))
        val = np.array([loss.get(s, np.nan) for s in steps], dtype=float)
        if diverged:
            val[1:] = np.nan
        final = np.full(len(steps), np.nan)
        final[0], final[-1] = val[0], val[-1]
        width = hidden_size(self.model, offline=bool(ft["offline"]))
        return pd.DataFrame(
            {
                "part": "finetune",
                "stage": self.stage,
                "width": width,
                "model": self.model,
                "seed": self.seed,
                "config": 0,
                "eta_a": rc.eta_a,
                "eta_b": rc.eta_b,
                "step": steps,
                "val_loss": val,
                "train_loss": np.nan,
                "final_loss": final,
                "diverged": diverged,
                "diverged_step": -1,
            }
        )


def family_jobs(spec: FamilySpec, store_path: str | os.PathLike[str] | None = None) -> list:
    """Every job whose prerequisites are met: the coarse runs of every model, and a model's
    refinement once all its coarse runs are stored."""
    store = str(store_path) if store_path is not None else ""
    coarse = spec.coarse_points()
    by_model: dict[str, list[FamilyJob]] = {}
    for m in spec.models:
        by_model[m] = [
            FamilyJob(spec, m, s, "coarse", p, store) for s in spec.seeds for p in coarse
        ]
    jobs = [j for m in spec.models for j in by_model[m]]
    if store_path is None:
        return jobs
    patches = refinement_patches(store_path, by_model, coarse, spec.grid, spec.finetune["steps"])
    for m, patch in patches.items():
        jobs += [FamilyJob(spec, m, s, "refine", p, store) for s in spec.seeds for p in patch]
    return jobs


class FamilyKind:
    """The ``family`` job kind of the sweep engine."""

    name = KIND
    spec_file = "spec.toml"

    def load_spec(self, text: str, path: str) -> FamilySpec:
        return parse_family_spec(text, path)

    def jobs(self, spec: FamilySpec, store_path: Path) -> list:
        return family_jobs(spec, store_path)


KIND_OBJECT = FamilyKind()


def run_family(
    spec: FamilySpec,
    out: str | os.PathLike[str],
    *,
    executor: str = "serial",
    workers: int | None = None,
    progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage of ``spec`` into the store ``out`` until no job is left. Every model's
    config and tokenizer are loaded first, so that a model that cannot be had (no network, a
    wrong name) stops the run with one line before anything is written."""
    from transformers import AutoTokenizer

    from loraplus_lab.sims.realmodels.ladder import run_stages

    offline = bool(spec.finetune["offline"])
    for model in spec.models:
        try:
            hidden_size(model, offline=offline)
            AutoTokenizer.from_pretrained(model, local_files_only=offline)
        except SpecError:
            raise
        except Exception as e:  # transformers raises OSError, ValueError, HTTP errors, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise InputError(
                f"cannot load model {model!r} ({type(e).__name__}: {first}); a hub name needs "
                "the network the first time, or a copy in the Hugging Face cache"
            ) from None
    return run_stages(
        spec, out, family_jobs, executor=executor, workers=workers, progress=progress,
        on_stage=on_stage,
    )  # fmt: skip
