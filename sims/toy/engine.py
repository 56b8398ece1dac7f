"""The batched toy simulator: many rate configurations × seeds of one width, in one set of tensors.

Shapes (``C`` configurations, ``S`` seeds, ``N`` samples, width ``n``, ``m`` outputs, rank ``r``)::

    X  (S, N, n)    R = y − W*x  (S, N, m)    A  (C, S, r, n)    B  (C, S, m, r)

Forward ``Z_A = X Aᵀ``, ``Z_B = s·Z_A Bᵀ``, residual ``U = Z_B − R`` (``= f − y``), loss
``(1/N) Σ ½‖U‖²``. Gradients ``∂L/∂B = (s/N)·Uᵀ Z_A`` and ``∂L/∂A = (s/N)·(U B)ᵀ X``.

After each step ``t`` it records the feature-update decomposition on the training inputs
(DESIGN.md §1), ``ΔZ_B = δ¹ + δ² + δ³`` with ``δ¹ = s·B_{t−1}ΔZ_A``, ``δ² = s·ΔB Z_A^{t−1}``,
``δ³ = s·ΔB ΔZ_A``, as mean absolute values over samples and outputs, and the weight change
``ΔW_t = s(B_t A_t − B_0 A_0)`` (Frobenius and spectral norms, and the per-step change).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sims.toy.optim import OptimizerConfig, OptimizerState, apply_update, reset_entries

#: Every statistic recorded per configuration × seed × step.
STATS = (
    "loss",
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


def _lowrank_norms(L: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius and spectral norms of ``L @ R`` (inner dimension ``k``) without forming it.

    With ``Rᵀ = Q T`` (QR), ``L R = (L Tᵀ) Qᵀ`` has the singular values of the small ``L Tᵀ``;
    cost ``O(k²(m + n))``, backward stable.
    """
    k = L.shape[-1]
    t_r = torch.linalg.qr(R.transpose(-1, -2), mode="r").R
    M = L @ t_r.transpose(-1, -2)
    if M.shape[-2] > k:
        M = torch.linalg.qr(M, mode="r").R
    sv = torch.linalg.svdvals(M)
    return torch.linalg.vector_norm(sv, dim=-1), sv[..., 0]


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
        on_step: called after each step with the step number and the signed tensors of that
            step (``A``, ``B``, ``Z_A``, ``Z_B``, ``delta1..3``, ``dZ_B``, and ``alive``, the
            ``(C, S)`` mask of configurations that have not diverged): progress bars and
            tests of the decomposition hook in here.

    Returns:
        ``{stat: array (steps + 1, C, S)}`` for every name in :data:`STATS`, plus
        ``diverged_step`` ``(C, S)`` (−1 where it never diverged). Rows at and after divergence
        are NaN; the configuration stops updating and the rest of the batch goes on.
    """
    C = eta_a.shape[0]
    S, N, n = X.shape
    m, r = B0.shape[-2], B0.shape[-1]
    dtype = X.dtype
    lr_a = eta_a.to(dtype).reshape(C, 1, 1, 1)
    lr_b = eta_b.to(dtype).reshape(C, 1, 1, 1)
    s = scale.to(dtype).reshape(C, 1, 1, 1)
    A = A0.expand(C, S, r, n).clone()
    B = B0.expand(C, S, m, r).clone()
    state = OptimizerState()
    out = {k: np.full((steps + 1, C, S), np.nan) for k in STATS}
    diverged_step = np.full((C, S), -1, dtype=np.int64)
    alive = torch.ones(C, S, dtype=torch.bool)

    def features(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        za = torch.matmul(X, A.transpose(-1, -2))  # (C, S, N, r)
        zb = s * torch.matmul(za, B.transpose(-1, -2))  # (C, S, N, m)
        return za, zb

    def record(t: int, za, zb, u, A, B, A_prev=None, B_prev=None) -> torch.Tensor:
        loss = 0.5 * u.square().sum((-1, -2)) / N
        row = {
            "loss": loss,
            "za_mean_abs": za.abs().mean((-1, -2)),
            "za_rms": za.square().mean((-1, -2)).sqrt(),
            "zb_mean_abs": zb.abs().mean((-1, -2)),
            "norm_a": torch.linalg.vector_norm(A, dim=(-1, -2)),
            "norm_b": torch.linalg.vector_norm(B, dim=(-1, -2)),
        }
        # ΔW_t = s(B A − B0 A0) = s[(B − B0), B0][A; A − A0]: factors that do not cancel.
        b0 = B0.expand_as(B)
        a0 = A0.expand_as(A)
        fro, spec = _lowrank_norms(s * torch.cat([B - b0, b0], -1), torch.cat([A, A - a0], -2))
        row["dw_fro"], row["dw_spec"] = fro, spec
        if A_prev is not None:
            L = s * torch.cat([B - B_prev, B_prev], -1)
            row["dw_step_fro"] = _lowrank_norms(L, torch.cat([A, A - A_prev], -2))[0]
        else:
            row["dw_step_fro"] = torch.zeros_like(loss)
        finite = torch.isfinite(loss) & (loss <= divergence_bound)
        for v in row.values():
            finite &= torch.isfinite(v)
        ok = (finite & alive).numpy()
        for k, v in row.items():
            out[k][t] = np.where(ok, v.numpy(), np.nan)
        return finite

    za, zb = features(A, B)
    u = zb - R
    finite = record(0, za, zb, u, A, B)
    for t in range(1, steps + 1):
        g = u / N  # ∂L/∂Z_B
        grad_b = s * torch.matmul(g.transpose(-1, -2), za)  # (C, S, m, r)
        grad_a = torch.matmul((s * torch.matmul(g, B)).transpose(-1, -2), X)  # (C, S, r, n)
        A_prev, B_prev = A.clone(), B.clone()
        state.step = t
        apply_update(opt, state, "A", A, grad_a, lr_a)
        apply_update(opt, state, "B", B, grad_b, lr_b)
        za_new, zb_new = features(A, B)
        dza = za_new - za
        dB = B - B_prev
        d1 = s * torch.matmul(dza, B_prev.transpose(-1, -2))
        d2 = s * torch.matmul(za, dB.transpose(-1, -2))
        d3 = s * torch.matmul(dza, dB.transpose(-1, -2))
        u = zb_new - R
        finite = record(t, za_new, zb_new, u, A, B, A_prev, B_prev)
        deltas = {
            "delta1": d1.abs().mean((-1, -2)),
            "delta2": d2.abs().mean((-1, -2)),
            "delta3": d3.abs().mean((-1, -2)),
            "dzb": (zb_new - zb).abs().mean((-1, -2)),
        }
        for v in deltas.values():
            finite &= torch.isfinite(v)
        newly = alive & ~finite
        ok = (alive & finite).numpy()
        for k, v in deltas.items():
            out[k][t] = np.where(ok, v.numpy(), np.nan)
        if newly.any():
            diverged_step[newly.numpy()] = t
            alive &= finite
            for k in STATS:
                out[k][t][newly.numpy()] = np.nan
        if not alive.all():
            # Hold diverged configurations at zero so that no inf/NaN arithmetic goes on.
            dead = (~alive).reshape(C, S, 1, 1)
            A.masked_fill_(dead, 0.0)
            B.masked_fill_(dead, 0.0)
            reset_entries(state, ~alive)
            za_new, zb_new = features(A, B)
            u = (zb_new - R).masked_fill_(dead, 0.0)
        if on_step is not None:
            on_step(
                t,
                {
                    "A": A,
                    "B": B,
                    "Z_A": za_new,
                    "Z_B": zb_new,
                    "delta1": d1,
                    "delta2": d2,
                    "delta3": d3,
                    "dZ_B": zb_new - zb,
                    "alive": alive.clone(),
                },
            )
        za, zb = za_new, zb_new
    result = dict(out)
    result["diverged_step"] = diverged_step
    return result
