"""Many rate configurations as one model: each stacked adapter computes what PEFT's LoRA layer
computes, and the stacked AdamW is torch.optim.AdamW per configuration."""

from __future__ import annotations

import copy

import pytest
import torch

from loraplus_lab.sims.realmodels.ladders import lora_model, make_model
from loraplus_lab.sims.realmodels.stacked import (
    StackedAdamW,
    StackedLoRA,
    stack_peft_model,
    stacked_layers,
)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_stacked_adamw_is_torch_adamw_per_configuration(weight_decay: float) -> None:
    gen = torch.Generator().manual_seed(0)
    K, shape = 4, (3, 5)
    rates = [1e-3, 0.0, 3e-2, 0.5]
    p0 = torch.randn(K, *shape, generator=gen)
    grads = [torch.randn(K, *shape, generator=gen) for _ in range(6)]
    scales = [0.2, 0.6, 1.0, 0.8, 0.4, 0.1]  # a schedule
    P = torch.nn.Parameter(p0.clone())
    opt = StackedAdamW([(P, rates)], betas=(0.9, 0.95), weight_decay=weight_decay)
    for g, s in zip(grads, scales, strict=True):
        P.grad = g.clone()
        opt.step(s)
    for k, lr in enumerate(rates):
        q = torch.nn.Parameter(p0[k].clone())
        ref = torch.optim.AdamW(
            [q], lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, foreach=False
        )
        for g, s in zip(grads, scales, strict=True):
            ref.param_groups[0]["lr"] = lr * s
            q.grad = g[k].clone()
            ref.step()
        if lr == 0:
            assert torch.equal(P[k], p0[k])  # a zero rate freezes the slice exactly
        assert torch.equal(P.detach()[k], q.detach())  # bit for bit
    state = opt.state_dict()
    opt2 = StackedAdamW([(torch.nn.Parameter(P.detach().clone()), rates)])
    opt2.load_state_dict(state)
    assert opt2.steps == 6 and torch.equal(opt2.slots[0].exp_avg, opt.slots[0].exp_avg)


def test_stacked_adamw_rejects_bad_rates() -> None:
    P = torch.nn.Parameter(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2 rates|3 rates"):
        StackedAdamW([(P, [1e-3, 1e-3, 1e-3])])
    with pytest.raises(ValueError, match="non-negative"):
        StackedAdamW([(P, [1e-3, -1.0])])


def test_each_stacked_adapter_is_a_peft_lora_layer() -> None:
    """Block k of the stacked model's output is exactly what the PEFT model with adapter k
    computes (float64), for different adapters in each block."""
    torch.manual_seed(0)
    base = make_model("gpt2", 32, seed=1, head_dim=16, layers=1, context=8).double()
    peft = lora_model(copy.deepcopy(base), "gpt2", r=2, alpha=4, seed=5)
    K = 3
    stacked = stack_peft_model(copy.deepcopy(peft), K)
    layers = dict(stacked_layers(stacked))
    assert len(layers) == 4 and all(isinstance(m, StackedLoRA) for m in layers.values())
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for lay in layers.values():
            lay.lora_A.copy_(torch.randn(lay.lora_A.shape, generator=gen, dtype=torch.float64))
            lay.lora_B.copy_(torch.randn(lay.lora_B.shape, generator=gen, dtype=torch.float64))
    ids = torch.randint(4, 256, (2, 8), generator=gen)
    out = stacked(input_ids=ids.repeat(K, 1)).logits.view(K, 2, 8, -1)
    trainable = [n for n, p in stacked.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for k in range(K):
        ref = copy.deepcopy(peft)
        with torch.no_grad():
            for name, mod in ref.get_base_model().named_modules():
                if name in layers:
                    mod.lora_A["default"].weight.copy_(layers[name].lora_A[k])
                    mod.lora_B["default"].weight.copy_(layers[name].lora_B[k])
        torch.testing.assert_close(out[k], ref(input_ids=ids).logits, rtol=1e-12, atol=1e-12)


def test_stacking_needs_lora_layers_and_a_positive_stack() -> None:
    base = make_model("gpt2", 32, seed=1, head_dim=16, layers=1, context=8)
    with pytest.raises(ValueError, match="no LoRA layer"):
        stack_peft_model(base, 2)
    peft = lora_model(base, "gpt2", r=2, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        stack_peft_model(peft, 0)


def test_llama_shape_stacks_too() -> None:
    """Llama's nn.Linear projections (all seven targets) stack like GPT-2's Conv1D."""
    base = make_model("llama", 32, seed=1, head_dim=16, layers=1, context=8).double()
    peft = lora_model(copy.deepcopy(base), "llama", r=2, alpha=4, seed=3)
    stacked = stack_peft_model(copy.deepcopy(peft), 2)
    assert len(dict(stacked_layers(stacked))) == 7
    ids = torch.randint(4, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    out = stacked(input_ids=ids.repeat(2, 1)).logits.view(2, 2, 8, -1)
    ref = peft(input_ids=ids).logits
    torch.testing.assert_close(out[0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[1], ref, rtol=1e-12, atol=1e-12)
