"""Loading real models and tokenizers, and the paper's LoRA configuration for them.

:func:`load_model` and :func:`load_tokenizer` accept a local folder (anything written by
``save_pretrained``) or a Hub name such as ``roberta-base``. A name that can be neither found
locally nor downloaded raises :class:`ModelLoadError` (a :class:`ValueError`) with a one-line
message; code from the Hub is never executed unless ``trust_remote_code=True`` is asked for.

:func:`lora_config_for` gives the LoRA+ paper's GLUE setting: rank ``r = 8``, the classification
head trained in full (PEFT's ``modules_to_save``), and LoRA on the modules the paper's GLUE
scripts adapt for each architecture (:data:`GLUE_TARGET_MODULES`). :func:`apply_lora` wraps a
model with that configuration and, like the paper's GLUE runner, keeps RoBERTa's head ``dense``
layer frozen so that only its output projection is trained.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from loraplus_lab.sims.checks import InputError

#: Model families whose sequence-classification head PEFT trains through ``modules_to_save``.
HEAD_NAMES: tuple[str, ...] = ("classifier", "score")

#: LoRA target modules per ``config.model_type``, as in the LoRA+ paper's GLUE scripts
#: (github.com/nikhil-ghosh-berkeley/loraplus,
#: ``glue/scripts/run_{roberta,gpt2,llama-7b}_lora.sh``):
#: RoBERTa ``--target_modules "query, value"`` (another revision of the same script uses
#: ``"query, key"``; pass ``target_modules`` to choose), GPT-2 ``"c_attn, c_proj, c_fc"``
#: (attention and MLP ``Conv1D`` layers) and
#: Llama ``"q_proj, k_proj, v_proj, o_proj, up_proj, down_proj, gate_proj"``. All with
#: ``--lora_rank 8``; the classification head is trained in full (``modules_to_save``).
GLUE_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "roberta": ("query", "value"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"),
}

#: Tasks :func:`load_model` understands, and the Auto class each one uses.
TASKS: tuple[str, ...] = ("classification", "causal-lm")

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ModelLoadError(InputError):
    """A model or tokenizer could not be loaded; the message is one line."""


def _one_line(text: object) -> str:
    """Collapse an exception text onto one line (the first sentence is usually enough)."""
    return " ".join(str(text).split())


def _looks_like_path(name: str) -> bool:
    """Whether ``name`` was meant as a filesystem path rather than a Hub repository id."""
    return (
        name.startswith((".", "~", os.sep))
        or os.path.isabs(name)
        or name.count("/") > 1
        or (os.altsep is not None and os.altsep in name)
    )


def _offline(offline: bool | None) -> bool:
    """``offline`` if given, else the Hub's offline mode (``HF_HUB_OFFLINE=1``)."""
    if offline is not None:
        return offline
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve(name_or_path: str | os.PathLike[str]) -> tuple[str, bool]:
    """Normalise the name; return ``(name, is_local_folder)`` or raise for a missing folder."""
    name = os.fspath(name_or_path)
    if not name or not name.strip():
        raise ModelLoadError("model name is empty")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return expanded, True
    if os.path.exists(expanded):
        raise ModelLoadError(f"{name}: not a model folder (expected a directory with config.json)")
    if _looks_like_path(name):
        raise ModelLoadError(f"{name}: no such model folder")
    return name, False


