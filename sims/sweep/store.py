"""The results store: a folder on local or shared disk, for sweeps of any job kind.

Layout::

    DIR/SPEC_FILE          the spec as written by the user (``spec.toml`` for toy sweeps; each
                           kind names its file, see :mod:`loraplus_lab.sims.sweep.kinds`)
    DIR/spec.json          the normalised spec with its ``kind``; a different spec is refused
    DIR/meta.json          versions, git commit, host, and one record per run (start, end, ...)
    DIR/jobs/KEY.parquet   one file per finished job, KEY = the job's hash id

Why one Parquet file per job, written to a temporary name, synced to disk and renamed (then the
folder synced, so that the rename itself survives a power cut): a rename within a folder is
atomic on POSIX filesystems and on NFS, so a reader sees either no file or the whole file,
whatever instant a worker or the machine dies at; workers never share a file, so no lock is
needed (SQLite's locking is unreliable on network filesystems, the usual home of cluster
stores); a job that is done is simply a file that exists. Each file carries a SHA-256 of its
content in its Parquet metadata, checked on every read, so a truncated or corrupted file is
reported by name instead of silently dropped or mis-read.

The store knows jobs only through the kind protocol: :meth:`Store.spec` parses the kept spec
text with its kind, :meth:`Store.jobs` expands it. This module imports neither torch nor any
kind's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.files import TMP_SUFFIX, atomic_write, git_commit, remove_partial, versions
from loraplus_lab.sims.sweep import kinds

_HASH_KEY = b"loraplus.sha256"
#: Where stores written before job kinds existed kept every kind's spec text.
_LEGACY_SPEC_FILE = "spec.toml"


class StoreError(InputError):
    """A store that cannot be used: a different spec, a corrupted file, a missing folder."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2).encode()


def content_hash(df: pd.DataFrame) -> str:
    """SHA-256 of a DataFrame's column names, dtypes and values (row order included)."""
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return h.hexdigest()


class Store:
    """A sweep's results folder (see the module docstring for the layout)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.jobs_dir = self.path / "jobs"

    # ------------------------------------------------------------------ opening
    @classmethod
    def open_or_create(cls, path: str | os.PathLike, spec: Any) -> Store:
        """Open the store of ``spec`` (a spec of any job kind) at ``path``, creating it if needed.

        A skeleton that a killed run left half-written (no ``spec.json`` yet, and nothing but
        the skeleton's own files: an empty ``jobs/``, the spec text, ``meta.json``, temporary
        files) is written again.

        Raises :class:`StoreError` if the folder holds a different spec, or is a non-empty
        folder that is not a store.
        """
        store = cls(path)
        wanted = {"kind": kinds.DEFAULT_KIND, **spec.to_dict()}
        kind = kinds.get(wanted["kind"])
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
        if store.path.exists() and not store._half_made(kind.spec_file, spec.source, spec.name):
            raise StoreError(f"{store.path} is not empty and holds no sweep; choose another --out")
        if store.path.exists():
            remove_partial(store.path)
            store.clean_partial()
        store.jobs_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(store.path / kind.spec_file, spec.source)
        meta = {
            "name": spec.name,
            "kind": kind.name,
            "created": _now(),
            "host": socket.gethostname(),
            "git_commit": git_commit(),
            "versions": versions(),
            "runs": [],
        }
        atomic_write(store.path / "meta.json", _json(meta))
        # spec.json last: its presence marks a complete store skeleton
        atomic_write(store.path / "spec.json", _json(wanted))
        return store

    def _half_made(self, spec_file: str, source: str | bytes, name: str) -> bool:
        """Whether the folder (without ``spec.json``) is empty or holds only what
        :meth:`open_or_create` writes for this spec before ``spec.json``: a ``jobs/`` folder
        with nothing but temporary files in it, ``spec_file`` holding ``source``, a ``meta.json``
        of the sweep ``name``, and temporary files of :func:`atomic_write`. Anything else (a
        file of the user's under one of these names included) is not ours to overwrite."""

        def temporary(p: Path) -> bool:
            return p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)

        for p in self.path.iterdir():
            if temporary(p):
                continue
            if p == self.jobs_dir:
                ours = p.is_dir() and all(temporary(q) for q in p.iterdir())
            elif p.name == spec_file:
                text = source.encode() if isinstance(source, str) else source
                ours = p.is_file() and p.read_bytes() == text
            elif p.name == "meta.json":
                try:
                    ours = json.loads(p.read_text()).get("name") == name
                except (OSError, ValueError, AttributeError):
                    ours = False
            else:
                ours = False
            if not ours:
                return False
        return True

    @classmethod
    def open(cls, path: str | os.PathLike) -> Store:
        """Open an existing store; :class:`StoreError` if ``path`` holds none."""
        store = cls(path)
        if not (store.path / "spec.json").is_file():
            if not store.path.exists():
                raise StoreError(f"{store.path} holds no sweep (there is no such folder)")
            if store.path.is_dir() and (
                store.jobs_dir.is_dir()
                or (store.path / "meta.json").is_file()
                or not any(store.path.iterdir())
            ):
                raise StoreError(
                    f"{store.path} holds no sweep (no spec.json): if a run was stopped while it "
                    "created the folder, run the same command again without --resume"
                )
            raise StoreError(f"{store.path} holds no sweep (no spec.json)")
        return store

    # ------------------------------------------------------------------ contents
    def spec_dict(self) -> dict[str, Any]:
        """The normalised spec the store was created with (with its ``kind``; a store written
        before kinds existed holds a toy sweep)."""
        try:
            held = json.loads((self.path / "spec.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.path / 'spec.json'} is unreadable: {e}") from None
        if not isinstance(held, dict):
            raise StoreError(f"{self.path / 'spec.json'} is not a JSON object")
        held.setdefault("kind", kinds.DEFAULT_KIND)
        return held

    def kind(self) -> kinds.JobKind:
        """The job kind of the stored sweep."""
        return kinds.get(self.spec_dict()["kind"])

    def spec(self) -> Any:
        """The spec, parsed again by its kind from the kept spec text."""
        kind = self.kind()
        path = self.path / kind.spec_file
        if not path.is_file() and (self.path / _LEGACY_SPEC_FILE).is_file():
            path = self.path / _LEGACY_SPEC_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{path} is unreadable: {e}") from None
        return kind.load_spec(text, str(path))

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
        atomic_write(self.path / "meta.json", _json(meta))

    def done_keys(self) -> set[str]:
        """Keys of the jobs whose result file exists."""
        if not self.jobs_dir.is_dir():
            return set()
        return {p.stem for p in self.jobs_dir.glob("*.parquet") if not p.name.startswith(".")}

    def clean_partial(self) -> int:
        """Remove temporary files left by writers that died; returns how many."""
        return remove_partial(self.jobs_dir) if self.jobs_dir.is_dir() else 0

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
        return atomic_write(self.jobs_dir / f"{key}.parquet", sink.getvalue().to_pybytes())

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

    def jobs(self) -> list[kinds.Job]:
        """Every job of the stored spec, in order, as its kind expands it."""
        return list(self.kind().jobs(self.spec(), self.path))

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
