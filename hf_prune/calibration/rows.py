"""Text -> fixed-length token rows: the one place that decides which rows calibration and recovery read.

Documents come from :mod:`hf_prune.corpus` (``builtin``, a local file, ``reference``, a ``datasets`` name). They
are shuffled with the seed, tokenised one after another (an EOS token between them) until ``samples * seq_len``
tokens are collected, and cut into ``samples`` rows of ``seq_len`` tokens. No padding is ever needed, so every
statistic sees only real tokens, and each process of a distributed run gets rows of the same shape.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any, NamedTuple

import torch
from torch import nn

from ..config import CalibrationOptions, PruningConfig
from ..corpus import TextSource, load_texts
from ..data import BUILTIN
from ..errors import ConfigError
from .stream import PackedTokenStream, packed_rows

logger = logging.getLogger(__name__)

#: calibration rows are this long unless asked otherwise (or the model's context is shorter)
DEFAULT_SEQ_LEN = 512


def tokenize_windows(texts: list[str], tokenizer: Any, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[samples, seq_len]`` token ids from documents taken in a seeded random order (:func:`packed_rows`)."""
    if tokenizer is None:
        raise ConfigError("calibration needs the model's tokenizer, and none was found beside the model")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    rows = list(itertools.islice(packed_rows((texts[index] for index in order), tokenizer, seq_len), samples))
    if len(rows) < samples:
        separator = 1 if tokenizer.eos_token_id is not None else 0
        available = sum(len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) + separator
                        for text in texts)
        raise ConfigError(
            f"calibration text is too short: {available:,} tokens, but {samples} samples x {seq_len} tokens "
            f"= {samples * seq_len:,} are needed; give more text or lower --calibration-samples / --seq-len"
        )
    return torch.stack(rows)


def load_calibration(source: TextSource, tokenizer: Any, *, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[samples, seq_len]`` token rows of ``source``."""
    windows = tokenize_windows(load_texts(source), tokenizer, samples, seq_len, seed)
    logger.info("calibration: %d x %d tokens from %s", samples, seq_len, source.name)
    return windows


def resolve_seq_len(model: nn.Module, seq_len: int | None) -> int:
    """Rows as long as asked, at most the model's context (a longer request is capped with a warning);
    by default the model's context, at most :data:`DEFAULT_SEQ_LEN`."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    if limit and seq_len > limit:
        logger.warning("seq_len %d exceeds the model's max_position_embeddings %d; using %d", seq_len, limit, limit)
        return limit
    return seq_len


def calibration_rows(model: nn.Module, tokenizer: Any, options: CalibrationOptions, *, seed: int,
                     held_out: int = 0, reader: str = "this run") -> torch.Tensor:
    """``options.samples`` rows for the statistics, plus ``held_out`` rows after them (the search's cost rows).
    ``reader`` names what needs the text, for the error when none was given."""
    if options.source is None:
        raise ConfigError(f"{reader} needs calibration text: pass --calibration FILE.txt|FILE.jsonl|DATASET (text "
                          f"of your model's domain), or '{BUILTIN}' for the small English sample shipped with hf-prune")
    return load_calibration(options.text_source(), tokenizer, samples=options.samples + held_out,
                            seq_len=resolve_seq_len(model, options.seq_len), seed=seed)


class RecoveryText(NamedTuple):
    """The rows recovery trains on, the rows it is judged on (never trained on), and where they came from; for
    ``--recover distill``, the stream it reads for as many tokens as its budget (``train`` is then None)."""

    train: torch.Tensor | None
    held_out: torch.Tensor
    source: str
    stream: PackedTokenStream | None = None


def recovery_rows(model: nn.Module, tokenizer: Any, config: PruningConfig) -> RecoveryText:
    """--recover-data (default: the calibration text), --recover-eval-rows rows held out: the last rows of a fixed
    set (``lora``), or the first rows of the stream (``distill``, whose documents it then never trains on)."""
    options, calibration = config.recovery, config.calibration
    name = options.data or calibration.source
    if name is None:
        raise ConfigError(f"--recover {options.method} needs text to train on: pass --recover-data (or --calibration) "
                          f"FILE.txt|FILE.jsonl|DATASET, or '{BUILTIN}'")
    source = calibration.text_source() if options.data is None else TextSource(name)
    seq_len = resolve_seq_len(model, calibration.seq_len)
    if options.method == "distill":
        stream = PackedTokenStream(source, tokenizer, seq_len, held_out=options.eval_rows, seed=config.seed)
        return RecoveryText(None, stream.held_out(), name, stream)
    rows = load_calibration(source, tokenizer, samples=options.samples + options.eval_rows, seq_len=seq_len,
                            seed=config.seed)
    return RecoveryText(rows[: options.samples], rows[options.samples:], name)
