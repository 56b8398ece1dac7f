"""The optimizers of the toolkit, by name: one list for every layer.

``gd`` (plain gradient descent), ``signgd`` (``sign(0) = 0``), ``adam`` and ``adamw`` (decoupled
weight decay) are the update rules the exact reduced dynamics, the n-dimensional simulator, the
sweep specs and the command line all accept. The exponent calculus treats AdamW as Adam: weight
decay of order ``η·λ·p`` never changes the order of a step (:data:`CALCULUS_ALIASES`).

This module imports nothing.
"""

from __future__ import annotations

#: Every optimizer name the toolkit accepts.
OPTIMIZERS = ("gd", "signgd", "adam", "adamw")
#: Optimizers the exponent calculus computes as another one.
CALCULUS_ALIASES = {"adamw": "adam"}


def calculus_optimizer(name: str) -> str:
    """The optimizer whose exponents ``name`` has (``"adamw"`` → ``"adam"``, else ``name``)."""
    return CALCULUS_ALIASES.get(name, name)
