"""Experiments: toy simulators, measurement, sweeps, real models, plots and the command line.

Installed as :mod:`loraplus_lab.sims` (the repository keeps it in the top-level folder
``sims/``); it imports :mod:`loraplus_lab.theory`, never the reverse.
"""

if __name__ != "loraplus_lab.sims":  # e.g. `import sims` from the repository's root
    raise ImportError(
        f"this folder is the package loraplus_lab.sims, not {__name__!r}: "
        "install the project (pip install -e .) and `import loraplus_lab.sims`"
    )

from collections.abc import Callable
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """``(__getattr__, __all__)`` for a package whose public names are imported from its
    modules on first use (``exports``: name → module), so that importing the package is cheap
    (a spec is checked without torch, ``sims`` without transformers)."""
    import importlib
    import sys

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, sorted(exports)
