"""Files the package writes: atomic writes, output folders, and the record of versions.

One home for each:

- :func:`atomic_write` writes a file through a temporary name in the same folder, flushed to
  disk, then renamed over the final name, and syncs the folder: a reader (or a crash at any
  instant) sees the old file or the whole new one, never a part. :func:`publish_dir` does the
  same for a folder written in full under a temporary name.
- :class:`OutputDir` checks an output folder for writing before any work, and removes it again
  if the command that created it fails before writing anything; :func:`check_output` refuses a
  folder that is not empty without creating anything.
- :func:`versions` and :func:`git_commit` are what every result records beside itself.

This module imports only the standard library at import time.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from loraplus_lab.sims.checks import InputError

#: Suffix of temporary files and folders (a writer that died leaves these; see
#: :func:`remove_partial`).
TMP_SUFFIX = ".tmp"


def _tmp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def sync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where the OS refuses."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], content: bytes | str | Callable[[str], object]
) -> Path:
    """Write ``path`` atomically: temporary file in the same folder, fsync, rename, folder sync.

    Args:
        path: the final file; its folder is created if needed.
        content: bytes, text (UTF-8), or a function that writes the file at the path it is given
            (``lambda p: df.to_csv(p, index=False)``, ``lambda p: fig.savefig(p, format="png")``).

    The file gets the permissions of a new file (``0o666`` less the umask). On any error, the
    temporary file is removed and the final name left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        if callable(content):
            os.close(fd)
            fd = -1
            content(str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
        else:
            data = content.encode() if isinstance(content, str) else content
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)
    return path


def partial_dir(final: str | os.PathLike[str]) -> Path:
    """A fresh, empty temporary folder beside ``final`` to write it in full before
    :func:`publish_dir` (a leftover of an earlier attempt of this process is removed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}{TMP_SUFFIX}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_dir(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Move the finished folder ``tmp`` to ``final`` by a rename, replacing an older ``final``
    (moved aside first, then removed), and sync the parent folder."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}{TMP_SUFFIX}"
        final.rename(old)
    tmp.rename(final)
    sync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial(folder: str | os.PathLike[str]) -> int:
    """Remove the temporary files and folders that writers which died left in ``folder``;
    returns how many."""
    n = 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse an output folder that is a file, is not empty (unless ``overwrite``), or whose
    nearest existing parent cannot be written; creates nothing.

    Raises:
        InputError: naming the folder (``out: …``).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"out: {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"out: {out} exists and is not empty; give a new or empty folder")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise InputError(f"out: {parent} is not writable")


class OutputDir:
    """An output folder checked for writing before any work, and removed again (if this command
    created it and it is still empty) when the command fails.

    Raises:
        InputError: the path is a file, or the folder cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        given = str(path)
        self.path = Path(path).expanduser().resolve()
        self.created: list[Path] = []
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output folder {given!r} is a file")
        missing = []
        p = self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self.created.append(d)
            probe = _tmp_name(self.path / "write-probe")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        except OSError as e:
            self.cleanup()
            raise InputError(f"output folder {given!r} is not writable ({e.strerror})") from None

    def is_empty(self) -> bool:
        """Whether the folder holds nothing."""
        return not any(self.path.iterdir())

    def cleanup(self) -> None:
        """Remove the folders this command created, if they are empty."""
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []


def versions(*libraries: str) -> dict[str, str]:
    """Versions a result depends on: Python, this package, the simulator's engine version, and
    ``libraries`` (default numpy, scipy, pandas, torch), each read from the imported module.

    Returns ``{"python": …, "loraplus-lab": …, "engine": …, "numpy": …, …}`` in that order.
    """
    import importlib

    from loraplus_lab import sims
    from loraplus_lab.sims.toy.engine import ENGINE_VERSION

    out = {
        "python": sys.version.split()[0],
        "loraplus-lab": sims.__version__,
        "engine": str(ENGINE_VERSION),
    }
    for name in libraries or ("numpy", "scipy", "pandas", "torch"):
        out[name] = str(importlib.import_module(name).__version__)
    return out


def git_commit() -> str | None:
    """The commit of the git checkout this package runs from (``None`` outside one)."""
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
    return (out.stdout.strip() or None) if out.returncode == 0 else None
