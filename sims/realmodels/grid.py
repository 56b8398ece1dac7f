"""(η_A, η_B) grids of real-model finetunes as jobs of the sweep engine.

Each grid point is a job named by a hash of its full configuration; the sweep engine's store
(one Parquet file per finished point, written atomically, checksummed) and executors (serial,
local processes, Ray) run and keep them, so an interrupted grid resumes where it stopped and
never trains a point twice. The heavy artifacts of a point (its ``config.json``, per-step
``metrics.csv`` and ``summary.json``) go to ``OUT/points/<point>/``; the job's row set in the
store is that point's metrics, one row per logged step, with ``eta_a`` and ``eta_b`` columns.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

KIND = "finetune-grid"


def point_name(eta_a: float, eta_b: float) -> str:
    """A readable folder name for a grid point (``finetune.grid_point_name``)."""
    from loraplus_lab.sims.realmodels.finetune import grid_point_name

    return grid_point_name(eta_a, eta_b)


@dataclass(frozen=True)
class GridSpec:
    """What the store needs to know about a grid: its normalised form, a name and its text."""

    name: str
    config: dict[str, Any]  # every FinetuneConfig field but lr and ratio (JSON-friendly)
    points: tuple[tuple[float, float], ...]
    out: str

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
        """The text kept as the store's ``spec.toml`` (JSON is valid for a reader)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


@dataclass(frozen=True)
class FinetuneJob:
    """One grid point: finetune with ``lr = η_A`` and ``ratio = η_B/η_A``."""

    index: int
    eta_a: float
    eta_b: float
    spec: GridSpec

    @property
    def key(self) -> str:
        """SHA-256 (first 20 hex) of the point's full configuration."""
        blob = json.dumps(
            {"config": self.spec.to_dict()["config"], "eta_a": self.eta_a, "eta_b": self.eta_b},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def run(self) -> pd.DataFrame:
        """Train this point (its artifacts under ``OUT/points``) and return its metrics rows."""
        from loraplus_lab.sims.realmodels.finetune import FinetuneConfig, prepare, run_prepared

        cfg = FinetuneConfig(**self.spec.config, lr=self.eta_a, ratio=self.eta_b / self.eta_a)
        point_dir = Path(self.spec.out) / "points" / point_name(self.eta_a, self.eta_b)
        summary = run_prepared(prepare(cfg), point_dir, overwrite=True, progress=False)
        metrics = pd.read_csv(point_dir / "metrics.csv")
        metrics.insert(0, "point", point_name(self.eta_a, self.eta_b))
        metrics.insert(1, "eta_a", self.eta_a)
        metrics.insert(2, "eta_b", self.eta_b)
        if "diverged" not in metrics.columns:
            metrics["diverged"] = bool(summary.get("diverged", False))
        return metrics


def grid_jobs(spec: GridSpec) -> list[FinetuneJob]:
    """One job per grid point, in grid order."""
    return [FinetuneJob(i, a, b, spec) for i, (a, b) in enumerate(spec.points)]


def jobs_from_dict(d: dict[str, Any], out: str) -> list[FinetuneJob]:
    """The jobs of a stored grid (``spec.json``), for :meth:`loraplus_lab.sims.sweep.Store.load`."""
    spec = GridSpec(d["name"], d["config"], tuple((a, b) for a, b in d["points"]), out)
    return grid_jobs(spec)
