"""Rows of named arrays keyed by image sha256, one .npz file per model, written atomically.

Shared by the prediction cache (evaluation) and the backbone-feature cache (head-only repair).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ShaArrayCache:
    """`fields` maps each array's name to its dtype; every array has one row per cached sha."""

    def __init__(self, file: str | Path, fields: dict[str, type]) -> None:
        self.file = Path(file)
        self.fields = dict(fields)
        self.index: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {k: np.zeros((0, 0), dt) for k, dt in self.fields.items()}
        if self.file.is_file():
            with np.load(self.file) as z:
                self.index = {s: i for i, s in enumerate(z["sha256"].tolist())}
                self.arrays = {k: z[k] for k in self.fields}
        self._dirty = False

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, shas: list[str]) -> np.ndarray:
        """Row of each sha, -1 where missing."""
        return np.array([self.index.get(s, -1) for s in shas], dtype=np.int64)

    def add(self, shas: list[str], *arrays: np.ndarray) -> None:
        """Append the rows of unseen shas; `arrays` in the order of `fields`.

        Only the first occurrence of each sha is stored: a batch may hold the same image twice (an
        edit that left the pixels unchanged), and rows must stay aligned with the index.
        """
        new: dict[str, int] = {}
        for i, s in enumerate(shas):
            if s not in self.index and s not in new:
                new[s] = i
        if not new:
            return
        start = len(self.index)
        for j, s in enumerate(new):
            self.index[s] = start + j
        take = list(new.values())
        for (name, dtype), values in zip(self.fields.items(), arrays):
            rows = np.asarray(values)[take].astype(dtype)
            old = self.arrays[name]
            self.arrays[name] = rows if old.size == 0 else np.concatenate([old, rows])
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}.tmp")
        shas = np.array(sorted(self.index, key=self.index.get))
        with open(tmp, "wb") as fh:
            np.savez(fh, sha256=shas, **self.arrays)
        tmp.replace(self.file)
        self._dirty = False
