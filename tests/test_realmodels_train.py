"""Real-model training: loading, data, LoraPlusTrainer, the accelerate loop, finetune.

Everything runs offline on the CPU: a tiny random RoBERTa (and GPT-2) built from a config and
saved with ``save_pretrained`` beside a word-level tokenizer built with ``tokenizers``, and a
32-row CSV written here. The two-process test launches ``accelerate launch --multi_gpu
--num_processes 2`` on the CPU (torchrun + gloo).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")
pytest.importorskip("datasets")

from loraplus_lab.sims.realmodels import data, models, train  # noqa: E402
from loraplus_lab.sims.realmodels.finetune import finetune  # noqa: E402
from loraplus_lab.sims.realmodels.grid import expand_grid, finetune_grid, grid_point_name  # noqa: E402
from loraplus_lab.sims.realmodels.optimizer import create_loraplus_optimizer, optimizer_audit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORDS = "good bad great awful fine movie film plot acting was is the a very not really".split()
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
SENTENCES = [
    "good movie",
    "bad film",
    "very good plot",
    "awful acting",
    "great film",
    "not good",
    "fine movie",
    "really bad plot",
]


def _tokenizer():
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
        model_max_length=64,
    )  # fmt: skip


def _roberta_config(**kw):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=72,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny RoBERTa and GPT-2 (with tokenizer) saved offline, and a 32-row CSV."""
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        RobertaForSequenceClassification,
    )

    root = tmp_path_factory.mktemp("assets")
    tok = _tokenizer()
    torch.manual_seed(0)
    RobertaForSequenceClassification(_roberta_config()).save_pretrained(root / "roberta")
    tok.save_pretrained(root / "roberta")
    gpt2 = GPT2Config(
        vocab_size=len(SPECIALS) + len(WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=2, num_labels=2,
    )  # fmt: skip
    GPT2ForSequenceClassification(gpt2).save_pretrained(root / "gpt2")
    tok.save_pretrained(root / "gpt2")
    rows = [SENTENCES[i % len(SENTENCES)] for i in range(32)]
    labels = ["pos" if i % 2 == 0 else "neg" for i in range(32)]
    pd.DataFrame({"text": rows, "label": labels}).to_csv(root / "train.csv", index=False)
    return {
        "root": root,
        "roberta": root / "roberta",
        "gpt2": root / "gpt2",
        "csv": root / "train.csv",
    }


def _lora_model(path: Path, num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    base = models.load_model(path, num_labels=num_labels)
    return models.apply_lora(base, models.lora_config_for(base))


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip() == text and text
    return text


# --------------------------------------------------------------------------------------------
# models


def test_glue_target_modules_per_architecture(assets):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    rob = models.load_model(assets["roberta"], num_labels=3)
    cfg = models.lora_config_for(rob)
    assert sorted(cfg.target_modules) == ["query", "value"] and cfg.r == 8
    assert cfg.modules_to_save == ["classifier"]
    gpt = models.load_model(assets["gpt2"])
    gcfg = models.lora_config_for(gpt)
    assert sorted(gcfg.target_modules) == ["c_attn", "c_fc", "c_proj"] and gcfg.fan_in_fan_out
    assert gpt.config.pad_token_id == 2  # GPT-2 has none: its end-of-sequence id pads
    llama = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, num_labels=2,
    ))  # fmt: skip
    lcfg = models.lora_config_for(llama)
    assert set(lcfg.target_modules) == set(models.GLUE_TARGET_MODULES["llama"])
    assert lcfg.modules_to_save == ["score"]


def test_apply_lora_trains_adapters_and_head_out_proj_only(assets):
    model = _lora_model(assets["roberta"])
    names = models.trainable_parameter_names(model)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    head = [n for n in names if "classifier" in n]
    assert head and all("out_proj" in n for n in head)  # the paper freezes the head's dense
    assert not any("query.base_layer" in n for n in names)


def test_target_modules_matching_nothing_lists_module_names(assets):
    model = models.load_model(assets["roberta"])
    with pytest.raises(ValueError) as err:
        models.lora_config_for(model, target_modules=["q_proj"])
    text = _one_line(err)
    assert "q_proj" in text and "query" in text and "out_proj" in text


