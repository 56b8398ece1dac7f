"""The batched toy simulator: many rate configurations × seeds of one width, in one set of tensors.

Shapes (``C`` configurations, ``S`` seeds, ``N`` samples, width ``n``, ``m`` outputs, rank ``r``)::

    X  (S, N, n)    R = y − W*x  (S, N, m)    A0  (S, r, n)    B0  (S, m, r)

and the state ``A``, ``B`` holds one copy per configuration × seed.

Forward ``Z_A = X Aᵀ``, ``Z_B = s·Z_A Bᵀ``, residual ``U = Z_B − R`` (``= f − y``), loss
``(1/N) Σ ½‖U‖²``. Gradients ``∂L/∂B = (s/N)·Uᵀ Z_A`` and ``∂L/∂A = (s/N)·(U B)ᵀ X``.

After each step ``t`` it records the feature-update decomposition on the training inputs
(DESIGN.md §1), ``ΔZ_B = δ¹ + δ² + δ³`` with ``δ¹ = s·B_{t−1}ΔZ_A``, ``δ² = s·ΔB Z_A^{t−1}``,
``δ³ = s·ΔB ΔZ_A``, as mean absolute values over samples and outputs, and the weight change
``ΔW_t = s(B_t A_t − B_0 A_0)`` (Frobenius and spectral norms, and the per-step change).

Three paths, one arithmetic for the statistics:

- several samples: the width-sized products are one GEMM per seed over all configurations and
  the optimizers torch's (fused Adam/AdamW) kernels, one step at a time;
- one sample: ``∂L/∂A`` is an outer product; Adam/AdamW run the compiled kernel of
  :mod:`loraplus_lab.sims.toy.kernels`, which also sums ``Z_A`` and the Gram matrix of ``[A; ΔA]``;
- the paper's toy (one sample, rank 1, one output) with Adam/AdamW: the kernel runs every step of
  each configuration with its state in cache and records ``Z_A``, ``b`` and the Gram matrices;
  the statistics of all steps are then computed at once, bit-identical to the step-by-step path
  (which ``on_step`` hooks, a test set or a mixed initialisation force).

Same inputs, same bits. With one sample each configuration's sums run in a fixed order, so its
result does not depend on the batch around it or on the thread count. With several, a BLAS may
sum in a different order for a different batch shape, so a configuration run in a batch of
another composition agrees with it to round-off (~1e-14), not always bit for bit; the sweep
engine's jobs have fixed compositions, so their results are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from loraplus_lab.sims.toy import kernels, workspace
from loraplus_lab.sims.toy.optim import (
    KERNEL_OPTIMIZERS,
    OptimizerConfig,
    OptimizerState,
    apply_outer_update,
    apply_update,
    reset_entries,
)

#: Bump when the simulator's results change for the same configuration: stores of the sweep
#: engine then refuse to mix old results with new ones instead of silently doing so.
ENGINE_VERSION = 4  # 4: single-sample Adam/AdamW in the compiled kernel (round-off changes)

#: Every statistic recorded per configuration × seed × step.
STATS = (
    "loss",
    "test_loss",
    "delta1",
    "delta2",
    "delta3",
    "dzb",
    "za_mean_abs",
    "za_rms",
    "zb_mean_abs",
    "norm_a",
    "norm_b",
    "dw_fro",
    "dw_spec",
    "dw_step_fro",
)

DEFAULT_DIVERGENCE_BOUND = 1e8


def lowrank_norms(
    g_l: torch.Tensor, g_r: torch.Tensor, spectral: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frobenius and spectral norms of ``L R`` from its Gram matrices ``G_L = LᵀL``, ``G_R = RRᵀ``.

    ``‖LR‖_F² = Σ_ij (G_L)_ij (G_R)_ij`` and ``σ(LR)² = eig(G_R^{1/2} G_L G_R^{1/2})``: cost
    ``O(k²(m + n))`` for an inner dimension ``k``, without forming the ``m × n`` product. The
    ``k × k`` products are elementwise sums, so an entry's result does not depend on the batch it
    sits in. For ``k = 1`` the two norms coincide; ``spectral=False`` skips the eigenvalues (and
    returns ``None`` for them).
    """
    fro = (g_l * g_r).sum((-1, -2)).clamp_min(0).sqrt()
    if not spectral:
        return fro, None
    if g_l.shape[-1] == 1:
        return fro, fro
    evals, evecs = torch.linalg.eigh(g_r)
    c = evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)
    gc = (g_l.unsqueeze(-1) * c.unsqueeze(-3)).sum(-2)
    m = (c.transpose(-1, -2).unsqueeze(-1) * gc.unsqueeze(-3)).sum(-2)
    return fro, torch.linalg.eigvalsh(m).amax(-1).clamp_min(0).sqrt()


