"""All GPU checks of the real-model LoRA+ code in one script (≤ 6 minutes on one GPU).

1. The LoRA coordinate check on a GPT-2-shaped width ladder up to 4096 in bfloat16: equal rates
   held fixed (``lora-fixed``) against LoRA+ (``η_A ∝ 1/n``, ``η_B`` fixed); measured slopes of
   every statistic against ``log2 n`` with bootstrap intervals, verdicts against the exponent
   calculus, and pass/fail of the headline (LoRA+: δ¹, δ² flat; equal rates: δ¹ grows).
2. Throughput at the widest rung: step time and tokens per second of LoRA (λ = 1) and LoRA+
   (λ of the ``loraplus`` parametrization at that width) with the same optimizer class, their
   ratio (LoRA+ only changes learning rates, so it should be ≈ 1), and the coordinate-check
   hooks' overhead on those steps.
3. The real-model ladder (``loraplus-lab ladder``) at widths 2^8 … 2^11 in bfloat16 (autocast,
   float32 adapters and optimizer state): GPT-2-shaped bases pretrained on the standard
   library's code, LoRA finetuning landscapes on pydoc's prose (a coarse grid refined around
   each width's optimum, the equal-rate, A-frozen and λ = 16 lines, 2 seeds), the optimal-rate
   slopes with bootstrap intervals and LoRA+'s speed-up, as text (``ladder_report.txt``),
   tables and the three figures.

Writes ``gpu_check.json``, ``coordcheck.csv.gz``, ``ladder_report.txt``, ``ladder.csv.gz`` and
PNG figures into ``--out`` (default
``$OUT``, else ``./gpu_check_out``). ``--smoke`` runs a tiny version on the CPU (used by the
tests).

    python benchmarks/gpu_check.py [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from loraplus_lab.sims.realmodels.coordcheck import (  # noqa: E402
    LoraCoordProbe,
    coordcheck_slopes,
    headline,
    make_optimizer,
    resolve_params,
    run_coordcheck,
)
from loraplus_lab.sims.realmodels.ladders import lm_batch, lora_model, make_model  # noqa: E402
from loraplus_lab.sims.realmodels.plots import plot_lora_coordcheck, plot_lora_slopes  # noqa: E402

FULL = {
    "widths": [256, 512, 1024, 2048, 4096],
    "steps": 5,
    "seeds": [0, 1, 2],
    "dtype": "bfloat16",
    "coord_batch": 2,
    "coord_seq": 16,
    "tp_width": 4096,
    "tp_batch": 16,
    "tp_seq": 512,
    "tp_layers": 2,
    "tp_steps": 10,
    "tp_reps": 4,
}
SMOKE = {
    "widths": [64, 128],
    "steps": 2,
    "seeds": [0, 1],
    "dtype": "bfloat16",
    "coord_batch": 2,
    "coord_seq": 8,
    "tp_width": 64,
    "tp_batch": 2,
    "tp_seq": 16,
    "tp_layers": 2,
    "tp_steps": 2,
    "tp_reps": 2,
}
LR = 1e-3
#: Section 3: the ladder on a GPU, ``specs/realmodels/ladder_gpt2_gpu.toml`` (device and dtype
#: replaced by the check's own where they differ).
LADDER_FULL = Path(__file__).resolve().parents[1] / "specs/realmodels/ladder_gpt2_gpu.toml"
LADDER_SMOKE = """
name = "ladder-smoke"
arch = "gpt2"
widths = [32, 64]
layers = 1
head_dim = 16
context = 16
seeds = 2
chunk = 16
dtype = "{dtype}"
device = "{device}"

[pretrain]
steps = 6
batch = 4
warmup = 2
val_windows = 8

[finetune]
steps = 4
batch = 2
warmup = 1
eval_every = 2
curve_windows = 4
eval_windows = 8

[grid]
log2_eta_a = [-9, -7]
log2_eta_b = [-6, -4]
step = 1
refine = 0

