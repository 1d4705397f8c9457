"""Batched inference with the backbone's own preprocessing, and a prediction cache on disk.

The cache is keyed by model hash (weights + preprocessing) and image sha256, so re-evaluating, or
adding a set, runs the model only on images it has not seen. One file per model:
`<cache_dir>/predictions/<model hash>.npz` holding sha256s, probabilities and pre-logits features
(float16; they feed the Fréchet distance with the classifier's own features).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from src.datamodules.transforms import build_transforms
from src.evaluation.classifier import LoadedClassifier
from src.evaluation.sets import ImageSet
from src.sha_array_cache import ShaArrayCache

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    probs: np.ndarray  # N x C float32
    features: np.ndarray  # N x D float16 (pre-logits)


class PredictionCache(ShaArrayCache):
    """sha256 -> (class probabilities, pre-logits features) of one model."""

    def __init__(self, folder: str | Path, model_key: str) -> None:
        super().__init__(Path(folder) / "predictions" / f"{model_key}.npz",
                         {"probs": np.float32, "features": np.float16})

    def get(self, shas: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(found mask, probs of found rows, features of found rows)."""
        rows = self.rows(shas)
        found = rows >= 0
        if not found.any():
            return found, None, None
        return found, self.arrays["probs"][rows[found]], self.arrays["features"][rows[found]]


class Predictor:
    """Runs a classifier over `ImageSet`s, batched, through the prediction cache."""

    def __init__(self, classifier: LoadedClassifier, batch_size: int = 256, device: str = "auto",
                 cache_dir: str | Path | None = None) -> None:
        self.classifier = classifier
        self.batch_size = batch_size
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.model = classifier.model.to(self.device).eval()
        # The same transform the DataModule uses, applied to whole uint8 batches at once.
        self.transform = build_transforms(classifier.data_config, "none")
        self.cache = PredictionCache(cache_dir, classifier.fingerprint) if cache_dir else None
        self.computed = 0  # images that went through the model (not from the cache)
        self.cached = 0

    @torch.inference_mode()
    def _run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        x = self.transform(x).to(self.device)
        feats = self.model.forward_features(x)
        pre = self.model.forward_head(feats, pre_logits=True)
        logits = self.model.forward_head(feats)
        return torch.softmax(logits.float(), dim=1).cpu().numpy(), pre.float().flatten(1).cpu().numpy()

    def predict(self, image_set: ImageSet, desc: str | None = None) -> Predictions:
        shas = image_set.records["sha256"].astype(str).tolist()
        n = len(shas)
        found, cprobs, cfeats = self.cache.get(shas) if self.cache else (np.zeros(n, bool), None, None)
        todo = np.flatnonzero(~found)
        self.cached += int(found.sum())
        probs = feats = None
        if len(todo):
            out_p, out_f = [], []
            for start in tqdm(range(0, len(todo), self.batch_size), desc=desc or f"predict {image_set.name}",
                              leave=False, disable=len(todo) <= self.batch_size):
                idx = todo[start:start + self.batch_size]
                p, f = self._run(image_set.load(idx))
                out_p.append(p)
                out_f.append(f)
            new_p, new_f = np.concatenate(out_p), np.concatenate(out_f)
            self.computed += len(todo)
            if self.cache is not None:
                self.cache.add([shas[i] for i in todo], new_p, new_f)
            probs = np.zeros((n, new_p.shape[1]), np.float32)
            feats = np.zeros((n, new_f.shape[1]), np.float16)
            probs[todo], feats[todo] = new_p, new_f
        if found.any():
            if probs is None:
                probs = np.zeros((n, cprobs.shape[1]), np.float32)
                feats = np.zeros((n, cfeats.shape[1]), np.float16)
            probs[found], feats[found] = cprobs, cfeats
        if probs is None:  # empty set
            c = len(self.classifier.class_names)
            return Predictions(np.zeros((0, c), np.float32), np.zeros((0, 0), np.float16))
        return Predictions(probs, feats.astype(np.float16))

    def save_cache(self) -> None:
        if self.cache is not None:
            self.cache.save()
