"""A two-layer ReLU network, pretrained on one synthetic task and LoRA-finetuned on a shifted one.

The LoRA+ paper's synthetic experiment in spirit, batched over rate configurations × seeds.

Model at width ``n`` (input dimension ``d`` fixed, scalar output)::

    h1 = φ(W_in x)          W_in ∈ R^{n×d}
    h2 = φ(W_h h1 + Z_B)    W_h ∈ R^{n×n},  Z_B = s·B·A·h1,  A ∈ R^{r×n},  B ∈ R^{n×r}
    f  = w_outᵀ h2 / n

with ``φ = ReLU``; ``Z_A = A h1`` and ``Z_B = s·B Z_A`` are the adapted layer's LoRA features
(``docs/lora.md`` with ``W* = W_h`` and input ``h1``). Init: ``W_in ~ N(0, 2/d)``,
``W_h ~ N(0, 2/n)``, ``w_out ~ N(0, 1)`` entrywise, so the coordinates of ``h1`` and ``h2`` are
Θ(1) at every width.

**Readout.** ``f = w_outᵀh2/n`` is the μP readout: at initialisation ``f = O(n^{-1/2})`` (the
``n`` terms of ``w_outᵀh2`` are uncorrelated), and the output moves by Θ(1) only when the
features ``h2`` move by Θ(1) per coordinate *in a direction correlated with* ``w_out``. Lazy
updates ``ΔZ_B = o(1)`` leave the output unchanged as ``n → ∞``, so finetuning can lower the
loss by Θ(1) only through feature learning — the regime LoRA+'s efficiency argument is about
(with a ``1/√n`` readout, ``O(n^{-1/2})`` feature updates would already move the output).
Consequence: ``∂L/∂h2 = Θ(1/n)`` per coordinate, so ``∂L/∂B`` is Θ(1/n) per entry and plain
GD would need ``η_B = Θ(n)``; Adam normalises gradients entry by entry, and the theory's
``η_A = Θ(n⁻¹)``, ``η_B = Θ(1)`` apply as they are.

**Tasks.** Inputs ``x ~ N(0, I_d)`` (width-independent, so every width sees the same data).
A teacher of the same form at a small width ``k`` (default 32) with a standard ``1/√k`` readout,
``g(x) = t_outᵀ φ(T_h φ(T_in x)) / √k`` (``T_in ~ N(0, 2/d)``, ``T_h ~ N(0, 2/k)``,
``t_out ~ N(0, 1)``), gives the pretraining targets ``y1 = g(x)``; the finetuning task perturbs
the teacher's hidden layer by Θ(1) relative size, ``T_h' = T_h + shift·P`` with ``P`` an
independent draw of ``T_h``'s distribution, ``y2 = g'(x) + noise·ξ`` (noise on the training
targets only; the held-out targets are noise-free, so ``test_loss`` measures the distance to the
shifted teacher). Every draw is seeded by ``(seed, stream, row)``; the rows of ``W_in``, ``W_h``,
``w_out``, ``A0`` and ``B0`` are prefix-stable in ``n``, so the width-``n`` initialisation is the
leading block of the width-``2n`` one (up to the ``1/√n`` scales).

**Pretraining** (per width × seed, shared by every rate configuration): Adam on ``W_in``, ``W_h``
and ``w_out``, full batch of ``N_pre`` samples, ``P`` steps, ½ mean squared error, with μP
per-layer rates ``η_in = η/d``, ``η_h = η/n``, ``η_out = η`` (each layer's update moves its
output by ``O(η)`` per step at every width).

**Finetuning**: ``A`` and ``B`` only, loss ``L = (1/N) Σ_i ½(f(x_i) − y2_i)²``, Init[A]
(``B0 = 0``, ``A0 ~ N(0, 1/n)``) or Init[B] (``A0 = 0``, ``B0 ~ N(0, σ_B²)``), any optimizer of
:mod:`loraplus_lab.sims.toy.optim` (whose :func:`~loraplus_lab.sims.toy.optim.apply_update` is the
update rule). ``h1`` and ``W_h h1`` do not change, so they are computed once per width × seed and a
step costs ``O(N·r·n)`` per configuration. Gradients by hand, with ``U = f − y``,
``G = ∂L/∂(W_h h1 + Z_B) = (U/N) ⊗ (w_out/n) ∘ 1[h2 > 0]``::

    ∂L/∂B = s·Gᵀ Z_A        ∂L/∂A = s·(G B)ᵀ h1

Since ``h1`` is frozen, ``ΔZ_B = δ¹ + δ² + δ³`` holds exactly (``docs/lora.md``, same input ``h1``).

**Determinism.** Every contraction is an elementwise product followed by a sum over one axis,
never a BLAS call (whose kernel, blocking and threading depend on the batch shape: a ``bmm``
over ``C`` configurations differs from ``C`` single products in the last bits), so a
configuration × seed gives bit-identical numbers alone, inside any batch and in any chunking.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from loraplus_lab.sims.checks import (
    InputError,
    nonnegative,
    nonnegative_int,
    positive,
    positive_int,
)
from loraplus_lab.sims.params import Parametrization, check_init
from loraplus_lab.sims.toy.engine import DEFAULT_DIVERGENCE_BOUND, STATS, lowrank_norms
from loraplus_lab.sims.toy.optim import OptimizerConfig, OptimizerState, apply_update, reset_entries
from loraplus_lab.sims.toy.simulate import concat_ordered, rate_tensors, tidy_rows

DTYPES = {"float64": torch.float64, "float32": torch.float32}
DEFAULT_TEACHER_WIDTH = 32
DEFAULT_PRETRAIN_SAMPLES = 256
DEFAULT_PRETRAIN_LR = 0.1
#: element budget of the largest tensor of one chunk of configurations × seeds (S·C·N·n·r)
CHUNK_ELEMENTS = 1 << 18

# stream identifiers for np.random.default_rng([seed, STREAM_BASE + stream, row])
_STREAM_BASE = 1000
(_T_IN, _T_H, _T_OUT, _T_SHIFT, _X_PRE, _X, _X_TEST, _NOISE, _W_IN, _W_H, _W_OUT, _A, _B) = (
    _STREAM_BASE + i for i in range(13)
)


# --------------------------------------------------------------------------------------------
# random draws


def _rows(seed: int, stream: int, rows: int, cols: int) -> np.ndarray:
    """``rows × cols`` standard normals; row ``i`` comes from stream ``(seed, stream, i)``."""
    out = np.empty((rows, cols))
    for i in range(rows):
        out[i] = np.random.default_rng([seed, stream, i]).standard_normal(cols)
    return out


def _normal(seed: int, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng([seed, stream]).standard_normal(shape)


@dataclass(frozen=True)
class Teacher:
    """``g(x) = t_outᵀ φ(T_h φ(T_in x)) / √k`` (numpy, float64)."""

    T_in: np.ndarray  # (k, d)
    T_h: np.ndarray  # (k, k)
    t_out: np.ndarray  # (k,)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Outputs on the rows of ``X`` ``(N, d)``, shape ``(N,)``."""
        h1 = np.maximum(X @ self.T_in.T, 0.0)
        h2 = np.maximum(h1 @ self.T_h.T, 0.0)
        return h2 @ self.t_out / math.sqrt(self.t_out.shape[0])