def _gram(P: torch.Tensor) -> torch.Tensor:
    return torch.matmul(P, P.transpose(-1, -2))


def _blocks(pp: torch.Tensor, pq: torch.Tensor, qq: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of ``[P; Q]`` from its blocks ``PPᵀ``, ``PQᵀ``, ``QQᵀ``."""
    top = torch.cat([pp, pq], -1)
    return torch.cat([top, torch.cat([pq.transpose(-1, -2), qq], -1)], -2)


def run_batch(
    X: torch.Tensor,
    R: torch.Tensor,
    A0: torch.Tensor,
    B0: torch.Tensor,
    scale: torch.Tensor,
    eta_a: torch.Tensor,
    eta_b: torch.Tensor,
    steps: int,
    opt: OptimizerConfig,
    *,
    divergence_bound: float = DEFAULT_DIVERGENCE_BOUND,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    X_test: torch.Tensor | None = None,
    R_test: torch.Tensor | None = None,
    keep_buffers: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Simulate ``C`` configurations × ``S`` seeds for ``steps`` steps.

    Args:
        X: inputs ``(S, N, n)``.
        R: residual targets ``y − W*x``, ``(S, N, m)``.
        A0: initial ``A``, ``(S, r, n)``.
        B0: initial ``B``, ``(S, m, r)``.
        scale: LoRA multiplier ``s`` per configuration, ``(C,)``.
        eta_a, eta_b: learning rates per configuration, ``(C,)``.
        steps: number of optimizer steps.
        opt: optimizer and its hyper-parameters.
        divergence_bound: a configuration diverges when its loss exceeds this or turns non-finite.
        X_test, R_test: optional held-out inputs ``(S, N_test, n)`` and residual targets
            ``(S, N_test, m)``; their loss is ``test_loss`` (NaN without them).
        on_step: called after each step with the step number and the signed tensors of that
            step (``A``, ``B``, ``Z_A``, ``Z_B``, ``delta1..3``, ``dZ_B``, and ``alive``, the
            ``(C, S)`` mask of configurations that have not diverged): tests of the
            decomposition hook in here. A hook forces the step-by-step path.
        keep_buffers: take the width-sized state from :mod:`loraplus_lab.sims.toy.workspace` and
        leave it
            there for the next run of the same shape (default: when there is no ``on_step``,
            which might hold on to the tensors it is given).
        on_progress: called with the number of steps just done (1 after each step, or all of
            them at once where the kernel runs whole runs): progress bars.

    Returns:
        ``{stat: array (steps + 1, C, S)}`` for every name in :data:`STATS`, plus
        ``diverged_step`` ``(C, S)`` (−1 where it never diverged). Rows at and after divergence
        are NaN; the configuration stops updating and the rest of the batch goes on.
    """
    C = eta_a.shape[0]
    S, N, n = X.shape
    m, r = B0.shape[-2], B0.shape[-1]
    dtype = X.dtype
    # Internal layout is seed-major, (S, C, ...): the two width-sized products (Z_A = X Aᵀ and
    # ∂L/∂A = G_Zᵀ X) are then one GEMM per seed over all configurations, X never copied.
    lr_a = eta_a.to(dtype).reshape(1, C, 1, 1)
    lr_b = eta_b.to(dtype).reshape(1, C, 1, 1)
    s = scale.to(dtype).reshape(1, C, 1, 1)
    A0e = A0.unsqueeze(1)  # (S, 1, r, n)
    B0e = B0.unsqueeze(1)  # (S, 1, m, r)
    Rb = R.unsqueeze(1)  # (S, 1, N, m)
    Xt = X.transpose(-1, -2)  # (S, n, N)
    # ΔW_t = s(B_t A_t − B0 A0) is s·B_t A_t when B0 A0 = 0 (both Init[A] and Init[B]); else it
    # is s[B − B0, B0][A; A − A0], factors that do not cancel, with A − A0 kept in D0.
    mixed = bool(A0.abs().amax() > 0) and bool(B0.abs().amax() > 0)
    # The paper's toy (one sample, rank 1, one output) with Adam/AdamW runs every step of each
    # configuration in the compiled kernel, its state in cache, and records Z_A, b and the Gram
    # matrix of [A; ΔA] per step: the statistics below then come from those, with the same
    # arithmetic as the step-by-step path (bit for bit). Hooks that want the tensors of each step,
    # a test set and a mixed initialisation take the step-by-step path.
    whole = (
        N == 1
        and r == 1
        and m == 1
        and opt.name in KERNEL_OPTIMIZERS
        and dtype == torch.float64
        and on_step is None
        and X_test is None
        and not mixed
    )
    pooled = not whole and (on_step is None if keep_buffers is None else keep_buffers)
    if whole:
        za_run, b_run, gram_run = kernels.toy_trajectories(
            X[:, 0, :],
            A0[:, 0, :],
            B0[:, 0, 0],
            R[:, 0, 0],
            scale,
            eta_a,
            eta_b,
            steps=steps,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            decoupled=opt.name == "adamw",
            bound=divergence_bound,
        )
        AD = A = dA = D0 = grad_a = None
        B = b_run[0].view(S, C, 1, 1)
    else:
        # A and the step ΔA the optimizer takes sit side by side, [A; ΔA] per entry, so that one
        # batched product gives every Gram matrix the statistics need (‖A‖, ΔW_t and its
        # change). All the A come first and all the ΔA after them: A is one contiguous matrix
        # per seed for the GEMMs, and for r = 1 the pair (A, ΔA) of an entry is a 2 × n matrix
        # with evenly strided rows, so one batched product gives all the Gram matrices. The
        # width-sized state comes from the workspace (kept between runs of one shape).
        shape = (2, S, C, r, n)
        AD = workspace.take(shape, dtype) if pooled else torch.empty(shape, dtype=dtype)
        A, dA = AD[0], AD[1]
        A.copy_(A0e.expand(S, C, r, n))  # never a view of A0
        dA.zero_()
        B = torch.empty(S, C, m, r, dtype=dtype).copy_(B0e.expand(S, C, m, r))
        D0 = torch.empty_like(A) if mixed else None
        grad_a = torch.empty_like(A) if N > 1 else None
        grad_b = torch.empty_like(B)
    state = OptimizerState()
    if pooled and opt.name in KERNEL_OPTIMIZERS:  # A's moments, zero
        state.set_moments("A", *(workspace.take(A.shape, dtype).zero_() for _ in "mv"))
    out = {k: np.full((steps + 1, C, S), np.nan) for k in STATS}
    diverged_step = np.full((C, S), -1, dtype=np.int64)
    alive = torch.ones(S, C, dtype=torch.bool)

    def project(inputs_t: torch.Tensor) -> torch.Tensor:
        """``X Aᵀ`` for inputs ``Xᵀ`` ``(S, n, K)``: ``(S, C, K, r)``, one GEMM per seed."""
        k = inputs_t.shape[-1]
        return torch.bmm(A.view(S, C * r, n), inputs_t).view(S, C, r, k).transpose(-1, -2)

    # For a single sample with Adam/AdamW the update kernel also returns the new features
    # Z_A = A x and (r = 1) the Gram matrix of [A; ΔA], summed while each row is in cache; the
    # initial ones are summed in the same order, so that Z_A does not move where A does not.
    fused = N == 1 and opt.name in KERNEL_OPTIMIZERS and not whole
    za_k = torch.empty(S, C, r, dtype=dtype) if fused else None
    gram_k = torch.empty(S, C, 3, dtype=dtype) if fused and r == 1 else None
    if whole:
        gram_k = gram_run[0]
    if fused:
        E = S * C
        g0 = None if gram_k is None else gram_k.view(E, 3)
        kernels.row_sums(X[:, 0, :], A.view(E, r, n), dA.view(E, r, n), za_k.view(E, r), g0)

    def gram_ad() -> torch.Tensor:
        """The Gram matrix of ``[A; ΔA]`` per entry, ``(S, C, 2r, 2r)``."""
        if gram_k is not None:
            return gram_k[..., [0, 1, 1, 2]].view(*gram_k.shape[:-1], 2, 2)
        if r == 1:  # one product over the S·C matrices (A; ΔA), 2 × n with row stride S·C·n
            q = AD.view(2, S * C, n).transpose(0, 1)
            return torch.bmm(q, q.transpose(-1, -2)).view(S, C, 2, 2)
        At = A.transpose(-1, -2)
        return _blocks(torch.matmul(A, At), torch.matmul(dA, At).transpose(-1, -2), _gram(dA))

    def features(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        za = za_k.unsqueeze(-2).clone() if fused else project(Xt)  # (S, C, N, r)
        zb = s * torch.matmul(za, B.transpose(-1, -2))  # (S, C, N, m)
        return za, zb

    def commit(t0: int, rows: dict[str, torch.Tensor]) -> None:
        """Store the statistics of steps ``t0, t0 + 1, ...`` (leading dimension of each tensor):
        a configuration diverges at the first step where a statistic is not finite or the loss
        exceeds the bound; its rows from there on are NaN and it is no longer ``alive``."""
        vals = torch.stack(list(rows.values()))  # (k, K, S, C): one check and one copy for all
        finite = torch.isfinite(vals).all(0) & (rows["loss"] <= divergence_bound)
        kept = torch.empty_like(finite)
        for i in range(finite.shape[0]):
            newly = alive & ~finite[i]
            if newly.any():
                diverged_step[newly.T.numpy()] = t0 + i
                alive.logical_and_(finite[i])
            kept[i] = alive
        arr = torch.where(kept, vals, torch.nan).numpy()
        for j, name in enumerate(rows):
            out[name][t0 : t0 + finite.shape[0]] = arr[j].transpose(0, 2, 1)

    def deltas(za, za_new, zb, zb_new, B_prev, B) -> tuple[dict, tuple]:
        """``δ¹ = s·B_prev ΔZ_A``, ``δ² = s·ΔB Z_A``, ``δ³ = s·ΔB ΔZ_A`` (signed) and their mean
        absolute values with that of ``ΔZ_B``, for states with any leading dimensions."""
        dza = za_new - za
        dB = B - B_prev
        d1 = s * torch.matmul(dza, B_prev.transpose(-1, -2))
        d2 = s * torch.matmul(za, dB.transpose(-1, -2))
        d3 = s * torch.matmul(dza, dB.transpose(-1, -2))
        stats = {
            "delta1": d1.abs().mean((-1, -2)),
            "delta2": d2.abs().mean((-1, -2)),
            "delta3": d3.abs().mean((-1, -2)),
            "dzb": (zb_new - zb).abs().mean((-1, -2)),
        }
        return stats, (d1, d2, d3)

    def test_loss(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        n_test = X_test.shape[1]
        za = project(X_test.transpose(-1, -2))
        u = s * torch.matmul(za, B.transpose(-1, -2)) - R_test.unsqueeze(1)
        return 0.5 * u.square().sum((-1, -2)) / n_test

    def measure(za, zb, u, A, B, B_prev=None, stepped=False) -> dict[str, torch.Tensor]:
        """The per-configuration statistics of the state ``A, B`` (features ``za``, ``zb``)."""
        loss = 0.5 * u.square().sum((-1, -2)) / N
        row = {
            "loss": loss,
            "za_mean_abs": za.abs().mean((-1, -2)),
            "za_rms": za.square().mean((-1, -2)).sqrt(),
            "zb_mean_abs": zb.abs().mean((-1, -2)),
            "norm_b": torch.linalg.vector_norm(B, dim=(-1, -2)),
        }
        # ΔW_t = s(B A − B0 A0) = s[B − B0, B0][A; A − A0]: factors that do not cancel, so the
        # Gram matrices keep full relative precision. Likewise s[ΔB, B_prev][A; ΔA] per step.
        g_ad = gram_ad()
        g_aa = g_ad[..., :r, :r]
        row["norm_a"] = torch.diagonal(g_aa, dim1=-2, dim2=-1).sum(-1).sqrt()
        if D0 is None:
            row["dw_fro"], row["dw_spec"] = lowrank_norms(s * s * _gram(B.transpose(-1, -2)), g_aa)
        else:
            torch.sub(A, A0e, out=D0)
            g_r = _blocks(g_aa, torch.matmul(D0, A.transpose(-1, -2)).transpose(-1, -2), _gram(D0))
            b0 = B0e.expand_as(B)
            L = s * torch.cat([B - b0, b0], -1)
            row["dw_fro"], row["dw_spec"] = lowrank_norms(L.transpose(-1, -2) @ L, g_r)
        if stepped:
            # ΔW_t − ΔW_{t−1} = s[ΔB, B_prev][A; ΔA] with ΔA the step the optimizer took
            L = s * torch.cat([B - B_prev, B_prev], -1)
            row["dw_step_fro"] = lowrank_norms(L.transpose(-1, -2) @ L, g_ad, spectral=False)[0]
        else:
            row["dw_step_fro"] = torch.zeros_like(loss)
        if X_test is not None:
            row["test_loss"] = test_loss(A, B)
        return row

    def advance(t: int, u: torch.Tensor, za: torch.Tensor, B: torch.Tensor) -> tuple:
        """One optimizer step of A and B (in place) from the residual ``u`` and features ``za``
        of the current state; returns ``B`` before the step and the new features."""
        g = u / N  # ∂L/∂Z_B, (S, C, N, m)
        torch.mul(s, torch.matmul(g.transpose(-1, -2), za), out=grad_b)  # (S, C, m, r)
        g_za = s * torch.matmul(g, B)  # ∂L/∂Z_A, (S, C, N, r)
        B_prev = B.clone()
        state.step = t
        if N == 1:  # ∂L/∂A is an outer product, formed inside the update (never stored)
            apply_outer_update(
                opt,
                state,
                "A",
                A,
                g_za[:, :, 0, :],
                X[:, 0, :],
                lr_a,
                step_out=dA,
                features_out=za_k,
                gram_out=gram_k,
            )
        else:
            torch.bmm(g_za.transpose(-1, -2).reshape(S, C * r, N), X, out=grad_a.view(S, C * r, n))
            apply_update(opt, state, "A", A, grad_a, lr_a, step_out=dA)
        apply_update(opt, state, "B", B, grad_b, lr_b)
        za_new, zb_new = features(A, B)
        return B_prev, za_new, zb_new

    if whole:
        # every step at once: Z_A, b and the Gram matrices per step come from the kernel
        T1 = steps + 1
        za_all = za_run.view(T1, S, C, 1, 1)
        b_all = b_run.view(T1, S, C, 1, 1)
        zb_all = s * torch.matmul(za_all, b_all.transpose(-1, -2))
        u_all = zb_all - Rb
        gram_k = gram_run[0]
        row0 = measure(za_all[0], zb_all[0], u_all[0], None, b_all[0])
        commit(0, {k: v.unsqueeze(0) for k, v in row0.items()})
        gram_k = gram_run[1:]
        rows = measure(za_all[1:], zb_all[1:], u_all[1:], None, b_all[1:], b_all[:-1], True)
        rows |= deltas(za_all[:-1], za_all[1:], zb_all[:-1], zb_all[1:], b_all[:-1], b_all[1:])[0]
        commit(1, rows)
        if on_progress is not None:
            on_progress(steps)
    else:
        za, zb = features(A, B)
        u = zb - Rb
        commit(0, {k: v.unsqueeze(0) for k, v in measure(za, zb, u, A, B).items()})
        for t in range(1, steps + 1):
            B_prev, za_new, zb_new = advance(t, u, za, B)
            u = zb_new - Rb
            row = measure(za_new, zb_new, u, A, B, B_prev, stepped=True)
            stats, (d1, d2, d3) = deltas(za, za_new, zb, zb_new, B_prev, B)
            row |= stats
            commit(t, {k: v.unsqueeze(0) for k, v in row.items()})
            if not alive.all():
                # Hold diverged configurations at zero so that no inf/NaN arithmetic goes on.
                dead = (~alive).reshape(S, C, 1, 1)
                A.masked_fill_(dead, 0.0)
                B.masked_fill_(dead, 0.0)
                reset_entries(state, ~alive)
                # their features are now exactly zero (A = B = 0)
                za_new = za_new.masked_fill(dead, 0.0)
                zb_new = zb_new.masked_fill(dead, 0.0)
                u = (zb_new - Rb).masked_fill_(dead, 0.0)
            if on_progress is not None:
                on_progress(1)
            if on_step is not None:
                on_step(
                    t,
                    {
                        k: v.transpose(0, 1)
                        for k, v in {
                            "A": A,
                            "B": B,
                            "Z_A": za_new,
                            "Z_B": zb_new,
                            "delta1": d1,
                            "delta2": d2,
                            "delta3": d3,
                            "dZ_B": zb_new - zb,
                            "alive": alive.clone(),
                        }.items()
                    },
                )
            za, zb = za_new, zb_new
    if pooled:
        workspace.give_back(AD, *state.moment_tensors("A"))
    result = dict(out)
    result["diverged_step"] = diverged_step
    return result
