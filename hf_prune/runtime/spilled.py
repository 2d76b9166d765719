"""Large tensors kept in a file and read back a block of rows at a time, for runs that hold memory to one layer.

Two things a layer-by-layer run would otherwise hold beside the layer it works on:

- the search's dense reference, tokens × vocabulary float32 log-probabilities kept for the whole run (8 rows of 512
  tokens of Llama-3's 128k vocabulary: 2.1 GB, as much as the embedding table), read only when a KL is measured;
- a consumer's d×d float64 second moments (Llama-3.1-8B's down_proj: 1.6 GB), of which least squares reads only the
  kept rows, while its own system — up to another d×d — and OBS's inverse need memory of the same size.

Kept in a file, the memory they held is free for that work. Reads go through the page cache, which the kernel gives
back under pressure and which is not the process's memory (an ``mmap`` would count every page read as resident).
The file is anonymous: it is gone once nothing refers to the rows written in it, or when the process ends.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import torch


class SpillFile:
    """An anonymous temporary file that tensors are spilled to (:meth:`spill`); closed when :meth:`close` is called
    or when neither it nor any of its rows is referred to any more."""

    def __init__(self, directory: str | None = None) -> None:
        self._handle = tempfile.TemporaryFile(dir=directory)

    def spill(self, tensor: torch.Tensor) -> "SpilledRows":
        return SpilledRows(tensor, self._handle)

    def close(self) -> None:
        self._handle.close()


class SpilledRows:
    """A ``[rows, ...]`` tensor written to an open binary file, read back by row ranges (``rows[a:b]``) or by a list
    of row indices (:meth:`index_select` along dimension 0). Holds the file open while it exists."""

    def __init__(self, tensor: torch.Tensor, handle) -> None:
        data = tensor.detach().to("cpu").contiguous()
        self.shape, self.dtype = tuple(data.shape), data.dtype
        self._handle = handle  # keeps the file open (and on disk) while these rows exist
        self._row_bytes = data[0].numel() * data.element_size() if data.shape[0] else 0
        self._offset = os.lseek(handle.fileno(), 0, os.SEEK_END)
        view = memoryview(data.view(torch.uint8).numpy()).cast("B") if data.numel() else memoryview(b"")
        written = 0
        while written < len(view):  # a write may take less than asked
            written += os.pwrite(handle.fileno(), view[written:], self._offset + written)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("spilled rows are read as a contiguous range")
        out = torch.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
        self._read_into(out, start)
        return out

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Rows ``index`` (dimension 0 only), as ``torch.index_select`` gives them; runs of consecutive rows are read
        at once."""
        if dim != 0:
            raise IndexError("spilled rows are selected along dimension 0")
        rows = [int(i) for i in index.flatten()]
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        for position, first, count in _runs(rows):
            self._read_into(out[position : position + count], first)
        return out

    def load(self) -> torch.Tensor:
        """All rows, as a new tensor in memory."""
        return self[:]

    def _read_into(self, out: torch.Tensor, first_row: int) -> None:
        if not out.numel():
            return
        buffer = memoryview(out.view(torch.uint8).numpy()).cast("B")
        position, done = self._offset + first_row * self._row_bytes, 0
        while done < len(buffer):
            read = os.preadv(self._handle.fileno(), [buffer[done:]], position + done)
            if read == 0:
                raise OSError("a spilled tensor's file ended early")
            done += read


def _runs(rows: list[int]) -> Iterator[tuple[int, int, int]]:
    """(position in ``rows``, first row, count) of each run of consecutive row numbers."""
    start = 0
    for position in range(1, len(rows) + 1):
        if position == len(rows) or rows[position] != rows[position - 1] + 1:
            yield start, rows[start], position - start
            start = position


def in_memory(rows: torch.Tensor | SpilledRows) -> torch.Tensor:
    """``rows`` as a tensor in memory (spilled rows read back whole; a tensor as it is)."""
    return rows.load() if isinstance(rows, SpilledRows) else rows


def working_copy(rows: torch.Tensor | SpilledRows) -> torch.Tensor:
    """A tensor of ``rows`` that may be written over: spilled rows read back, a tensor in memory cloned."""
    return rows.load() if isinstance(rows, SpilledRows) else rows.clone()
