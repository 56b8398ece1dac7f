"""The compiled single-sample Adam/AdamW kernel (loraplus_lab.sims.toy.kernels) against
torch.optim, its sums against the products they replace, and the workspace that keeps buffers
between runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import torch_optim_reference

from loraplus_lab.sims.params import preset
from loraplus_lab.sims.toy import ToyProblem, simulate, simulate_batch, workspace
from loraplus_lab.sims.toy.kernels import adam_outer_step, row_sums, vector_lanes


def _problem(S, C, r, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    E = S * C
    x = torch.randn(S, n, generator=gen, dtype=torch.float64).to(dtype)
    A0 = torch.randn(E, r, n, generator=gen, dtype=torch.float64).to(dtype)
    coefs = [torch.randn(E, r, generator=gen, dtype=torch.float64).to(dtype) for _ in range(6)]
    lr = torch.tensor([0.37 if e % 2 else 1e-3 * (e + 1) for e in range(E)], dtype=torch.float64)
    return x, A0, coefs, lr


def _run_kernel(x, A0, coefs, lr, name, wd, betas):
    A = A0.clone()
    m, v, step = torch.zeros_like(A), torch.zeros_like(A), torch.empty_like(A)
    for t, c in enumerate(coefs, start=1):
        before = A.clone()
        adam_outer_step(
            x, c, A, m, v, step, lr, step=t, betas=betas, eps=1e-6, weight_decay=wd,
            decoupled=name == "adamw",
        )  # fmt: skip
        if wd:  # the change, exactly
            assert torch.equal(A - before, step)
        else:  # the increment the kernel added, exactly
            assert torch.equal(before + step, A)
    return A


def _torch_reference(name, lr, grads, p0, wd, betas, **kw):
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return torch_optim_reference(cls, lr, grads, p0, betas=betas, eps=1e-6, weight_decay=wd, **kw)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.05])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.99)])  # lerp from either end
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [(2, 3, 1, 64), (1, 2, 2, 48)])  # S, C, r, n
def test_kernel_equals_torch_fused_adam_bit_for_bit(name, wd, betas, dtype, shape) -> None:
    """Each configuration of the batch, gradient coef·xᵀ, equals torch.optim's fused Adam/AdamW
    on that configuration alone bit for bit, and the default single-tensor path to round-off."""
    S, C, r, n = shape
    assert (r * n) % vector_lanes(dtype) == 0  # no scalar tail
    x, A0, coefs, lr = _problem(S, C, r, n, dtype)
    A = _run_kernel(x, A0, coefs, lr, name, wd, betas)
    tol = 1e-13 if dtype == torch.float64 else 2e-5
    for e in range(S * C):
        grads = [c[e].unsqueeze(-1) * x[e // C] for c in coefs]
        fused = _torch_reference(name, float(lr[e]), grads, A0[e], wd, betas, fused=True)
        assert torch.equal(A[e], fused), f"entry {e}: max diff {(A[e] - fused).abs().max()}"
        single = _torch_reference(name, float(lr[e]), grads, A0[e], wd, betas, foreach=False)
        torch.testing.assert_close(A[e], single, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_kernel_scalar_tail_within_a_few_ulps(name, wd) -> None:
    """Entries that end in a scalar tail (3 × 13 and 1 × 17 elements): after six steps every
    element within a few units in the last place of torch's fused kernel, nearly all exact."""
    exact = total = 0
    for S, C, r, n in [(1, 2, 3, 13), (2, 3, 1, 17)]:
        x, A0, coefs, lr = _problem(S, C, r, n, torch.float64, seed=1)
        A = _run_kernel(x, A0, coefs, lr, name, wd, (0.3, 0.99))
        for e in range(S * C):
            grads = [c[e].unsqueeze(-1) * x[e // C] for c in coefs]
            ref = _torch_reference(name, float(lr[e]), grads, A0[e], wd, (0.3, 0.99), fused=True)
            ulp = np.spacing(np.abs(ref.numpy()))
            assert (np.abs(A[e].numpy() - ref.numpy()) <= 4 * ulp).all()
            exact += int((A[e] == ref).sum())
            total += ref.numel()
    assert exact >= 0.95 * total


def test_kernel_sums_are_the_products_and_repeatable() -> None:
    """The features and Gram entries the kernel sums equal the products (to round-off), and
    :func:`row_sums` on the same state gives them bit for bit (so Z_A stays put where A does)."""
    S, C, r, n = 2, 3, 1, 1000
    x, A0, coefs, lr = _problem(S, C, r, n, torch.float64, seed=2)
    A = A0.clone()
    m, v, step = torch.zeros_like(A), torch.zeros_like(A), torch.empty_like(A)
    za, gram = (
        torch.empty(S * C, r, dtype=torch.float64),
        torch.empty(S * C, 3, dtype=torch.float64),
    )
    adam_outer_step(
        x, coefs[0], A, m, v, step, lr, step=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
        decoupled=False, features_out=za, gram_out=gram,
    )  # fmt: skip
    xe = x.repeat_interleave(C, 0)
    torch.testing.assert_close(za[:, 0], (A[:, 0] * xe).sum(-1), rtol=1e-13, atol=0)
    dots = [(A * A).sum((-1, -2)), (A * step).sum((-1, -2)), (step * step).sum((-1, -2))]
    torch.testing.assert_close(gram, torch.stack(dots, -1), rtol=1e-13, atol=0)
    za2, gram2 = torch.empty_like(za), torch.empty_like(gram)
    row_sums(x, A, step, za2, gram2)
    assert torch.equal(za, za2) and torch.equal(gram, gram2)


def test_kernel_rejects_inconsistent_shapes() -> None:
    x, A0, coefs, lr = _problem(2, 3, 1, 64, torch.float64)
    m = torch.zeros_like(A0)
    with pytest.raises(ValueError, match="shapes"):
        adam_outer_step(
            x[:, :32], coefs[0], A0, m, m.clone(), m.clone(), lr, step=1, betas=(0.9, 0.999),
            eps=1e-8, weight_decay=0.0, decoupled=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="contiguous"):
        adam_outer_step(
            x, coefs[0], A0, torch.zeros(6, 1, 128, dtype=A0.dtype)[..., ::2], m.clone(), m.clone(),
            lr, step=1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False,
        )  # fmt: skip


def test_results_do_not_depend_on_the_thread_count() -> None:
    """Each entry is summed by one thread in a fixed order: one or two threads, same bits."""
    params = [preset("lora", eta=0.01), preset("loraplus", eta=0.01)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = simulate_batch([4096], params, [0, 1], steps=4, progress=False)
        torch.set_num_threads(2)
        two = simulate_batch([4096], params, [0, 1], steps=4, progress=False)
    finally:
        torch.set_num_threads(before)
    assert one.equals(two)


def test_kept_buffers_give_the_same_results() -> None:
    """A run on buffers kept from an earlier run (undefined contents) equals a run on fresh
    ones, and a run whose on_step hook may keep the tensors takes nothing from the workspace."""
    prob = ToyProblem.general(512, 3, rank=2, outputs=1, samples=1)  # the step-by-step path
    workspace.clear()
    fresh = simulate(prob, eta_a=0.01, eta_b=0.02, steps=5)
    assert workspace.kept_bytes() > 0
    with torch.no_grad():  # scribble on the kept buffers
        for ts in workspace._kept.values():
            for t in ts:
                t.fill_(float("nan"))
    again = simulate(prob, eta_a=0.01, eta_b=0.02, steps=5)
    assert fresh.equals(again)
    kept = workspace.kept_bytes()
    hooked = simulate(prob, eta_a=0.01, eta_b=0.02, steps=5, on_step=lambda t, st: None)
    assert hooked.equals(fresh) and workspace.kept_bytes() == kept


@pytest.mark.parametrize(
    ("optimizer", "weight_decay", "init"),
    [("adam", 0.0, "A"), ("adamw", 0.01, "B"), ("adam", 0.05, "A")],
)
def test_whole_runs_equal_the_step_by_step_path(optimizer, weight_decay, init) -> None:
    """The paper toy's whole-run kernel gives the step-by-step path's DataFrame bit for bit
    (an on_step hook forces the step-by-step path), diverging configurations included."""
    rates = [(1e-3, 1e-2), (3e-3, 3e-2), (3.0, 30.0)]  # the last one diverges
    diverged = []
    for a, b in rates:
        prob = ToyProblem.paper(1024, 5, init=init)
        kw = dict(eta_a=a, eta_b=b, steps=12, optimizer=optimizer, weight_decay=weight_decay)
        whole = simulate(prob, divergence_bound=50.0, **kw)
        steps = simulate(prob, divergence_bound=50.0, on_step=lambda t, st: None, **kw)
        pd.testing.assert_frame_equal(whole, steps, check_exact=True)
        diverged.append(bool(whole["diverged"].any()))
    assert diverged == [False, False, True]


def test_workspace_keeps_at_most_its_limit(monkeypatch) -> None:
    monkeypatch.setattr(workspace, "LIMIT_BYTES", 3 * 8 * 1000)
    workspace.clear()
    a, b, c = (workspace.take((1000,), torch.float64) for _ in range(3))
    big = workspace.take((4000,), torch.float64)
    workspace.give_back(a, b, big)
    assert workspace.kept_bytes() == 2 * 8 * 1000  # big is over the limit
    workspace.give_back(c, workspace.take((500,), torch.float64))
    assert workspace.kept_bytes() <= 3 * 8 * 1000  # the oldest went first
    assert workspace.take((1000,), torch.float64).shape == (1000,)
    workspace.clear()
    assert workspace.kept_bytes() == 0


def test_float32_runs_agree_with_float64() -> None:
    """The kernel in float32 (step by step: the whole-run path is float64 only) tracks the
    float64 run to single-precision round-off."""
    params = [preset("lora", eta=0.01), preset("loraplus", eta=0.01)]
    kw = dict(steps=6, progress=False)
    f32 = simulate_batch([512], params, [0, 1], dtype="float32", **kw)
    f64 = simulate_batch([512], params, [0, 1], dtype="float64", **kw)
    for k in ("loss", "za_rms", "norm_a", "norm_b"):
        np.testing.assert_allclose(f32[k], f64[k], rtol=1e-4, err_msg=k)


def test_the_adam_map_names_tests_that_exist() -> None:
    """The module that documents the three Adam implementations names the tests that bind them;
    each of those tests exists."""
    import re
    from pathlib import Path

    from loraplus_lab.sims.toy import optim

    named = re.findall(r"(tests/\w+\.py)::\s*(\w+)", optim.__doc__)
    assert len(named) >= 4
    root = Path(__file__).resolve().parents[1]
    for path, name in named:
        assert f"def {name}(" in (root / path).read_text(), f"{path}::{name}"
