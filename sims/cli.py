"""The ``loraplus-lab`` command.

``loraplus-lab sweep``   width sweep of the toy, measured slopes beside the exponent calculus;
``loraplus-lab theory``  predicted exponents and regime of a parametrization, or phase diagrams;
``loraplus-lab transfer`` the rates at a width from landscapes at proxy widths
(:mod:`loraplus_lab.sims.cli_transfer`).

Bad input gets one line on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, NoReturn

from loraplus_lab import sims
from loraplus_lab.sims import cli_transfer
from loraplus_lab.sims.params import INITS, PRESETS, Parametrization, parse_exponent, preset

PROG = "loraplus-lab"
OPTIMIZER_CHOICES = ("gd", "signgd", "adam", "adamw")


class UsageError(ValueError):
    """Bad command-line input: reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2, no usage dump
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


# ----------------------------------------------------------------------------- parsing helpers
def _power(token: str) -> int:
    t = token.strip()
    m = re.fullmatch(r"2\^(\d+)", t)
    if m:
        return 2 ** int(m.group(1))
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    raise UsageError(f"bad width {token!r}: use integers such as 64 or powers such as 2^6")


def parse_widths(text: str) -> list[int]:
    """``"64,128,256"``, ``"2^6,2^8"`` or a doubling range ``"2^6..2^14"``."""
    if ".." in text:
        lo_s, _, hi_s = text.partition("..")
        lo, hi = _power(lo_s), _power(hi_s)
        if lo < 1 or hi < lo:
            raise UsageError(f"bad width range {text!r}: need 1 <= start <= end")
        out, w = [], lo
        while w <= hi:
            out.append(w)
            w *= 2
    else:
        out = [_power(t) for t in text.split(",") if t.strip()]
    if not out:
        raise UsageError(f"no width in {text!r}")
    for w in out:
        if w < 1:
            raise UsageError(f"width must be positive, got {w}")
    if len(set(out)) != len(out):
        raise UsageError(f"repeated width in {text!r}")
    return sorted(out)


def parse_seeds(text: str) -> list[int]:
    """``"8"`` (seeds 0..7), ``"0,3,5"`` or ``"10..17"``."""
    t = text.strip()
    try:
        if ".." in t:
            a, _, b = t.partition("..")
            seeds = list(range(int(a), int(b) + 1))
        elif "," in t:
            seeds = [int(s) for s in t.split(",") if s.strip()]
        else:
            k = int(t)
            if k < 1:
                raise UsageError(f"the number of seeds must be positive, got {text!r}")
            seeds = list(range(k))
    except ValueError as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"seeds must be integers such as 8, 0,1,2 or 0..7, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"seeds must be non-negative integers, got {text!r}")
    return seeds


