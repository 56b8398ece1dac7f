"""Classification data for real-model runs: GLUE tasks and local CSV / JSONL files, tokenized.

``load_task("glue/<name>", tokenizer)`` loads a GLUE task through ``datasets.load_dataset`` (the
Hub's ``nyu-mll/glue``; ``glue`` is its legacy alias) with the right text columns and label
count per task (:data:`GLUE_TASKS`). ``load_task("data.csv", tokenizer)`` (or ``.jsonl``) reads
a local file with a text column (``text`` or ``sentence``, or ``sentence1``), an optional second
text (``text_pair`` or ``sentence2``) and a ``label`` column of integers (class ids), strings
(class names, mapped to ids in sorted order) or non-integral numbers (regression). Every problem
found in a file (no such file, a missing column, a missing or NaN label or text) raises
:class:`DataError`, a :class:`ValueError` with a one-line message naming the file and the column
or row.

The result is a :class:`TaskData`: a ``datasets.Dataset`` with ``input_ids``,
``attention_mask`` and ``labels`` (unpadded; pad per batch with
``transformers.DataCollatorWithPadding``) and the number of labels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loraplus_lab.sims.checks import InputError

#: Hub id of GLUE for ``datasets.load_dataset`` (``"glue"`` redirects to it).
GLUE_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """Columns and labels of one GLUE task."""

    text: str
    text_pair: str | None
    num_labels: int  # 1 = regression (STS-B)
    validation: str = "validation"


#: GLUE tasks: text columns (as in the LoRA+ paper's ``glue/src/constants.py`` and the
#: ``datasets`` GLUE card), label count and the validation split evaluated.
GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("sentence", None, 2),
    "sst2": GlueTask("sentence", None, 2),
    "mrpc": GlueTask("sentence1", "sentence2", 2),
    "qqp": GlueTask("question1", "question2", 2),
    "stsb": GlueTask("sentence1", "sentence2", 1),
    "mnli": GlueTask("premise", "hypothesis", 3, validation="validation_matched"),
    "qnli": GlueTask("question", "sentence", 2),
    "rte": GlueTask("sentence1", "sentence2", 2),
    "wnli": GlueTask("sentence1", "sentence2", 2),
}

_GLUE_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}

#: Accepted column names in local files, in order of preference.
TEXT_COLUMNS = ("text", "sentence", "sentence1")
PAIR_COLUMNS = ("text_pair", "sentence2")
LABEL_COLUMN = "label"
FILE_SUFFIXES = (".csv", ".jsonl", ".json")


class DataError(InputError):
    """Bad task name or data file; the message is one line naming the file and column/row."""


@dataclass
class TaskData:
    """A tokenized split of a classification task.

    Attributes:
        dataset: ``datasets.Dataset`` with ``input_ids``, ``attention_mask``, ``labels``.
        num_labels: Classes (1 for regression).
        label_names: Class names by id (``None`` for regression or integer-labelled files).
        task: The task as given (``"glue/sst2"`` or the file path).
        split: The split loaded (``"file"`` for local files).
        text_columns: The text column(s) tokenized.
        source: ``{"kind": "glue" | "file", ...}`` for the run's configuration record.
    """

    dataset: Any
    num_labels: int
    label_names: list[str] | None
    task: str
    split: str
    text_columns: tuple[str, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


def is_glue(task: str) -> bool:
    """Whether ``task`` names a GLUE task (``glue/<name>``)."""
    return str(task).lower().startswith("glue/")


def glue_task(task: str) -> tuple[str, GlueTask]:
    """``("sst2", GlueTask(...))`` for ``"glue/sst2"``; :class:`DataError` for unknown names."""
    name = str(task).split("/", 1)[1].strip().lower() if "/" in str(task) else str(task).lower()
    name = _GLUE_ALIASES.get(name, name)
    if name not in GLUE_TASKS:
        raise DataError(
            f"task: unknown GLUE task {task!r}; choose one of "
            + ", ".join(f"glue/{n}" for n in GLUE_TASKS)
        )
    return name, GLUE_TASKS[name]


def check_task(task: str | os.PathLike[str]) -> None:
    """Cheap checks of a task name before anything is loaded (name or file existence/suffix)."""
    task = os.fspath(task)
    if is_glue(task):
        glue_task(task)
        return
    path = Path(task).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(
            f"task: {task!r} is neither glue/<name> ({', '.join(GLUE_TASKS)}) nor a "
            f"{'/'.join(FILE_SUFFIXES)} file"
        )
    if not path.is_file():
        raise DataError(f"{task}: no such file")


def _load_glue_raw(name: str, split: str) -> Any:
    """``datasets.load_dataset`` of one GLUE split (needs the network or the datasets cache)."""
    import datasets

    return datasets.load_dataset(GLUE_DATASET, name, split=split)


def _read_file(path: Path) -> pd.DataFrame:
    """Read a CSV or JSON-lines file into a DataFrame; one-line :class:`DataError` on failure."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=True)
        try:
            return pd.read_json(path, lines=True, dtype=False)
        except ValueError:
            if suffix == ".json":  # a JSON array of records
                return pd.read_json(path, dtype=False)
            raise
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        first = " ".join(str(err).split())[:200]
        raise DataError(f"{path}: cannot read as {suffix[1:].upper()}: {first}") from None


