"""The n-dimensional toy simulator: decomposition identity, torch.optim parity, determinism,
divergence handling and input validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import torch_optim_reference

from loraplus_lab.sims.params import Parametrization, preset
from loraplus_lab.sims.toy import STATS, ToyProblem, simulate, simulate_batch
from loraplus_lab.sims.toy.engine import run_batch
from loraplus_lab.sims.toy.optim import OptimizerConfig, OptimizerState, apply_update
from loraplus_lab.sims.toy.simulate import _stack

OPTS = ["gd", "signgd", "adam", "adamw"]


def _general(init: str, seed: int = 0) -> ToyProblem:
    return ToyProblem.general(48, seed, rank=3, outputs=5, samples=4, init=init, alpha=2.0)


def _delta_formulas(X, scale, A_prev, B_prev, A, B) -> tuple[np.ndarray, ...]:
    """``δ¹ = s·ΔZ_A B_prevᵀ``, ``δ² = s·Z_A^prev ΔBᵀ``, ``δ³ = s·ΔZ_A ΔBᵀ`` and ``ΔZ_B`` of a
    step from the factors before and after it, in numpy (independent of the simulator's torch
    arithmetic). ``X`` ``(S, N, n)``; ``A`` ``(C, S, r, n)``; ``B`` ``(C, S, m, r)``."""
    X, A_prev, B_prev, A, B = (np.asarray(v, dtype=np.float64) for v in (X, A_prev, B_prev, A, B))
    za_prev = np.einsum("skn,csrn->cskr", X, A_prev)
    za = np.einsum("skn,csrn->cskr", X, A)
    dza, dB = za - za_prev, B - B_prev
    d1 = scale * np.einsum("cskr,csmr->cskm", dza, B_prev)
    d2 = scale * np.einsum("cskr,csmr->cskm", za_prev, dB)
    d3 = scale * np.einsum("cskr,csmr->cskm", dza, dB)
    dzb = scale * (
        np.einsum("cskr,csmr->cskm", za, B) - np.einsum("cskr,csmr->cskm", za_prev, B_prev)
    )
    return d1, d2, d3, dzb


KINDS = ["paper", "single-sample", "general", "general-m=n"]


@pytest.mark.parametrize("optimizer", OPTS)
@pytest.mark.parametrize("init", ["A", "B"])
@pytest.mark.parametrize("kind", KINDS)
def test_delta_decomposition_each_term_and_identity(optimizer: str, init: str, kind: str) -> None:
    """Each of δ¹, δ², δ³ equals its own formula (A moved with B held, B moved with A held, the
    cross term), entry by entry and signed, recomputed in numpy from the factors before and after
    the step; and ΔZ_B = δ¹ + δ² + δ³ to round-off. One sample with Adam/AdamW runs the compiled
    kernel (rank 1 for the paper's toy, rank 3 for "single-sample")."""
    if kind == "paper":
        prob = ToyProblem.paper(256, 3, init=init)
    elif kind == "single-sample":
        prob = ToyProblem.general(64, 2, rank=3, outputs=2, samples=1, init=init, alpha=2.0)
    elif kind == "general":
        prob = _general(init)
    else:
        prob = ToyProblem.general(32, 1, rank=2, outputs="n", samples=3, init=init)
    X, R, A0, B0 = _stack([prob, prob], torch.float64)
    eta = torch.tensor([1e-3, 3e-2, 0.1], dtype=torch.float64)
    C = len(eta)
    prev = {"A": A0.expand(C, *A0.shape).numpy(), "B": B0.expand(C, *B0.shape).numpy()}
    worst: dict[str, list[float]] = {k: [] for k in ("delta1", "delta2", "delta3", "sum")}
    cross = []

    def check(t: int, st: dict[str, torch.Tensor]) -> None:
        alive = st["alive"].numpy()
        assert alive[0].all()  # the smallest rate never diverges
        A, B = st["A"].numpy().copy(), st["B"].numpy().copy()
        d1, d2, d3, dzb = _delta_formulas(X, prob.scale, prev["A"], prev["B"], A, B)
        size = np.abs(dzb)[alive].max()
        for name, formula in (("delta1", d1), ("delta2", d2), ("delta3", d3)):
            err = np.abs(st[name].numpy() - formula)[alive].max()
            worst[name].append(err / max(size, 1e-300))
        total = (st["delta1"] + st["delta2"] + st["delta3"]).numpy()
        worst["sum"].append(np.abs(total - st["dZ_B"].numpy())[alive].max() / max(size, 1e-300))
        cross.append(np.abs(d3)[alive].max() / max(size, 1e-300))
        prev["A"], prev["B"] = A, B

    run_batch(
        X,
        R,
        A0,
        B0,
        torch.full((C,), prob.scale, dtype=torch.float64),
        eta,
        eta * 4,
        6,
        OptimizerConfig(optimizer, weight_decay=0.01 if optimizer == "adamw" else 0.0),
        on_step=check,
    )
    assert all(len(v) == 6 for v in worst.values())
    for name, errs in worst.items():
        assert max(errs) < 1e-10, (name, max(errs))
    # the cross term matters here: a split that moved δ³ into δ¹ or δ² would be caught
    assert max(cross) > 1e-3, max(cross)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("init", ["A", "B"])
def test_whole_run_kernel_deltas_follow_torch_optim(optimizer: str, init: str) -> None:
    """The paper's toy without hooks runs every step in the compiled kernel and computes
    |δ¹|, |δ²|, |δ³| from its recorded features. They equal the formulas evaluated on a
    reference trajectory: autograd on ½(s·b·aᵀx − (y − W*x))² and torch.optim's fused
    Adam/AdamW, with a and b in two parameter groups at η_A and η_B."""
    width, steps, eta_a, eta_b, wd = 256, 6, 0.01, 0.05, 0.02 if optimizer == "adamw" else 0.0
    prob = ToyProblem.paper(width, 4, init=init)
    df = simulate(prob, eta_a=eta_a, eta_b=eta_b, steps=steps, optimizer=optimizer, weight_decay=wd)
    x = torch.from_numpy(prob.X[0].copy())
    target = float(prob.y[0, 0] - prob.W_star[0] @ prob.X[0])
    a = torch.nn.Parameter(torch.from_numpy(prob.A0[0].copy()))
    b = torch.nn.Parameter(torch.from_numpy(prob.B0[0].copy()))
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    opt = cls([{"params": [a], "lr": eta_a}, {"params": [b], "lr": eta_b}],
              weight_decay=wd, fused=True)  # fmt: skip
    z = [float(a.detach() @ x)]
    bs = [float(b.detach()[0])]
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (prob.scale * b[0] * (a @ x) - target) ** 2).backward()
        opt.step()
        z.append(float(a.detach() @ x))
        bs.append(float(b.detach()[0]))
    z, bs, s = np.array(z), np.array(bs), prob.scale
    dz, db = np.diff(z), np.diff(bs)
    expected = {
        "delta1": np.abs(s * bs[:-1] * dz),
        "delta2": np.abs(s * db * z[:-1]),
        "delta3": np.abs(s * db * dz),
    }
    assert expected["delta3"][1:].min() > 1e-3 * expected["delta1"][1:].max()  # it matters
    for name, want in expected.items():
        got = df[name].to_numpy()[1:]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * want.max(), err_msg=name)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("shape", [(2, 3, 17), (2, 1, 96)])  # entries of 102 and 192 elements
