"""Hub model families through the finetune path, tested offline on two tiny local models of
different widths saved with ``save_pretrained``: the same landscapes, slopes and speed-up as a
ladder, widths read from the models' configs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loraplus_lab.sims.realmodels import ladder_analysis as LA
from loraplus_lab.sims.realmodels.family import family_jobs, parse_family_spec
from loraplus_lab.sims.sweep.spec import SpecError
from loraplus_lab.sims.sweep.store import load


def _setup(root: Path) -> str:
    from loraplus_lab.sims.realmodels.export import make_model_folder

    for w in (32, 64):
        make_model_folder("gpt2", w, root / f"m{w}", layers=1, head_dim=16, context=32)
    rows = [{"text": f"a {w} film", "label": int(w == "good")} for w in ["good", "bad"] * 24]
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    pd.DataFrame(rows[:16]).to_csv(root / "dev.csv", index=False)
    return f"""
name = "tiny-family"
models = ["{root / "m32"}", "{root / "m64"}"]
task = "{root / "train.csv"}"
eval_task = "{root / "dev.csv"}"
seeds = 1

[finetune]
steps = 4
batch_size = 8
eval_every = 2
eval_max_samples = 16
max_length = 16
r = 2
offline = true

[grid]
log2_eta_a = [-8, -6]
log2_eta_b = [-4, -4]
step = 2
refine = 0

[lines]
equal = [-6, -6]
ratio = 16
ratio_log2_eta_a = [-8, -8]
step = 1
"""


def test_family_spec_checks(tmp_path: Path) -> None:
    text = _setup(tmp_path)
    spec = parse_family_spec(text, "f.toml")
    assert len(spec.models) == 2 and spec.finetune["eval_every"] == 2
    assert len(family_jobs(spec)) == 2 * len(spec.coarse_points())
    for old, new, msg in [
        ("seeds = 1", "seeds = 0", "seeds"),
        (f'models = ["{tmp_path / "m32"}", ', "models = [", "at least two"),
        ("eval_task = ", "other = ", "unknown key 'other'"),
        ("step = 1\n", "step = 1\nb_only = [-4, -3]\n", "no A-frozen line"),
    ]:
        with pytest.raises(SpecError, match=msg):
            parse_family_spec(text.replace(old, new, 1), "f.toml")


@pytest.mark.slow
def test_two_local_models_give_the_ladder_analysis(tmp_path: Path, capsys, monkeypatch) -> None:
    from loraplus_lab.sims.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = tmp_path / "family.toml"
    spec.write_text(_setup(tmp_path))
    out = tmp_path / "store"
    args = ["ladder", str(spec), "--out", str(out), "--executor", "serial", "--quiet"]
    assert main([*args, "--boot", "9"]) == 0
    text = capsys.readouterr().out
    assert "per width" in text and "n =    32" in text and "n =    64" in text
    df = load(out)
    assert df.attrs["complete"] and set(df["width"]) == {32, 64}  # read from the configs
    ft = df[df["part"] == "finetune"]
    assert sorted(ft["step"].unique()) == [0, 2, 4]
    assert ft.loc[ft["step"].isin([0, 4]), "final_loss"].notna().all()
    table = LA.optima_table(LA.landscapes(df), 16.0)
    assert len(table) == 2 and table["best_loss"].notna().all()
    assert main(["show", str(out)]) == 0 and "per width" in capsys.readouterr().out


def test_a_model_that_cannot_be_had_is_one_line_and_nothing_written(tmp_path: Path, capsys) -> None:
    from loraplus_lab.sims.cli import main

    text = _setup(tmp_path).replace(str(tmp_path / "m64"), "no-such-org/no-such-model")
    spec = tmp_path / "family.toml"
    spec.write_text(text)
    capsys.readouterr()  # the set-up's own output
    assert main(["ladder", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no-such-org/no-such-model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
