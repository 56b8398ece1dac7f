"""The results store's promises, checked by injecting faults.

The store promises that a finished job is a file that appears whole or not at all (written to a
temporary name, synced, renamed, the folder synced) and that a file whose content does not match
its checksum is refused by name. SIGKILL of a whole sweep cannot tell an atomic write of a small
file from a direct one, and flipping bytes of a Parquet file mostly breaks the reader before the
checksum is reached; so these tests crash a writer in the middle of its write, record the order
of the system calls, and edit a file's values while keeping it valid Parquet.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims.sweep import Store, StoreError, parse_spec

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SPEC = """
name = "store"
steps = 1
seeds = 1
widths = [64]

[[parametrizations]]
preset = "lora"
eta = 0.01
"""

ROOT = Path(__file__).resolve().parents[1]


def _frame(rows: int = 2000) -> pd.DataFrame:
    """A job-like frame, large enough that its file takes many bytes."""
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "param": np.where(np.arange(rows) % 2 == 0, "lora", "loraplus"),
            "width": np.full(rows, 64),
            "seed": np.arange(rows) % 7,
            "loss": rng.random(rows),
            "delta1": rng.standard_normal(rows),
            "diverged": np.zeros(rows, bool),
        }
    )


def _store(tmp_path: Path) -> Store:
    return Store.open_or_create(tmp_path / "store", parse_spec(SPEC))


# A writer that dies (SIGKILL, no clean-up possible) after half of the first Parquet file it
# writes has reached the disk: every file opened for writing through Python's file objects
# (open, io.open, os.fdopen, Path.write_bytes) is wrapped, and so is os.write on a raw file
# descriptor; whatever name the store writes to.
CRASHING_WRITER = r"""
import builtins, io, os, signal, sys

import pandas as pd

from loraplus_lab.sims.sweep.store import Store

real_open = io.open


class CrashMidWrite:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        data = bytes(data)
        if data[:4] == b"PAR1":  # the start of a Parquet file
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            os.fsync(self._f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def crashing_open(file, mode="r", *args, **kwargs):
    f = real_open(file, mode, *args, **kwargs)
    return CrashMidWrite(f) if any(c in mode for c in "wax+") else f


real_write = os.write


def crashing_write(fd, data):  # writes through raw file descriptors
    data = bytes(data)
    if data[:4] == b"PAR1":
        real_write(fd, data[: len(data) // 2])
        os.fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)


io.open = builtins.open = crashing_open
os.write = crashing_write
df = pd.read_pickle(sys.argv[2])
Store(sys.argv[1]).write_job("victim", df)
print("the write finished: no crash was injected")
"""


def test_a_crash_in_the_middle_of_a_write_leaves_no_visible_job(tmp_path: Path) -> None:
    store = _store(tmp_path)
    df = _frame()
    store.write_job("done", df)  # a finished job beside the one that crashes
    pickled = tmp_path / "frame.pkl"
    df.to_pickle(pickled)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(store.path), str(pickled)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    # the crash happened inside a write through Python's file objects
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
    # half a file reached the disk, under a temporary name that no reader takes for a job
    leftovers = [p for p in store.jobs_dir.iterdir() if p.name != "done.parquet"]
    assert leftovers and all(p.stat().st_size > 0 for p in leftovers)
    assert not (store.jobs_dir / "victim.parquet").exists()
    assert store.done_keys() == {"done"}
    pd.testing.assert_frame_equal(store.read_job("done"), df)
    # the next run removes the leftovers and writes the job whole
    assert store.clean_partial() == len(leftovers)
    assert sorted(p.name for p in store.jobs_dir.iterdir()) == ["done.parquet"]
    store.write_job("victim", df)
    pd.testing.assert_frame_equal(store.read_job("victim"), df)


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As far as a test can see: the order of fsync and rename calls, by inode."""
    store = _store(tmp_path)
    final = store.jobs_dir / "k.parquet"
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode), final.exists()))
        real_fsync(fd)

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            events.append(("rename", os.stat(src).st_ino, Path(dst)))
            return real(src, dst, *args, **kwargs)

        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    store.write_job("k", _frame(10))
    monkeypatch.undo()

    file_ino, dir_ino = final.stat().st_ino, store.jobs_dir.stat().st_ino
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == final]
    assert len(renames) == 1, events  # the file reaches its name by a rename, once
    r = renames[0]
    assert events[r][1] == file_ino  # of the file that now holds the job
    synced_file = [i for i, e in enumerate(events) if e[0] == "fsync" and e[1] == file_ino]
    assert synced_file and synced_file[0] < r, events  # its bytes are on disk before the rename
    assert not events[synced_file[0]][3]  # and the final name did not exist yet
    synced_dir = [i for i, e in enumerate(events) if e[:3] == ("fsync", dir_ino, True)]
    assert synced_dir and synced_dir[-1] > r, events  # the rename itself is made durable