def teachers(seed: int, input_dim: int, width: int, shift: float) -> tuple[Teacher, Teacher]:
    """The pretraining teacher ``g`` and the finetuning teacher ``g'`` (hidden layer
    ``T_h + shift·P``, ``P`` an independent copy of ``T_h``'s distribution)."""
    T_in = _normal(seed, _T_IN, (width, input_dim)) * math.sqrt(2 / input_dim)
    T_h = _normal(seed, _T_H, (width, width)) * math.sqrt(2 / width)
    t_out = _normal(seed, _T_OUT, (width,))
    P = _normal(seed, _T_SHIFT, (width, width)) * math.sqrt(2 / width)
    return Teacher(T_in, T_h, t_out), Teacher(T_in, T_h + shift * P, t_out)


@dataclass(frozen=True)
class TaskData:
    """The width-independent data of one seed (numpy, float64).

    ``X_pre, y1``: pretraining set; ``X, y2``: finetuning training set (noisy targets);
    ``X_test, y2_test``: held-out finetuning set (noise-free targets).
    """

    X_pre: np.ndarray
    y1: np.ndarray
    X: np.ndarray
    y2: np.ndarray
    X_test: np.ndarray
    y2_test: np.ndarray


def task_data(
    seed: int,
    *,
    input_dim: int = 16,
    teacher_width: int = DEFAULT_TEACHER_WIDTH,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    samples: int = 64,
    test_samples: int = 256,
    shift: float = 1.0,
    noise: float = 0.0,
) -> TaskData:
    """Draw the pretraining and finetuning sets of one seed."""
    g1, g2 = teachers(seed, input_dim, teacher_width, shift)
    X_pre = _normal(seed, _X_PRE, (pretrain_samples, input_dim))
    X = _normal(seed, _X, (samples, input_dim))
    X_test = _normal(seed, _X_TEST, (test_samples, input_dim))
    y2 = g2(X)
    if noise > 0:
        y2 = y2 + noise * _normal(seed, _NOISE, (samples,))
    return TaskData(X_pre, g1(X_pre), X, y2, X_test, g2(X_test))


# --------------------------------------------------------------------------------------------
# pretraining


