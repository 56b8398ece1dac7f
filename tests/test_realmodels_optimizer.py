"""LoRA+ optimizer on tiny PEFT LoRA models (CPU, built from configs, no network).

Regression tests are named after the PEFT ``create_loraplus_optimizer`` pitfall they pin.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2ForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from loraplus_lab.sims.realmodels.optimizer import (  # noqa: E402
    create_loraplus_optimizer,
    format_audit,
    optimizer_audit,
)

N_EMBD, VOCAB, SEQ, BATCH = 32, 64, 8, 4
LR, RATIO, WD = 1e-3, 16.0, 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------
# tiny models


def gpt2_lora(seed: int = 0, *, embedding: bool = True, **lora_kwargs) -> torch.nn.Module:
    """GPT-2 (Conv1D, fan_in_fan_out) with LoRA on attention, MLP and (optionally) wte;
    trainable LoRA-layer biases, and ``score`` + ``ln_f`` as modules_to_save."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_embd=N_EMBD, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, num_labels=3,
    )  # fmt: skip
    targets = ["c_attn", "c_proj", "c_fc"] + (["wte"] if embedding else [])
    kwargs = dict(
        r=4, target_modules=targets, fan_in_fan_out=True, bias="lora_only",
        modules_to_save=["score", "ln_f"], init_lora_weights=True,
    )  # fmt: skip
    kwargs.update(lora_kwargs)
    model = get_peft_model(GPT2ForSequenceClassification(cfg), LoraConfig(**kwargs))
    return randomize_b(model)


def randomize_b(model: torch.nn.Module) -> torch.nn.Module:
    """B0 = 0 makes step 1 special; a random B makes every factor move from the first step."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                p.normal_(0.0, 0.1)
    return model


def llama_dora(seed: int = 0) -> torch.nn.Module:
    """Tiny Llama with DoRA on q, v and down projections; its RMSNorms as modules_to_save."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=N_EMBD, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
    )  # fmt: skip
    lora = LoraConfig(
        r=4, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True,
        modules_to_save=["norm"],
    )  # fmt: skip
    return randomize_b(get_peft_model(LlamaForCausalLM(cfg), lora))


def roberta_cls(seed: int = 0) -> torch.nn.Module:
    """Tiny RoBERTa classifier with LoRA on query/value; the classification head is saved."""
    torch.manual_seed(seed)
    cfg = RobertaConfig(
        hidden_size=N_EMBD, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=40, num_labels=2,
    )  # fmt: skip
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"])
    return get_peft_model(RobertaForSequenceClassification(cfg), lora)


MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "gpt2": gpt2_lora,
    "llama_dora": llama_dora,
    "roberta": roberta_cls,
}


