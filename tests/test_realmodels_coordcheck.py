"""Width ladders and the LoRA coordinate check on tiny real transformers (CPU, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from loraplus_lab.sims.realmodels.coordcheck import (  # noqa: E402
    STATS,
    LoraCoordProbe,
    coordcheck_slopes,
    headline,
    resolve_params,
    run_coordcheck,
    train_and_record,
)
from loraplus_lab.sims.realmodels.ladders import (  # noqa: E402
    ARCHS,
    DEFAULT_TARGETS,
    iter_lora_layers,
    ladder,
    layer_coordinates,
    lm_batch,
    lora_model,
    make_model,
    pretrain,
)

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
LADDER = (64, 128, 256, 512)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest single-threaded (and the CI box is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gpt2_coordcheck() -> pd.DataFrame:
    """The headline run: GPT-2 ladder 64..512, 3 steps, 3 seeds, equal fixed rates vs LoRA+."""
    return run_coordcheck("gpt2", LADDER, steps=3, seeds=(0, 1, 2), progress=False)


# ------------------------------------------------------------------------------------- ladders


@pytest.mark.parametrize("arch", ARCHS)
def test_ladder_shapes(arch: str) -> None:
    m = make_model(arch, 128, seed=0, layers=3)
    cfg = m.config
    assert cfg.hidden_size == 128
    assert cfg.num_attention_heads == 4  # head_dim 32
    assert cfg.num_hidden_layers == 3
    assert cfg.vocab_size == 256
    inter = getattr(cfg, "n_inner", None) or cfg.intermediate_size
    assert inter == (352 if arch == "llama" else 512)
    out, inp = m.get_output_embeddings(), m.get_input_embeddings()
    assert out.weight.data_ptr() != inp.weight.data_ptr()  # untied readout
    assert not m.training


@pytest.mark.parametrize("arch", ARCHS)
def test_init_is_deterministic(arch: str) -> None:
    a = lora_model(make_model(arch, 64, seed=3), arch, seed=3).state_dict()
    b = lora_model(make_model(arch, 64, seed=3), arch, seed=3).state_dict()
    c = make_model(arch, 64, seed=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    wk = next(k for k in c if "embed" in k or "wte" in k)
    assert not torch.equal(c[wk], a[next(k for k in a if k.endswith(wk))])


def test_lora_targets_and_inits() -> None:
    m = lora_model(make_model("gpt2", 64, seed=0), "gpt2", seed=0)
    types = {layer_coordinates(n)[1] for n, _ in iter_lora_layers(m)}
    assert types == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    for _, layer in iter_lora_layers(m):
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.all(B == 0) and A.abs().max() <= 1 / A.shape[1] ** 0.5
    mb = lora_model(make_model("llama", 64, seed=0), "llama", seed=0, init="B")
    layers = list(iter_lora_layers(mb))
    assert len(layers) == 2 * len(DEFAULT_TARGETS["llama"])
    for _, layer in layers:
        assert torch.all(layer.lora_A["default"].weight == 0)
        assert layer.lora_B["default"].weight.std() > 0.1


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_scale_is_width_independent(arch: str) -> None:
    """Every LoRA layer's input has Θ(1) RMS: within a factor 2 across widths 64..512."""
    rms: dict[str, list[float]] = {}
    for n in LADDER:
        m = lora_model(make_model(arch, n, seed=0), arch, seed=0)
        hooks = [
            layer.register_forward_pre_hook(
                lambda mod, inp, name=name: rms.setdefault(
                    layer_coordinates(name)[1] + str(layer_coordinates(name)[0]), []
                ).append(float(inp[0].pow(2).mean().sqrt()))
            )
            for name, layer in iter_lora_layers(m)
        ]
        with torch.no_grad():
            out = m(**lm_batch(arch, 2, 16, seed=0))
        for h in hooks:
            h.remove()
        assert 0.05 < float(out.logits.pow(2).mean().sqrt()) < 3.0
    for key, values in rms.items():
        assert len(values) == len(LADDER)
        assert max(values) / min(values) < 2.0, (key, values)
        assert 0.1 < min(values) and max(values) < 5.0, (key, values)


