"""Experiments: toy simulators, measurement, sweeps, real models, plots and the command line.

Installed as :mod:`loraplus_lab.sims` (the repository keeps it in the top-level folder
``sims/``); it imports :mod:`loraplus_lab.theory`, never the reverse.
"""

if __name__ != "loraplus_lab.sims":  # e.g. `import sims` from the repository's root
    raise ImportError(
        f"this folder is the package loraplus_lab.sims, not {__name__!r}: "
        "install the project (pip install -e .) and `import loraplus_lab.sims`"
    )

__version__ = "0.1.0"