def _first_present(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _file_labels(
    path: Path, labels: pd.Series, label_names: Sequence[str] | None = None
) -> tuple[list[Any], int, list[str] | None]:
    """Validate and encode a label column: ``(encoded, num_labels, label_names)``.

    String labels map to ids by ``label_names`` when given (e.g. the training file's), else in
    sorted order.
    """
    for i, value in enumerate(labels.tolist()):
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{path}: row {i + 1}: '{LABEL_COLUMN}' is missing or NaN")
    values = labels.tolist()
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return [int(v) for v in values], 2, None
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        for i, v in enumerate(values):
            if not math.isfinite(float(v)):
                raise DataError(f"{path}: row {i + 1}: '{LABEL_COLUMN}' is not finite ({v})")
        if all(float(v).is_integer() for v in values):
            ints = [int(v) for v in values]
            for i, v in enumerate(ints):
                if v < 0:
                    raise DataError(
                        f"{path}: row {i + 1}: '{LABEL_COLUMN}' must be a class id ≥ 0, got {v}"
                    )
            return ints, max(ints) + 1, None
        return [float(v) for v in values], 1, None
    names = list(label_names) if label_names else sorted({str(v).strip() for v in values})
    index = {n: i for i, n in enumerate(names)}
    for i, v in enumerate(values):
        if str(v).strip() not in index:
            raise DataError(
                f"{path}: row {i + 1}: '{LABEL_COLUMN}' {v!r} is not one of {', '.join(names)}"
            )
    return [index[str(v).strip()] for v in values], len(names), names


def _file_frame(
    path: Path, label_names: Sequence[str] | None = None
) -> tuple[pd.DataFrame, str, str | None, list[Any], int, list[str] | None]:
    """Read and validate a local file: frame, text column, pair column, labels, count, names."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    frame = _read_file(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if frame.empty:
        raise DataError(f"{path}: no rows")
    text = _first_present(columns, TEXT_COLUMNS)
    if text is None:
        raise DataError(
            f"{path}: no text column (need one of {', '.join(TEXT_COLUMNS)}); "
            f"columns are: {', '.join(columns)}"
        )
    if LABEL_COLUMN not in columns:
        raise DataError(f"{path}: no '{LABEL_COLUMN}' column; columns are: {', '.join(columns)}")
    pair = (
        _first_present(columns, PAIR_COLUMNS)
        if text != "sentence1"
        else ("sentence2" if "sentence2" in columns else None)
    )
    for col in (text, pair):
        if col is None:
            continue
        for i, value in enumerate(frame[col].tolist()):
            if _is_missing(value):
                raise DataError(f"{path}: row {i + 1}: '{col}' is missing")
    labels, num_labels, names = _file_labels(path, frame[LABEL_COLUMN], label_names)
    return frame, text, pair, labels, num_labels, names


def _tokenize(
    tokenizer: Any,
    texts: list[str],
    pairs: list[str] | None,
    labels: list[Any],
    max_length: int,
) -> Any:
    """A ``datasets.Dataset`` of unpadded token ids, attention masks and labels."""
    import datasets

    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False)
    columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    columns["labels"] = labels
    return datasets.Dataset.from_dict(columns)


def _check_common(max_length: int, max_samples: int | None) -> None:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length must be an integer ≥ 2, got {max_length!r}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise DataError(f"max_samples must be a positive integer, got {max_samples!r}")


def load_task(
    task: str | os.PathLike[str],
    tokenizer: Any,
    *,
    max_length: int = 128,
    split: str = "train",
    max_samples: int | None = None,
    label_names: Sequence[str] | None = None,
) -> TaskData:
    """Load and tokenize a classification task.

    Args:
        task: ``"glue/<name>"`` (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or the path
            of a local ``.csv`` / ``.jsonl`` file (see the module docstring for its columns).
        tokenizer: A Hugging Face tokenizer (called with ``truncation=True``).
        max_length: Tokens per example after truncation (the paper: 128).
        split: GLUE split: ``"train"``, ``"validation"`` (MNLI: ``validation_matched``;
            ``validation_mismatched`` works too). Ignored for local files (the whole file).
        max_samples: Keep the first ``max_samples`` examples.
        label_names: Local files with string labels: the class names by id to map them with
            (pass the training data's ``label_names`` when loading evaluation data).

    Returns:
        :class:`TaskData` with the tokenized dataset and ``num_labels``.

    Raises:
        DataError: One line: unknown task or split, no such file, missing column, missing/NaN
            label or text (with its row, 1-based among data rows), or GLUE unavailable.
    """
    _check_common(max_length, max_samples)
    task = os.fspath(task)
    check_task(task)
    if is_glue(task):
        name, spec = glue_task(task)
        real_split = spec.validation if split == "validation" else split
        if real_split.startswith("test"):
            raise DataError(f"{task}: split {split!r} has hidden labels; use train or validation")
        if max_samples is not None:
            real_split = f"{real_split}[:{max_samples}]"
        try:
            raw = _load_glue_raw(name, real_split)
        except Exception as err:  # network, cache, hub errors of any library: one line
            first = " ".join(str(err).split())[:300]
            raise DataError(
                f"{task}: cannot load split {split!r} of {GLUE_DATASET}: {first}"
            ) from None
        columns = [spec.text] + ([spec.text_pair] if spec.text_pair else [])
        missing = [c for c in [*columns, LABEL_COLUMN] if c not in raw.column_names]
        if missing:
            raise DataError(f"{task}: split {split!r} lacks column(s) {', '.join(missing)}")
        labels = list(raw[LABEL_COLUMN])
        for i, v in enumerate(labels):
            if _is_missing(v) or (spec.num_labels > 1 and not 0 <= int(v) < spec.num_labels):
                raise DataError(f"{task}: split {split!r}: row {i + 1}: bad label {v!r}")
        feature = raw.features.get(LABEL_COLUMN)
        names = list(getattr(feature, "names", []) or []) or None
        if spec.num_labels == 1:
            labels = [float(v) for v in labels]
        dataset = _tokenize(
            tokenizer,
            list(raw[spec.text]),
            list(raw[spec.text_pair]) if spec.text_pair else None,
            labels,
            max_length,
        )
        return TaskData(
            dataset=dataset,
            num_labels=spec.num_labels,
            label_names=names,
            task=task,
            split=real_split,
            text_columns=tuple(columns),
            source={"kind": "glue", "dataset": GLUE_DATASET, "name": name, "split": real_split},
        )
    path = Path(task).expanduser()
    frame, text, pair, labels, num_labels, names = _file_frame(path, label_names)
    if max_samples is not None:
        frame = frame.iloc[:max_samples]
        labels = labels[:max_samples]
    dataset = _tokenize(
        tokenizer,
        [str(t) for t in frame[text].tolist()],
        [str(t) for t in frame[pair].tolist()] if pair else None,
        labels,
        max_length,
    )
    return TaskData(
        dataset=dataset,
        num_labels=num_labels,
        label_names=names,
        task=task,
        split="file",
        text_columns=(text,) + ((pair,) if pair else ()),
        source={"kind": "file", "path": str(path.resolve()), "rows": len(frame)},
    )