def _cached_snapshot(name: str) -> str | None:
    """The local snapshot folder of a Hub repository in the Hugging Face cache, if any."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, local_files_only=True)
    except Exception:  # not cached, or not a valid repository id
        return None


def _from_pretrained(
    loader: Any, name: str, local: bool, offline: bool, what: str = "model", **kwargs: Any
) -> Any:
    """Call ``loader`` on a local folder, a cached Hub snapshot, or (unless offline) the Hub.

    A cached snapshot is loaded as a local folder, so no request is made (transformers would
    otherwise look for adapter files online even with ``local_files_only``). Every failure
    becomes a one-line :class:`ModelLoadError`.
    """
    if local:
        try:
            return loader(name, local_files_only=True, **kwargs)
        except Exception as err:  # any loader failure becomes one line
            raise ModelLoadError(
                f"cannot load {what} from folder {name!r}: {_one_line(err)[:300]}"
            ) from None
    snapshot = _cached_snapshot(name)
    if snapshot is not None:
        try:
            return loader(snapshot, local_files_only=True, **kwargs)
        except Exception as err:  # an incomplete snapshot: try the Hub if allowed
            if offline:
                raise ModelLoadError(
                    f"cannot load {what} {name!r} from the Hugging Face cache (offline): "
                    f"{_one_line(err)[:300]}"
                ) from None
    elif offline:
        raise ModelLoadError(
            f"cannot load {what} {name!r}: no such local folder and not in the Hugging Face cache "
            "(offline mode: HF_HUB_OFFLINE=1 or offline=True)"
        )
    try:
        return loader(name, **kwargs)
    except Exception as err:  # any loader failure becomes one line
        raise ModelLoadError(
            f"cannot load {what} {name!r}: not a local folder, not in the Hugging Face cache, and "
            f"the Hub could not provide it ({_one_line(err)[:300]})"
        ) from None


def _to_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """Accept a torch dtype, a name such as ``"bf16"``, ``"auto"`` or ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(
            f"dtype: unknown {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}, auto"
        ) from None


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    task: str = "classification",
    num_labels: int | None = None,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    offline: bool | None = None,
) -> nn.Module:
    """Load a pretrained model from a local folder or the Hugging Face Hub.

    Args:
        name_or_path: A folder written by ``save_pretrained`` or a Hub name (``"roberta-base"``).
        task: ``"classification"`` (``AutoModelForSequenceClassification``) or ``"causal-lm"``.
        num_labels: Classes of the classification head; a pretrained head of another size is
            replaced by a fresh one (``ignore_mismatched_sizes``), as in the paper's GLUE runs.
        trust_remote_code: Run model code shipped with a Hub repository. Off unless asked.
        dtype: Parameter dtype (``torch.bfloat16``, ``"bf16"``, ``"auto"``); ``None`` keeps
            float32.
        offline: Never contact the Hub. ``None`` follows ``HF_HUB_OFFLINE``.

    Returns:
        The model, in training mode. A model without a padding token id gets its end-of-sequence
        id as padding id (GPT-2 and Llama need one to classify padded batches).

    Raises:
        ModelLoadError: One-line message: unknown task, missing folder, a name that is neither
            local, cached nor downloadable, or a folder that holds no loadable model.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ModelLoadError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
        raise ModelLoadError(f"num_labels must be a positive integer, got {num_labels!r}")
    name, local = _resolve(name_or_path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    torch_dtype = _to_dtype(dtype)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if task == "classification":
        loader = AutoModelForSequenceClassification.from_pretrained
        if num_labels is not None:
            kwargs["num_labels"] = int(num_labels)
            kwargs["ignore_mismatched_sizes"] = True
    else:
        loader = AutoModelForCausalLM.from_pretrained
    model = _from_pretrained(loader, name, local, _offline(offline), **kwargs)
    config = model.config
    if getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is not None:
            config.pad_token_id = eos
    model.train()
    return model


def load_tokenizer(
    name_or_path: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
    offline: bool | None = None,
) -> Any:
    """Load the tokenizer of a model folder or Hub name, with a padding token.

    A tokenizer without a padding token (GPT-2, Llama) pads with its end-of-sequence token, as
    the paper's GLUE runner does for GPT-2.

    Raises:
        ModelLoadError: One-line message when the tokenizer cannot be found or has no token to
            pad with.
    """
    from transformers import AutoTokenizer

    name, local = _resolve(name_or_path)
    tok = _from_pretrained(
        AutoTokenizer.from_pretrained,
        name,
        local,
        _offline(offline),
        what="tokenizer",
        trust_remote_code=trust_remote_code,
    )
    if tok.pad_token is None:
        for candidate in (tok.eos_token, tok.unk_token):
            if candidate is not None:
                tok.pad_token = candidate
                break
        else:
            raise ModelLoadError(
                f"tokenizer of {name!r} has no pad, end-of-sequence or unknown token to pad with"
            )
    return tok


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Full names of the modules LoRA can adapt here: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    from transformers.pytorch_utils import Conv1D

    return [
        name
        for name, module in model.named_modules()
        if name and isinstance(module, (nn.Linear, Conv1D))
    ]


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` already carries PEFT LoRA layers."""
    from peft.tuners.lora.layer import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def _short_names(names: Sequence[str]) -> list[str]:
    """Unique last components of module names, in first-seen order."""
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name.rsplit(".", 1)[-1], None)
    return list(seen)