def loss_fn(model: torch.nn.Module, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(2, VOCAB, (BATCH, SEQ), generator=g)
    if isinstance(model.get_base_model(), LlamaForCausalLM):
        return model(input_ids=ids, labels=ids).loss
    n_labels = model.get_base_model().config.num_labels
    return model(input_ids=ids, labels=torch.randint(0, n_labels, (BATCH,), generator=g)).loss


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> None:
    model.train()
    for step in range(steps):
        torch.manual_seed(step)  # dropout masks are part of "the same batches"
        opt.zero_grad()
        loss_fn(model, step).backward()
        opt.step()


def names_by_group(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g.get("name", str(i)): [names[id(p)] for p in g["params"]]
            for i, g in enumerate(opt.param_groups)}  # fmt: skip


def group_of(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, dict]:
    """Parameter name → its param group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in opt.param_groups for p in g["params"]}


def assert_same_params(m1: torch.nn.Module, m2: torch.nn.Module) -> None:
    p2 = dict(m2.named_parameters())
    for name, p in m1.named_parameters():
        assert torch.equal(p, p2[name]), name


def short(name: str) -> str:
    return name.removeprefix("base_model.model.")


# ------------------------------------------------------------------------------------------
# policy "peft": PEFT's grouping, bit for bit


@pytest.mark.parametrize("model_name", ["gpt2", "llama_dora"])
def test_peft_policy_matches_peft_groups_and_five_adamw_steps(model_name: str) -> None:
    make = MODELS[model_name]
    ours_model, ref_model = make(), make()
    assert_same_params(ours_model, ref_model)
    hp = dict(betas=(0.9, 0.99), eps=1e-7)
    ours = create_loraplus_optimizer(
        ours_model, torch.optim.AdamW, lr=LR, ratio=RATIO, policy="peft",
        lr_embedding=3e-3, weight_decay=WD, **hp,
    )  # fmt: skip
    ref = peft_create_loraplus_optimizer(
        ref_model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
        loraplus_lr_embedding=3e-3, loraplus_weight_decay=WD, **hp,
    )  # fmt: skip
    assert len(ours.param_groups) == len(ref.param_groups) == 4
    assert ours.defaults == ref.defaults
    ours_names, ref_names = names_by_group(ours, ours_model), names_by_group(ref, ref_model)
    assert list(ours_names.values()) == list(ref_names.values())  # same params, same order
    for g_ours, g_ref in zip(ours.param_groups, ref.param_groups, strict=True):
        assert {k: v for k, v in g_ours.items() if k not in ("params", "name")} == {
            k: v for k, v in g_ref.items() if k != "params"
        }
    train(ours_model, ours)
    train(ref_model, ref)
    assert_same_params(ours_model, ref_model)
    moved = [n for n, p in ours_model.named_parameters() if p.requires_grad]
    before = dict(make().named_parameters())
    assert all(not torch.equal(dict(ours_model.named_parameters())[n], before[n]) for n in moved)


def test_peft_policy_reproduces_pitfalls() -> None:
    """The PEFT grouping, documented: 1-D at λ·η, embedding LoRA at 1e-6, heads at η."""
    model = gpt2_lora()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, policy="peft")
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    assert [g["name"] for g in opt.param_groups] == [
        "groupA", "embedding", "groupB", "groupB_no_decay",
    ]  # fmt: skip
    assert groups["transformer.wte.lora_embedding_A.default"]["lr"] == 1e-6
    assert groups["transformer.wte.lora_embedding_B.default"]["lr"] == 1e-6
    assert groups["transformer.h.0.attn.c_attn.base_layer.bias"]["lr"] == LR * RATIO
    assert groups["transformer.ln_f.modules_to_save.default.weight"]["lr"] == LR * RATIO
    assert groups["score.modules_to_save.default.weight"]["lr"] == LR
    # RMSNorm is not an nn.LayerNorm: PEFT decays it; DoRA magnitudes too
    model = llama_dora()
    opt = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LR, ratio=RATIO, policy="peft", weight_decay=WD
    )
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    mag = "model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight"
    norm = "model.norm.modules_to_save.default.weight"
    assert groups[mag]["name"] == groups[norm]["name"] == "groupB"
    assert groups[mag]["weight_decay"] == groups[norm]["weight_decay"] == WD
    assert groups[mag]["lr"] == LR * RATIO


# ------------------------------------------------------------------------------------------
# policy "theory"


def test_theory_audit_places_every_gpt2_param() -> None:
    model = gpt2_lora()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD)
    by_group = {k: [short(n) for n in v] for k, v in names_by_group(opt, model).items()}
    assert list(by_group) == ["lora_A", "lora_B", "lora_embedding", "other", "other_no_decay"]
    assert all(n.endswith("lora_A.default.weight") for n in by_group["lora_A"])
    assert all(n.endswith("lora_B.default.weight") for n in by_group["lora_B"])
    assert len(by_group["lora_A"]) == len(by_group["lora_B"]) == 8
    assert by_group["lora_embedding"] == [
        "transformer.wte.lora_embedding_A.default",
        "transformer.wte.lora_embedding_B.default",
    ]
    assert by_group["other"] == ["score.modules_to_save.default.weight"]
    assert set(by_group["other_no_decay"]) == (
        {f"transformer.h.{i}.{m}.base_layer.bias" for i in range(2)
         for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
        | {"transformer.ln_f.modules_to_save.default.weight",
           "transformer.ln_f.modules_to_save.default.bias"}
    )  # fmt: skip

    audit = optimizer_audit(opt, model)
    rows = audit.set_index("group")
    assert list(audit.columns) == [
        "group", "kind", "n_tensors", "n_scalars", "lr", "weight_decay", "examples",
    ]  # fmt: skip
    assert rows.loc["lora_A", "lr"] == LR and rows.loc["lora_B", "lr"] == LR * RATIO
    assert rows.loc["lora_embedding", "lr"] == LR * RATIO
    assert rows.loc["other", "lr"] == rows.loc["other_no_decay", "lr"] == LR
    assert rows["weight_decay"].to_dict() == {
        "lora_A": WD, "lora_B": WD, "lora_embedding": WD, "other": WD, "other_no_decay": 0.0,
    }  # fmt: skip
    assert rows.loc["lora_A", "n_scalars"] == 2 * (3 * 4 * N_EMBD + 4 * 4 * N_EMBD)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert audit["n_scalars"].sum() == n_trainable
    assert "lora_A.default.weight" in rows.loc["lora_A", "examples"]


def test_audit_is_readable_without_model() -> None:
    model = gpt2_lora()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO)
    text = str(optimizer_audit(opt, model))
    assert text == format_audit(optimizer_audit(opt, model))
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["group", "tensors", "scalars", "lr", "decay"]
    assert any(line.startswith("lora_B ") and "0.016" in line for line in lines)
    assert "tensors," in lines[-1]
    bare = optimizer_audit(opt)  # no model: shapes instead of names
    assert "4×32" in bare.set_index("group").loc["lora_A", "examples"]
    plain = optimizer_audit(opt)[["group", "lr"]]  # derived frames print as pandas does
    assert "group" in str(plain)


def test_lambda_one_is_vanilla_lora_bit_for_bit() -> None:
    """λ = 1: one AdamW over all trainable params at η, decay on matrices only."""
    ours_model, ref_model = gpt2_lora(), gpt2_lora()
    ours = create_loraplus_optimizer(
        ours_model, torch.optim.AdamW, lr=LR, ratio=1.0, weight_decay=WD
    )
    trainable = [p for p in ref_model.parameters() if p.requires_grad]
    ref = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": WD},
         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
        lr=LR,
    )  # fmt: skip
    assert {g["lr"] for g in ours.param_groups} == {LR}
    train(ours_model, ours)
    train(ref_model, ref)
    assert_same_params(ours_model, ref_model)


def test_plain_weight_decay_is_honoured() -> None:
    """PEFT ignores a plain ``weight_decay``; here it decays matrices, never 1-D params."""
    shrink: dict[str, dict[str, float]] = {}
    for policy in ("theory", "peft"):
        model = llama_dora()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if policy == "theory":
            opt = create_loraplus_optimizer(
                model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD
            )
        else:  # PEFT's own function, called the way users call AdamW
            opt = peft_create_loraplus_optimizer(
                model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO, weight_decay=WD
            )
        for p in model.parameters():  # zero gradients: AdamW moves p only by its decay
            p.grad = None if not p.requires_grad else torch.zeros_like(p)
        opt.step()
        shrink[policy] = {
            short(n): (p.norm() / before[n].norm()).item()
            for n, p in model.named_parameters() if p.requires_grad
        }  # fmt: skip
    a = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    b = "model.layers.0.self_attn.q_proj.lora_B.default.weight"
    mag = "model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight"
    norm = "model.norm.modules_to_save.default.weight"
    assert shrink["theory"][a] == pytest.approx(1 - LR * WD, rel=1e-6)
    assert shrink["theory"][b] == pytest.approx(1 - LR * RATIO * WD, rel=1e-6)
    assert shrink["theory"][mag] == shrink["theory"][norm] == 1.0
    assert all(v == 1.0 for v in shrink["peft"].values())  # the pitfall: no decay at all


def test_decayed_group_shrinks_weights_vs_no_decay() -> None:
    trained = {}
    for wd in (0.0, 0.5):
        model = gpt2_lora(embedding=False)
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-2, ratio=4.0,
                                        weight_decay=wd)  # fmt: skip
        train(model, opt)
        trained[wd] = {short(n): p.detach() for n, p in model.named_parameters()}
    a = "transformer.h.0.mlp.c_fc.lora_A.default.weight"
    head = "score.modules_to_save.default.weight"
    bias = "transformer.h.0.mlp.c_fc.base_layer.bias"
    assert trained[0.5][a].norm() < trained[0.0][a].norm()
    assert trained[0.5][head].norm() < trained[0.0][head].norm()
    assert not torch.equal(trained[0.5][bias], trained[0.0][bias])  # via the trajectory only
    opt_groups = group_of(opt, model)
    assert opt_groups[f"base_model.model.{bias}"]["weight_decay"] == 0.0


def test_bias_not_silently_at_ratio_lr() -> None:
    model = gpt2_lora()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO)
    for name, group in group_of(opt, model).items():
        p = model.get_parameter(name)
        if p.ndim == 1:
            assert group["lr"] == LR, name
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, lr_other=5e-4)
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    assert groups["transformer.h.1.mlp.c_proj.base_layer.bias"]["lr"] == 5e-4
    assert groups["transformer.ln_f.modules_to_save.default.bias"]["lr"] == 5e-4
    assert groups["score.modules_to_save.default.weight"]["lr"] == 5e-4
    assert groups["transformer.h.1.mlp.c_proj.lora_B.default.weight"]["lr"] == LR * RATIO


def test_lora_bias_is_a_bias_not_a_b_factor() -> None:
    model = gpt2_lora(embedding=False, lora_bias=True)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO,
                                    weight_decay=WD)  # fmt: skip
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    g = groups["transformer.h.0.attn.c_attn.lora_B.default.bias"]
    assert (g["name"], g["lr"], g["weight_decay"]) == ("other_no_decay", LR, 0.0)


def test_embedding_lora_rate_follows_base_rate() -> None:
    """PEFT pins embedding LoRA at 1e-6 whatever η; here it is Θ(1): λ·η_A by default."""
    model = gpt2_lora()
    emb = "base_model.model.transformer.wte.lora_embedding_A.default"
    for lr in (1e-4, 1e-3):
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, ratio=RATIO)
        group = group_of(opt, model)[emb]
        assert group["name"] == "lora_embedding" and group["lr"] == lr * RATIO
        assert group_of(opt, model)[emb.replace("_A.", "_B.")] is group
        peft_opt = create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=lr, ratio=RATIO, policy="peft"
        )
        assert group_of(peft_opt, model)[emb]["lr"] == 1e-6
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO,
                                    lr_embedding=0.05, fan_in_aware=True)  # fmt: skip
    assert group_of(opt, model)[emb]["lr"] == 0.05


def test_dora_magnitudes_and_norms_at_lr_other_without_decay() -> None:
    model = llama_dora()
    opt = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD, lr_other=2e-3
    )
    for name, g in group_of(opt, model).items():
        if "lora_magnitude_vector" in name or "norm" in name:
            assert (g["name"], g["lr"], g["weight_decay"]) == ("other_no_decay", 2e-3, 0.0)
    assert [g["name"] for g in opt.param_groups] == ["lora_A", "lora_B", "other_no_decay"]


def test_modules_to_save_head_at_lr_other() -> None:
    model = roberta_cls()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, weight_decay=WD)
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    head = "classifier.modules_to_save.default"
    for part in ("dense", "out_proj"):
        w, b = groups[f"{head}.{part}.weight"], groups[f"{head}.{part}.bias"]
        assert (w["name"], w["lr"], w["weight_decay"]) == ("other", LR, WD)
        assert (b["name"], b["lr"], b["weight_decay"]) == ("other_no_decay", LR, 0.0)
    assert not any("original_module" in n for n in groups)
    train(model, opt, steps=2)


def test_fan_in_aware_rates() -> None:
    """GPT-2's MLP c_proj has fan-in 4·n_embd: its A trains at η_A/4."""
    model = gpt2_lora()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO,
                                    fan_in_aware=True)  # fmt: skip
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    for i in range(2):
        for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc"):
            g = groups[f"transformer.h.{i}.{m}.lora_A.default.weight"]
            assert (g["name"], g["lr"]) == (f"lora_A[fan_in={N_EMBD}]", LR)
        g = groups[f"transformer.h.{i}.mlp.c_proj.lora_A.default.weight"]
        assert (g["name"], g["lr"]) == (f"lora_A[fan_in={4 * N_EMBD}]", LR / 4)
        assert groups[f"transformer.h.{i}.mlp.c_proj.lora_B.default.weight"]["lr"] == LR * RATIO
    audit = optimizer_audit(opt, model)
    assert set(audit["kind"]) == {"lora_A", "lora_B", "lora_embedding", "other_no_decay",
                                  "other"}  # fmt: skip
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO,
                                    fan_in_aware=True, base_fan_in=4 * N_EMBD)  # fmt: skip
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    assert groups["transformer.h.0.mlp.c_proj.lora_A.default.weight"]["lr"] == LR
    assert groups["transformer.h.0.mlp.c_fc.lora_A.default.weight"]["lr"] == LR * 4


