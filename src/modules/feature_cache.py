"""Backbone features computed once per image and transform, cached on disk.

Head-only repair (WiSE-FT, DFR, head fine-tuning) trains a linear layer on a frozen body, so running
the body every epoch is wasted work. `FeatureExtractor` runs the body once per image and keeps the
pre-logits features in `<cache_dir>/features/<body hash>.npz`, keyed by image sha256:

- the body hash covers every weight and buffer of the backbone *except the classifier head* (the head
  is what is being trained; its changes must not invalidate the cache) plus the eval transform, so a
  different model or preprocessing gets a different file;
- the image key is the sha256 of the uint8 pixels (`src.evaluation.sets.sha256_of_array`), so an
  edited image is a miss.

Random-augmentation training cannot use it (every epoch sees new pixels): those runs compute live.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from src.datamodules.transforms import build_transforms
from src.evaluation.classifier import model_fingerprint
from src.evaluation.sets import sha256_of_array
from src.sha_array_cache import ShaArrayCache

log = logging.getLogger(__name__)


def body_fingerprint(backbone: nn.Module, data_config: dict) -> str:
    """Hash of the backbone without its classifier head, plus the eval preprocessing."""
    body = copy.deepcopy(backbone)
    body.reset_classifier(0)  # timm contract: the head becomes Identity, the body is untouched
    return model_fingerprint(body, {"data_config": data_config, "transform": "eval", "output": "pre_logits"})


def image_shas(images: np.ndarray) -> list[str]:
    return [sha256_of_array(im) for im in images]


def pre_logits(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of `backbone.get_classifier()`."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True).flatten(1)


class FeatureCache(ShaArrayCache):
    """sha256 -> float32 feature vector, one .npz per body hash (written atomically)."""

    def __init__(self, folder: str | Path, key: str) -> None:
        super().__init__(Path(folder) / "features" / f"{key}.npz", {"features": np.float32})

    @property
    def features(self) -> np.ndarray:
        return self.arrays["features"]

    lookup = ShaArrayCache.rows


class FeatureExtractor:
    """Pre-logits features of uint8 N x H x W x 3 images, through the cache when `cache_dir` is set.

    `computed` / `cached` count images that went through the body / came from the cache.
    """

    def __init__(self, backbone: nn.Module, data_config: dict, cache_dir: str | Path | None = None,
                 batch_size: int = 256) -> None:
        self.backbone = backbone
        self.transform = build_transforms(data_config, "none")
        self.batch_size = batch_size
        self.key = body_fingerprint(backbone, data_config) if cache_dir else None
        self.cache = FeatureCache(cache_dir, self.key) if cache_dir else None
        self.computed = 0
        self.cached = 0

    @torch.no_grad()
    def _run(self, images: np.ndarray) -> np.ndarray:
        device = next(self.backbone.parameters()).device
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            x = self.transform(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
            return pre_logits(self.backbone, x.to(device)).float().cpu().numpy()
        finally:
            self.backbone.train(was_training)

    def __call__(self, images: np.ndarray, shas: list[str] | None = None, desc: str = "features") -> torch.Tensor:
        n = len(images)
        if self.cache is None:
            todo, rows = np.arange(n), None
        else:
            shas = shas if shas is not None else image_shas(images)
            rows = self.cache.lookup(shas)
            todo = np.flatnonzero(rows < 0)
        self.cached += n - len(todo)
        new = None
        if len(todo):
            chunks = [self._run(images[todo[s:s + self.batch_size]])
                      for s in tqdm(range(0, len(todo), self.batch_size), desc=desc, leave=False,
                                    disable=len(todo) <= 4 * self.batch_size)]
            new = np.concatenate(chunks)
            self.computed += len(todo)
            if self.cache is not None:
                self.cache.add([shas[i] for i in todo], new)
                self.cache.save()
        if self.cache is None:
            return torch.from_numpy(new if new is not None else np.zeros((0, 0), np.float32))
        rows = self.cache.lookup(shas)
        return torch.from_numpy(self.cache.features[rows].copy())
