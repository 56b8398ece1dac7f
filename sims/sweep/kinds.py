"""Job kinds: the small protocol through which the sweep engine learns what it runs.

The store, the executors and ``--resume`` know nothing of toy models or transformers. A *job
kind* tells them three things: the name of the file that keeps the user's spec text, how to
parse that text into a spec, and which jobs a spec expands into. A *job* has a ``key`` (a hex
id that names its result file ``jobs/KEY.parquet``) and a ``run()`` that returns its tidy rows.

Kinds are found by name: first among those passed to :func:`register`, then the built-in toy
kind, then the entry points of the group ``loraplus_lab.job_kinds`` (a package declares one in
its ``pyproject.toml``::

    [project.entry-points."loraplus_lab.job_kinds"]
    finetune-grid = "loraplus_lab.sims.realmodels.grid:GRID_KIND"

so the sweep layer never imports the code of a kind above it). A spec object of any kind has
``name``, ``source`` (the text kept in ``spec_file``) and ``to_dict()`` (normalised, with
``"kind"``); the store keeps ``to_dict()`` as ``spec.json`` and refuses a different one.

This module sits at the bottom of the sweep layer and imports nothing from it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from loraplus_lab.sims.checks import InputError, nonnegative

if TYPE_CHECKING:
    import pandas

#: Entry-point group in which packages declare job kinds.
ENTRY_POINT_GROUP = "loraplus_lab.job_kinds"
#: The kind of a store whose ``spec.json`` names none (stores written before kinds existed).
DEFAULT_KIND = "toy"
#: Ray resources of a job that declares none.
DEFAULT_RESOURCES: Mapping[str, float] = {"num_cpus": 1}
#: Kinds that ship with the sweep engine, imported when first asked for.
_BUILTIN = {"toy": ("loraplus_lab.sims.sweep.jobs", "TOY_KIND")}
#: File names of the store itself, which a kind's ``spec_file`` may not take.
_RESERVED = ("spec.json", "meta.json", "jobs")


class Job(Protocol):
    """One unit of work of a sweep.

    Attributes:
        key: hex id of the job; names its result file ``jobs/KEY.parquet``. Equal keys mean
            equal results: a job whose file exists is never run again.

    An optional attribute ``resources`` (a mapping such as ``{"num_cpus": 1, "num_gpus": 1}``)
    gives the Ray resources the job needs; :data:`DEFAULT_RESOURCES` otherwise.
    """

    key: str

    def run(self) -> pandas.DataFrame:
        """Do the work; return the job's tidy rows."""
        ...


class JobKind(Protocol):
    """A kind of sweep job.

    Attributes:
        name: stored as ``"kind"`` in the store's ``spec.json``.
        spec_file: file name under which the store keeps the user's spec text
            (``"spec.toml"``, ``"grid.json"``).
    """

    name: str
    spec_file: str

    def load_spec(self, text: str, path: str) -> Any:
        """Parse the kept spec text (``path`` names it in messages); bad input raises
        :class:`~loraplus_lab.sims.checks.InputError`."""
        ...

    def jobs(self, spec: Any, store_path: pathlib.Path) -> list[Job]:
        """Every job of ``spec`` in a fixed order, for the store at ``store_path``."""
        ...


_registry: dict[str, JobKind] = {}


def register(kind: JobKind) -> None:
    """Make ``kind`` known under ``kind.name`` (replacing a kind of the same name).

    Raises:
        InputError: ``kind`` lacks a part of the protocol, or its ``spec_file`` is not a plain
            file name or is one the store uses itself.
    """
    name = getattr(kind, "name", None)
    if not isinstance(name, str) or not name:
        raise InputError(f"a job kind needs a non-empty name, got {name!r}")
    for attr in ("load_spec", "jobs"):
        if not callable(getattr(kind, attr, None)):
            raise InputError(f"job kind {name!r} has no method {attr}()")
    spec_file = getattr(kind, "spec_file", None)
    if (
        not isinstance(spec_file, str)
        or not spec_file
        or pathlib.PurePath(spec_file).name != spec_file
        or spec_file.startswith(".")
        or spec_file in _RESERVED
    ):
        raise InputError(
            f"job kind {name!r}: spec_file must be a plain file name, got {spec_file!r}"
        )
    _registry[name] = kind


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get(name: str) -> JobKind:
    """The kind called ``name``: registered, built in, or declared by an entry point.

    Raises:
        InputError: no kind of that name (the message lists the known ones).
    """
    if name in _registry:
        return _registry[name]
    if name in _BUILTIN:
        import importlib

        module, attr = _BUILTIN[name]
        register(getattr(importlib.import_module(module), attr))
        return _registry[name]
    found = _entry_points().get(name) if isinstance(name, str) else None
    if found is None:
        raise InputError(f"unknown job kind {name!r}; known kinds: {', '.join(known())}")
    kind = found.load()
    if isinstance(kind, type):
        kind = kind()
    if getattr(kind, "name", None) != name:
        raise InputError(
            f"the entry point {name!r} of {ENTRY_POINT_GROUP} gives a kind named "
            f"{getattr(kind, 'name', None)!r}"
        )
    register(kind)
    return kind


def known() -> list[str]:
    """Names of every kind that :func:`get` can find."""
    return sorted({*_registry, *_BUILTIN, *_entry_points()})


def resources(job: Job) -> dict[str, float]:
    """The Ray resources of ``job`` (its ``resources`` attribute, else
    :data:`DEFAULT_RESOURCES`), each a non-negative number."""
    given = getattr(job, "resources", None)
    if given is None:
        return dict(DEFAULT_RESOURCES)
    if not isinstance(given, Mapping):
        raise InputError(f"job {job.key}: resources must be a mapping, got {given!r}")
    return {str(k): nonnegative(f"job {job.key}: resources[{k!r}]", v) for k, v in given.items()}
