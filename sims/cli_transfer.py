"""``loraplus-lab transfer`` and ``finetune --rates-from``: the rates at a width from proxy widths.

``loraplus-lab transfer STORE --width N [--json]`` reads learning-rate landscapes at two or more
proxy widths (a toy grid sweep's store, the real-model ladder's store, or a CSV/Parquet file of
their rows or of per-width optima), fits how the optimum scales with the width
(:mod:`loraplus_lab.sims.transfer`) and prints the rule ``η_A = c_A·n^a``, ``η_B = c_B·n^b`` and
the predicted ``η_A``, ``η_B``, ``λ`` at ``N`` with their intervals. ``finetune --rates-from
STORE`` trains with the rates predicted at the model's width. Bad input (a store with one width,
a width ≤ 0, results of another kind) gets one line and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from loraplus_lab.sims import transfer


class RatesError(ValueError):
    """Bad input to ``transfer`` or ``--rates-from`` (reported in one line, exit status 2)."""


def parse_width(flag: str, text: str) -> float:
    """A target width: a positive integer (``4096``) or a power of two (``2^12``)."""
    t = str(text).strip()
    m = re.fullmatch(r"2\^(\d+)", t)
    try:
        n = float(2 ** int(m.group(1))) if m else float(t)
    except (ValueError, OverflowError):
        raise RatesError(
            f"{flag} must be a positive width such as 4096 or 2^12, got {text!r}"
        ) from None
    if not (math.isfinite(n) and n > 0):
        raise RatesError(f"{flag} must be a positive width, got {text!r}")
    return n


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
    tp.add_argument("--width", required=True, help="the target width, e.g. 4096 or 2^12")
    tp.add_argument(
        "--mode",
        choices=transfer.MODES,
        default="blend",
        help="exponents: blend (default), theory (−1, 0) or free",
    )
    tp.add_argument("--loss", help="toy grids: the loss column (default test_loss if any)")
    tp.add_argument("--step", help="toy grids: the step to read (default: the last)")
    tp.add_argument("--param", help="toy grids: only parametrizations starting with this")
    tp.add_argument("--boot", default="200", help="bootstrap replicates (default 200)")
    tp.add_argument("--seed", default="0", help="seed of the bootstrap (default 0)")
    tp.add_argument("--json", action="store_true", help="print the result as JSON")
    tp.set_defaults(func=cmd_transfer)


def _int(flag: str, text: str, minimum: int) -> int:
    try:
        v = int(str(text))
    except ValueError:
        raise RatesError(f"{flag} must be an integer ≥ {minimum}, got {text!r}") from None
    if v < minimum:
        raise RatesError(f"{flag} must be an integer ≥ {minimum}, got {text!r}")
    return v


def predict_from_store(
    store: str,
    width: float,
    *,
    mode: str = "blend",
    loss: str | None = None,
    step: int | None = None,
    param: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[transfer.ProxyOptima, transfer.ScalingRule, transfer.Prediction]:
    """Read ``store``, fit the rule and predict at ``width`` (:mod:`.transfer`)."""
    df = transfer.load_results(store)
    optima = transfer.optima_from_results(
        df, loss=loss, step=step, param=param, n_boot=n_boot, seed=seed
    )
    if width <= 0:
        raise RatesError(f"the target width must be positive, got {width:g}")
    rule = transfer.fit_rule(optima, mode=mode)
    return optima, rule, rule.predict(width)


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
    for k, w in enumerate(optima.widths):
        iv = []
        for boot in (optima.boot_u[:, k], optima.boot_v[:, k]):
            lo, hi = transfer.percentile_interval(boot)
            iv.append(f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else "")
        lines.append(f"  n = {w:<7g} {optima.u[k]:+7.2f} {iv[0]:<17} {optima.v[k]:+7.2f} {iv[1]}")
    for w in optima.widths[optima.at_edge]:
        lines.append(
            f"  warning: at n = {w:g} the optimum lies on the grid's edge: a bound, not an "
            "estimate (widen the grid there)"
        )
    lines += [
        f"rule ({rule.mode}): {rule.formula()}",
        f"  fitted exponents a = {rule.free_a:+.2f} ± {rule.se_a:.2f}, b = {rule.free_b:+.2f} ± "
        f"{rule.se_b:.2f} (theory {rule.theory[0]:+g}, {rule.theory[1]:+g}); weight of the fit "
        f"in the rule: {rule.weight_a:.2f}, {rule.weight_b:.2f}",
        f"at n = {p.width:g} (95% intervals):",
    ]
    for name, key in (("η_A", "eta_a"), ("η_B", "eta_b"), ("λ  ", "ratio")):
        d = p.to_dict()
        lines.append(
            f"  {name} = {d[key]:.4g} = 2^{d['log2_' + key]:.2f}  "
            + _interval(d[f"log2_{key}_low"], d[f"log2_{key}_high"])
        )
    return "\n".join(lines)


def cmd_transfer(args: argparse.Namespace) -> int:
    """Predict the rates at ``--width`` from the landscapes in ``STORE``."""
    width = parse_width("--width", args.width)
    step = None if args.step is None else _int("--step", args.step, 0)
    optima, rule, p = predict_from_store(
        args.store,
        width,
        mode=args.mode,
        loss=args.loss,
        step=step,
        param=args.param,
        n_boot=_int("--boot", args.boot, 0),
        seed=_int("--seed", args.seed, 0),
    )
    if args.json:
        payload = {
            "store": str(args.store),
            "width": width,
            "prediction": p.to_dict(),
            "rule": rule.to_dict(),
            "optima": {
                "widths": optima.widths.tolist(),
                "log2_eta_a": optima.u.tolist(),
                "log2_eta_b": optima.v.tolist(),
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
        raise RatesError(f"cannot read the configuration of {model!r}: {first}") from None
    for attr in ("hidden_size", "n_embd", "d_model"):
        n = getattr(config, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    raise RatesError(f"{model!r}: its configuration names no width (hidden_size, n_embd, d_model)")


def add_rates_from(parser: argparse.ArgumentParser) -> None:
    """``--rates-from STORE`` and ``--width`` for a command that trains (finetune; ladder)."""
    parser.add_argument(
        "--rates-from",
        help="take η_A and λ from the rule fitted to this store's landscapes (loraplus-lab "
        "transfer), predicted at the model's width",
    )
    parser.add_argument(
        "--width", help="with --rates-from: predict at this width instead of the model's"
    )


def rates_from(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """``η_A``, ``λ`` and the record of where they came from, for ``--rates-from``; refuses
    ``--lr``, ``--ratio``, ``--lora`` and the grids beside it (they would contradict it)."""
    for flag, given in (
        ("--lr", args.lr is not None),
        ("--ratio", args.ratio is not None),
        ("--lora", args.lora),
        ("--grid-eta-a", bool(args.grid_eta_a)),
        ("--grid-eta-b", bool(args.grid_eta_b)),
        ("--grid-ratio", bool(args.grid_ratio)),
    ):
        if given:
            raise RatesError(f"--rates-from sets the rates; drop {flag}")
    if args.width is not None:
        width = parse_width("--width", args.width)
    else:
        width = float(model_width(model, offline=bool(getattr(args, "offline", False))))
    _, rule, p = predict_from_store(args.rates_from, width)
    return {
        "lr": p.eta_a,
        "ratio": p.ratio,
        "record": {
            "store": str(Path(args.rates_from)),
            "width": width,
            "rule": rule.formula(),
            "prediction": p.to_dict(),
        },
    }
