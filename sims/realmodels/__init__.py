"""LoRA+ on real transformers (optional extra ``loraplus-lab[realmodels]``): the optimizer and
its audit, training (transformers Trainer and a plain accelerate loop), width ladders of GPT-2,
Llama and RoBERTa, and the LoRA coordinate check.

Names are imported on first use so that ``import sims`` never needs transformers or peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_loraplus_optimizer": "optimizer",
    "optimizer_audit": "optimizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sims.realmodels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"sims.realmodels.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
