"""Calibration (and recovery) text -> fixed-length token sequences.

Documents come from :mod:`hf_prune.corpus` (``builtin``, a local file, ``reference``, a ``datasets``
name). They are shuffled with the seed, tokenised one after another (an EOS token between them) until
``samples * seq_len`` tokens are collected, and cut into ``samples`` rows of ``seq_len`` tokens. No
padding is ever needed, so every statistic sees only real tokens, and each process of a distributed
run gets rows of the same shape.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import torch

from .corpus import TextSource, load_texts
from .errors import ConfigError

logger = logging.getLogger(__name__)

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
    source: TextSource, tokenizer: Any, *, samples: int, seq_len: int, seed: int
) -> torch.Tensor:
    texts = load_texts(source)
    windows = tokenize_windows(texts, tokenizer, samples, seq_len, seed)
    logger.info("calibration: %d x %d tokens from %s", samples, seq_len, source.name)
    return windows