@pytest.mark.parametrize("policy", ["theory", "peft"])
@pytest.mark.parametrize("model_name", ["gpt2", "llama_dora", "roberta"])
def test_every_trainable_param_in_exactly_one_group(model_name: str, policy: str) -> None:
    model = MODELS[model_name]()
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, policy=policy)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(not p.requires_grad for p in model.parameters()) > 0  # frozen ones exist


# ------------------------------------------------------------------------------------------
# bad input


class NotAnOptimizer:
    pass


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": -2.0}, "ratio"),
        ({"ratio": math.nan}, "ratio"),
        ({"ratio": math.inf}, "ratio"),
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"policy": "loraplus"}, "policy"),
        ({"optimizer_cls": NotAnOptimizer}, "optimizer_cls"),
        ({"optimizer_cls": torch.nn.Linear}, "optimizer_cls"),
        ({"optimizer_cls": torch.optim.AdamW([torch.zeros(1, requires_grad=True)])},
         "optimizer_cls"),
        ({"fan_in_aware": True, "policy": "peft"}, "fan_in_aware"),
        ({"lr_other": 1e-3, "policy": "peft"}, "lr_other"),
        ({"base_fan_in": 64}, "base_fan_in"),
        ({"base_fan_in": 0, "fan_in_aware": True}, "base_fan_in"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"lr_embedding": 0.0}, "lr_embedding"),
        ({"loraplus_weight_decay": 0.1}, "loraplus_weight_decay"),
        ({"optimizer_cls": torch.optim.Adadelta, "weight_decay": 0.0}, None),  # fine
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_value_error(kwargs: dict, match: str | None) -> None:
    model = gpt2_lora(embedding=False)
    call = {"optimizer_cls": torch.optim.AdamW, "lr": LR, "ratio": RATIO, **kwargs}
    if match is None:
        create_loraplus_optimizer(model, **call)
        return
    with pytest.raises(ValueError, match=match) as err:
        create_loraplus_optimizer(model, **call)
    assert "\n" not in str(err.value)


class NoDecaySGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3) -> None:
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):  # pragma: no cover - never stepped
        return None


def test_weight_decay_for_optimizer_without_decay_is_rejected() -> None:
    model = gpt2_lora(embedding=False)
    create_loraplus_optimizer(model, NoDecaySGD, lr=LR, ratio=RATIO)
    with pytest.raises(ValueError, match="weight_decay"):
        create_loraplus_optimizer(model, NoDecaySGD, lr=LR, ratio=RATIO, weight_decay=0.1)


def test_model_without_lora_is_rejected_by_the_theory_policy() -> None:
    """With no LoRA factor there is no η_B to set: the theory policy refuses the model (PEFT,
    and policy="peft", return a full fine-tune instead: see the ported PEFT tests below)."""
    torch.manual_seed(0)
    plain = GPT2ForSequenceClassification(GPT2Config(
        n_embd=N_EMBD, n_layer=1, n_head=4, vocab_size=VOCAB, n_positions=32, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    ))  # fmt: skip
    with pytest.raises(ValueError, match="no trainable LoRA") as err:
        create_loraplus_optimizer(plain, torch.optim.AdamW, lr=LR, ratio=RATIO)
    assert "\n" not in str(err.value)
    frozen = gpt2_lora(embedding=False)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable LoRA"):
        create_loraplus_optimizer(frozen, torch.optim.AdamW, lr=LR, ratio=RATIO)


