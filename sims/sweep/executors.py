"""Executors: run the missing jobs of a sweep serially, on local processes, or on Ray.

Every executor runs the same jobs (anything with a ``key`` and a ``run()``, see
:mod:`loraplus_lab.sims.sweep.kinds`) through :func:`execute`, and the worker writes its own
result file, so the stored results are bit-identical whichever executor ran them. Ray workers
write to the store's path: on a multi-node cluster that path must be on a filesystem every node
sees; each job asks Ray for its ``resources`` (one CPU unless the job says otherwise).

An interrupted run (Ctrl-C, or any error in the driver) stops at once: jobs not yet started are
cancelled, running ones are stopped (their temporary files are cleaned up by the next run), and
the run's record in ``meta.json`` counts the jobs whose result files this run really wrote, with
``"interrupted": true``; then the interruption goes on to the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from loraplus_lab.sims.checks import InputError, choice, positive_int
from loraplus_lab.sims.sweep import kinds
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
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The JSON record appended to the store's ``meta.json``."""
        out = {
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
        if self.interrupted:
            out["interrupted"] = True
        return out

    def text(self) -> str:
        """A short human summary."""

        def n(k: int, what: str) -> str:
            return f"{k} {what}{'' if k == 1 else 's'}"

        return (
            f"{n(self.jobs_run, 'job')} run, {self.jobs_skipped} already done, "
            f"{n(self.diverged_runs, 'diverged run')}, {self.seconds:.1f} s "
            f"({self.executor}, {self.workers} worker{'s' if self.workers != 1 else ''}); "
            f"results in {self.path}"
        )


def diverged_runs(df: Any) -> int:
    """Diverged runs among a job's rows: ``(param, seed)`` pairs with a diverged row where the
    rows have those columns, else 1 if any row diverged."""
    if "diverged" not in df.columns or df.empty:
        return 0
    if {"param", "seed"} <= set(df.columns):
        return int(df.groupby(["param", "seed"])["diverged"].any().sum())
    return int(df["diverged"].any())


def execute(job: kinds.Job, store_path: str) -> tuple[str, int]:
    """Run one job and write its file, inside a worker. Returns (key, diverged runs)."""
    df = job.run()
    Store(store_path).write_job(job.key, df)
    return job.key, diverged_runs(df)


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
    jobs: Sequence[kinds.Job],
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

    Raises:
        KeyboardInterrupt: (or the driver's error) after the run was stopped and recorded.
    """
    choice("executor", executor, EXECUTORS)
    if workers is not None:
        positive_int("workers", workers)
    store.clean_partial()
    done_before = store.done_keys()
    todo = [j for j in jobs if j.key not in done_before]
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
    received: set[str] = set()

    def finished(result: tuple[str, int]) -> None:
        received.add(result[0])
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
    except BaseException:
        summary.interrupted = True
        raise
    finally:
        bar.close()
        if summary.interrupted:
            _count_written(store, todo, received, summary)
        summary.seconds = time.perf_counter() - t0
        summary.ended = _now()
        store.record_run(summary.record())
    return summary


def _count_written(
    store: Store, todo: Sequence[kinds.Job], received: set[str], summary: RunSummary
) -> None:
    """After an interruption: count the jobs of ``todo`` whose files exist, the ones written by
    workers that were stopped before they reported included."""
    done = store.done_keys()
    for job in todo:
        if job.key in done and job.key not in received:
            summary.jobs_run += 1
            try:
                summary.diverged_runs += diverged_runs(store.read_job(job.key))
            except InputError:  # pragma: no cover - a file that is not readable: not counted
                summary.jobs_run -= 1


def _serial(jobs: Sequence[kinds.Job], path: str, workers: int | None, finished: Callable) -> None:
    for job in jobs:
        finished(execute(job, path))


def _init_worker() -> None:
    """Workers leave Ctrl-C to the driver, which stops them (see :func:`_stop_pool`). They draw
    no progress bars, so tqdm's lock stays a thread lock: a worker stopped by the driver then
    leaves no process-shared semaphore behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and terminate the workers now (not after their jobs)."""
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # its worker processes
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=2)


def _local(jobs: Sequence[kinds.Job], path: str, workers: int | None, finished: Callable) -> None:
    # spawn: a fresh interpreter per worker (fork after torch's thread pools exist can hang)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers or 1, len(jobs)), mp_context=ctx, initializer=_init_worker
    )
    try:
        pending = {pool.submit(execute, job, path) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                finished(fut.result())
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _ray(jobs: Sequence[kinds.Job], path: str, workers: int | None, finished: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise InputError("the ray executor needs Ray: pip install 'loraplus-lab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
        if address is None and workers:
            kwargs["num_cpus"] = workers
        ray.init(**kwargs)
    refs: list[Any] = []
    try:
        remote = ray.remote(execute)
        refs = [remote.options(**kinds.resources(job)).remote(job, path) for job in jobs]
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            for ref in ready:
                finished(ray.get(ref))
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
