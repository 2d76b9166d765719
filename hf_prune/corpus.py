"""Where text comes from, once: calibration, recovery and evaluation all read documents through here.

A source is one of
- ``builtin``: the small samples that ship inside the package (:mod:`hf_prune.data`) — the train
  sample for calibration / recovery, the held-out sample for evaluation;
- a local ``.txt`` (documents separated by blank lines) / ``.jsonl`` / ``.json`` file, read with
  ``datasets``' text / json builders;
- ``reference``: a split of the corpus that ``scripts/prepare_corpus.py`` writes (``$HF_PRUNE_CORPUS``,
  ``./data/corpus`` or ``data/corpus`` beside the source tree);
- any other string: a ``datasets`` dataset name, with ``config`` / ``split`` / ``column``.

The test split of the reference corpus is only ever evaluated on, never calibrated or trained on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import BUILTIN, CALIBRATION_FILE, HELDOUT_FILE
from .errors import ConfigError, first_line

REFERENCE = "reference"
LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}
_REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingCorpusError(ConfigError):
    """The held-out text is missing; the message names the file and the command that makes it."""


@dataclass(frozen=True)
class TextSource:
    name: str
    config: str | None = None
    split: str = "train"
    column: str = "text"


def default_corpus_dir() -> Path:
    """``$HF_PRUNE_CORPUS``, else ``./data/corpus``, else ``data/corpus`` beside the source tree."""
    env = os.environ.get("HF_PRUNE_CORPUS")
    if env:
        return Path(env)
    local = Path("data/corpus")
    return local if local.exists() else _REPO_ROOT / "data" / "corpus"


def resolve_split_file(path: str | Path | None = None, split: str = "test") -> Path:
    """The file of ``split`` (a file, a corpus dir, ``builtin``, or the default corpus); raise if missing.

    ``builtin`` is the sample shipped in :mod:`hf_prune.data` of that split (held-out for ``test``).
    """
    if str(path) == BUILTIN:
        return CALIBRATION_FILE if split == "train" else HELDOUT_FILE
    p = Path(path) if path is not None else default_corpus_dir()
    if p.is_dir() or path is None:
        p = p / f"{split}.jsonl"
    if not p.is_file():
        raise MissingCorpusError(
            f"text {p} not found: run `python scripts/prepare_corpus.py` (or set HF_PRUNE_CORPUS), "
            f"pass a .jsonl/.txt file, or use '{BUILTIN}' for the small sample shipped with hf-prune"
        )
    return p


def load_texts(source: TextSource) -> list[str]:
    """All non-empty documents of the source, in their stored order."""
    dataset, column, builder = _open(source, streaming=False)
    texts = [text for text in dataset[column] if isinstance(text, str) and text.strip()]
    if builder == "text":  # paragraphs keep their surrounding line breaks; a document is the text between
        texts = [text.strip() for text in texts]
    if not texts:
        raise ConfigError(f"text {source.name!r} contains no text")
    return texts


def stream_texts(source: TextSource, seed: int, buffer: int = 10_000) -> Iterator[str]:
    """The non-empty documents of the source, streamed (``datasets``' streaming: a web-scale dataset is read as it
    is used, never downloaded whole) in an order shuffled with ``seed`` within a window of ``buffer`` documents."""
    dataset, column, builder = _open(source, streaming=True)
    for record in dataset.shuffle(seed=seed, buffer_size=buffer):
        text = record.get(column)
        if isinstance(text, str) and text.strip():
            yield text.strip() if builder == "text" else text


def _open(source: TextSource, streaming: bool) -> tuple[Any, str, str | None]:
    """(the ``datasets`` dataset of ``source``, the column holding its text, the local builder or None)."""
    from datasets import load_dataset

    name = source.name
    if name in (REFERENCE, BUILTIN):
        name = str(resolve_split_file(None if name == REFERENCE else BUILTIN, source.split))
    local = Path(name).expanduser()
    try:
        builder = None
        if local.suffix in LOCAL_BUILDERS or local.exists():
            if not local.is_file():
                raise ConfigError(f"text file {name!r} does not exist; pass an existing .txt/.jsonl "
                                  f"file, a datasets name, '{BUILTIN}' or '{REFERENCE}'")
            if local.stat().st_size == 0:
                raise ConfigError(f"text file {name!r} is empty; pass a file with text in it")
            builder = LOCAL_BUILDERS.get(local.suffix)
            if builder is None:
                raise ConfigError(f"text file {name!r} must end in .txt, .jsonl or .json")
            column = "text" if builder == "text" else source.column
            options = {"sample_by": "paragraph"} if builder == "text" else {}
            dataset = load_dataset(builder, data_files=str(local), split="train", streaming=streaming, **options)
        else:
            column = source.column
            dataset = load_dataset(name, source.config, split=source.split, streaming=streaming)
        columns = dataset.column_names if not streaming else _streamed_columns(dataset)
    except ConfigError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the first line only
        raise ConfigError(f"cannot read text {source.name!r}: {first_line(error)}") from error
    if columns is not None and column not in columns:
        raise ConfigError(f"text {source.name!r} has no column {column!r} "
                          f"(columns: {', '.join(columns)}); pass --calibration-column")
    return dataset, column, builder


def _streamed_columns(dataset: Any) -> list[str] | None:
    """A streamed dataset's columns: from its features when known, else from its first record (None: empty)."""
    if dataset.features is not None:
        return list(dataset.features)
    first = next(iter(dataset), None)
    return list(first) if first is not None else None


def load_documents(path: str | Path) -> list[str]:
    """Documents of a local ``.jsonl`` (``text`` field) or ``.txt`` file (blank-line separated)."""
    return load_texts(TextSource(str(path)))
