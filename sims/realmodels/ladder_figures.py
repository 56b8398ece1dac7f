"""The real-model ladder's figures for the registry (``loraplus-lab figures --only real_...``):
the experiment (the committed spec ``specs/realmodels/ladder_gpt2_cpu.toml``, or a tiny one
with ``--fast``), its tables, its plots and its printed report.

The ladder runs into a store under the cache (``$LORAPLUS_CACHE/ladders/NAME-HASH``), so a
second ``figures`` run, or one interrupted and started again, reuses every finished job; the
bases are cached there too. Without a cache (a fresh machine) the full experiment takes about an
hour on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from loraplus_lab.sims.realmodels import ladder_analysis as LA
from loraplus_lab.sims.realmodels import ladder_plots as LP
from loraplus_lab.sims.realmodels.ladder import LadderSpec, load_ladder_spec, parse_ladder_spec
from loraplus_lab.sims.realmodels.ladder_config import RUN_COLUMNS, default_cache

#: The committed experiment, relative to the repository's root.
SPEC = Path("specs") / "realmodels" / "ladder_gpt2_cpu.toml"
#: Columns kept in the figure's data file (``figures/data/real_ladder.csv``): where a row
#: belongs, what a finetuning run records (but its index in the chunk, ``config``, and the step
#: it diverged at) and what pretraining records.
COLUMNS = (
    ("part", "stage", "width", "seed")
    + tuple(c for c in RUN_COLUMNS if c not in ("config", "diverged_step"))
    + ("params", "seconds")
)
FAST_SPEC = """
name = "ladder-fast"
arch = "gpt2"
widths = [32, 64]
layers = 1
context = 32
seeds = 2
chunk = 16

[pretrain]
steps = 40
batch = 8
warmup = 4
val_windows = 16

[finetune]
steps = 12
batch = 4
warmup = 2
eval_every = 3
curve_windows = 8
eval_windows = 16

[grid]
log2_eta_a = [-10, -6]
log2_eta_b = [-7, -4]
step = 2
refine = 1
refine_radius = 1

