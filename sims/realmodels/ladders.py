"""Width ladders of small GPT-2, Llama and RoBERTa models, built from configs only.

A *ladder* is a family of models that differ only in the width ``n`` (the hidden size): the
head dimension is fixed (so the number of heads is ``n / head_dim``), the MLP is ``4n`` wide
(Llama: ``8n/3`` rounded up to a multiple of 32, its SwiGLU convention), the depth, vocabulary and
context are small and fixed. Nothing is downloaded: every model is built from a config and
initialised here, deterministically from a seed.

Initialisation (width-consistent, muP-flavoured; ``n0`` is the base width, default 64):

- every hidden weight matrix with fan-in ``f`` gets ``N(0, σ²/f)``, so each layer maps Θ(1)
  input coordinates to Θ(1) output coordinates at every width; the matrices that write into the
  residual stream (GPT-2 ``c_proj``, Llama ``o_proj``/``down_proj``, RoBERTa ``*.output.dense``)
  are further divided by ``√(2·layers)`` (GPT-2's depth rule);
- embeddings (token, position, token type) get ``N(0, σ_emb²)`` with ``σ_emb = 1``: Θ(1)
  coordinates, as muP prescribes for input weights;
- the readout (``lm_head`` / RoBERTa's decoder / the classification ``score``/``out_proj``) is
  untied from the embeddings and gets ``N(0, (√n0 / n)²)``: standard (``1/√n``) at the base width
  and shrinking like ``1/n`` above it. That is muP's readout: the logits are Θ(1) at ``n0`` and
  stay O(1) when the features below move by Θ(1) per coordinate (correlated with the readout),
  which a ``1/√n`` readout would turn into Θ(√n) logits;
- biases are 0, LayerNorm/RMSNorm gains 1.

The attention scale stays ``1/√head_dim``; with a fixed head dimension it is width-independent.
All dropout is off (dropout would make a fixed probe batch non-deterministic).

LoRA targets (:data:`DEFAULT_TARGETS`) follow the LoRA+ paper's GLUE scripts
(nikhil-ghosh-berkeley/loraplus ``glue/scripts``): GPT-2 ``c_attn, c_proj, c_fc`` (``c_proj``
matches both the attention and the MLP output projection), RoBERTa ``query, value``, Llama all
seven projections.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from loraplus_lab.sims.checks import InputError, positive_int
from loraplus_lab.sims.params import DEFAULT_N0, check_init
from loraplus_lab.sims.realmodels.ladder_config import (  # noqa: F401 - re-exported
    ARCHS,
    DEFAULT_HEAD_DIM,
    DEFAULT_TARGETS,
    MIN_HEADS,
    check_arch,
    check_width,
)

TASKS = ("lm", "classification")
DEFAULT_VOCAB = 256
DEFAULT_CONTEXT = 64
#: Token ids below this are reserved (RoBERTa: bos 0, pad 1, eos 2, mask 3); data avoid them.
N_SPECIAL = 4
BOS_ID, PAD_ID, EOS_ID, MASK_ID = 0, 1, 2, 3

# Modules that write into the residual stream (scaled by 1/sqrt(2L)).
_RESIDUAL_OUT = {
    "gpt2": re.compile(r"\.h\.\d+\.(attn|mlp)\.c_proj$"),
    "llama": re.compile(r"\.layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj)$"),
    "roberta": re.compile(r"\.layer\.\d+\.(attention\.output|output)\.dense$"),
}


def llama_intermediate(width: int, multiple_of: int = 32) -> int:
    """Llama's MLP width: ``8n/3`` (SwiGLU keeps the ``4n`` MLP's parameter count) rounded up."""
    return multiple_of * math.ceil(8 * width / 3 / multiple_of)


def make_config(
    arch: str,
    width: int,
    *,
    layers: int = 2,
    head_dim: int = DEFAULT_HEAD_DIM,
    vocab: int = DEFAULT_VOCAB,
    context: int = DEFAULT_CONTEXT,
    num_labels: int = 2,
    attn_implementation: str = "sdpa",
    task: str = "lm",
):
    """The transformers config of one rung of a ladder (dropout off, embeddings untied)."""
    check_arch(arch)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    check_width(width, head_dim)
    layers = positive_int("layers", layers)
    context = positive_int("context", context)
    vocab = positive_int("vocab", vocab)
    if vocab <= N_SPECIAL:
        raise InputError(f"vocab must be larger than {N_SPECIAL}, got {vocab}")
    heads = width // head_dim
    common = dict(
        vocab_size=vocab,
        num_labels=num_labels,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    if arch == "gpt2":
        from transformers import GPT2Config

        cfg = GPT2Config(
            n_positions=context,
            n_embd=width,
            n_layer=layers,
            n_head=heads,
            n_inner=4 * width,
            # GPT-2's tanh-approximate GELU ("gelu_new") as torch's one fused kernel
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            summary_first_dropout=0.0,
            **common,
        )
    elif arch == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(
            hidden_size=width,
            intermediate_size=llama_intermediate(width),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=head_dim,
            max_position_embeddings=context,
            attention_dropout=0.0,
            **common,
        )
    else:
        from transformers import RobertaConfig

        cfg = RobertaConfig(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            classifier_dropout=0.0,
            max_position_embeddings=context + PAD_ID + 1,
            type_vocab_size=1,
            **common,
        )
    cfg._attn_implementation = attn_implementation
    return cfg


def _model_class(arch: str, task: str) -> type:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    import transformers as tf

    names = {
        ("gpt2", "lm"): "GPT2LMHeadModel",
        ("gpt2", "classification"): "GPT2ForSequenceClassification",
        ("llama", "lm"): "LlamaForCausalLM",
        ("llama", "classification"): "LlamaForSequenceClassification",
        ("roberta", "lm"): "RobertaForMaskedLM",
        ("roberta", "classification"): "RobertaForSequenceClassification",
    }
    return getattr(tf, names[(arch, task)])


def _readout_modules(model: nn.Module) -> set[nn.Module]:
    out = set()
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None:
        out.add(emb)
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            out.add(head)
        elif head is not None and isinstance(getattr(head, "out_proj", None), nn.Linear):
            out.add(head.out_proj)
    return out


def _weight_fan_in(module: nn.Module) -> int:
    """Fan-in of a Linear (weight ``out × in``) or a GPT-2 Conv1D (weight ``in × out``)."""
    if isinstance(module, nn.Linear):
        return module.weight.shape[1]
    return module.weight.shape[0]


def init_width_consistent(
    model: nn.Module,
    arch: str,
    *,
    seed: int,
    sigma: float = 1.0,
    sigma_emb: float = 1.0,
    n0: int = DEFAULT_N0,
) -> nn.Module:
    """Re-initialise ``model`` in place with the width-consistent scheme of this module.

    Draws come from a ``torch.Generator`` seeded with ``seed``, in the order of
    ``model.named_modules()``, on the CPU in float32: same seed → bit-identical weights, and the
    global random state is left alone.
    """
    check_arch(arch)
    from transformers.pytorch_utils import Conv1D

    gen = torch.Generator().manual_seed(int(seed))
    layers = model.config.num_hidden_layers
    readouts = _readout_modules(model)
    residual = _RESIDUAL_OUT[arch]

    def normal_(p: torch.Tensor, std: float) -> None:
        draw = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        p.copy_(draw.to(p.dtype))

    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Embedding):
                normal_(mod.weight, sigma_emb)
            elif isinstance(mod, (nn.Linear, Conv1D)):
                fan_in = _weight_fan_in(mod)
                if mod in readouts:
                    std = math.sqrt(n0) / fan_in
                else:
                    std = sigma / math.sqrt(fan_in)
                    if residual.search("." + name):
                        std /= math.sqrt(2 * layers)
                normal_(mod.weight, std)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
            elif hasattr(mod, "weight") and isinstance(mod.weight, torch.Tensor):
                if mod.weight.ndim == 1:  # LayerNorm / RMSNorm
                    mod.weight.fill_(1.0)
                    if getattr(mod, "bias", None) is not None:
                        mod.bias.zero_()
        for name, p in model.named_parameters(recurse=True):
            # RoBERTa's LM head holds its own bias vector.
            if name.endswith("lm_head.bias"):
                p.zero_()
    return model


def make_model(
    arch: str,
    width: int,
    *,
    seed: int,
    layers: int = 2,
    task: str = "lm",
    num_labels: int = 2,
    head_dim: int = DEFAULT_HEAD_DIM,
    vocab: int = DEFAULT_VOCAB,
    context: int = DEFAULT_CONTEXT,
    sigma: float = 1.0,
    n0: int = DEFAULT_N0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
) -> nn.Module:
    """One rung of a width ladder: a transformers model built from a config, initialised from
    ``seed`` with :func:`init_width_consistent`.

    Args:
        arch: ``"gpt2"``, ``"llama"`` or ``"roberta"``.
        width: hidden size ``n`` (≥ 64, divisible by ``head_dim``).
        seed: seed of every draw.
        layers: transformer blocks.
        task: ``"lm"`` (GPT2LMHeadModel / LlamaForCausalLM / RobertaForMaskedLM) or
            ``"classification"`` (the ``*ForSequenceClassification`` variants).
        num_labels: classes for ``task="classification"``.
        head_dim: per-head dimension, fixed across the ladder (heads = ``width / head_dim``).
        vocab: vocabulary size (ids below :data:`N_SPECIAL` are special tokens).
        context: maximum sequence length.
        sigma: gain ``σ`` of the hidden matrices (std ``σ/√fan_in``).
        n0: base width of the readout's ``√n0 / n`` rule.
        dtype: parameter dtype.
        attn_implementation: ``"sdpa"`` or ``"eager"``.
        device: where the model is built (the draws are made on the CPU either way, so a
            seed gives the same weights on every device).

    Returns:
        The model, in eval mode (no dropout anywhere).
    """
    check_arch(arch)
    cls = _model_class(arch, task)
    cfg = make_config(
        arch,
        width,
        layers=layers,
        head_dim=head_dim,
        vocab=vocab,
        context=context,
        num_labels=num_labels,
        attn_implementation=attn_implementation,
        task=task,
    )
    with torch.device(device):
        model = cls(cfg)
    # GPT2LMHeadModel's class name maps to no loss type; name it (transformers warns otherwise)
    model.loss_type = {"classification": "ForSequenceClassification"}.get(
        task, "ForMaskedLM" if arch == "roberta" else "ForCausalLM"
    )
    init_width_consistent(model, arch, seed=seed, sigma=sigma, n0=n0)
    return model.to(dtype).eval()


def ladder(
    arch: str, widths: Sequence[int], **kwargs: Any
) -> dict[int, Callable[[int], nn.Module]]:
    """Model factories keyed by width (muP's ``coord_check`` idea): ``ladder(...)[n](seed)``.

    ``kwargs`` go to :func:`make_model`; the widths are validated now, not when called.
    """
    check_arch(arch)
    head_dim = int(kwargs.get("head_dim", DEFAULT_HEAD_DIM))
    out: dict[int, Callable[[int], nn.Module]] = {}
    for n in widths:
        n = check_width(n, head_dim)

        def factory(seed: int, n: int = n) -> nn.Module:
            return make_model(arch, n, seed=seed, **kwargs)

        out[n] = factory
    return out


# --------------------------------------------------------------------------- synthetic language


def markov_chain(vocab: int, *, seed: int, concentration: float = 0.1) -> np.ndarray:
    """A random bigram language: row-stochastic ``(vocab, vocab)`` transition matrix over the
    non-special tokens (rows and columns of the special ids are zero), each row a
    ``Dirichlet(concentration)`` draw (small concentration → few likely successors)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6D61726B]))
    k = vocab - N_SPECIAL
    P = np.zeros((vocab, vocab))
    P[N_SPECIAL:, N_SPECIAL:] = rng.dirichlet(np.full(k, concentration), size=k)
    return P