def _positive_float(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a positive number, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise UsageError(f"{name} must be a positive number, got {text!r}")
    return v


def _nonnegative_int(name: str, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a non-negative integer, got {text!r}") from None
    if v < 0:
        raise UsageError(f"{name} must be a non-negative integer, got {text!r}")
    return v


def _nonnegative_float(name: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a non-negative number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise UsageError(f"{name} must be a non-negative number, got {text!r}")
    return v


def _exponent(name: str, text: str) -> Fraction:
    try:
        return parse_exponent(name, text)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _positive_int(name: str, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a positive integer, got {text!r}") from None
    if v < 1:
        raise UsageError(f"{name} must be a positive integer, got {text!r}")
    return v


class OutputDir:
    """An output folder checked for writing before any work, and removed again (if this command
    created it and it is still empty) when the command fails."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser().resolve()
        self.created: list[Path] = []
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"output folder {str(path)!r} is a file")
        missing = []
        p = self.path
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                d.mkdir()
                self.created.append(d)
            fd, probe = tempfile.mkstemp(dir=self.path, prefix=".write-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            self.cleanup()
            raise UsageError(
                f"output folder {str(path)!r} is not writable ({e.strerror})"
            ) from None

    def cleanup(self) -> None:
        """Remove the folders this command created, if they are empty."""
        for d in reversed(self.created):
            try:
                d.rmdir()
            except OSError:
                break
        self.created = []


def check_output_dir(path: Path) -> OutputDir:
    """Refuse an output folder that cannot be written, before any work is done."""
    return OutputDir(path)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _versions() -> dict[str, str]:
    from loraplus_lab.sims.sweep.jobs import versions

    return {"python": sys.version.split()[0], **versions()}


# ----------------------------------------------------------------------------- sweep
def _sweep_parametrizations(args: argparse.Namespace) -> list[Parametrization]:
    eta = _positive_float("--eta", args.eta)
    eta_b = eta if args.eta_b is None else _positive_float("--eta-b", args.eta_b)
    n0 = _positive_int("--n0", args.n0)
    names = [s.strip() for s in args.presets.split(",") if s.strip()] if args.presets else []
    for name in names:
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if len(set(names)) != len(names):
        raise UsageError(f"repeated preset in {args.presets!r}")
    alpha = _positive_float("--alpha", args.alpha)
    params = [
        preset(name, eta=eta, eta_b=eta_b, n0=n0, init=args.init, alpha=alpha) for name in names
    ]
    if (args.c_a is None) != (args.c_b is None):
        raise UsageError("--c-a and --c-b go together")
    if args.c_a is not None:
        c_a, c_b = _exponent("--c-a", args.c_a), _exponent("--c-b", args.c_b)
        params.append(
            Parametrization(
                name=f"c_A={c_a},c_B={c_b}",
                eta_a=eta,
                eta_b=eta_b,
                c_a=c_a,
                c_b=c_b,
                n0=n0,
                init=args.init,
                alpha=alpha,
            )
        )
    if not params:
        raise UsageError("nothing to run: give --presets and/or --c-a/--c-b")
    return params


QUICK_DEFAULTS = {
    "widths": "2^6..2^14",
    "seeds": "8",
    "steps": "4",
    "optimizer": "adam",
    "init": "A",
    "eta": "0.01",
    "eta_b": None,
    "n0": "64",
    "presets": "lora,loraplus",
    "c_a": None,
    "c_b": None,
    "alpha": "1",
    "eps": "1e-8",
    "weight_decay": "0",
}


def cmd_sweep(args: argparse.Namespace) -> int:
    """A spec file (or --resume): the sweep engine. Otherwise the quick width comparison."""
    given = [k for k in QUICK_DEFAULTS if getattr(args, k) is not None]
    if args.spec is not None or args.resume:
        if given or args.no_plot:
            flag = "--" + (given[0] if given else "no_plot").replace("_", "-")
            raise UsageError(f"{flag} is an option of the quick comparison; set it in the spec")
        return cmd_sweep_spec(args)
    for k, v in QUICK_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.executor != "local" or args.workers is not None:
        raise UsageError("--executor and --workers apply to spec files")
    if args.out is None:
        args.out = "results/sweep"
    return cmd_sweep_quick(args)


def cmd_sweep_spec(args: argparse.Namespace) -> int:
    """Run (or resume) a sweep described by a spec file on the chosen executor."""
    from loraplus_lab.sims.sweep import Store, expand, load_spec, run

    workers = None if args.workers is None else _positive_int("--workers", args.workers)
    if args.spec is not None:
        spec = load_spec(args.spec)
        out = Path(args.out) if args.out else Path("results") / spec.name
    else:
        if args.out is None:
            raise UsageError("--resume without a spec file needs --out, the sweep's folder")
        out = Path(args.out)
        spec = Store.open(out).spec()
    outdir = check_output_dir(out)
    try:
        store = Store.open_or_create(outdir.path, spec)
    except BaseException:
        outdir.cleanup()
        raise
    jobs = expand(spec)
    summary = run(
        store,
        jobs,
        executor=args.executor,
        workers=workers,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps({**summary.record(), "path": str(summary.path)}, indent=2))
    else:
        print(f"sweep {spec.name!r}: {summary.text()}")
        print(
            f"read it with: loraplus-lab show {out}   or   "
            f"loraplus_lab.sims.sweep.load({str(out)!r})"
        )
    return 0


def cmd_sweep_quick(args: argparse.Namespace) -> int:
    """Run a width sweep, print the slope table and write results, config and the figure."""
    widths = parse_widths(args.widths)
    if len(widths) < 2:
        raise UsageError("a sweep needs at least two widths to measure a slope")
    seeds = parse_seeds(args.seeds)
    steps = _positive_int("--steps", args.steps)
    params = _sweep_parametrizations(args)
    eps = _nonnegative_float("--eps", args.eps)
    wd = _nonnegative_float("--weight-decay", args.weight_decay)
    outdir = check_output_dir(Path(args.out))
    try:
        return _run_sweep(args, widths, seeds, steps, params, eps, wd, outdir.path)
    except BaseException:
        outdir.cleanup()
        raise


def _run_sweep(args, widths, seeds, steps, params, eps, wd, out: Path) -> int:
    from loraplus_lab.sims import measure
    from loraplus_lab.sims.toy import simulate_batch

    t0 = time.perf_counter()
    df = simulate_batch(
        widths,
        params,
        seeds,
        steps=steps,
        optimizer=args.optimizer,
        eps=eps,
        weight_decay=wd,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    quantities = ["delta1", "delta2", "delta3", "za_mean_abs", "norm_b"]
    fits = measure.fit_slopes(df[df["step"] >= 1], quantities)
    preds = measure.predicted_exponents(params, args.optimizer, steps, quantities)
    table = measure.compare(fits, preds)
    elapsed = time.perf_counter() - t0

    config = dict(df.attrs["config"])
    config["versions"] = _versions()
    config["command"] = " ".join([PROG, *sys.argv[1:]]) if sys.argv else PROG
    files = {
        "results": out / "sweep.csv",
        "slopes": out / "slopes.csv",
        "config": out / "config.json",
    }
    _atomic_write(files["results"], lambda p: df.to_csv(p, index=False))
    _atomic_write(files["slopes"], lambda p: table.to_csv(p, index=False))
    _atomic_write(files["config"], lambda p: Path(p).write_text(json.dumps(config, indent=2)))
    if not args.no_plot:
        from loraplus_lab.sims.plots import plot_delta_coordcheck

        fig = plot_delta_coordcheck(
            df,
            title=(
                f"Toy ({config['problem']}), {args.optimizer}, Init[{args.init}], "
                f"η̃={args.eta} at n0={args.n0}, {len(seeds)} seeds"
            ),
        )
        files["figure"] = out / "deltas.png"
        _atomic_write(files["figure"], lambda p: fig.savefig(p, dpi=110, format="png"))

    regimes = {p.name: preds.loc[preds["param"] == p.name, "regime"].iloc[0] for p in params}
    if args.json:
        rows = table.replace({float("nan"): None}).to_dict(orient="records")
        payload = {
            "config": config,
            "regimes": regimes,
            "table": rows,
            "files": {k: str(v) for k, v in files.items()},
            "seconds": round(elapsed, 3),
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(format_table(table, regimes))
        n_div = int(df.loc[df["diverged"], ["param", "seed", "width"]].drop_duplicates().shape[0])
        print(
            f"\n{len(widths)} widths × {len(params)} parametrizations × {len(seeds)} seeds × "
            f"{steps} steps in {elapsed:.1f} s; {n_div} diverged runs left out of the fits."
        )
        print("wrote " + ", ".join(str(v) for v in files.values()))
    return 0


def format_table(table, regimes: dict[str, str]) -> str:
    """The sweep's table: parametrization × quantity × step, prediction, measured slope, verdict."""
    names = {
        "delta1": "δ¹",
        "delta2": "δ²",
        "delta3": "δ³",
        "za_mean_abs": "Z_A",
        "norm_b": "‖B‖",
    }
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
                f"{p:<12} {names.get(r.quantity, r.quantity):<8} {r.step:>2}  "
                f"{r.predicted_label:>9}  {meas:<27} {r.verdict}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------- theory
def cmd_theory(args: argparse.Namespace) -> int:
    """Print predicted exponents and the regime, or draw phase diagrams."""
    from loraplus_lab.theory import gamma

    steps = _positive_int("--steps", args.steps)
    c_a = _exponent("--c-a", args.c_a)
    c_b = _exponent("--c-b", args.c_b)
    opt = "adam" if args.optimizer == "adamw" else args.optimizer
    if args.phase:
        outdir = check_output_dir(Path(args.out))
        out = outdir.path
        from loraplus_lab.sims.plots import plot_phase_diagrams

        grid = [Fraction(k, 8) for k in range(-24, 9)]
        diagrams, titles = [], []
        for init in INITS:
            for o in ("gd", "signgd", "adam"):
                diagrams.append(gamma.phase_diagram(init, o, grid, grid, steps))
                titles.append(f"Init[{init}], {o}")
        fig = plot_phase_diagrams(
            diagrams,
            titles,
            mark=None if (c_a, c_b) == (-1, 0) else (float(c_a), float(c_b)),
            suptitle=f"Regimes of the rank-1 toy over {steps} steps (exponent calculus)",
        )
        path = out / "phase_diagram.png"
        try:
            _atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
        except BaseException:
            outdir.cleanup()
            raise
        print(f"wrote {path}")
        return 0
    pred = gamma.predict(args.init, opt, c_a, c_b, steps)
    if args.json:
        payload = {
            "init": args.init,
            "optimizer": args.optimizer,
            "c_a": str(c_a),
            "c_b": str(c_b),
            "steps": steps,
            "regime": {
                "label": pred.regime.label,
                "stable": pred.regime.stable,
                "output_stable": pred.regime.output_stable,
                "internal_instability": pred.regime.internal_instability,
                "efficient": pred.regime.efficient,
                "undertrained": list(pred.regime.undertrained),
                "description": pred.regime.description,
            },
            "exponents": [{**r, "exponent": str(r["exponent"])} for r in pred.rows()],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(pred.table())
    print("γ: v = Θ(n^γ) as the width n grows; 'zero': exactly 0 at that step")
    print(f"\nregime: {pred.regime.label} — {pred.regime.description}")
    return 0


# ----------------------------------------------------------------------------- real models
def _quiet_transformers() -> None:
    """Keep transformers' and the Hub's own progress bars and warnings off stderr (errors are
    reported by this command in one line)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def parse_rates(name: str, text: str) -> list[float]:
    """``1e-4,3e-4``, ``2^-10,2^-8`` or a doubling range ``2^-12..2^-8``; every rate > 0."""

    def one(tok: str) -> float:
        t = tok.strip()
        m = re.fullmatch(r"2\^(-?\d+(?:\.\d+)?)", t)
        try:
            v = 2.0 ** float(m.group(1)) if m else float(t)
        except ValueError:
            raise UsageError(f"{name}: bad rate {tok!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"{name}: rates must be positive, got {tok!r}")
        return v

    if ".." in text:
        lo, _, hi = text.partition("..")
        a, b = one(lo), one(hi)
        if b < a:
            raise UsageError(f"{name}: range {text!r} runs backwards")
        out = [a]
        while out[-1] * 2 <= b * (1 + 1e-12):
            out.append(out[-1] * 2)
        return out
    out = [one(t) for t in text.split(",") if t.strip()]
    if not out:
        raise UsageError(f"{name}: no rate in {text!r}")
    return out


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune a real model with LoRA or LoRA+ (the paper's GLUE setting by default)."""
    _quiet_transformers()
    from loraplus_lab.sims.realmodels.finetune import finetune

    rates = None
    if args.rates_from:  # the rates predicted at the model's width (cli_transfer)
        rates = cli_transfer.rates_from(args, args.model)
        lr, ratio = rates["lr"], rates["ratio"]
    else:
        if args.width is not None:
            raise UsageError("--width goes with --rates-from")
        lr = _positive_float("--lr", "1e-4" if args.lr is None else args.lr)
        ratio = 1.0 if args.lora else _positive_float("--ratio", args.ratio or "16")
    grid = None
    if args.grid_eta_a or args.grid_eta_b or args.grid_ratio:
        if not args.grid_eta_a or not (args.grid_eta_b or args.grid_ratio):
            raise UsageError("--grid-eta-a goes with --grid-eta-b or --grid-ratio")
        if args.grid_eta_b and args.grid_ratio:
            raise UsageError("give --grid-eta-b or --grid-ratio, not both")
        grid = {"eta_a": parse_rates("--grid-eta-a", args.grid_eta_a)}
        if args.grid_eta_b:
            grid["eta_b"] = parse_rates("--grid-eta-b", args.grid_eta_b)
        else:
            grid["ratio"] = parse_rates("--grid-ratio", args.grid_ratio)
    length = {}
    if args.steps is not None:
        length["steps"] = _positive_int("--steps", args.steps)
    if args.epochs is not None:
        length["epochs"] = _positive_float("--epochs", args.epochs)
    options = {}
    if args.max_samples is not None:
        options["max_samples"] = _positive_int("--max-samples", args.max_samples)
    if args.max_length is not None:
        options["max_length"] = _positive_int("--max-length", args.max_length)
    if args.offline:
        options["offline"] = True
    bf16 = {"auto": "auto", "on": True, "off": False}[args.bf16]
    targets = args.target_modules.split(",") if args.target_modules else None
    summary = finetune(
        args.model,
        args.task,
        out=args.out,
        lr=lr,
        ratio=ratio,
        policy=args.policy,
        batch_size=_positive_int("--batch-size", args.batch_size),
        r=_positive_int("--r", args.r),
        alpha=_positive_float("--alpha", args.alpha),
        target_modules=targets,
        seed=_nonnegative_int("--seed", args.seed),
        bf16=bf16,
        grid=grid,
        use_trainer=not args.no_trainer,
        overwrite=args.overwrite,
        executor=args.executor,
        workers=None if args.workers is None else _positive_int("--workers", args.workers),
        progress=not args.quiet and sys.stderr.isatty(),
        **length,
        **options,
    )
    if rates is not None:
        summary = {**summary, "rates_from": rates["record"]}
        _atomic_write(
            Path(args.out) / "rates_from.json",
            lambda p: Path(p).write_text(json.dumps(rates["record"], indent=2)),
        )
    print(json.dumps(summary, indent=2, default=str))
    if not args.json:
        print(f"results in {args.out}")
    return 0


def cmd_coordcheck(args: argparse.Namespace) -> int:
    """The LoRA coordinate check of a width ladder of a real architecture."""
    _quiet_transformers()
    import torch

    from loraplus_lab.sims.realmodels.coordcheck import coordcheck_slopes, headline, run_coordcheck
    from loraplus_lab.sims.realmodels.plots import plot_lora_coordcheck

    widths = parse_widths(args.widths)
    if len(widths) < 2:
        raise UsageError("a coordinate check needs at least two widths")
    seeds = parse_seeds(args.seeds)
    steps = _positive_int("--steps", args.steps)
    lr = _positive_float("--lr", args.lr)
    names = [p.strip() for p in args.presets.split(",") if p.strip()]
    for name in names:
        if name not in PRESETS:
            raise UsageError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}[
        args.dtype
    ]
    outdir = check_output_dir(Path(args.out))
    try:
        df = run_coordcheck(
            args.arch,
            widths,
            steps=steps,
            seeds=seeds,
            parametrizations=names,
            lr=lr,
            init=args.init,
            dtype=dtype,
            device=args.device,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        slopes = coordcheck_slopes(df)
        head = headline(slopes)
        out = outdir.path
        _atomic_write(out / "coordcheck.csv", lambda p: df.to_csv(p, index=False))
        _atomic_write(out / "slopes.csv", lambda p: slopes.to_csv(p, index=False))
        config = {
            "arch": args.arch,
            "widths": widths,
            "seeds": seeds,
            "steps": steps,
            "presets": names,
            "lr": lr,
            "init": args.init,
            "dtype": args.dtype,
            "device": args.device,
            "versions": _versions(),
        }
        _atomic_write(out / "config.json", lambda p: Path(p).write_text(json.dumps(config)))
        for stat in ("delta1", "delta2", "Z"):
            fig = plot_lora_coordcheck(df, stat, title=f"{args.arch}: {stat} against width")
            _atomic_write(
                out / f"coordcheck_{stat}.png", lambda p, f=fig: f.savefig(p, dpi=100, format="png")
            )
    except BaseException:
        outdir.cleanup()
        raise
    table = head.reset_index()
    table.columns = [str(c) for c in table.columns]
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2, default=str))
    else:
        print("mean slope against log2 width over steps ≥ 2 (predicted: Z flat; LoRA+ δ¹, δ² flat;")
        print("equal fixed rates: δ¹ grows)")
        print(table.round(2).to_string(index=False))
        print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- figures
def cmd_figures(args: argparse.Namespace) -> int:
    """Regenerate every figure (or one) into the figures folder."""
    from loraplus_lab.sims import figures

    if args.list:
        for f in figures.FIGURES.values():
            print(f"{f.name:<22} {f.caption}")
        return 0
    names = None
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        for n in names:
            if n not in figures.FIGURES:
                raise UsageError(f"unknown figure {n!r}; choose from {', '.join(figures.FIGURES)}")
    outdir = check_output_dir(Path(args.out))
    try:
        t0 = time.perf_counter()
        figures.generate(names, out=outdir.path, fast=args.fast)
        print(f"done in {time.perf_counter() - t0:.1f} s; see {outdir.path / 'README.md'}")
    except BaseException:
        outdir.cleanup()
        raise
    return 0


# ----------------------------------------------------------------------------- landscape
def cmd_landscape(args: argparse.Namespace) -> int:
    """Optima, near-optimal sets and scaling fits of a stored learning-rate grid sweep."""
    from loraplus_lab.sims import landscape
    from loraplus_lab.sims.sweep import Store

    df = Store.open(Path(args.dir)).load()
    if df.empty:
        raise UsageError(f"{args.dir} holds no finished job yet")
    if args.param:
        df = df[df["param"].astype(str).str.startswith(args.param)]
        if df.empty:
            raise UsageError(f"no parametrization named {args.param}[...] in {args.dir}")
    step = None if args.step is None else _nonnegative_int("--step", args.step)
    surfs = landscape.surfaces(df, step=step, loss=args.loss)
    optima = landscape.optima_table(surfs)
    print(optima.round(4).to_string(index=False))
    if len(surfs) < 2:
        raise UsageError("scaling fits need at least two widths; this sweep has one")
    fits = landscape.scaling_fits(surfs)
    print("\n95% bootstrap over seeds; free: the optimum found afresh in every resample; "
          "anchored: within the full data's basin")  # fmt: skip
    for r in fits.itertuples():
        print(
            f"slope of {r.quantity:<10} vs log2 n: {r.slope:+.2f} "
            f"free [{r.ci_low:+.2f}, {r.ci_high:+.2f}], anchored "
            f"[{r.anchored_low:+.2f}, {r.anchored_high:+.2f}]  (predicted {r.predicted:+.0f})"
            if math.isfinite(r.predicted)
            else f"slope of {r.quantity:<10} vs log2 n: {r.slope:+.2f} "
            f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
        )
    return 0


# ----------------------------------------------------------------------------- show
def cmd_show(args: argparse.Namespace) -> int:
    """What a stored sweep holds, how complete it is, and a summary table per width."""
    from loraplus_lab.sims.sweep import Store

    store = Store.open(Path(args.dir))
    meta = store.meta()
    df = store.load()
    a = df.attrs
    summary = summarize_store(df)
    if args.json:
        payload = {
            "path": str(store.path),
            "name": meta.get("name"),
            "jobs_done": a["jobs_done"],
            "jobs_total": a["jobs_total"],
            "complete": a["complete"],
            "rows": len(df),
            "meta": meta,
            "summary": summary.to_dict(orient="records"),
        }
        print(json.dumps(payload, indent=2, default=str))
        return 0
    pct = 100.0 * a["jobs_done"] / max(a["jobs_total"], 1)
    print(
        f"sweep {meta.get('name')!r} in {store.path}: {a['jobs_done']}/{a['jobs_total']} jobs "
        f"done ({pct:.0f}%), {len(df):,} rows"
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
            f"{r['seconds']:.1f} s"
        )
    if not summary.empty:
        print()
        print(summary.to_string(index=False))
    if not a["complete"]:
        print(f"\nincomplete: finish it with  loraplus-lab sweep --resume --out {store.path}")
    return 0


def summarize_store(df) -> Any:
    """Per width: configurations, runs, diverged runs, and the best final loss (median over
    seeds) with the parametrization that reached it."""
    import pandas as pd

    if df.empty:
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


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``loraplus-lab`` and its subcommands."""
    parser = _Parser(
        prog=PROG,
        description="Theory and simulation toolkit for LoRA+ (Hayou, Ghosh, Yu, ICML 2024).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {sims.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sw = sub.add_parser(
        "sweep",
        help="width sweep of the toy: measured slopes beside the exponent calculus",
        description=(
            "Simulate the LoRA+ paper's toy across widths for several parametrizations and "
            "seeds, fit log-log slopes of the feature updates δ¹, δ², δ³ (and Z_A, ‖B‖) with "
            "bootstrap CIs, and compare them with the exponents the calculus predicts. "
            "Defaults: Adam, Init[A], widths 2^6..2^14, LoRA (η_A = η_B ∝ 1/n) against LoRA+ "
            "(η_A ∝ 1/n, η_B fixed) at the same base rate."
        ),
    )
    sw.add_argument(
        "spec",
        nargs="?",
        default=None,
        help="a sweep spec file (TOML); without it, the quick comparison set by the options below",
    )
    quick = sw.add_argument_group("quick comparison (without a spec file)")
    quick.add_argument("--widths", help="e.g. 64,128,256 or 2^6..2^14 (default 2^6..2^14)")
    quick.add_argument("--seeds", help="a count (8), a list (0,3,5) or a range (0..7) (default 8)")
    quick.add_argument("--steps", help="optimizer steps (default 4)")
    quick.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help="(default adam)")
    quick.add_argument("--init", choices=INITS, help="Init[A] (B0 = 0, default) or Init[B]")
    quick.add_argument("--eta", help="base rate η̃_A (and η̃_B) at width n0 (default 0.01)")
    quick.add_argument("--eta-b", help="base rate η̃_B if different from --eta")
    quick.add_argument("--n0", help="base width n0 of the rate rule (default 64)")
    quick.add_argument(
        "--presets", help=f"comma list from {', '.join(PRESETS)} (default lora,loraplus)"
    )
    quick.add_argument("--c-a", help="add a parametrization with this c_A (e.g. -1/2)")
    quick.add_argument("--c-b", help="... and this c_B")
    quick.add_argument("--alpha", help="LoRA alpha, s = alpha/r (default 1)")
    quick.add_argument("--eps", help="Adam epsilon (default 1e-8)")
    quick.add_argument("--weight-decay", help="weight decay (default 0)")
    quick.add_argument("--no-plot", action="store_true", help="skip the figure")
    engine = sw.add_argument_group("spec files (the sweep engine)")
    engine.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default="local",
        help="serial (in-process), local processes (default), or a Ray cluster (RAY_ADDRESS)",
    )
    engine.add_argument("--workers", help="parallel workers (default: all cores)")
    engine.add_argument(
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

    th = sub.add_parser(
        "theory",
        help="predicted exponents and regime of a parametrization; --phase for phase diagrams",
        description=(
            "Exponent calculus of the rank-1 toy: γ of z (Z_A), b, U, f, Z_B, δ¹, δ², δ³ at "
            "each step for η_A ∝ n^c_A, η_B ∝ n^c_B, and the regime (stable, efficient, "
            "which factor under-trains, internal instability)."
        ),
    )
    th.add_argument("--init", choices=INITS, default="A")
    th.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default="adam")
    th.add_argument("--c-a", default="-1", help="exponent of η_A (e.g. -1, -0.5, -1/2)")
    th.add_argument("--c-b", default="0", help="exponent of η_B")
    th.add_argument("--steps", default="4", help="steps to propagate (default 4)")
    th.add_argument("--phase", action="store_true", help="draw phase diagrams over (c_A, c_B)")
    th.add_argument("--out", default="results/theory", help="output folder for --phase")
    th.add_argument("--json", action="store_true", help="print as JSON")
    th.set_defaults(func=cmd_theory)

    ft = sub.add_parser(
        "finetune",
        help="finetune a real model with LoRA or LoRA+ (GLUE or local CSV/JSONL data)",
        description=(
            "The LoRA+ paper's GLUE setting by default: a classification head, r = 8, the "
            "paper's target modules per architecture, AdamW, 3 epochs, batch 32, λ = 16. Works "
            "offline from a local model folder and local data files; on a GPU when present "
            "(bf16 where supported), on the CPU otherwise. Needs loraplus-lab[realmodels]."
        ),
    )
    ft.add_argument("--model", required=True, help="local model folder or Hub name")
    ft.add_argument("--task", required=True, help="glue/<name>, FILE.csv or FILE.jsonl")
    ft.add_argument("--out", required=True, help="output folder (must be new or empty)")
    ft.add_argument("--lr", help="η_A (default 1e-4)")
    ft.add_argument("--ratio", help="λ = η_B/η_A (default 16)")
    ft.add_argument("--lora", action="store_true", help="plain LoRA: λ = 1")
    ft.add_argument("--policy", choices=("theory", "peft"), default="theory")
    ft.add_argument("--epochs", help="training epochs (default 3)")
    ft.add_argument("--steps", help="training steps instead of epochs")
    ft.add_argument("--batch-size", default="32")
    ft.add_argument("--r", default="8", help="LoRA rank (default 8)")
    ft.add_argument("--alpha", default="8", help="LoRA alpha (default 8)")
    ft.add_argument("--target-modules", help="comma list (default: the paper's per architecture)")
    ft.add_argument("--seed", default="0")
    ft.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    ft.add_argument("--grid-eta-a", help="grid of η_A: 1e-5,1e-4 or 2^-16..2^-12")
    ft.add_argument("--grid-eta-b", help="grid of η_B (product with --grid-eta-a)")
    ft.add_argument("--grid-ratio", help="grid of λ instead of η_B")
    ft.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default="serial",
        help="grids: run the points on the sweep engine's executor (default serial)",
    )
    ft.add_argument("--workers", help="grids: parallel workers")
    ft.add_argument("--no-trainer", action="store_true", help="the plain accelerate loop")
    ft.add_argument("--max-samples", help="use at most this many training examples")
    ft.add_argument("--max-length", help="tokens per example (default 128)")
    ft.add_argument("--offline", action="store_true", help="never reach the Hub")
    ft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ft.add_argument("--json", action="store_true", help="print the summary as JSON")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")
    cli_transfer.add_rates_from(ft)
    ft.set_defaults(func=cmd_finetune)

    cc = sub.add_parser(
        "coordcheck",
        help="LoRA coordinate check across a width ladder of GPT-2, Llama or RoBERTa",
        description=(
            "Train LoRA adapters of a width ladder (heads scale to keep the head dimension, "
            "width-consistent initialisation) for a few steps and record, on a fixed probe "
            "batch, Z, Z_A, Z_B and δ¹, δ², δ³ of every LoRA layer; fit their slopes against "
            "width per layer type. Needs loraplus-lab[realmodels]."
        ),
    )
    cc.add_argument("--arch", choices=("gpt2", "llama", "roberta"), default="gpt2")
    cc.add_argument("--widths", default="64,128,256,512", help="e.g. 64,128,256,512 or 2^6..2^9")
    cc.add_argument("--steps", default="5")
    cc.add_argument("--seeds", default="3", help="a count, a list or a range")
    cc.add_argument("--presets", default="lora-fixed,loraplus", help="parametrizations to compare")
    cc.add_argument("--lr", default="1e-3", help="base rate at the base width")
    cc.add_argument("--init", choices=INITS, default="A")
    cc.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    cc.add_argument("--device", default="cpu", help="cpu or cuda")
    cc.add_argument("--out", default="results/coordcheck")
    cc.add_argument("--json", action="store_true")
    cc.add_argument("--quiet", action="store_true")
    cc.set_defaults(func=cmd_coordcheck)

    fg = sub.add_parser(
        "figures",
        help="regenerate every figure into figures/ (with its data and a gallery README)",
        description=(
            "Run each figure's experiment (deterministic by seed) and draw it into --out, with "
            "the data in --out/data and --out/README.md describing every figure."
        ),
    )
    fg.add_argument("--only", help="comma list of figure names (see --list)")
    fg.add_argument("--list", action="store_true", help="list the figures and exit")
    fg.add_argument("--fast", action="store_true", help="small versions (for tests)")
    fg.add_argument("--out", default="figures", help="output folder (default figures)")
    fg.set_defaults(func=cmd_figures)

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
    ls.add_argument("--step", help="step to read (default: the last)")
    ls.add_argument("--param", help="only parametrizations whose name starts with this")
    ls.set_defaults(func=cmd_landscape)

    cli_transfer.add_parsers(sub)

    sh = sub.add_parser(
        "show",
        help="what a stored sweep holds, how complete it is, a summary table",
        description="Summarise a sweep's results folder: completeness, runs, best final loss.",
    )
    sh.add_argument("dir", help="the sweep's output folder")
    sh.add_argument("--json", action="store_true", help="print as JSON")
    sh.set_defaults(func=cmd_show)
    return parser


_NUMERIC_FLAGS = ("--c-a", "--c-b", "--eta", "--eta-b", "--eps", "--weight-decay", "--alpha")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--c-a -1/2`` → ``--c-a=-1/2``: argparse would read ``-1/2`` as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a in _NUMERIC_FLAGS and re.match(r"-[\d.]", nxt):
            out.append(f"{a}={nxt}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loraplus-lab`` console script."""
    import matplotlib

    matplotlib.use("Agg")  # figures go to files; never open a window
    parser = build_parser()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


def _entry() -> Any:  # pragma: no cover - python -m loraplus_lab.sims.cli
    raise SystemExit(main())


if __name__ == "__main__":  # pragma: no cover
    _entry()
