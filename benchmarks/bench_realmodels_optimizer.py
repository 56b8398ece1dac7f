"""LoRA+ optimizer step time against vanilla LoRA and PEFT's LoRA+, side by side.

One tiny-but-not-trivial GPT-2 LoRA model (CPU, built from a config), three copies with the same
fixed gradients: AdamW built by ``create_loraplus_optimizer`` (theory policy: five groups), one
AdamW over all trainable parameters (vanilla LoRA: one group) and PEFT's
``create_loraplus_optimizer`` (four groups). Steps are interleaved round-robin so that machine
noise hits all three alike; prints the median step time of each and the ratios to vanilla
(target ≤ 1.02: grouping costs nothing per step). Runs with AdamW's default implementation
(for-loop on CPU) and with ``foreach=True``.

    python benchmarks/bench_realmodels_optimizer.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer
from transformers import GPT2Config, GPT2ForSequenceClassification

from loraplus_lab.sims.realmodels.optimizer import (
    create_loraplus_optimizer,
    format_audit,
    optimizer_audit,
)

LR, RATIO, WD = 1e-3, 16.0, 0.01


def make_model(n_embd: int, n_layer: int, rank: int) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=8, vocab_size=2048, n_positions=128,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, num_labels=4,
    )  # fmt: skip
    lora = LoraConfig(
        r=rank, target_modules=["c_attn", "c_proj", "c_fc", "wte"], fan_in_fan_out=True,
        bias="lora_only", modules_to_save=["score", "ln_f"],
    )  # fmt: skip
    model = get_peft_model(GPT2ForSequenceClassification(cfg), lora)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():  # fixed gradients, the same on every copy
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    return model


def build(which: str, model: torch.nn.Module, foreach: bool | None) -> torch.optim.Optimizer:
    if which == "loraplus":
        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD, foreach=foreach
        )
    if which == "vanilla":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=LR, weight_decay=WD, foreach=foreach)
    return peft_create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, loraplus_weight_decay=WD,
        foreach=foreach,
    )  # fmt: skip


def bench(args: argparse.Namespace, foreach: bool | None) -> dict[str, float]:
    names = ("loraplus", "vanilla", "peft")
    opts = {}
    for name in names:
        model = make_model(args.n_embd, args.n_layer, args.rank)
        opts[name] = build(name, model, foreach)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.warmup + args.steps):
        order = names[i % 3 :] + names[: i % 3]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            opts[name].step()
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    args.steps, args.warmup = (100, 10) if args.quick else (600, 30)
    torch.set_num_threads(args.threads)

    model = make_model(args.n_embd, args.n_layer, args.rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(
        f"GPT-2 n_embd={args.n_embd}, n_layer={args.n_layer}, LoRA r={args.rank} on c_attn, "
        f"c_proj, c_fc, wte; {len(trainable)} trainable tensors, "
        f"{sum(p.numel() for p in trainable):,} scalars; AdamW, torch {torch.__version__}, "
        f"{args.threads} thread(s), median of {args.steps} steps each, interleaved"
    )
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD)
    print("\nLoRA+ (theory policy) groups:\n" + format_audit(optimizer_audit(opt, model)) + "\n")

    for label, foreach in (("default (for-loop)", None), ("foreach=True", True)):
        med = bench(args, foreach)
        base = med["vanilla"]
        print(f"AdamW {label}:")
        print(f"  vanilla LoRA (1 group)        : {base * 1e3:8.3f} ms/step")
        print(
            f"  LoRA+ theory (this package)   : {med['loraplus'] * 1e3:8.3f} ms/step   "
            f"ratio {med['loraplus'] / base:5.3f}  (target ≤ 1.02)"
        )
        print(
            f"  PEFT create_loraplus_optimizer: {med['peft'] * 1e3:8.3f} ms/step   "
            f"ratio {med['peft'] / base:5.3f}"
        )


if __name__ == "__main__":
    main()
