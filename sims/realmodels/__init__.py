"""LoRA+ on real transformers (optional extra ``loraplus-lab[realmodels]``): the optimizer and
its audit, training (transformers Trainer and a plain accelerate loop), width ladders of GPT-2,
Llama and RoBERTa, and the LoRA coordinate check.

Names are imported on first use so that importing :mod:`loraplus_lab.sims` never needs
transformers or peft.
"""

from __future__ import annotations

from loraplus_lab.sims import lazy_exports

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

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
