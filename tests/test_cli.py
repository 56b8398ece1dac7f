"""The ``loraplus-lab`` command: the default comparison, JSON output, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loraplus_lab.sims.cli import main, parse_seeds, parse_widths

SMALL = ["--widths", "64,256,1024", "--seeds", "3", "--steps", "2", "--no-plot"]


def test_parse_widths_and_seeds() -> None:
    assert parse_widths("2^6..2^9") == [64, 128, 256, 512]
    assert parse_widths("256,64") == [64, 256]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4..6") == [4, 5, 6]
    assert parse_seeds("1,5") == [1, 5]


def test_sweep_writes_results_and_prints_verdicts(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", *SMALL[:-1], "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "loraplus: efficient" in text and "lora: A and B under-trained" in text
    assert "differs" not in text
    for name in ("sweep.csv", "slopes.csv", "config.json", "deltas.png"):
        assert (out / name).stat().st_size > 0
    df = pd.read_csv(out / "sweep.csv")
    assert len(df) == 3 * 2 * 3 * 3  # widths × params × seeds × (steps + 1)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["widths"] == [64, 256, 1024] and "torch" in cfg["versions"]
    assert not list(out.glob(".*.tmp"))


def test_sweep_json_and_custom_exponents(tmp_path: Path, capsys) -> None:
    args = ["sweep", "--widths", "2^6..2^12", "--seeds", "4", "--steps", "2", "--no-plot"]
    args += ["--eta", "0.1", "--presets", "", "--c-a", "-1/2", "--c-b", "-1/2", "--json"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    payload = json.loads(capsys.readouterr().out)
    (name,) = payload["regimes"]
    assert payload["regimes"][name] == "internally unstable"
    rows = [r for r in payload["table"] if r["quantity"] == "za_mean_abs" and r["step"] == 2]
    assert rows[0]["predicted_label"] == "1/2" and abs(rows[0]["slope"] - 0.5) < 0.15


def test_theory_prints_exponents_and_regime(capsys) -> None:
    assert main(["theory", "--init", "A", "--optimizer", "adam", "--c-a", "-1", "--c-b", "0"]) == 0
    text = capsys.readouterr().out
    assert "regime: efficient" in text and "delta1" in text
    assert main(["theory", "--init", "B", "--c-a", "-1/2", "--c-b", "-1/2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["regime"]["label"] == "unstable"


def test_theory_phase_diagram(tmp_path: Path) -> None:
    assert main(["theory", "--phase", "--steps", "3", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000


BAD = [
    (["sweep", "--widths", "0,64"], "width must be positive"),
    (["sweep", "--widths", "64"], "at least two widths"),
    (["sweep", "--widths", "abc"], "bad width"),
    (["sweep", "--steps", "0"], "--steps"),
    (["sweep", "--steps", "-3"], "--steps"),
    (["sweep", "--eta", "0"], "--eta"),
    (["sweep", "--eta", "-1e-3"], "--eta"),
    (["sweep", "--eta-b", "nan"], "--eta-b"),
    (["sweep", "--eps", "abc"], "--eps"),
    (["sweep", "--alpha", "-2"], "--alpha"),
    (["sweep", "--seeds", "x"], "seeds"),
    (["sweep", "--optimizer", "sgdm"], "invalid choice"),
    (["sweep", "--init", "C"], "invalid choice"),
    (["sweep", "--presets", "lorax"], "unknown preset"),
    (["sweep", "--c-a", "one", "--c-b", "0"], "--c-a"),
    (["sweep", "--c-a", "-1"], "go together"),
    (["theory", "--c-b", "1/0"], "--c-b"),
    (["theory", "--optimizer", "rmsprop"], "invalid choice"),
    (["theory", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_one_line_exit_2_nothing_written(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) if "invalid choice" in message else _nullcontext():
        rc = main([*argv, "--out", str(out)])
        assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_unwritable_output_folder(tmp_path: Path, capsys) -> None:
    # /proc refuses new folders even to root; a read-only folder does for other users.
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for target in (Path("/proc/loraplus-lab-test/x"), locked / "x"):
        if os.geteuid() == 0 and target.parent == locked:
            continue
        assert main(["sweep", *SMALL, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert "not writable" in err and len(err.strip().splitlines()) == 1
        assert not target.exists()


def test_output_folder_that_is_a_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["sweep", *SMALL, "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "x"


def test_console_script_exit_status_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraplus_lab.sims.cli",
            "sweep",
            "--steps",
            "zero",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "loraplus-lab: error: --steps must be a positive integer, got 'zero'"
    )
    assert not (tmp_path / "o").exists()