def markov_tokens(
    batch: int,
    seq: int,
    *,
    vocab: int = DEFAULT_VOCAB,
    seed: int,
    chain_seed: int | None = None,
) -> torch.Tensor:
    """A ``(batch, seq)`` int64 token batch sampled from :func:`markov_chain` (``chain_seed``,
    default ``seed``); first tokens uniform over the non-special ids."""
    batch = positive_int("batch", batch)
    seq = positive_int("seq", seq)
    P = markov_chain(vocab, seed=seed if chain_seed is None else chain_seed)
    cdf = np.cumsum(P, axis=1)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x746F6B73]))
    out = np.empty((batch, seq), dtype=np.int64)
    out[:, 0] = rng.integers(N_SPECIAL, vocab, size=batch)
    for t in range(1, seq):
        u = rng.random(batch)[:, None]
        nxt = (u > cdf[out[:, t - 1]]).sum(axis=1)
        out[:, t] = np.clip(nxt, N_SPECIAL, vocab - 1)
    return torch.from_numpy(out)


def lm_batch(
    arch: str,
    batch: int,
    seq: int,
    *,
    vocab: int = DEFAULT_VOCAB,
    seed: int,
    chain_seed: int | None = None,
    mask_prob: float = 0.15,
) -> dict[str, torch.Tensor]:
    """Model inputs for the language-model loss on a Markov token batch.

    GPT-2 / Llama: causal LM (``labels = input_ids``; the model shifts). RoBERTa: masked LM, a
    fixed ``mask_prob`` fraction of positions (at least one per row, from ``seed``) replaced by
    the mask id, labels ``-100`` elsewhere.
    """
    check_arch(arch)
    ids = markov_tokens(batch, seq, vocab=vocab, seed=seed, chain_seed=chain_seed)
    attn = torch.ones_like(ids)
    if arch != "roberta":
        return {"input_ids": ids, "attention_mask": attn, "labels": ids.clone()}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6D61736B]))
    mask = rng.random(ids.shape) < mask_prob
    mask[np.arange(batch), rng.integers(0, seq, size=batch)] = True
    mask_t = torch.from_numpy(mask)
    labels = torch.where(mask_t, ids, torch.full_like(ids, -100))
    inputs = torch.where(mask_t, torch.full_like(ids, MASK_ID), ids)
    return {"input_ids": inputs, "attention_mask": attn, "labels": labels}


