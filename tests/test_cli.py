"""The ``loraplus-lab`` command: the default comparison, JSON output, bad input, bugs, pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from loraplus_lab.sims.cli import main, parse_seeds, parse_widths
from loraplus_lab.sims.sweep import load

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--widths", "64,256,1024", "--seeds", "3", "--steps", "2", "--no-plot"]


def test_parse_widths_and_seeds() -> None:
    assert parse_widths("2^6..2^9") == [64, 128, 256, 512]
    assert parse_widths("256,64") == [64, 256]
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4..6") == [4, 5, 6]
    assert parse_seeds("1,5") == [1, 5]
    assert parse_widths("2^40") == [2**40]


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
    # one sweep path: the quick comparison leaves a store that `show` and load() read
    stored = load(out).drop(columns="job")
    assert stored.to_csv(index=False) == (out / "sweep.csv").read_text()
    assert main(["show", str(out)]) == 0
    assert "3/3 jobs done" in capsys.readouterr().out
    # the same options again find every job done and write the same files
    before = (out / "sweep.csv").read_bytes()
    assert main(["sweep", *SMALL[:-1], "--out", str(out), "--quiet"]) == 0
    assert (out / "sweep.csv").read_bytes() == before
    # other options into the same folder: refused, unless --overwrite
    assert main(["sweep", *SMALL, "--steps", "3", "--out", str(out)]) == 2
    assert "holds a different sweep" in capsys.readouterr().err
    assert main(["sweep", *SMALL, "--steps", "3", "--out", str(out), "--overwrite"]) == 0
    assert len(pd.read_csv(out / "sweep.csv")) == 3 * 2 * 3 * 4


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
    (["sweep", "--widths", "-64,128"], "width must be positive, got -64"),
    (["sweep", "--widths", "2^41"], "above the widest"),
    (["sweep", "--widths", "64,2^40"], "--widths: width 2^40 needs about"),
    (["sweep", "--widths", "2^6..2^40"], "--widths: width 2^40 needs about"),
    (["sweep", "--seeds", "0..99999999"], "at most"),
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
    (["sweep", "--workers", "2"], "--workers needs --executor"),
    (["theory", "--c-b", "1/0"], "--c-b"),
    (["theory", "--optimizer", "rmsprop"], "invalid choice"),
    (["theory", "--steps", "0"], "--steps"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_one_line_exit_2_nothing_written(
    argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_too_wide_sweep_is_refused_at_once_without_torch(tmp_path: Path) -> None:
    """`--widths 2^6..2^40` (once killed by the kernel after growing to 22.8 GB) is refused from
    the memory estimate: one line, exit 2, nothing written, torch never imported."""
    out = tmp_path / "out"
    code = (
        "import sys; from loraplus_lab.sims.cli import main; "
        f"rc = main(['sweep', '--widths', '2^6..2^40', '--out', {str(out)!r}]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "width 2^40 needs about" in proc.stderr and "fewer seeds" in proc.stderr
    assert not out.exists()


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


def test_a_bug_is_a_traceback_and_exit_1(tmp_path: Path) -> None:
    """A ValueError that is not bad input (here one raised deep inside a command, as numpy
    would) is a bug: the traceback is shown and the exit status is 1, never a one-line usage
    error."""
    code = (
        "import loraplus_lab.sims.cli.sweep as s\n"
        "def boom(args):\n    raise ValueError('operands could not be broadcast together')\n"
        "s.cmd_show = boom\n"
        "from loraplus_lab.sims.cli import main\n"
        f"raise SystemExit(main(['show', {str(tmp_path)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "could not be broadcast" in proc.stderr
    assert "loraplus-lab: error" not in proc.stderr


def test_closed_pipe_ends_quietly() -> None:
    """`loraplus-lab theory --json | head -c 0`: the reader is gone before the command
    writes; the command ends without a word on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraplus_lab.sims.cli", "theory", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `head` does once it has read enough
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == ""
    assert proc.returncode == 141


def test_finetune_into_a_non_empty_folder_names_the_flag(tmp_path: Path, capsys) -> None:
    """The command line names its own flag, --overwrite (the library's message names the
    keyword overwrite=True); the folder is left as it was."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["finetune", "--model", "m", "--task", "t.csv", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
