"""Streaming, shuffled training tokens from feature row stores.

Every valid row of every store contributes all its T tokens. An epoch visits the stores' chunks
(``chunk_rows`` rows each) in a seeded random order, groups consecutive chunks into windows of at
most ``buffer_tokens`` tokens, shuffles the tokens of a window and cuts it into batches. Tokens
left over at the end of a window (fewer than a batch) are carried into the next one, across
epochs too, so no token is dropped but the very last partial batch of the run.

Memory is bounded by the window (fp16), never by the dataset. The loader position is a few
integers plus the carry, which is what an exact resume needs: windows are rebuilt
deterministically from ``(seed, epoch, window)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from blindspot_assets.store.rowstore import RowStore


@dataclass(frozen=True)
class _Chunk:
    store: int
    start: int
    stop: int
    rows: tuple[int, ...]  # valid rows, relative to start

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def data_version(stores: Sequence[RowStore]) -> str:
    """A hash over the stores' fingerprints and valid masks: what the SAE was trained on."""
    h = hashlib.sha256()
    for store in stores:
        valid = store.valid()
        h.update(json.dumps([store.attrs.get("fingerprint"), store.n_rows]).encode())
        h.update(np.packbits(valid).tobytes())
    return h.hexdigest()[:16]


class TokenLoader:
    """Shuffled batches (B × d, float32) over the valid tokens of several row stores."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        batch_size: int,
        buffer_tokens: int,
        seed: int,
        array: str = "tokens",
    ) -> None:
        self.stores = [RowStore.open(p) for p in paths]
        if not self.stores:
            raise ValueError("no feature stores given to train on")
        self.array = array
        shapes = {tuple(s.array(array).shape[1:]) for s in self.stores}
        if len(shapes) != 1:
            raise ValueError(f"feature stores disagree on (tokens, d): {sorted(shapes)}")
        self.n_tokens_per_row, self.d = (int(v) for v in next(iter(shapes)))
        self.batch_size = batch_size
        self.buffer_tokens = max(buffer_tokens, batch_size)
        self.seed = seed
        self.chunks: list[_Chunk] = []
        for si, store in enumerate(self.stores):
            valid = store.valid()
            for a, b in store.iter_row_blocks():
                rows = tuple(int(i) for i in np.flatnonzero(valid[a:b]))
                if rows:
                    self.chunks.append(_Chunk(si, a, b, rows))
        self.n_tokens = sum(c.n_rows for c in self.chunks) * self.n_tokens_per_row
        if self.n_tokens == 0:
            raise ValueError("the feature stores hold no valid rows to train on")
        # position: the next batch comes from (epoch, window) after `batches_done` batches of it
        self.epoch = 0
        self.window = 0
        self.batches_done = 0
        self.carry_nd = np.zeros((0, self.d), dtype=np.float16)

    def version(self) -> str:
        return data_version(self.stores)

    def steps_for(self, epochs: int) -> int:
        return (self.n_tokens * epochs) // self.batch_size

    # -- windows ------------------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[_Chunk]]:
        rng = np.random.default_rng([self.seed, epoch, 0x5AE])
        order = rng.permutation(len(self.chunks))
        windows: list[list[_Chunk]] = []
        current: list[_Chunk] = []
        size = 0
        for i in order:
            chunk = self.chunks[int(i)]
            n = chunk.n_rows * self.n_tokens_per_row
            if current and size + n > self.buffer_tokens:
                windows.append(current)
                current, size = [], 0
            current.append(chunk)
            size += n
        if current:
            windows.append(current)
        return windows

    def _read_window(self, epoch: int, window: int, chunks: list[_Chunk]) -> np.ndarray:
        parts = []
        for ch in chunks:
            block = self.stores[ch.store].array(self.array)[ch.start : ch.stop]
            parts.append(np.asarray(block, dtype=np.float16)[list(ch.rows)].reshape(-1, self.d))
        tokens_nd = np.concatenate(parts, axis=0)
        rng = np.random.default_rng([self.seed, epoch, window, 0x70C])
        return tokens_nd[rng.permutation(tokens_nd.shape[0])]

    def __iter__(self) -> Iterator[Tensor]:
        """Batches from the current position on, forever (the trainer counts steps)."""
        B = self.batch_size
        while True:
            windows = self._windows(self.epoch)
            while self.window < len(windows):
                data = self._read_window(self.epoch, self.window, windows[self.window])
                data = np.concatenate([self.carry_nd, data], axis=0)
                n_full = data.shape[0] // B
                if n_full == 0:  # a window smaller than a batch carries over whole
                    self.carry_nd, self.window, self.batches_done = data, self.window + 1, 0
                    continue
                for b in range(self.batches_done, n_full):
                    batch = torch.from_numpy(data[b * B : (b + 1) * B].astype(np.float32))
                    # Advance first: a checkpoint taken after this batch resumes at the next one.
                    if b + 1 == n_full:
                        self.carry_nd = data[n_full * B :].copy()
                        self.window, self.batches_done = self.window + 1, 0
                    else:
                        self.batches_done = b + 1
                    yield batch
            self.epoch, self.window = self.epoch + 1, 0

    # -- exact resume -------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, int], np.ndarray]:
        return (
            {"epoch": self.epoch, "window": self.window, "batches_done": self.batches_done},
            self.carry_nd.copy(),
        )

    def load_state(self, position: dict[str, int], carry_nd: np.ndarray) -> None:
        self.epoch = int(position["epoch"])
        self.window = int(position["window"])
        self.batches_done = int(position["batches_done"])
        self.carry_nd = np.asarray(carry_nd, dtype=np.float16).reshape(-1, self.d)

    def sample(self, n_tokens: int, seed: int) -> Tensor:
        """Up to ``n_tokens`` tokens from random chunks (float32), for k-means and evaluation."""
        rng = np.random.default_rng([seed, 0xE7A1])
        out: list[np.ndarray] = []
        have = 0
        for i in rng.permutation(len(self.chunks)):
            if have >= n_tokens:
                break
            ch = self.chunks[int(i)]
            block = self.stores[ch.store].array(self.array)[ch.start : ch.stop]
            toks = np.asarray(block, dtype=np.float16)[list(ch.rows)].reshape(-1, self.d)
            out.append(toks[: n_tokens - have])
            have += out[-1].shape[0]
        return torch.from_numpy(np.concatenate(out, axis=0).astype(np.float32))