def head_module_names(model: nn.Module) -> list[str]:
    """Which of :data:`HEAD_NAMES` the model has as a (possibly nested) module."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return [h for h in HEAD_NAMES if h in names]


def glue_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The paper's GLUE target modules for ``model``'s architecture (:data:`GLUE_TARGET_MODULES`).

    Raises:
        ValueError: For an architecture the paper did not use; the message lists the adaptable
            module names to choose ``target_modules`` from.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in GLUE_TARGET_MODULES:
        return GLUE_TARGET_MODULES[model_type]
    names = ", ".join(_short_names(adaptable_module_names(model))) or "none"
    raise InputError(
        f"target_modules: no paper default for model type {model_type!r} (defaults exist for "
        f"{', '.join(sorted(GLUE_TARGET_MODULES))}); pass target_modules from: {names}"
    )


def lora_config_for(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: Sequence[str] | str | None = None,
    modules_to_save: Sequence[str] | None | str = "auto",
    task: str = "classification",
    use_rslora: bool = False,
) -> Any:
    """A ``peft.LoraConfig`` in the LoRA+ paper's GLUE setting, checked against ``model``.

    Args:
        model: The (not yet wrapped) model the adapters will go on.
        r: LoRA rank (paper: 8).
        alpha: LoRA ``α``; the adapter scale is ``s = α/r`` (``α/√r`` with ``use_rslora``). The
            paper's GLUE scripts pass ``--lora_alpha 8`` (``s = 1``).
        dropout: Dropout on the adapter input.
        target_modules: Module names (matched as PEFT does: the full name or its last
            components) or one regular expression; ``None`` uses :func:`glue_target_modules`.
        modules_to_save: Modules trained in full and saved with the adapter; ``"auto"`` is the
            classification head (``classifier`` or ``score``) for ``task="classification"``
            and nothing otherwise. (PEFT's ``SEQ_CLS`` task type adds ``classifier`` and
            ``score`` in any case, so a classification head is always trained.)
        task: ``"classification"`` (PEFT task type ``SEQ_CLS``) or ``"causal-lm"``
            (``CAUSAL_LM``).
        use_rslora: Rank-stabilised scale ``α/√r``.

    Raises:
        ValueError: One line: ``r`` not a positive integer, ``alpha`` not positive, ``dropout``
            outside ``[0, 1)``, or target modules that match no module of the model (the
            message lists the model's ``Linear``/``Conv1D`` module names).
    """
    from peft import LoraConfig, TaskType
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers.pytorch_utils import Conv1D

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InputError(f"r: LoRA rank must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise InputError(f"alpha: must be positive, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise InputError(f"dropout: must be in [0, 1), got {dropout!r}")
    if task not in TASKS:
        raise InputError(f"task: unknown {task!r}; choose one of {', '.join(TASKS)}")
    if has_lora(model):
        raise InputError(
            f"{type(model).__name__} already has LoRA adapters; pass the model before "
            "get_peft_model/apply_lora"
        )
    if target_modules is None:
        targets: list[str] | str = list(glue_target_modules(model))
    elif isinstance(target_modules, str):
        targets = target_modules
        try:
            re.compile(targets)
        except re.error as err:
            raise InputError(f"target_modules: bad regular expression {targets!r}: {err}") from None
    else:
        targets = [str(t).strip() for t in target_modules if str(t).strip()]
        if not targets:
            raise InputError("target_modules: empty list")
    if modules_to_save == "auto":
        save = head_module_names(model) if task == "classification" else []
    elif modules_to_save is None:
        save = []
    elif isinstance(modules_to_save, str):
        save = [modules_to_save]
    else:
        save = list(modules_to_save)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=save or None,
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
        use_rslora=use_rslora,
    )
    adaptable = adaptable_module_names(model)
    # PEFT's own matcher; an excluded module (e.g. inside the head) answers falsy.
    matched = [n for n in adaptable if bool(check_target_module_exists(config, n))]
    if not matched:
        shown = targets if isinstance(targets, str) else ", ".join(targets)
        names = ", ".join(_short_names(adaptable)) or "none"
        raise InputError(
            f"target_modules: {shown} match no Linear/Conv1D module of this "
            f"{type(model).__name__}; its Linear/Conv1D module names are: {names}"
        )
    modules = dict(model.named_modules())
    if any(isinstance(modules[n], Conv1D) for n in matched):
        config.fan_in_fan_out = True
    return config


def apply_lora(model: nn.Module, config: Any, *, train_head_dense: bool = False) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (``peft.get_peft_model``) as in the paper's GLUE runs.

    Base weights are frozen; adapters and ``modules_to_save`` are trainable. RoBERTa's
    classification head is ``dense → tanh → out_proj``; the paper's runner freezes its ``dense``
    layer and trains ``out_proj`` only, which is what happens unless ``train_head_dense``.
    """
    from peft import get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, config)
    if not train_head_dense:
        for name, param in peft_model.named_parameters():
            if ".classifier." in f".{name}" and ".dense." in name and "lora_" not in name:
                param.requires_grad_(False)
    return peft_model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require gradients, in ``named_parameters`` order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def describe_model(model: nn.Module) -> dict[str, Any]:
    """A JSON-ready summary: class, model type, parameter counts, trainable parameter names."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "name_or_path": str(getattr(config, "_name_or_path", "")) or None,
        "parameters": total,
        "trainable_parameters": trainable,
        "trainable": trainable_parameter_names(model),
    }
