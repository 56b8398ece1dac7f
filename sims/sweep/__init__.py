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

from loraplus_lab.sims import lazy_exports

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

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
