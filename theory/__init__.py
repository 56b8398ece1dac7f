"""Pure mathematics of LoRA+ scaling: exponent calculus, exact reduced dynamics, symbolic checks.

Installed as :mod:`loraplus_lab.theory` (the repository keeps it in the top-level folder
``theory/``). This package never imports torch or :mod:`loraplus_lab.sims`.
"""

if __name__ != "loraplus_lab.theory":  # e.g. `import theory` from the repository's root
    raise ImportError(
        f"this folder is the package loraplus_lab.theory, not {__name__!r}: "
        "install the project (pip install -e .) and `import loraplus_lab.theory`"
    )
