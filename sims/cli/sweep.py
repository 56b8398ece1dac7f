"""``loraplus-lab sweep``, ``show`` and ``landscape``: sweeps through the sweep engine.

Every sweep runs through the engine and leaves a store that ``show`` and
:func:`loraplus_lab.sims.sweep.load` read. A spec file is validated before anything heavy is
imported; the quick comparison (no spec file) writes its options as a spec (the store keeps it
as ``spec.toml``), runs it in this process, and then prints the slope table and writes
``sweep.csv``, ``slopes.csv``, ``config.json`` and ``deltas.png`` beside the store.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.cli.common import PROG, UsageError, use_agg
from loraplus_lab.sims.files import OutputDir, atomic_write
from loraplus_lab.sims.params import INITS, PRESETS
from loraplus_lab.theory.optimizers import OPTIMIZERS

#: The quick comparison's defaults (values as parsed), and how ``--help`` shows them.
QUICK_DEFAULTS: dict[str, Any] = {
    "widths": [2**k for k in range(6, 15)],
    "seeds": list(range(8)),
    "steps": 4,
    "optimizer": "adam",
    "init": "A",
    "eta": 0.01,
    "eta_b": None,
    "n0": 64,
    "presets": ["lora", "loraplus"],
    "c_a": None,
    "c_b": None,
    "alpha": 1.0,
    "eps": 1e-8,
    "weight_decay": 0.0,
}
#: The quick comparison's store name and the files it writes beside the store.
QUICK_NAME = "quick"
QUICK_FILES = ("sweep.csv", "slopes.csv", "config.json", "deltas.png")
#: What a store folder holds (the quick comparison may replace these with --overwrite).
STORE_FILES = ("spec.toml", "spec.json", "meta.json", "jobs")
#: The most memory (MiB) one job of the quick comparison may need (the specs' default limit).
QUICK_MEMORY_MB = 4096.0
#: Statistics whose slopes the quick comparison measures, and their names in the table.
QUANTITIES = {
    "delta1": "δ¹",
    "delta2": "δ²",
    "delta3": "δ³",
    "za_mean_abs": "Z_A",
    "norm_b": "‖B‖",
}


def add_parsers(sub: Any) -> None:
    """The ``sweep``, ``show`` and ``landscape`` subcommands."""
    sw = sub.add_parser(
        "sweep",
        help="width sweep of the toy: measured slopes beside the exponent calculus",
        description=(
            "Simulate the LoRA+ paper's toy across widths for several parametrizations and "
            "seeds, fit log-log slopes of the feature updates δ¹, δ², δ³ (and Z_A, ‖B‖) with "
            "bootstrap CIs, and compare them with the exponents the calculus predicts. "
            "Defaults: Adam, Init[A], widths 2^6..2^14, LoRA (η_A = η_B ∝ 1/n) against LoRA+ "
            "(η_A ∝ 1/n, η_B fixed) at the same base rate. Every sweep leaves a store in --out "
            "that `loraplus-lab show` and loraplus_lab.sims.sweep.load read."
        ),
    )
    sw.add_argument(
        "spec",
        nargs="?",
        default=None,
        help="a sweep spec file (TOML); without it, the quick comparison set by the options below",
    )
    q = sw.add_argument_group("quick comparison (without a spec file)")
    q.add_argument(
        "--widths", type=a.widths("--widths"), help="e.g. 64,128,256 or 2^6..2^14 (2^6..2^14)"
    )
    q.add_argument(
        "--seeds", type=a.seeds("--seeds"), help="a count (8), a list (0,3,5) or a range (0..7)"
    )
    q.add_argument("--steps", type=a.positive_int("--steps"), help="optimizer steps (4)")
    q.add_argument("--optimizer", choices=OPTIMIZERS, help="(adam)")
    q.add_argument("--init", choices=INITS, help="Init[A] (B0 = 0, default) or Init[B]")
    q.add_argument("--eta", type=a.positive_float("--eta"), help="base rate η̃_A (and η̃_B) (0.01)")
    q.add_argument("--eta-b", type=a.positive_float("--eta-b"), help="base rate η̃_B, if other")
    q.add_argument("--n0", type=a.positive_int("--n0"), help="base width n0 of the rates (64)")
    q.add_argument(
        "--presets",
        type=a.presets("--presets"),
        help=f"comma list from {', '.join(PRESETS)} (lora,loraplus)",
    )
    q.add_argument("--c-a", type=a.exponent("--c-a"), help="add c_A (e.g. -1/2) with --c-b")
    q.add_argument("--c-b", type=a.exponent("--c-b"), help="... and this c_B")
    q.add_argument("--alpha", type=a.positive_float("--alpha"), help="LoRA alpha, s = α/r (1)")
    q.add_argument("--eps", type=a.nonnegative_float("--eps"), help="Adam epsilon (1e-8)")
    q.add_argument(
        "--weight-decay", type=a.nonnegative_float("--weight-decay"), help="weight decay (0)"
    )
    q.add_argument("--no-plot", action="store_true", help="skip the figure")
    q.add_argument(
        "--overwrite", action="store_true", help="replace the sweep (or its files) in --out"
    )
    e = sw.add_argument_group("the sweep engine")
    e.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default=None,
        help="serial (in-process; the quick comparison's default), local processes (a spec's "
        "default), or a Ray cluster (RAY_ADDRESS)",
    )
    e.add_argument(
        "--workers", type=a.positive_int("--workers"), help="parallel workers (all cores)"
    )
    e.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep stored in --out (the spec argument may then be left out)",
    )
    sw.add_argument(
        "--out", help="output folder (default results/sweep, or results/NAME for a spec)"
    )
    sw.add_argument("--json", action="store_true", help="print the results as JSON")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)

    ls = sub.add_parser(
        "landscape",
        help="optima and scaling fits of a stored (η_A, η_B) grid sweep",
        description=(
            "Read a sweep store whose parametrizations form a product grid of (η_A, η_B) at "
            "several widths (e.g. specs/adam_grid.toml), locate the optimum at each width (a "
            "local quadratic fit in log space), and fit log2 η_A*, η_B*, λ* against log2 n."
        ),
    )
    ls.add_argument("dir", help="the sweep's output folder")
    ls.add_argument("--loss", default="loss", help="column to minimise (loss or test_loss)")
    ls.add_argument("--step", type=a.nonnegative_int("--step"), help="step (default: the last)")
    ls.add_argument("--param", help="only parametrizations whose name starts with this")
    ls.set_defaults(func=cmd_landscape)

    sh = sub.add_parser(
        "show",
        help="what a stored sweep holds, how complete it is, a summary table",
        description="Summarise a sweep's results folder: completeness, runs, best final loss.",
    )
    sh.add_argument("dir", help="the sweep's output folder")
    sh.add_argument("--json", action="store_true", help="print as JSON")
    sh.set_defaults(func=cmd_show)


# ----------------------------------------------------------------------------- sweep
def cmd_sweep(args: argparse.Namespace) -> int:
    """A spec file (or --resume): the sweep engine. Otherwise the quick comparison."""
    given = [k for k in QUICK_DEFAULTS if getattr(args, k) is not None]
    given += [k for k in ("no_plot", "overwrite") if getattr(args, k)]
    if args.spec is not None or args.resume:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"{flag} is an option of the quick comparison; set it in the spec")
        return _sweep_spec(args)
    return _sweep_quick(args)


def _run_engine(store: Any, jobs: list, args: argparse.Namespace, executor: str) -> Any:
    """Run ``jobs`` into ``store``; on Ctrl-C say what was kept and how to go on."""
    from loraplus_lab.sims.sweep import run

    try:
        return run(
            store,
            jobs,
            executor=executor,
            workers=args.workers,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        last = store.meta()["runs"][-1]
        raise KeyboardInterrupt(
            f"{last['jobs_run']} jobs of this run kept "
            f"({last['jobs_run'] + last['jobs_skipped']}/{last['jobs_total']} done); "
            f"finish with  {PROG} sweep --resume --out {store.path}"
        ) from None


def _sweep_spec(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep described by a spec file (or kept in a store)."""
    from loraplus_lab.sims.sweep.spec import load_spec

    if args.spec is not None:
        spec = load_spec(args.spec)  # validated before pandas and torch are imported
        out = Path(args.out) if args.out else Path("results") / spec.name
    from loraplus_lab.sims.sweep.store import Store

    if args.spec is None:
        if args.out is None:
            raise UsageError("--resume without a spec file needs --out, the sweep's folder")
        out = Path(args.out)
        spec = Store.open(out).spec()
    outdir = OutputDir(out)
    try:
        store = Store.open_or_create(outdir.path, spec)
    except BaseException:
        outdir.cleanup()
        raise
    summary = _run_engine(store, store.jobs(), args, args.executor or "local")
    if args.json:
        print(json.dumps({**summary.record(), "path": str(summary.path)}, indent=2))
    else:
        print(f"sweep {spec.name!r}: {summary.text()}")
        print(f"read it with: {PROG} show {out}   or   loraplus_lab.sims.sweep.load({str(out)!r})")
    return 0


