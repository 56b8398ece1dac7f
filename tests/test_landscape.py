"""Landscapes: the optimum finder, near-optimal sets, the diagonal, scaling fits, and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from loraplus_lab.sims import landscape
from loraplus_lab.sims.cli import main

U = np.arange(-16.0, 0.0)
V = np.arange(-16.0, 0.0)


def bowl(u0: float, v0: float, *, a=0.3, b=0.2, c=0.1, floor=0.05) -> np.ndarray:
    """A loss surface with its minimum at (u0, v0), off the grid, and a tilted basin."""
    du, dv = np.meshgrid(U - u0, V - v0, indexing="ij")
    return floor * np.exp(a * du**2 + b * dv**2 + c * du * dv)


@pytest.mark.parametrize("u0, v0", [(-8.3, -4.6), (-5.5, -10.2), (-12.0, -3.0), (-2.7, -2.4)])
def test_optimum_finder_recovers_a_known_optimum(u0: float, v0: float) -> None:
    opt = landscape.find_optimum(U, V, bowl(u0, v0))
    assert opt.method == "quadratic" and not opt.at_edge
    assert abs(opt.u - u0) < 0.05 and abs(opt.v - v0) < 0.05


def test_optimum_finder_is_robust_to_noise_and_divergence() -> None:
    rng = np.random.default_rng(0)
    L = bowl(-7.4, -5.2) * np.exp(0.05 * rng.standard_normal((16, 16)))
    L[12:, 12:] = np.nan  # a diverged corner
    opt = landscape.find_optimum(U, V, L)
    assert abs(opt.u + 7.4) < 0.3 and abs(opt.v + 5.2) < 0.3


def test_optimum_on_the_edge_is_flagged() -> None:
    opt = landscape.find_optimum(U, V, bowl(-20.0, -5.0))
    assert opt.at_edge and opt.method == "argmin" and opt.u == U[0]


def test_near_optimal_set_and_diagonal() -> None:
    L = bowl(-6.0, -6.0, a=1.0, b=1.0, c=0.0)
    near = landscape.near_optimal(L, tol=0.01)
    assert near.sum() == 1 and near[10, 10]
    assert landscape.near_optimal(L, tol=10.0).sum() > 1
    best, at = landscape.diagonal_best(U, V, bowl(-9.0, -3.0))
    assert at == -6.0 and best > bowl(-9.0, -3.0).min()
    with pytest.raises(ValueError, match="share no value"):
        landscape.diagonal_best(U + 0.5, V, L)


def _rows(width: int, L: np.ndarray, seeds=(0, 1, 2)) -> pd.DataFrame:
    uu, vv = np.meshgrid(U, V, indexing="ij")
    rng = np.random.default_rng(width)
    frames = []
    for s in seeds:
        frames.append(
            pd.DataFrame(
                {
                    "width": width,
                    "seed": s,
                    "step": 5,
                    "eta_a": 2.0 ** uu.ravel(),
                    "eta_b": 2.0 ** vv.ravel(),
                    "diverged": False,
                    "loss": (L * np.exp(0.01 * rng.standard_normal(L.shape))).ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def test_scaling_fits_recover_the_predicted_slopes() -> None:
    widths = [64, 256, 1024, 4096]
    a, b = 0.3, 0.2
    # optimum at log2 η_A* = 2 − log2 n, log2 η_B* = −5.2: it moves away from the diagonal
    df = pd.concat(
        [_rows(w, bowl(2 - np.log2(w), -5.2, a=a, b=b, c=0.0)) for w in widths],
        ignore_index=True,
    )
    surfs = landscape.surfaces(df)
    assert [s.width for s in surfs] == widths
    table = landscape.optima_table(surfs)
    # the gap of the noise-free bowl, from its definition: the best diagonal cell against the
    # best cell, log L = log floor + a(u − u0)² + b(v − v0)²
    uu, vv = np.meshgrid(U, V, indexing="ij")
    expected = []
    for w in widths:
        E = a * (uu - (2 - np.log2(w))) ** 2 + b * (vv + 5.2) ** 2
        expected.append(np.expm1(E[uu == vv].min() - E.min()))
    expected = np.array(expected)
    assert expected[-1] > 10 * expected[0]  # the optimum has left the diagonal
    # the loss ratio 1 + gap carries the noise (1% per seed and cell, 3 seeds): within 3%
    np.testing.assert_allclose(np.log1p(table["gap"]), np.log1p(expected), rtol=0, atol=0.03)
    fits = landscape.scaling_fits(surfs, n_boot=50).set_index("quantity")
    assert fits.loc["log2_eta_a", "slope"] == pytest.approx(-1.0, abs=0.05)
    assert fits.loc["log2_eta_b", "slope"] == pytest.approx(0.0, abs=0.05)
    assert fits.loc["log2_ratio", "slope"] == pytest.approx(1.0, abs=0.05)
    gap_slope = np.polyfit(np.log2(widths), expected, 1)[0]
    assert fits.loc["gap", "slope"] == pytest.approx(gap_slope, rel=0.03)
    assert (fits["ci_low"] <= fits["slope"] + 1e-9).all()
    assert (fits["slope"] <= fits["ci_high"] + 1e-9).all()
    assert (fits["anchored_low"] <= fits["slope"] + 1e-9).all()
    assert (fits["slope"] <= fits["anchored_high"] + 1e-9).all()
    gaps = landscape.gap_table(surfs, n_boot=50)
    np.testing.assert_allclose(gaps["gap"], table["gap"], rtol=1e-12)
    assert (gaps["ci_low"] <= gaps["gap"] + 1e-12).all()
    assert (gaps["gap"] <= gaps["ci_high"] + 1e-12).all()


def test_free_bootstrap_refinds_the_optimum_anchored_does_not() -> None:
    """Two basins of nearly equal depth at every width, which of them is deeper varying from
    seed to seed: the free bootstrap finds the optimum afresh in every resample and its
    interval spans the jump between basins; the anchored one stays in the full data's basin."""
    widths = [64, 256, 1024, 4096]
    rng = np.random.default_rng(0)
    frames = []
    for w in widths:
        u1 = 2 - np.log2(w)  # the basin that follows 1/n
        for seed in range(8):
            depth = 1.0 + 0.05 * rng.standard_normal(2)  # which basin wins varies by seed
            L = np.minimum(
                depth[0] * bowl(u1, -5.0, a=0.5, b=0.5, c=0.0),
                depth[1] * bowl(-3.0, -12.0, a=0.5, b=0.5, c=0.0),
            )
            frames.append(_rows(w, L, seeds=(seed,)))
    surfs = landscape.surfaces(pd.concat(frames, ignore_index=True))
    fits = landscape.scaling_fits(surfs, n_boot=200).set_index("quantity")
    r = fits.loc["log2_eta_a"]
    free, anchored = r.ci_high - r.ci_low, r.anchored_high - r.anchored_low
    assert free > 1.0 and free > 10 * anchored, (free, anchored)
    assert fits.loc["gap", "ci_low"] == fits.loc["gap", "anchored_low"]


