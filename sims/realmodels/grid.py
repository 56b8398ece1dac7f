"""(η_A, η_B) grids of real-model finetunes, run as a job kind of the sweep engine.

:func:`finetune_grid` trains one finetune (:mod:`loraplus_lab.sims.realmodels.finetune`) per
grid point. Each point is a job named by a hash of its full configuration; the sweep engine's
store (one Parquet file per finished point, written atomically, checksummed) and executors
(serial, local processes, Ray) run and keep them, so an interrupted grid resumes where it
stopped — by running the same grid again, or with ``loraplus-lab sweep --resume --out OUT`` —
and never trains a point twice.

The store in ``OUT`` keeps the grid as ``grid.json`` (the kind ``finetune-grid`` is declared to
the engine by the entry point of ``pyproject.toml``); the heavy artifacts of a point (its
``config.json``, per-step ``metrics.csv`` and ``summary.json``) go to ``OUT/points/<point>/``;
the job's row set in the store is that point's metrics, one row per logged step, with ``eta_a``
and ``eta_b`` columns; ``OUT/grid.csv`` has one summary row per point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from loraplus_lab.sims.checks import InputError, positive
from loraplus_lab.sims.files import atomic_write, check_output
from loraplus_lab.sims.realmodels.finetune import (
    SUMMARY_FILE,
    FinetuneConfig,
    load_inputs,
    make_config,
    prepare,
    run_prepared,
    validate_config,
)

KIND = "finetune-grid"
GRID_TABLE = "grid.csv"
#: Fields of :class:`FinetuneConfig` a grid point sets itself.
_POINT_FIELDS = ("lr", "ratio")


def expand_grid(
    grid: Mapping[str, Sequence[float] | float] | Iterable[tuple[float, float]],
) -> list[tuple[float, float]]:
    """``(η_A, η_B)`` points of a grid.

    Accepts ``{"eta_a": [...], "eta_b": [...]}`` (their product, ``eta_a``-major),
    ``{"eta_a": [...], "ratio": [...]}`` (``η_B = λ·η_A``) or a list of ``(η_A, η_B)`` pairs.

    Raises:
        InputError: an empty grid, unknown keys, a rate ≤ 0 or non-finite, or duplicates.
    """
    if isinstance(grid, Mapping):
        keys = set(grid)
        if keys not in ({"eta_a", "eta_b"}, {"eta_a", "ratio"}):
            raise InputError(
                f"grid: keys must be eta_a with eta_b or ratio, got {', '.join(sorted(keys))}"
            )

        def values(k: str) -> list[float]:
            v = grid[k]
            return [v] if isinstance(v, (int, float)) else list(v)  # type: ignore[list-item]

        a_vals = values("eta_a")
        if "eta_b" in keys:
            points = list(itertools.product(a_vals, values("eta_b")))
        else:
            points = [(a, a * lam) for a, lam in itertools.product(a_vals, values("ratio"))]
    else:
        try:
            points = [(a, b) for a, b in grid]
        except (TypeError, ValueError):
            raise InputError("grid: expected a mapping or a list of (eta_a, eta_b) pairs") from None
    if not points:
        raise InputError("grid: no points")
    points = [(positive("grid eta_a", a), positive("grid eta_b", b)) for a, b in points]
    names = [grid_point_name(a, b) for a, b in points]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(f"grid: duplicate point {dup}")
    return points


def grid_point_name(eta_a: float, eta_b: float) -> str:
    """Folder name of a grid point, e.g. ``eta_a=0.0001,eta_b=0.0016``."""
    return f"eta_a={eta_a:.6g},eta_b={eta_b:.6g}"


# --------------------------------------------------------------------------------------------
# the job kind


@dataclass(frozen=True)
class GridSpec:
    """A grid as the store keeps it: a name, every setting of its finetunes but the rates, and
    the points."""

    name: str
    config: dict[str, Any]  # every FinetuneConfig field but lr and ratio (JSON-friendly)
    points: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        """The normalised grid (stored as ``spec.json``; another grid in the folder is refused)."""
        return {
            "kind": KIND,
            "name": self.name,
            "config": json.loads(json.dumps(self.config, sort_keys=True, default=str)),
            "points": [[a, b] for a, b in self.points],
        }

    @property
    def source(self) -> str:
        """The text the store keeps as ``grid.json``."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def finetune_config(self, eta_a: float, eta_b: float) -> FinetuneConfig:
        """The configuration of the point ``(η_A, η_B)``: ``lr = η_A``, ``ratio = η_B/η_A``."""
        config = {k: tuple(v) if isinstance(v, list) else v for k, v in self.config.items()}
        return FinetuneConfig(**config, lr=eta_a, ratio=eta_b / eta_a)


