"""The KV cache of beam_search's pool (decoding.py): one row per beam, rows joining and leaving.

Each layer keeps one buffer of shape (row capacity, column capacity, 2, kv_heads, head_dim),
allocated once per call for its widest row (the pool's max_rows rows). Keys and values of a
(row, column) cell sit side by side, so that a cell is one contiguous vector and moving cells
between rows (beam reordering, a finished input's rows taken over by another input) is a single
index_select / index_copy_ over the flattened (rows x columns) dimension, whatever cells are
involved. A row holds its own columns from 0: its prefix, then its prompt, then the tokens
generated so far; columns past a row's length are stale but finite, and masked.

Attention reads a strided view (rows, kv_heads, width, head_dim) of the buffer; PyTorch's SDPA
takes it as it is (measured: as fast as a contiguous tensor, and the same values). The view's
row count and width, and the column each row writes its new token to, are set by the pool before
every forward (`prepare`); `update` then writes the new token in place and returns the views.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class RowLayer(CacheLayerMixin):
    """One layer of a RowCache: its buffer and the views attention reads."""

    def __init__(self, cache: RowCache) -> None:
        super().__init__()
        self.cache = cache
        self.buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("a RowCache is filled by beam_search's pool, not by a forward")

    def view(self) -> None:
        rows, width = self.cache.rows, self.cache.width
        cells = self.buffer[:rows, :width]
        self.keys = cells[:, :, 0].transpose(1, 2)
        self.values = cells[:, :, 1].transpose(1, 2)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        cache = self.cache
        if key_states.shape[2] != 1 or cache.columns is None:
            raise RuntimeError("a RowCache takes one new token per row and forward")
        self.buffer[cache.writers, cache.columns, 0] = key_states[:, :, 0]
        self.buffer[cache.writers, cache.columns, 1] = value_states[:, :, 0]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # only asked for when no 4D mask is given, which the pool always gives
        return self.cache.width, 0

    def get_seq_length(self) -> int:
        return self.cache.width

    def get_max_length(self) -> int:
        return -1


class RowCache(Cache):
    """The keys/values of every row of the pool for one attention stream (self or cross)."""

    def __init__(self, layers: int) -> None:
        self.rows = 0  # rows the next forward runs (the first `rows` of the buffers)
        self.width = 0  # columns attention sees: the longest row's length
        self.columns: torch.Tensor | None = None  # (rows,) where each row writes its new token
        self.writers: torch.Tensor | None = None  # (rows,): 0, 1, ..., rows - 1
        self._arange: torch.Tensor | None = None
        super().__init__(layers=[RowLayer(self) for _ in range(layers)])

    @property
    def allocated(self) -> bool:
        return self.layers[0].buffer is not None

    @property
    def columns_held(self) -> int:
        return self.layers[0].buffer.shape[1]

    def allocate(self, rows: int, columns: int, like: torch.Tensor) -> None:
        """Buffers for `rows` rows of `columns` columns, shaped and typed after `like` (new cells:
        (..., 2, kv_heads, head_dim)), for the whole call: growing them later would need old and
        new at once. Zeros: attention reads never-written columns (masked), which must be
        finite."""
        shape = (rows, columns, *like.shape[-3:])
        for layer in self.layers:
            layer.buffer = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self._arange = torch.arange(rows, device=like.device)

    def widen(self, columns: int) -> None:
        """Grow every row to `columns` columns (rounded up to 32), keeping its cells: for a pool
        whose inputs arrive over time (a server), when one is wider than any before."""
        columns = -(-columns // 32) * 32
        for layer in self.layers:
            old = layer.buffer
            layer.buffer = old.new_zeros(old.shape[0], columns, *old.shape[2:])
            layer.buffer[:, : old.shape[1]] = old

    def prepare(self, rows: int, width: int, columns: torch.Tensor | None = None) -> None:
        """Set the views for the next forward: `rows` rows, `width` columns, and the column each
        row writes its new token to (None for a cross-attention cache, which is only read)."""
        self.rows, self.width = rows, width
        self.columns = columns
        self.writers = None if columns is None else self._arange[:rows]
        for layer in self.layers:
            layer.view()

    def write(self, layer: int, first_row: int, beams: int, cells: torch.Tensor) -> None:
        """Write new inputs' rows of one layer from row `first_row` on: cells is (inputs,
        columns, 2, kv_heads, head_dim), one row per input, copied to its `beams` rows."""
        inputs, columns = cells.shape[:2]
        rows = self.layers[layer].buffer[first_row : first_row + inputs * beams]
        rows.view(inputs, beams, *rows.shape[1:])[:, :, :columns] = cells[:, None]

    def move(self, destination: torch.Tensor, source: torch.Tensor) -> None:
        """Copy cells (flat indices row * column capacity + column) from `source` to
        `destination`; all sources are read before any destination is written."""
        for layer in self.layers:
            flat = layer.buffer.view(-1, *layer.buffer.shape[2:])
            flat.index_copy_(0, destination, flat.index_select(0, source))
