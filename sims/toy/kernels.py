"""Compiled kernels of the toy simulator (numba): one pass over the state where torch needs many.

:func:`adam_outer_step` is Adam/AdamW on ``A`` for a single training sample, where the gradient
of every row of ``A`` is an outer product ``∂L/∂A_i = g_i·xᵀ``: the gradient is formed element by
element inside the update and never stored. It reads ``A``, both moments and ``x`` once, writes
``A``, the moments and the step ``ΔA`` once, and then, while the row is still in cache, sums the
new features ``Z_A = A·x`` and the Gram matrix of ``[A; ΔA]`` that the statistics need. The torch
calls it replaces (gradient, zeroed buffer, fused Adam, ``A += ΔA``, two batched products) make
about fifteen passes over width-sized arrays.

Every element meets the arithmetic of torch's fused CPU kernel (what the simulator's other Adam
updates and ``torch.optim.Adam(fused=True)`` call) in the same order, with the same fused
multiply-adds.
torch's kernel walks a tensor in vector chunks and finishes the last ``size mod lanes`` elements
with scalar code that the compiler contracted differently; this kernel does the same per batch
entry. Entries whose size is a whole number of vector chunks (every power-of-two width) are
bit-identical to ``torch.optim.Adam/AdamW(fused=True)`` on that configuration alone; in a scalar
tail an element may differ in its last bit (the compiled tail mixes vector and scalar code).
``tests/test_toy.py`` checks both.

The sums run in vector lanes, in an order fixed by the compiled code and the same for every
entry of every batch, so a configuration's result does not depend on the batch around it.
Kernels compile on first use (a few seconds) and are cached on disk (numba's ``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from numba.extending import intrinsic

from loraplus_lab.sims.checks import InputError

#: Below this many elements in all the kernel runs on one thread (starting threads costs more).
_PARALLEL = 1 << 15
# Weight-decay modes of the kernel.
NO_DECAY, L2_DECAY, DECOUPLED_DECAY = 0, 1, 2


@intrinsic
def _fma(typingctx, a, b, c):  # noqa: ARG001 - numba's intrinsic signature
    """``a·b + c`` with one rounding (LLVM's ``llvm.fma``), as ``vec::fmadd`` and ``std::fma``."""
    sig = a(a, a, a)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.fma(*args)

    return sig, codegen


def vector_lanes(dtype: torch.dtype) -> int:
    """Elements per vector chunk of torch's CPU kernels for ``dtype`` on this machine.

    torch's ``Vectorized<T>`` is 64 bytes wide where it dispatches to AVX-512 and 32 bytes
    otherwise; its fused Adam kernel applies the vector arithmetic to whole chunks and the scalar
    arithmetic to the remainder of each tensor.
    """
    width = 64 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 32
    return width // torch.empty((), dtype=dtype).element_size()


@njit(inline="always")
def _lerp(m, g, w, w1, small):
    """``exp_avg.lerp_(grad, w)`` as torch's kernel: one fused multiply-add from the nearer end
    (``w1 = w − 1``)."""
    if small:
        return _fma(w, g - m, m)
    return _fma(w1, g - m, g)


@njit(inline="always")
def _decayed(g, p, wd, keep, mode):
    """The gradient and parameter after weight decay: ``g + λp`` (Adam) or ``(1 − ηλ)p``
    (AdamW)."""
    if mode == L2_DECAY:
        return _fma(p, wd, g), p
    if mode == DECOUPLED_DECAY:
        return g, p * keep
    return g, p


@njit(inline="always")
def _elements(xs, ce, Ae, me, ve, de, start, stop, sse, ke, c, bc2s, mode, tail):
    """Elements ``start ≤ j < stop`` of one row, with torch's vector (``tail`` false) or scalar
    tail arithmetic."""
    beta2, c1, c2, eps, wd, w1 = c[0], c[1], c[2], c[3], c[4], c[5]
    small = abs(c1) < 0.5
    for j in range(start, stop):
        p0 = Ae[j]
        g, p = _decayed(ce * xs[j], p0, wd, ke, mode)
        mj = _lerp(me[j], g, c1, w1, small)
        if tail:  # the tail contracts the other product of v
            vj = _fma(ve[j], beta2, (c2 * g) * g)
        else:
            vj = _fma(c2 * g, g, ve[j] * beta2)
        me[j] = mj
        ve[j] = vj
        q = (sse * mj) / (np.sqrt(vj) / bc2s + eps)
        new = p + q
        Ae[j] = new
        # the step: the increment itself without decay (p + q is the kernel's update), the
        # change p_new − p_old with it
        de[j] = q if mode == NO_DECAY else new - p0


@njit(fastmath={"reassoc"}, cache=True)
def _dots(Ae, de, xs, start, stop):
    """``(A·x, A·A, A·ΔA, ΔA·ΔA)`` over ``start ≤ j < stop``, summed in vector lanes (the order is
    fixed by the compiled code, the same for every entry and every batch)."""
    ax = aa = ad = dd = 0.0
    for j in range(start, stop):
        a, d = Ae[j], de[j]
        ax += a * xs[j]
        aa += a * a
        ad += a * d
        dd += d * d
    return ax, aa, ad, dd


def _outer(x, per_seed, coef, A, m, v, dA, ss, keep, c, bc2s, lanes, mode, za, gram):
    """Entry ``e`` (``E`` of them, rows ``i < r``) takes the gradient ``coef[e, i]·x[e // P]``.
    Elements before the entry's last ``size mod lanes`` take torch's vector arithmetic, the rest
    its scalar tail. ``c`` = (β₂, 1 − β₁, 1 − β₂, ε, λ, (1 − β₁) − 1) and ``bc2s = √(1 − β₂ᵗ)``,
    in the arrays' precision; ``ss[e] = −η/(1 − β₁ᵗ)`` and ``keep[e] = 1 − η·λ`` are the entry's.
    Writes the new features ``za[e, i] = A[e, i]·x`` and, for ``r = 1``, the Gram matrix of
    ``[A; ΔA]`` as ``gram[e] = (A·A, A·ΔA, ΔA·ΔA)``."""
    E, r, n = A.shape
    size = r * n
    tail = size - size % lanes
    for e in prange(E):
        xs = x[e // per_seed]
        for i in range(r):
            stop = min(n, max(tail - i * n, 0))
            ce, Ae, me, ve, de = coef[e, i], A[e, i], m[e, i], v[e, i], dA[e, i]
            _elements(xs, ce, Ae, me, ve, de, 0, stop, ss[e], keep[e], c, bc2s, mode, False)
            _elements(xs, ce, Ae, me, ve, de, stop, n, ss[e], keep[e], c, bc2s, mode, True)
            ax, aa, ad, dd = _dots(Ae, de, xs, 0, n)
            za[e, i] = ax
            if r == 1:
                gram[e, 0] = aa
                gram[e, 1] = ad
                gram[e, 2] = dd


def _sums(x, per_seed, A, dA, za, gram):
    """The sums of :func:`_outer` without an update: ``za[e, i] = A[e, i]·x`` and (``r = 1``)
    ``gram[e] = (A·A, A·ΔA, ΔA·ΔA)``, in the same order."""
    E, r, n = A.shape
    for e in prange(E):
        xs = x[e // per_seed]
        for i in range(r):
            ax, aa, ad, dd = _dots(A[e, i], dA[e, i], xs, 0, n)
            za[e, i] = ax
            if r == 1:
                gram[e, 0] = aa
                gram[e, 1] = ad
                gram[e, 2] = dd


def _toy(x, per_seed, A0, b0, R, s, ss_a, keep_a, ss_b, keep_b, c, bc2s, lanes, mode, bound, out):
    """Every step of the rank-1, one-output, single-sample toy, one entry at a time: the entry's
    ``A``, its moments and its step live in a row-sized scratch (in cache) for the whole run.

    The step is the simulator's, operation for operation: ``u = s·(z·b) − R``, ``∂L/∂b = s·(u·z)``,
    ``∂L/∂A = s·(u·b)·xᵀ``; ``A`` through :func:`_elements` (torch's vector and tail arithmetic)
    and :func:`_dots`; ``b``, a one-element tensor, through torch's scalar tail. ``ss_a``,
    ``ss_b`` ``(E, T)`` are ``−η/(1 − β₁ᵗ)`` per step, ``bc2s`` ``(T,)`` ``√(1 − β₂ᵗ)``. Writes
    ``za``, ``bt`` ``(T + 1, E)`` and ``gram`` ``(T + 1, E, 3)`` for ``t = 0..T``; an entry whose
    loss ``½u²`` exceeds ``bound`` (or is not finite) stops, and its later values are NaN.
    ``out`` = (za, bt, gram, work) with ``work`` ``(threads, 4, n)`` each thread's ``A``, moments
    and step, reused by all its entries (no allocation per entry)."""
    za, bt, gram, work = out
    E = R.shape[0]
    n = x.shape[1]
    T = bc2s.shape[0]
    tail = n - n % lanes
    beta2, c1, c2, eps, wd, w1 = c[0], c[1], c[2], c[3], c[4], c[5]
    small = abs(c1) < 0.5
    for e in prange(E):
        xs = x[e // per_seed]
        scratch = work[numba.get_thread_id()]
        Ae, me, ve, de = scratch[0], scratch[1], scratch[2], scratch[3]
        Ae[:] = A0[e // per_seed]
        me[:] = 0.0
        ve[:] = 0.0
        de[:] = 0.0
        z, aa, ad, dd = _dots(Ae, de, xs, 0, n)
        be = b0[e]
        mb = 0.0
        vb = 0.0
        se, re = s[e], R[e]
        za[0, e], bt[0, e] = z, be
        gram[0, e, 0], gram[0, e, 1], gram[0, e, 2] = aa, ad, dd
        u = se * (z * be) - re
        alive = 0.5 * (u * u) <= bound
        for t in range(T):
            if not alive:
                za[t + 1, e] = bt[t + 1, e] = np.nan
                gram[t + 1, e, 0] = gram[t + 1, e, 1] = gram[t + 1, e, 2] = np.nan
                continue
            g_b = se * (u * z)
            g_z = se * (u * be)
            b2 = bc2s[t]
            _elements(xs, g_z, Ae, me, ve, de, 0, tail, ss_a[e, t], keep_a[e], c, b2, mode, False)
            _elements(xs, g_z, Ae, me, ve, de, tail, n, ss_a[e, t], keep_a[e], c, b2, mode, True)
            z, aa, ad, dd = _dots(Ae, de, xs, 0, n)
            g, p = _decayed(g_b, be, wd, keep_b[e], mode)
            mb = _lerp(mb, g, c1, w1, small)
            vb = _fma(vb, beta2, (c2 * g) * g)  # the scalar tail's contraction
            be = p + (ss_b[e, t] * mb) / (np.sqrt(vb) / b2 + eps)
            za[t + 1, e], bt[t + 1, e] = z, be
            gram[t + 1, e, 0], gram[t + 1, e, 1], gram[t + 1, e, 2] = aa, ad, dd
            u = se * (z * be) - re
            alive = 0.5 * (u * u) <= bound


# Compiled with parallel=True even where it runs on one thread: the outlined parallel loop tells
# LLVM that the arrays do not alias, which lets it vectorise the elementwise loop (2–3× faster).
_outer_kernel = njit(parallel=True, cache=True)(_outer)
_sums_kernel = njit(parallel=True, cache=True)(_sums)
_toy_kernel = njit(parallel=True, cache=True)(_toy)


def _threads(E: int, numel: int) -> None:
    """As many threads as torch uses (one in the sweep's workers), one for small work."""
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, E)
    numba.set_num_threads(threads if numel >= _PARALLEL else 1)


def _sum_outputs(
    E: int,
    r: int,
    dtype: np.dtype,
    features_out: torch.Tensor | None,
    gram_out: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray]:
    za = np.empty((E, r), dtype) if features_out is None else features_out.numpy()
    gram = np.empty((E, 3), dtype) if gram_out is None else gram_out.numpy()
    if za.shape != (E, r) or gram.shape != (E, 3) or (gram_out is not None and r != 1):
        raise InputError("features_out must be (E, r) and gram_out (E, 3), for r = 1 only")
    return za, gram


def row_sums(
    x: torch.Tensor,
    A: torch.Tensor,
    dA: torch.Tensor,
    features_out: torch.Tensor,
    gram_out: torch.Tensor | None = None,
) -> None:
    """The features ``Z_A[e, i] = A[e, i]·x[e // P]`` and (``r = 1``) the Gram matrix of
    ``[A; ΔA]``, summed exactly as :func:`adam_outer_step` sums them (so that a feature change
    ``ΔZ_A`` is exactly zero where ``A`` did not move). Shapes as there."""
    E, r, n = A.shape
    S = x.shape[0]
    if E % S or x.shape[-1] != n or dA.shape != A.shape:
        raise InputError(f"shapes x {tuple(x.shape)}, A {tuple(A.shape)}, dA {tuple(dA.shape)}")
    np_dtype = torch.empty((), dtype=A.dtype).numpy().dtype
    za, gram = _sum_outputs(E, r, np_dtype, features_out, gram_out)
    _threads(E, A.numel())
    xs = x.to(A.dtype).contiguous().numpy()
    _sums_kernel(xs, E // S, A.contiguous().numpy(), dA.contiguous().numpy(), za, gram)


def _constants(betas: tuple[float, float], eps: float, wd: float, dtype: np.dtype) -> np.ndarray:
    """``(β₂, 1 − β₁, 1 − β₂, ε, λ, (1 − β₁) − 1)`` in ``dtype``, as torch forms them."""
    beta1, beta2 = betas
    c = np.array([beta2, 1.0 - beta1, 1.0 - beta2, eps, wd, 0], dtype=dtype)
    c[5] = c[1] - dtype.type(1)
    return c


def adam_outer_step(
    x: torch.Tensor,
    coef: torch.Tensor,
    A: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step_out: torch.Tensor,
    lr: torch.Tensor,
    *,
    step: int,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    features_out: torch.Tensor | None = None,
    gram_out: torch.Tensor | None = None,
) -> None:
    """One Adam (``decoupled=False``) or AdamW step on ``A`` with the outer-product gradient
    ``∂L/∂A[e, i] = coef[e, i]·x[e // P]`` (``P = E / S`` entries per input), in place.

    Shapes: ``x`` ``(S, n)``, ``coef`` ``(E, r)``, ``A``, the moments and ``step_out`` ``(E, r, n)``
    contiguous, ``lr`` ``(E,)`` (one rate per entry). ``step`` counts the current update (1 for
    the first). ``step_out`` receives the step taken: the increment ``−η·m̂/(√v̂ + ε)``
    without weight decay (``A_new = A_old + step`` exactly as the kernel rounds it), the change
    ``A_new − A_old`` with it. Where given, ``features_out`` ``(E, r)`` receives the new features
    ``Z_A[e, i] = A[e, i]·x`` and, for ``r = 1``, ``gram_out`` ``(E, 3)`` the Gram matrix of
    ``[A; ΔA]`` as ``(A·A, A·ΔA, ΔA·ΔA)``: sums over the row while it is in cache, in an order
    fixed by the compiled code (the same in any batch).
    """
    E, r, n = A.shape
    S = x.shape[0]
    if E % S or x.shape[-1] != n or coef.shape != (E, r):
        raise InputError(f"shapes x {tuple(x.shape)}, coef {tuple(coef.shape)}, A {tuple(A.shape)}")
    dtype = A.dtype
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    beta1, beta2 = betas
    t = float(step)
    bc1 = 1.0 - beta1**t  # in double, as torch's kernel
    bc2s = (1.0 - beta2**t) ** 0.5
    rates = lr.to(torch.float64).numpy()
    ss = (-(rates / bc1)).astype(np_dtype)
    keep = (1.0 - rates * weight_decay).astype(np_dtype)
    c = _constants(betas, eps, weight_decay, np_dtype)
    mode = NO_DECAY if not weight_decay else (DECOUPLED_DECAY if decoupled else L2_DECAY)
    for a in (A, exp_avg, exp_avg_sq, step_out):
        if not a.is_contiguous() or a.shape != A.shape or a.dtype != dtype:
            raise InputError(
                "A, its moments and step_out must be contiguous, of one shape and dtype"
            )
    x, coef = x.to(dtype).contiguous(), coef.to(dtype).contiguous()
    arrays = (a.numpy() for a in (x, coef, A, exp_avg, exp_avg_sq, step_out))
    _threads(E, A.numel())
    xs, cs, a, m, v, d = arrays
    za, gram = _sum_outputs(E, r, np_dtype, features_out, gram_out)
    lanes = vector_lanes(dtype)
    b2s = np_dtype.type(bc2s)
    _outer_kernel(xs, E // S, cs, a, m, v, d, ss, keep, c, b2s, lanes, mode, za, gram)


def toy_trajectories(
    x: torch.Tensor,
    A0: torch.Tensor,
    b0: torch.Tensor,
    R: torch.Tensor,
    scale: torch.Tensor,
    eta_a: torch.Tensor,
    eta_b: torch.Tensor,
    *,
    steps: int,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    decoupled: bool,
    bound: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam/AdamW on the rank-1, one-output, single-sample toy, every configuration × seed, every
    step: the same arithmetic as the simulator's step by step path (:func:`adam_outer_step` for
    ``A``, torch's fused kernel for ``b``), bit for bit, with each entry's state kept in cache.

    Shapes (``S`` seeds, ``C`` configurations, ``E = S·C`` entries, seed-major): ``x``, ``A0``
    ``(S, n)``; ``b0``, ``R`` ``(S,)``; ``scale``, ``eta_a``, ``eta_b`` ``(C,)``; float64.
    Returns ``Z_A = A·x`` and ``b`` ``(steps + 1, S, C)`` and the Gram matrix of ``[A; ΔA]`` as
    ``(A·A, A·ΔA, ΔA·ΔA)`` ``(steps + 1, S, C, 3)``, NaN after an entry's loss passes ``bound``.
    """
    S, n = x.shape
    C = eta_a.shape[0]
    E = S * C
    f64 = torch.float64
    if x.dtype != f64 or A0.shape != (S, n) or b0.shape != (S,) or R.shape != (S,):
        raise InputError("x, A0 (S, n), b0, R (S,) in float64")
    beta1, beta2 = betas
    t = np.arange(1, steps + 1, dtype=np.float64)
    bc1 = 1.0 - np.array([beta1**k for k in t])  # each as torch's kernel forms it
    bc2s = np.array([(1.0 - beta2**k) ** 0.5 for k in t])
    rate_a = np.broadcast_to(eta_a.to(f64).numpy(), (S, C)).reshape(E)
    rate_b = np.broadcast_to(eta_b.to(f64).numpy(), (S, C)).reshape(E)
    ss_a = -(rate_a[:, None] / bc1[None, :])
    ss_b = -(rate_b[:, None] / bc1[None, :])
    keep_a, keep_b = 1.0 - rate_a * weight_decay, 1.0 - rate_b * weight_decay
    c = _constants(betas, eps, weight_decay, np.dtype(np.float64))
    mode = NO_DECAY if not weight_decay else (DECOUPLED_DECAY if decoupled else L2_DECAY)
    s_e = np.broadcast_to(scale.to(f64).numpy(), (S, C)).reshape(E).copy()
    b_e = np.repeat(b0.numpy(), C)
    r_e = np.repeat(R.numpy(), C)
    za = np.empty((steps + 1, E))
    bt = np.empty((steps + 1, E))
    gram = np.empty((steps + 1, E, 3))
    _threads(E, E * n)
    xs, a0 = x.contiguous().numpy(), A0.to(f64).contiguous().numpy()
    lanes = vector_lanes(f64)
    work = np.empty((numba.config.NUMBA_NUM_THREADS, 4, n))  # per thread, reused by its entries
    out = (za, bt, gram, work)
    _toy_kernel(
        xs, C, a0, b_e, r_e, s_e, ss_a, keep_a, ss_b, keep_b, c, bc2s, lanes, mode, bound, out
    )
    T1 = steps + 1
    return (
        torch.from_numpy(za).view(T1, S, C),
        torch.from_numpy(bt).view(T1, S, C),
        torch.from_numpy(gram).view(T1, S, C, 3),
    )