@dataclass(frozen=True)
class PretrainedNet:
    """The student after pretraining (torch tensors) and its task-1 training loss per step."""

    W_in: torch.Tensor  # (n, d)
    W_h: torch.Tensor  # (n, n)
    w_out: torch.Tensor  # (n,)
    loss: np.ndarray  # (P + 1,), task-1 loss before each step and after the last

    @property
    def width(self) -> int:
        """``n``."""
        return self.W_h.shape[0]

    def features(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h1 = φ(W_in x)`` and ``W_h h1`` on the rows of ``X`` ``(N, d)``, each ``(N, n)``."""
        h1 = torch.relu(X @ self.W_in.T)
        return h1, h1 @ self.W_h.T

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Outputs ``f`` without adapter, shape ``(N,)``."""
        _, pre = self.features(X)
        return torch.relu(pre) @ self.w_out / self.width


def init_student(
    width: int, seed: int, input_dim: int, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """``W_in ~ N(0, 2/d)``, ``W_h ~ N(0, 2/n)``, ``w_out ~ N(0, 1)``, rows prefix-stable in n."""
    t = {
        "W_in": _rows(seed, _W_IN, width, input_dim) * math.sqrt(2 / input_dim),
        "W_h": _rows(seed, _W_H, width, width) * math.sqrt(2 / width),
        "w_out": np.random.default_rng([seed, _W_OUT]).standard_normal(width),
    }
    return {k: torch.from_numpy(v).to(dtype) for k, v in t.items()}


def pretrain_grads(
    params: dict[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss ``(1/N) Σ ½(f − y)²`` of the full network and its gradients (by hand).

    With ``a1 = W_in x``, ``a2 = W_h h1``, ``U = f − y``: ``∂L/∂w_out = h2ᵀU/(nN)``,
    ``G2 = ∂L/∂a2 = (U/N) ⊗ (w_out/n) ∘ 1[a2 > 0]``, ``∂L/∂W_h = G2ᵀ h1``,
    ``G1 = (G2 W_h) ∘ 1[a1 > 0]``, ``∂L/∂W_in = G1ᵀ x``.
    """
    W_in, W_h, w_out = params["W_in"], params["W_h"], params["w_out"]
    N, n = X.shape[0], W_h.shape[0]
    a1 = X @ W_in.T
    h1 = torch.relu(a1)
    a2 = h1 @ W_h.T
    h2 = torch.relu(a2)
    u = h2 @ w_out / n - y
    loss = 0.5 * u.square().sum() / N
    g_f = u / N
    g2 = torch.outer(g_f, w_out / n) * torch.sign(h2)  # sign(φ(a)) = 1[a > 0]
    g1 = (g2 @ W_h) * torch.sign(h1)
    grads = {"W_in": g1.T @ X, "W_h": g2.T @ h1, "w_out": h2.T @ g_f / n}
    return loss, grads


def pretrain(
    width: int,
    seed: int,
    data: TaskData,
    *,
    steps: int = 200,
    lr: float = DEFAULT_PRETRAIN_LR,
    dtype: torch.dtype = torch.float64,
) -> PretrainedNet:
    """Pretrain all three layers on task 1 with full-batch Adam and μP per-layer rates.

    Rates ``η_in = lr/d``, ``η_h = lr/n``, ``η_out = lr``; ``steps = 0`` keeps the random init.
    """
    d = data.X_pre.shape[1]
    params = init_student(width, seed, d, dtype)
    X = torch.from_numpy(data.X_pre).to(dtype)
    y = torch.from_numpy(data.y1).to(dtype)
    rates = {
        "W_in": torch.tensor(lr / d, dtype=dtype),
        "W_h": torch.tensor(lr / width, dtype=dtype),
        "w_out": torch.tensor(lr, dtype=dtype),
    }
    opt = OptimizerConfig("adam")
    state = OptimizerState()
    losses = np.empty(steps + 1)
    for t in range(1, steps + 1):
        loss, grads = pretrain_grads(params, X, y)
        losses[t - 1] = float(loss)
        state.step = t
        for k, p in params.items():
            apply_update(opt, state, k, p, grads[k], rates[k])
    losses[steps] = float(pretrain_grads(params, X, y)[0])
    return PretrainedNet(params["W_in"], params["W_h"], params["w_out"], losses)


@functools.lru_cache(maxsize=8)
def pretrained(
    width: int,
    seed: int,
    *,
    input_dim: int = 16,
    teacher_width: int = DEFAULT_TEACHER_WIDTH,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    steps: int = 200,
    lr: float = DEFAULT_PRETRAIN_LR,
    dtype: str = "float64",
) -> PretrainedNet:
    """:func:`pretrain` on the task-1 data of ``seed``, memoised (the 8 latest nets).

    Pretraining costs ``O(P·N_pre·n²)``, far more than finetuning at large widths; repeated
    calls (another init, another grid, another figure) reuse the net, which is bit-identical to
    a fresh one. Its tensors are shared: never modify them in place.
    """
    data = task_data(
        seed,
        input_dim=input_dim,
        teacher_width=teacher_width,
        pretrain_samples=pretrain_samples,
        samples=1,
        test_samples=0,
    )
    return pretrain(width, seed, data, steps=steps, lr=lr, dtype=DTYPES[dtype])


# --------------------------------------------------------------------------------------------
# finetuning: frozen features, forward, gradients, batched loop


@dataclass(frozen=True)
class FinetuneData:
    """Frozen tensors of the finetuning task for ``S`` seeds at one width (seed-major).

    ``H1`` ``(S, N, n)`` = ``h1`` on the training inputs, ``P0`` ``(S, N, n)`` = ``W_h h1``,
    ``w_out`` ``(S, n)``, ``y`` ``(S, N)``; the same on the held-out inputs (``*_test``, ``N_test``
    rows, may be 0); ``A0`` ``(S, r, n)`` and ``B0`` ``(S, n, r)`` the adapter's initialisation.
    """

    H1: torch.Tensor
    P0: torch.Tensor
    w_out: torch.Tensor
    y: torch.Tensor
    H1_test: torch.Tensor
    P0_test: torch.Tensor
    y_test: torch.Tensor
    A0: torch.Tensor
    B0: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(S, N, n, r)``."""
        S, N, n = self.H1.shape
        return S, N, n, self.A0.shape[1]

    def select(self, seeds: slice | list[int]) -> FinetuneData:
        """The data of a subset of the seeds."""
        return FinetuneData(*(getattr(self, f)[seeds] for f in self.__dataclass_fields__))


def finetune_data(
    nets: Sequence[PretrainedNet],
    datas: Sequence[TaskData],
    seeds: Sequence[int],
    *,
    rank: int,
    init: str,
    sigma_b: float = 1.0,
) -> FinetuneData:
    """Frozen features of each seed's pretrained net and the adapter's initialisation.

    Init[A]: ``A0 ~ N(0, 1/n)``, ``B0 = 0``; Init[B]: ``A0 = 0``, ``B0 ~ N(0, σ_B²)``.
    """
    check_init(init)
    dtype = nets[0].W_h.dtype
    n = nets[0].width
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in FinetuneData.__dataclass_fields__}
    for net, data, seed in zip(nets, datas, seeds, strict=True):
        h1, p0 = net.features(torch.from_numpy(data.X).to(dtype))
        h1t, p0t = net.features(torch.from_numpy(data.X_test).to(dtype))
        if init == "A":
            A0 = _rows(seed, _A, rank, n) / math.sqrt(n)
            B0 = np.zeros((n, rank))
        else:
            A0 = np.zeros((rank, n))
            B0 = sigma_b * _rows(seed, _B, rank, n).T
        row = {
            "H1": h1,
            "P0": p0,
            "w_out": net.w_out,
            "y": torch.from_numpy(data.y2).to(dtype),
            "H1_test": h1t,
            "P0_test": p0t,
            "y_test": torch.from_numpy(data.y2_test).to(dtype),
            "A0": torch.from_numpy(A0).to(dtype),
            "B0": torch.from_numpy(np.ascontiguousarray(B0)).to(dtype),
        }
        for k, v in row.items():
            cols[k].append(v)
    return FinetuneData(**{k: torch.stack(v) for k, v in cols.items()})


def _sum2(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last two axes in a batch-independent order (last axis first)."""
    return x.sum(-1).sum(-1)


def _za(H1: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """``Z_A = A h1``, ``(S, C, N, r)``; ``H1``: ``(S, N, n)``, ``A``: ``(S, C, r, n)``."""
    if A.shape[-2] == 1:
        return (H1.unsqueeze(1) * A).sum(-1, keepdim=True)
    return (H1[:, None, :, None, :] * A.unsqueeze(2)).sum(-1)


def _zb(za: torch.Tensor, B: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``s·B Z_A`` per sample ``(S, C, N, n)``; ``Z_A`` is ``(S, C, N, r)``, ``B`` ``(S, C, n, r)``.

    Also gives ``δ¹ = _zb(ΔZ_A, B_{t−1})``, ``δ² = _zb(Z_A^{t−1}, ΔB)``, ``δ³ = _zb(ΔZ_A, ΔB)``.
    """
    if B.shape[-1] == 1:
        return (s * za) * B.transpose(-1, -2)
    return ((s * za).unsqueeze(-2) * B.unsqueeze(2)).sum(-1)


def _output(pre: torch.Tensor, w_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f = φ(a2)·w_out/n`` ``(S, C, N)`` and the mask ``1[a2 > 0]`` (float, ``(S, C, N, n)``).

    ``w_n`` is ``w_out/n`` as ``(S, 1, 1, n)``. Overwrites ``pre`` with ``φ(pre)``.
    """
    h = pre.relu_()
    return (h * w_n).sum(-1), torch.sign(h)  # sign(φ(a)) = 1[a > 0], vectorised unlike a > 0


def _half_mse(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * u.square().sum(-1) / u.shape[-1]


@dataclass
class _State:
    """What a step needs from the forward pass at the current factors (training inputs)."""

    za: torch.Tensor  # (S, C, N, r)
    zb: torch.Tensor  # (S, C, N, n)
    mask: torch.Tensor  # 1[a2 > 0] as 0.0/1.0, (S, C, N, n)
    u: torch.Tensor  # f − y, (S, C, N)


def _forward(
    data: FinetuneData, A: torch.Tensor, B: torch.Tensor, s: torch.Tensor, w_n: torch.Tensor
) -> _State:
    za = _za(data.H1, A)
    zb = _zb(za, B, s)
    f, mask = _output(data.P0.unsqueeze(1) + zb, w_n)
    return _State(za, zb, mask, f - data.y.unsqueeze(1))


def _test_loss(
    data: FinetuneData, A: torch.Tensor, B: torch.Tensor, s: torch.Tensor, w_n: torch.Tensor
) -> torch.Tensor:
    pre = data.P0_test.unsqueeze(1) + _zb(_za(data.H1_test, A), B, s)
    h = pre.relu_()
    return _half_mse((h * w_n).sum(-1) - data.y_test.unsqueeze(1))


def _grads(
    H1: torch.Tensor, st: _State, w_n: torch.Tensor, B: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂L/∂A`` ``(S, C, r, n)`` and ``∂L/∂B`` ``(S, C, n, r)``.

    With ``M = 1[a2 > 0]``, ``G = ∂L/∂a2 = M ∘ (U/N) ⊗ (w_out/n)``, so
    ``∂L/∂B_j = s·(w_out,j/n)·Σ_i M_ij (U_i/N) Z_A,i``,
    ``∂L/∂Z_A,i = s·(U_i/N)·Σ_j M_ij (w_out,j/n) B_j`` and ``∂L/∂A = Σ_i (∂L/∂Z_A,i) h1_iᵀ``.
    """
    ug = (st.u / st.u.shape[-1]).unsqueeze(-1)  # (S, C, N, 1)
    c = ug * st.za  # (S, C, N, r)
    wb = w_n.transpose(-1, -2) * B  # (S, C, n, r)
    if B.shape[-1] == 1:
        col = (st.mask * c).sum(-2)  # Σ_i M_ij c_i, (S, C, n)
        grad_b = (s[..., 0] * w_n[..., 0, :] * col).unsqueeze(-1)
        q = (st.mask * wb.transpose(-1, -2)).sum(-1, keepdim=True)  # (S, C, N, 1)
        g_za = s * ug * q
        grad_a = (g_za * H1.unsqueeze(1)).sum(-2, keepdim=True)
    else:
        m = st.mask.unsqueeze(-1)
        col = (m * c.unsqueeze(-2)).sum(-3)  # (S, C, n, r)
        grad_b = s * w_n.transpose(-1, -2) * col
        q = (m * wb.unsqueeze(2)).sum(-2)  # (S, C, N, r)
        g_za = s * ug * q
        grad_a = (g_za.unsqueeze(-1) * H1[:, None, :, None, :]).sum(-3)
    return grad_a, grad_b


def _w_n(data: FinetuneData) -> torch.Tensor:
    n = data.w_out.shape[-1]
    return (data.w_out / n).reshape(-1, 1, 1, n)


def finetune_grads(
    data: FinetuneData, A: torch.Tensor, B: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training loss ``(S, C)`` and the gradients ``∂L/∂A`` and ``∂L/∂B``.

    At adapter factors ``A`` ``(S, C, r, n)``, ``B`` ``(S, C, n, r)`` (the gradients have the
    same shapes) and multipliers ``s`` ``(C,)``; the code path of :func:`run_finetune`'s steps.
    """
    s = scale.to(A.dtype).reshape(1, -1, 1, 1)
    w_n = _w_n(data)
    st = _forward(data, A, B, s, w_n)
    grad_a, grad_b = _grads(data.H1, st, w_n, B, s)
    return _half_mse(st.u), grad_a, grad_b


def _gram(P: torch.Tensor) -> torch.Tensor:
    """``P Pᵀ`` for ``P`` ``(..., k, n)``, batch-independent."""
    return (P.unsqueeze(-2) * P.unsqueeze(-3)).sum(-1)


def _mean_abs_outer(
    za: torch.Tensor, B: torch.Tensor, s: torch.Tensor, full: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``|s·Z_A Bᵀ|`` over samples and coordinates, ``(S, C)``.

    Rank 1: ``|s|·mean|Z_A|·mean|B|`` exactly (the outer product factorises), so the ``N × n``
    product is never formed; otherwise from ``full`` (or the product).
    """
    N, n = za.shape[-2], B.shape[-2]
    if B.shape[-1] == 1:
        return s.abs()[..., 0, 0] * (za.abs().sum((-1, -2)) / N) * (B.abs().sum((-1, -2)) / n)
    if full is None:
        full = _zb(za, B, s)
    return _sum2(full.abs()) / (N * n)


def run_finetune(
    data: FinetuneData,
    scale: torch.Tensor,
    eta_a: torch.Tensor,
    eta_b: torch.Tensor,
    steps: int,
    opt: OptimizerConfig,
    *,
    divergence_bound: float = DEFAULT_DIVERGENCE_BOUND,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> dict[str, np.ndarray]:
    """LoRA-finetune ``C`` configurations × ``S`` seeds for ``steps`` steps.

    Args:
        data: the frozen task tensors (:func:`finetune_data`).
        scale: multiplier ``s`` per configuration, ``(C,)``.
        eta_a, eta_b: learning rates per configuration, ``(C,)``.
        steps: optimizer steps.
        opt: optimizer and its hyper-parameters.
        divergence_bound: a configuration diverges when its loss exceeds this or turns non-finite.
        on_step: called after each step with the step number and the signed tensors of the
            step, leading dimensions ``(C, S)``: ``A``, ``B``, ``Z_A``, ``Z_B``, ``delta1..3``,
            ``dZ_B`` (features on the training inputs), ``grad_A``, ``grad_B`` (the gradients
            the step used) and ``alive``.

    Returns:
        ``{stat: array (steps + 1, C, S)}`` for every name in
        :data:`loraplus_lab.sims.toy.engine.STATS` and ``diverged_step`` ``(C, S)`` (−1: never).
        Rows at and after divergence are NaN; a diverged configuration is frozen (held at ``A = B =
        0`` with zero gradient) and the rest of the batch goes on.
    """
    S, N, n, r = data.shape
    C = eta_a.shape[0]
    dtype = data.H1.dtype
    s = scale.to(dtype).reshape(1, C, 1, 1)
    lr_a = eta_a.to(dtype).reshape(1, C, 1, 1)
    lr_b = eta_b.to(dtype).reshape(1, C, 1, 1)
    w_n = _w_n(data)
    A = data.A0.unsqueeze(1).expand(S, C, r, n).clone()
    B = data.B0.unsqueeze(1).expand(S, C, n, r).clone()
    has_test = data.H1_test.shape[1] > 0
    state = OptimizerState()
    out = {k: np.full((steps + 1, C, S), np.nan) for k in STATS}
    diverged_step = np.full((C, S), -1, dtype=np.int64)
    alive = torch.ones(S, C, dtype=torch.bool)

    def stats(st: _State, A: torch.Tensor, B: torch.Tensor) -> dict[str, torch.Tensor]:
        bt = B.transpose(-1, -2).contiguous()
        g_a, g_b = _gram(A), _gram(bt)
        fro, spec = lowrank_norms(s * s * g_b, g_a)  # ΔW_t = s·B_t A_t, since B0·A0 = 0
        row = {
            "loss": _half_mse(st.u),
            "za_mean_abs": _sum2(st.za.abs()) / (N * r),
            "za_rms": (_sum2(st.za.square()) / (N * r)).sqrt(),
            "zb_mean_abs": _mean_abs_outer(st.za, B, s, st.zb),
            "norm_a": torch.diagonal(g_a, dim1=-2, dim2=-1).sum(-1).sqrt(),
            "norm_b": torch.diagonal(g_b, dim1=-2, dim2=-1).sum(-1).sqrt(),
            "dw_fro": fro,
            "dw_spec": spec,
        }
        if has_test:
            row["test_loss"] = _test_loss(data, A, B, s, w_n)
        return row

    def record(t: int, row: dict[str, torch.Tensor]) -> torch.Tensor:
        vals = torch.stack(list(row.values()))  # (K, S, C)
        ok = torch.isfinite(vals).all(0) & (row["loss"] <= divergence_bound)
        vals = torch.where(ok & alive, vals, torch.nan).transpose(-1, -2).numpy()
        for k, v in zip(row, vals, strict=True):
            out[k][t] = v
        return ok

    st = _forward(data, A, B, s, w_n)
    row = stats(st, A, B)
    row["dw_step_fro"] = torch.zeros_like(row["loss"])
    ok = record(0, row)
    if not ok.all():  # diverged before the first step (an initial loss above the bound)
        diverged_step[(~ok).T.numpy()] = 0
        alive &= ok
        st.u.masked_fill_((~alive).unsqueeze(-1), 0.0)
    for t in range(1, steps + 1):
        grad_a, grad_b = _grads(data.H1, st, w_n, B, s)
        A_prev, B_prev = A.clone(), B.clone()
        state.step = t
        apply_update(opt, state, "A", A, grad_a, lr_a)
        apply_update(opt, state, "B", B, grad_b, lr_b)
        new = _forward(data, A, B, s, w_n)
        dza, dB = new.za - st.za, B - B_prev
        dzb = torch.sub(new.zb, st.zb)
        row = stats(new, A, B)
        # ΔW_t − ΔW_{t−1} = s[ΔB, B_{t−1}][A_t; ΔA]
        L = (s * torch.cat([dB, B_prev], -1)).transpose(-1, -2).contiguous()
        R = torch.cat([A, A - A_prev], -2)
        row["dw_step_fro"] = lowrank_norms(_gram(L), _gram(R), spectral=False)[0]
        signed = {}
        if on_step is not None or r > 1:
            signed = {"delta1": _zb(dza, B_prev, s), "delta2": _zb(st.za, dB, s)}
            signed["delta3"] = _zb(dza, dB, s)
        row["delta1"] = _mean_abs_outer(dza, B_prev, s, signed.get("delta1"))
        row["delta2"] = _mean_abs_outer(st.za, dB, s, signed.get("delta2"))
        row["delta3"] = _mean_abs_outer(dza, dB, s, signed.get("delta3"))
        if on_step is not None:
            tensors = {
                "A": A,
                "B": B,
                "Z_A": new.za,
                "Z_B": new.zb,
                **signed,
                "dZ_B": dzb.clone(),
                "grad_A": grad_a,
                "grad_B": grad_b,
            }
            tensors = {k: v.transpose(0, 1) for k, v in tensors.items()}
        row["dzb"] = _sum2(dzb.abs_()) / (N * n)
        ok = record(t, row)
        newly = alive & ~ok
        if on_step is not None:
            tensors["alive"] = (alive & ok).T
            on_step(t, tensors)
        if newly.any():
            diverged_step[newly.T.numpy()] = t
            alive &= ok
            # freeze diverged configurations at A = B = 0, so no inf/NaN arithmetic goes on
            dead = (~alive).reshape(S, C, 1, 1)
            A.masked_fill_(dead, 0.0)
            B.masked_fill_(dead, 0.0)
            reset_entries(state, ~alive)
            new = _forward(data, A, B, s, w_n)
        if not alive.all():
            new.u.masked_fill_((~alive).unsqueeze(-1), 0.0)  # zero gradient: they stay put
        st = new
    result = dict(out)
    result["diverged_step"] = diverged_step
    return result


# --------------------------------------------------------------------------------------------
# public API


def _chunks(count: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def _plan(configs: int, seeds: int, per_pair: int) -> tuple[list[slice], list[slice]]:
    """Configuration and seed chunks whose largest tensor holds about :data:`CHUNK_ELEMENTS`.

    Small chunks keep the ``(S, C, N, n)`` temporaries in cache: the results do not depend on
    the chunking (every reduction is batch-independent), only the speed does.
    """
    pairs = max(1, CHUNK_ELEMENTS // per_pair)
    c = min(configs, pairs)
    s = max(1, min(seeds, pairs // c))
    return _chunks(configs, c), _chunks(seeds, s)


def simulate_twolayer(
    widths: Sequence[int],
    parametrizations: Sequence[Parametrization],
    seeds: Sequence[int],
    *,
    steps: int,
    optimizer: str = "adam",
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rank: int = 1,
    samples: int = 64,
    test_samples: int = 256,
    input_dim: int = 16,
    pretrain_steps: int = 200,
    shift: float = 1.0,
    noise: float = 0.0,
    dtype: str | torch.dtype = "float64",
    divergence_bound: float = DEFAULT_DIVERGENCE_BOUND,
    progress: bool | None = None,
    pretrain_samples: int = DEFAULT_PRETRAIN_SAMPLES,
    pretrain_lr: float = DEFAULT_PRETRAIN_LR,
    teacher_width: int = DEFAULT_TEACHER_WIDTH,
    sigma_b: float = 1.0,
) -> pd.DataFrame:
    """Pretrain a two-layer ReLU net per width × seed, then LoRA-finetune its hidden layer.

    The model, the tasks and the pretraining are described in the module docstring. For each
    width and seed the network is pretrained once on task 1; then every parametrization ×
    seed finetunes ``A``, ``B`` of the hidden layer on task 2 in one batch of tensors (in chunks
    of configurations that bound the memory), with ``η_A(n)``, ``η_B(n)``, the init and ``s``
    taken from each parametrization.

    Args:
        widths: widths ``n``.
        parametrizations: rate rules (:class:`loraplus_lab.sims.params.Parametrization`).
        seeds: seeds of teacher, data and student (shared by every parametrization).
        steps: finetuning steps ``T``.
        optimizer, betas, eps, weight_decay: the finetuning optimizer
        (:mod:`loraplus_lab.sims.toy.optim`). rank: LoRA rank ``r``.
        samples: finetuning training samples ``N``.
        test_samples: held-out samples for ``test_loss`` (0: no test set, ``test_loss`` NaN).
        input_dim: input dimension ``d``.
        pretrain_steps: full-batch Adam steps on task 1 (0: finetune the random network).
        shift: relative size of the perturbation of the teacher's hidden layer.
        noise: standard deviation of the noise on the finetuning training targets.
        dtype: ``"float64"`` (default) or ``"float32"``.
        divergence_bound: loss above which a configuration counts as diverged.
        progress: show a progress bar (default: when stderr is a terminal).
        pretrain_samples: pretraining set size ``N_pre``.
        pretrain_lr: pretraining base rate ``η`` (``η_in = η/d``, ``η_h = η/n``, ``η_out = η``).
        teacher_width: the teachers' width ``k``.
        sigma_b: standard deviation of ``B0`` under Init[B].

    Returns:
        A tidy DataFrame, one row per width × parametrization × seed × step, with the columns of
        :func:`loraplus_lab.sims.toy.simulate_batch` (``width, param, init, c_a, c_b, eta_a_base,
        eta_b_base, eta_a, eta_b, ratio, scale, seed, step``, the statistics of
        :data:`loraplus_lab.sims.toy.engine.STATS` measured on the finetuning training inputs,
        ``test_loss`` on the held-out ones, ``diverged``, ``diverged_step``).
        ``df.attrs["config"]`` holds the full configuration and ``df.attrs["pretrain"]`` the task-1
        loss of every width × seed before and after pretraining.

    Note:
        With Adam and Init[A], a fixed-``T`` loss landscape over ``(η_A, η_B)`` is an L-shaped
        valley, not a single well: once ``η_A·n ≫ 1`` the update swamps ``A0``, the trajectory
        depends (nearly) only on ``η_A·η_B`` (Adam is blind to the rescaling ``A → cA``,
        ``B → B/c``), and the valley floor runs along ``η_A·η_B·n ≈ const`` with ``Z_A`` growing
        like ``η_A·n`` (``za_mean_abs``). The LoRA+ point, ``η_A = Θ(1/n)`` with ``η_B = Θ(1)``,
        is the Z_A-stable end of that floor; a plain argmin over the grid wanders along it.
    """
    widths = [positive_int("width", w) for w in widths]
    if not widths:
        raise InputError("widths is empty")
    seeds = [nonnegative_int("seed", s) for s in seeds]
    if not seeds:
        raise InputError("seeds is empty")
    params = list(parametrizations)
    if not params:
        raise InputError("no parametrization given")
    for p in params:
        if not isinstance(p, Parametrization):
            raise InputError(f"expected a Parametrization, got {p!r}")
        check_init(p.init)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise InputError(f"parametrization names must be unique, got {names}")
    steps = positive_int("steps", steps)
    rank = positive_int("rank", rank)
    for w in widths:
        if rank > w:
            raise InputError(f"rank r={rank} is above the width n={w}")
    samples = positive_int("samples", samples)
    test_samples = nonnegative_int("test_samples", test_samples)
    input_dim = positive_int("input_dim", input_dim)
    pretrain_steps = nonnegative_int("pretrain_steps", pretrain_steps)
    pretrain_samples = positive_int("pretrain_samples", pretrain_samples)
    teacher_width = positive_int("teacher_width", teacher_width)
    shift = nonnegative("shift", shift)
    noise = nonnegative("noise", noise)
    pretrain_lr = positive("pretrain_lr", pretrain_lr)
    sigma_b = positive("sigma_b", sigma_b)
    divergence_bound = positive("divergence_bound", divergence_bound)
    opt = OptimizerConfig(optimizer, betas, eps, weight_decay)
    names = {v: k for k, v in DTYPES.items()}
    if isinstance(dtype, torch.dtype) and dtype in names:
        dtype = names[dtype]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    for p in params:
        for w in widths:
            for name, rate in (("eta_a", p.rate_a(w)), ("eta_b", p.rate_b(w))):
                if not (math.isfinite(rate) and rate > 0):
                    raise InputError(f"{name} of {p.name!r} at width {w} is {rate!r}")

    datas = [
        task_data(
            seed,
            input_dim=input_dim,
            teacher_width=teacher_width,
            pretrain_samples=pretrain_samples,
            samples=samples,
            test_samples=test_samples,
            shift=shift,
            noise=noise,
        )
        for seed in seeds
    ]
    inits = sorted({p.init for p in params})
    groups = {i: [p for p in params if p.init == i] for i in inits}
    S = len(seeds)
    plan = {  # (config slices, seed slices) per width × init
        (w, i): _plan(len(groups[i]), S, max(samples, test_samples) * w * rank)
        for w in widths
        for i in inits
    }
    total = sum(len(cs) * len(ss) * steps for cs, ss in plan.values())
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=total, desc="two-layer", unit="step", disable=not progress, leave=False)
    frames = []
    pretrain_log = []
    try:
        for width in widths:
            bar.set_postfix(width=width, stage="pretrain")
            nets = [
                pretrained(
                    width,
                    seed,
                    input_dim=input_dim,
                    teacher_width=teacher_width,
                    pretrain_samples=pretrain_samples,
                    steps=pretrain_steps,
                    lr=pretrain_lr,
                    dtype=dtype,
                )
                for seed in seeds
            ]
            for seed, net in zip(seeds, nets, strict=True):
                pretrain_log.append(
                    {
                        "width": width,
                        "seed": seed,
                        "loss_before": float(net.loss[0]),
                        "loss_after": float(net.loss[-1]),
                    }
                )
            for init in inits:
                group = groups[init]
                data = finetune_data(nets, datas, seeds, rank=rank, init=init, sigma_b=sigma_b)
                bar.set_postfix(width=width, init=init)
                res = {k: np.full((steps + 1, len(group), S), np.nan) for k in STATS}
                res["diverged_step"] = np.full((len(group), S), -1, dtype=np.int64)
                config_slices, seed_slices = plan[width, init]
                for ss in seed_slices:
                    part = data.select(ss)
                    for cs in config_slices:
                        sub = group[cs]
                        out = run_finetune(
                            part,
                            *rate_tensors(sub, width, rank),
                            steps,
                            opt,
                            divergence_bound=divergence_bound,
                            on_step=lambda _t, _st: bar.update(1),
                        )
                        for k in STATS:
                            res[k][:, cs, ss] = out[k]
                        res["diverged_step"][cs, ss] = out["diverged_step"]
                frames.append(tidy_rows(res, width, group, seeds, steps, rank))
    finally:
        bar.close()
    df = concat_ordered(frames, params)
    df.attrs["config"] = {
        "model": "twolayer",
        "widths": widths,
        "seeds": seeds,
        "steps": steps,
        "optimizer": opt.name,
        "betas": list(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
        "rank": rank,
        "samples": samples,
        "test_samples": test_samples,
        "input_dim": input_dim,
        "pretrain_steps": pretrain_steps,
        "pretrain_samples": pretrain_samples,
        "pretrain_lr": pretrain_lr,
        "teacher_width": teacher_width,
        "shift": shift,
        "noise": noise,
        "sigma_b": sigma_b,
        "dtype": dtype,
        "divergence_bound": divergence_bound,
        "parametrizations": [p.to_dict() for p in params],
    }
    df.attrs["pretrain"] = pretrain_log
    return df
