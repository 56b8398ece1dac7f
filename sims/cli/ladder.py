"""``loraplus-lab ladder`` (the real-model width ladder: pretraining, landscapes, speed-up) and
``loraplus-lab make-model`` (a small local model folder with its tokenizer, for offline use)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.cli.common import PROG, UsageError
from loraplus_lab.sims.files import OutputDir

ARCHS = ("gpt2", "llama", "roberta")
#: Store kinds this command runs and analyses.
KINDS = ("ladder", "family")


def add_parsers(sub: Any) -> None:
    """The ``ladder`` and ``make-model`` subcommands."""
    ld = sub.add_parser(
        "ladder",
        help="pretrained width ladder: LoRA landscapes over (η_A, η_B), optimal-rate slopes, "
        "LoRA+'s speed-up",
        description=(
            "Run a real-model ladder from a spec file (e.g. "
            "specs/realmodels/ladder_gpt2_cpu.toml): pretrain "
            "one base per width on one corpus, LoRA-finetune every (η_A, η_B) of a coarse grid, "
            "its refinement and the equal-rate, A-frozen and fixed-ratio lines on another, then "
            "print per width the optimum, the references and LoRA+'s speed-up, and the slopes "
            "against width with bootstrap intervals. Every stage is jobs of the sweep engine "
            "(resumable; serial, local processes or Ray); bases are cached in $LORAPLUS_CACHE "
            "(default ~/.cache/loraplus-lab). Needs loraplus-lab[realmodels]."
        ),
    )
    ld.add_argument(
        "spec", nargs="?", help="a ladder's spec file, or a hub family's (one naming models)"
    )
    ld.add_argument("--out", help="the store's folder (default results/NAME)")
    ld.add_argument("--resume", action="store_true", help="continue the ladder stored in --out")
    ld.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default="local",
        help="serial (in-process), local processes (default), or Ray (RAY_ADDRESS)",
    )
    ld.add_argument("--workers", type=a.positive_int("--workers"), help="default: all cores")
    ld.add_argument(
        "--boot", type=a.positive_int("--boot"), default=999, help="bootstrap resamples (999)"
    )
    ld.add_argument(
        "--rates-from",
        help="instead of a landscape, run each width at the rates the transfer rule fitted to "
        "this store predicts for it (loraplus-lab transfer), every seed",
    )
    ld.add_argument("--json", action="store_true", help="print the tables as JSON")
    ld.add_argument("--quiet", action="store_true", help="no progress bar")
    ld.set_defaults(func=cmd_ladder)

    mm = sub.add_parser(
        "make-model",
        help="write a small GPT-2/Llama/RoBERTa folder with a byte-level tokenizer (offline)",
        description=(
            "A width-ladder rung saved with save_pretrained, with a byte-level tokenizer (ids are "
            "the UTF-8 bytes): loraplus-lab finetune --model DIR (and from_pretrained) load it "
            "without the network. --pretrain CORPUS pretrains it first (GPT-2 and Llama)."
        ),
    )
    mm.add_argument("arch", choices=ARCHS)
    mm.add_argument("--width", type=a.positive_int("--width"), default=64, help="hidden size (64)")
    mm.add_argument("--layers", type=a.positive_int("--layers"), default=2, help="blocks (2)")
    mm.add_argument("--head-dim", type=a.positive_int("--head-dim"), default=32, help="(32)")
    mm.add_argument("--context", type=a.positive_int("--context"), default=128, help="(128)")
    mm.add_argument("--seed", type=a.nonnegative_int("--seed"), default=0)
    mm.add_argument(
        "--pretrain",
        help="corpus to pretrain on: stdlib-code, pydoc-topics, a text file or folder, hf:NAME",
    )
    mm.add_argument("--steps", type=a.positive_int("--steps"), default=500, help="(500)")
    mm.add_argument("--out", required=True, help="output folder (new or empty)")
    mm.set_defaults(func=cmd_make_model)


def _quiet() -> None:
    from loraplus_lab.sims.cli.realmodels import _quiet_transformers

    _quiet_transformers()


def load_spec(path: str) -> Any:
    """A ladder spec, or a hub-family spec (one that names ``models``), checked."""
    from loraplus_lab.sims.realmodels.family import load_family_spec
    from loraplus_lab.sims.realmodels.ladder import load_ladder_spec
    from loraplus_lab.sims.sweep.spec import SpecError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = {}  # the spec's own loader names the problem
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: not a spec table")
    return load_family_spec(path) if "models" in raw else load_ladder_spec(path)


def _runner(spec: Any) -> Any:
    from loraplus_lab.sims.realmodels.family import FamilySpec, run_family
    from loraplus_lab.sims.realmodels.ladder import run_ladder

    return run_family if isinstance(spec, FamilySpec) else run_ladder


def cmd_ladder(args: argparse.Namespace) -> int:
    """Run (or resume) a ladder or a hub family, then print its analysis."""
    if args.spec is not None:
        spec = load_spec(args.spec)  # validated before torch is imported
        if args.rates_from:
            spec = _with_predictions(spec, args.rates_from)
        out = Path(args.out) if args.out else Path("results") / spec.name
    elif args.resume:
        if args.rates_from:
            raise UsageError("--rates-from goes with a spec file (the store keeps the rates)")
        if args.out is None:
            raise UsageError("--resume without a spec file needs --out, the ladder's folder")
        out = Path(args.out)
        spec = None
    else:
        raise UsageError(
            "give a ladder spec file (e.g. specs/realmodels/ladder_gpt2_cpu.toml) or --resume"
        )
    a.use_agg()
    _quiet()
    from loraplus_lab.sims.sweep.store import Store

    if spec is None:
        store = Store.open(out)
        if store.spec_dict().get("kind") not in KINDS:
            raise UsageError(f"{out} holds no ladder; `{PROG} sweep --resume` resumes other kinds")
        spec = store.spec()
    outdir = OutputDir(out) if not (out / "spec.json").exists() else None
    try:
        summary = _runner(spec)(
            spec,
            out,
            executor=args.executor,
            workers=args.workers,
            progress=not args.quiet and sys.stderr.isatty(),
            on_stage=None if args.quiet else lambda s: print(f"running {s}", file=sys.stderr),
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt(
            f"finished jobs are kept in {out}; continue with  {PROG} ladder --resume --out {out}"
        ) from None
    except BaseException:
        if outdir is not None:
            outdir.cleanup()
        raise
    return _print_analysis(out, spec, args.boot, args.json, summary)


def _with_predictions(spec: Any, store: str) -> Any:
    """The ladder ``spec`` with a ``[predicted]`` table: per width, the rates the transfer rule
    fitted to ``store`` predicts (its source text gains the table, so the store keeps it)."""
    from loraplus_lab.sims.cli.transfer import predict_from_store
    from loraplus_lab.sims.realmodels.family import FamilySpec
    from loraplus_lab.sims.realmodels.ladder import parse_ladder_spec

    if isinstance(spec, FamilySpec):
        raise UsageError("--rates-from runs a ladder spec; a family's models have fixed widths")
    if spec.predicted:
        raise UsageError(f"{spec.path} already has a [predicted] table; drop --rates-from")
    rows = []
    for w in spec.widths:
        _, rule, p = predict_from_store(store, float(w))
        rows.append(f'"{w}" = [{math.log2(p.eta_a):.6f}, {math.log2(p.eta_b):.6f}]')
    text = spec.source.rstrip("\n") + (
        f"\n\n[predicted]  # --rates-from {store}: {rule.formula()}\n" + "\n".join(rows) + "\n"
    )
    return parse_ladder_spec(text, spec.path)


def _print_predicted(out: Path, spec: Any, as_json: bool) -> int:
    """Per width: the predicted rates and the final loss they reach (seed mean, range)."""
    from loraplus_lab.sims.sweep.store import load

    df = load(out)
    last = df[(df["part"] == "finetune") & (df["step"] == spec.finetune["steps"])]
    rows = []
    for w, g in last.groupby("width"):
        u, v = spec.predicted[int(w)]
        rows.append(
            {
                "width": int(w),
                "log2_eta_a": u,
                "log2_eta_b": v,
                "final_loss": float(g["final_loss"].mean()),
                "min": float(g["final_loss"].min()),
                "max": float(g["final_loss"].max()),
                "diverged": int(g["diverged"].sum()),
                "seeds": len(g),
            }
        )
    if as_json:
        print(json.dumps({"path": str(out), "predicted": rows}, indent=2))
        return 0
    print("the predicted rates, run at every width (final loss: mean over seeds [min, max]):")
    for r in rows:
        print(
            f"  n = {r['width']:>5}: log2 η_A {r['log2_eta_a']:+.2f}, log2 η_B "
            f"{r['log2_eta_b']:+.2f} → {r['final_loss']:.4f} [{r['min']:.4f}, {r['max']:.4f}]"
            f" over {r['seeds']} seeds, {r['diverged']} diverged"
        )
    return 0


def _print_analysis(out: Path, spec: Any, n_boot: int, as_json: bool, summary: dict) -> int:
    from loraplus_lab.sims.realmodels import ladder_analysis as LA
    from loraplus_lab.sims.sweep.store import load

    if getattr(spec, "predicted", None):
        return _print_predicted(out, spec, as_json)
    df = load(out)
    ratio = spec.lines.get("ratio")
    tables = LA.analyze(df, ratio, n_boot=n_boot)
    if as_json:
        payload = {
            "path": str(out),
            "summary": summary,
            **{
                k: v.replace({float("nan"): None}).to_dict(orient="records")
                for k, v in tables.items()
                if k in ("optima", "fits", "intervals", "pretrain")
            },
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(LA.report(tables, ratio))
        print(f"\nstore: {out}   (read it with loraplus_lab.sims.sweep.load({str(out)!r}))")
    return 0


def show_ladder(store: Any, n_boot: int = 999, as_json: bool = False) -> int:
    """``loraplus-lab show`` of a ladder store: what is done, and the analysis when complete."""
    df = store.load()
    at = df.attrs
    spec = store.spec()
    if not at["complete"]:
        done = at["jobs_done"]
        print(
            f"ladder {spec.name!r} in {store.path}: {done}/{at['jobs_total']} jobs of the stages "
            f"listed so far done; finish with  {PROG} ladder --resume --out {store.path}"
        )
        return 0
    return _print_analysis(store.path, spec, n_boot, as_json, {"jobs": at["jobs_total"]})


def cmd_make_model(args: argparse.Namespace) -> int:
    """Write a small local model folder with its byte-level tokenizer."""
    from loraplus_lab.sims.files import check_output
    from loraplus_lab.sims.realmodels.ladder_config import check_width

    check_width(args.width, args.head_dim)
    if args.pretrain is not None and args.arch == "roberta":
        raise UsageError("--pretrain is for causal models (gpt2, llama); RoBERTa is masked")
    check_output(Path(args.out))
    if args.pretrain is not None:
        from loraplus_lab.sims.realmodels.corpus import check_corpus_name

        check_corpus_name(args.pretrain)
    _quiet()
    from loraplus_lab.sims.realmodels.export import make_model_folder

    out = make_model_folder(
        args.arch,
        args.width,
        args.out,
        layers=args.layers,
        head_dim=args.head_dim,
        context=args.context,
        seed=args.seed,
        pretrain=args.pretrain,
        steps=args.steps,
    )
    print(f"wrote {out}: load it with  {PROG} finetune --model {out} --task DATA.csv ...")
    return 0
