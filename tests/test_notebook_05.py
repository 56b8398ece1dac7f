"""Notebook 05 (real-model scaling) runs top to bottom in fast mode and shows its key results;
the committed notebook carries its full outputs.

Fast mode reads the same committed data as the full notebook (``figures/data/real_ladder.csv``,
written by ``loraplus-lab figures --only real_…``) with fewer bootstrap resamples; running the
ladder itself is the job of ``loraplus-lab figures`` (its fast version is tested in
``tests/test_ladder.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import notebook_text, run_in_fast_mode

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "05_real_model_scaling.ipynb"
CELL_TIMEOUT = 180
MAX_BYTES = 1_536 * 1024
EXPECTED = [
    "FAST=True",
    "wider is better on the pretraining corpus at every step of the ladder:",
    "slope of log2_eta_a        against log2 n:",
    "share of the best gain given up:",
    "resamples in which LoRA+ reaches LoRA's final loss",
    "- log2 η_A* against log2 n: slope",
]


@pytest.mark.slow
def test_notebook_05_runs_in_fast_mode(kernel_env: Path) -> None:
    text = run_in_fast_mode(NOTEBOOK, kernel_env, CELL_TIMEOUT, EXPECTED, 4)
    # every slope is printed with its interval and a verdict
    verdicts = re.findall(r"\(theory [+-]\d\) → (agrees|close|inconclusive|differs)", text)
    assert len(verdicts) == 5  # η_A*, η_B*, λ*, the valley η_A*·η_B*, η_A at a fixed η_B


def test_committed_notebook_05_has_outputs() -> None:
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = notebook_text(nb)
    assert "FAST=False" in text and "Traceback" not in text
    assert str(REPO) not in text and "/tmp/" not in text
