"""The batched toy simulator: many rate configurations × seeds of one width, in one set of tensors.

Shapes (``C`` configurations, ``S`` seeds, ``N`` samples, width ``n``, ``m`` outputs, rank ``r``)::

    X  (S, N, n)    R = y − W*x  (S, N, m)    A0  (S, r, n)    B0  (S, m, r)

and the state ``A``, ``B`` holds one copy per configuration × seed.

Forward ``Z_A = X Aᵀ``, ``Z_B = s·Z_A Bᵀ``, residual ``U = Z_B − R`` (``= f − y``), loss
``(1/N) Σ ½‖U‖²``. Gradients ``∂L/∂B = (s/N)·Uᵀ Z_A`` and ``∂L/∂A = (s/N)·(U B)ᵀ X``.

After each step ``t`` it records the feature-update decomposition on the training inputs
(``docs/lora.md``), ``ΔZ_B = δ¹ + δ² + δ³`` with ``δ¹ = s·B_{t−1}ΔZ_A``, ``δ² = s·ΔB Z_A^{t−1}``,
``δ³ = s·ΔB ΔZ_A``, as mean absolute values over samples and outputs, and the weight change
``ΔW_t = s(B_t A_t − B_0 A_0)`` (Frobenius and spectral norms, and the per-step change).

Map of the module::

    run_batch                    chooses a path, returns the statistics
    ├─ _Batch                    inputs in the seed-major layout (S, C, ...), the rows recorded,
    │                            the mask of live configurations, and the arithmetic every path
    │                            shares: measure (statistics of a state), deltas (δ¹, δ², δ³),
    │                            commit (store rows, mark divergence), gram_ad, project
    ├─ path 1  _run_trajectories the paper's toy (one sample, rank 1, one output), Adam/AdamW,
    │                            float64: kernels.toy_trajectories runs every step of each
    │                            configuration with its state in cache and returns Z_A, b and the
    │                            Gram matrices of [A; ΔA]; the statistics of all steps are then
    │                            computed at once
    └─ _StepByStep               one step at a time (every other case, and wherever on_step
       │                         hooks, a test set or a mixed initialisation need each step)
       ├─ path 2                 one sample: ∂L/∂A = g·xᵀ is formed inside the update;
       │                         Adam/AdamW run kernels.adam_outer_step (optim.apply_outer_update),
       │                         which also sums the new Z_A and the Gram matrix of [A; ΔA]
       └─ path 3                 several samples: ∂L/∂A is one GEMM per seed over all
                                 configurations, the update torch's fused Adam/AdamW kernel
                                 (optim.apply_update); GD and sign-GD are torch operations

The three paths share one arithmetic for the statistics (the methods of ``_Batch``), so path 1
is bit-identical to the step-by-step path on the same configurations; the three Adam
implementations behind them, and the tests that bind them bit for bit, are described in
:mod:`loraplus_lab.sims.toy.optim`.

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


class _Batch:
    """One batched run: its inputs in the internal seed-major layout ``(S, C, ...)``, the
    statistics recorded so far and which configurations are still alive. Its methods are the
    arithmetic every path shares (features, statistics, the δ decomposition, the divergence
    check), so that the paths agree bit for bit.

    The state ``A`` (with the step ``ΔA`` beside it in ``AD``), ``D0 = A − A0`` for a mixed
    initialisation, and the Gram matrices the compiled kernel returns (``gram_k``) are set by
    the path that runs.
    """

    def __init__(
        self,
        X: torch.Tensor,
        R: torch.Tensor,
        A0: torch.Tensor,
        B0: torch.Tensor,
        scale: torch.Tensor,
        eta_a: torch.Tensor,
        eta_b: torch.Tensor,
        steps: int,
        divergence_bound: float,
        X_test: torch.Tensor | None,
        R_test: torch.Tensor | None,
    ) -> None:
        self.C = C = eta_a.shape[0]
        self.S, self.N, self.n = X.shape
        self.m, self.r = B0.shape[-2], B0.shape[-1]
        dtype = self.dtype = X.dtype
        # Internal layout is seed-major, (S, C, ...): the two width-sized products (Z_A = X Aᵀ
        # and ∂L/∂A = G_Zᵀ X) are then one GEMM per seed over all configurations, X never
        # copied.
        self.lr_a = eta_a.to(dtype).reshape(1, C, 1, 1)
        self.lr_b = eta_b.to(dtype).reshape(1, C, 1, 1)
        self.s = scale.to(dtype).reshape(1, C, 1, 1)
        self.X, self.R, self.X_test, self.R_test = X, R, X_test, R_test
        self.scale, self.eta_a, self.eta_b = scale, eta_a, eta_b
        self.A0e = A0.unsqueeze(1)  # (S, 1, r, n)
        self.B0e = B0.unsqueeze(1)  # (S, 1, m, r)
        self.Rb = R.unsqueeze(1)  # (S, 1, N, m)
        self.Xt = X.transpose(-1, -2)  # (S, n, N)
        self.bound = divergence_bound
        self.out = {k: np.full((steps + 1, C, self.S), np.nan) for k in STATS}
        self.diverged_step = np.full((C, self.S), -1, dtype=np.int64)
        self.alive = torch.ones(self.S, C, dtype=torch.bool)
        self.AD: torch.Tensor | None = None
        self.A: torch.Tensor | None = None
        self.dA: torch.Tensor | None = None
        self.D0: torch.Tensor | None = None
        self.gram_k: torch.Tensor | None = None

    def project(self, inputs_t: torch.Tensor) -> torch.Tensor:
        """``X Aᵀ`` for inputs ``Xᵀ`` ``(S, n, K)``: ``(S, C, K, r)``, one GEMM per seed."""
        S, C, r, n = self.S, self.C, self.r, self.n
        k = inputs_t.shape[-1]
        return torch.bmm(self.A.view(S, C * r, n), inputs_t).view(S, C, r, k).transpose(-1, -2)

    def gram_ad(self) -> torch.Tensor:
        """The Gram matrix of ``[A; ΔA]`` per entry, ``(S, C, 2r, 2r)``."""
        gram_k, A, dA = self.gram_k, self.A, self.dA
        if gram_k is not None:
            return gram_k[..., [0, 1, 1, 2]].view(*gram_k.shape[:-1], 2, 2)
        if self.r == 1:  # one product over the S·C matrices (A; ΔA), 2 × n with row stride S·C·n
            q = self.AD.view(2, self.S * self.C, self.n).transpose(0, 1)
            return torch.bmm(q, q.transpose(-1, -2)).view(self.S, self.C, 2, 2)
        At = A.transpose(-1, -2)
        return _blocks(torch.matmul(A, At), torch.matmul(dA, At).transpose(-1, -2), _gram(dA))

    def commit(self, t0: int, rows: dict[str, torch.Tensor]) -> None:
        """Store the statistics of steps ``t0, t0 + 1, ...`` (leading dimension of each tensor):
        a configuration diverges at the first step where a statistic is not finite or the loss
        exceeds the bound; its rows from there on are NaN and it is no longer ``alive``."""
        alive = self.alive
        vals = torch.stack(list(rows.values()))  # (k, K, S, C): one check and one copy for all
        finite = torch.isfinite(vals).all(0) & (rows["loss"] <= self.bound)
        kept = torch.empty_like(finite)
        for i in range(finite.shape[0]):
            newly = alive & ~finite[i]
            if newly.any():
                self.diverged_step[newly.T.numpy()] = t0 + i
                alive.logical_and_(finite[i])
            kept[i] = alive
        arr = torch.where(kept, vals, torch.nan).numpy()
        for j, name in enumerate(rows):
            self.out[name][t0 : t0 + finite.shape[0]] = arr[j].transpose(0, 2, 1)

    def deltas(self, za, za_new, zb, zb_new, B_prev, B) -> tuple[dict, tuple]:
        """``δ¹ = s·B_prev ΔZ_A``, ``δ² = s·ΔB Z_A``, ``δ³ = s·ΔB ΔZ_A`` (signed) and their mean
        absolute values with that of ``ΔZ_B``, for states with any leading dimensions."""
        s = self.s
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

    def test_loss(self, B: torch.Tensor) -> torch.Tensor:
        """The loss of the state on the held-out inputs."""
        n_test = self.X_test.shape[1]
        za = self.project(self.X_test.transpose(-1, -2))
        u = self.s * torch.matmul(za, B.transpose(-1, -2)) - self.R_test.unsqueeze(1)
        return 0.5 * u.square().sum((-1, -2)) / n_test

    def measure(self, za, zb, u, A, B, B_prev=None, stepped=False) -> dict[str, torch.Tensor]:
        """The per-configuration statistics of the state ``A, B`` (features ``za``, ``zb``)."""
        s, r, D0 = self.s, self.r, self.D0
        loss = 0.5 * u.square().sum((-1, -2)) / self.N
        row = {
            "loss": loss,
            "za_mean_abs": za.abs().mean((-1, -2)),
            "za_rms": za.square().mean((-1, -2)).sqrt(),
            "zb_mean_abs": zb.abs().mean((-1, -2)),
            "norm_b": torch.linalg.vector_norm(B, dim=(-1, -2)),
        }
        # ΔW_t = s(B A − B0 A0) = s[B − B0, B0][A; A − A0]: factors that do not cancel, so the
        # Gram matrices keep full relative precision. Likewise s[ΔB, B_prev][A; ΔA] per step.
        g_ad = self.gram_ad()
        g_aa = g_ad[..., :r, :r]
        row["norm_a"] = torch.diagonal(g_aa, dim1=-2, dim2=-1).sum(-1).sqrt()
        if D0 is None:
            row["dw_fro"], row["dw_spec"] = lowrank_norms(s * s * _gram(B.transpose(-1, -2)), g_aa)
        else:
            torch.sub(A, self.A0e, out=D0)
            g_r = _blocks(g_aa, torch.matmul(D0, A.transpose(-1, -2)).transpose(-1, -2), _gram(D0))
            b0 = self.B0e.expand_as(B)
            L = s * torch.cat([B - b0, b0], -1)
            row["dw_fro"], row["dw_spec"] = lowrank_norms(L.transpose(-1, -2) @ L, g_r)
        if stepped:
            # ΔW_t − ΔW_{t−1} = s[ΔB, B_prev][A; ΔA] with ΔA the step the optimizer took
            L = s * torch.cat([B - B_prev, B_prev], -1)
            row["dw_step_fro"] = lowrank_norms(L.transpose(-1, -2) @ L, g_ad, spectral=False)[0]
        else:
            row["dw_step_fro"] = torch.zeros_like(loss)
        if self.X_test is not None:
            row["test_loss"] = self.test_loss(B)
        return row

    def result(self) -> dict[str, np.ndarray]:
        """The recorded statistics and ``diverged_step``."""
        result = dict(self.out)
        result["diverged_step"] = self.diverged_step
        return result


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
        keep_buffers: take the width-sized state from :mod:`loraplus_lab.sims.toy.workspace`
            and leave it there for the next run of the same shape (default: when there is no
            ``on_step``, which might hold on to the tensors it is given).
        on_progress: called with the number of steps just done (1 after each step, or all of
            them at once where the kernel runs whole runs): progress bars.

    Returns:
        ``{stat: array (steps + 1, C, S)}`` for every name in :data:`STATS`, plus
        ``diverged_step`` ``(C, S)`` (−1 where it never diverged). Rows at and after divergence
        are NaN; the configuration stops updating and the rest of the batch goes on.
    """
    batch = _Batch(X, R, A0, B0, scale, eta_a, eta_b, steps, divergence_bound, X_test, R_test)
    N, m, r = batch.N, batch.m, batch.r
    # ΔW_t = s(B_t A_t − B0 A0) is s·B_t A_t when B0 A0 = 0 (both Init[A] and Init[B]); else it
    # is s[B − B0, B0][A; A − A0], factors that do not cancel, with A − A0 kept in D0.
    mixed = bool(A0.abs().amax() > 0) and bool(B0.abs().amax() > 0)
    # Hooks that want the tensors of each step, a test set and a mixed initialisation take the
    # step-by-step path.
    whole = (
        N == 1
        and r == 1
        and m == 1
        and opt.name in KERNEL_OPTIMIZERS
        and X.dtype == torch.float64
        and on_step is None
        and X_test is None
        and not mixed
    )
    if whole:
        _run_trajectories(batch, A0, B0, steps, opt, on_progress)
    else:
        pooled = on_step is None if keep_buffers is None else keep_buffers
        _StepByStep(batch, opt, mixed, pooled).run(steps, on_step, on_progress)
    return batch.result()


