"""``loraplus-lab theory``: the exponent calculus of a parametrization, or its phase diagrams."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.files import OutputDir, atomic_write
from loraplus_lab.sims.params import INITS
from loraplus_lab.theory.optimizers import OPTIMIZERS, calculus_optimizer


def add_parsers(sub: Any) -> None:
    """The ``theory`` subcommand."""
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
    th.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    th.add_argument(
        "--c-a", type=a.exponent("--c-a"), default="-1", help="exponent of η_A (-1, -0.5, -1/2)"
    )
    th.add_argument("--c-b", type=a.exponent("--c-b"), default="0", help="exponent of η_B")
    th.add_argument(
        "--steps", type=a.positive_int("--steps"), default="4", help="steps to propagate (4)"
    )
    th.add_argument("--phase", action="store_true", help="draw phase diagrams over (c_A, c_B)")
    th.add_argument("--out", default="results/theory", help="output folder for --phase")
    th.add_argument("--json", action="store_true", help="print as JSON")
    th.set_defaults(func=cmd_theory)


def cmd_theory(args: argparse.Namespace) -> int:
    """Print predicted exponents and the regime, or draw phase diagrams."""
    from loraplus_lab.theory import gamma

    if args.phase:
        return _phase(args)
    pred = gamma.predict(
        args.init, calculus_optimizer(args.optimizer), args.c_a, args.c_b, args.steps
    )
    if args.json:
        r = pred.regime
        payload = {
            "init": args.init,
            "optimizer": args.optimizer,
            "c_a": str(args.c_a),
            "c_b": str(args.c_b),
            "steps": args.steps,
            "regime": {
                "label": r.label,
                "stable": r.stable,
                "output_stable": r.output_stable,
                "internal_instability": r.internal_instability,
                "efficient": r.efficient,
                "undertrained": list(r.undertrained),
                "description": r.description,
            },
            "exponents": [{**row, "exponent": str(row["exponent"])} for row in pred.rows()],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(pred.table())
    print("γ: v = Θ(n^γ) as the width n grows; 'zero': exactly 0 at that step")
    print(f"\nregime: {pred.regime.label} — {pred.regime.description}")
    return 0


def _phase(args: argparse.Namespace) -> int:
    """Phase diagrams of every initialisation × optimizer family into ``--out``."""
    from loraplus_lab.theory import gamma

    outdir = OutputDir(Path(args.out))
    try:
        a.use_agg()
        from loraplus_lab.sims.plots import plot_phase_diagrams

        grid = [Fraction(k, 8) for k in range(-24, 9)]
        diagrams, titles = [], []
        for init in INITS:
            for opt in gamma.OPTIMIZERS:
                diagrams.append(gamma.phase_diagram(init, opt, grid, grid, args.steps))
                titles.append(f"Init[{init}], {opt}")
        fig = plot_phase_diagrams(
            diagrams,
            titles,
            mark=None if (args.c_a, args.c_b) == (-1, 0) else (float(args.c_a), float(args.c_b)),
            suptitle=f"Regimes of the rank-1 toy over {args.steps} steps (exponent calculus)",
        )
        path = atomic_write(
            outdir.path / "phase_diagram.png", lambda p: fig.savefig(p, dpi=110, format="png")
        )
    except BaseException:
        outdir.cleanup()
        raise
    print(f"wrote {path}")
    return 0