def quick_spec_text(opts: dict[str, Any]) -> str:
    """The quick comparison's options as a spec file (TOML): one job per width, all its
    parametrizations × seeds in one batch, as the simulator runs them."""
    params = [{"preset": name} for name in opts["presets"]]
    if opts["c_a"] is not None:
        params.append({"c_a": str(opts["c_a"]), "c_b": str(opts["c_b"])})
    eta, eta_b = opts["eta"], opts["eta"] if opts["eta_b"] is None else opts["eta_b"]
    lines = [
        f'name = "{QUICK_NAME}"',
        f"steps = {opts['steps']}",
        f'optimizer = "{opts["optimizer"]}"',
        f"seeds = {opts['seeds']}",
        f"widths = {opts['widths']}",
        f"chunk = {len(params)}",
        f"memory_limit_mb = {QUICK_MEMORY_MB!r}",
        f"eps = {opts['eps']!r}",
        f"weight_decay = {opts['weight_decay']!r}",
    ]
    for p in params:
        lines += ["", "[[parametrizations]]"]
        lines += [f'{k} = "{v}"' for k, v in p.items()]
        if eta == eta_b:
            lines.append(f"eta = {eta!r}")
        else:
            lines += [f"eta_a = {eta!r}", f"eta_b = {eta_b!r}"]
        lines += [f'init = "{opts["init"]}"', f"n0 = {opts['n0']}", f"alpha = {opts['alpha']!r}"]
    return "\n".join(lines) + "\n"