def test_peft_policy_refuses_peft_before_0_21(monkeypatch: pytest.MonkeyPatch) -> None:
    """PEFT ≤ 0.20 grouped embedding LoRA differently (at η_A, in groupA): not reproduced."""
    monkeypatch.setattr(peft, "__version__", "0.20.0")
    with pytest.raises(ValueError, match="PEFT >= 0.21.*0.20.0") as err:
        create_loraplus_optimizer(gpt2_lora(), torch.optim.AdamW, lr=LR, ratio=RATIO,
                                  policy="peft")  # fmt: skip
    assert "\n" not in str(err.value)
    create_loraplus_optimizer(gpt2_lora(), torch.optim.AdamW, lr=LR, ratio=RATIO)  # theory: fine


# ------------------------------------------------------------------------------------------
# PEFT's own LoRA+ tests (its tests/test_loraplus.py), ported: helper success, optimizer
# success, embedding rate, and a model that is not a PeftModel


class TinyNet(torch.nn.Module):
    """The network of PEFT's LoRA+ tests: embedding → LayerNorm → linear → ReLU → linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(100, 20)
        self.layer_norm = torch.nn.LayerNorm(20)
        self.lin0 = torch.nn.Linear(20, 20, bias=bias)
        self.lin1 = torch.nn.Linear(20, 16, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin1(torch.relu(self.lin0(self.layer_norm(self.embedding(x)))))


def tiny_net(kind: str, seed: int = 0) -> torch.nn.Module:
    """``plain`` (no LoRA), ``peft`` (get_peft_model, LoRA on the embedding and lin0) or
    ``injected`` (the same LoRA layers put in place without a PeftModel wrapper)."""
    torch.manual_seed(seed)
    net = TinyNet()
    config = LoraConfig(target_modules=["embedding", "lin0"])
    if kind == "peft":
        net = get_peft_model(net, config)
    elif kind == "injected":
        net = peft.inject_adapter_in_model(config, net)
    return randomize_b(net) if kind != "plain" else net


def cross_entropy_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> float:
    """PEFT's step: token ids (2, 4, 10) → logits over 16 classes, cross-entropy."""
    g = torch.Generator().manual_seed(5)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        x = torch.randint(100, (2, 4, 10), generator=g)
        label = torch.randint(16, (2, 4, 10), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).permute(0, 3, 1, 2), label)
        loss.backward()
        opt.step()
    return float(loss.detach())