def _fan_in_groups(model: nn.Module, lr: float, n0: int) -> Iterator[dict[str, object]]:
    """muP-Adam groups: matrices ``lr · n0 / fan_in``, embeddings and vectors ``lr``."""
    from transformers.pytorch_utils import Conv1D

    seen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, Conv1D)) and mod.weight.requires_grad:
            seen.add(id(mod.weight))
            yield {"params": [mod.weight], "lr": lr * n0 / _weight_fan_in(mod)}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        yield {"params": rest, "lr": lr}


def pretrain(
    model: nn.Module,
    steps: int,
    *,
    seed: int,
    arch: str | None = None,
    lr: float = 1e-2,
    batch: int = 16,
    seq: int = 32,
    n0: int = DEFAULT_N0,
) -> list[float]:
    """Briefly pretrain every weight on a synthetic bigram language, so ``W*`` is not random.

    The language is :func:`markov_chain` with ``seed``; each step draws a fresh batch from it.
    Adam with muP's per-layer rates (matrices ``lr · n0 / fan_in``, embeddings and vectors
    ``lr``), so the same ``lr`` suits every width. Returns the losses; leaves the model in eval
    mode with ``requires_grad`` unchanged.
    """
    steps = positive_int("steps", steps)
    if arch is None:
        arch = {"gpt2": "gpt2", "llama": "llama", "roberta": "roberta"}.get(
            model.config.model_type, ""
        )
    check_arch(arch)
    vocab = model.config.vocab_size
    device = next(model.parameters()).device
    opt = torch.optim.Adam(list(_fan_in_groups(model, lr, n0)))
    losses = []
    model.train()
    for t in range(steps):
        b = lm_batch(arch, batch, seq, vocab=vocab, seed=seed * 100_003 + t, chain_seed=seed)
        loss = model(**{k: v.to(device) for k, v in b.items()}).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    model.eval()
    return losses


