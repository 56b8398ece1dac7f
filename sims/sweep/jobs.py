"""Jobs of toy sweeps: a spec expands into independent chunks of the vectorised grid.

A job (:class:`ToyJob`, a :class:`~loraplus_lab.sims.sweep.kinds.Job` of the toy kind) is one
width × one initialisation × a chunk of at most ``spec.chunk`` rate configurations × every seed,
run by :func:`loraplus_lab.sims.toy.simulate_batch` in one batch. Its identity is the SHA-256 of
its normalised configuration (everything that determines its results), so a rerun recognises
finished jobs whatever order they ran in and never runs one twice.

Jobs run with one torch thread: the bits of a matrix product can depend on how many threads
split it, and results must be identical whichever executor (and however many workers) ran them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from loraplus_lab.sims.params import Parametrization
from loraplus_lab.sims.sweep.spec import KIND, SweepSpec, parse_spec
from loraplus_lab.sims.toy.engine import ENGINE_VERSION


@dataclass(frozen=True)
class ToyJob:
    """One chunk of the grid: a width, an initialisation, some configurations, all seeds."""

    index: int
    width: int
    init: str
    params: tuple[Parametrization, ...]
    spec: SweepSpec

    def config(self) -> dict[str, Any]:
        """The normalised configuration that determines this job's results."""
        s = self.spec.to_dict()
        return {
            "engine": ENGINE_VERSION,
            "width": self.width,
            "init": self.init,
            "parametrizations": [p.to_dict() for p in self.params],
            "seeds": s["seeds"],
            "steps": s["steps"],
            "problem": s["problem"],
            "problem_options": s["problem_options"],
            "optimizer": s["optimizer"],
            "betas": s["betas"],
            "eps": s["eps"],
            "weight_decay": s["weight_decay"],
            "dtype": s["dtype"],
            "divergence_bound": s["divergence_bound"],
        }

    @property
    def key(self) -> str:
        """SHA-256 (hex, first 20 characters) of the canonical JSON of :meth:`config`."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def size(self) -> int:
        """Configuration × seed runs in this job."""
        return len(self.params) * len(self.spec.seeds)

    def run(self) -> pd.DataFrame:
        """Simulate this job (:func:`run_job`)."""
        return run_job(self)


def expand(spec: SweepSpec) -> list[ToyJob]:
    """All jobs of a spec, in a fixed order (width, initialisation, chunk)."""
    jobs: list[ToyJob] = []
    inits = sorted({p.init for p in spec.parametrizations})
    for width in spec.widths:
        for init in inits:
            group = [p for p in spec.parametrizations if p.init == init]
            for start in range(0, len(group), spec.chunk):
                chunk = tuple(group[start : start + spec.chunk])
                jobs.append(ToyJob(len(jobs), width, init, chunk, spec))
    return jobs


class ToyKind:
    """The job kind of toy sweeps (see :mod:`loraplus_lab.sims.sweep.kinds`): the store keeps
    the TOML text as ``spec.toml``; a spec expands into the jobs of :func:`expand`."""

    name = KIND
    spec_file = "spec.toml"

    def load_spec(self, text: str, path: str) -> SweepSpec:
        """:func:`~loraplus_lab.sims.sweep.spec.parse_spec`."""
        return parse_spec(text, path)

    def jobs(self, spec: SweepSpec, store_path: Path) -> list[ToyJob]:
        """The spec's jobs (:func:`expand`); they return their rows and write nothing else, so
        ``store_path`` is not needed."""
        return expand(spec)


#: The toy kind, built into the sweep engine.
TOY_KIND = ToyKind()


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch with a single intra-op thread inside the block (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_job(job: ToyJob) -> pd.DataFrame:
    """Simulate one job; returns its tidy rows (see
    :func:`loraplus_lab.sims.toy.simulate_batch`)."""
    from loraplus_lab.sims.toy import simulate_batch

    s = job.spec
    with one_thread():
        df = simulate_batch(
            [job.width],
            job.params,
            s.seeds,
            steps=s.steps,
            problem=s.problem,
            problem_options=s.problem_options,
            optimizer=s.optimizer,
            betas=s.betas,
            eps=s.eps,
            weight_decay=s.weight_decay,
            dtype=s.dtype,
            divergence_bound=s.divergence_bound,
            progress=False,
        )
    df.attrs = {}
    df.insert(0, "job", job.key)
    return df
