"""Real text that needs no download, as byte-level token streams with fixed train/validation splits.

Every Python installation carries two corpora of real text:

- ``"stdlib-code"``: the standard library's own source files (Python code), every ``.py`` file
  under ``sysconfig``'s ``stdlib`` folder except ``site-packages`` and test suites;
- ``"pydoc-topics"``: the language reference topics of :mod:`pydoc_data.topics` (English prose,
  what ``help("assignment")`` prints).

A width ladder is pretrained on one and LoRA-finetuned on the other: a real distribution shift.
The same functions take the user's own text (a file, or a folder of ``.txt``/``.md``/``.py``/
``.rst`` files) and, where the network exists, a Hugging Face dataset (``"hf:wikitext:wikitext-2-
raw-v1"``: its ``train`` and ``validation`` splits, column ``text``).

Tokens are bytes: a document's UTF-8 encoding, ids 0–255 (vocabulary 256, no tokenizer to train
or to ship). Bytes 0–3 never occur in text; they stay free for the special ids of the ladder
models (bos 0, pad 1, eos 2, mask 3; any such byte in a document is replaced by a space), and
documents are joined with the end-of-document id 2.

Splits are by document: a document is held out for validation when the first 8 bytes of the
SHA-256 of its name, read as a fraction of 2^64, fall below ``val_fraction``, so the split of a
document never depends on which other documents exist. (A corpus of a single document is split
by position instead: its last ``val_fraction`` of bytes.) :attr:`Corpus.sha256` identifies the
content and the split, and is recorded with every result beside the Python version.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loraplus_lab.sims.checks import InputError

#: The corpora every Python installation has.
BUILTIN = ("stdlib-code", "pydoc-topics")
#: Special ids kept free of text (see the module docstring).
N_SPECIAL = 4
EOD_ID = 2
VOCAB = 256
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}


class CorpusError(InputError):
    """A corpus that cannot be used (missing, empty or binary file, unknown name)."""


@dataclass(frozen=True)
class Corpus:
    """A corpus as byte-token streams.

    Attributes:
        name: what was asked for (``"stdlib-code"``, a path, ``"hf:..."``).
        train, val: ``uint8`` token streams of the training and validation documents, each
            document followed by the end-of-document id.
        sha256: SHA-256 of the documents' names and bytes in order, with their split.
        documents: ``(train, validation)`` document counts.
        python: the Python version whose standard library was read.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    sha256: str
    documents: tuple[int, int]
    python: str = field(default_factory=platform.python_version)

    def describe(self) -> dict[str, object]:
        """What to record beside a result."""
        return {
            "corpus": self.name,
            "corpus_sha256": self.sha256,
            "train_bytes": int(self.train.size),
            "val_bytes": int(self.val.size),
            "train_documents": self.documents[0],
            "val_documents": self.documents[1],
            "python": self.python,
        }


