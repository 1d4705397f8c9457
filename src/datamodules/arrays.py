"""A dataset over images held in memory as a uint8 array (world splits, Fashion-MNIST)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class ArrayImageDataset(Dataset):
    """Yields `{"image": tensor, "label": int, "index": int}` from N x H x W x C uint8 images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"images must be N x H x W x C uint8, got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N C H W, no copy
        self.labels = torch.tensor(np.array(labels), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        if x.shape[0] == 1:  # grayscale arrays go through RGB backbones
            x = x.expand(3, -1, -1)
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x, "label": self.labels[i], "index": i}