def test_unknown_model_offline_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(models.ModelLoadError) as err:
        models.load_model("no-such-org/no-such-model-xyz", offline=True)
    assert "no-such-org/no-such-model-xyz" in _one_line(err)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError):
        models.load_tokenizer("no-such-org/no-such-model-xyz")
    with pytest.raises(ValueError) as err:
        models.load_model(tmp_path / "missing")
    assert "no such model folder" in _one_line(err)
    with pytest.raises(ValueError):
        models.load_model(tmp_path, task="regression")


# --------------------------------------------------------------------------------------------
# data


def test_local_files_labels_and_pairs(assets, tmp_path):
    tok = models.load_tokenizer(assets["roberta"])
    task = data.load_task(assets["csv"], tok, max_length=16)
    assert task.num_labels == 2 and task.label_names == ["neg", "pos"] and len(task) == 32
    assert task.dataset[0]["labels"] == 1 and task.dataset[0]["input_ids"][0] == 0
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(
        json.dumps({"sentence": s, "sentence2": "the plot", "label": i % 3}) + "\n"
        for i, s in enumerate(SENTENCES)
    ))  # fmt: skip
    only_pos = tmp_path / "eval.csv"
    only_pos.write_text("text,label\ngood movie,pos\ngreat film,pos\n")
    evaluation = data.load_task(only_pos, tok, label_names=task.label_names)
    assert evaluation.dataset["labels"] == [1, 1] and evaluation.num_labels == 2
    only_pos.write_text("text,label\ngood movie,pos\nfine film,meh\n")
    with pytest.raises(data.DataError) as err:
        data.load_task(only_pos, tok, label_names=task.label_names)
    assert "row 2" in _one_line(err)
    pairs = data.load_task(path, tok, max_samples=5)
    assert pairs.num_labels == 3 and len(pairs) == 5
    assert pairs.text_columns == ("sentence", "sentence2")
    assert pairs.dataset[0]["input_ids"].count(2) == 3  # <s> A </s> </s> B </s>


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("text,target\ngood movie,1\n", "no 'label' column"),
        ("words,label\ngood movie,1\n", "no text column"),
        ("text,label\ngood movie,1\nbad film,\n", "row 2: 'label' is missing"),
        ("text,label\ngood movie,1\nbad film,nan\n", "row 2: 'label' is missing"),
        ("text,label\ngood movie,-1\n", "row 1"),
    ],
)
def test_bad_data_files_are_one_line(assets, tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    tok = models.load_tokenizer(assets["roberta"])
    with pytest.raises(data.DataError) as err:
        data.load_task(path, tok)
    text = _one_line(err)
    assert needle in text and str(path) in text


def test_glue_columns_through_load_dataset(assets, monkeypatch):
    import datasets

    calls = []

    def fake(name, split):
        calls.append((name, split))
        spec = data.GLUE_TASKS[name]
        cols = {spec.text: ["good movie", "bad film"], "label": [0, 2], "idx": [0, 1]}
        if spec.text_pair:
            cols[spec.text_pair] = ["the plot", "the acting"]
        features = datasets.Features({
            **{c: datasets.Value("string") for c in cols if c not in ("label", "idx")},
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32"),
        })  # fmt: skip
        return datasets.Dataset.from_dict(cols, features=features)

    monkeypatch.setattr(data, "_load_glue_raw", fake)
    tok = models.load_tokenizer(assets["roberta"])
    task = data.load_task("glue/mnli", tok, split="validation", max_samples=2)
    assert calls == [("mnli", "validation_matched[:2]")]
    assert task.num_labels == 3 and task.text_columns == ("premise", "hypothesis")
    assert task.label_names == ["entailment", "neutral", "contradiction"]
    with pytest.raises(data.DataError):
        data.load_task("glue/sst5", tok)
    with pytest.raises(data.DataError):
        data.load_task("glue/sst2", tok, split="test")


# --------------------------------------------------------------------------------------------
# the Trainer


def test_loraplus_trainer_uses_loraplus_groups(assets, tmp_path):
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    tok = models.load_tokenizer(assets["roberta"])
    task = data.load_task(assets["csv"], tok)
    model = _lora_model(assets["roberta"])
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), per_device_train_batch_size=8, max_steps=3,
        learning_rate=1e-3, weight_decay=0.01, logging_steps=1, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, optim="adamw_torch",
        adam_beta2=0.99,
    )  # fmt: skip
    trainer = train.LoraPlusTrainer(
        model=model, args=args, train_dataset=task.dataset,
        data_collator=DataCollatorWithPadding(tok), loraplus_ratio=16,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    optimizer = trainer.create_optimizer()
    audit = optimizer_audit(optimizer, model).set_index("group")
    assert audit.loc["lora_A", "lr"] == pytest.approx(1e-3)
    assert audit.loc["lora_B", "lr"] == pytest.approx(16e-3)
    assert audit.loc["lora_A", "weight_decay"] == pytest.approx(0.01)
    assert audit.loc["other_no_decay", "weight_decay"] == 0
    assert optimizer.defaults["betas"] == (0.9, 0.99)
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    initial = {g["name"]: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert initial["lora_B"] == pytest.approx(16 * initial["lora_A"])


def test_loraplus_trainer_rejects_bad_settings(assets, tmp_path):
    from transformers import TrainingArguments

    model = _lora_model(assets["roberta"])
    args = TrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", use_cpu=True)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError) as err:
            train.LoraPlusTrainer(model=model, args=args, loraplus_ratio=bad)
        assert "ratio" in _one_line(err)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        train.LoraPlusTrainer(model=model, args=args, optimizers=(opt, None))
    lp = train.LoraPlusArguments(ratio=4.0, policy="peft")
    trainer = train.LoraPlusTrainer(model=model, args=args, loraplus=lp, loraplus_ratio=2.0)
    assert trainer.loraplus.ratio == 2.0 and trainer.loraplus.policy == "peft"


# --------------------------------------------------------------------------------------------
# the accelerate loop


def _loop_parts(assets, seed=3):
    from transformers import get_scheduler

    tok = models.load_tokenizer(assets["roberta"])
    task = data.load_task(assets["csv"], tok)
    model = _lora_model(assets["roberta"])
    opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-2, ratio=16, weight_decay=0.01)
    sched = get_scheduler("linear", opt, num_warmup_steps=1, num_training_steps=6)
    loader = train.make_dataloader(task.dataset, tok, batch_size=8, seed=seed)
    return model, opt, loader, sched


def test_resume_is_bit_identical(assets, tmp_path):
    # 32 rows, batch 8: 4 steps per epoch, so the resumed half crosses an epoch boundary;
    # dropout (hidden and LoRA) is on, so RNG handling matters.
    model, opt, loader, sched = _loop_parts(assets)
    straight = train.train_loop(
        model, opt, loader, steps=6, scheduler=sched, seed=3, progress=False,
        accelerator=train.make_accelerator(seed=3),
    )  # fmt: skip
    expected = train.trainable_state(model)

    ckpt = tmp_path / "ckpt"
    model, opt, loader, sched = _loop_parts(assets)
    first = train.train_loop(
        model, opt, loader, steps=3, scheduler=sched, seed=3, progress=False,
        checkpoint_dir=ckpt, checkpoint_every=2, accelerator=train.make_accelerator(seed=3),
    )  # fmt: skip
    assert len(first) == 3
    saved = sorted(p.name for p in ckpt.iterdir())
    assert saved == ["step-00000002", "step-00000003"]
    assert {
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng-0.pt",
        "state.json",
        "metrics.csv",
    } <= {p.name for p in (ckpt / saved[-1]).iterdir()}

    model, opt, loader, sched = _loop_parts(assets)  # a fresh process would start like this
    resumed = train.train_loop(
        model, opt, loader, steps=6, scheduler=sched, seed=3, progress=False,
        resume_from=ckpt, accelerator=train.make_accelerator(seed=3),
    )  # fmt: skip
    got = train.trainable_state(model)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert resumed["loss"].tolist() == straight["loss"].tolist()
    assert resumed["lr/lora_B"].tolist() == straight["lr/lora_B"].tolist()
    assert straight["epoch"].tolist() == [0, 0, 0, 0, 1, 1]

    model, opt, loader, sched = _loop_parts(assets)
    with pytest.raises(ValueError) as err:
        train.train_loop(
            model,
            opt,
            loader,
            steps=6,
            scheduler=sched,
            seed=4,
            progress=False,
            resume_from=ckpt,
            accelerator=train.make_accelerator(seed=4),
        )
    assert "seed" in _one_line(err)


DDP_SCRIPT = """
import json
import sys

import torch
from safetensors.torch import save_file

from loraplus_lab.sims.realmodels import data, models, train
from loraplus_lab.sims.realmodels.optimizer import create_loraplus_optimizer

model_dir, csv, out = sys.argv[1:4]
acc = train.make_accelerator(seed=5)
tok = models.load_tokenizer(model_dir)
task = data.load_task(csv, tok)
torch.manual_seed(100 + acc.process_index)  # different adapter inits: DDP must sync them
base = models.load_model(model_dir, num_labels=task.num_labels)
model = models.apply_lora(base, models.lora_config_for(base))
opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-2, ratio=16)
loader = train.make_dataloader(task.dataset, tok, batch_size=4, seed=5)
frame = train.train_loop(model, opt, loader, steps=3, accelerator=acc, seed=5, progress=False)
state = train.trainable_state(acc.unwrap_model(model))
save_file(state, f"{out}/rank{acc.process_index}.safetensors")
flat = torch.cat([state[k].flatten() for k in sorted(state)])
gathered = acc.gather(flat.unsqueeze(0))
info = {
    "rank": acc.process_index,
    "world": acc.num_processes,
    "type": str(acc.distributed_type),
    "backend": torch.distributed.get_backend(),
    "losses": frame["loss"].tolist(),
    "identical": all(torch.equal(gathered[0], g) for g in gathered),
}
with open(f"{out}/rank{acc.process_index}.json", "w") as fh:
    json.dump(info, fh)
acc.end_training()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(assets, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out = tmp_path / "ddp"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
        "CUDA_VISIBLE_DEVICES": "",
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(assets["roberta"]), str(assets["csv"]), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, info in enumerate(infos):
        assert info["rank"] == r and info["world"] == 2
        assert info["type"].endswith("MULTI_CPU") and info["backend"] == "gloo"
        assert info["identical"] and len(info["losses"]) == 3
        assert all(math.isfinite(v) for v in info["losses"])
    assert infos[0]["losses"] == infos[1]["losses"]  # the loss is averaged over processes
    from safetensors.torch import load_file

    a, b = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# finetune


def test_finetune_writes_config_and_metrics(assets, tmp_path):
    out = tmp_path / "run"
    summary = finetune(
        assets["roberta"], assets["csv"], out=out, lr=1e-3, ratio=8, steps=3, batch_size=8,
        seed=1, eval_task=assets["csv"], progress=False,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv", "summary.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no partial folder left
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["step"].tolist() == [1, 2, 3]
    assert (metrics["lr/lora_B"] / metrics["lr/lora_A"]).round(9).eq(8).all()
    config = json.loads((out / "config.json").read_text())
    assert config["eta_a"] == 1e-3 and config["eta_b"] == pytest.approx(8e-3)
    assert config["config"]["use_trainer"] is True and config["resolved"]["total_steps"] == 3
    assert {r["group"] for r in config["optimizer_audit"]} >= {"lora_A", "lora_B"}
    assert "transformers" in config["versions"]
    assert summary["steps_done"] == 3 and 0 <= summary["eval_accuracy"] <= 1
    with pytest.raises(ValueError) as err:  # out is not empty now
        finetune(assets["roberta"], assets["csv"], out=out, steps=1, progress=False)
    assert "not empty" in _one_line(err)


def test_finetune_grid_runs_on_the_sweep_engine(assets, tmp_path):
    from loraplus_lab.sims.sweep import Store, load

    grid = {"eta_a": [1e-3], "eta_b": [1e-3, 4e-3]}
    assert expand_grid(grid) == [(1e-3, 1e-3), (1e-3, 4e-3)]
    out = tmp_path / "grid"
    seen = []
    kw = dict(steps=2, batch_size=8, use_trainer=False, progress=False)
    result = finetune_grid(assets["gpt2"], assets["csv"], grid, out=out, on_point=seen.append, **kw)
    names = [grid_point_name(a, b) for a, b in expand_grid(grid)]
    assert [p["point"] for p in result["grid"]] == names == [s["point"] for s in seen]
    table = pd.read_csv(out / "grid.csv")
    assert table["ratio"].tolist() == pytest.approx([1.0, 4.0])
    for name in names:
        assert (out / "points" / name / "summary.json").is_file()
    # the points are jobs of the sweep engine's store: one file each, loadable as one frame
    store = Store.open(out)
    assert len(store.done_keys()) == 2
    df = load(out)
    assert df.attrs["complete"] and set(df["point"]) == set(names)
    # rerunning the same grid into the same folder trains nothing again
    again = finetune_grid(assets["gpt2"], assets["csv"], grid, out=out, **kw)
    assert [p["train_seconds"] for p in again["grid"]] == [
        p["train_seconds"] for p in result["grid"]
    ]
    assert store.meta()["runs"][-1]["jobs_run"] == 0
    # the same grid on two local worker processes gives the same losses
    local = finetune_grid(
        assets["gpt2"], assets["csv"], grid, out=tmp_path / "local", executor="local", workers=2,
        **kw,
    )  # fmt: skip
    assert [p["final_loss"] for p in local["grid"]] == [p["final_loss"] for p in result["grid"]]
    with pytest.raises(ValueError):
        expand_grid({"eta_a": [1e-3], "eta_b": [0.0]})


def test_sweep_resume_finishes_a_finetune_grid(assets, tmp_path, capsys):
    """`loraplus-lab sweep --resume --out STORE` on a finetune grid's store (it once failed with
    "invalid TOML": the grid's JSON went into spec.toml): the store keeps the grid as grid.json,
    and --resume trains exactly the missing point, to the same losses."""
    from loraplus_lab.sims.cli import main
    from loraplus_lab.sims.sweep import Store, load

    grid = {"eta_a": [1e-3], "eta_b": [1e-3, 4e-3, 1.6e-2]}
    out = tmp_path / "grid"
    kw = dict(steps=2, batch_size=8, use_trainer=False, progress=False)
    finetune_grid(assets["gpt2"], assets["csv"], grid, out=out, **kw)
    assert (out / "grid.json").is_file() and not (out / "spec.toml").exists()
    reference = load(out)
    store = Store.open(out)
    victim = sorted(store.done_keys())[1]
    (store.jobs_dir / f"{victim}.parquet").unlink()  # as if the run had died before it
    assert not load(out).attrs["complete"]
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "(finetune-grid)" in shown and "2/3 jobs done" in shown
    assert main(["sweep", "--resume", "--out", str(out), "--executor", "serial", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["jobs_run"], record["jobs_skipped"]) == (1, 2)
    resumed = load(out)
    assert resumed.attrs["complete"]
    cols = ["point", "eta_a", "eta_b", "step", "loss"]
    pd.testing.assert_frame_equal(resumed[cols], reference[cols], check_exact=True)


def _bad_csv(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "unknown_model",
        "no_label_column",
        "nan_label",
        "bad_targets",
        "ratio_zero",
        "ratio_negative",
        "lr_zero",
    ],
)
def test_finetune_bad_input_writes_nothing(assets, tmp_path, case):
    model, task, kw = str(assets["roberta"]), assets["csv"], {}
    if case == "unknown_model":
        model, kw = "no-such-org/no-such-model-xyz", {"offline": True}
    elif case == "no_label_column":
        task = _bad_csv(tmp_path, "nolabel.csv", "text,y\ngood movie,1\n")
    elif case == "nan_label":
        task = _bad_csv(tmp_path, "nan.csv", "text,label\ngood movie,1\nbad film,NaN\n")
    elif case == "bad_targets":
        kw = {"target_modules": ["q_proj", "v_proj"]}
    elif case == "ratio_zero":
        kw = {"ratio": 0.0}
    elif case == "ratio_negative":
        kw = {"ratio": -16.0}
    elif case == "lr_zero":
        kw = {"lr": 0.0}
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError) as err:
        finetune(model, task, out=out, steps=1, batch_size=8, progress=False, **kw)
    _one_line(err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_finetune_grid_bad_input_writes_nothing(assets, tmp_path):
    out = tmp_path / "grid"
    for grid, kw in (
        ([(1e-3, 0.0)], {}),
        ({"eta_a": [1e-3], "ratio": [-2.0]}, {}),
        ([(1e-3, 1e-2)], {"target_modules": ["nope"]}),
        ([(1e-3, 1e-2)], {"r": 0}),
    ):
        with pytest.raises(ValueError) as err:
            finetune_grid(
                assets["roberta"], assets["csv"], grid, out=out, steps=1, progress=False, **kw
            )
        _one_line(err)
        assert not out.exists() and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the command line
def test_cli_finetune_runs_offline(assets, tmp_path, capsys):
    from loraplus_lab.sims.cli import main

    out = tmp_path / "run"
    argv = ["finetune", "--model", str(assets["roberta"]), "--task", str(assets["csv"]),
            "--out", str(out), "--steps", "2", "--batch-size", "8", "--offline", "--json",
            "--bf16", "off"]  # fmt: skip
    assert main(argv) == 0
    assert (out / "config.json").exists() and (out / "metrics.csv").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["ratio"] == 16.0  # the default λ, recorded
    assert cfg["eta_b"] == 16.0 * cfg["eta_a"]
    audit = {row["group"]: row for row in cfg["optimizer_audit"]}
    assert audit["lora_B"]["lr"] == 16.0 * audit["lora_A"]["lr"] == cfg["eta_b"]
    assert json.loads((out / "summary.json").read_text())["ratio"] == 16.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--model": "no-such-org/no-such-model"}, "no-such-model"),
        ({"--ratio": "0"}, "--ratio"),
        ({"--ratio": "-2"}, "--ratio"),
        ({"--target-modules": "nothing_here"}, "nothing_here"),
        ({"--task": "MISSING_LABEL"}, "label"),
    ],
)
def test_cli_finetune_bad_input_exit_2_nothing_written(assets, tmp_path, capsys, change, message):
    from loraplus_lab.sims.cli import main

    if change.get("--task") == "MISSING_LABEL":
        bad = tmp_path / "nolabel.csv"
        pd.DataFrame({"text": SENTENCES}).to_csv(bad, index=False)
        change = {"--task": str(bad)}
    args = {"--model": str(assets["roberta"]), "--task": str(assets["csv"]),
            "--out": str(tmp_path / "run"), "--steps": "1", **change}  # fmt: skip
    argv = ["finetune", "--offline", *[x for kv in args.items() for x in kv]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _rates_csv(path: Path) -> Path:
    """Per-width optima of a known law, log2 η_A* = 2 − log2 n, log2 η_B* = −5 (with standard
    errors): at the tiny models' width 32 the rule predicts η_A = 2^-3, η_B = 2^-5, λ = 2^-2."""
    rows = [
        {"width": w, "log2_eta_a": 2 - math.log2(w), "log2_eta_b": -5.0,
         "se_log2_eta_a": 0.05, "se_log2_eta_b": 0.05}
        for w in (4, 8, 16)
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(path / "optima.csv", index=False)
    return path / "optima.csv"


def test_cli_finetune_takes_its_rates_from_a_transfer(assets, tmp_path, capsys, monkeypatch):
    """--rates-from: η_A and λ predicted at the model's width (hidden_size 32, read from its
    configuration) from per-width optima reach the finetune (here a stand-in that records what
    it is given: the real one is tested above) and are recorded in rates_from.json."""
    import loraplus_lab.sims.realmodels.finetune as ft_module
    from loraplus_lab.sims.cli import main

    given = {}

    def fake_finetune(model, task, *, out, lr, ratio, **kw):
        given.update(lr=lr, ratio=ratio)
        return {"out": str(out), "lr": lr, "ratio": ratio}

    monkeypatch.setattr(ft_module, "finetune", fake_finetune)
    table, out = _rates_csv(tmp_path), tmp_path / "run"
    argv = ["finetune", "--model", str(assets["roberta"]), "--task", str(assets["csv"]),
            "--out", str(out), "--steps", "1", "--offline", "--json",
            "--rates-from", str(table)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert given["lr"] == pytest.approx(2.0**-3, rel=1e-9)  # 2 − log2 32 = −3
    assert given["ratio"] == pytest.approx(2.0**-2, rel=1e-9)  # η_B = 2^-5
    record = json.loads((out / "rates_from.json").read_text())
    assert record["width"] == 32 and "η_A = " in record["rule"]
    assert summary["rates_from"]["prediction"]["log2_ratio"] == pytest.approx(-2.0)
    # --width overrides the model's
    argv[argv.index("--out") + 1] = str(tmp_path / "run2")
    assert main([*argv, "--width", "64"]) == 0
    assert given["lr"] == pytest.approx(2.0**-4, rel=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "1e-3"], "drop --lr"),
        (["--lora"], "drop --lora"),
        (["--width", "0"], "--width must be a positive width"),
        (["--rates-from", "MISSING"], "does not exist"),
    ],
)
def test_cli_finetune_rates_from_bad_input(assets, tmp_path, capsys, extra, message):
    from loraplus_lab.sims.cli import main

    table = _rates_csv(tmp_path)
    if "MISSING" in extra:
        extra = ["--rates-from", str(tmp_path / "nowhere")]
        table = None
    argv = ["finetune", "--model", str(assets["roberta"]), "--task", str(assets["csv"]),
            "--out", str(tmp_path / "run"), "--steps", "1", "--offline",
            *(["--rates-from", str(table)] if table else []), *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    # --width alone is refused too
    assert main(["finetune", "--model", "m", "--task", "t", "--out", str(tmp_path / "r2"),
                 "--width", "64"]) == 2  # fmt: skip
    assert "--width goes with --rates-from" in capsys.readouterr().err