def _quick_options(args: argparse.Namespace) -> dict[str, Any]:
    """The quick comparison's options, defaults filled in, combinations checked."""
    opts = {k: (v if (v := getattr(args, k)) is not None else d) for k, d in QUICK_DEFAULTS.items()}
    if (opts["c_a"] is None) != (opts["c_b"] is None):
        raise UsageError("--c-a and --c-b go together")
    if not opts["presets"] and opts["c_a"] is None:
        raise UsageError("nothing to run: give --presets and/or --c-a/--c-b")
    if len(opts["widths"]) < 2:
        raise UsageError("a sweep needs at least two widths to measure a slope")
    if args.workers is not None and args.executor in (None, "serial"):
        raise UsageError("--workers needs --executor local or ray")
    return opts


def _check_quick_memory(opts: dict[str, Any]) -> None:
    """Refuse widths and seeds whose widest job would need more than :data:`QUICK_MEMORY_MB`."""
    from loraplus_lab.sims.sweep.spec import PROBLEM_OPTIONS, estimate_job_memory_mb

    configs = len(opts["presets"]) + (opts["c_a"] is not None)
    width = max(opts["widths"])
    need = estimate_job_memory_mb(
        width, configs, len(opts["seeds"]), opts["steps"], PROBLEM_OPTIONS["paper"], "float64"
    )
    if need > QUICK_MEMORY_MB:
        shown = f"2^{width.bit_length() - 1}" if width & (width - 1) == 0 else str(width)
        raise UsageError(
            f"--widths: width {shown} needs about {need:,.0f} MB for {configs} "
            f"parametrizations × {len(opts['seeds'])} seeds, above the {QUICK_MEMORY_MB:,.0f} MB "
            "one run may use; give smaller widths or fewer seeds (a spec file can raise "
            "memory_limit_mb)"
        )