# --------------------------------------------------------------------------------- LoRA wrapping


def lora_model(
    model: nn.Module,
    arch: str,
    *,
    r: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] | None = None,
    init: str = "A",
    seed: int = 0,
    sigma_b: float | None = None,
    task: str = "lm",
    use_rslora: bool = False,
) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters (``lora_dropout=0``), initialised from ``seed``.

    Init[A] (PEFT's default scheme): ``B0 = 0``, ``A0 ~ U(−1/√fan_in, 1/√fan_in)``, the
    distribution of PEFT's ``kaiming_uniform_(a=√5)``. Init[B]: ``A0 = 0``,
    ``B0 ~ N(0, σ_B²)`` with ``σ_B = sigma_b`` (default ``1/√r``, width-independent). Both are
    drawn here from a seeded generator, overwriting PEFT's own (global-RNG) draws, so the adapters
    are deterministic. For GPT-2 (Conv1D weights) ``fan_in_fan_out=True`` is set.

    Args:
        model: a model from :func:`make_model` (or any transformers model of ``arch``).
        arch: its architecture (selects the default targets and ``fan_in_fan_out``).
        r: LoRA rank.
        alpha: LoRA ``α`` (``s = α/r``).
        target_modules: module-name suffixes; default :data:`DEFAULT_TARGETS` ``[arch]``.
        init: ``"A"`` or ``"B"``.
        seed: seed of the adapter draws.
        sigma_b: Init[B]'s ``σ_B``.
        task: ``"lm"`` or ``"classification"`` (PEFT's ``SEQ_CLS`` task type, which also
            trains the classification head).
        use_rslora: ``s = α/√r`` instead of ``α/r``.
    """
    check_arch(arch)
    check_init(init)
    r = positive_int("r", r)
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    from peft import LoraConfig, TaskType, get_peft_model

    targets = list(DEFAULT_TARGETS[arch] if target_modules is None else target_modules)
    if not targets:
        raise InputError("target_modules must name at least one module")
    task_type = {
        ("lm", "gpt2"): TaskType.CAUSAL_LM,
        ("lm", "llama"): TaskType.CAUSAL_LM,
        ("lm", "roberta"): None,
    }.get((task, arch), TaskType.SEQ_CLS)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        fan_in_fan_out=arch == "gpt2",
        bias="none",
        task_type=task_type,
        use_rslora=use_rslora,
    )
    with warnings.catch_warnings():
        # transformers 5 deprecates an attribute PEFT still reads; not ours to act on
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(int(seed) + 0x4C6F5241)
    sb = 1.0 / math.sqrt(r) if sigma_b is None else float(sigma_b)
    with torch.no_grad():
        for _, layer in iter_lora_layers(peft_model):
            A = layer.lora_A["default"].weight
            B = layer.lora_B["default"].weight
            if init == "A":
                bound = 1.0 / math.sqrt(A.shape[1])
                draw = (torch.rand(A.shape, generator=gen) * 2 - 1) * bound
                A.copy_(draw.to(A.dtype))
                B.zero_()
            else:
                A.zero_()
                B.copy_((torch.randn(B.shape, generator=gen) * sb).to(B.dtype))
    return peft_model.eval()


def iter_lora_layers(model: nn.Module, adapter: str = "default") -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every PEFT LoRA layer holding ``adapter`` (Linear and Conv1D-based)."""
    from peft.tuners.lora.layer import LoraLayer

    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and adapter in getattr(mod, "lora_A", {}):
            yield name, mod


_BLOCK = re.compile(r"\.(?:h|layers|layer)\.(\d+)\.(.+)$")


def layer_coordinates(name: str) -> tuple[int, str]:
    """``(block index, layer type)`` of a module name, e.g.
    ``...transformer.h.1.attn.c_attn`` → ``(1, "attn.c_attn")``; ``(-1, name)`` outside blocks."""
    m = _BLOCK.search(name)
    if m is None:
        return -1, name
    return int(m.group(1)), m.group(2)