def test_adam_steps_equal_torch_optim_bit_for_bit(name: str, weight_decay: float, shape) -> None:
    """Every configuration of a batch equals torch.optim's fused Adam/AdamW bit for bit, and
    the default single-tensor path to within a few roundings; the returned step is the change.
    Entries of a whole number of vector chunks share one kernel call per rate, others not."""
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(7)]
    # five configurations, two of which share a rate (one fused call, two runs)
    lrs = [1e-3, 0.37, 2.0, 0.37, 0.37]
    cfg = OptimizerConfig(name, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    # all the learning rates in one batched tensor
    P = p0.expand(len(lrs), *p0.shape).clone()
    state = OptimizerState()
    lr = torch.tensor(lrs, dtype=torch.float64).reshape(len(lrs), 1, 1, 1)
    for t, g in enumerate(grads, start=1):
        state.step = t
        before = P.clone()
        step = apply_update(cfg, state, "p", P, g.expand_as(P), lr)
        assert torch.allclose(before + step, P, rtol=0, atol=1e-15)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    for i, lr_i in enumerate(lrs):
        kw = dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
        fused = torch_optim_reference(cls, lr_i, grads, p0, fused=True, **kw)
        assert torch.equal(P[i], fused), f"lr={lr_i}: max diff {(P[i] - fused).abs().max()}"
        single = torch_optim_reference(cls, lr_i, grads, p0, foreach=False, **kw)
        torch.testing.assert_close(P[i], single, rtol=1e-14, atol=1e-14)


def test_adam_step_buffer_is_the_exact_increment() -> None:
    """Without weight decay the kernel runs on a zeroed buffer: p + step is the fused update
    on p bit for bit, so the step recorded by the simulator is the one the kernel took."""
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(4, 1, 257, generator=gen, dtype=torch.float64)
    P, Q = p0.clone(), p0.clone()
    cfg, state = OptimizerConfig("adam"), OptimizerState()
    m, v = torch.zeros_like(Q), torch.zeros_like(Q)
    for t in range(1, 6):
        g = torch.randn(4, 1, 257, generator=gen, dtype=torch.float64) * 10.0 ** (-3 * t)
        state.step = t
        step = apply_update(cfg, state, "p", P, g, torch.full((4, 1, 1), 0.01, dtype=torch.float64))
        before = Q.clone()
        torch._fused_adam_(
            [Q],
            [g],
            [m],
            [v],
            [],
            [torch.tensor(float(t))],
            lr=0.01,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )
        assert torch.equal(P, Q)
        assert torch.equal(before + step, Q)


def test_gd_matches_torch_sgd() -> None:
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 9, generator=gen, dtype=torch.float64) for _ in range(4)]
    P = p0.clone().unsqueeze(0)
    cfg, state = OptimizerConfig("gd"), OptimizerState()
    for t, g in enumerate(grads, start=1):
        state.step = t
        apply_update(
            cfg,
            state,
            "p",
            P,
            g.unsqueeze(0),
            torch.tensor([0.3], dtype=torch.float64).reshape(1, 1, 1),
        )
    ref = torch_optim_reference(torch.optim.SGD, 0.3, grads, p0)
    torch.testing.assert_close(P[0], ref, rtol=1e-15, atol=1e-15)