[lines]
equal = [-7, -5]
ratio = 16
ratio_log2_eta_a = [-9, -8]
step = 1
"""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def coordinate_check(cfg: dict[str, Any], device: str, out: Path) -> dict[str, Any]:
    """Section 1: the coordinate check, its slopes, figures and headline checks."""
    dtype = getattr(torch, cfg["dtype"])
    t0 = time.perf_counter()
    df = run_coordcheck(
        "gpt2",
        cfg["widths"],
        steps=cfg["steps"],
        seeds=cfg["seeds"],
        lr=LR,
        dtype=dtype,
        device=device,
        batch=cfg["coord_batch"],
        seq=cfg["coord_seq"],
        progress=True,
    )
    seconds = time.perf_counter() - t0
    df.to_csv(out / "coordcheck.csv.gz", index=False)
    slopes = coordcheck_slopes(df)
    min_step = 2 if cfg["steps"] >= 2 else 1
    late = slopes[(slopes["step"] >= min_step) & (slopes["layer_type"] != "model")]

    def measured(param: str | None, stat: str):
        s = late[late["stat"] == stat]
        return (s if param is None else s[s["param"] == param])["slope"]

    checks = {
        "loraplus_delta1_max_abs_slope": float(measured("loraplus", "delta1").abs().max()),
        "loraplus_delta2_max_abs_slope": float(measured("loraplus", "delta2").abs().max()),
        "lora_fixed_delta1_min_slope": float(measured("lora-fixed", "delta1").min()),
        "Z_max_abs_slope": float(measured(None, "Z").abs().max()),
    }
    checks["pass"] = bool(
        checks["loraplus_delta1_max_abs_slope"] <= 0.3
        and checks["loraplus_delta2_max_abs_slope"] <= 0.3
        and checks["lora_fixed_delta1_min_slope"] >= 0.5
        and checks["Z_max_abs_slope"] <= 0.3
    )
    table = headline(slopes, stats=("Z", "Z_A", "Z_B", "delta1", "delta2", "delta3", "dZ"))
    for stat in ("delta1", "delta2", "Z"):
        fig = plot_lora_coordcheck(df, stat, title=f"GPT-2 ladder, {cfg['dtype']}: {stat}")
        fig.savefig(out / f"coordcheck_{stat}.png", dpi=90)
        plt.close(fig)
    fig = plot_lora_slopes(slopes, min_step=min_step, title="width exponents (GPT-2 ladder)")
    fig.savefig(out / "coordcheck_slopes.png", dpi=90)
    plt.close(fig)
    losses = (
        df[df["stat"] == "loss"].groupby(["param", "width", "step"])["value"].mean().reset_index()
    )
    return {
        "seconds": seconds,
        "rows": len(df),
        "diverged_runs": int(df[df["diverged"]].groupby(["param", "width", "seed"]).ngroups),
        "checks": checks,
        "headline_mean_slope_steps_ge_2": {
            f"{p}|{lt}": {k: (None if v != v else round(float(v), 4)) for k, v in row.items()}
            for (p, lt), row in table.iterrows()
        },
        "verdicts": slopes["verdict"].value_counts().to_dict(),
        "slopes": late[late["stat"].isin(["Z", "delta1", "delta2", "delta3"])]
        .round(4)
        .to_dict(orient="records"),
        "loss": losses.round(4).to_dict(orient="records"),
        "config": df.attrs["config"],
    }


def _time_steps(model, opt, batch, steps: int, device, probe=None) -> float:
    _sync(device)
    t = time.perf_counter()
    for k in range(steps):
        if probe is None:
            loss = model(**batch).loss
        else:
            with probe.recording(k):
                loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if probe is not None:
        probe.rows()
    _sync(device)
    return (time.perf_counter() - t) / steps


def throughput(cfg: dict[str, Any], device: str) -> dict[str, Any]:
    """Section 2: LoRA vs LoRA+ step time and tokens/s, and the hooks' overhead."""
    dev = torch.device(device)
    dtype = getattr(torch, cfg["dtype"])
    n, batch, seq = cfg["tp_width"], cfg["tp_batch"], cfg["tp_seq"]
    base = make_model(
        "gpt2", n, seed=0, layers=cfg["tp_layers"], context=seq, device=dev, dtype=dtype
    )
    lora_p, loraplus_p = resolve_params(["lora-fixed", "loraplus"], lr=LR)
    params = {"lora": lora_p, "loraplus": loraplus_p, "hooked": loraplus_p}
    models, opts = {}, {}
    for name, p in params.items():
        m = lora_model(copy.deepcopy(base), "gpt2", seed=0).to(dev).train()
        models[name] = m
        opts[name] = make_optimizer(m, p, n, optimizer="adamw")
    del base
    data = {k: v.to(dev) for k, v in lm_batch("gpt2", batch, seq, seed=0).items()}
    probe = LoraCoordProbe(models["hooked"], max_coords=256)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(cfg["tp_reps"] + 1):  # round 0 is warm-up
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t = _time_steps(
                models[name],
                opts[name],
                data,
                cfg["tp_steps"],
                dev,
                probe if name == "hooked" else None,
            )
            if r:
                times[name].append(t)
    probe.remove()
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = batch * seq
    return {
        "width": n,
        "layers": cfg["tp_layers"],
        "tokens_per_step": tokens,
        "dtype": cfg["dtype"],
        "optimizer": "adamw",
        "lambda_loraplus": params["loraplus"].ratio(n),
        "step_s": med,
        "tokens_per_s": {k: tokens / v for k, v in med.items()},
        "step_time_ratio_loraplus_over_lora": med["loraplus"] / med["lora"],
        "hook_overhead_ratio": med["hooked"] / med["loraplus"],
        "max_memory_gb": (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        ),
    }


