"""``loraplus-lab finetune`` and ``coordcheck``: LoRA+ on real transformers."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.cli import transfer
from loraplus_lab.sims.cli.common import UsageError
from loraplus_lab.sims.files import OutputDir, atomic_write, versions
from loraplus_lab.sims.params import INITS


def add_parsers(sub: Any) -> None:
    """The ``finetune`` and ``coordcheck`` subcommands."""
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
    ft.add_argument("--lr", type=a.positive_float("--lr"), help="η_A (1e-4)")
    ft.add_argument("--ratio", type=a.positive_float("--ratio"), help="λ = η_B/η_A (16)")
    ft.add_argument("--lora", action="store_true", help="plain LoRA: λ = 1")
    ft.add_argument("--policy", choices=("theory", "peft"), default="theory")
    ft.add_argument("--epochs", type=a.positive_float("--epochs"), help="training epochs (3)")
    ft.add_argument("--steps", type=a.positive_int("--steps"), help="steps instead of epochs")
    ft.add_argument("--batch-size", type=a.positive_int("--batch-size"), default=32)
    ft.add_argument("--r", type=a.positive_int("--r"), default=8, help="LoRA rank (8)")
    ft.add_argument("--alpha", type=a.positive_float("--alpha"), default=8.0, help="LoRA α (8)")
    ft.add_argument(
        "--target-modules",
        type=a.names("--target-modules"),
        help="comma list (default: the paper's per architecture)",
    )
    ft.add_argument("--seed", type=a.nonnegative_int("--seed"), default=0)
    ft.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    ft.add_argument("--grid-eta-a", type=a.rates("--grid-eta-a"), help="1e-5,1e-4 or 2^-16..2^-12")
    ft.add_argument("--grid-eta-b", type=a.rates("--grid-eta-b"), help="grid of η_B (a product)")
    ft.add_argument("--grid-ratio", type=a.rates("--grid-ratio"), help="grid of λ instead of η_B")
    ft.add_argument(
        "--executor",
        choices=("serial", "local", "ray"),
        default="serial",
        help="grids: run the points on the sweep engine's executor (default serial)",
    )
    ft.add_argument("--workers", type=a.positive_int("--workers"), help="grids: parallel workers")
    ft.add_argument("--no-trainer", action="store_true", help="the plain accelerate loop")
    ft.add_argument("--max-samples", type=a.positive_int("--max-samples"), help="training rows")
    ft.add_argument("--max-length", type=a.positive_int("--max-length"), help="tokens (128)")
    ft.add_argument("--offline", action="store_true", help="never reach the Hub")
    ft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ft.add_argument("--json", action="store_true", help="print the summary as JSON")
    ft.add_argument("--quiet", action="store_true", help="no progress bar")
    transfer.add_rates_from(ft)
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
    cc.add_argument(
        "--widths", type=a.widths("--widths"), default="64,128,256,512", help="e.g. 2^6..2^9"
    )
    cc.add_argument("--steps", type=a.positive_int("--steps"), default="5")
    cc.add_argument("--seeds", type=a.seeds("--seeds"), default="3", help="count, list or range")
    cc.add_argument(
        "--presets", type=a.presets("--presets"), default="lora-fixed,loraplus", help="to compare"
    )
    cc.add_argument("--lr", type=a.positive_float("--lr"), default="1e-3", help="base rate")
    cc.add_argument("--init", choices=INITS, default="A")
    cc.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    cc.add_argument("--device", default="cpu", help="cpu or cuda")
    cc.add_argument("--out", default="results/coordcheck")
    cc.add_argument("--json", action="store_true")
    cc.add_argument("--quiet", action="store_true")
    cc.set_defaults(func=cmd_coordcheck)


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


def _grid(args: argparse.Namespace) -> dict[str, list[float]] | None:
    if not (args.grid_eta_a or args.grid_eta_b or args.grid_ratio):
        return None
    if not args.grid_eta_a or not (args.grid_eta_b or args.grid_ratio):
        raise UsageError("--grid-eta-a goes with --grid-eta-b or --grid-ratio")
    if args.grid_eta_b and args.grid_ratio:
        raise UsageError("give --grid-eta-b or --grid-ratio, not both")
    if args.grid_eta_b:
        return {"eta_a": args.grid_eta_a, "eta_b": args.grid_eta_b}
    return {"eta_a": args.grid_eta_a, "ratio": args.grid_ratio}


def cmd_finetune(args: argparse.Namespace) -> int:
    """Finetune a real model with LoRA or LoRA+ (the paper's GLUE setting by default)."""
    grid = _grid(args)
    rates = transfer.rates_from(args, args.model)  # --rates-from: η_A and λ at the model's width
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out} is a file")
    resumable = grid is not None and (out / "spec.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not (args.overwrite or resumable):
        raise UsageError(f"--out {args.out} is not empty (add --overwrite to replace it)")
    _quiet_transformers()
    settings: dict[str, Any] = {
        "policy": args.policy,
        "batch_size": args.batch_size,
        "r": args.r,
        "alpha": args.alpha,
        "target_modules": args.target_modules,
        "seed": args.seed,
        "bf16": {"auto": "auto", "on": True, "off": False}[args.bf16],
        "use_trainer": not args.no_trainer,
    }
    for key in ("steps", "epochs", "max_samples", "max_length"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.offline:
        settings["offline"] = True
    progress = not args.quiet and sys.stderr.isatty()
    if grid is None:
        from loraplus_lab.sims.realmodels.finetune import finetune

        if rates is not None:
            lr, ratio = rates["lr"], rates["ratio"]
        else:
            lr = 1e-4 if args.lr is None else args.lr
            ratio = 1.0 if args.lora else 16.0 if args.ratio is None else args.ratio
        summary = finetune(
            args.model, args.task, out=out, lr=lr, ratio=ratio, overwrite=args.overwrite,
            progress=progress, **settings,
        )  # fmt: skip
        if rates is not None:
            summary = {**summary, "rates_from": rates["record"]}
            atomic_write(out / "rates_from.json", json.dumps(rates["record"], indent=2))
    else:
        from loraplus_lab.sims.realmodels.grid import finetune_grid

        summary = finetune_grid(
            args.model, args.task, grid, out=out, overwrite=args.overwrite, progress=progress,
            executor=args.executor, workers=args.workers, **settings,
        )  # fmt: skip
    print(json.dumps(summary, indent=2, default=str))
    if not args.json:
        print(f"results in {args.out}")
    return 0


def cmd_coordcheck(args: argparse.Namespace) -> int:
    """The LoRA coordinate check of a width ladder of a real architecture."""
    if len(args.widths) < 2:
        raise UsageError("a coordinate check needs at least two widths")
    if not args.presets:
        raise UsageError("--presets: give at least one parametrization")
    _quiet_transformers()
    a.use_agg()
    import torch

    from loraplus_lab.sims.realmodels.coordcheck import coordcheck_slopes, headline, run_coordcheck
    from loraplus_lab.sims.realmodels.plots import plot_lora_coordcheck

    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
    outdir = OutputDir(Path(args.out))
    try:
        df = run_coordcheck(
            args.arch,
            args.widths,
            steps=args.steps,
            seeds=args.seeds,
            parametrizations=args.presets,
            lr=args.lr,
            init=args.init,
            dtype=dtype[args.dtype],
            device=args.device,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        slopes = coordcheck_slopes(df)
        head = headline(slopes)
        out = outdir.path
        atomic_write(out / "coordcheck.csv", lambda p: df.to_csv(p, index=False))
        atomic_write(out / "slopes.csv", lambda p: slopes.to_csv(p, index=False))
        config = {
            "arch": args.arch,
            "widths": args.widths,
            "seeds": args.seeds,
            "steps": args.steps,
            "presets": args.presets,
            "lr": args.lr,
            "init": args.init,
            "dtype": args.dtype,
            "device": args.device,
            "versions": versions(),
        }
        atomic_write(out / "config.json", json.dumps(config))
        for stat in ("delta1", "delta2", "Z"):
            fig = plot_lora_coordcheck(df, stat, title=f"{args.arch}: {stat} against width")
            atomic_write(
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
