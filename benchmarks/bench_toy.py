"""Batched toy simulator against a straightforward per-configuration loop, side by side.

Both run the same grid (widths × rate configurations × seeds × steps, Adam, Init[A]) and record
the same feature-update statistics. The loop is the script a researcher would write first:
autograd, one ``torch.optim.Adam`` per factor, one configuration at a time. The batched side is
``simulate_batch``, which for this problem (one sample, rank 1, one output) runs each
configuration's whole run in the compiled kernel. Also times the exact reduced dynamics
(``loraplus_lab.theory.reduced``). Prints configuration·steps per second and the ratios.

    python benchmarks/bench_toy.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from loraplus_lab.sims.params import Parametrization
from loraplus_lab.sims.toy import ToyProblem, simulate_batch
from loraplus_lab.theory import reduced


def loop_baseline(widths, params, seeds, steps) -> list[dict]:
    """One configuration at a time, with autograd and torch.optim (the reference style),
    recording the same statistics as the batched simulator."""
    rows = []
    for n in widths:
        for seed in seeds:
            prob = ToyProblem.paper(n, seed, init="A")
            X, y, W = (torch.tensor(a) for a in (prob.X, prob.y, prob.W_star))
            for p in params:
                A = torch.nn.Parameter(torch.tensor(prob.A0))
                B = torch.nn.Parameter(torch.tensor(prob.B0))
                opt_a = torch.optim.Adam([A], lr=p.rate_a(n))
                opt_b = torch.optim.Adam([B], lr=p.rate_b(n))
                s = prob.scale
                W0 = s * torch.tensor(prob.B0 @ prob.A0)
                W_prev = W0
                za0 = (X @ A.T).detach()
                for t in range(1, steps + 1):
                    b0 = B.detach().clone()
                    loss = 0.5 * ((X @ W.T + s * (X @ A.T) @ B.T - y) ** 2).sum() / X.shape[0]
                    opt_a.zero_grad()
                    opt_b.zero_grad()
                    loss.backward()
                    opt_a.step()
                    opt_b.step()
                    with torch.no_grad():
                        za1 = X @ A.T
                        zb1 = s * za1 @ B.T
                        d1 = s * (za1 - za0) @ b0.T
                        d2 = s * za0 @ (B - b0).T
                        d3 = s * (za1 - za0) @ (B - b0).T
                        W_t = s * B @ A
                        sv = torch.linalg.svdvals(W_t - W0)
                        rows.append(
                            {
                                "width": n,
                                "seed": seed,
                                "param": p.name,
                                "step": t,
                                "loss": (
                                    0.5 * ((X @ W.T + zb1 - y) ** 2).sum() / X.shape[0]
                                ).item(),
                                "delta1": d1.abs().mean().item(),
                                "delta2": d2.abs().mean().item(),
                                "delta3": d3.abs().mean().item(),
                                "dzb": (d1 + d2 + d3).abs().mean().item(),
                                "za_mean_abs": za1.abs().mean().item(),
                                "za_rms": za1.square().mean().sqrt().item(),
                                "zb_mean_abs": zb1.abs().mean().item(),
                                "norm_a": A.norm().item(),
                                "norm_b": B.norm().item(),
                                "dw_fro": sv.norm().item(),
                                "dw_spec": sv[0].item(),
                                "dw_step_fro": (W_t - W_prev).norm().item(),
                            }
                        )
                        W_prev, za0 = W_t, za1
    return rows


def grid(k: int) -> list[Parametrization]:
    """A k × k grid of base rates (log2-spaced), LoRA+ exponents."""
    etas = 2.0 ** np.linspace(-12, -4, k)
    return [
        Parametrization(f"a{i}b{j}", eta_a=ea, eta_b=eb, c_a=-1, c_b=0)
        for i, ea in enumerate(etas)
        for j, eb in enumerate(etas)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid, one repeat")
    ap.add_argument(
        "--widths", type=lambda s: [int(w) for w in s.split(",")], help="e.g. 4096,8192,16384"
    )
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per width")
    args = ap.parse_args()
    torch.manual_seed(0)
    widths = args.widths or ([2**12, 2**13, 2**14] if not args.quick else [2**12])
    params = grid(6 if not args.quick else 4)
    seeds = [0, 1, 2, 3]
    steps = 20
    repeats = 1 if args.quick else max(1, args.repeats)
    print(
        f"grid: widths {widths}, {len(params)} rate configurations, {len(seeds)} seeds, "
        f"{steps} steps, Adam, Init[A], float64, torch threads {torch.get_num_threads()}; "
        f"best of {repeats} interleaved runs per width"
    )

    simulate_batch([widths[0]], params[:2], seeds[:1], steps=2, progress=False)  # warm-ups
    loop_baseline([widths[0]], params[:2], seeds[:1], 2)
    n_cs = len(params) * len(seeds) * steps
    ratios = []
    for w in widths:
        t_batch, t_loop = [], []
        for _ in range(repeats):  # interleaved: both sides see the same machine state
            t0 = time.perf_counter()
            simulate_batch([w], params, seeds, steps=steps, progress=False)
            t_batch.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loop_baseline([w], params, seeds, steps)
            t_loop.append(time.perf_counter() - t0)
        ratio = min(t_loop) / min(t_batch)
        ratios.append(ratio)
        per_run = sorted(tl / tb for tb, tl in zip(t_batch, t_loop, strict=True))
        print(
            f"width 2^{w.bit_length() - 1}: batched {n_cs / min(t_batch):9,.0f}, loop "
            f"{n_cs / min(t_loop):7,.0f} configuration·steps/s; ratio {ratio:5.1f}× "
            f"(per run {', '.join(f'{r:.1f}' for r in per_run)})"
        )
    print(
        f"ratio batched/loop at widths {', '.join(f'2^{w.bit_length() - 1}' for w in widths)}: "
        f"min {min(ratios):.1f}×   (target ≥ 30× at widths ≥ 2^12)"
    )

    K, steps_r = 10_000, 200
    rng = np.random.default_rng(0)
    toy = reduced.ReducedToy(
        z0=rng.standard_normal(K),
        b0=np.zeros(K),
        e=rng.uniform(0.5, 1.5, K),
        scale=1.0,
        coords=reduced.CoordStats.rademacher(2**30),
    )
    eta_a = 2.0 ** rng.uniform(-40, -30, K)
    eta_b = 2.0 ** rng.uniform(-10, -4, K)
    print(f"\nreduced dynamics, K = {K:,} configurations at width 2^30, {steps_r} steps:")
    for opt in ("gd", "signgd", "adam", "adamw"):
        t0 = time.perf_counter()
        reduced.run(toy, eta_a=eta_a, eta_b=eta_b, steps=steps_r, optimizer=opt)
        dt = time.perf_counter() - t0
        print(f"  {opt:<7}: {K * steps_r / dt:14,.0f} configuration·steps/s (target ≥ 1e6)")


if __name__ == "__main__":
    main()
