"""Small local model folders for offline use: a width-ladder rung (GPT-2, Llama or RoBERTa
shape), optionally pretrained on a text corpus, saved with ``save_pretrained`` together with a
byte-level tokenizer, so that ``loraplus-lab finetune --model DIR`` (and ``from_pretrained``)
work without the network.

The tokenizer maps each byte of a text's UTF-8 encoding to its own id (0–255), as the ladder's
corpora do (:mod:`~loraplus_lab.sims.realmodels.corpus`): a ``tokenizers`` BPE model with no
merges over GPT-2's byte-to-character alphabet, wrapped as a ``PreTrainedTokenizerFast``. Ids
0–3 are the special tokens ``<s>``, ``<pad>``, ``</s>``, ``<mask>`` (the ladder's bos, pad,
eos and mask ids); the control bytes 0–3 never occur in text and are replaced by a space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraplus_lab.sims.checks import InputError
from loraplus_lab.sims.files import check_output, partial_dir, publish_dir
from loraplus_lab.sims.realmodels.ladder_config import BaseSpec, check_arch, default_cache

SPECIALS = ("<s>", "<pad>", "</s>", "<mask>")


def _bytes_to_unicode() -> dict[int, str]:
    try:
        from transformers.convert_slow_tokenizer import bytes_to_unicode
    except ImportError:  # transformers < 4.47 kept it with GPT-2's tokenizer
        from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    return bytes_to_unicode()


def byte_tokenizer(model_max_length: int = 64) -> Any:
    """A ``PreTrainedTokenizerFast`` whose ids are the UTF-8 bytes of the text (0–255), with
    ``<s>``, ``<pad>``, ``</s>``, ``<mask>`` at ids 0–3."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(len(SPECIALS), 256)}
    vocab.update({s: i for i, s in enumerate(SPECIALS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.normalizer = normalizers.Replace(Regex("[\\x00-\\x03]"), " ")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        mask_token="<mask>",
        model_max_length=model_max_length,
    )


def make_model_folder(
    arch: str,
    width: int,
    out: str | os.PathLike[str],
    *,
    layers: int = 2,
    head_dim: int = 32,
    context: int = 128,
    seed: int = 0,
    pretrain: str | None = None,
    steps: int = 500,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """Write a ladder rung and the byte-level tokenizer into ``out`` (a new or empty folder).

    Args:
        arch: ``gpt2``, ``llama`` or ``roberta``.
        width, layers, head_dim, context: the model's shape (see
            :func:`~loraplus_lab.sims.realmodels.ladders.make_model`).
        seed: seed of the initialisation.
        pretrain: a corpus (``stdlib-code``, ``pydoc-topics``, a path, ``hf:…``) to pretrain on
            for ``steps`` steps first (GPT-2 and Llama; cached like the ladder's bases), or
            ``None`` for the width-consistent random initialisation.
        cache: cache of pretrained bases (default ``$LORAPLUS_CACHE``).

    Returns:
        ``out``, which ``from_pretrained`` and ``loraplus-lab finetune --model`` load offline.
    """
    check_arch(arch)
    out = Path(out)
    check_output(out)
    if pretrain is not None:
        if arch == "roberta":
            raise InputError("pretraining is for causal models (gpt2, llama); RoBERTa is masked")
        from loraplus_lab.sims.realmodels.bases import load_base, pretrain_base

        spec = BaseSpec(
            arch,
            width,
            corpus=pretrain,
            layers=layers,
            head_dim=head_dim,
            context=context,
            steps=steps,
            warmup=max(1, steps // 20),
            seed=seed,
        )
        folder = pretrain_base(spec, cache=cache if cache is not None else default_cache())
        model = load_base(folder)
    else:
        from loraplus_lab.sims.realmodels.ladders import make_model

        model = make_model(
            arch, width, seed=seed, layers=layers, head_dim=head_dim, context=context
        )
    staging = partial_dir(out)
    model.save_pretrained(staging, safe_serialization=True)
    byte_tokenizer(context).save_pretrained(staging)
    if out.exists():
        out.rmdir()
    publish_dir(staging, out)
    return out
