"""Realism of a generated set: Fréchet distance between image features of generated and original
images, with a configurable feature extractor (`evaluation.image_features`):

- `ClassifierFeatures` (offline default): the evaluated classifier's own pre-logits features, which
  the prediction cache already holds -- free, no download, but not comparable across classifiers;
- `InceptionFeatures`: torchmetrics' FID InceptionV3 (the standard FID; needs torch-fidelity and
  its weights, fails fast offline naming the key);
- `OpenClipImageFeatures`: CLIP image features of an open_clip model (weights by path or hub tag).
Each extractor has `name` and `features(image_set, predictions) -> N x D`.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) of two feature sets (rows are samples)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as in the reference FID code
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real
    return float(max(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


class ClassifierFeatures:
    name = "classifier pre-logits features (offline default; not comparable across classifiers)"

    def features(self, image_set, predictions) -> np.ndarray:
        return np.asarray(predictions.features, np.float32)


class _BatchedImageFeatures:
    batch_size = 64

    def _embed(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.inference_mode()
    def features(self, image_set, predictions) -> np.ndarray:
        out = []
        for start in range(0, len(image_set), self.batch_size):
            idx = np.arange(start, min(start + self.batch_size, len(image_set)))
            x = torch.from_numpy(image_set.load(idx)).permute(0, 3, 1, 2).contiguous()
            out.append(self._embed(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


class InceptionFeatures(_BatchedImageFeatures):
    name = "InceptionV3 pool features (torchmetrics FID)"

    def __init__(self, feature: int = 2048) -> None:
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)]).eval()
        except Exception as e:  # noqa: BLE001 - missing torch-fidelity or offline weights
            raise RuntimeError(
                f"InceptionV3 FID features are unavailable ({type(e).__name__}: {e}). Install torch-fidelity with "
                f"network access once, or use evaluation.image_features._target_=src.evaluation.fid.ClassifierFeatures"
            ) from e

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        images = torch.nn.functional.interpolate(images.float(), size=(299, 299), mode="bilinear").to(torch.uint8)
        return self.model(images)


class OpenClipImageFeatures(_BatchedImageFeatures):
    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None, checkpoint_path: str | None = None) -> None:
        import open_clip

        from src.hub import require_hub

        if checkpoint_path is None and pretrained:
            require_hub(f"open_clip {model_name}/{pretrained}", key="evaluation.image_features.checkpoint_path")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=checkpoint_path or pretrained)
        self.model.eval()
        size = self.model.visual.image_size
        self.size = size if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
        self.name = f"open_clip {model_name} image features ({checkpoint_path or pretrained or 'random weights'})"

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.float() / 255, size=tuple(self.size), mode="bicubic").clamp(0, 1)
        return self.model.encode_image((x - self.mean) / self.std)