def _autograd_reference(prob: ToyProblem, eta_a, eta_b, steps, optimizer, **kw) -> list[float]:
    """The toy trained the straightforward way: autograd and torch.optim."""
    X, y, W = (torch.tensor(a) for a in (prob.X, prob.y, prob.W_star))
    A = torch.nn.Parameter(torch.tensor(prob.A0))
    B = torch.nn.Parameter(torch.tensor(prob.B0))
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "gd": torch.optim.SGD}[optimizer]
    opt_a, opt_b = cls([A], lr=eta_a, **kw), cls([B], lr=eta_b, **kw)

    def loss_fn() -> torch.Tensor:
        f = X @ W.T + prob.scale * (X @ A.T) @ B.T
        return 0.5 * ((f - y) ** 2).sum() / X.shape[0]

    losses = [loss_fn().item()]
    for _ in range(steps):
        opt_a.zero_grad(), opt_b.zero_grad()
        loss_fn().backward()
        opt_a.step(), opt_b.step()
        losses.append(loss_fn().item())
    return losses


@pytest.mark.parametrize("optimizer", ["gd", "adam", "adamw"])
@pytest.mark.parametrize("init", ["A", "B"])
def test_trajectory_matches_autograd_and_torch_optim(optimizer: str, init: str) -> None:
    prob = _general(init, seed=2)
    kw = {"weight_decay": 0.1} if optimizer == "adamw" else {}
    df = simulate(prob, eta_a=0.02, eta_b=0.05, steps=8, optimizer=optimizer, **kw)
    ref = _autograd_reference(prob, 0.02, 0.05, 8, optimizer, **kw)
    np.testing.assert_allclose(df["loss"].to_numpy(), ref, rtol=1e-11)


def test_same_seed_same_dataframe_bit_for_bit() -> None:
    kw = dict(steps=3, optimizer="adam")
    params = [preset("lora"), preset("loraplus"), preset("lora", init="B").with_(name="lora-B")]
    a = simulate_batch([64, 256], params, [0, 1, 2], **kw)
    b = simulate_batch([64, 256], params, [0, 1, 2], **kw)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = simulate_batch([64, 256], params, [0, 1, 3], **kw)
    assert not a[list(STATS)].equals(c[list(STATS)])


def test_batch_equals_single_problem_runs() -> None:
    """A configuration inside the vectorised batch is bit-identical to its own run."""
    params = [preset("lora", eta=0.03), preset("loraplus", eta=0.03), preset("lora-fixed")]
    df = simulate_batch([128], params, [4, 5], steps=4, optimizer="adamw", weight_decay=0.01)
    for p in params:
        for seed in (4, 5):
            prob = ToyProblem.paper(128, seed)
            single = simulate(
                prob,
                eta_a=p.rate_a(128),
                eta_b=p.rate_b(128),
                steps=4,
                optimizer="adamw",
                weight_decay=0.01,
            )
            part = df[(df["param"] == p.name) & (df["seed"] == seed)].reset_index(drop=True)
            for k in STATS:
                np.testing.assert_array_equal(part[k].to_numpy(), single[k].to_numpy(), err_msg=k)


