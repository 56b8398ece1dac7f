"""Shared test helpers: running the explanatory notebooks in fast mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def torch_optim_reference(cls, lr: float, grads, p0, **kw):
    """``p0`` after one ``torch.optim`` optimizer step per gradient of ``grads``: the
    independent reference for the simulator's update rules."""
    import torch

    param = torch.nn.Parameter(p0.clone())
    opt = cls([param], lr=lr, **kw)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    return param.detach()


def notebook_text(nb) -> str:
    """All text a notebook's code cells produced (streams and plain-text results)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


def notebook_images(nb) -> int:
    """How many PNG figures a notebook's outputs hold."""
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def execute_notebook(path: Path, workdir: Path, timeout: int):
    """Run a notebook top to bottom with the ``python3`` kernel in ``workdir``; returns it with
    its outputs (raises ``CellExecutionError`` on the first failing cell)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fast mode, this interpreter's kernel, no network, and a scratch working directory.

    A ``python3`` kernelspec written into a temporary ``JUPYTER_PATH`` (searched before any user
    or system kernelspec) runs ``sys.executable``, so the tests do not depend on which kernels
    the machine has; the package is importable in the kernel even when it is not installed.
    """
    pytest.importorskip("ipykernel")
    from ipykernel.kernelspec import write_kernel_spec

    jupyter = tmp_path / "jupyter"
    write_kernel_spec(jupyter / "kernels" / "python3")  # argv: sys.executable -m ipykernel_launcher
    assert sys.executable in (jupyter / "kernels" / "python3" / "kernel.json").read_text()
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("LORAPLUS_FAST", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no notebook needs the network
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + (os.pathsep + path if path else ""))
    work = tmp_path / "work"
    work.mkdir()
    return work


def run_in_fast_mode(
    path: Path, workdir: Path, timeout: int, expected: list[str], min_images: int
) -> str:
    """Execute a notebook in fast mode (:func:`execute_notebook`) and check what every notebook
    test checks: each ``expected`` text printed, no traceback, at least ``min_images`` figures,
    the file itself untouched and nothing written into ``workdir``. Returns the printed text."""
    before = path.read_bytes()
    nb = execute_notebook(path, workdir, timeout)
    text = notebook_text(nb)
    for want in expected:
        assert want in text, f"{path.name}: no output contains {want!r}"
    assert "Traceback" not in text
    assert notebook_images(nb) >= min_images
    assert path.read_bytes() == before  # the notebook file itself is never rewritten
    assert not any(workdir.iterdir()), "the notebook wrote files into its working directory"
    return text