def _quick_folder(out: Path, overwrite: bool) -> OutputDir:
    """The quick comparison's folder: new, empty, a store of the same sweep (then resumed), or
    with ``--overwrite`` one that holds only a store and the quick comparison's files."""
    outdir = OutputDir(out)
    if outdir.is_empty():
        return outdir
    entries = {p.name for p in outdir.path.iterdir()}
    if not overwrite:
        if "spec.json" not in entries:
            raise UsageError(
                f"output folder {str(out)!r} is not empty and holds no sweep; choose another "
                "--out, or add --overwrite to replace its sweep files"
            )
        return outdir
    other = sorted(entries - set(STORE_FILES) - set(QUICK_FILES))
    if other:
        raise UsageError(
            f"--overwrite: {str(out)!r} holds {other[0]!r}, which is not a sweep's; choose "
            "another --out"
        )
    for name in entries:
        p = outdir.path / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return outdir


def _sweep_quick(args: argparse.Namespace) -> int:
    """Run the quick comparison through the engine; print the slope table and write results,
    config and the figure."""
    opts = _quick_options(args)
    _check_quick_memory(opts)
    from loraplus_lab.sims.sweep.spec import parse_spec
    from loraplus_lab.sims.sweep.store import Store, StoreError

    spec = parse_spec(quick_spec_text(opts), "<quick comparison>")
    outdir = _quick_folder(Path(args.out or "results/sweep"), args.overwrite)
    out = outdir.path
    try:
        try:
            store = Store.open_or_create(out, spec)
        except StoreError as e:
            raise UsageError(f"{e}; or add --overwrite to replace it") from None
        t0 = time.perf_counter()
        _run_engine(store, store.jobs(), args, args.executor or "serial")
        return _report_quick(args, spec, store, opts, out, time.perf_counter() - t0)
    except BaseException:
        outdir.cleanup()
        raise


