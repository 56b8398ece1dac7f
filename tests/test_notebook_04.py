"""Notebook 04 (real models) runs top to bottom in fast mode and shows its key results.

Same pattern as ``tests/test_notebooks.py``: nbclient executes the notebook in fast mode
(``LORAPLUS_FAST=1``) with this interpreter's ipykernel (a ``python3`` kernelspec written into a
temporary ``JUPYTER_PATH``) in a scratch working directory, so nothing is written into the
repository. A second test checks the committed notebook: executed in full mode, with outputs,
no errors, no absolute paths, under the size limit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import notebook_images, notebook_text, run_in_fast_mode

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "04_real_models.ipynb"
CELL_TIMEOUT = 180  # seconds per cell
MAX_BYTES = 1_536 * 1024

EXPECTED = [
    "FAST=True",
    # §1: both policies' groups, PEFT's pitfalls, λ = 1 = vanilla LoRA
    'policy="theory"',
    'policy="peft"',
    "groupB_no_decay",
    "-> ignored",
    'policy="peft" reproduces PEFT (loraplus_weight_decay=0.01) group by group: True',
    "bit-identical: True",
    # §2: the coordinate check's headline table
    "headline: mean width exponent over steps ≥ 2",
    "δ slopes agree with the calculus within the tolerance 0.25",
    # §3: LoRA vs LoRA+ tuned for both, on disjoint splits
    "sentences shared between splits: 0",
    "runs (2 η_A × 2 λ × 2 seeds, 10 steps each); diverged: 0",
    "the test runs reproduce the tuning runs' final training losses bit for bit: True",
    "test loss, LoRA+ − LoRA, per seed:",
    "temporary folder removed: True",
]


def _audit_groups(text: str) -> set[str]:
    """Group names in the first column of the printed optimizer audits."""
    return set(
        re.findall(
            r"^(lora_A|lora_B|lora_embedding|other_no_decay|other|groupA|"
            r"groupB_no_decay|groupB|embedding)\s+\d+\s",
            text,
            re.M,
        )
    )


@pytest.mark.slow
def test_notebook_04_runs_in_fast_mode(kernel_env: Path) -> None:
    text = run_in_fast_mode(NOTEBOOK, kernel_env, CELL_TIMEOUT, EXPECTED, 3)

    # the audits show every group of both policies
    assert _audit_groups(text) >= {
        "lora_A", "lora_B", "lora_embedding", "other", "other_no_decay",
        "groupA", "embedding", "groupB", "groupB_no_decay",
    }  # fmt: skip
    # the headline table has both parametrizations and the GPT-2 layer types
    assert re.search(r"^lora-fixed\s+attn\.c_attn\s", text, re.M)
    assert re.search(r"^loraplus\s+attn\.c_attn\s", text, re.M)
    # LoRA+: δ¹, δ² flat; equal fixed rates: δ¹ grows; Z flat
    m = re.search(r"LoRA\+: largest \|slope\| of δ¹, δ²: (\d+\.\d+)", text)
    assert m and float(m.group(1)) < 0.35, m and m.group(0)
    m = re.search(r"equal fixed rates: smallest slope of δ¹: (-?\d+\.\d+)", text)
    assert m and float(m.group(1)) > 0.5, m and m.group(0)
    m = re.search(r"control Z: largest \|slope\|: (\d+\.\d+)", text)
    assert m and float(m.group(1)) < 0.2, m and m.group(0)
    # no absolute paths even in fast mode
    assert str(REPO) not in text and "/tmp/" not in text


def test_committed_notebook_04_has_outputs() -> None:
    assert NOTEBOOK.stat().st_size < MAX_BYTES, (
        f"{NOTEBOOK.name} is {NOTEBOOK.stat().st_size} bytes"
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "not executed top to bottom"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    text = notebook_text(nb)
    assert "FAST=False" in text  # committed at full size
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", "a committed cell failed"
    assert str(REPO) not in text and "/tmp/" not in text, "absolute paths in the outputs"
    assert "headline: mean width exponent over steps ≥ 2" in text
    assert notebook_images(nb) >= 3
    # the finetune comparison of the committed run: η_A tuned for both on a grid, several seeds
    m = re.search(r"(\d+) runs \((\d+) η_A × 2 λ × (\d+) seeds", text)
    assert m and int(m.group(2)) >= 5 and int(m.group(3)) >= 3, m and m.group(0)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "No GPU results exist yet" in markdown