@dataclass(frozen=True)
class FinetuneJob:
    """One grid point: finetune with ``lr = η_A`` and ``ratio = η_B/η_A``, its artifacts under
    ``out/points``."""

    index: int
    eta_a: float
    eta_b: float
    spec: GridSpec
    out: str

    @property
    def key(self) -> str:
        """SHA-256 (first 20 hex) of the point's full configuration."""
        blob = json.dumps(
            {"config": self.spec.to_dict()["config"], "eta_a": self.eta_a, "eta_b": self.eta_b},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def point(self) -> str:
        """The point's folder name (:func:`grid_point_name`)."""
        return grid_point_name(self.eta_a, self.eta_b)

    def run(self) -> pd.DataFrame:
        """Train this point (its artifacts under ``OUT/points``) and return its metrics rows."""
        cfg = self.spec.finetune_config(self.eta_a, self.eta_b)
        point_dir = Path(self.out) / "points" / self.point
        summary = run_prepared(prepare(cfg), point_dir, overwrite=True, progress=False)
        metrics = pd.read_csv(point_dir / "metrics.csv")
        metrics.insert(0, "point", self.point)
        metrics.insert(1, "eta_a", self.eta_a)
        metrics.insert(2, "eta_b", self.eta_b)
        if "diverged" not in metrics.columns:
            metrics["diverged"] = bool(summary.get("diverged", False))
        return metrics


class GridKind:
    """The job kind ``finetune-grid``: the store keeps the grid as ``grid.json``."""

    name = KIND
    spec_file = "grid.json"

    def load_spec(self, text: str, path: str) -> GridSpec:
        """Parse a kept ``grid.json``; :class:`InputError` naming ``path`` if it is not one."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise InputError(f'{path}: not a finetune grid (no "kind": "{KIND}")')
        name, config, points = d.get("name"), d.get("config"), d.get("points")
        allowed = {f.name for f in fields(FinetuneConfig)} - set(_POINT_FIELDS)
        if not isinstance(name, str) or not isinstance(config, dict) or set(config) - allowed:
            raise InputError(f"{path}: a grid needs a name and the settings of its finetunes")
        if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in points
        ):
            raise InputError(f"{path}: points must be a list of [eta_a, eta_b] pairs")
        return GridSpec(name, config, tuple((a, b) for a, b in expand_grid(points)))

    def jobs(self, spec: GridSpec, store_path: Path) -> list[FinetuneJob]:
        """One job per grid point, in grid order, writing its artifacts under ``store_path``."""
        return [FinetuneJob(i, a, b, spec, str(store_path)) for i, (a, b) in enumerate(spec.points)]


#: The kind, as the entry point ``loraplus_lab.job_kinds: finetune-grid`` names it.
GRID_KIND = GridKind()


# --------------------------------------------------------------------------------------------
# running a grid


def finetune_grid(
    model: str,
    task: str,
    grid: Mapping[str, Any] | Iterable[tuple[float, float]],
    *,
    out: str | os.PathLike[str],
    overwrite: bool = False,
    progress: bool = True,
    on_point: Callable[[dict[str, Any]], None] | None = None,
    executor: str = "serial",
    workers: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` at every ``(η_A, η_B)`` point of ``grid``.

    Args:
        model, task: as :func:`~loraplus_lab.sims.realmodels.finetune.finetune`.
        grid: the points (see :func:`expand_grid`).
        out: the grid's folder: the sweep store, ``points/<point>/`` and ``grid.csv``. Running
            the same grid into the same folder resumes it; another grid there is refused.
        overwrite: Replace an existing ``out`` that holds something else.
        progress: Progress bar over the points.
        on_point: Called with each point's summary, in grid order, when all are done.
        executor, workers: The sweep engine's executor (``"serial"``, ``"local"`` processes,
            ``"ray"``) and its workers.
        **settings: Every other setting of
            :func:`~loraplus_lab.sims.realmodels.finetune.finetune` (``steps``, ``batch_size``,
            ``policy``, ``use_trainer``, ...), the same for every point.

    Returns:
        ``{"out": ..., "grid": [summary per point]}``.

    Raises:
        InputError: One line, before anything is written: bad setting or rate, a non-empty
            ``out`` that holds no grid, unknown model, unreadable data, bad target modules.
    """
    from loraplus_lab.sims.sweep import Store, run

    out = Path(out).expanduser()
    for k in _POINT_FIELDS:
        if k in settings:
            raise InputError(f"finetune_grid: {k} is set by each grid point, not given")
    base = make_config(model, task, lr=1.0, ratio=1.0, **settings)
    validate_config(base)
    points = expand_grid(grid)
    configs = [replace(base, lr=a, ratio=b / a) for a, b in points]
    for c in configs:
        validate_config(c)
    config = {k: v for k, v in asdict(base).items() if k not in _POINT_FIELDS}
    spec = GridSpec(out.name or "grid", config, tuple(points))
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if not (out / "spec.json").is_file():
        check_output(out, overwrite=False)
    # Validate everything (model, data, targets, optimizer) once, before anything is written.
    tokenizer, loaded = load_inputs(base)
    prepare(configs[0], tokenizer=tokenizer, data=loaded)
    store = Store.open_or_create(out, spec)
    run(store, GRID_KIND.jobs(spec, out), executor=executor, workers=workers, progress=progress)
    summaries = []
    for a, b in points:
        name = grid_point_name(a, b)
        summary = json.loads((out / "points" / name / SUMMARY_FILE).read_text())
        summaries.append({"point": name, "eta_a": a, "eta_b": b, **summary})
    atomic_write(out / GRID_TABLE, lambda p: pd.DataFrame(summaries).to_csv(p, index=False))
    if on_point is not None:
        for summary in summaries:
            on_point(summary)
    return {"out": str(out), "grid": summaries}
