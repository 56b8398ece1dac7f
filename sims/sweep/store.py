"""The results store: a folder on local or shared disk.

Layout::

    DIR/spec.toml          the spec as written by the user
    DIR/spec.json          the normalised spec; a different spec is refused, never mixed in
    DIR/meta.json          versions, git commit, host, and one record per run (start, end, ...)
    DIR/jobs/KEY.parquet   one file per finished job, KEY = hash of the job's configuration

Why one Parquet file per job, written to a temporary name, synced to disk and renamed (then the
folder synced, so that the rename itself survives a power cut): a rename within a folder is
atomic on POSIX filesystems and on NFS, so a reader sees either no file or the whole file,
whatever instant a worker or the machine dies at; workers never share a file, so no lock is
needed (SQLite's locking is unreliable on network filesystems, the usual home of cluster
stores); a job that is done is simply a file that exists. Each file carries a SHA-256 of its
content in its Parquet metadata, checked on every read, so a truncated or corrupted file is
reported by name instead of silently dropped or mis-read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from loraplus_lab.sims.sweep.jobs import Job, expand, versions
from loraplus_lab.sims.sweep.spec import SweepSpec

_HASH_KEY = b"loraplus.sha256"


class StoreError(ValueError):
    """A store that cannot be used: a different spec, a corrupted file, a missing folder."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable by syncing the folder itself (where a folder can be
    opened and synced: POSIX; elsewhere nothing to do)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # a filesystem that cannot sync a folder
        pass
    finally:
        os.close(fd)


def content_hash(df: pd.DataFrame) -> str:
    """SHA-256 of a DataFrame's column names, dtypes and values (row order included)."""
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Store:
    """A sweep's results folder (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.jobs_dir = self.path / "jobs"

    # ------------------------------------------------------------------ opening
    @classmethod
    def open_or_create(cls, path: str | os.PathLike, spec: SweepSpec) -> Store:
        """Open the store of ``spec`` at ``path``, creating it if needed.

        Raises :class:`StoreError` if the folder holds a different spec, or is a non-empty
        folder that is not a store.
        """
        store = cls(path)
        wanted = spec.to_dict()
        if (store.path / "spec.json").exists():
            held = store.spec_dict()
            if held != wanted:
                diff = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
                raise StoreError(
                    f"{store.path} holds a different sweep (differs in: {', '.join(diff)}); "
                    "choose another --out folder"
                )
            store.jobs_dir.mkdir(exist_ok=True)
            return store
        if store.path.exists() and any(store.path.iterdir()):
            raise StoreError(f"{store.path} is not empty and holds no sweep; choose another --out")
        store.jobs_dir.mkdir(parents=True, exist_ok=True)
        _atomic_bytes(store.path / "spec.toml", spec.source.encode())
        meta = {
            "name": spec.name,
            "created": _now(),
            "host": socket.gethostname(),
            "git_commit": _git_commit(),
            "versions": versions(),
            "runs": [],
        }
        _atomic_bytes(store.path / "meta.json", json.dumps(meta, indent=2).encode())
        # spec.json last: its presence marks a complete store skeleton
        _atomic_bytes(store.path / "spec.json", json.dumps(wanted, indent=2).encode())
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        """Open an existing store; :class:`StoreError` if ``path`` holds none."""
        store = cls(path)
        if not (store.path / "spec.json").is_file():
            raise StoreError(f"{store.path} holds no sweep (no spec.json)")
        return store

    # ------------------------------------------------------------------ contents
    def spec_dict(self) -> dict[str, Any]:
        """The normalised spec the store was created with."""
        try:
            return json.loads((self.path / "spec.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.path / 'spec.json'} is unreadable: {e}") from None

    def spec(self) -> SweepSpec:
        """The spec, parsed again from the stored ``spec.toml``."""
        from loraplus_lab.sims.sweep.spec import parse_spec

        return parse_spec((self.path / "spec.toml").read_text(), str(self.path / "spec.toml"))

    def meta(self) -> dict[str, Any]:
        """Versions, host, git commit and the record of every run."""
        try:
            return json.loads((self.path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.path / 'meta.json'} is unreadable: {e}") from None

    def record_run(self, run: dict[str, Any]) -> None:
        """Append a run record to ``meta.json`` (atomic rewrite; called by the driver only)."""
        meta = self.meta()
        meta["runs"].append(run)
        _atomic_bytes(self.path / "meta.json", json.dumps(meta, indent=2).encode())

    def done_keys(self) -> set[str]:
        """Keys of the jobs whose result file exists."""
        if not self.jobs_dir.is_dir():
            return set()
        return {p.stem for p in self.jobs_dir.glob("*.parquet") if not p.name.startswith(".")}

    def clean_partial(self) -> int:
        """Remove temporary files left by writers that died; returns how many."""
        n = 0
        for p in self.jobs_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def write_job(self, key: str, df: pd.DataFrame) -> Path:
        """Write one job's rows atomically (temporary file, fsync, rename, fsync of the folder)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_HASH_KEY] = content_hash(df).encode()
        table = table.replace_schema_metadata(meta)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path = self.jobs_dir / f"{key}.parquet"
        _atomic_bytes(path, sink.getvalue().to_pybytes())
        return path

    def read_job(self, key: str) -> pd.DataFrame:
        """One job's rows, checked against the hash stored with them."""
        import pyarrow.parquet as pq

        path = self.jobs_dir / f"{key}.parquet"
        try:
            table = pq.read_table(path)
            df = table.to_pandas()
        except Exception as e:  # pyarrow raises several types for damaged files
            raise StoreError(
                f"{path} is truncated or corrupted ({type(e).__name__}: {e})"
            ) from None
        stored = (table.schema.metadata or {}).get(_HASH_KEY)
        if stored is None or stored.decode() != content_hash(df):
            raise StoreError(f"{path} is corrupted: its content does not match its checksum")
        return df

    def jobs(self) -> list[Job]:
        """Every job of the stored spec, in order (toy sweeps, or real-model grids)."""
        d = self.spec_dict()
        if d.get("kind") == "finetune-grid":
            from loraplus_lab.sims.realmodels.grid import jobs_from_dict

            return jobs_from_dict(d, str(self.path))
        return expand(self.spec())

    def load(self) -> pd.DataFrame:
        """Every finished job's rows as one tidy DataFrame, in job order.

        ``df.attrs`` holds ``config`` (the normalised spec), ``jobs_total``, ``jobs_done`` and
        ``complete``.
        """
        jobs = self.jobs()
        done = self.done_keys()
        frames = [self.read_job(j.key) for j in jobs if j.key in done]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        n_done = sum(j.key in done for j in jobs)
        df.attrs = {
            "config": self.spec_dict(),
            "jobs_total": len(jobs),
            "jobs_done": n_done,
            "complete": n_done == len(jobs),
        }
        return df


def load(path: str | os.PathLike) -> pd.DataFrame:
    """The tidy DataFrame of a stored sweep (see :meth:`Store.load`)."""
    return Store.open(path).load()
