"""Overhead of the LoRA coordinate check's hooks, measured side by side.

The same training steps (forward, backward, Adam step on the adapters) run on two identical
copies of a ladder model: one plain, one with
:class:`loraplus_lab.sims.realmodels.coordcheck.LoraCoordProbe` recording every step (statistics of
every LoRA layer, converted to rows at the end). Blocks of steps alternate between the two so that
load on the machine hits both alike; the ratio of median block times is the overhead (target ≤
1.15).

    python benchmarks/bench_coordcheck.py [--quick] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch

from loraplus_lab.sims.realmodels.coordcheck import LoraCoordProbe, make_optimizer, resolve_params
from loraplus_lab.sims.realmodels.ladders import lm_batch, lora_model, make_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(model, opt, batch, steps: int, probe: LoraCoordProbe | None, t0: int) -> None:
    """``steps`` training steps, recorded by ``probe`` when given (rows collected at the end)."""
    for t in range(steps):
        if probe is None:
            loss = model(**batch).loss
        else:
            with probe.recording(t0 + t):
                loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if probe is not None:
        probe.rows()


def measure(
    arch: str,
    width: int,
    *,
    batch: int,
    seq: int,
    steps: int = 5,
    reps: int = 7,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    max_coords: int | None = None,
) -> dict[str, float]:
    """Median seconds per training step with and without the probe, and their ratio."""
    dev = torch.device(device)
    base = make_model(arch, width, seed=0, dtype=dtype, device=dev, context=max(64, seq))
    param = resolve_params(["loraplus"], lr=1e-3)[0]
    models, opts = [], []
    for _ in range(2):
        m = lora_model(copy.deepcopy(base), arch, seed=0).to(dev)
        models.append(m)
        opts.append(make_optimizer(m, param, width))
    data = {k: v.to(dev) for k, v in lm_batch(arch, batch, seq, seed=0).items()}
    probe = LoraCoordProbe(models[1], max_coords=max_coords)
    times: list[list[float]] = [[], []]
    for r in range(reps + 1):  # first round is warm-up
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            _sync(dev)
            t = time.perf_counter()
            _block(models[i], opts[i], data, steps, probe if i == 1 else None, r * steps)
            _sync(dev)
            if r:
                times[i].append((time.perf_counter() - t) / steps)
    probe.remove()
    paired = [h / p for p, h in zip(times[0], times[1], strict=True)]
    return {
        "plain_s": statistics.median(times[0]),
        "hooked_s": statistics.median(times[1]),
        "ratio": statistics.median(paired),  # adjacent blocks: drifts in load cancel
        "ratio_min": min(times[1]) / min(times[0]),  # best case of each: the intrinsic cost
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer configurations and repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", FutureWarning)
    configs = [
        # the coordinate check's own setting: fixed batch of 2 × 16 tokens
        ("gpt2", 128, 2, 16),
        ("gpt2", 512, 2, 16),
        ("llama", 512, 2, 16),
        # a larger batch (the hooks' arithmetic grows with the tokens like the step does)
        ("gpt2", 512, 8, 64),
        ("gpt2", 1024, 4, 64),
    ]
    if args.quick:
        configs = configs[1:2] + configs[3:4]
    reps = 4 if args.quick else 10
    print(
        f"{'arch':6} {'width':>5} {'tokens':>6} {'coords':>6} {'plain ms':>9} {'hooked ms':>9} "
        f"{'ratio':>6} {'min/min':>7}"
    )
    worst: dict[object, float] = {}
    for arch, width, batch, seq in configs:
        for coords in (256, None):  # run_coordcheck's default sample, and every coordinate
            r = measure(
                arch, width, batch=batch, seq=seq, reps=reps, device=args.device, max_coords=coords
            )
            worst[coords] = max(worst.get(coords, 0.0), r["ratio"])
            print(
                f"{arch:6} {width:5d} {batch * seq:6d} {str(coords or 'all'):>6} "
                f"{1e3 * r['plain_s']:9.2f} {1e3 * r['hooked_s']:9.2f} {r['ratio']:6.3f} "
                f"{r['ratio_min']:7.3f}"
            )
    for coords, w in worst.items():
        print(
            f"worst overhead ratio, coords={coords or 'all'} (median of paired blocks): "
            f"{w:.3f} (target ≤ 1.15)"
        )


if __name__ == "__main__":
    main()
