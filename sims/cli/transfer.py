"""``loraplus-lab transfer`` and ``finetune --rates-from``: the rates at a width from proxy widths.

``loraplus-lab transfer STORE --width N [--json]`` reads learning-rate landscapes at two or more
proxy widths (a toy grid sweep's store, the real-model ladder's store, or a CSV/Parquet file of
their rows or of per-width optima), fits how the optimum scales with the width
(:mod:`loraplus_lab.sims.transfer`) and prints the rule ``η_A = c_A·n^a``, ``η_B = c_B·n^b`` and
the predicted ``η_A``, ``η_B``, ``λ`` at ``N`` with their intervals. ``finetune --rates-from
STORE`` trains with the rates predicted at the model's width (:func:`add_rates_from`,
:func:`rates_from`; the ladder can use them the same way). Bad input (a store with one width, a
width ≤ 0, results of another kind) gets one line and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.cli import common as a
from loraplus_lab.sims.cli.common import UsageError

if TYPE_CHECKING:  # the library (numpy, scipy, pandas) is imported when a command runs
    from loraplus_lab.sims import transfer

#: The predictor's modes (``loraplus_lab.sims.transfer.MODES``, default first).
MODES = ("blend", "theory", "free")


def add_parsers(sub: Any) -> None:
    """The ``transfer`` subcommand."""
    tp = sub.add_parser(
        "transfer",
        help="predict η_A, η_B and λ at a width from landscapes at smaller proxy widths",
        description=(
            "Read learning-rate landscapes at two or more proxy widths (a toy grid sweep's "
            "store, the real-model ladder's store, or a .csv/.parquet file of their rows or of "
            "per-width optima), locate the optimum at each width with a bootstrap over seeds, "
            "fit η_A = c_A·n^a and η_B = c_B·n^b (exponents: the theory's (−1, 0), fitted, or "
            "a blend that follows the fit only where the data contradict the theory beyond "
            "their noise) and predict the rates at --width with 95% intervals."
        ),
    )
    tp.add_argument("store", help="a sweep store folder, or a .csv/.parquet file")
    tp.add_argument("--width", type=a.width("--width"), required=True, help="e.g. 4096 or 2^12")
    tp.add_argument(
        "--mode",
        choices=MODES,
        default="blend",
        help="exponents: blend (default), theory (−1, 0) or free",
    )
    tp.add_argument("--loss", help="toy grids: the loss column (default test_loss if any)")
    tp.add_argument("--step", type=a.nonnegative_int("--step"), help="toy grids: the step")
    tp.add_argument("--param", help="toy grids: only parametrizations starting with this")
    tp.add_argument(
        "--boot", type=a.nonnegative_int("--boot"), default=200, help="replicates (200)"
    )
    tp.add_argument("--seed", type=a.nonnegative_int("--seed"), default=0, help="bootstrap seed")
    tp.add_argument("--json", action="store_true", help="print the result as JSON")
    tp.set_defaults(func=cmd_transfer)


def predict_from_store(
    store: str,
    target: float,
    *,
    mode: str = "blend",
    loss: str | None = None,
    step: int | None = None,
    param: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[transfer.ProxyOptima, transfer.ScalingRule, transfer.Prediction]:
    """Read ``store``, fit the rule and predict at ``target`` (:mod:`.transfer`)."""
    from loraplus_lab.sims import transfer

    df = transfer.load_results(store)
    optima = transfer.optima_from_results(
        df, loss=loss, step=step, param=param, n_boot=n_boot, seed=seed
    )
    rule = transfer.fit_rule(optima, mode=mode)
    return optima, rule, rule.predict(target)


def _interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval: one seed)"
    return f"[2^{lo:.2f}, 2^{hi:.2f}]"


def report(optima: transfer.ProxyOptima, rule: transfer.ScalingRule, p: transfer.Prediction) -> str:
    """What ``loraplus-lab transfer`` prints."""
    seeds = f"{optima.seeds} seeds, " if optima.seeds else ""
    lines = [
        f"proxies n = {', '.join(f'{w:g}' for w in optima.widths)} ({seeds}{optima.source}; "
        f"{optima.n_boot} replicates)",
        "optimum per width: log2 η_A*, log2 η_B* (95% percentile over the replicates)",
    ]
    for k, (w, (lo_u, hi_u, lo_v, hi_v)) in enumerate(
        zip(optima.widths, optima_intervals(optima), strict=True)
    ):
        iv = [
            f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else ""
            for lo, hi in ((lo_u, hi_u), (lo_v, hi_v))
        ]
        lines.append(f"  n = {w:<7g} {optima.u[k]:+7.2f} {iv[0]:<17} {optima.v[k]:+7.2f} {iv[1]}")
    for w in optima.widths[optima.at_edge]:
        lines.append(
            f"  warning: at n = {w:g} the optimum lies on the grid's edge: a bound, not an "
            "estimate (widen the grid there)"
        )
    if p.width < min(optima.widths):
        lines.append(
            f"  warning: n = {p.width:g} lies below every proxy: the rule is extrapolated "
            "downward, where a width small enough to tune directly is usually cheaper"
        )
    if len(optima.widths) == 2:
        lines.append(
            "  warning: two proxy widths: a line through two points has no residual, so nothing "
            "checks the fitted exponents (--mode free) against the data; three or more are better"
        )
    lines += [
        f"rule ({rule.mode}): {rule.formula()}",
        f"  fitted exponents a = {rule.free_a:+.2f} ± {rule.se_a:.2f}, b = {rule.free_b:+.2f} ± "
        f"{rule.se_b:.2f} (theory {rule.theory[0]:+g}, {rule.theory[1]:+g}); weight of the fit "
        f"in the rule: {rule.weight_a:.2f}, {rule.weight_b:.2f}",
        f"at n = {p.width:g} (95% intervals):",
    ]
    d = p.to_dict()
    for name, key in (("η_A", "eta_a"), ("η_B", "eta_b"), ("λ  ", "ratio")):
        lines.append(
            f"  {name} = {d[key]:.4g} = 2^{d['log2_' + key]:.2f}  "
            + _interval(d[f"log2_{key}_low"], d[f"log2_{key}_high"])
        )
    return "\n".join(lines)


def optima_intervals(optima: transfer.ProxyOptima) -> list[tuple[float, float, float, float]]:
    """Per proxy width, the 95% percentile intervals of ``log2 η_A*`` and ``log2 η_B*`` over the
    replicates (:func:`transfer.percentile_interval`): ``(low_A, high_A, low_B, high_B)``, NaN
    where too few replicates are known."""
    from loraplus_lab.sims import transfer

    return [
        (*transfer.percentile_interval(optima.boot_u[:, k]),
         *transfer.percentile_interval(optima.boot_v[:, k]))
        for k in range(len(optima.widths))
    ]  # fmt: skip


def _finite_or_none(values) -> list[float | None]:
    """JSON has no NaN: unknown values become null."""
    return [float(x) if math.isfinite(x) else None for x in values]


def cmd_transfer(args: argparse.Namespace) -> int:
    """Predict the rates at ``--width`` from the landscapes in ``STORE``."""
    optima, rule, p = predict_from_store(
        args.store,
        args.width,
        mode=args.mode,
        loss=args.loss,
        step=args.step,
        param=args.param,
        n_boot=args.boot,
        seed=args.seed,
    )
    if args.json:
        iv = list(zip(*optima_intervals(optima), strict=True))  # low_A, high_A, low_B, high_B
        payload = {
            "store": str(args.store),
            "width": args.width,
            "prediction": p.to_dict(),
            "rule": rule.to_dict(),
            "optima": {
                "widths": optima.widths.tolist(),
                "log2_eta_a": optima.u.tolist(),
                "log2_eta_b": optima.v.tolist(),
                **{
                    f"log2_eta_{f}_{side}": _finite_or_none(iv[j])
                    for j, (f, side) in enumerate(
                        (("a", "low"), ("a", "high"), ("b", "low"), ("b", "high"))
                    )
                },
                "at_edge": optima.at_edge.tolist(),
                "seeds": optima.seeds,
                "replicates": optima.n_boot,
            },
        }
        print(json.dumps(payload, indent=2, default=float))
    else:
        print(report(optima, rule, p))
    return 0


# ----------------------------------------------------------------------------- --rates-from
def model_width(model: str, *, offline: bool = False) -> int:
    """The width ``n`` of a transformers model (``hidden_size``, ``n_embd`` or ``d_model`` of its
    configuration), read without loading its weights."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model), local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - any failure to read a configuration is bad input
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"cannot read the configuration of {model!r}: {first}") from None
    for attr in ("hidden_size", "n_embd", "d_model"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    raise InputError(f"{model!r}: its configuration names no width (hidden_size, n_embd, d_model)")


def add_rates_from(parser: argparse.ArgumentParser) -> None:
    """``--rates-from STORE`` and ``--width`` for a command that trains (finetune; the ladder)."""
    parser.add_argument(
        "--rates-from",
        help="take η_A and λ from the rule fitted to this store's landscapes (loraplus-lab "
        "transfer), predicted at the model's width",
    )
    parser.add_argument(
        "--width",
        type=a.width("--width"),
        help="with --rates-from: predict at this width instead of the model's",
    )


def rates_from(args: argparse.Namespace, model: str) -> dict[str, Any] | None:
    """``η_A``, ``λ`` and the record of where they came from, for ``--rates-from`` (``None``
    without it); refuses ``--lr``, ``--ratio``, ``--lora`` and the grids beside it (they would
    contradict it), and ``--width`` without it."""
    if not args.rates_from:
        if args.width is not None:
            raise UsageError("--width goes with --rates-from")
        return None
    for flag, given in (
        ("--lr", args.lr is not None),
        ("--ratio", args.ratio is not None),
        ("--lora", args.lora),
        ("--grid-eta-a", bool(args.grid_eta_a)),
        ("--grid-eta-b", bool(args.grid_eta_b)),
        ("--grid-ratio", bool(args.grid_ratio)),
    ):
        if given:
            raise UsageError(f"--rates-from sets the rates; drop {flag}")
    n = args.width
    if n is None:
        n = float(model_width(model, offline=bool(getattr(args, "offline", False))))
    _, rule, p = predict_from_store(args.rates_from, n)
    return {
        "lr": p.eta_a,
        "ratio": p.ratio,
        "record": {
            "store": str(Path(args.rates_from)),
            "width": n,
            "rule": rule.formula(),
            "prediction": p.to_dict(),
        },
    }
