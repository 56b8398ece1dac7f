"""The ``loraplus-lab`` command, one module per command family.

``sweep``, ``show``, ``landscape``  (:mod:`.sweep`)   width sweeps through the sweep engine
``theory``                          (:mod:`.theory`)  the exponent calculus, phase diagrams
``finetune``, ``coordcheck``        (:mod:`.realmodels`) LoRA+ on real transformers
``ladder``, ``make-model``          (:mod:`.ladder`) pretrained width ladders, local models
``figures``                         (:mod:`.figures`) every figure of the toolkit
``transfer``                        (:mod:`.transfer`) the rates at a width from proxy widths

Every value is parsed by argparse ``type=`` functions (:mod:`.common`). Bad input — a bad value,
a :class:`~.common.UsageError`, or any :class:`~loraplus_lab.sims.checks.InputError` of the
library (a bad spec file, a foreign store, unreadable data) — gets one line on stderr and exit
status 2, before anything is written. Any other exception is a bug: its traceback is shown and
the exit status is 1. Ctrl-C exits with 130 (a sweep records what it finished first); a closed
pipe (``| head``) ends the command quietly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from loraplus_lab import sims
from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.cli import figures, ladder, realmodels, sweep, theory, transfer
from loraplus_lab.sims.cli.common import (
    PROG,
    Parser,
    UsageError,
    join_negative_values,
    parse_seeds,
    parse_widths,
)

__all__ = ["PROG", "UsageError", "build_parser", "main", "parse_seeds", "parse_widths"]

#: Exit status of a command whose output pipe was closed (as if killed by SIGPIPE).
EXIT_PIPE = 141


def build_parser() -> Parser:
    """The argument parser of ``loraplus-lab`` and its subcommands."""
    parser = Parser(
        prog=PROG,
        description="Theory and simulation toolkit for LoRA+ (Hayou, Ghosh, Yu, ICML 2024).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {sims.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for family in (sweep, theory, realmodels, ladder, figures, transfer):
        family.add_parsers(sub)
    return parser


def _quiet_pipe() -> None:
    """After a closed pipe: point stdout at /dev/null so that flushing it at exit is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (e.g. captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loraplus-lab`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(join_negative_values(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # a bad value (one line already written), --help or --version
        return int(e.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 2
    except KeyboardInterrupt as e:
        sys.stderr.write(f"{PROG}: interrupted{f': {e}' if str(e) else ''}\n")
        return 130
    except BrokenPipeError:
        _quiet_pipe()
        return EXIT_PIPE