def test_pretrain_lowers_the_loss() -> None:
    m = make_model("gpt2", 64, seed=0)
    losses = pretrain(m, 30, seed=0, batch=8, seq=16)
    assert losses[-1] < losses[0] - 0.3
    assert all(p.requires_grad for p in m.parameters())


# ------------------------------------------------------------------------------------ the probe


@pytest.mark.parametrize("arch", ARCHS)
def test_delta_identity_float64(arch: str) -> None:
    """δ¹ + δ² + δ³ = ΔZ_B to round-off on every hooked layer, every step (float64)."""
    m = lora_model(make_model(arch, 64, seed=1, dtype=torch.float64), arch, seed=1)
    data = lm_batch(arch, 2, 16, seed=1)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    n_layers = len(list(iter_lora_layers(m)))
    with LoraCoordProbe(m, keep_tensors=True) as probe:
        for t in range(4):
            with probe.recording(t):
                loss = m(**data).loss
            if t >= 1:
                assert len(probe.tensors) == n_layers
                for name, T in probe.tensors.items():
                    assert T["delta1"].dtype == torch.float64
                    total = T["delta1"] + T["delta2"] + T["delta3"]
                    scale = T["dZ_B"].abs().max()
                    assert scale > 0, name
                    assert (total - T["dZ_B"]).abs().max() <= 1e-12 * scale, name
                    if t == 1:  # Init[A]: B0 = 0, so δ¹ = s·B0·ΔZ_A = 0 at step 1
                        assert torch.all(T["delta1"] == 0)
                if t == 1:
                    # A does not move at step 1 (its gradient has the factor B0 = 0): only an
                    # upstream change of the input moves Z_A, and the first layer has none
                    first = probe.tensors[next(iter(probe.tensors))]
                    assert torch.all(first["delta3"] == 0) and torch.all(first["dZ"] == 0)
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_probe_sees_peft_output(arch: str) -> None:
    """The recorded Z_B is exactly the LoRA layer's output minus its base layer's output
    (GPT-2's Conv1D with fan_in_fan_out included)."""
    m = lora_model(make_model(arch, 64, seed=0, dtype=torch.float64), arch, seed=0, init="B")
    branch: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda mod, inp, out, name=name: branch.__setitem__(
                name, (out - mod.base_layer(inp[0])).detach()
            )
        )
        for name, layer in iter_lora_layers(m)
    ]
    with LoraCoordProbe(m, keep_tensors=True) as probe, torch.no_grad():
        data = lm_batch(arch, 2, 8, seed=0)
        with probe.recording(0):
            m(**data)
        for _, layer in iter_lora_layers(m):  # move A so that Z_B ≠ 0
            layer.lora_A["default"].weight.normal_(0, 0.1)
        with probe.recording(1):
            m(**data)
    for h in hooks:
        h.remove()
    for name, T in probe.tensors.items():
        assert T["Z_B"].abs().max() > 0
        torch.testing.assert_close(T["Z_B"], branch[name], rtol=1e-10, atol=1e-12)


def test_tidy_frame(gpt2_coordcheck: pd.DataFrame) -> None:
    df = gpt2_coordcheck
    assert list(df.columns) == [
        "arch",
        "param",
        "width",
        "seed",
        "step",
        "layer",
        "layer_type",
        "stat",
        "value",
        "diverged",
    ]
    assert set(df["stat"]) == {*STATS, "loss"}
    assert set(df["param"]) == {"lora-fixed", "loraplus"}
    assert sorted(df["width"].unique()) == list(LADDER)
    assert not df["diverged"].any()
    at0 = set(df.loc[df["step"] == 0, "stat"])
    assert at0 == {"Z", "Z_A", "Z_B", "loss"}  # no δ before the first step
    per = df[df["stat"] == "Z"].groupby(["param", "width", "seed", "step"]).size()
    assert (per == 8).all()  # 2 blocks × 4 LoRA layers
    assert df.attrs["config"]["optimizer"] == "adam"
    assert json.dumps(df.attrs)  # configuration saved beside the results
    # LoRA and LoRA+ share every rate at the base width n0 = 64: identical runs there
    a, b = (
        df[(df["param"] == p) & (df["width"] == 64)]["value"].to_numpy() for p in df.param.unique()
    )
    np.testing.assert_array_equal(a, b)


