"""Batched optimizer update rules for the toy simulator, one per optimizer name.

Each rule updates a parameter tensor in place given its gradient, with a learning rate that is a
tensor broadcast against the parameter (one rate per configuration of the batch).

- GD is ``torch.optim.SGD``'s update operation for operation, ``p ← p − η·g``.
- sign-GD is ``p ← p − η·sign(g)`` with ``sign(0) = 0``.
- Adam and AdamW: see below.

Adam, three times
-----------------
The simulator runs Adam/AdamW through three implementations, one per path of
:mod:`loraplus_lab.sims.toy.engine`, and they are one update rule, bound bit for bit by tests:

1. :func:`apply_update` (path 3, several samples; ``B`` on every path) calls torch's own fused
   CPU kernel (``torch._fused_adam_`` / ``torch._fused_adamw_``, what
   ``torch.optim.Adam(fused=True)`` and ``AdamW(fused=True)`` call): one pass over parameter,
   gradient and both moments instead of the eight of the single-tensor path, same bias
   correction. The batch entries are grouped by learning rate (the kernel takes one rate per
   call), and runs of a group share one tensor only where that leaves every element's arithmetic
   unchanged (see :func:`_calls`).
2. :func:`loraplus_lab.sims.toy.kernels.adam_outer_step` (path 2, one sample, through
   :func:`apply_outer_update`) is the same arithmetic for a gradient that is an outer product
   ``g·xᵀ``, formed element by element inside the update (numba), with the same fused
   multiply-adds and the same scalar tail for the elements past the last whole vector chunk.
3. :func:`loraplus_lab.sims.toy.kernels.toy_trajectories` (path 1, the paper's toy) repeats 2
   for every step of a configuration while its state stays in cache.

The tests that bind them:

- ``tests/test_toy.py::test_adam_steps_equal_torch_optim_bit_for_bit`` — 1 equals
  ``torch.optim.Adam/AdamW(fused=True)`` on each configuration alone, bit for bit (and the
  default single-tensor path to within a few roundings), ``tests/test_toy.py::
  test_adam_step_buffer_is_the_exact_increment`` — the step it returns is the exact increment;
- ``tests/test_kernels.py::test_kernel_equals_torch_fused_adam_bit_for_bit`` — 2 equals torch's
  fused Adam/AdamW bit for bit on entries of a whole number of vector chunks (every power-of-two
  width), and ``test_kernel_scalar_tail_within_a_few_ulps`` bounds the scalar tail;
- ``tests/test_kernels.py::test_whole_runs_equal_the_step_by_step_path`` — 3 gives the
  step-by-step path's DataFrame bit for bit (diverging configurations included);
- ``tests/test_toy.py::test_trajectory_matches_autograd_and_torch_optim`` — whole trajectories
  against autograd and ``torch.optim`` on the same problem (to 1e-11, relative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraplus_lab.sims.checks import InputError, choice, nonnegative
from loraplus_lab.sims.toy import kernels
from loraplus_lab.theory.optimizers import OPTIMIZERS

#: The optimizers :func:`apply_outer_update` runs in the compiled kernel.
KERNEL_OPTIMIZERS = ("adam", "adamw")
#: Below this many elements per tensor the fused kernel is faster on one thread (its split
#: across threads costs a few µs per tensor, more than the work itself).
_SMALL = 2048


def check_optimizer(name: str) -> str:
    """Validate an optimizer name (one of :data:`OPTIMIZERS`)."""
    return choice("optimizer", name, OPTIMIZERS)


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
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}") from None
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise InputError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (b1, b2)
        self.eps = nonnegative("eps", self.eps)
        self.weight_decay = nonnegative("weight_decay", self.weight_decay)


@dataclass
class _Moments:
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    update: torch.Tensor | None = None  # work buffer for the step, made when first needed
    plan: tuple | None = None  # (key, calls, quick key, rates): the fused-kernel calls, cached


@dataclass
class OptimizerState:
    """Per-parameter state (Adam moments) and the shared step counter."""

    step: int = 0
    moments: dict[str, _Moments] = field(default_factory=dict)

    def set_moments(self, key: str, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> None:
        """Use the given (zeroed) tensors as the Adam moments of ``key``."""
        self.moments[key] = _Moments(exp_avg, exp_avg_sq)

    def moment_tensors(self, key: str) -> tuple[torch.Tensor, ...]:
        """The moment tensors of ``key`` (none before its first Adam update)."""
        mom = self.moments.get(key)
        return () if mom is None else (mom.exp_avg, mom.exp_avg_sq)


def apply_update(
    cfg: OptimizerConfig,
    state: OptimizerState,
    key: str,
    param: torch.Tensor,
    grad: torch.Tensor,
    lr: torch.Tensor,
    *,
    step_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One in-place update of ``param`` with its gradient ``grad``; returns the step taken.

    ``lr`` broadcasts against ``param`` (one rate per configuration of the batch).
    ``state.step`` must already count the current step (1 for the first update). The returned
    tensor is the step taken: ``−lr·g`` for GD, the exact Adam increment before the final rounding
    of ``p + step`` without weight decay, ``p_new − p_old`` with it; for Adam and AdamW it lives
    in a work buffer that the next call overwrites, or in ``step_out`` (of ``param``'s shape)
    where given.
    """
    name = cfg.name
    wd = cfg.weight_decay
    if name in ("gd", "signgd"):
        if wd:
            grad = grad.add(param, alpha=wd)
        step = torch.sign(grad) if name == "signgd" else grad
        delta = torch.mul(step, -lr, out=step_out) if step_out is not None else step * (-lr)
        param.add_(delta)
        return delta
    mom = state.moments.get(key)
    if mom is None:
        mom = _Moments(torch.zeros_like(param), torch.zeros_like(param))
        state.moments[key] = mom
    if not grad.is_contiguous() or grad.shape != param.shape:
        grad = grad.expand_as(param).contiguous()
    # Adam without weight decay: the step does not depend on the parameter, so the kernel runs
    # on a zeroed buffer that then holds the step exactly, and p + step rounds as the kernel
    # would (checked bit for bit in the tests). Otherwise the kernel updates p itself and the
    # step is the difference.
    direct = bool(wd)
    if step_out is None and mom.update is None:
        mom.update = torch.empty_like(param)
    buf = mom.update if step_out is None else step_out
    target = param if direct else buf
    if direct:
        buf.copy_(param)
    else:
        buf.zero_()
    fused = torch._fused_adamw_ if name == "adamw" else torch._fused_adam_
    step = torch.tensor(float(state.step), dtype=torch.float32)
    beta1, beta2 = cfg.betas
    threads = torch.get_num_threads()
    for rate, small, ps, gs, ms, vs in _calls(mom, target, grad, lr):
        # The kernel splits every tensor across all threads however small; small tensors go
        # faster on one. The split falls on whole vector chunks, so the thread count does not
        # change any element's arithmetic (the parity tests run with the default count).
        one = threads > 1 and small
        if one:
            torch.set_num_threads(1)
        try:
            fused(
                ps,
                gs,
                ms,
                vs,
                [],
                [step] * len(ps),
                lr=rate,
                beta1=beta1,
                beta2=beta2,
                weight_decay=wd,
                eps=cfg.eps,
                amsgrad=False,
                maximize=False,
            )
        finally:
            if one:
                torch.set_num_threads(threads)
    if direct:
        return torch.sub(param, buf, out=buf)
    param.add_(buf)
    return buf