def test_draws_are_coupled_across_widths() -> None:
    small, big = ToyProblem.paper(64, 7), ToyProblem.paper(256, 7)
    np.testing.assert_array_equal(small.X, big.X[:, :64])
    # z0 = a0ᵀx = ξ‖x‖/√n with ξ drawn independently of the width
    xi = [p.A0[0] @ p.X[0] * np.sqrt(p.width) / np.linalg.norm(p.X[0]) for p in (small, big)]
    assert xi[0] == pytest.approx(xi[1], rel=1e-12)
    assert 0.5 <= abs(small.residual0().item()) <= 1.5
    assert small.residual0().item() == pytest.approx(big.residual0().item(), rel=1e-12)


def test_coupled_draws_keep_the_gaussian_distribution() -> None:
    """A0 of Init[A] is still N(0, 1/n) coordinate-wise, whatever the coupling."""
    n, seeds = 96, range(300)
    A = np.stack([ToyProblem.general(n, s, rank=2, samples=3).A0 for s in seeds]) * np.sqrt(n)
    flat = A.ravel()
    assert abs(flat.mean()) < 0.02 and abs(flat.var() - 1) < 0.03
    # the component along the data span is N(0, 1) too
    probs = [ToyProblem.paper(n, s) for s in seeds]
    xi = np.array([p.A0[0] @ p.X[0] * np.sqrt(n) / np.linalg.norm(p.X[0]) for p in probs])
    assert abs(xi.mean()) < 0.2 and abs(xi.var() - 1) < 0.25


def test_divergence_is_recorded_and_the_rest_goes_on() -> None:
    huge = Parametrization("huge", eta_a=1e6, eta_b=1e6, c_a=0, c_b=0)
    fine = preset("loraplus")
    with np.errstate(all="raise"):
        df = simulate_batch([64, 128], [huge, fine], [0, 1], steps=5, optimizer="gd")
    h = df[df["param"] == "huge"]
    assert h["diverged"].any()
    first = h[h["diverged"]].groupby(["width", "seed"])["step"].min()
    steps = h.groupby(["width", "seed"])["diverged_step"].first()
    assert (first == steps.loc[first.index]).all()
    assert h.loc[h["diverged"], list(STATS)].isna().all().all()
    ok = df[df["param"] == "loraplus"]
    recorded = [k for k in STATS if k != "test_loss"]  # no test set here
    assert not ok["diverged"].any() and ok.loc[ok["step"] >= 1, recorded].notna().all().all()
    alone = simulate_batch([64, 128], [fine], [0, 1], steps=5, optimizer="gd")
    np.testing.assert_array_equal(ok[list(STATS)].to_numpy(), alone[list(STATS)].to_numpy())


def test_exact_zeros_at_step_one() -> None:
    """Init[A]: B0 = 0 so A's gradient is exactly 0 at step 1 and δ¹_1 = δ³_1 = 0 exactly."""
    for opt in OPTS:
        df = simulate(
            ToyProblem.paper(128, 0, init="A"), eta_a=0.1, eta_b=0.1, steps=2, optimizer=opt
        )
        assert df.loc[1, "delta1"] == 0 and df.loc[1, "delta3"] == 0 and df.loc[1, "delta2"] > 0
        df = simulate(
            ToyProblem.paper(128, 0, init="B"), eta_a=0.1, eta_b=0.1, steps=2, optimizer=opt
        )
        assert df.loc[1, "delta2"] == 0 and df.loc[1, "delta3"] == 0 and df.loc[1, "delta1"] > 0