def test_bad_grids_and_single_width() -> None:
    df = _rows(64, bowl(-6.0, -6.0))
    one_point = df[(df["eta_a"] == 2.0**-6) & (df["eta_b"] == 2.0**-6)]
    with pytest.raises(ValueError, match="3 × 3"):
        landscape.surfaces(one_point)
    with pytest.raises(ValueError, match="no rows"):
        landscape.surfaces(df, step=99)
    with pytest.raises(ValueError, match="two widths"):
        landscape.scaling_fits(landscape.surfaces(df))
    with pytest.raises(ValueError, match="3 × 3"):
        landscape.find_optimum(U[:2], V, np.ones((2, 16)))
    with pytest.raises(ValueError, match="diverged"):
        landscape.find_optimum(U, V, np.full((16, 16), np.nan))


def test_figure_built_end_to_end_in_fast_mode(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fast figure can never be mistaken for a result: its title, the printed report, the
    gallery's header and every caption say it is a fast preview."""
    from loraplus_lab.sims import figures

    titles = []
    real_mark = figures.mark_fast

    def spy(fig):
        real_mark(fig)
        titles.append([fig.get_suptitle()] + [ax.get_title() for ax in fig.axes])

    monkeypatch.setattr(figures, "mark_fast", spy)
    out = tmp_path / "figs"
    assert main(["figures", "--fast", "--only", "linear_optimal_rates", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "slope of log2_eta_a" in text and "predicted -1" in text
    assert "free [" in text and "anchored [" in text
    assert text.lower().count("fast preview") >= 2  # the figure's line and its report
    assert len(titles) == 1 and any(t.startswith("[FAST PREVIEW") for t in titles[0])
    assert (out / "linear_optimal_rates.png").stat().st_size > 10_000
    assert (out / "data" / "linear_landscape.csv").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "## linear_optimal_rates" in readme and "loraplus-lab figures --only" in readme
    assert readme.startswith("# Figures — FAST PREVIEW, not results")
    captions = [b.split("\n\n")[2] for b in readme.split("## ")[1:]]
    assert len(captions) == 1  # the folder holds one figure; its gallery shows that one
    assert all(c.startswith(f"**{figures.FAST_MARK}.**") for c in captions)
    every = figures.readme_text(fast=True)  # without a folder to look in: every figure, marked
    every_captions = [b.split("\n\n")[2] for b in every.split("## ")[1:]]
    assert len(every_captions) == len(figures.FIGURES)
    assert all(c.startswith(f"**{figures.FAST_MARK}.**") for c in every_captions)
    # the gallery of a full run carries no mark, and the measured numbers of the figures whose
    # data it has, with their intervals
    data = {"linear_landscape": pd.read_csv(out / "data" / "linear_landscape.csv")}
    full = figures.readme_text(data)
    assert "FAST" not in full
    assert "Measured slopes against log2 n" in full and "free [" in full
    assert "Measured gap (L_diag − L*)/L*" in full


def test_gd_gap_figure_built_in_fast_mode(tmp_path: Path, capsys) -> None:
    out = tmp_path / "figs"
    assert main(["figures", "--fast", "--only", "linear_gd_loss_gap", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "m = 8" in text and "GD" in text and "equal-rate gap per doubling" in text
    assert (out / "linear_gd_loss_gap.png").stat().st_size > 10_000
    data = pd.read_csv(out / "data" / "linear_landscape_gd.csv")
    assert set(data["width"]) == {64, 256, 1024} and (data["eta_a"] == data["eta_b"]).any()


def test_figures_list_and_unknown_name(tmp_path: Path, capsys) -> None:
    assert main(["figures", "--list"]) == 0
    assert "phase_diagram" in capsys.readouterr().out
    out = tmp_path / "figs"
    assert main(["figures", "--only", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown figure 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


GRID_SPEC = """
name = "grid"
steps = 4
seeds = 2
widths = [64, 256]
chunk = 32

[problem]
kind = "general"
rank = 2
samples = 16
test_samples = 32
latent_dim = 4
noise = 0.1

[[parametrizations]]
preset = "lora-fixed"
eta_a = {{ log2 = [-12, -2], num = {num} }}
eta_b = {{ log2 = [-8, -2], num = {num} }}
"""


def test_landscape_command_on_a_stored_sweep(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "grid.toml"
    spec.write_text(GRID_SPEC.format(num=5))
    out = tmp_path / "store"
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "serial", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["landscape", str(out), "--loss", "test_loss"]) == 0
    text = capsys.readouterr().out
    assert "log2_eta_a" in text and "slope of log2_ratio" in text


def test_tiny_grids_are_refused(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "grid.toml"
    out = tmp_path / "store"
    # a one-point range is refused by the spec itself: exit 2, nothing written
    spec.write_text(GRID_SPEC.format(num=1))
    assert main(["sweep", str(spec), "--out", str(out), "--quiet"]) == 2
    assert "eta_a.num" in capsys.readouterr().err and not out.exists()
    # a 2 × 2 grid runs, but is too small to locate an optimum
    spec.write_text(GRID_SPEC.format(num=2))
    assert main(["sweep", str(spec), "--out", str(out), "--executor", "serial", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["landscape", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 × 2" in err and len(err.strip().splitlines()) == 1


def test_under_gd_equal_rates_fall_behind_loraplus_as_width_grows() -> None:
    """The mechanism behind linear_gd_loss_gap: on the linear task under GD, the best equal rate
    (a fine line of η) loses more and more to the best LoRA+ pair (η_A = η̃_A·n0/n, η_B = η̃_B)
    as the width grows, while LoRA+ keeps learning."""
    from loraplus_lab.sims.figures import LINEAR_GD_TASK, LINEAR_STEPS
    from loraplus_lab.sims.params import Parametrization
    from loraplus_lab.sims.toy import simulate_batch

    line = 2.0 ** np.arange(-12, 2.01, 0.5)
    params = [Parametrization(f"eq{k}", e, e, 0, 0) for k, e in enumerate(line)]
    params += [
        Parametrization(f"lp{i}_{j}", ea, eb, -1, 0, n0=128)
        for i, ea in enumerate(2.0 ** np.arange(-9, -2.9, 0.5))
        for j, eb in enumerate(2.0 ** np.arange(-3, 1.1, 0.5))
    ]
    df = simulate_batch(
        [128, 2048],
        params,
        range(8),
        steps=LINEAR_STEPS,
        problem="general",
        problem_options=LINEAR_GD_TASK,
        optimizer="gd",
    )
    last = df[df["step"] == LINEAR_STEPS]
    # a configuration with a diverged seed has no mean (as in the landscapes)
    mean = last.groupby(["width", "param"])["test_loss"].agg(lambda x: x.mean(skipna=False))
    best = {
        (w, kind): mean[w][[p for p in mean[w].index if p.startswith(kind)]].min()
        for w in (128, 2048)
        for kind in ("eq", "lp")
    }
    ratio = {w: best[w, "eq"] / best[w, "lp"] for w in (128, 2048)}
    assert ratio[2048] > 2 * ratio[128], ratio
    assert best[2048, "lp"] < 1.5 * best[128, "lp"], best
