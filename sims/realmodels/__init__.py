"""LoRA+ on real transformers (optional extra ``loraplus-lab[realmodels]``): the optimizer and
its audit, training (transformers Trainer and a plain accelerate loop), width ladders of GPT-2,
Llama and RoBERTa, and the LoRA coordinate check.

Names are imported on first use so that importing :mod:`loraplus_lab.sims` never needs
transformers or peft.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_loraplus_optimizer": "optimizer",
    "optimizer_audit": "optimizer",
    "format_audit": "optimizer",
    "load_model": "models",
    "load_tokenizer": "models",
    "lora_config_for": "models",
    "apply_lora": "models",
    "GLUE_TARGET_MODULES": "models",
    "load_task": "data",
    "LoraPlusTrainer": "train",
    "LoraPlusArguments": "train",
    "train_loop": "train",
    "make_accelerator": "train",
    "make_dataloader": "train",
    "finetune": "finetune",
    "finetune_grid": "grid",
    "expand_grid": "grid",
    "make_model": "ladders",
    "run_coordcheck": "coordcheck",
    "coordcheck_slopes": "coordcheck",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'loraplus_lab.sims.realmodels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"loraplus_lab.sims.realmodels.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