LR_T, RATIO_T, EMB_T = 5e-5, 1.2, 1e-6  # PEFT's test values


def assert_same_groups(ours, ours_model, ref, ref_model) -> None:
    """Same parameters (by name) in the same order in every group, same hyperparameters."""
    assert list(names_by_group(ours, ours_model).values()) == list(
        names_by_group(ref, ref_model).values()
    )
    for g_ours, g_ref in zip(ours.param_groups, ref.param_groups, strict=True):
        assert {k: v for k, v in g_ours.items() if k not in ("params", "name")} == {
            k: v for k, v in g_ref.items() if k != "params"
        }


def test_ported_helper_success_on_a_model_without_lora() -> None:
    """PEFT's "helper success": a plain network (no PEFT wrapper, no LoRA layer) gets four
    groups at η, lr_embedding, λ·η, λ·η. policy="peft" returns exactly PEFT's optimizer; the
    theory policy refuses a model without LoRA factors (module docstring)."""
    hp = dict(eps=1e-6, betas=(0.9, 0.999))
    ours_model, ref_model = tiny_net("plain"), tiny_net("plain")
    ours = create_loraplus_optimizer(
        ours_model, torch.optim.AdamW, lr=LR_T, ratio=RATIO_T, policy="peft",
        lr_embedding=EMB_T, weight_decay=0.0, **hp,
    )  # fmt: skip
    ref = peft_create_loraplus_optimizer(
        ref_model, torch.optim.AdamW, lr=LR_T, loraplus_lr_ratio=RATIO_T,
        loraplus_lr_embedding=EMB_T, loraplus_weight_decay=0.0, **hp,
    )  # fmt: skip
    assert [g["lr"] for g in ours.param_groups] == [LR_T, EMB_T, LR_T * RATIO_T, LR_T * RATIO_T]
    assert_same_groups(ours, ours_model, ref, ref_model)
    assert names_by_group(ours, ours_model)["groupA"] == ["embedding.weight", "lin0.weight",
                                                         "lin1.weight"]  # fmt: skip
    with pytest.raises(ValueError, match="no trainable LoRA"):
        create_loraplus_optimizer(tiny_net("plain"), torch.optim.AdamW, lr=LR_T, ratio=RATIO_T)


@pytest.mark.parametrize(
    "kind, policy",
    [("plain", "peft"), ("peft", "peft"), ("injected", "peft"), ("peft", "theory"),
     ("injected", "theory")],
)  # fmt: skip
def test_ported_optimizer_success(kind: str, policy: str) -> None:
    """PEFT's "optimizer success": the optimizer is built and steps. policy="peft" moves every
    parameter exactly as PEFT's own optimizer does; the theory policy trains every LoRA factor
    (plain networks have none and are refused, see above)."""
    model = tiny_net(kind)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, ratio=RATIO_T,
                                    policy=policy)  # fmt: skip
    loss = cross_entropy_steps(model, opt, 3)
    assert math.isfinite(loss)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not torch.equal(model.get_parameter(n), before[n]) for n in trainable)
    if policy == "peft":
        ref_model = tiny_net(kind)
        ref = peft_create_loraplus_optimizer(ref_model, torch.optim.AdamW, lr=1e-3,
                                             loraplus_lr_ratio=RATIO_T)  # fmt: skip
        cross_entropy_steps(ref_model, ref, 3)
        assert_same_params(model, ref_model)


@pytest.mark.parametrize("kind", ["peft", "injected"])
def test_ported_embedding_lora_lands_in_the_embedding_group(kind: str) -> None:
    """PEFT's "embedding lr" (its bugs #1915 and #3499): both factors of embedding LoRA train at
    lr_embedding, lin0's A at η and B at λ·η — under policy="peft" exactly as PEFT ≥ 0.21 does,
    and under the theory policy when lr_embedding is given (by default it is λ·η)."""
    ref_model = tiny_net(kind)
    ref = peft_create_loraplus_optimizer(ref_model, torch.optim.AdamW, lr=LR_T,
                                         loraplus_lr_ratio=RATIO_T,
                                         loraplus_lr_embedding=EMB_T)  # fmt: skip

    def by_lr(opt, model) -> dict[float, set[str]]:
        out: dict[float, set[str]] = {}
        for name, group in group_of(opt, model).items():
            out.setdefault(group["lr"], set()).add(short(name))
        return out

    expected = {
        EMB_T: {"embedding.lora_embedding_A.default", "embedding.lora_embedding_B.default"},
        LR_T: {"lin0.lora_A.default.weight"},
        LR_T * RATIO_T: {"lin0.lora_B.default.weight"},
    }
    assert by_lr(ref, ref_model) == expected
    for policy in ("peft", "theory"):
        model = tiny_net(kind)
        opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR_T, ratio=RATIO_T,
                                        policy=policy, lr_embedding=EMB_T)  # fmt: skip
        assert by_lr(opt, model) == expected, policy
        if policy == "peft":
            assert_same_groups(opt, model, ref, ref_model)
    model = tiny_net(kind)
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR_T, ratio=RATIO_T)
    groups = {short(n): g for n, g in group_of(opt, model).items()}
    assert groups["embedding.lora_embedding_A.default"]["lr"] == LR_T * RATIO_T
    assert groups["embedding.lora_embedding_A.default"]["name"] == "lora_embedding"


