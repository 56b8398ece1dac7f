"""The explanatory notebooks run top to bottom and show their key results.

Each notebook is executed with nbclient in fast mode (``LORAPLUS_FAST=1``: fewer widths, seeds
and grid points) in a temporary working directory, so nothing is written into the repository.
The kernel is this interpreter's ipykernel: a ``python3`` kernelspec written into a temporary
``JUPYTER_PATH`` (searched before any user or system kernelspec) runs ``sys.executable``, so the
test does not depend on which kernels the machine happens to have installed.

The committed notebooks carry their outputs (executed in full mode); a second test checks that
they do, that they name the ``python3`` kernel and that their outputs hold no absolute paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import notebook_text, run_in_fast_mode

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell
MAX_BYTES = 1_536 * 1024

# Text that each notebook must print when it works (fast mode).
EXPECTED = {
    "01_why_equal_rates_fail.ipynb": [
        "FAST=True",
        "ΔZ_B = δ¹ + δ² + δ³ holds at every step",
        "loraplus   (c_A = -1, c_B =  0): efficient",
        "agrees",
        "LoRA+ at n = ∞",
        "CLT rate",
    ],
    "02_computing_exponents.ipynb": [
        "FAST=True",
        "Init[A], adam, c_A = -1, c_B = 0: efficient",
        "efficient cells, every diagram: [('-1', '0')]; efficient set on the LoRA line, every "
        "case: empty",
        "GD's threshold matches −(T−1)/(2T−1) for every T = 1..8: True",
        "agrees",
        "identity: True",
        "a scalar free of x: True",
    ],
    "03_learning_rate_landscapes.ipynb": [
        "FAST=True",
        "LoRA+'s λ0 tuned at n0 = 64",
        "best η̃ moves",
        "best loss with equal rates / best with LoRA+ (95% CI):",
        "Adam: slope of log2 η_A* vs log2 n:",
        "GD: slope of log2 λ*   vs log2 n:",
        "Adam, coarse grid alone: log2 η_A*",  # the figures' fit beside the refined one
        "the best pair's loss from n = ",
        "along the floor (columns within 25% of the best loss)",
        "• Equal-rate gap (L_equal − L*)/L* at the same resolution: Adam",
    ],
    "06_transfer.ipynb": [
        "FAST=True",
        "rule (blend): η_A = ",
        "distinct rate pairs run at n = ",
        "goal (LoRA+ transfer ≤ 5% and below (a), (c)): (f)",
        "held-out seeds (",
        "goal, held out (LoRA+ transfer ≤ 5% and below (a), (c)): (f)",
        "linear, GD: proxies n = ",
        "adjacent cells, a quarter octave apart, differ by a factor",
        "linear, GD, 64 steps, loss averaged over steps: proxies n = 128,256,512",
        "(f) against the target's tuned rates run on the same seeds -1.4% [-7.4%, +3.1%]",
        "tuned at n = ∞, per seed set:",
        "at n = 4096 (95% intervals):",
        "exit status 0",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_fast_mode(name: str, kernel_env: Path) -> None:
    text = run_in_fast_mode(NOTEBOOKS / name, kernel_env, CELL_TIMEOUT, EXPECTED[name], 3)

    if name.startswith("01"):
        # LoRA and LoRA+: every measured slope agrees with the calculus
        for param in ("lora", "loraplus"):
            m = re.search(rf"^{param}: (\d+) of (\d+) \(quantity, step\) slopes agree", text, re.M)
            assert m and m.group(1) == m.group(2), f"{param}: {m and m.group(0)}"
        # the best ratio η_B/η_A grows like n
        m = re.search(r"λ\* grows like n\^(-?\d+\.\d+)", text)
        assert m and abs(float(m.group(1)) - 1.0) < 0.15, m and m.group(0)
    elif name.startswith("02"):
        m = re.search(r"(\d+) of (\d+) measured exponents agree", text)
        assert m and m.group(1) == m.group(2), m and m.group(0)
        m = re.search(r"GD, c = -9/19, γ\[Z_B\] at t = 0\.\.6: (.*)$", text, re.M)
        assert m and m.group(1).split() == ["zero"] + [f"{k - 10}/19" for k in range(1, 7)]
        assert "identity: False" not in text and "closed form = 0: False" not in text
    elif name.startswith("06"):
        # the theory's rule is printed with its exponents, the limit's optimum is approached
        assert "rule (theory): η_A = " in text and "n^-1.000, η_B = " in text
        m = re.search(r"distance: ∝ n\^([+-]\d+\.\d+)", text)
        assert m and float(m.group(1)) < 0, m and m.group(0)
    else:
        # under each optimizer LoRA+'s best base rate moves less with the width than that of
        # equal fixed rates (the fast grids are coarse, so only the comparison is asserted)
        drifts = [float(d) for d in re.findall(r"best η̃ moves ([+-]\d+\.\d+) octaves", text)]
        assert len(drifts) == 6, drifts
        for opt in (drifts[:3], drifts[3:]):  # LoRA+, equal fixed, equal ∝ n^-1/2
            assert abs(opt[0]) < abs(opt[1]), drifts
        # under GD the best equal rate loses to LoRA+ at the widest width
        m = re.findall(r"n = 1024: (\d+\.\d+) \[", text)
        assert len(m) == 2 and float(m[1]) > 1.5, m
        # anchored at the full data's basin, no bootstrap resample leaves it
        m = re.search(r"anchored: .* more than 2 octaves away: (\d+)%", text)
        assert m and m.group(1) == "0", m and m.group(0)
        found = _refined_slopes(text)
        assert found == ["Adam"] * 3 + ["GD"] * 3, f"refined slope lines found for {found}"


def _refined_slopes(text: str) -> list[str]:
    """The optimizers of notebook 03's refined slope lines that carry the free interval, the
    anchored one and a verdict for each."""
    verdict = "(?:agrees|close|inconclusive|differs)"
    ci = r"\[[+-]\d\.\d\d, [+-]\d\.\d\d\]"
    return re.findall(
        rf"^(Adam|GD): slope of log2 \S+\s+vs log2 n: [+-]\d\.\d\d, 95% CI free {ci} {verdict}, "
        rf"anchored {ci} {verdict} \(predicted [+-]\d\)$",
        text,
        re.M,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_has_outputs(name: str) -> None:
    path = NOTEBOOKS / name
    assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "not executed top to bottom"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = notebook_text(nb)
    assert "FAST=False" in text  # committed at full size
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", f"{name}: a committed cell failed"
    assert str(REPO) not in text and "/tmp/" not in text, "absolute paths in the outputs"
    if name.startswith("03"):  # executed with the free and the anchored intervals
        assert _refined_slopes(text) == ["Adam"] * 3 + ["GD"] * 3
