"""Figures that would hide a mark: coinciding coordinate-check lines, the cell under LoRA+'s
star, and axis labels that name what is drawn."""

from __future__ import annotations

from fractions import Fraction

import matplotlib
import numpy as np

from loraplus_lab.sims.params import preset
from loraplus_lab.sims.plots import plot_delta_coordcheck, plot_phase_diagrams
from loraplus_lab.sims.toy import simulate_batch
from loraplus_lab.theory import gamma

matplotlib.use("Agg")


def _sweep():
    params = [preset("lora", eta=1e-3), preset("loraplus", eta=1e-3)]
    return simulate_batch([64, 128, 256], params, range(2), steps=3, eps=1e-30)


def test_a_delta_equal_to_another_is_named_and_stays_visible() -> None:
    df = _sweep()
    # Adam (ε → 0) moves b by nearly the same η_B at steps 1 and 2 (b_1 = Δb_1 ≈ Δb_2), so at
    # step 2 δ³ = Δb_2·Δz matches δ¹ = b_1·Δz to a few 1e-5, and a log axis draws one line
    s2, s3 = df[df["step"] == 2], df[df["step"] == 3]
    assert np.max(np.abs(s2["delta3"] / s2["delta1"] - 1)) < 1e-3
    assert np.min(np.abs(s3["delta3"] / s3["delta1"] - 1)) > 0.1
    fig = plot_delta_coordcheck(df)
    ax1, ax2, ax3 = fig.axes[:3]
    notes = " ".join(t.get_text() for t in ax2.texts)
    assert "δ³ ≈ δ¹ (lora, loraplus)" in notes
    assert "δ³ ≈ δ¹" not in " ".join(t.get_text() for t in ax3.texts)
    assert "δ¹ ≡ 0 (lora, loraplus)" in " ".join(t.get_text() for t in ax1.texts)
    # the equal line is drawn thinner, on top, so the one beneath still shows
    widths = {round(ln.get_linewidth(), 2) for ln in ax2.lines}
    assert widths == {0.8, 1.5}
    assert ax1.get_ylabel() == "mean |δ| over seeds"


def test_a_coordinate_check_of_features_is_not_labelled_delta() -> None:
    fig = plot_delta_coordcheck(_sweep(), quantities=("delta1", "za_mean_abs"))
    assert fig.axes[0].get_ylabel() == "mean over seeds"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "|Z_A| = |A x|" in labels and "za_mean_abs" not in labels


def test_the_cell_under_loraplus_star_keeps_its_colour() -> None:
    grid = [Fraction(k, 8) for k in range(-16, 9)]
    d = gamma.phase_diagram("A", "adam", grid, grid, 4)
    fig = plot_phase_diagrams([d], ["Init[A], adam"])
    (star,) = [ln for ln in fig.axes[0].lines if ln.get_marker() == "*"]
    assert star.get_markerfacecolor() == "none"
    assert list(star.get_xdata()) == [-1] and list(star.get_ydata()) == [0]