def apply_outer_update(
    cfg: OptimizerConfig,
    state: OptimizerState,
    key: str,
    param: torch.Tensor,
    coef: torch.Tensor,
    x: torch.Tensor,
    lr: torch.Tensor,
    *,
    step_out: torch.Tensor,
    features_out: torch.Tensor | None = None,
    gram_out: torch.Tensor | None = None,
) -> None:
    """:func:`apply_update` for a gradient that is an outer product, as ``∂L/∂A`` is for a single
    training sample: ``grad[s, c, i] = coef[s, c, i]·x[s]``.

    Shapes: ``param`` and ``step_out`` ``(S, C, r, n)`` contiguous, ``coef`` ``(S, C, r)``,
    ``x`` ``(S, n)``, ``lr`` broadcastable to ``(S, C, 1, 1)``. Adam and AdamW run the compiled
    kernel of :mod:`loraplus_lab.sims.toy.kernels` (the gradient is never stored; the arithmetic of
    torch's fused kernel); GD and sign-GD form the gradient and call :func:`apply_update`. The step
    taken goes to ``step_out``. For the optimizers of :data:`KERNEL_OPTIMIZERS` the kernel also
    writes the new features ``A·x`` to ``features_out`` ``(S, C, r)`` and, for ``r = 1``, the Gram
    matrix of ``[A; ΔA]`` to ``gram_out`` ``(S, C, 3)`` (see
    :func:`loraplus_lab.sims.toy.kernels.adam_outer_step`).
    """
    S, C, r, n = param.shape
    if cfg.name not in KERNEL_OPTIMIZERS:
        grad = torch.mul(coef.unsqueeze(-1), x.reshape(S, 1, 1, n))
        apply_update(cfg, state, key, param, grad, lr, step_out=step_out)
        return
    mom = state.moments.get(key)
    if mom is None:
        mom = _Moments(torch.zeros_like(param), torch.zeros_like(param))
        state.moments[key] = mom
    E = S * C
    rates = torch.as_tensor(lr, dtype=torch.float64).expand(S, C, 1, 1).reshape(E)
    kernels.adam_outer_step(
        x,
        coef.reshape(E, r),
        param.view(E, r, n),
        mom.exp_avg.view(E, r, n),
        mom.exp_avg_sq.view(E, r, n),
        step_out.view(E, r, n),
        rates,
        step=state.step,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        decoupled=cfg.name == "adamw",
        features_out=None if features_out is None else features_out.view(E, r),
        gram_out=None if gram_out is None else gram_out.view(E, 3),
    )


