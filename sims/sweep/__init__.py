"""Sweeps that survive: TOML spec files, jobs identified by hash, a resumable results store,
and serial, local-process and Ray executors.

    spec = load_spec("specs/small.toml")
    store = Store.open_or_create("results/small", spec)
    run(store, expand(spec), executor="local")
    df = load("results/small")

The engine runs any kind of job (:mod:`~loraplus_lab.sims.sweep.kinds`): toy sweeps are built in,
real-model finetune grids register through an entry point, and ``run(store, store.jobs())``
resumes any store. Names are imported on first use, so that reading and checking a spec does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SpecError": "spec",
    "SweepSpec": "spec",
    "load_spec": "spec",
    "parse_spec": "spec",
    "Job": "kinds",
    "JobKind": "kinds",
    "ToyJob": "jobs",
    "expand": "jobs",
    "run_job": "jobs",
    "Store": "store",
    "StoreError": "store",
    "load": "store",
    "EXECUTORS": "executors",
    "RunSummary": "executors",
    "run": "executors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loraplus_lab.sims.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"loraplus_lab.sims.sweep.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
