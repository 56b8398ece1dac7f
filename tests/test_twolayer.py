"""The two-layer pretrain-then-LoRA simulator: decomposition identity, gradients against
autograd, batch independence, determinism, learning, divergence handling and input checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from loraplus_lab.sims.params import Parametrization, preset
from loraplus_lab.sims.toy import STATS, simulate_batch
from loraplus_lab.sims.toy import twolayer as tl
from loraplus_lab.sims.toy.optim import OptimizerConfig
from loraplus_lab.sims.toy.twolayer import simulate_twolayer

SMALL = dict(samples=6, test_samples=10, input_dim=5, pretrain_steps=15, pretrain_samples=24)


def _fixed(name: str, eta_a: float, eta_b: float, init: str = "A", **kw) -> Parametrization:
    return Parametrization(name, eta_a, eta_b, 0, 0, init=init, **kw)


def _data(width: int, seeds: list[int], rank: int, init: str, **kw) -> tl.FinetuneData:
    opts = {"input_dim": 5, "samples": 6, "test_samples": 10, "pretrain_samples": 24} | kw
    datas = [tl.task_data(s, **opts) for s in seeds]
    nets = [tl.pretrain(width, s, d, steps=10) for s, d in zip(seeds, datas, strict=True)]
    return tl.finetune_data(nets, datas, seeds, rank=rank, init=init)


@pytest.mark.parametrize("optimizer", ["adam", "gd"])
@pytest.mark.parametrize("init", ["A", "B"])
@pytest.mark.parametrize("rank", [1, 3])
def test_delta_decomposition_identity(optimizer: str, init: str, rank: int) -> None:
    """ΔZ_B = δ¹ + δ² + δ³ entry by entry (signed) at every step, and the recorded means are
    the means of the hook's tensors."""
    data = _data(40, [0, 1], rank, init)
    eta = torch.tensor([1e-3, 1e-2, 5e-2], dtype=torch.float64)
    seen = {}
    worst = []

    def check(t: int, st: dict[str, torch.Tensor]) -> None:
        total = st["delta1"] + st["delta2"] + st["delta3"]
        dzb = st["dZ_B"]
        worst.append(float((total - dzb).abs().max() / dzb.abs().max()))
        seen[t] = {k: v.clone() for k, v in st.items()}

    res = tl.run_finetune(
        data,
        torch.full((3,), 0.7, dtype=torch.float64),
        eta / 8,
        eta,
        5,
        OptimizerConfig(optimizer),
        on_step=check,
    )
    assert len(worst) == 5 and max(worst) < 1e-12
    for t, st in seen.items():
        assert st["alive"].all()
        for k in ("delta1", "delta2", "delta3"):
            mean = st[k].abs().mean((-1, -2)).numpy()  # (C, S)
            np.testing.assert_allclose(res[k][t], mean, rtol=1e-12, atol=1e-300, err_msg=k)
        np.testing.assert_allclose(res["dzb"][t], st["dZ_B"].abs().mean((-1, -2)), rtol=1e-12)
    if init == "A":  # B0 = 0: A does not move at step 1, so δ¹ = δ³ = 0 exactly
        assert (seen[1]["delta1"] == 0).all() and (seen[1]["delta3"] == 0).all()


def _autograd_finetune(data: tl.FinetuneData, A, B, s: float):
    """Reference loss and gradients for one configuration × seed, by torch.autograd."""
    A = A.clone().requires_grad_(True)
    B = B.clone().requires_grad_(True)
    n = data.H1.shape[-1]
    za = data.H1[0] @ A.T
    h2 = torch.relu(data.P0[0] + s * za @ B.T)
    f = h2 @ data.w_out[0] / n
    loss = 0.5 * ((f - data.y[0]) ** 2).mean()
    loss.backward()
    return loss.detach(), A.grad, B.grad


@pytest.mark.parametrize("rank", [1, 3])
def test_finetune_gradients_match_autograd(rank: int) -> None:
    data = _data(48, [2], rank, "A")
    n = 48
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(rank, n, generator=gen, dtype=torch.float64) / n**0.5
    B = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    loss, ga, gb = tl.finetune_grads(
        data, A[None, None], B[None, None], torch.tensor([1.3], dtype=torch.float64)
    )
    ref_loss, ref_a, ref_b = _autograd_finetune(data, A, B, 1.3)
    assert float(loss[0, 0]) == pytest.approx(float(ref_loss), rel=1e-13)
    for got, ref in ((ga[0, 0], ref_a), (gb[0, 0], ref_b)):
        assert ref.abs().max() > 0
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-12


