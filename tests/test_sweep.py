"""The sweep engine: jobs, the resumable store, executors, crash safety and the CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from loraplus_lab.sims.cli import main
from loraplus_lab.sims.sweep import Store, StoreError, expand, load, load_spec, parse_spec, run

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
steps = 3
optimizer = "adam"
seeds = 2
widths = [64, 128, 256]
chunk = 2

[problem]
kind = "paper"

[[parametrizations]]
preset = "lora"
eta = [0.001, 0.01]

[[parametrizations]]
preset = "loraplus"
eta_a = [0.001, 0.01]
eta_b = 0.01

[[parametrizations]]
c_a = -1
c_b = 0
init = "B"
eta = 0.01
"""


def _spec(tmp_path: Path, text: str = TINY, name: str = "tiny.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_jobs_have_stable_distinct_keys(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    jobs = expand(spec)
    # 3 widths × (Init[A]: 4 configs in chunks of 2 → 2 jobs; Init[B]: 1 job)
    assert len(jobs) == 9
    assert len({j.key for j in jobs}) == 9
    again = expand(parse_spec(TINY.replace("seeds = 2", "seeds = [0, 1]")))
    assert [j.key for j in jobs] == [j.key for j in again]
    changed = expand(parse_spec(TINY.replace("steps = 3", "steps = 4")))
    assert not {j.key for j in jobs} & {j.key for j in changed}


def test_run_store_load_and_rerun_skips(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    store = Store.open_or_create(tmp_path / "out", spec)
    first = run(store, expand(spec), executor="serial", progress=False)
    assert (first.jobs_run, first.jobs_skipped) == (9, 0)
    df = load(tmp_path / "out")
    assert df.attrs["complete"] and len(df) == 3 * 5 * 2 * 4  # widths × configs × seeds × steps+1
    second = run(store, expand(spec), executor="serial", progress=False)
    assert (second.jobs_run, second.jobs_skipped) == (0, 9)
    meta = store.meta()
    assert len(meta["runs"]) == 2 and meta["versions"]["torch"]
    assert (tmp_path / "out" / "spec.toml").read_text() == TINY


def test_executors_give_identical_results(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    frames = {}
    for executor, workers in (("serial", None), ("local", 2), ("ray", 2)):
        if executor == "ray":
            pytest.importorskip("ray")
        store = Store.open_or_create(tmp_path / executor, spec)
        summary = run(store, expand(spec), executor=executor, workers=workers, progress=False)
        assert summary.jobs_run == 9
        frames[executor] = load(tmp_path / executor)
    pd.testing.assert_frame_equal(frames["serial"], frames["local"], check_exact=True)
    pd.testing.assert_frame_equal(frames["serial"], frames["ray"], check_exact=True)


def test_a_different_spec_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["sweep", str(_spec(tmp_path)), "--out", str(out), "--executor", "serial"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = _spec(tmp_path, TINY.replace("steps = 3", "steps = 5"), "other.toml")
    assert main(["sweep", str(other), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and "steps" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_corrupted_and_truncated_files_are_named(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path))
    store = Store.open_or_create(tmp_path / "out", spec)
    run(store, expand(spec)[:2], executor="serial", progress=False)
    victim = sorted((tmp_path / "out" / "jobs").glob("*.parquet"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match=victim.name):
        load(tmp_path / "out")
    # a flipped byte inside the data: caught by the parquet reader or by the checksum
    for pos in range(len(data) // 4, len(data) // 2, 97):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        victim.write_bytes(bytes(bad))
        try:
            df = store.read_job(victim.stem)
        except StoreError as e:
            assert victim.name in str(e)
        else:  # the byte was in padding or metadata that does not change the content
            victim.write_bytes(data)
            assert df.equals(store.read_job(victim.stem))
    victim.write_bytes(data)
    assert not load(tmp_path / "out").attrs["complete"]


def test_resume_without_spec_and_show(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    spec = load_spec(_spec(tmp_path))
    store = Store.open_or_create(out, spec)
    run(store, expand(spec)[:4], executor="serial", progress=False)
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4/9 jobs done" in text and "--resume" in text
    assert main(["sweep", "--resume", "--out", str(out), "--executor", "serial", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["jobs_run"] == 5 and payload["jobs_skipped"] == 4
    assert main(["show", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "missing.toml"], "missing.toml"),
        (["sweep", "--resume"], "holds no sweep"),
        (["sweep", "SPEC", "--widths", "64,128"], "--widths"),
        (["sweep", "SPEC", "--workers", "0"], "--workers"),
        (["sweep", "SPEC", "--executor", "slurm"], "invalid choice"),
        (["show", "nowhere"], "holds no sweep"),
    ],
)
def test_cli_errors(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path)
    argv = [
        str(spec) if a == "SPEC" else str(tmp_path / a) if a.endswith(".toml") else a for a in argv
    ]
    if argv[0] == "show":
        argv[1] = str(tmp_path / argv[1])
    out = tmp_path / "out"
    try:
        rc = main([*argv, "--out", str(out)] if argv[0] == "sweep" else argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _sweep_cmd(spec: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loraplus_lab.sims.cli",
        "sweep",
        str(spec),
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "2",
    ]


def _start_sweep(spec: Path, out: Path) -> subprocess.Popen:
    """The sweep of ``spec`` on two workers in its own process group (to signal it as a
    terminal would), stderr captured."""
    return subprocess.Popen(
        _sweep_cmd(spec, out),
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    """Kill the whole sweep (driver and workers) at random moments, at least five times; the
    store stays readable after each kill, and --resume completes it with every job exactly once
    and the same DataFrame as an uninterrupted run.

    The jobs themselves take milliseconds once the kernels are compiled, so a fixed random delay
    either always lands in the start-up or lets the whole sweep finish, depending on the
    machine. The kills therefore take turns: at a random delay from the start (most land in the
    start-up: the store's skeleton, the workers' imports), and within 30 ms of a new job file
    appearing (while the other worker is mid-job or mid-write); after the fifth kill only the
    latter, so that some job always finishes before the last one."""
    text = TINY.replace("widths = [64, 128, 256]", "widths = [512, 1024, 2048, 4096, 8192]")
    text = text.replace("steps = 3", "steps = 1500").replace("chunk = 2", "chunk = 1")
    spec_path = _spec(tmp_path, text)
    spec = load_spec(spec_path)
    expected_keys = {j.key for j in expand(spec)}
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def n_done() -> int:
        return len(Store(out).done_keys()) if (out / "jobs").is_dir() else 0

    for _ in range(30):
        before = n_done()
        on_file = kills % 2 == 1 or kills >= 5
        delay = rng.uniform(0.3, 4.0)
        jitter = rng.uniform(0.0, 0.03)
        proc = _start_sweep(spec_path, out)
        start = time.monotonic()
        while (
            proc.poll() is None
            and time.monotonic() - start < 300
            and (n_done() == before if on_file else time.monotonic() - start < delay)
        ):
            time.sleep(0.005)
        if on_file:
            time.sleep(jitter)
        if proc.poll() is not None:  # finished before the kill
            assert proc.returncode == 0, proc.stderr.read()
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        if (out / "spec.json").exists():
            partial = load(out)  # every finished job readable, no half-written one
            assert partial.attrs["jobs_done"] == len(Store(out).done_keys())
            if len(partial):
                assert set(partial["job"].unique()) <= expected_keys
        if kills >= 5 and n_done() > 0:
            break
    assert kills >= 5
    done_before = Store(out).done_keys()
    assert done_before < expected_keys, "the kills should interrupt the sweep"
    proc = subprocess.run(
        [*_sweep_cmd(spec_path, out), "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in (out / "jobs").iterdir())
    assert files == sorted(f"{k}.parquet" for k in expected_keys)  # exactly once, no leftovers
    reference_store = Store.open_or_create(tmp_path / "reference", spec)
    run(reference_store, expand(spec), executor="serial", progress=False)
    pd.testing.assert_frame_equal(load(out), load(tmp_path / "reference"), check_exact=True)
    last = Store(out).meta()["runs"][-1]  # killed runs leave no record; the resume does
    assert last["jobs_skipped"] == len(done_before)
    assert last["jobs_run"] == len(expected_keys - done_before)


def _live_in_group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` that are alive (not zombies), from /proc."""
    live = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            live.append(int(stat_file.parent.name))
    return live


def test_ctrl_c_stops_at_once_and_records_what_finished(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the whole foreground group, as a terminal sends it) during a sweep on
    two local workers: the driver exits with 130 within seconds — and so do its workers (no
    process of the group is left alive): a running job is not waited for (300,000 steps a job,
    10-25 s each on two cores) — no job file appears after it has gone, and the run's record
    counts exactly the files it wrote and says it was interrupted."""
    text = TINY.replace("widths = [64, 128, 256]", "widths = [4096, 8192, 16384]")
    text = text.replace("steps = 3", "steps = 300000").replace("chunk = 2", "chunk = 1")
    spec_path = _spec(tmp_path, text)
    out = tmp_path / "out"
    proc = _start_sweep(spec_path, out)
    deadline = time.monotonic() + 300
    while not (out / "jobs").is_dir() or not Store(out).done_keys():
        assert proc.poll() is None and time.monotonic() < deadline, "no job finished"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    if Path("/proc/self/stat").is_file():  # Linux: the workers are gone too
        while _live_in_group(proc.pid) and time.monotonic() - t0 < seconds + 2:
            time.sleep(0.05)
        assert not _live_in_group(proc.pid), "a worker outlived the driver"
    err = proc.stderr.read()
    written = Store(out).done_keys()
    time.sleep(2.0)
    assert Store(out).done_keys() == written, "a job was written after the driver exited"
    assert proc.returncode == 130, err
    assert seconds < 5, f"the driver took {seconds:.1f} s to stop"
    assert len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err and "--resume" in err
    (record,) = Store(out).meta()["runs"]
    assert record["interrupted"] is True
    assert record["jobs_run"] == len(written) < record["jobs_total"] == 15
    assert not load(out).attrs["complete"]


def test_example_specs_parse_and_small_runs(tmp_path: Path) -> None:
    for p in sorted((ROOT / "specs").glob("*.toml")):
        load_spec(p)
    spec = load_spec(ROOT / "specs" / "small.toml")
    store = Store.open_or_create(tmp_path / "small", spec)
    summary = run(store, expand(spec), executor="local", workers=2, progress=False)
    assert summary.jobs_run == len(expand(spec)) >= 8
    assert load(tmp_path / "small").attrs["complete"]


MALFORMED = [
    ("unknown key", TINY.replace("chunk = 2", "chunk = 2\nchnuk = 3"), "chnuk"),
    ("wrong type", TINY.replace("steps = 3", 'steps = "3"'), "steps"),
    ("empty grid", TINY.replace("eta = [0.001, 0.01]", "eta = []"), "eta"),
    ("negative width", TINY.replace("[64, 128, 256]", "[64, -128]"), "widths[1]"),
    ("non-positive rate", TINY.replace("eta_b = 0.01", "eta_b = 0"), "eta_b"),
    ("unknown preset", TINY.replace('"loraplus"', '"lora+"'), "preset"),
    ("unknown optimizer", TINY.replace('"adam"', '"adagrad"'), "optimizer"),
    ("seeds not integers", TINY.replace("seeds = 2", "seeds = [0.5, 1]"), "seeds[0]"),
    (
        "grid too large for the memory limit",
        TINY.replace("chunk = 2", "chunk = 2\nmemory_limit_mb = 0.001"),
        "memory_limit_mb",
    ),
    ("missing file", None, "no-such-spec.toml"),
]


@pytest.mark.parametrize("kind, text, key", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_exit_2_nothing_written(
    kind: str, text: str | None, key: str, tmp_path: Path
) -> None:
    spec = tmp_path / "no-such-spec.toml" if text is None else _spec(tmp_path, text, "bad.toml")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loraplus_lab.sims.cli", "sweep", str(spec), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(spec.name) in err and key in err, err
    assert not out.exists()


def test_a_malformed_spec_is_refused_before_pandas_or_torch(tmp_path: Path) -> None:
    """The one-line error of a bad spec comes before pandas and torch are imported (checking
    it once took 10-12 s of importing torch); `--resume` of a bad store likewise names it."""
    bad = _spec(tmp_path, TINY.replace("[64, 128, 256]", "[64, -128]"), "bad.toml")
    out = tmp_path / "out"
    code = (
        "import sys; from loraplus_lab.sims.cli import main; "
        f"rc = main(['sweep', {str(bad)!r}, '--out', {str(out)!r}]); "
        "heavy = sorted({'torch', 'pandas'} & set(sys.modules)); "
        "assert not heavy, heavy; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"loraplus-lab: error: {bad}: widths[1]: must be a positive integer, got -128"
    )
    assert not out.exists()


# ----------------------------------------------------------------------------- job kinds
class _CountSpec:
    """The spec of a minimal job kind: ``count`` jobs, each returning one row."""

    def __init__(self, count: int, interrupt_at: int | None = None) -> None:
        self.name, self.count, self.interrupt_at = "counting", count, interrupt_at
        self.source = f"{count}\n"

    def to_dict(self) -> dict:
        return {"kind": "test-counting", "name": self.name, "count": self.count}


class _CountJob:
    """Job ``i`` of a counting sweep; with ``interrupt`` it plays Ctrl-C, after another worker
    has written the file of job ``i + 1`` without reporting it."""

    def __init__(
        self, i: int, store: Path, interrupt: bool, resources: dict | None, ray: bool = False
    ) -> None:
        self.key = f"{i:020x}"
        self.i, self.store, self.interrupt, self.ray = i, store, interrupt, ray
        if resources is not None:
            self.resources = resources

    def run(self) -> pd.DataFrame:
        if self.interrupt:
            late = _CountJob(self.i + 1, self.store, False, None)
            Store(self.store).write_job(late.key, late.run())
            raise KeyboardInterrupt
        row = {"i": self.i, "diverged": self.i == 1}
        if self.ray:  # what Ray gave this task
            import ray

            row["cpus"] = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
        return pd.DataFrame([row])


class _CountKind:
    name = "test-counting"
    spec_file = "count.txt"
    interrupt_at: int | None = None
    resources: dict | None = None
    ray = False

    def load_spec(self, text: str, path: str) -> _CountSpec:
        return _CountSpec(int(text))

    def jobs(self, spec: _CountSpec, store_path: Path) -> list[_CountJob]:
        return [
            _CountJob(i, Path(store_path), i == self.interrupt_at, self.resources, self.ray)
            for i in range(spec.count)
        ]


def test_any_registered_kind_runs_resumes_and_records_an_interruption(tmp_path: Path) -> None:
    """The engine runs a kind it knows only through the protocol: the store keeps its spec text
    under the kind's file name, an interrupted run records every job whose file exists (one a
    worker wrote without reporting it included), and a resume through store.jobs() runs exactly
    the missing ones."""
    from loraplus_lab.sims.sweep import kinds

    kind = _CountKind()
    kinds.register(kind)
    store = Store.open_or_create(tmp_path / "s", _CountSpec(5))
    assert (tmp_path / "s" / "count.txt").read_text() == "5\n"
    assert json.loads((tmp_path / "s" / "spec.json").read_text())["kind"] == "test-counting"
    kind.interrupt_at = 2
    with pytest.raises(KeyboardInterrupt):
        run(store, store.jobs(), executor="serial", progress=False)
    record = store.meta()["runs"][-1]
    assert record["interrupted"] is True
    assert (record["jobs_run"], record["diverged_runs"]) == (3, 1)  # jobs 0, 1 and 3
    assert load(tmp_path / "s").attrs["jobs_done"] == 3
    kind.interrupt_at = None
    again = run(Store.open(tmp_path / "s"), Store.open(tmp_path / "s").jobs(), executor="serial")
    assert (again.jobs_run, again.jobs_skipped) == (2, 3) and not again.interrupted
    df = load(tmp_path / "s")
    assert df.attrs["complete"] and sorted(df["i"]) == [0, 1, 2, 3, 4]
    with pytest.raises(StoreError, match="holds a different sweep"):
        Store.open_or_create(tmp_path / "s", _CountSpec(6))
    with pytest.raises(ValueError, match="unknown job kind 'no-such-kind'"):
        kinds.get("no-such-kind")


def test_ray_gives_each_job_the_resources_it_asks_for(tmp_path: Path) -> None:
    """Executors pass a job's ``resources`` to Ray: a job asking for half a CPU gets half a
    CPU; one that asks for nothing gets the default, one CPU."""
    ray = pytest.importorskip("ray")
    from loraplus_lab.sims.sweep import kinds

    # Ray's workers cannot import this test module: send its job class by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    kind = _CountKind()
    kind.ray = True
    kinds.register(kind)
    got = {}
    ray.init(num_cpus=2, log_to_driver=False)  # one cluster for both runs (run() joins it)
    try:
        for resources, expected in (({"num_cpus": 0.5}, 0.5), (None, 1.0)):
            kind.resources = resources
            out = tmp_path / str(expected)
            store = Store.open_or_create(out, _CountSpec(2))
            run(store, store.jobs(), executor="ray", progress=False)
            got[expected] = sorted(load(out)["cpus"])
    finally:
        ray.shutdown()
    assert got == {0.5: [0.5, 0.5], 1.0: [1.0, 1.0]}


def test_a_store_written_before_job_kinds_is_a_toy_store(tmp_path: Path, capsys) -> None:
    """Stores written before kinds existed have no "kind" in spec.json: they open, compare,
    load and resume as toy sweeps."""
    spec = load_spec(_spec(tmp_path))
    out = tmp_path / "old"
    store = Store.open_or_create(out, spec)
    run(store, expand(spec)[:3], executor="serial", progress=False)
    held = json.loads((out / "spec.json").read_text())
    del held["kind"]
    (out / "spec.json").write_text(json.dumps(held, indent=2))
    assert Store.open_or_create(out, spec).kind().name == "toy"
    assert load(out).attrs["jobs_done"] == 3
    assert main(["sweep", "--resume", "--out", str(out), "--executor", "serial", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["jobs_run"] == 6


def test_run_summary_counts_in_words() -> None:
    """The one-line summary says "1 job run", "1 diverged run", "2 jobs run"."""
    from loraplus_lab.sims.sweep.executors import RunSummary

    one = RunSummary(Path("out"), "local", 1, 15, jobs_run=1, jobs_skipped=14, diverged_runs=1)
    assert one.text().startswith("1 job run, 14 already done, 1 diverged run, ")
    assert "(local, 1 worker)" in one.text()
    two = RunSummary(Path("out"), "local", 2, 15, jobs_run=2, diverged_runs=0)
    assert two.text().startswith("2 jobs run, 0 already done, 0 diverged runs, ")
    assert "(local, 2 workers)" in two.text()