def test_weight_change_norms_match_dense() -> None:
    prob = _general("A", seed=3)
    X, R, A0, B0 = _stack([prob], torch.float64)
    seen = {}

    def grab(t, st):
        seen[t] = (st["A"].clone(), st["B"].clone())

    res = run_batch(
        X,
        R,
        A0,
        B0,
        torch.tensor([prob.scale], dtype=torch.float64),
        torch.tensor([0.05], dtype=torch.float64),
        torch.tensor([0.1], dtype=torch.float64),
        3,
        OptimizerConfig("adam"),
        on_step=grab,
    )
    A, B = seen[3]
    dW = prob.scale * (B[0, 0] @ A[0, 0] - torch.from_numpy(prob.B0 @ prob.A0))
    sv = torch.linalg.svdvals(dW)
    assert res["dw_fro"][3, 0, 0] == pytest.approx(float(sv.square().sum().sqrt()), rel=1e-12)
    assert res["dw_spec"][3, 0, 0] == pytest.approx(float(sv[0]), rel=1e-12)
    A2, B2 = seen[2]
    step = prob.scale * (B[0, 0] @ A[0, 0] - B2[0, 0] @ A2[0, 0])
    assert res["dw_step_fro"][3, 0, 0] == pytest.approx(float(torch.linalg.norm(step)), rel=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ToyProblem.paper(0, 0), "width"),
        (lambda: ToyProblem.paper(-4, 0), "width"),
        (lambda: ToyProblem.paper(8, 0, init="C"), "init"),
        (lambda: ToyProblem.general(4, 0, rank=5), "rank"),
        (lambda: ToyProblem.paper(8, -1), "seed"),
        (
            lambda: ToyProblem.from_arrays(
                np.ones((2, 4)), np.ones((3, 1)), np.ones((1, 4)), np.ones((1, 4)), np.ones((1, 1))
            ),
            "y has shape",
        ),
        (
            lambda: ToyProblem.from_arrays(
                np.ones((2, 4)), np.ones((2, 1)), np.ones((1, 4)), np.ones((1, 5)), np.ones((1, 1))
            ),
            "A0 has shape",
        ),
        (lambda: simulate(ToyProblem.paper(8, 0), eta_a=0, eta_b=1, steps=2), "eta_a"),
        (lambda: simulate(ToyProblem.paper(8, 0), eta_a=1, eta_b=-1, steps=2), "eta_b"),
        (lambda: simulate(ToyProblem.paper(8, 0), eta_a=1, eta_b=1, steps=0), "steps"),
        (
            lambda: simulate(ToyProblem.paper(8, 0), eta_a=1, eta_b=1, steps=1, optimizer="sgdm"),
            "optimizer",
        ),
        (lambda: simulate_batch([0, 8], [preset("lora")], [0], steps=1), "width"),
        (lambda: simulate_batch([8], [preset("lora")], [], steps=1), "seeds"),
        (lambda: Parametrization("x", 1, 1, "a", 0), "c_a"),
        (lambda: preset("nope"), "preset"),
    ],
)
def test_bad_input_raises_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_test_loss_on_held_out_samples() -> None:
    prob = ToyProblem.general(64, 3, rank=2, samples=6, noise=0.1, test_samples=5)
    assert prob.X_test.shape == (5, 64) and prob.y_test.shape == (5, 1)
    seen = {}
    df = simulate(prob, eta_a=0.01, eta_b=0.02, steps=3, on_step=lambda t, st: seen.update({t: st}))
    A, B = seen[3]["A"][0, 0].numpy(), seen[3]["B"][0, 0].numpy()
    f = prob.X_test @ (prob.W_star + prob.scale * B @ A).T
    expected = 0.5 * ((f - prob.y_test) ** 2).sum() / 5
    assert df.loc[3, "test_loss"] == pytest.approx(expected, rel=1e-12)
    assert df["test_loss"].notna().all()
    # same teacher: the held-out residual has the scale of the training one
    assert 0.1 < prob.residual0_test().std() / prob.residual0().std() < 10
    assert (
        simulate(ToyProblem.paper(64, 0), eta_a=0.1, eta_b=0.1, steps=1)["test_loss"].isna().all()
    )


def test_chunked_batches_agree_with_one_batch() -> None:
    """Configurations split into batches of at most ``chunk`` give the same rows (to round-off:
    only the composition of the batched products changes), in the same order."""
    params = [preset(name, eta=eta) for name in ("lora", "loraplus") for eta in (0.003, 0.03)]
    params = [p.with_(name=f"{p.name}-{i}") for i, p in enumerate(params)]
    params.append(preset("lora", init="B").with_(name="lora-B"))
    kw = dict(steps=4, problem="general", problem_options={"rank": 2, "samples": 3})
    one = simulate_batch([64, 128], params, [0, 1], **kw)
    parts = simulate_batch([64, 128], params, [0, 1], chunk=2, **kw)
    assert parts.attrs["config"]["chunk"] == 2
    cols = [c for c in one.columns if c not in STATS]
    pd.testing.assert_frame_equal(one[cols], parts[cols])
    np.testing.assert_allclose(
        parts[list(STATS)].to_numpy(), one[list(STATS)].to_numpy(), rtol=1e-12, atol=1e-14
    )
    with pytest.raises(ValueError, match="chunk"):
        simulate_batch([64], params, [0], steps=1, chunk=0)