# ------------------------------------------------------------------------------------------
# learning rates as numpy scalars and 0-d tensors, passed through as PEFT does


LR_ODD = 3e-4  # a rate whose float32 rounding changes the Adam steps (1e-3 happens not to)


def _lr_variants() -> list:
    return [np.float32(LR_ODD), np.float64(LR_ODD), torch.tensor(LR_ODD, dtype=torch.float64),
            torch.tensor(LR_ODD, dtype=torch.float32)]  # fmt: skip


@pytest.mark.parametrize("lr", _lr_variants(), ids=["np.float32", "np.float64", "tensor64",
                                                    "tensor32"])  # fmt: skip
def test_peft_policy_passes_rate_types_through_like_peft(lr) -> None:
    """PEFT hands ``lr`` and ``λ·lr`` to the optimizer as they are: a numpy float32 makes
    ``λ·η`` a float32 and the Adam step is computed in its precision. policy="peft" must do
    the same: same group rates (type and value) and identical parameters after 5 steps."""
    ours_model, ref_model = gpt2_lora(), gpt2_lora()
    ours = create_loraplus_optimizer(ours_model, torch.optim.AdamW, lr=lr, ratio=RATIO,
                                     policy="peft", weight_decay=WD)  # fmt: skip
    ref = peft_create_loraplus_optimizer(ref_model, torch.optim.AdamW, lr=lr,
                                         loraplus_lr_ratio=RATIO,
                                         loraplus_weight_decay=WD)  # fmt: skip
    for g_ours, g_ref in zip(ours.param_groups, ref.param_groups, strict=True):
        assert type(g_ours["lr"]) is type(g_ref["lr"])
        assert float(g_ours["lr"]) == float(g_ref["lr"])
    train(ours_model, ours)
    train(ref_model, ref)
    assert_same_params(ours_model, ref_model)


def test_a_float32_rate_is_not_converted() -> None:
    """The difference is real: PEFT with ``np.float32(η)`` and with ``float(np.float32(η))``
    give different parameters after 5 steps, and the theory policy at λ = 1 with a float32 rate
    equals torch's AdamW given that same float32 rate, bit for bit."""
    lr = np.float32(LR_ODD)
    runs = {}
    for name, value in (("float32", lr), ("python", float(lr))):
        model = gpt2_lora()
        opt = peft_create_loraplus_optimizer(model, torch.optim.AdamW, lr=value,
                                             loraplus_lr_ratio=RATIO)  # fmt: skip
        train(model, opt)
        runs[name] = dict(model.named_parameters())
    differ = [n for n, p in runs["float32"].items() if not torch.equal(p, runs["python"][n])]
    assert differ  # a conversion to float would change the results
    ours_model, ref_model = gpt2_lora(), gpt2_lora()
    ours = create_loraplus_optimizer(ours_model, torch.optim.AdamW, lr=lr, ratio=1.0,
                                     weight_decay=WD)  # fmt: skip
    trainable = [p for p in ref_model.parameters() if p.requires_grad]
    ref = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": WD},
         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
        lr=lr,
    )  # fmt: skip
    assert all(type(g["lr"]) is np.float32 for g in ours.param_groups)
    train(ours_model, ours)
    train(ref_model, ref)
    assert_same_params(ours_model, ref_model)


@pytest.mark.parametrize("bad", [torch.tensor([LR, LR]), torch.tensor(True), np.bool_(True),
                                 torch.tensor(-LR), np.float32("nan")])  # fmt: skip
def test_bad_rate_types_are_one_line_errors(bad) -> None:
    with pytest.raises(ValueError, match="lr") as err:
        create_loraplus_optimizer(gpt2_lora(), torch.optim.AdamW, lr=bad, ratio=RATIO)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------
