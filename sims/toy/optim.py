"""Batched optimizer update rules for the toy simulator, one per optimizer name.

Each rule updates a parameter tensor in place given its gradient, with a learning rate that is a
tensor broadcast against the parameter (one rate per configuration of the batch). GD, Adam and
AdamW follow ``torch.optim.SGD``/``Adam``/``AdamW``'s single-tensor CPU path operation for
operation (same bias correction, same order of floating-point operations), so a configuration
of the batch is bit-identical to torch.optim on the same tensors. sign-GD is
``p ← p − η·sign(g)`` with ``sign(0) = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

OPTIMIZERS = ("gd", "signgd", "adam", "adamw")


def check_optimizer(name: str) -> str:
    """Validate an optimizer name."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return name


@dataclass
class OptimizerConfig:
    """Hyper-parameters shared by every configuration of a batch."""

    name: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_optimizer(self.name)
        try:
            b1, b2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (b1, b2)
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"eps must be a non-negative number, got {self.eps!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")
        self.eps = float(self.eps)
        self.weight_decay = float(self.weight_decay)


@dataclass
class _Moments:
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    denom: torch.Tensor  # work buffers, reused every step
    update: torch.Tensor


@dataclass
class OptimizerState:
    """Per-parameter state (Adam moments) and the shared step counter."""

    step: int = 0
    moments: dict[str, _Moments] = field(default_factory=dict)


def apply_update(
    cfg: OptimizerConfig,
    state: OptimizerState,
    key: str,
    param: torch.Tensor,
    grad: torch.Tensor,
    lr: torch.Tensor,
) -> torch.Tensor:
    """One in-place update of ``param`` with its gradient ``grad``; returns the step taken.

    ``lr`` broadcasts against ``param`` (one rate per configuration of the batch).
    ``state.step`` must already count the current step (1 for the first update). The returned
    tensor is the increment in exact arithmetic (``param_new − param_old`` before the final
    rounding), e.g. ``−lr·g`` for GD; it lives in a work buffer that the next call overwrites.
    """
    name = cfg.name
    wd = cfg.weight_decay
    if name in ("gd", "signgd"):
        if wd:
            grad = grad.add(param, alpha=wd)
        step = torch.sign(grad) if name == "signgd" else grad
        delta = step * (-lr)
        param.add_(delta)
        return delta
    beta1, beta2 = cfg.betas
    mom = state.moments.get(key)
    if mom is None:
        mom = _Moments(*(torch.zeros_like(param) for _ in range(4)))
        state.moments[key] = mom
    decay = None
    if name == "adamw":
        if wd:
            decay = param * (-lr * wd)
        param.mul_(1 - lr * wd)
    elif wd:
        grad = grad.add(param, alpha=wd)
    mom.exp_avg.lerp_(grad, 1 - beta1)
    mom.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    t = state.step
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    step_size = lr / bias_correction1
    # denom = sqrt(v)/sqrt(bc2) + eps as torch forms it (quotient rounded, then the sum), fused
    denom = torch.sqrt(mom.exp_avg_sq, out=mom.denom)
    torch.addcdiv(
        torch.tensor(cfg.eps, dtype=param.dtype),
        denom,
        torch.tensor(bias_correction2**0.5, dtype=param.dtype),
        out=denom,
    )
    # torch's addcdiv computes p + (value·m)/denom: the product, the quotient, then the sum,
    # each rounded once. Forming them one after the other rounds identically and keeps the step.
    update = torch.mul(mom.exp_avg, -step_size, out=mom.update).div_(denom)
    param.add_(update)
    if decay is not None:
        update.add_(decay)
    return update


def reset_entries(state: OptimizerState, mask: torch.Tensor) -> None:
    """Zero the moments of the batch entries selected by ``mask`` (the leading dimensions)."""
    for mom in state.moments.values():
        m = mask.reshape(mask.shape + (1,) * (mom.exp_avg.dim() - mask.dim()))
        mom.exp_avg.masked_fill_(m, 0.0)
        mom.exp_avg_sq.masked_fill_(m, 0.0)