def test_headline_slopes_gpt2(gpt2_coordcheck: pd.DataFrame) -> None:
    """LoRA+: δ¹ and δ² flat in width (|slope| ≤ 0.3) at every GPT-2 layer type; equal fixed
    rates: δ¹ grows (slope ≥ 0.5); the layer input Z is flat under both (the control)."""
    sl = coordcheck_slopes(gpt2_coordcheck, n_boot=199)
    late = sl[sl["step"] >= 2]
    assert set(late["layer_type"]) >= {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}

    def slopes(param: str, stat: str) -> pd.Series:
        s = late[
            (late["param"] == param) & (late["stat"] == stat) & (late["layer_type"] != "model")
        ]
        assert len(s) == 8 and s["slope"].notna().all()
        return s["slope"]

    assert slopes("loraplus", "delta1").abs().max() <= 0.3
    assert slopes("loraplus", "delta2").abs().max() <= 0.3
    assert slopes("lora-fixed", "delta1").min() >= 0.5
    assert slopes("loraplus", "Z").abs().max() <= 0.3
    assert slopes("lora-fixed", "Z").abs().max() <= 0.3
    # step 1 under Init[A]: δ¹ ≡ 0 (B0 = 0), recognised as exactly zero and agreeing
    one = sl[(sl["step"] == 1) & (sl["stat"] == "delta1")]
    assert one["zero"].all() and (one["verdict"] == "agrees").all()
    lp = late[(late["param"] == "loraplus") & late["stat"].isin(["delta1", "delta2"])]
    # every interval within ±0.25 of 0; some exclude 0 (pre-asymptotic widths): "close"
    assert lp["verdict"].isin(["agrees", "close"]).all(), lp["verdict"].value_counts()
    assert (lp["verdict"] == "agrees").any()
    table = headline(sl)
    assert list(table.columns) == ["Z", "delta1", "delta2"]
    one_type = late[
        (late["param"] == "loraplus")
        & (late["stat"] == "delta1")
        & (late["layer_type"] == "attn.c_attn")
    ]
    assert table.loc[("loraplus", "attn.c_attn"), "delta1"] == pytest.approx(
        one_type["slope"].mean()
    )


def test_plots(gpt2_coordcheck: pd.DataFrame) -> None:
    import matplotlib.pyplot as plt

    from loraplus_lab.sims.realmodels.plots import plot_lora_coordcheck, plot_lora_slopes

    fig = plot_lora_coordcheck(gpt2_coordcheck, "delta1", title="GPT-2")
    assert len(fig.axes) == 2 * 3  # params × steps with δ¹
    plt.close(fig)
    fig = plot_lora_coordcheck(gpt2_coordcheck, "Z")
    assert len(fig.axes) == 2 * 4  # Z is recorded at step 0 too
    plt.close(fig)
    fig = plot_lora_slopes(coordcheck_slopes(gpt2_coordcheck, n_boot=49))
    plt.close(fig)
    with pytest.raises(ValueError, match="no rows"):
        plot_lora_coordcheck(gpt2_coordcheck, "nope")


@pytest.mark.parametrize("arch", ["llama", "roberta"])
def test_other_archs_run(arch: str) -> None:
    df = run_coordcheck(arch, (64, 128), steps=2, seeds=(0,), progress=False)
    types = set(df.loc[df["layer"] >= 0, "layer_type"])
    expected = {
        "llama": {f"self_attn.{x}_proj" for x in "qkvo"}
        | {f"mlp.{x}_proj" for x in ("gate", "up", "down")},
        "roberta": {"attention.self.query", "attention.self.value"},
    }[arch]
    assert types == expected
    assert np.isfinite(df["value"]).all()


