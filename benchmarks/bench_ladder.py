"""Finetuning many rate configurations of one frozen base: batched (stacked adapters, one model)
against one run at a time (PEFT's LoRA model + torch.optim.AdamW), side by side in one run.

The same grid of (η_A, η_B) configurations of one width and one seed runs both ways with the
ladder's settings (byte-level GPT-2 shape, 2 blocks, head dimension 16, r = 8, 4 × 64 bytes per
step, the validation curve every 10 steps and the final loss); blocks of the two paths
alternate, and the best of the repeats is kept for each (load on a shared machine hits both
alike). Prints configuration·steps per second of each, their ratio, and the largest difference
between the two paths' losses (float32: the batched products sum in another order).

    python benchmarks/bench_ladder.py                       # width 2^7, 1 and 2 threads
    python benchmarks/bench_ladder.py --widths 32,128,256 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from loraplus_lab.sims.realmodels.corpus import load_corpus
from loraplus_lab.sims.realmodels.ladder_config import FinetuneSetup, RateConfig
from loraplus_lab.sims.realmodels.ladders import make_model
from loraplus_lab.sims.realmodels.multirate import finetune_one, finetune_rates


def grid(n: int) -> list[RateConfig]:
    """``n`` configurations spread over a 2-D log2 grid of rates."""
    side = int(np.ceil(np.sqrt(n)))
    pts = [(a, b) for a in range(side) for b in range(side)][:n]
    return [RateConfig(2.0 ** (-12 + a), 2.0 ** (-8 + b)) for a, b in pts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="128", help="comma list of widths (default 128)")
    ap.add_argument("--threads", default="1,2", help="torch threads to try (default 1,2)")
    ap.add_argument("--configs", type=int, default=16, help="configurations in the grid")
    ap.add_argument("--chunk", type=int, default=8, help="configurations per batched run")
    ap.add_argument("--steps", type=int, default=40, help="finetuning steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats (best kept)")
    args = ap.parse_args()
    prose = load_corpus("pydoc-topics")
    setup = FinetuneSetup(steps=args.steps, warmup=4, eval_every=10)
    configs = grid(args.configs)
    chunks = [configs[i : i + args.chunk] for i in range(0, len(configs), args.chunk)]
    work = len(configs) * args.steps
    print(
        f"{len(configs)} configurations × {args.steps} steps, batches of {args.chunk}, "
        f"{setup.batch} × {setup.context} bytes per step, r = {setup.r}"
    )
    for width in (int(w) for w in args.widths.split(",")):
        base = make_model("gpt2", width, seed=0, head_dim=16, context=setup.context)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            best = {"batched": np.inf, "one": np.inf}
            frames: dict[str, pd.DataFrame] = {}
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                frames["batched"] = pd.concat(
                    [finetune_rates(base, setup, c, seed=0, corpus=prose) for c in chunks]
                )
                best["batched"] = min(best["batched"], time.perf_counter() - t0)
                t0 = time.perf_counter()
                frames["one"] = pd.concat(
                    [finetune_one(base, setup, c, seed=0, corpus=prose) for c in configs]
                )
                best["one"] = min(best["one"], time.perf_counter() - t0)
            key = ["eta_a", "eta_b", "step"]
            a = frames["batched"].sort_values(key)["val_loss"].to_numpy()
            b = frames["one"].sort_values(key)["val_loss"].to_numpy()
            ok = np.isfinite(a) & np.isfinite(b)
            diff = float(np.max(np.abs(a[ok] - b[ok]) / np.abs(b[ok])))
            rb, ro = work / best["batched"], work / best["one"]
            print(
                f"width {width:>5}, {threads} thread{'s' if threads > 1 else ' '}: batched "
                f"{rb:8.1f}  one at a time {ro:8.1f} configuration·steps/s  → {rb / ro:5.2f}×  "
                f"(largest relative difference of the validation losses {diff:.1e})"
            )


if __name__ == "__main__":
    main()