def _run_trajectories(
    b: _Batch,
    A0: torch.Tensor,
    B0: torch.Tensor,
    steps: int,
    opt: OptimizerConfig,
    on_progress: Callable[[int], None] | None,
) -> None:
    """Path 1, the paper's toy (one sample, rank 1, one output) with Adam/AdamW in float64: the
    compiled kernel runs every step of each configuration with its state in cache and returns
    ``Z_A``, ``b`` and the Gram matrix of ``[A; ΔA]`` per step; the statistics of all steps are
    then computed at once, with the arithmetic of the step-by-step path (bit for bit)."""
    S, C = b.S, b.C
    za_run, b_run, gram_run = kernels.toy_trajectories(
        b.X[:, 0, :],
        A0[:, 0, :],
        B0[:, 0, 0],
        b.R[:, 0, 0],
        b.scale,
        b.eta_a,
        b.eta_b,
        steps=steps,
        betas=opt.betas,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        decoupled=opt.name == "adamw",
        bound=b.bound,
    )
    T1 = steps + 1
    za_all = za_run.view(T1, S, C, 1, 1)
    b_all = b_run.view(T1, S, C, 1, 1)
    zb_all = b.s * torch.matmul(za_all, b_all.transpose(-1, -2))
    u_all = zb_all - b.Rb
    b.gram_k = gram_run[0]
    row0 = b.measure(za_all[0], zb_all[0], u_all[0], None, b_all[0])
    b.commit(0, {k: v.unsqueeze(0) for k, v in row0.items()})
    b.gram_k = gram_run[1:]
    rows = b.measure(za_all[1:], zb_all[1:], u_all[1:], None, b_all[1:], b_all[:-1], True)
    rows |= b.deltas(za_all[:-1], za_all[1:], zb_all[:-1], zb_all[1:], b_all[:-1], b_all[1:])[0]
    b.commit(1, rows)
    if on_progress is not None:
        on_progress(steps)


