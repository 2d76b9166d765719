"""Calibration text -> fixed-length token sequences.

A source is one of
- ``builtin``: the small sample of the corpus's train split that ships inside the package
  (:mod:`hf_prune.data`),
- a local ``.txt`` / ``.jsonl`` / ``.json`` file (read with ``datasets``' text / json builders),
- ``reference``: the train split of the corpus that ``scripts/prepare_corpus.py`` writes
  (``$HF_PRUNE_CORPUS``, ``./data/corpus`` or ``data/corpus`` beside the source tree) — never its
  test split,
- any other string: a ``datasets`` dataset name, with ``config`` / ``split`` / ``column``.

Documents are shuffled with the seed, tokenised one after another (an EOS token between them) until
``samples * seq_len`` tokens are collected, and cut into ``samples`` rows of ``seq_len`` tokens. No
padding is ever needed, so every statistic sees only real tokens, and each process of a distributed
run gets rows of the same shape.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import BUILTIN, CALIBRATION_FILE
from .errors import ConfigError, first_line
from .evaluate import default_corpus_dir

logger = logging.getLogger(__name__)

REFERENCE = "reference"
LOCAL_BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json"}


@dataclass(frozen=True)
class CalibrationSource:
    name: str
    config: str | None = None
    split: str = "train"
    column: str = "text"


def load_texts(source: CalibrationSource) -> list[str]:
    """All non-empty documents of the source, in their stored order."""
    from datasets import load_dataset

    name = source.name
    if name == REFERENCE:
        path = default_corpus_dir() / "train.jsonl"
        if not path.is_file():
            raise ConfigError(f"calibration 'reference' needs {path}; run `python scripts/prepare_corpus.py` "
                              "first (or set HF_PRUNE_CORPUS to the corpus directory)")
        name = str(path)
    elif name == BUILTIN:
        name = str(CALIBRATION_FILE)
    local = Path(name).expanduser()
    try:
        if local.suffix in LOCAL_BUILDERS or local.exists():
            if not local.is_file():
                raise ConfigError(f"calibration file {name!r} does not exist; pass an existing .txt/.jsonl "
                                  f"file, a datasets name, '{BUILTIN}' or '{REFERENCE}'")
            if local.stat().st_size == 0:
                raise ConfigError(f"calibration file {name!r} is empty; pass a file with text in it")
            builder = LOCAL_BUILDERS.get(local.suffix)
            if builder is None:
                raise ConfigError(f"calibration file {name!r} must end in .txt, .jsonl or .json")
            column = "text" if builder == "text" else source.column
            dataset = load_dataset(builder, data_files=str(local), split="train")
        else:
            column = source.column
            dataset = load_dataset(name, source.config, split=source.split)
    except ConfigError:
        raise
    except Exception as error:  # datasets raises many types; the user needs the first line only
        raise ConfigError(f"cannot read calibration data {source.name!r}: {first_line(error)}") from error
    if column not in dataset.column_names:
        raise ConfigError(f"calibration data {source.name!r} has no column {column!r} "
                          f"(columns: {', '.join(dataset.column_names)}); pass --calibration-column")
    texts = [text for text in dataset[column] if isinstance(text, str) and text.strip()]
    if not texts:
        raise ConfigError(f"calibration data {source.name!r} contains no text")
    return texts


def tokenize_windows(texts: list[str], tokenizer: Any, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[samples, seq_len]`` token ids from documents taken in a seeded random order."""
    if tokenizer is None:
        raise ConfigError("calibration needs the model's tokenizer, and none was found beside the model")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    needed = samples * seq_len
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    buffer: list[int] = []
    for index in order:
        buffer.extend(tokenizer(texts[index], add_special_tokens=False, verbose=False)["input_ids"] + separator)
        if len(buffer) >= needed:
            break
    if len(buffer) < needed:
        raise ConfigError(
            f"calibration text is too short: {len(buffer):,} tokens, but {samples} samples x {seq_len} tokens "
            f"= {needed:,} are needed; give more text or lower --calibration-samples / --seq-len"
        )
    return torch.tensor(buffer[:needed], dtype=torch.long).reshape(samples, seq_len)


def load_calibration(
    source: CalibrationSource, tokenizer: Any, *, samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    texts = load_texts(source)
    windows = tokenize_windows(texts, tokenizer, samples, seq_len, seed)
    logger.info("calibration: %d x %d tokens from %s", samples, seq_len, source.name)
    return windows