[lines]
equal = [-8, -4]
b_only = [-6, -4]
ratio = 16
ratio_log2_eta_a = [-10, -8]
step = 2
"""
_TABLES: dict[int, dict] = {}


def repository_spec() -> Path:
    """The committed spec file (in the repository next to the package's folders)."""
    here = Path(__file__).resolve().parents[2] / SPEC
    if not here.is_file():
        raise FileNotFoundError(
            f"{SPEC} not found: the real-model figures run from a checkout of the repository"
        )
    return here


def experiment_spec(fast: bool) -> LadderSpec:
    """The ladder behind the figures: the committed spec, or the tiny one."""
    return parse_ladder_spec(FAST_SPEC, "<fast>") if fast else load_ladder_spec(repository_spec())


def store_path(spec: LadderSpec) -> Path:
    """Where the figures keep this spec's store (reused across runs)."""
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return default_cache() / "ladders" / f"{spec.name}-{h}"


def collect_real_ladder(fast: bool) -> pd.DataFrame:
    """Run (or finish) the ladder and return its rows, pretraining curves thinned to every 10th
    step."""
    from loraplus_lab.sims.realmodels.ladder import run_ladder
    from loraplus_lab.sims.sweep.executors import default_workers
    from loraplus_lab.sims.sweep.store import load

    spec = experiment_spec(fast)
    out = store_path(spec)
    run_ladder(spec, out, executor="local", workers=min(2, default_workers()), progress=None)
    df = load(out)
    keep = (df["part"] != "pretrain") | (df["step"] % 10 == 0) | df["val_loss"].notna()
    df = df.loc[keep, [c for c in COLUMNS if c in df.columns]].reset_index(drop=True)
    df.attrs = {"ratio": spec.lines.get("ratio"), "n0": spec.widths[0], "name": spec.name}
    return df


def _ratio(df: pd.DataFrame) -> float | None:
    return df.attrs.get("ratio") or 16.0


def tables(df: pd.DataFrame) -> dict:
    """The analysis of ``df`` (computed once per DataFrame and reused by the three figures)."""
    key = id(df)
    if key not in _TABLES:
        _TABLES.clear()
        n_boot = int(os.environ.get("LORAPLUS_LADDER_BOOT", "999"))
        _TABLES[key] = LA.analyze(df, _ratio(df), n_boot=n_boot)
    return _TABLES[key]


def _title(df: pd.DataFrame, what: str) -> str:
    t = tables(df)
    widths = sorted(df.loc[df["part"] == "finetune", "width"].unique())
    return (
        f"{what}: GPT-2-shaped ladder pretrained on stdlib code, LoRA-finetuned on pydoc "
        f"prose\nwidths {widths[0]}…{widths[-1]}, r = 8, T = {t['steps']}, AdamW, "
        f"{t['seeds']} seeds"
    )


def plot_landscapes(df: pd.DataFrame) -> Figure:
    t = tables(df)
    return LP.plot_real_landscapes(
        t["finals"], t["optima"], ratio=_ratio(df), title=_title(df, "LoRA finetuning landscapes")
    )


def plot_optimal_rates(df: pd.DataFrame) -> Figure:
    t = tables(df)
    n0 = int(min(t["optima"]["width"]))
    return LP.plot_real_optimal_rates(
        t["optima"],
        t["intervals"],
        t["fits"],
        t["slices"],
        t["equal"],
        n0=n0,
        title=_title(df, "Optimal rates against width"),
    )


def plot_speedup(df: pd.DataFrame) -> Figure:
    t = tables(df)
    return LP.plot_real_speedup(
        t["curves"], t["intervals"], steps=t["steps"], title=_title(df, "LoRA+ against tuned LoRA")
    )


def report(df: pd.DataFrame) -> str:
    """The printed numbers (optima, slopes, speed-up with intervals, the bases' table)."""
    return LA.report(tables(df), _ratio(df))


def _iv(t: dict, width: int, key: str) -> tuple[float, float, float]:
    return LA.interval(t["intervals"], width, key)


def measured_optima(df: pd.DataFrame) -> str:
    """The slopes of the optimal rates with their intervals and verdicts, in words."""
    t = tables(df)
    f = t["fits"].set_index("quantity")
    parts = []
    for key in ("log2_eta_a", "log2_eta_b", "log2_ratio", "log2_product", "log2_eta_a_at_row"):
        r = f.loc[key]
        name = LA.SLOPES[key][0]
        if key == "log2_eta_a_at_row":
            name += f" = 2^{r.row:g}"
        parts.append(
            f"{name} {r.slope:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] (theory "
            f"{r.predicted:+.0f}: {r.verdict})"
        )
    e = f.loc["equal_log2_eta"]
    parts.append(f"the best equal rate {e.slope:+.2f} [{e.ci_low:+.2f}, {e.ci_high:+.2f}]")
    return (
        "Measured slopes against log2 n, 95% percentile bootstrap over the "
        f"{t['seeds']} seeds with the optimum found afresh in every resample: "
        + "; ".join(parts)
        + "."
    )


def measured_landscapes(df: pd.DataFrame) -> str:
    """What equal rates, λ = 16 and a frozen A give up, per width, in words."""
    t = tables(df)
    parts = []
    for w in sorted(int(x) for x in t["optima"]["width"]):
        cells = []
        for key, name in (("equal_gap", "equal rates"), ("ratio_gap", "λ = 16"),
                          ("b_only_gap", "B only")):  # fmt: skip
            v, lo, hi = _iv(t, w, key)
            cells.append(f"{name} {100 * v:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]")
        parts.append(f"n = {w}: " + ", ".join(cells))
    return (
        "Measured share of the best run's finetuning gain given up by each tuned line (95% "
        f"bootstrap over {t['seeds']} seeds, tuned runs re-selected in every resample): "
        + "; ".join(parts)
        + "."
    )


def measured_speedup(df: pd.DataFrame) -> str:
    """LoRA+'s speed-up over tuned LoRA per width, in words."""
    t = tables(df)
    parts = []
    for w in sorted(int(x) for x in t["optima"]["width"]):
        v, lo, hi = _iv(t, w, "speedup")
        parts.append(
            f"n = {w}: {v:.2f}× [{lo:.2f}, {hi:.2f}]" if v == v else f"n = {w}: not reached"
        )
    return (
        "Measured speed-up T / (the step from which LoRA+ stays at or below tuned LoRA's final "
        "loss), 95% "
        f"bootstrap over {t['seeds']} seeds with both lines re-tuned in every resample: "
        + "; ".join(parts)
        + "."
    )