def _calls(mom: _Moments, target: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor) -> list:
    """The fused-kernel calls of one update: per learning rate, whether all its tensors are small
    (below :data:`_SMALL` elements) and the lists of tensors (views of the updated tensor, the
    gradient and both moments) of the batch entries with that rate.

    The batch dimensions are the leading ones up to the last where ``lr`` is not 1 (``lr`` must
    be 1 along every later dimension; each entry must be contiguous). The kernel walks a tensor
    in vector-width chunks and finishes with a scalar tail whose rounding may differ (the
    compiler may contract it into fused multiply-adds), so consecutive entries of one rate that
    follow each other in memory are merged into one tensor only when each entry is a whole
    number of chunks (a multiple of 64 elements covers every vector width and the kernel's
    cache-line work units): then every element meets the same arithmetic as in a tensor of its
    own, as in torch.optim with one configuration. The views are cached while the tensors and
    rates stay the same (every step of a simulation).
    """
    tensors = (target, grad, mom.exp_avg, mom.exp_avg_sq)
    # fast path: the same rate tensor, unchanged, and the same tensors as at the last call
    quick = (
        id(lr),
        getattr(lr, "_version", None),
        *((t.data_ptr(), t.shape, t.stride()) for t in tensors),
    )
    if mom.plan is not None and mom.plan[2] == quick and mom.plan[3] is lr:
        return mom.plan[1]
    rates = lr
    lr = torch.as_tensor(lr, dtype=torch.float64)
    if lr.dim() > target.dim():
        raise InputError(f"learning rates of shape {tuple(lr.shape)} for a {target.dim()}-d tensor")
    lr = lr.reshape((1,) * (target.dim() - lr.dim()) + tuple(lr.shape))
    k = max((i + 1 for i, d in enumerate(lr.shape) if d != 1), default=0)
    # An entry must be contiguous; where the tensors are strided views (A inside the simulator's
    # [A; ΔA] buffer) further leading dimensions count as batch dimensions, of equal rates.
    while k < target.dim() and not all(t[(0,) * k].is_contiguous() for t in tensors):
        k += 1
    values = tuple(lr.expand(*target.shape[:k], *lr.shape[k:]).reshape(-1).tolist())
    cache_key = (values, *((t.data_ptr(), t.shape, t.stride()) for t in tensors))
    if mom.plan is not None and mom.plan[0] == cache_key:
        mom.plan = (cache_key, mom.plan[1], quick, rates)
        return mom.plan[1]
    entries = []
    for t in tensors:
        es = [t]
        for _ in range(k):
            es = [e for x in es for e in x.unbind(0)]
        entries.append(es)
    per_entry = entries[0][0].numel()
    chunks = per_entry % 64 == 0
    if chunks:
        ptrs = [[e.data_ptr() for e in es] for es in entries]
        nbytes = [per_entry * t.element_size() for t in tensors]

    def adjacent(i: int) -> bool:  # entry i follows entry i − 1 in memory, in every tensor
        return all(p[i] == p[i - 1] + b for p, b in zip(ptrs, nbytes, strict=True))

    by_rate: dict[float, list[list[int]]] = {}
    for i, v in enumerate(values):
        runs = by_rate.setdefault(v, [])
        if chunks and runs and runs[-1][-1] == i - 1 and adjacent(i):
            runs[-1].append(i)
        else:
            runs.append([i])

    def view(t: torch.Tensor, es: list[torch.Tensor], run: list[int]) -> torch.Tensor:
        if len(run) == 1:
            return es[run[0]]
        first = es[run[0]]
        return t.as_strided((len(run) * per_entry,), (1,), first.storage_offset())

    calls = [
        (
            rate,
            max(len(run) for run in runs) * per_entry < _SMALL,  # every tensor of the call small
            *([view(t, es, run) for run in runs] for t, es in zip(tensors, entries, strict=True)),
        )
        for rate, runs in by_rate.items()
    ]
    mom.plan = (cache_key, calls, quick, rates)
    return calls


def reset_entries(state: OptimizerState, mask: torch.Tensor) -> None:
    """Zero the moments of the batch entries selected by ``mask`` (the leading dimensions)."""
    for mom in state.moments.values():
        m = mask.reshape(mask.shape + (1,) * (mom.exp_avg.dim() - mask.dim()))
        mom.exp_avg.masked_fill_(m, 0.0)
        mom.exp_avg_sq.masked_fill_(m, 0.0)
