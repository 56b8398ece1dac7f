"""Pretrained bases (cache, resumption) and LoRA finetuning at many rates: the batched path
against PEFT + torch.optim.AdamW one run at a time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from loraplus_lab.sims.realmodels import corpus as corpora
from loraplus_lab.sims.realmodels.bases import (
    BaseSpec,
    base_record,
    load_base,
    lr_factor,
    mup_param_groups,
    pretrain_base,
)
from loraplus_lab.sims.realmodels.ladders import make_model
from loraplus_lab.sims.realmodels.multirate import (
    FinetuneSetup,
    RateConfig,
    finetune_one,
    finetune_rates,
)

TINY = dict(layers=1, head_dim=16, context=16, steps=12, batch=4, warmup=2, val_windows=8)


@pytest.fixture(scope="module")
def corpora_pair():
    docs = [(f"code{i}", f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 30) for i in range(40)]
    prose = [
        (f"topic{i}", f"The {i}th topic explains how names are bound. " * 30) for i in range(40)
    ]
    return corpora.from_documents("code", docs), corpora.from_documents("prose", prose)


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpora_pair):
    code, _ = corpora_pair
    spec = BaseSpec("gpt2", 32, corpus="code", **TINY)
    folder = pretrain_base(spec, cache=tmp_path_factory.mktemp("cache"), corpus=code)
    return load_base(folder)


def test_schedule_and_mup_groups() -> None:
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, 0.1) == pytest.approx(0.1)
    model = make_model("gpt2", 64, seed=0, head_dim=16, layers=1)
    groups = mup_param_groups(model, 0.01, 64)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    h = model.transformer.h[0]
    assert lr_of[id(h.attn.c_attn.weight)] == pytest.approx(0.01)  # fan-in 64 = n0
    assert lr_of[id(h.mlp.c_proj.weight)] == pytest.approx(0.01 * 64 / 256)  # fan-in 4n
    assert lr_of[id(model.lm_head.weight)] == pytest.approx(0.01)
    assert lr_of[id(model.transformer.wte.weight)] == lr_of[id(h.ln_1.weight)] == 0.01
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_pretraining_resumes_bit_for_bit_and_is_cached(tmp_path, corpora_pair) -> None:
    code, _ = corpora_pair
    spec = BaseSpec("gpt2", 32, corpus="code", **TINY)
    whole = pretrain_base(spec, cache=tmp_path / "a", corpus=code, checkpoint_every=4)
    partial = pretrain_base(
        spec, cache=tmp_path / "b", corpus=code, checkpoint_every=4, stop_after=5
    )
    assert (
        partial.name.endswith(".partial")
        and json.loads((partial / "state.json").read_text())["step"] == 5
    )
    resumed = pretrain_base(spec, cache=tmp_path / "b", corpus=code, checkpoint_every=4)
    assert not partial.exists() and resumed.name == whole.name
    a, b = base_record(whole), base_record(resumed)
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]
    ma, mb = load_base(whole).state_dict(), load_base(resumed).state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert a["train_loss"][-1] < a["train_loss"][0]  # it learned something
    assert a["corpus_sha256"] == code.sha256 and a["python"]
    mtime = (whole / "pretrain.json").stat().st_mtime_ns
    assert pretrain_base(spec, cache=tmp_path / "a", corpus=code) == whole  # cached: not rerun
    assert (whole / "pretrain.json").stat().st_mtime_ns == mtime
    other = BaseSpec("gpt2", 32, corpus="code", **{**TINY, "steps": 13})
    assert other.folder(tmp_path, code.sha256) != spec.folder(tmp_path, code.sha256)


SETUP = FinetuneSetup(
    arch="gpt2",
    r=2,
    alpha=2.0,
    steps=8,
    batch=2,
    context=16,
    warmup=2,
    eval_every=3,
    eval_windows=6,
)
CONFIGS = [
    RateConfig(2**-8, 2**-5),
    RateConfig(0.0, 2**-4),  # B only
    RateConfig(2**-5, 2**-3),
    RateConfig(2.0**1000, 2.0**1000),  # overflows: diverges
]


def test_batched_and_one_at_a_time_agree(base, corpora_pair) -> None:
    """float64: the two paths agree to 1e-9 on every recorded quantity, divergence included."""
    _, prose = corpora_pair
    st = finetune_rates(base, SETUP, CONFIGS, seed=3, corpus=prose, dtype=torch.float64)
    ones = []
    for i, c in enumerate(CONFIGS):
        d = finetune_one(base, SETUP, c, seed=3, corpus=prose, dtype=torch.float64)
        ones.append(d.assign(config=i))
    one = pd.concat(ones, ignore_index=True)
    assert list(st.columns) == list(one.columns)
    assert st["step"].unique().tolist() == SETUP.eval_steps() == [0, 3, 6, 8]
    m = st.merge(one, on=["config", "step"], suffixes=("_s", "_o"))
    assert len(m) == len(st) == len(one)
    for col in ("val_loss", "train_loss", "final_loss", "a_change", "b_norm", "val_loss_a0"):
        a, b = m[f"{col}_s"].to_numpy(), m[f"{col}_o"].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        ok = ~np.isnan(a)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9, atol=1e-12, err_msg=col)
    for col in ("diverged", "diverged_step"):
        assert (m[f"{col}_s"] == m[f"{col}_o"]).all(), col
    div = st[st["config"] == 3]
    assert div["diverged"].all() and div["diverged_step"].iloc[0] >= 1
    last = st[st["step"] == SETUP.steps].set_index("config")
    assert last.loc[1, "a_change"] == 0 and last.loc[1, "val_loss_a0"] == last.loc[1, "final_loss"]
    start = st[st["step"] == 0]
    assert start["final_loss"].nunique() == 1 and start["val_loss"].nunique() == 1  # B0 = 0
    assert last.loc[0, "final_loss"] < start["final_loss"].iloc[0]  # it learned
    assert st.loc[st["step"].between(1, SETUP.steps - 1), "final_loss"].isna().all()
    assert (last.loc[[0, 2], "a_change"] > 0).all()


def test_batched_runs_are_deterministic_and_independent(base, corpora_pair) -> None:
    _, prose = corpora_pair
    a = finetune_rates(base, SETUP, CONFIGS[:3], seed=1, corpus=prose)
    b = finetune_rates(base, SETUP, CONFIGS[:3], seed=1, corpus=prose)
    pd.testing.assert_frame_equal(a, b)  # same seed, same bits
    alone = finetune_rates(base, SETUP, [CONFIGS[2]], seed=1, corpus=prose)
    together = a[a["config"] == 2].reset_index(drop=True).assign(config=0)
    # float32: batching changes only the products' summation order
    np.testing.assert_allclose(alone["val_loss"], together["val_loss"], rtol=1e-5)
    c = finetune_rates(base, SETUP, CONFIGS[:3], seed=2, corpus=prose)
    assert not np.allclose(a["val_loss"].iloc[3:], c["val_loss"].iloc[3:])


def test_setup_and_rates_are_checked() -> None:
    with pytest.raises(ValueError, match="warmup"):
        FinetuneSetup(steps=5, warmup=5)
    with pytest.raises(ValueError, match="steps"):
        FinetuneSetup(steps=0)
    with pytest.raises(ValueError, match="eta_b"):
        RateConfig(1e-3, 0.0)
    with pytest.raises(ValueError, match="eta_a"):
        RateConfig(-1e-3, 1e-3)
    s = FinetuneSetup(steps=10, warmup=2)
    assert [s.lr_factor(t) for t in (0, 1, 2, 9)] == pytest.approx([0.5, 1.0, 1.0, 0.125])


def test_bfloat16_runs_under_autocast_with_float32_adapters(base, corpora_pair) -> None:
    """bfloat16: the products run under autocast, adapters and optimizer state stay float32, and
    the losses follow the float32 run closely."""
    _, prose = corpora_pair
    f32 = finetune_rates(base, SETUP, CONFIGS[:2], seed=0, corpus=prose)
    bf16 = finetune_rates(base, SETUP, CONFIGS[:2], seed=0, corpus=prose, dtype=torch.bfloat16)
    assert np.isfinite(bf16["val_loss"]).all()
    np.testing.assert_allclose(bf16["val_loss"], f32["val_loss"], rtol=3e-2)
    one = finetune_one(base, SETUP, CONFIGS[0], seed=0, corpus=prose, dtype=torch.bfloat16)
    np.testing.assert_allclose(
        one["val_loss"], bf16.loc[bf16["config"] == 0, "val_loss"], rtol=3e-2
    )