def _report_quick(
    args: argparse.Namespace, spec: Any, store: Any, opts: dict, out: Path, elapsed: float
) -> int:
    """The quick comparison's table, files and figure, from the store's rows."""
    from loraplus_lab.sims import measure
    from loraplus_lab.sims.files import versions
    from loraplus_lab.sims.toy.optim import OptimizerConfig
    from loraplus_lab.sims.toy.simulate import DTYPES, batch_config, concat_ordered

    params = list(spec.parametrizations)
    df = concat_ordered([store.load().drop(columns="job")], params)
    t1 = time.perf_counter()
    fits = measure.fit_slopes(df[df["step"] >= 1], list(QUANTITIES))
    preds = measure.predicted_exponents(params, spec.optimizer, spec.steps, list(QUANTITIES))
    table = measure.compare(fits, preds)
    elapsed += time.perf_counter() - t1

    opt = OptimizerConfig(spec.optimizer, spec.betas, spec.eps, spec.weight_decay)
    config = batch_config(
        list(spec.widths), params, list(spec.seeds), spec.steps, spec.problem, {}, opt,
        DTYPES[spec.dtype], spec.divergence_bound, None,
    )  # fmt: skip
    config["versions"] = versions()
    config["command"] = " ".join([PROG, *sys.argv[1:]]) if sys.argv else PROG
    files = {k: out / f for k, f in zip(("results", "slopes", "config"), QUICK_FILES, strict=False)}
    atomic_write(files["results"], lambda p: df.to_csv(p, index=False))
    atomic_write(files["slopes"], lambda p: table.to_csv(p, index=False))
    atomic_write(files["config"], json.dumps(config, indent=2))
    if not args.no_plot:
        use_agg()
        from loraplus_lab.sims.plots import plot_delta_coordcheck

        fig = plot_delta_coordcheck(
            df,
            title=(
                f"Toy ({config['problem']}), {spec.optimizer}, Init[{opts['init']}], "
                f"η̃={opts['eta']} at n0={opts['n0']}, "
                f"{len(spec.seeds)} seeds"
            ),
        )
        files["figure"] = out / "deltas.png"
        atomic_write(files["figure"], lambda p: fig.savefig(p, dpi=110, format="png"))

    regimes = {p.name: preds.loc[preds["param"] == p.name, "regime"].iloc[0] for p in params}
    if args.json:
        rows = table.replace({float("nan"): None}).to_dict(orient="records")
        payload = {
            "config": config,
            "regimes": regimes,
            "table": rows,
            "files": {k: str(v) for k, v in files.items()},
            "store": str(out),
            "seconds": round(elapsed, 3),
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(format_table(table, regimes))
        n_div = int(df.loc[df["diverged"], ["param", "seed", "width"]].drop_duplicates().shape[0])
        print(
            f"\n{len(spec.widths)} widths × {len(params)} parametrizations × {len(spec.seeds)} "
            f"seeds × {spec.steps} steps in {elapsed:.1f} s; {n_div} diverged runs left out of "
            "the fits."
        )
        print("wrote " + ", ".join(str(v) for v in files.values()))
        print(f"the sweep's store: {PROG} show {out}")
    return 0


def format_table(table: Any, regimes: dict[str, str]) -> str:
    """The sweep's table: parametrization × quantity × step, prediction, measured slope, verdict."""
    lines = []
    header = (
        f"{'param':<12} {'quantity':<8} {'t':>2}  {'predicted':>9}  "
        f"{'measured slope [95% CI]':<27} verdict"
    )
    for p, g in table.groupby("param", sort=False):
        lines.append(f"{p}: {regimes.get(p, '')}")
        lines.append(header)
        for r in g.itertuples():
            if r.zero:
                meas = "exactly 0"
            elif math.isfinite(r.slope):
                ci = f" [{r.ci_low:+.3f}, {r.ci_high:+.3f}]" if math.isfinite(r.ci_low) else ""
                meas = f"{r.slope:+.3f}{ci}"
            else:
                meas = "n/a"
            lines.append(
                f"{p:<12} {QUANTITIES.get(r.quantity, r.quantity):<8} {r.step:>2}  "
                f"{r.predicted_label:>9}  {meas:<27} {r.verdict}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------- landscape
def cmd_landscape(args: argparse.Namespace) -> int:
    """Optima, near-optimal sets and scaling fits of a stored learning-rate grid sweep."""
    from loraplus_lab.sims import landscape
    from loraplus_lab.sims.sweep.store import Store

    df = Store.open(Path(args.dir)).load()
    if df.empty:
        raise UsageError(f"{args.dir} holds no finished job yet")
    if "width" not in df.columns or "eta_a" not in df.columns:
        raise UsageError(f"{args.dir} holds no toy sweep over (η_A, η_B)")
    if args.param:
        df = df[df["param"].astype(str).str.startswith(args.param)]
        if df.empty:
            raise UsageError(f"no parametrization named {args.param}[...] in {args.dir}")
    if args.loss not in df.columns:
        raise UsageError(f"--loss: {args.dir} has no column {args.loss!r}")
    surfs = landscape.surfaces(df, step=args.step, loss=args.loss)
    optima = landscape.optima_table(surfs)
    if len(surfs) < 2:
        raise UsageError("scaling fits need at least two widths; this sweep has one")
    print(optima.round(4).to_string(index=False))
    fits = landscape.scaling_fits(surfs)
    print(
        "\n95% bootstrap over seeds; free: the optimum found afresh in every resample; "
        "anchored: within the full data's basin"
    )
    for r in fits.itertuples():
        line = f"slope of {r.quantity:<10} vs log2 n: {r.slope:+.2f} "
        if math.isfinite(r.predicted):
            line += (
                f"free [{r.ci_low:+.2f}, {r.ci_high:+.2f}], anchored "
                f"[{r.anchored_low:+.2f}, {r.anchored_high:+.2f}]  (predicted {r.predicted:+.0f})"
            )
        else:
            line += f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        print(line)
    return 0


# ----------------------------------------------------------------------------- show
def cmd_show(args: argparse.Namespace) -> int:
    """What a stored sweep holds, how complete it is, and a summary table per width."""
    from loraplus_lab.sims.sweep.store import Store

    store = Store.open(Path(args.dir))
    if store.spec_dict().get("kind") in ("ladder", "family"):
        from loraplus_lab.sims.cli.ladder import show_ladder

        a.use_agg()
        return show_ladder(store, as_json=args.json)
    meta = store.meta()
    df = store.load()
    at = df.attrs
    summary = summarize_store(df)
    if args.json:
        payload = {
            "path": str(store.path),
            "name": meta.get("name"),
            "kind": at["config"]["kind"],
            "jobs_done": at["jobs_done"],
            "jobs_total": at["jobs_total"],
            "complete": at["complete"],
            "rows": len(df),
            "meta": meta,
            "summary": summary.to_dict(orient="records"),
        }
        print(json.dumps(payload, indent=2, default=str))
        return 0
    pct = 100.0 * at["jobs_done"] / max(at["jobs_total"], 1)
    print(
        f"sweep {meta.get('name')!r} ({at['config']['kind']}) in {store.path}: "
        f"{at['jobs_done']}/{at['jobs_total']} jobs done ({pct:.0f}%), {len(df):,} rows"
    )
    v = meta.get("versions", {})
    print(
        f"created {meta.get('created')} on {meta.get('host')} "
        f"(loraplus-lab {v.get('loraplus-lab')}, torch {v.get('torch')}, "
        f"git {str(meta.get('git_commit'))[:10]})"
    )
    for r in meta.get("runs", []):
        print(
            f"  run {r['started']} → {r['ended']}: {r['executor']} ×{r['workers']}, "
            f"{r['jobs_run']} run, {r['jobs_skipped']} skipped, {r['diverged_runs']} diverged, "
            f"{r['seconds']:.1f} s" + (", interrupted" if r.get("interrupted") else "")
        )
    if not summary.empty:
        print()
        print(summary.to_string(index=False))
    if not at["complete"]:
        print(f"\nincomplete: finish it with  {PROG} sweep --resume --out {store.path}")
    return 0


def summarize_store(df: Any) -> Any:
    """Per width: configurations, runs, diverged runs, and the best final loss (median over
    seeds) with the parametrization that reached it (toy sweeps; empty for other kinds)."""
    import pandas as pd

    if df.empty or not {"width", "param", "seed", "step", "loss", "diverged"} <= set(df.columns):
        return pd.DataFrame()
    last = df[df["step"] == df["step"].max()]
    runs = df.groupby(["width", "param", "seed"])["diverged"].any()
    med = last.groupby(["width", "param"])["loss"].median()
    rows = []
    for w, g in med.groupby(level="width"):
        g = g.droplevel("width")
        best = g.idxmin() if g.notna().any() else None
        rw = runs.loc[w]
        rows.append(
            {
                "width": w,
                "configs": len(g),
                "runs": len(rw),
                "diverged": int(rw.sum()),
                "best final loss": float(g.min()) if best is not None else float("nan"),
                "best param": best,
            }
        )
    return pd.DataFrame(rows)
