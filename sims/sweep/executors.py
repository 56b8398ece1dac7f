"""Executors: run the missing jobs of a sweep serially, on local processes, or on Ray.

Every executor runs the same :func:`loraplus_lab.sims.sweep.jobs.run_job` on the same jobs (one
torch thread each) and the worker writes its own result file, so the stored results are
bit-identical whichever executor ran them. Ray workers write to the store's path: on a multi-node
cluster that path must be on a filesystem every node sees.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loraplus_lab.sims.sweep.jobs import Job
from loraplus_lab.sims.sweep.store import Store

EXECUTORS = ("serial", "local", "ray")


@dataclass
class RunSummary:
    """What a run did."""

    path: Path
    executor: str
    workers: int
    jobs_total: int
    jobs_run: int = 0
    jobs_skipped: int = 0
    diverged_runs: int = 0
    seconds: float = 0.0
    started: str = ""
    ended: str = ""
    failures: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The JSON record appended to the store's ``meta.json``."""
        return {
            "started": self.started,
            "ended": self.ended,
            "executor": self.executor,
            "workers": self.workers,
            "jobs_total": self.jobs_total,
            "jobs_run": self.jobs_run,
            "jobs_skipped": self.jobs_skipped,
            "diverged_runs": self.diverged_runs,
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        """A short human summary."""
        return (
            f"{self.jobs_run} jobs run, {self.jobs_skipped} already done, "
            f"{self.diverged_runs} diverged runs, {self.seconds:.1f} s "
            f"({self.executor}, {self.workers} worker{'s' if self.workers != 1 else ''}); "
            f"results in {self.path}"
        )


def execute(job: Job, store_path: str) -> tuple[str, int]:
    """Run one job (anything with ``key`` and ``run()``) and write its file, inside a worker.
    Returns (key, diverged runs)."""
    df = job.run()
    Store(store_path).write_job(job.key, df)
    if {"param", "seed", "diverged"} <= set(df.columns):
        diverged = int(df.groupby(["param", "seed"])["diverged"].any().sum())
    else:
        diverged = int(df["diverged"].any()) if "diverged" in df.columns else 0
    return job.key, diverged


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run(
    store: Store,
    jobs: list[Job],
    *,
    executor: str = "local",
    workers: int | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Run every job of ``jobs`` whose result is not yet in ``store``.

    Args:
        store: the results store (its spec must be the jobs' spec).
        jobs: all jobs of the sweep (finished ones are skipped).
        executor: ``"serial"`` (in this process), ``"local"`` (a process pool) or ``"ray"``
            (joins the cluster at ``RAY_ADDRESS`` if set, else starts a local one).
        workers: parallel workers (default: all cores; Ray: the cluster's CPUs).
        progress: show a progress bar (default: when stderr is a terminal).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    store.clean_partial()
    done = store.done_keys()
    todo = [j for j in jobs if j.key not in done]
    n_workers = 1 if executor == "serial" else (workers or default_workers())
    summary = RunSummary(
        store.path, executor, n_workers, len(jobs), jobs_skipped=len(jobs) - len(todo)
    )
    summary.started = _now()
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(
        total=len(jobs),
        initial=summary.jobs_skipped,
        desc=f"sweep {store.path.name}",
        unit="job",
        disable=not progress,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()

    def finished(result: tuple[str, int]) -> None:
        summary.jobs_run += 1
        summary.diverged_runs += result[1]
        bar.update(1)
        bar.set_postfix(diverged=summary.diverged_runs)

    try:
        if todo:
            runner = {"serial": _serial, "local": _local, "ray": _ray}[executor]
            runner(
                todo, str(store.path), n_workers if workers or executor != "ray" else None, finished
            )
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - t0
        summary.ended = _now()
        store.record_run(summary.record())
    return summary


def _serial(jobs: Iterable[Job], path: str, workers: int | None, finished: Callable) -> None:
    for job in jobs:
        finished(execute(job, path))


def _local(jobs: list[Job], path: str, workers: int | None, finished: Callable) -> None:
    # spawn: a fresh interpreter per worker (fork after torch's thread pools exist can hang)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers or 1, len(jobs)), mp_context=ctx) as pool:
        pending = {pool.submit(execute, job, path) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                finished(fut.result())


def _ray(jobs: list[Job], path: str, workers: int | None, finished: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray executor needs Ray: pip install 'loraplus-lab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address is None and workers:
            kwargs["num_cpus"] = workers
        ray.init(**kwargs)
    try:
        remote = ray.remote(num_cpus=1)(execute)
        refs = [remote.remote(job, path) for job in jobs]
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for ref in ready:
                finished(ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()
