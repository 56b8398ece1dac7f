"""``loraplus-lab figures``: regenerate every figure (with its data and a gallery README)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.cli.common import UsageError
from loraplus_lab.sims.files import OutputDir


def add_parsers(sub: Any) -> None:
    """The ``figures`` subcommand."""
    fg = sub.add_parser(
        "figures",
        help="regenerate every figure into figures/ (with its data and a gallery README)",
        description=(
            "Run each figure's experiment (deterministic by seed) and draw it into --out, with "
            "the data in --out/data and --out/README.md describing every figure."
        ),
    )
    fg.add_argument("--only", type=a.names("--only"), help="comma list of names (see --list)")
    fg.add_argument("--list", action="store_true", help="list the figures and exit")
    fg.add_argument("--fast", action="store_true", help="small versions (for tests)")
    fg.add_argument("--out", default="figures", help="output folder (default figures)")
    fg.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    """Regenerate every figure (or some) into the figures folder."""
    a.use_agg()
    from loraplus_lab.sims import figures

    if args.list:
        for f in figures.FIGURES.values():
            print(f"{f.name:<22} {f.caption}")
        return 0
    for n in args.only or ():
        if n not in figures.FIGURES:
            raise UsageError(f"unknown figure {n!r}; choose from {', '.join(figures.FIGURES)}")
    outdir = OutputDir(Path(args.out))
    try:
        t0 = time.perf_counter()
        figures.generate(args.only or None, out=outdir.path, fast=args.fast)
        print(f"done in {time.perf_counter() - t0:.1f} s; see {outdir.path / 'README.md'}")
    except BaseException:
        outdir.cleanup()
        raise
    return 0