def ladder(smoke: bool, device: str, out: Path) -> dict[str, Any]:
    """Section 3: the real-model ladder (pretraining, landscapes, analysis, figures)."""
    import matplotlib.pyplot as plt

    from loraplus_lab.sims.realmodels import ladder_analysis as LA
    from loraplus_lab.sims.realmodels import ladder_plots as LP
    from loraplus_lab.sims.realmodels.ladder import parse_ladder_spec, run_ladder
    from loraplus_lab.sims.sweep.store import load

    dtype = "bfloat16" if device == "cuda" or not smoke else "float32"
    if smoke:
        text = LADDER_SMOKE.format(device=device, dtype=dtype)
    else:
        text = LADDER_FULL.read_text()
        text = text.replace('device = "cuda"', f'device = "{device}"')
        text = text.replace('dtype = "bfloat16"', f'dtype = "{dtype}"')
    spec = parse_ladder_spec(text, "gpu_check")
    os.environ.setdefault("LORAPLUS_CACHE", str(out / "cache"))
    t0 = time.perf_counter()
    run_ladder(spec, out / "ladder", executor="serial", progress=False)
    seconds = time.perf_counter() - t0
    df = load(out / "ladder")
    df.to_csv(out / "ladder.csv.gz", index=False)
    ratio = spec.lines.get("ratio")
    tables = LA.analyze(df, ratio, n_boot=99 if smoke else 499)
    report = LA.report(tables, ratio)
    (out / "ladder_report.txt").write_text(report + "\n")
    n0 = int(spec.widths[0])
    for name, fig in (
        (
            "ladder_landscapes",
            LP.plot_real_landscapes(tables["finals"], tables["optima"], ratio=ratio),
        ),
        (
            "ladder_optimal_rates",
            LP.plot_real_optimal_rates(
                tables["optima"],
                tables["intervals"],
                tables["fits"],
                tables["slices"],
                tables["equal"],
                n0=n0,
            ),
        ),
        (
            "ladder_speedup",
            LP.plot_real_speedup(tables["curves"], tables["intervals"], steps=tables["steps"]),
        ),
    ):
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
    return {
        "seconds": seconds,
        "widths": list(spec.widths),
        "dtype": dtype,
        "runs": int(
            df[df["part"] == "finetune"].groupby(["width", "seed", "eta_a", "eta_b"]).ngroups
        ),
        "fits": tables["fits"].round(4).to_dict(orient="records"),
        "optima": tables["optima"].round(4).to_dict(orient="records"),
        "intervals": tables["intervals"].round(4).to_dict(orient="records"),
        "pretrain": tables["pretrain"].round(4).to_dict(orient="records"),
        "report": report,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU version (for the tests)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = ap.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    cfg = SMOKE if args.smoke else FULL
    device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    report: dict[str, Any] = {
        "smoke": args.smoke,
        "device": {
            "type": device,
            "name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "config": cfg,
        "lr": LR,
    }
    try:
        import peft
        import transformers

        report["device"]["transformers"] = transformers.__version__
        report["device"]["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        pass
    t0 = time.perf_counter()
    status = 0
    for key, fn in (
        ("coordcheck", lambda: coordinate_check(cfg, device, out)),
        ("throughput", lambda: throughput(cfg, device)),
        ("ladder", lambda: ladder(args.smoke, device, out)),
    ):
        t = time.perf_counter()
        try:
            report[key] = fn()
        except Exception as exc:  # a failed section is reported, the others still run
            report[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
            status = 1
        print(f"[gpu_check] {key}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    report["total_seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    cc = report.get("coordcheck", {})
    tp = report.get("throughput", {})
    print(json.dumps({"checks": cc.get("checks"), "throughput": tp}, indent=2, default=str))
    print(report.get("ladder", {}).get("report", report.get("ladder")))
    return status


if __name__ == "__main__":
    sys.exit(main())