def test_pretrain_gradients_match_autograd() -> None:
    data = tl.task_data(3, input_dim=5, pretrain_samples=12)
    params = tl.init_student(24, 3, 5)
    X, y = torch.from_numpy(data.X_pre), torch.from_numpy(data.y1)
    loss, grads = tl.pretrain_grads(params, X, y)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    h1 = torch.relu(X @ leaves["W_in"].T)
    f = torch.relu(h1 @ leaves["W_h"].T) @ leaves["w_out"] / 24
    ref = 0.5 * ((f - y) ** 2).mean()
    ref.backward()
    assert float(loss) == pytest.approx(ref.item(), rel=1e-13)
    for k, v in leaves.items():
        assert float((grads[k] - v.grad).abs().max() / v.grad.abs().max()) < 1e-12, k


def test_batch_and_chunking_do_not_change_a_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration × seed inside the batch is bit-identical to its own run, however the
    batch is chunked."""
    params = [
        _fixed("a", 2e-3, 3e-2),
        _fixed("b", 1e-2, 1e-2, alpha=2.0),
        _fixed("c", 3e-4, 1e-1, init="B"),
        preset("loraplus", eta=1e-2, eta_b=5e-2, n0=32),
    ]
    kw = dict(steps=4, rank=2, **SMALL)
    whole = simulate_twolayer([32, 64], params, [5, 6, 7], **kw)
    monkeypatch.setattr(tl, "CHUNK_ELEMENTS", 1)  # one configuration × seed per chunk
    chunked = simulate_twolayer([32, 64], params, [5, 6, 7], **kw)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=True)
    monkeypatch.setattr(tl, "CHUNK_ELEMENTS", 1 << 30)
    for p in (params[0], params[2], params[3]):
        alone = simulate_twolayer([64], [p], [6], **kw)
        part = whole[(whole["param"] == p.name) & (whole["seed"] == 6) & (whole["width"] == 64)]
        for k in STATS:
            np.testing.assert_array_equal(part[k].to_numpy(), alone[k].to_numpy(), err_msg=k)


def test_same_seed_same_dataframe_bit_for_bit() -> None:
    params = [_fixed("a", 1e-3, 1e-2), _fixed("b", 1e-3, 1e-2, init="B")]
    a = simulate_twolayer([32], params, [0, 1], steps=3, **SMALL)
    tl.pretrained.cache_clear()  # pretrain again from scratch
    b = simulate_twolayer([32], params, [0, 1], steps=3, **SMALL)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a.attrs == b.attrs
    c = simulate_twolayer([32], params, [0, 2], steps=3, **SMALL)
    assert not a[list(STATS)].equals(c[list(STATS)])


def test_columns_match_simulate_batch_and_config_is_recorded() -> None:
    df = simulate_twolayer([16], [preset("loraplus")], [0], steps=2, **SMALL)
    ref = simulate_batch([16], [preset("loraplus")], [0], steps=2)
    assert list(df.columns) == list(ref.columns)
    assert len(df) == 3
    cfg = df.attrs["config"]
    assert cfg["model"] == "twolayer" and cfg["widths"] == [16] and cfg["pretrain_steps"] == 15
    assert cfg["parametrizations"][0]["name"] == "loraplus"
    assert [r["width"] for r in df.attrs["pretrain"]] == [16]
    assert df[["loss", "test_loss", "za_mean_abs", "norm_a", "norm_b"]].notna().all().all()
    assert df.loc[df["step"] >= 1, ["delta1", "delta2", "delta3", "dzb"]].notna().all().all()


def test_init_draws_are_prefix_stable_in_width() -> None:
    small, big = tl.init_student(16, 4, 5), tl.init_student(64, 4, 5)
    torch.testing.assert_close(small["W_in"], big["W_in"][:16], rtol=0, atol=0)
    torch.testing.assert_close(small["w_out"], big["w_out"][:16], rtol=0, atol=0)
    # W_h ~ N(0, 2/n): the leading block differs from the wider one only by the scale
    torch.testing.assert_close(small["W_h"] * 2, big["W_h"][:16, :16] * 4, rtol=1e-15, atol=0)


def test_pretraining_and_finetuning_lower_their_losses() -> None:
    kw = dict(samples=48, test_samples=64, pretrain_samples=64, pretrain_steps=60)
    data = tl.task_data(1, samples=48, test_samples=64, pretrain_samples=64)
    net = tl.pretrain(64, 1, data, steps=60)
    assert net.loss[-1] < 0.05 * net.loss[0]
    X = torch.from_numpy(data.X_pre)
    task1 = 0.5 * float(((net(X) - torch.from_numpy(data.y1)) ** 2).mean())
    assert task1 == pytest.approx(net.loss[-1], rel=1e-12)
    good, tiny = _fixed("good", 2.0**-5, 2.0**-5), _fixed("tiny", 2.0**-16, 2.0**-16)
    df = simulate_twolayer([64], [good, tiny], [1], steps=25, **kw)
    assert df.attrs["pretrain"][0]["loss_after"] == pytest.approx(net.loss[-1], rel=1e-12)
    first, last = df.iloc[0], df[df["param"] == "good"].iloc[-1]
    assert last["loss"] < 0.3 * first["loss"]
    assert last["test_loss"] < 0.5 * first["test_loss"]
    assert df[df["param"] == "tiny"].iloc[-1]["loss"] > 0.95 * first["loss"]


def test_divergence_is_recorded_and_the_rest_goes_on() -> None:
    huge, fine = _fixed("huge", 1e6, 1e6), _fixed("fine", 1e-3, 1e-2)
    with np.errstate(all="raise"):
        df = simulate_twolayer([32, 48], [huge, fine], [0, 1], steps=4, **SMALL)
    h = df[df["param"] == "huge"]
    assert h["diverged"].all() == False and h["diverged"].any()  # noqa: E712
    assert (h.groupby(["width", "seed"])["diverged_step"].first() >= 1).all()
    first = h[h["diverged"]].groupby(["width", "seed"])["step"].min()
    steps = h.groupby(["width", "seed"])["diverged_step"].first()
    assert (first == steps.loc[first.index]).all()
    assert h.loc[h["diverged"], list(STATS)].isna().all().all()
    ok = df[df["param"] == "fine"]
    assert not ok["diverged"].any() and (ok["diverged_step"] == -1).all()
    assert ok.loc[ok["step"] >= 1, list(STATS)].notna().all().all()
    alone = simulate_twolayer([32, 48], [fine], [0, 1], steps=4, **SMALL)
    np.testing.assert_array_equal(ok[list(STATS)].to_numpy(), alone[list(STATS)].to_numpy())
    # a bound below the initial loss: diverged at step 0, recorded, nothing raised
    low = simulate_twolayer([32], [fine], [0], steps=2, divergence_bound=1e-9, **SMALL)
    assert (low["diverged_step"] == 0).all() and low["loss"].isna().all()


P = preset("lora")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(widths=[0]), "width"),
        (dict(widths=[]), "widths"),
        (dict(widths=[8.5]), "width"),
        (dict(seeds=[-1]), "seed"),
        (dict(seeds=[]), "seeds"),
        (dict(parametrizations=[]), "parametrization"),
        (dict(parametrizations=["lora"]), "Parametrization"),
        (dict(parametrizations=[P, P]), "unique"),
        (dict(steps=0), "steps"),
        (dict(rank=9), "rank"),
        (dict(rank=0), "rank"),
        (dict(optimizer="sgdm"), "optimizer"),
        (dict(samples=0), "samples"),
        (dict(test_samples=-1), "test_samples"),
        (dict(input_dim=0), "input_dim"),
        (dict(pretrain_steps=-2), "pretrain_steps"),
        (dict(shift=-1.0), "shift"),
        (dict(noise=float("nan")), "noise"),
        (dict(dtype="float16"), "dtype"),
        (dict(divergence_bound=0), "divergence_bound"),
        (dict(pretrain_lr=0), "pretrain_lr"),
        (dict(betas=(1.0, 0.9)), "betas"),
    ],
)
def test_bad_input_raises_a_one_line_value_error(kwargs: dict, match: str) -> None:
    args = dict(widths=[8], parametrizations=[P], seeds=[0], steps=1) | kwargs
    with pytest.raises(ValueError, match=match) as err:
        simulate_twolayer(
            args.pop("widths"), args.pop("parametrizations"), args.pop("seeds"), **args
        )
    assert "\n" not in str(err.value)


def test_bad_rate_and_init_are_rejected_where_they_are_made() -> None:
    with pytest.raises(ValueError, match="eta_a"):
        Parametrization("x", 0.0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="init"):
        Parametrization("x", 1.0, 1.0, 0, 0, init="C")
    with pytest.raises(ValueError, match="init"):
        tl.finetune_data([], [], [], rank=1, init="C")
