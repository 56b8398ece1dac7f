"""Offline model folders: a ladder rung and its byte-level tokenizer, which `finetune` loads
without the network (`loraplus-lab make-model`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from loraplus_lab.sims.realmodels.corpus import encode
from loraplus_lab.sims.realmodels.export import byte_tokenizer


def test_byte_tokenizer_ids_are_the_corpus_bytes() -> None:
    tok = byte_tokenizer()
    text = "déf f(x):\n    return x\x01 ’ — ok"
    ids = tok(text)["input_ids"]
    assert ids == encode(text).tolist()  # the ladder's corpora and the tokenizer agree
    assert tok.decode(ids) == text.replace("\x01", " ")
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 3)


def test_make_model_folder_loads_and_finetunes_offline(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplus_lab.sims.cli import main
    from loraplus_lab.sims.realmodels.finetune import finetune

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "gpt2-32"
    assert main(["make-model", "gpt2", "--width", "32", "--head-dim", "16", "--layers", "1",
                 "--context", "32", "--out", str(out)]) == 0  # fmt: skip
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_embd == 32 and AutoTokenizer.from_pretrained(out).vocab_size == 256
    rows = [{"text": f"{w} film", "label": int(w == "good")} for w in ["good", "bad"] * 16]
    data = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    summary = finetune(str(out), str(data), out=tmp_path / "run", steps=2, batch_size=8,
                       progress=False, offline=True)  # fmt: skip
    assert summary["steps_done"] == 2 and not summary["diverged"]


def test_make_model_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    from loraplus_lab.sims.cli import main

    out = tmp_path / "m"
    assert main(["make-model", "gpt2", "--width", "40", "--head-dim", "16", "--out", str(out)]) == 2
    assert "divisible by the head dimension 16" in capsys.readouterr().err
    assert main(["make-model", "roberta", "--pretrain", "stdlib-code", "--out", str(out)]) == 2
    assert "RoBERTa is masked" in capsys.readouterr().err
    (out / "x").mkdir(parents=True)
    assert main(["make-model", "gpt2", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["make-model", "bert", "--out", str(tmp_path / "b")]) == 2
    assert "invalid choice: 'bert'" in capsys.readouterr().err
