"""The real-model ladder: spec validation, staged jobs, the store (kill and resume), and the
analysis (optima, slopes with a free bootstrap, speed-up) on landscapes with a known answer."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims.landscape import find_optimum_scattered
from loraplus_lab.sims.realmodels import ladder_analysis as LA
from loraplus_lab.sims.realmodels.ladder import (
    FinetuneJob,
    PretrainJob,
    ladder_jobs,
    parse_ladder_spec,
    run_ladder,
)
from loraplus_lab.sims.sweep.spec import SpecError
from loraplus_lab.sims.sweep.store import Store, load


def _corpus_files(root: Path) -> tuple[str, str]:
    code = root / "code"
    code.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (code / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i % 5}\n" * 40)
    prose = root / "prose.txt"
    prose.write_text("Names refer to objects. Names are introduced by binding operations. " * 80)
    return str(code), str(prose)


def tiny_spec_text(root: Path, **over: str) -> str:
    code, prose = _corpus_files(root)
    text = f"""
name = "tiny"
arch = "gpt2"
widths = [32, 64]
layers = 1
context = 16
seeds = 2
chunk = 4

[pretrain]
corpus = "{code}"
steps = 8
batch = 4
warmup = 2
val_windows = 8

[finetune]
corpus = "{prose}"
r = 2
alpha = 2
steps = 4
batch = 2
warmup = 1
eval_every = 2
curve_windows = 3
eval_windows = 4

[grid]
log2_eta_a = [-8, -6]
log2_eta_b = [-6, -4]
step = 1
refine = 0.5
refine_radius = 0.5

