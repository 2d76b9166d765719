"""Training text for recovery as a stream of packed token rows, with held-out rows that are never trained on.

A distillation budget is given in tokens (``--recover-tokens``), and a user who spends a few hundred million of them
reads a web-scale corpus: documents are streamed (:func:`hf_prune.corpus.stream_texts`, shuffled with the seed
within a window), tokenised, joined with an EOS token and cut into rows of ``seq_len`` (no padding: every token is
trained on). The first ``held_out`` rows are set aside to judge the recovery; every document that went into them,
even in part, is skipped in training, in every pass over the text — a row of the held-out set is never a row the
student learnt. When the text is shorter than the budget it is read again, reshuffled with the next seed (a
warning says how many passes the budget takes).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from ..corpus import TextSource, stream_texts
from ..errors import ConfigError

logger = logging.getLogger(__name__)


def _fingerprint(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class PackedTokenStream:
    """Rows of ``seq_len`` token ids from ``source``: :meth:`held_out` first, then :meth:`rows` for training."""

    def __init__(self, source: TextSource, tokenizer: Any, seq_len: int, held_out: int, seed: int):
        if tokenizer is None:
            raise ConfigError("recovery needs the model's tokenizer, and none was found beside the model")
        self.source, self.tokenizer, self.seq_len, self.seed = source, tokenizer, seq_len, seed
        self._held_out_documents: set[bytes] = set()
        self.held_out_rows = self._take_held_out(held_out)

    def held_out(self) -> torch.Tensor:
        """``[held_out, seq_len]`` rows to judge the recovery on (the first rows of the first pass)."""
        return self.held_out_rows

    def rows(self, start_pass: int = 0) -> Iterator[torch.Tensor]:
        """Training rows, ``[seq_len]`` each, pass after pass over the text (endless; the caller stops at its
        budget). A pass is reshuffled with ``seed + pass``; the held-out documents are never among them."""
        for index in itertools.count(start_pass):
            produced = False
            for row in self._pack(self._documents(index, skip_held_out=True)):
                produced = True
                yield row
            if not produced:
                raise ConfigError(f"recovery text {self.source.name!r} has no text left for training once "
                                  f"{len(self.held_out_rows)} rows are held out; give more text or fewer "
                                  "--recover-eval-rows")
            if index == start_pass:
                logger.warning("recovery text %r read to its end; reading it again, reshuffled (the budget "
                               "takes more than one pass over it)", self.source.name)

    def _take_held_out(self, count: int) -> torch.Tensor:
        rows: list[torch.Tensor] = []
        if count:
            for row in self._pack(self._documents(0, skip_held_out=False), seen=self._held_out_documents):
                rows.append(row)
                if len(rows) == count:
                    break
        if len(rows) < count:
            raise ConfigError(f"recovery text {self.source.name!r} is too short to hold out {count} rows of "
                              f"{self.seq_len} tokens; give more text or lower --recover-eval-rows / --seq-len")
        return torch.stack(rows) if rows else torch.empty(0, self.seq_len, dtype=torch.long)

    def _documents(self, index: int, skip_held_out: bool) -> Iterator[str]:
        for text in stream_texts(self.source, seed=self.seed + index):
            if not (skip_held_out and _fingerprint(text) in self._held_out_documents):
                yield text

    def _pack(self, documents: Iterator[str], seen: set[bytes] | None = None) -> Iterator[torch.Tensor]:
        """:func:`packed_rows` of the documents; every document read is added to ``seen`` before a row of it is given
        out (so the held-out set holds every document its rows touched)."""
        on_document = (lambda text: seen.add(_fingerprint(text))) if seen is not None else None
        return packed_rows(documents, self.tokenizer, self.seq_len, on_document)


def packed_rows(documents: Iterable[str], tokenizer: Any, seq_len: int,
                on_document: Callable[[str], None] | None = None) -> Iterator[torch.Tensor]:
    """Full rows of ``seq_len`` tokens of the documents in order, an EOS token after each (no padding: every token
    is a real one); ``on_document`` is called with each document before any row of it is given out."""
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    buffer: list[int] = []
    for text in documents:
        if on_document is not None:
            on_document(text)
        buffer.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + separator)
        start = 0
        while len(buffer) - start >= seq_len:
            yield torch.tensor(buffer[start:start + seq_len], dtype=torch.long)
            start += seq_len
        del buffer[:start]  # once per document: what is left is shorter than a row