# bitsandbytes 8-bit optimizers: embeddings keep 32-bit state (a stub stands in for
# bitsandbytes, which needs a GPU build)


class _Manager:
    def __init__(self) -> None:
        self.overrides: list[tuple[torch.nn.Module, str, dict]] = []

    def register_module_override(self, module, name, config) -> None:
        self.overrides.append((module, name, config))


@pytest.fixture
def bnb_stub(monkeypatch: pytest.MonkeyPatch):
    """A ``bitsandbytes`` module with a recording ``GlobalOptimManager`` and three optimizer
    classes: ``AdamW8bit`` (PEFT's name), ``AdamW`` taking ``optim_bits`` (what transformers'
    ``optim="adamw_bnb_8bit"`` builds) and a 32-bit ``AdamW32bit``."""
    import types

    manager = _Manager()
    bnb = types.ModuleType("bitsandbytes")
    bnb.optim = types.ModuleType("bitsandbytes.optim")
    bnb.optim.GlobalOptimManager = types.SimpleNamespace(get_instance=lambda: manager)

    def make(name: str):
        def __init__(self, params, lr=1e-3, optim_bits=32, **kw):
            torch.optim.AdamW.__init__(self, params, lr=lr, **kw)

        attrs = {"__init__": __init__, "__module__": "bitsandbytes.optim.adamw"}
        return type(name, (torch.optim.AdamW,), attrs)

    for name in ("AdamW8bit", "AdamW", "AdamW32bit"):
        setattr(bnb.optim, name, make(name))
    monkeypatch.setitem(sys.modules, "bitsandbytes", bnb)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", bnb.optim)
    return bnb, manager


@pytest.mark.parametrize("policy", ["theory", "peft"])
def test_eight_bit_optimizers_keep_embeddings_in_32_bit(bnb_stub, policy: str) -> None:
    bnb, manager = bnb_stub
    model = gpt2_lora()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) >= 2  # wte (the LoRA layer's base) and wpe
    create_loraplus_optimizer(model, bnb.optim.AdamW8bit, lr=LR, ratio=RATIO, policy=policy)
    assert [m for m, *_ in manager.overrides] == embeddings
    assert all((name, cfg) == ("weight", {"optim_bits": 32}) for _, name, cfg in manager.overrides)
    # PEFT's own function registers the same modules
    manager.overrides.clear()
    peft_create_loraplus_optimizer(model, bnb.optim.AdamW8bit, lr=LR, loraplus_lr_ratio=RATIO)
    assert [m for m, *_ in manager.overrides] == embeddings
    # a bitsandbytes optimizer with optim_bits=8 (the Trainer's adamw_bnb_8bit) too; 32-bit not
    manager.overrides.clear()
    create_loraplus_optimizer(model, bnb.optim.AdamW, lr=LR, ratio=RATIO, policy=policy,
                              optim_bits=8)  # fmt: skip
    assert [m for m, *_ in manager.overrides] == embeddings
    manager.overrides.clear()
    create_loraplus_optimizer(model, bnb.optim.AdamW32bit, lr=LR, ratio=RATIO, policy=policy)
    create_loraplus_optimizer(model, bnb.optim.AdamW, lr=LR, ratio=RATIO, policy=policy)
    create_loraplus_optimizer(model, torch.optim.AdamW, lr=LR, ratio=RATIO, policy=policy)
    assert manager.overrides == []


def test_trainer_applies_the_eight_bit_override(bnb_stub, tmp_path) -> None:
    """LoraPlusTrainer.create_optimizer with the optimizer transformers builds for
    ``optim="adamw_bnb_8bit"`` (a bitsandbytes class with ``optim_bits=8``)."""
    from transformers import TrainingArguments

    from loraplus_lab.sims.realmodels.train import LoraPlusTrainer

    bnb, manager = bnb_stub
    model = gpt2_lora()
    args = TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True,
                             learning_rate=LR, weight_decay=WD)  # fmt: skip
    eight_bit = (bnb.optim.AdamW, {"optim_bits": 8})
    trainer = LoraPlusTrainer(model=model, args=args, loraplus_ratio=RATIO,
                              optimizer_cls_and_kwargs=eight_bit)  # fmt: skip
    opt = trainer.create_optimizer()
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert [m for m, *_ in manager.overrides] == embeddings
    audit = optimizer_audit(opt, model).set_index("group")
    assert audit.loc["lora_B", "lr"] == pytest.approx(LR * RATIO)
    assert audit.loc["lora_A", "weight_decay"] == WD  # honoured, unlike the authors' trainer