def test_divergence_is_data() -> None:
    df = run_coordcheck("gpt2", (64,), steps=3, seeds=(0,), loss_bound=1.0, progress=False)
    assert df["diverged"].all() and set(df["step"]) == {0}


def test_make_optimizer_rates() -> None:
    from loraplus_lab.sims.realmodels.coordcheck import make_optimizer

    m = lora_model(make_model("gpt2", 128, seed=0), "gpt2", seed=0)
    lp, eq = resolve_params(["loraplus", "lora-fixed"], lr=1e-3, ratio=2.0)
    a_ids = {id(p) for n, p in m.named_parameters() if "lora_A" in n}
    for param, (lr_a, lr_b) in ((lp, (1e-3 * 64 / 128, 2e-3)), (eq, (1e-3, 1e-3))):
        opt = make_optimizer(m, param, 128)
        for g in opt.param_groups:
            for p in g["params"]:
                assert g["lr"] == pytest.approx(lr_a if id(p) in a_ids else lr_b)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_model("bert", 64, seed=0), "unknown arch 'bert'"),
        (lambda: make_model("gpt2", 32, seed=0), r"at least 64 \(2 heads of 32\), got 32"),
        (lambda: make_model("gpt2", 80, seed=0), "divisible by the head dimension 32, got 80"),
        (lambda: ladder("gpt2", [64, 100]), "divisible"),
        (lambda: lora_model(make_model("gpt2", 64, seed=0), "gpt2", init="C"), "init"),
        (lambda: run_coordcheck("opt", (64,), progress=False), "unknown arch 'opt'"),
        (lambda: run_coordcheck("gpt2", (48,), progress=False), "at least 64"),
        (lambda: run_coordcheck("gpt2", (80,), progress=False), "divisible"),
        (lambda: run_coordcheck("gpt2", (64,), steps=0, progress=False), "steps must be"),
        (lambda: run_coordcheck("gpt2", (64,), optimizer="lion", progress=False), "optimizer"),
        (
            lambda: run_coordcheck("gpt2", (64,), parametrizations=("mup",), progress=False),
            "unknown parametrization 'mup'",
        ),
        (lambda: run_coordcheck("gpt2", (), progress=False), "widths"),
    ],
)
def test_bad_input_one_line(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_train_and_record_rejects_zero_steps() -> None:
    m = lora_model(make_model("gpt2", 64, seed=0), "gpt2", seed=0)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        train_and_record(m, lm_batch("gpt2", 1, 4, seed=0), opt, 0)


# ------------------------------------------------------------------------------ the GPU script


def test_gpu_check_smoke(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py --smoke runs on the CPU and writes its JSON and PNGs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["smoke"] is True
    assert {"coordcheck", "throughput", "ladder", "device"} <= report.keys()
    assert "error" not in report["ladder"] and report["ladder"]["runs"] > 0
    assert (tmp_path / "ladder_report.txt").read_text().startswith("Real-model ladder")
    assert report["throughput"]["step_time_ratio_loraplus_over_lora"] > 0
    assert list(tmp_path.glob("*.png"))


# ----------------------------------------------------------------------------- the command line
def test_cli_coordcheck_writes_tables_and_figures(tmp_path, capsys):
    from loraplus_lab.sims.cli import main

    out = tmp_path / "cc"
    argv = ["coordcheck", "--widths", "64,128", "--steps", "2", "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "delta1" in text and "loraplus" in text
    for name in ("coordcheck.csv", "slopes.csv", "config.json", "coordcheck_delta1.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--widths", "64"], "at least two widths"),
        (["--presets", "lora,nope"], "unknown preset"),
        (["--steps", "0"], "--steps"),
        (["--lr", "-1"], "--lr"),
        (["--arch", "bert"], "invalid choice"),
    ],
)
def test_cli_coordcheck_bad_input(tmp_path, capsys, extra, message):
    from loraplus_lab.sims.cli import main

    out = tmp_path / "cc"
    try:
        rc = main(["coordcheck", *extra, "--out", str(out)])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
