"""Many LoRA rate configurations of one frozen model, trained together.

A learning-rate landscape is hundreds of short finetunes of the same frozen base ``W*`` that
differ only in ``(η_A, η_B)``. Trained one at a time, a small model spends most of each step in
per-operation overhead (Python, autograd, small matrix products). Here ``K`` configurations of one
width and one seed run as one model: every PEFT LoRA layer ``W* + s·B·A`` becomes a
:class:`StackedLoRA` holding ``K`` adapter pairs ``A ∈ R^{K×r×n_in}``, ``B ∈ R^{K×n_out×r}``; the
batch is the same ``b`` sequences repeated ``K`` times, block ``k`` going through adapter ``k``:

    y_k = W*·x_k + s·B_k (A_k x_k)        (x_k: the rows of block k)

so the frozen weights see one large matrix product instead of ``K`` small ones, and the adapters
two batched products (``torch.bmm``). Each configuration's loss is its own mean cross-entropy and
the loss that is differentiated is their sum, so configuration ``k``'s gradient is exactly the
gradient of its own loss: the ``K`` runs do not interact.

:class:`StackedAdamW` is AdamW (decoupled weight decay, ``torch.optim.AdamW``'s update rule and
order of operations) over the stacked tensors with one learning rate per configuration, so that
``η_A`` and ``η_B`` vary along the stack; a rate of 0 freezes that factor (the ``A``-frozen
baseline trains ``B`` alone). The tests check both pieces against the one-at-a-time path: PEFT's
LoRA layers with ``torch.optim.AdamW``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from loraplus_lab.sims.checks import InputError


class StackedLoRA(nn.Module):
    """``K`` LoRA adapters on one frozen layer (``nn.Linear`` or GPT-2's ``Conv1D``).

    The input's leading dimension must be ``K·b``: rows ``k·b … (k+1)·b − 1`` use adapter ``k``.

    Args:
        base: the frozen layer ``x ↦ W*·x (+ bias)``.
        A: ``(K, r, n_in)`` initial ``A`` of every configuration.
        B: ``(K, n_out, r)`` initial ``B``.
        scaling: ``s`` (``α/r`` or ``α/√r``).
    """

    def __init__(self, base: nn.Module, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:
        super().__init__()
        if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[1] != B.shape[2]:
            raise InputError(
                f"A (K, r, n_in) and B (K, n_out, r) do not match: {A.shape}, {B.shape}"
            )
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(A.detach().clone())
        self.lora_B = nn.Parameter(B.detach().clone())
        self.scaling = float(scaling)

    @property
    def stack(self) -> int:
        """``K``, the number of configurations."""
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        K = self.lora_A.shape[0]
        if x.shape[0] % K:
            raise InputError(f"batch of {x.shape[0]} rows is not a multiple of the stack {K}")
        za = torch.bmm(x.reshape(K, -1, x.shape[-1]), self.lora_A.transpose(1, 2))
        # out + s·(Z_A Bᵀ) in one pass over the output
        y = torch.baddbmm(
            out.reshape(K, -1, out.shape[-1]), za, self.lora_B.transpose(1, 2), alpha=self.scaling
        )
        return y.reshape(out.shape)


def stacked_layers(model: nn.Module) -> Iterator[tuple[str, StackedLoRA]]:
    """``(name, layer)`` of every :class:`StackedLoRA` in ``model``."""
    for name, mod in model.named_modules():
        if isinstance(mod, StackedLoRA):
            yield name, mod


def stack_peft_model(peft_model: nn.Module, stack: int, adapter: str = "default") -> nn.Module:
    """The transformers model under a PEFT LoRA model, each LoRA layer replaced (in place) by a
    :class:`StackedLoRA` whose ``stack`` adapters all start from that layer's ``A0``, ``B0`` and
    use its scaling. Everything else stays frozen. Returns the (unwrapped) transformers model."""
    from peft.tuners.lora.layer import LoraLayer

    if isinstance(stack, bool) or not isinstance(stack, int) or stack < 1:
        raise InputError(f"stack must be a positive integer, got {stack!r}")
    model = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {})
    ]
    if not targets:
        raise InputError("the model has no LoRA layer to stack")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in targets:
        A0 = layer.lora_A[adapter].weight.detach()
        B0 = layer.lora_B[adapter].weight.detach()
        new = StackedLoRA(
            layer.get_base_layer(),
            A0.unsqueeze(0).expand(stack, *A0.shape),
            B0.unsqueeze(0).expand(stack, *B0.shape),
            layer.scaling[adapter],
        )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model


@dataclass
class _Slot:
    param: torch.Tensor
    lr: torch.Tensor  # float64 (K,)
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


class StackedAdamW:
    """AdamW over stacked parameters ``(K, ...)`` with a learning rate per configuration.

    The update of configuration ``k`` is ``torch.optim.AdamW``'s (defaults ``betas=(0.9,
    0.999)``, ``eps=1e-8``, decoupled decay ``p ← p·(1 − lr·wd)``, bias corrections) with
    ``lr = rates[k]·scale``, where ``scale`` is the schedule's factor passed to :meth:`step`.
    The per-configuration factors ``1 − lr·wd`` and ``lr/(1 − β₁^t)`` are formed in double
    precision, as ``torch.optim`` does with its Python-float learning rate, and every operation
    rounds as torch's single-tensor AdamW does: each configuration's slice is bit-identical to
    ``torch.optim.AdamW(foreach=False)`` run on it alone (the tests check it).

    Args:
        groups: ``(parameter, rates)`` pairs; ``rates`` has one entry per configuration (the
            parameter's first dimension). A rate of 0 leaves that configuration's slice unchanged.
        betas, eps, weight_decay: as ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        groups: Sequence[tuple[torch.Tensor, Sequence[float] | torch.Tensor]],
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.steps = 0
        self.slots: list[_Slot] = []
        for p, rates in groups:
            lr = torch.as_tensor(rates, dtype=torch.float64).flatten()
            if lr.numel() != p.shape[0]:
                raise InputError(f"{lr.numel()} rates for a stack of {p.shape[0]}")
            if not torch.isfinite(lr).all() or (lr < 0).any():
                raise InputError("learning rates must be finite and non-negative")
            self.slots.append(
                _Slot(
                    p,
                    lr,
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                    torch.zeros_like(p, memory_format=torch.preserve_format),
                )
            )

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none``)."""
        for s in self.slots:
            s.param.grad = None

    @torch.no_grad()
    def step(self, scale: float = 1.0) -> None:
        """One AdamW step of every configuration, at ``rates·scale``."""
        self.steps += 1
        b1, b2 = self.betas
        bc1 = 1 - b1**self.steps
        bc2_sqrt = math.sqrt(1 - b2**self.steps)
        for s in self.slots:
            g = s.param.grad
            if g is None:
                continue
            view = (-1,) + (1,) * (s.param.ndim - 1)
            lr = s.lr * float(scale)
            if self.weight_decay:
                s.param.mul_((1 - lr * self.weight_decay).to(s.param.dtype).view(view))
            s.exp_avg.lerp_(g, 1 - b1)
            s.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (s.exp_avg_sq.sqrt() / bc2_sqrt).add_(self.eps)
            # torch's last operation, addcdiv with a Python-float step, slice by slice: the same
            # rounding as torch.optim.AdamW (a batched multiply would round once more)
            for k, step_size in enumerate((lr / bc1).tolist()):
                if step_size:
                    s.param[k].addcdiv_(s.exp_avg[k], denom[k], value=-step_size)

    def state_dict(self) -> dict:
        """Moments and step count (for checkpoints)."""
        return {
            "steps": self.steps,
            "exp_avg": [s.exp_avg.clone() for s in self.slots],
            "exp_avg_sq": [s.exp_avg_sq.clone() for s in self.slots],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.steps = int(state["steps"])
        for s, m, v in zip(self.slots, state["exp_avg"], state["exp_avg_sq"], strict=True):
            s.exp_avg.copy_(m)
            s.exp_avg_sq.copy_(v)
