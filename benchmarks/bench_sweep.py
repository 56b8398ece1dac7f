"""Sweep engine overhead and parallel speed-up, measured side by side in one run.

1. Overhead per job: the same jobs run (a) by calling the simulator directly on each chunk
   (``run_job`` without a store) and (b) through the engine's serial executor (hashing, the
   store's atomic Parquet writes with checksums, progress, the run record). Jobs take about a
   second each; the target is ≤ 5% overhead.
2. Speed-up from 1 to 2 local worker processes on the same spec (fresh stores; includes the
   workers' start-up).

    python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from loraplus_lab.sims.sweep import Store, expand, parse_spec, run, run_job
from loraplus_lab.sims.sweep import jobs as jobs_module

SPEC = """
name = "bench"
steps = {steps}
optimizer = "adam"
seeds = 4
widths = [4096]
chunk = 8
memory_limit_mb = 4096

[[parametrizations]]
preset = "loraplus"
eta_a = {{ log2 = [-12, -5], num = 8 }}
eta_b = {{ log2 = [-8, -1], num = {nb} }}
"""


def _engine(spec, jobs, executor: str = "serial", workers: int | None = None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open_or_create(Path(tmp) / "s", spec)
        t0 = time.perf_counter()
        run(store, jobs, executor=executor, workers=workers, progress=False)
        return time.perf_counter() - t0


def _direct(jobs) -> float:
    t0 = time.perf_counter()
    for job in jobs:
        run_job(job)
    return time.perf_counter() - t0


def main() -> None:
    spec = parse_spec(SPEC.format(steps=450, nb=6), "bench.toml")
    jobs = expand(spec)
    print(f"overhead: {len(jobs)} jobs of {jobs[0].size} runs × {spec.steps} steps at n = 4096")
    _engine(spec, jobs[:1])  # warm-up of both paths (imports, allocator, pyarrow)
    pairs = [(_direct(jobs), _engine(spec, jobs)) for _ in range(3)]  # interleaved
    direct = statistics.median(d for d, _ in pairs)
    engine = statistics.median(e for _, e in pairs)
    print(f"  direct simulator calls : {direct:7.2f} s ({direct / len(jobs):.2f} s per job)")
    print(f"  engine, serial executor: {engine:7.2f} s (medians of 3 interleaved runs)")
    print(f"  ratio engine/direct    : {engine / direct:7.3f}")
    # The same, without the machine's run-to-run noise in the simulation itself: time the
    # simulator inside the engine and count everything else as the engine's overhead.
    inside = []
    original = jobs_module.run_job

    def timed(job):
        t0 = time.perf_counter()
        out = original(job)
        inside.append(time.perf_counter() - t0)
        return out

    jobs_module.run_job = timed
    try:
        total = _engine(spec, jobs)
    finally:
        jobs_module.run_job = original
    sim = sum(inside)
    print(
        f"  overhead per job       : {1000 * (total - sim) / len(jobs):6.1f} ms = "
        f"{100 * (total - sim) / sim:.1f} % of the simulation  (target ≤ 5%)"
    )

    spec = parse_spec(SPEC.format(steps=450, nb=8), "bench.toml")
    jobs = expand(spec)
    print(f"\nspeed-up: {len(jobs)} jobs, local executor (worker start-up included)")
    times = {w: _engine(spec, jobs, "local", w) for w in (1, 2)}
    for w, t in times.items():
        print(f"  {w} worker{'s' if w > 1 else ' '}: {t:7.2f} s")
    print(f"  speed-up 1 → 2 workers: {times[1] / times[2]:.2f}×")


if __name__ == "__main__":
    main()