class _StepByStep:
    """Paths 2 and 3, one optimizer step at a time, for every other shape, dtype and optimizer,
    and wherever ``on_step`` hooks, a test set or a mixed initialisation need the tensors of
    each step.

    ``A`` and the step ``ΔA`` the optimizer takes sit side by side, ``[A; ΔA]`` per entry, so
    that one batched product gives every Gram matrix the statistics need (``‖A‖``, ``ΔW_t`` and
    its change). All the ``A`` come first and all the ``ΔA`` after them: ``A`` is one contiguous
    matrix per seed for the GEMMs, and for ``r = 1`` the pair ``(A, ΔA)`` of an entry is a
    ``2 × n`` matrix with evenly strided rows. The width-sized state comes from the workspace
    (kept between runs of one shape) where ``pooled``.

    - Path 2, one sample: ``∂L/∂A`` is an outer product, formed inside the update; Adam/AdamW
      run the compiled kernel (:func:`~loraplus_lab.sims.toy.optim.apply_outer_update`), which
      also returns the new ``Z_A`` and, for ``r = 1``, the Gram matrix of ``[A; ΔA]``.
    - Path 3, several samples: ``∂L/∂A`` is one GEMM per seed over all configurations, and the
      update torch's fused kernel (:func:`~loraplus_lab.sims.toy.optim.apply_update`).
    """

    def __init__(self, b: _Batch, opt: OptimizerConfig, mixed: bool, pooled: bool) -> None:
        S, C, N, n, m, r, dtype = b.S, b.C, b.N, b.n, b.m, b.r, b.dtype
        self.b, self.opt, self.pooled = b, opt, pooled
        shape = (2, S, C, r, n)
        b.AD = workspace.take(shape, dtype) if pooled else torch.empty(shape, dtype=dtype)
        b.A, b.dA = b.AD[0], b.AD[1]
        b.A.copy_(b.A0e.expand(S, C, r, n))  # never a view of A0
        b.dA.zero_()
        self.B = torch.empty(S, C, m, r, dtype=dtype).copy_(b.B0e.expand(S, C, m, r))
        b.D0 = torch.empty_like(b.A) if mixed else None
        self.grad_a = torch.empty_like(b.A) if N > 1 else None
        self.grad_b = torch.empty_like(self.B)
        self.state = OptimizerState()
        if pooled and opt.name in KERNEL_OPTIMIZERS:  # A's moments, zero
            self.state.set_moments("A", *(workspace.take(b.A.shape, dtype).zero_() for _ in "mv"))
        # For a single sample with Adam/AdamW the update kernel also returns the new features
        # Z_A = A x and (r = 1) the Gram matrix of [A; ΔA], summed while each row is in cache;
        # the initial ones are summed in the same order, so that Z_A does not move where A
        # does not.
        self.fused = N == 1 and opt.name in KERNEL_OPTIMIZERS
        self.za_k = torch.empty(S, C, r, dtype=dtype) if self.fused else None
        b.gram_k = torch.empty(S, C, 3, dtype=dtype) if self.fused and r == 1 else None
        if self.fused:
            E = S * C
            g0 = None if b.gram_k is None else b.gram_k.view(E, 3)
            kernels.row_sums(
                b.X[:, 0, :], b.A.view(E, r, n), b.dA.view(E, r, n), self.za_k.view(E, r), g0
            )

    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``Z_A`` ``(S, C, N, r)`` and ``Z_B`` ``(S, C, N, m)`` of the current state."""
        b = self.b
        za = self.za_k.unsqueeze(-2).clone() if self.fused else b.project(b.Xt)
        zb = b.s * torch.matmul(za, self.B.transpose(-1, -2))
        return za, zb

    def advance(self, t: int, u: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
        """One optimizer step of ``A`` and ``B`` (in place) from the residual ``u`` and features
        ``za`` of the current state; returns ``B`` before the step."""
        b, opt, state, B = self.b, self.opt, self.state, self.B
        S, C, N, n, r, s = b.S, b.C, b.N, b.n, b.r, b.s
        g = u / N  # ∂L/∂Z_B, (S, C, N, m)
        torch.mul(s, torch.matmul(g.transpose(-1, -2), za), out=self.grad_b)  # (S, C, m, r)
        g_za = s * torch.matmul(g, B)  # ∂L/∂Z_A, (S, C, N, r)
        B_prev = B.clone()
        state.step = t
        if N == 1:  # path 2: ∂L/∂A is an outer product, formed inside the update
            apply_outer_update(
                opt, state, "A", b.A, g_za[:, :, 0, :], b.X[:, 0, :], b.lr_a, step_out=b.dA,
                features_out=self.za_k, gram_out=b.gram_k,
            )  # fmt: skip
        else:  # path 3: one GEMM per seed, torch's fused update
            grad_a = self.grad_a
            torch.bmm(
                g_za.transpose(-1, -2).reshape(S, C * r, N), b.X, out=grad_a.view(S, C * r, n)
            )
            apply_update(opt, state, "A", b.A, grad_a, b.lr_a, step_out=b.dA)
        apply_update(opt, state, "B", B, self.grad_b, b.lr_b)
        return B_prev

    def freeze_diverged(self, za: torch.Tensor, zb: torch.Tensor) -> tuple:
        """Hold diverged configurations at zero so that no inf/NaN arithmetic goes on; their
        features (and residuals) are then exactly zero."""
        b = self.b
        dead = (~b.alive).reshape(b.S, b.C, 1, 1)
        b.A.masked_fill_(dead, 0.0)
        self.B.masked_fill_(dead, 0.0)
        reset_entries(self.state, ~b.alive)
        za = za.masked_fill(dead, 0.0)
        zb = zb.masked_fill(dead, 0.0)
        return za, zb, (zb - b.Rb).masked_fill_(dead, 0.0)

    def run(
        self,
        steps: int,
        on_step: Callable[[int, dict[str, torch.Tensor]], None] | None,
        on_progress: Callable[[int], None] | None,
    ) -> None:
        """Record step 0, then take and record every step."""
        b, B = self.b, self.B
        za, zb = self.features()
        u = zb - b.Rb
        b.commit(0, {k: v.unsqueeze(0) for k, v in b.measure(za, zb, u, b.A, B).items()})
        for t in range(1, steps + 1):
            B_prev = self.advance(t, u, za)
            za_new, zb_new = self.features()
            u = zb_new - b.Rb
            row = b.measure(za_new, zb_new, u, b.A, B, B_prev, stepped=True)
            stats, (d1, d2, d3) = b.deltas(za, za_new, zb, zb_new, B_prev, B)
            row |= stats
            b.commit(t, {k: v.unsqueeze(0) for k, v in row.items()})
            if not b.alive.all():
                za_new, zb_new, u = self.freeze_diverged(za_new, zb_new)
            if on_progress is not None:
                on_progress(1)
            if on_step is not None:
                tensors = {
                    "A": b.A, "B": B, "Z_A": za_new, "Z_B": zb_new, "delta1": d1, "delta2": d2,
                    "delta3": d3, "dZ_B": zb_new - zb, "alive": b.alive.clone(),
                }  # fmt: skip
                on_step(t, {k: v.transpose(0, 1) for k, v in tensors.items()})
            za, zb = za_new, zb_new
        if self.pooled:
            workspace.give_back(b.AD, *self.state.moment_tensors("A"))