def _is_held_out(name: str, val_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return h < val_fraction * 2.0**64


def encode(text: str) -> np.ndarray:
    """A document's byte tokens: UTF-8, with bytes below :data:`N_SPECIAL` replaced by a space."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
    data[data < N_SPECIAL] = ord(" ")
    return data


def decode(tokens: Iterable[int]) -> str:
    """Text of byte tokens (special ids dropped; invalid UTF-8 replaced)."""
    return bytes(int(t) for t in tokens if int(t) >= N_SPECIAL).decode("utf-8", errors="replace")


def from_documents(
    name: str,
    documents: Sequence[tuple[str, str]],
    *,
    val_fraction: float = 0.1,
    val_documents: Sequence[tuple[str, str]] | None = None,
) -> Corpus:
    """A corpus from ``(name, text)`` documents, split as the module docstring says (or, with
    ``val_documents``, an explicit validation split)."""
    if not 0 < val_fraction < 1:
        raise CorpusError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    docs = [(str(n), t) for n, t in documents if t.strip()]
    if not docs:
        raise CorpusError(f"corpus {name!r} has no text")
    if val_documents is not None:
        train_docs, val_docs = docs, [(str(n), t) for n, t in val_documents if t.strip()]
    elif len(docs) == 1:
        train_docs, val_docs = docs, []
    else:
        train_docs = [d for d in docs if not _is_held_out(d[0], val_fraction)]
        val_docs = [d for d in docs if _is_held_out(d[0], val_fraction)]
    h = hashlib.sha256()
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    eod = np.array([EOD_ID], dtype=np.uint8)
    for split, group in (("train", train_docs), ("val", val_docs)):
        for doc_name, text in group:
            tokens = encode(text)
            h.update(f"{split}\0{doc_name}\0{tokens.size}\0".encode())
            h.update(tokens.tobytes())
            parts[split] += [tokens, eod]
    train = np.concatenate(parts["train"]) if parts["train"] else np.zeros(0, np.uint8)
    val = np.concatenate(parts["val"]) if parts["val"] else np.zeros(0, np.uint8)
    if val.size == 0 or train.size == 0:  # one document (or every document on one side)
        stream = np.concatenate([train, val])
        cut = int(round(stream.size * (1 - val_fraction)))
        train, val = stream[:cut], stream[cut:]
        h.update(f"position-split {cut}".encode())
    counts = (len(train_docs), len(val_docs))
    return Corpus(name, train, val, h.hexdigest(), counts)


def stdlib_sources() -> list[tuple[str, str]]:
    """``(relative path, source)`` of the standard library's ``.py`` files, sorted by path
    (site-packages and test suites excluded; files that are not UTF-8 skipped)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for f in sorted(filenames):
            if f.endswith(".py"):
                p = Path(dirpath) / f
                try:
                    out.append((p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")))
                except (UnicodeDecodeError, OSError):
                    continue
    out.sort()
    return out


def pydoc_topics() -> list[tuple[str, str]]:
    """``(topic, text)`` of :mod:`pydoc_data.topics`, sorted by topic."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {str(path)!r} ({e.strerror})") from None
    if not raw.strip():
        raise CorpusError(f"corpus file {str(path)!r} is empty")
    if b"\0" in raw:
        raise CorpusError(f"corpus file {str(path)!r} is binary, not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorpusError(f"corpus file {str(path)!r} is not UTF-8 text") from None


def text_files(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(relative name, text)`` of a text file, or of every text file (``.txt``, ``.md``,
    ``.py``, ``.rst``) below a folder, sorted; an empty or binary file is an error."""
    p = Path(path)
    if p.is_file():
        return [(p.name, _read_text_file(p))]
    if not p.is_dir():
        raise CorpusError(f"no corpus file or folder {str(path)!r}")
    files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"folder {str(path)!r} holds no {'/'.join(TEXT_SUFFIXES)} file")
    return [(q.relative_to(p).as_posix(), _read_text_file(q)) for q in files]


def _hf_corpus(name: str, val_fraction: float) -> Corpus:
    parts = name.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise CorpusError(f"bad dataset corpus {name!r}: use hf:NAME or hf:NAME:CONFIG")
    from datasets import load_dataset

    try:
        ds = load_dataset(parts[1], parts[2] if len(parts) == 3 else None)
    except Exception as e:  # no network, no such dataset or config: datasets raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CorpusError(
            f"cannot load the Hugging Face dataset {name!r} ({type(e).__name__}: {first}); "
            "it needs the network the first time, or a copy in the datasets cache"
        ) from None
    if "train" not in ds or "text" not in ds["train"].column_names:
        raise CorpusError(f"dataset {name!r} has no train split with a 'text' column")
    train = [(f"train/{i}", t) for i, t in enumerate(ds["train"]["text"])]
    val = None
    if "validation" in ds:
        val = [(f"validation/{i}", t) for i, t in enumerate(ds["validation"]["text"])]
    return from_documents(name, train, val_fraction=val_fraction, val_documents=val)


def load_corpus(name: str | os.PathLike[str], *, val_fraction: float = 0.1) -> Corpus:
    """The corpus ``name``: one of :data:`BUILTIN`, ``"hf:NAME[:CONFIG]"`` (needs the network
    the first time), or a path to a text file or folder."""
    text = str(name)
    if text == "stdlib-code":
        return from_documents(text, stdlib_sources(), val_fraction=val_fraction)
    if text == "pydoc-topics":
        return from_documents(text, pydoc_topics(), val_fraction=val_fraction)
    if text.startswith("hf:"):
        return _hf_corpus(text, val_fraction)
    if not Path(text).exists():
        raise CorpusError(
            f"unknown corpus {text!r}: use {', '.join(BUILTIN)}, hf:NAME[:CONFIG], or a path"
        )
    return from_documents(text, text_files(text), val_fraction=val_fraction)


def check_corpus_name(name: str) -> str:
    """Validate a corpus name without reading it (for specs): built-in, ``hf:…`` or an existing
    path."""
    text = str(name)
    if text in BUILTIN or text.startswith("hf:"):
        return text
    p = Path(text)
    if p.is_file():
        _read_text_file(p)
        return text
    if p.is_dir():
        text_files(p)
        return text
    raise CorpusError(
        f"unknown corpus {text!r}: use {', '.join(BUILTIN)}, hf:NAME[:CONFIG], or a path"
    )


def random_windows(stream: np.ndarray, length: int, count: int, seed: Sequence[int]) -> np.ndarray:
    """``count`` windows of ``length`` tokens at uniform random offsets of ``stream``, drawn from
    ``numpy.random.default_rng(seed)`` (``seed`` a sequence such as ``(run_seed, step)``, so the
    batch of a step depends on nothing else). Returns ``int64 (count, length)``."""
    if stream.size < length:
        raise CorpusError(f"a stream of {stream.size} tokens has no window of {length}")
    rng = np.random.default_rng(np.random.SeedSequence([int(s) for s in seed]))
    starts = rng.integers(0, stream.size - length + 1, size=count)
    return stream[starts[:, None] + np.arange(length)].astype(np.int64)


def fixed_windows(stream: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` windows of ``length`` tokens at evenly spaced offsets covering ``stream`` (the
    validation set: the same for every run). Returns ``int64 (count, length)``."""
    if stream.size < length:
        raise CorpusError(f"a stream of {stream.size} tokens has no window of {length}")
    starts = np.linspace(0, stream.size - length, num=count).round().astype(np.int64)
    return stream[starts[:, None] + np.arange(length)].astype(np.int64)