def _rewrite_values(path: Path, edit) -> None:
    """Rewrite a job file as valid Parquet with edited values and its original metadata
    (the stored checksum included)."""
    table = pq.read_table(path)
    df = edit(table.to_pandas())
    new = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
        table.schema.metadata
    )
    pq.write_table(new, path)


@pytest.mark.parametrize(
    "what, edit",
    [
        ("one value in its last bit", lambda d: d.assign(loss=np.nextafter(d["loss"], 2.0))),
        ("two rows swapped", lambda d: d.iloc[[1, 0, *range(2, len(d))]]),
        ("a flag flipped", lambda d: d.assign(diverged=d["diverged"].to_numpy() ^ (d.index == 5))),
        ("a row dropped", lambda d: d.iloc[1:]),
    ],
)
def test_edited_values_in_valid_parquet_are_refused_by_name(
    what: str, edit, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    df = _frame(50)
    path = store.write_job("edited", df)
    pd.testing.assert_frame_equal(store.read_job("edited"), df)  # the untouched file reads
    _rewrite_values(path, edit)
    reread = pq.read_table(path).to_pandas()  # still valid Parquet, with other values
    assert not reread.equals(df)
    with pytest.raises(StoreError, match="edited.parquet.*does not match its checksum"):
        store.read_job("edited")


def test_a_file_without_its_checksum_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path = store.write_job("bare", _frame(20))
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({}), path)
    with pytest.raises(StoreError, match="bare.parquet"):
        store.read_job("bare")


def test_a_skeleton_killed_before_its_spec_json_is_written_again(tmp_path: Path) -> None:
    """A run killed while it wrote the store's skeleton (``spec.json`` comes last) leaves a
    folder the same spec reopens: each prefix of the skeleton — nothing, an empty ``jobs/``, a
    temporary file, the spec text, ``meta.json`` — is written again; a folder with anything
    else, or with the skeleton of another sweep, is refused and left as it was."""
    spec = parse_spec(SPEC)
    full = Store.open_or_create(tmp_path / "full", spec).path
    spec_file = "spec.toml"
    assert (full / spec_file).read_text() == SPEC
    prefixes = {
        "jobs only": ["jobs"],
        "temporary files": ["jobs", "jobs/.x.parquet.0a1b2c3d.tmp", ".meta.json.0a1b2c3d.tmp"],
        "spec text": ["jobs", spec_file],
        "meta": ["jobs", spec_file, "meta.json"],
    }
    for case, entries in prefixes.items():
        out = tmp_path / case.replace(" ", "_")
        out.mkdir()
        for e in entries:
            src = full / e
            if e == "jobs":
                (out / e).mkdir()
            elif src.exists():
                (out / e).write_bytes(src.read_bytes())
            else:
                (out / e).write_bytes(b"half")
        store = Store.open_or_create(out, parse_spec(SPEC))
        assert (out / "spec.json").is_file(), case
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in full.iterdir())
        assert not any(store.jobs_dir.iterdir()), case  # the temporary files are gone
        assert Store.open_or_create(out, parse_spec(SPEC)).path == out
    half = tmp_path / "half"
    (half / "jobs").mkdir(parents=True)
    with pytest.raises(StoreError, match="without --resume"):  # --resume opens, never creates
        Store.open(half)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="without --resume"):
        Store.open(tmp_path / "empty")
    with pytest.raises(StoreError, match="holds no sweep .there is no such folder"):
        Store.open(tmp_path / "nowhere")
    other = SPEC.replace('name = "store"', 'name = "other"')
    foreign = {
        "a file of the user's": {"notes.txt": b"mine"},
        "a result without a store": {"jobs": None, "jobs/abc.parquet": b"x"},
        "another sweep's spec text": {"jobs": None, spec_file: other.encode()},
        "another sweep's meta": {"meta.json": b'{"name": "other"}'},
        "a meta.json that is not ours": {"meta.json": b"[1, 2]"},
    }
    for case, entries in foreign.items():
        out = tmp_path / case.replace(" ", "_").replace("'", "")
        out.mkdir()
        for e, data in entries.items():
            (out / e).mkdir() if data is None else (out / e).write_bytes(data)
        before = sorted((p.relative_to(out), p.is_dir()) for p in out.rglob("*"))
        with pytest.raises(StoreError, match="not empty and holds no sweep"):
            Store.open_or_create(out, parse_spec(SPEC))
        assert sorted((p.relative_to(out), p.is_dir()) for p in out.rglob("*")) == before, case