[lines]
equal = [-7, -5]
b_only = [-6, -5]
ratio = 16
ratio_log2_eta_a = [-9, -8]
step = 1
"""
    for k, v in over.items():
        text = text.replace(k, v)
    return text


def test_spec_parses_with_defaults_and_points(tmp_path: Path) -> None:
    spec = parse_ladder_spec(tiny_spec_text(tmp_path), "tiny.toml")
    assert spec.widths == (32, 64) and spec.seeds == (0, 1) and spec.head_dim == 16
    assert spec.finetune["eval_windows"] == 4 and spec.pretrain["lr"] == 2**-6
    pts = spec.coarse_points()
    grid = {(u, v) for u in (-8, -7, -6) for v in (-6, -5, -4)}
    assert grid <= set(pts)
    assert {(-7.0, -7.0), (-5.0, -5.0)} <= set(pts)  # equal line
    assert (-math.inf, -6.0) in pts and (-9.0, -5.0) in pts  # B only, λ = 16
    assert len(pts) == len(set(pts))
    patch = spec.refine_points((-7.0, -5.0))
    assert len(patch) == 9 and (-7.5, -5.5) in patch and (-6.5, -4.5) in patch
    d = spec.to_dict()
    assert d["kind"] == "ladder" and parse_ladder_spec(spec.source, "again").to_dict() == d


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('arch = "gpt2"', 'arch = "bert"', "unknown architecture"),
        ("widths = [32, 64]", "widths = [32, 40]", "divisible by the head dimension 16"),
        ("widths = [32, 64]", "widths = [64]", "at least two widths"),
        ("seeds = 2", "seeds = 0", "seeds"),
        ("[finetune]\n", "[finetune]\nbogus = 1\n", "unknown key 'bogus'"),
        ("steps = 4\n", "steps = 0\n", "finetune.steps"),
        ("log2_eta_a = [-8, -6]", "log2_eta_a = []", "grid.log2_eta_a"),
        ("log2_eta_a = [-8, -6]", "log2_eta_a = [-6, -8]", "increasing"),
        ("warmup = 1", "warmup = 4", "finetune.warmup"),
        ('name = "tiny"', 'name = "a b"', "name"),
    ],
)
def test_bad_specs_get_one_line_naming_the_value(tmp_path, old, new, message) -> None:
    text = tiny_spec_text(tmp_path)
    assert old in text
    with pytest.raises(SpecError, match=message) as e:
        parse_ladder_spec(text.replace(old, new, 1), "bad.toml")
    assert "\n" not in str(e.value) and str(e.value).startswith("bad.toml: ")


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"\x00\x01\x02", "binary")])
def test_bad_corpus_files_are_refused(tmp_path, content, message) -> None:
    text = tiny_spec_text(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    prose = str(tmp_path / "prose.txt")
    with pytest.raises(SpecError, match=message) as e:
        parse_ladder_spec(text.replace(prose, str(bad)), "bad.toml")
    assert "finetune.corpus" in str(e.value)


# ------------------------------------------------------------------------ the known answer
def synthetic_rows(
    widths=(32, 64, 128, 256),
    seeds=6,
    slope_a=-1.0,
    slope_b=0.0,
    noise=0.002,
    ratio=16.0,
    v0=-5.0,
) -> pd.DataFrame:
    """Store-like rows whose final loss is a convex quadratic bowl in (log2 η_A, log2 η_B)
    with its minimum at u*(n) = -6 + slope_a·log2(n/32), v*(n) = v0 + slope_b·log2(n/32), and
    validation curves that fall like sqrt(step/T)."""
    rng = np.random.default_rng(0)
    T = 10
    rows = []
    for n in widths:
        us = -6 + slope_a * math.log2(n / 32)
        vs = v0 + slope_b * math.log2(n / 32)
        pts = {(float(u), float(v)) for u in range(-14, -2) for v in range(-10, -1)}
        pts |= {
            (round(us + du, 3), round(vs + dv, 3))
            for du in (-1, -0.5, 0, 0.5, 1)
            for dv in (-1, -0.5, 0, 0.5, 1)
        }
        pts |= {(x / 2, x / 2) for x in range(-26, -4)}
        pts |= {(x / 2, x / 2 + math.log2(ratio)) for x in range(-28, -8)}
        pts |= {(-math.inf, x / 2) for x in range(-20, -2)}
        for s in range(seeds):
            for u, v in sorted(pts):
                if math.isfinite(u):
                    du, dv = u - us, v - vs
                    final = 2.0 + 0.02 * du**2 + 0.03 * dv**2 + 0.01 * du * dv
                else:
                    final = 2.3 + 0.03 * (v - vs) ** 2
                final += noise * rng.standard_normal()
                for step in range(0, T + 1, 2):
                    frac = step / T
                    rows.append(
                        {
                            "part": "finetune",
                            "width": n,
                            "seed": s,
                            "eta_a": 2.0**u,
                            "eta_b": 2.0**v,
                            "step": step,
                            "diverged": False,
                            "val_loss": 3.0 - (3.0 - final) * frac**0.5,
                            "final_loss": 3.0 if step == 0 else final if step == T else np.nan,
                            "a_change": 0.5 if step == T else np.nan,
                            "val_loss_a0": final + 0.1 if step == T else np.nan,
                        }
                    )
    return pd.DataFrame(rows)


def test_find_optimum_scattered_is_exact_on_a_quadratic() -> None:
    u, v = np.meshgrid(np.arange(-5, 5.1, 0.5), np.arange(-4, 4.1, 0.5), indexing="ij")
    u, v = u.ravel(), v.ravel()
    L = 1 + (u - 0.3) ** 2 + 2 * (v + 0.7) ** 2 + 0.5 * (u - 0.3) * (v + 0.7)
    opt = find_optimum_scattered(u, v, L)
    assert opt.method == "quadratic" and not opt.at_edge
    assert opt.u == pytest.approx(0.3, abs=1e-9) and opt.v == pytest.approx(-0.7, abs=1e-9)
    assert opt.loss == pytest.approx(1.0, abs=1e-9)
    edge = find_optimum_scattered(u, v, (u - 9) ** 2 + v**2)  # minimum beyond the grid
    assert edge.at_edge and edge.method == "argmin" and edge.u == 5


def test_analysis_recovers_known_scaling_with_covering_intervals() -> None:
    L = LA.landscapes(synthetic_rows())
    opt = LA.optima_table(L, 16.0)
    assert np.allclose(opt["log2_eta_a"], [-6, -7, -8, -9], atol=0.05)
    assert np.allclose(opt["log2_eta_b"], -5, atol=0.05)
    assert (opt["loss_before"] == 3.0).all() and (opt["equal_gap"] > 0).all()
    fits = LA.scaling_fits(L, 16.0, n_boot=199).set_index("quantity")
    for q, truth in (("log2_eta_a", -1.0), ("log2_eta_b", 0.0), ("log2_ratio", 1.0)):
        assert fits.loc[q, "slope"] == pytest.approx(truth, abs=0.05)
        assert fits.loc[q, "ci_low"] <= truth <= fits.loc[q, "ci_high"]
        assert fits.loc[q, "verdict"] == "agrees"
    # the valley η_A*·η_B* and the best η_A on the fixed row log2 η_B = -5 (the bowl's v*)
    assert fits.loc["log2_eta_a_at_row", "row"] == -5.0
    for q in ("log2_product", "log2_eta_a_at_row"):
        assert fits.loc[q, "slope"] == pytest.approx(-1.0, abs=0.05)
        assert fits.loc[q, "verdict"] == "agrees"
    # equal rates: the bowl's minimum on u = v is u* = (5 u*_A + 7 v*)/12, so slope -5/12
    assert fits.loc["equal_log2_eta", "slope"] == pytest.approx(-5 / 12, abs=0.05)
    other = LA.scaling_fits(LA.landscapes(synthetic_rows(slope_a=0.0)), 16.0, n_boot=199)
    other = other.set_index("quantity")
    assert other.loc["log2_eta_a", "verdict"] == "differs"
    assert other.loc["log2_eta_a_at_row", "verdict"] == "differs"
    assert other.loc["log2_eta_a_at_row", "slope"] == pytest.approx(0.0, abs=0.05)


def test_common_row_falls_back_to_the_densest_row_then_to_none() -> None:
    df = synthetic_rows(widths=(32, 64), seeds=2)
    with np.errstate(divide="ignore"):  # η_A = 0 on the B-only line
        u = np.log2(df["eta_a"])
    assert LA.common_row(LA.landscapes(df), 16.0) == -5.0  # the bowl's η_B*
    three = df[~np.isfinite(u) | u.isin([-9.0, -8.0, -7.0]) | (u == np.log2(df["eta_b"]))]
    L3 = LA.landscapes(three)
    assert LA.common_row(L3, 16.0) == -5.0  # no row has 5 runs; rows with 3 do
    two = df[~np.isfinite(u) | u.isin([-8.0, -7.0])]
    L2 = LA.landscapes(two)
    assert np.isnan(LA.common_row(L2, 16.0))
    fits = LA.scaling_fits(L2, 16.0, n_boot=19).set_index("quantity")
    assert np.isnan(fits.loc["log2_eta_a_at_row", "slope"])  # reported as unknown, no crash


def test_real_ladder_report_checks_transfer_to_the_widest_width() -> None:
    from loraplus_lab.sims.figures import report_real_ladder

    text = report_real_ladder(synthetic_rows(noise=0.0005))
    assert "transfer to the widest width (n = 256) from n = 32, 64, 128" in text
    lines = {ln.strip()[:3]: ln for ln in text.splitlines() if ln.strip()[:1] == "("}
    assert set(lines) >= {"(a)", "(b)", "(c)", "(d)", "(e)", "(f)"}
    # the bowl's optimum moves exactly as the theory says: its exponents transfer it exactly
    assert re.search(
        r"LoRA\+ transfer, the theory's exponents: log2 η_A -9\.0\d, log2 η_B -5\.0", text
    )
    two = report_real_ladder(synthetic_rows(widths=(32, 64)))
    assert two.endswith("transfer to the widest width: needs three widths or more")


def test_speedup_and_hit_time() -> None:
    steps = np.array([0, 2, 4, 6])
    assert LA._hit(np.array([3.0, 2.5, 2.0, 1.5]), steps, 2.25) == pytest.approx(3.0)
    assert math.isnan(LA._hit(np.array([3.0, 2.9, 2.8, 2.7]), steps, 2.0))
    # a dip below the target that comes back up is not reaching it: from the last crossing on
    assert LA._hit(np.array([3.0, 2.0, 2.5, 2.0]), steps, 2.25) == pytest.approx(5.0)
    assert math.isnan(LA._hit(np.array([3.0, 2.0, 2.1, 2.3]), steps, 2.25))
    L = LA.landscapes(synthetic_rows(widths=(32, 64), v0=-2.0))  # λ* = 2^4 at width 32
    iv = LA.per_width_intervals(L, 16.0, n_boot=99).set_index(["width", "quantity"])
    s = iv.loc[(32, "speedup")]
    # LoRA+'s final loss is below tuned LoRA's, so it reaches the target before T
    assert s["value"] > 1 and s["ci_low"] <= s["value"] <= s["ci_high"] and s["reached"] == 1.0
    curves = LA.curves_table(L, 16.0)
    assert set(curves["run"]) >= {"LoRA (tuned η)", "best (η_A, η_B)", "B only (A frozen)"}


def test_verdict_uses_the_interval() -> None:
    assert LA.verdict(-1.0, -1.2, -0.8, -1.0) == "agrees"
    assert LA.verdict(-0.5, -0.6, -0.4, -1.0) == "differs"
    assert LA.verdict(-0.5, -1.5, 0.5, -1.0) == "inconclusive"


# ------------------------------------------------------------------------ jobs and the store
def test_refinement_centres_on_the_final_loss_the_landscape_is_read_on(tmp_path: Path) -> None:
    """The patch goes around the best cell by ``final_loss`` (the larger evaluation set), not by
    the last point of the cheaper validation curve, where the two disagree."""
    from types import SimpleNamespace

    from loraplus_lab.sims.realmodels.ladder import refinement_patches

    store = Store(tmp_path / "store")
    rows = []
    for u, v, curve, final in (
        (-8.0, -5.0, 2.0, 2.5),
        (-6.0, -4.0, 2.4, 2.1),
        (-7.0, -6.0, 2.6, 2.6),
    ):
        for s in (0, 1):
            rows.append({"eta_a": 2.0**u, "eta_b": 2.0**v, "step": 10, "seed": s,
                         "val_loss": curve, "final_loss": final})  # fmt: skip
    store.write_job("a" * 20, pd.DataFrame(rows))
    grid = {"refine": 0.5, "refine_radius": 0.5}
    coarse = [(-8.0, -5.0), (-6.0, -4.0), (-7.0, -6.0)]
    groups = {32: [SimpleNamespace(key="a" * 20)]}
    patch = refinement_patches(store.path, groups, coarse, grid, steps=10)[32]
    assert (-6.5, -4.5) in patch and (-5.5, -3.5) in patch  # around (-6, -4), the final loss's
    assert (-8.5, -5.5) not in patch  # not around (-8, -5), the curve's best


def test_jobs_are_staged_and_keys_stable(tmp_path: Path) -> None:
    spec = parse_ladder_spec(tiny_spec_text(tmp_path), "tiny.toml")
    jobs = ladder_jobs(spec)
    assert [type(j) for j in jobs[:2]] == [PretrainJob, PretrainJob]
    assert [j.width for j in jobs[:2]] == [64, 32]  # widest pretraining first
    ft = [j for j in jobs if isinstance(j, FinetuneJob)]
    assert [j.width for j in ft] == sorted(j.width for j in ft)  # narrowest finetuning first
    assert len({j.key for j in jobs}) == len(jobs)
    again = ladder_jobs(parse_ladder_spec(tiny_spec_text(tmp_path), "tiny.toml"))
    assert [j.key for j in again] == [j.key for j in jobs]
    changed = parse_ladder_spec(tiny_spec_text(tmp_path).replace("steps = 4\n", "steps = 5\n"), "x")
    assert {j.key for j in ladder_jobs(changed)} & {j.key for j in ft} == set()


def _run_cmd(spec_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "loraplus_lab.sims.cli",
        "ladder",
        str(spec_path),
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
        "--boot",
        "19",
        *extra,
    ]


@pytest.mark.slow
def test_tiny_ladder_end_to_end_then_kill_and_resume(tmp_path: Path, monkeypatch) -> None:
    """The stages run to the end (refinement included); a `loraplus-lab ladder` run SIGKILLed at
    random moments — during pretraining and during the landscapes — and then `--resume`d gives
    the same results, bit for bit."""
    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(tiny_spec_text(tmp_path))
    spec = parse_ladder_spec(spec_path.read_text(), str(spec_path))
    monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache-a"))
    summary = run_ladder(spec, tmp_path / "whole", executor="serial", progress=False)
    whole = load(tmp_path / "whole")
    assert whole.attrs["complete"] and summary["jobs"] == len(Store(tmp_path / "whole").done_keys())
    stages = set(whole["stage"])
    assert stages == {"pretrain", "coarse", "refine"}
    ft = whole[whole["part"] == "finetune"]
    assert set(ft["width"]) == {32, 64} and set(ft["seed"]) == {0, 1}
    L = LA.landscapes(whole)
    table = LA.optima_table(L, 16.0)
    assert len(table) == 2 and np.isfinite(table["best_loss"]).all()

    # the rates the transfer rule fitted to this ladder predicts, run at every width
    from loraplus_lab.sims.cli import main

    pred = tmp_path / "predicted"
    args = ["ladder", str(spec_path), "--rates-from", str(tmp_path / "whole"), "--out", str(pred)]
    assert main([*args, "--executor", "serial", "--quiet"]) == 0
    got = load(pred)
    assert set(got["stage"]) == {"pretrain", "predicted"} and got.attrs["complete"]
    assert got[got["part"] == "finetune"].groupby("width")["eta_a"].nunique().eq(1).all()
    assert "[predicted]" in (pred / "spec.toml").read_text()
    assert main(["ladder", "--resume", "--out", str(pred), "--quiet"]) == 0  # nothing left

    env = {**os.environ, "LORAPLUS_CACHE": str(tmp_path / "cache-b"), "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "killed"
    bases = tmp_path / "cache-b" / "bases"

    def pretraining() -> bool:  # a base's lock is held and the base is not finished
        return any(not p.with_suffix("").exists() for p in bases.glob("*.lock"))

    def landscape() -> bool:  # some finetuning jobs are written, not all
        done = len(list((out / "jobs").glob("*.parquet"))) if (out / "jobs").is_dir() else 0
        return 2 < done < 10

    for moment in (pretraining, landscape):  # SIGKILL of the whole run at each moment
        proc = subprocess.Popen(
            _run_cmd(spec_path, out),
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while not moment() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before {moment.__name__}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    resume = [sys.executable, "-m", "loraplus_lab.sims.cli", "ladder", "--resume", "--out"]
    finish = (
        [*resume, str(out), "--quiet", "--boot", "19"]
        if (out / "spec.json").exists()  # killed after the store was made: --resume
        else _run_cmd(spec_path, out)  # killed while starting: the same command again
    )
    done = subprocess.run(
        finish,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "slopes against log2 n" in done.stdout and "per width" in done.stdout
    resumed = load(out)
    cols = [c for c in whole.columns if c != "seconds"]
    key = ["job", "part", "width", "seed", "config", "step"] if "job" in cols else None
    a = whole[cols].sort_values(key or cols[:6]).reset_index(drop=True)
    b = resumed[cols].sort_values(key or cols[:6]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------ the command line
@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('arch = "gpt2"', 'arch = "bert"', 'unknown architecture "bert"'),
        ("widths = [32, 64]", "widths = [32, 40]", "divisible by the head dimension 16, got 40"),
        ("seeds = 2", "seeds = 0", "seeds"),
        ("steps = 4\n", "steps = 0\n", "finetune.steps"),
        ("step = 1\nrefine", "step = -1\nrefine", "grid.step"),
    ],
)
def test_cli_bad_spec_one_line_exit_2_nothing_written(tmp_path, capsys, old, new, message) -> None:
    from loraplus_lab.sims.cli import main

    text = tiny_spec_text(tmp_path)
    assert old in text
    spec = tmp_path / "bad.toml"
    spec.write_text(text.replace(old, new, 1))
    out = tmp_path / "out"
    assert main(["ladder", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(("content", "message"), [(b"", "is empty"), (b"\x00\x01", "binary")])
def test_cli_bad_corpus_exit_2(tmp_path, capsys, content, message) -> None:
    from loraplus_lab.sims.cli import main

    text = tiny_spec_text(tmp_path)
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(content)
    spec = tmp_path / "bad.toml"
    spec.write_text(text.replace(str(tmp_path / "prose.txt"), str(bad)))
    assert main(["ladder", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "corpus.txt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_unreachable_hugging_face_corpus_one_line_nothing_written(
    tmp_path, capsys, monkeypatch
) -> None:
    """Offline, a ``hf:`` corpus cannot be had: one line naming it, exit 2, no store."""
    datasets = pytest.importorskip("datasets")
    from loraplus_lab.sims.cli import main

    def no_network(name, config=None):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    text = tiny_spec_text(tmp_path)
    spec = tmp_path / "hf.toml"
    spec.write_text(text.replace(str(tmp_path / "prose.txt"), "hf:wikitext:wikitext-2-raw-v1"))
    assert main(["ladder", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "hf:wikitext:wikitext-2-raw-v1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_resume_needs_a_ladder_store(tmp_path, capsys) -> None:
    from loraplus_lab.sims.cli import main

    assert main(["ladder", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["ladder", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "holds no sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_real_figures_in_fast_mode(tmp_path: Path, monkeypatch, capsys) -> None:
    """`loraplus-lab figures --fast --only real_…`: the tiny ladder runs from an empty cache,
    the three figures, their data and the printed report with intervals are written, and the
    gallery states the measured numbers."""
    from loraplus_lab.sims import figures
    from loraplus_lab.sims.cli import main

    monkeypatch.setenv("LORAPLUS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LORAPLUS_LADDER_BOOT", "49")
    out = tmp_path / "figs"
    names = "real_landscapes,real_optimal_rates,real_speedup"
    assert main(["figures", "--fast", "--only", names, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pretrained bases" in text and "slopes against log2 n" in text
    assert "speed-up over tuned LoRA" in text and "[" in text
    for n in names.split(","):
        assert (out / f"{n}.png").stat().st_size > 10_000
    data = pd.read_csv(out / "data" / "real_ladder.csv")
    assert {"pretrain", "finetune"} == set(data["part"]) and set(data["width"]) == {32, 64}
    full = figures.readme_text({"real_ladder": data})
    assert "Measured slopes against log2 n" in full and "Measured speed-up" in full
    assert "Measured share of the best run's finetuning gain" in full
    # the folder's gallery shows the three figures it holds and links to nothing else
    gallery = (out / "README.md").read_text()
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", gallery))
    assert linked == {f"{n}.png" for n in names.split(",")}


@pytest.mark.parametrize(
    "name",
    ["ladder_gpt2_cpu", "ladder_gpt2_gpu", "ladder_llama_cpu", "family_pythia_sst2"],
)
def test_committed_real_model_specs_parse(name: str) -> None:
    from loraplus_lab.sims.cli.ladder import load_spec

    path = Path(__file__).resolve().parent.parent / "specs" / "realmodels" / f"{name}.toml"
    spec = load_spec(str(path))
    assert spec.to_dict()["kind"] == ("family" if name.startswith("family") else "ladder")
    assert spec.coarse_points()
