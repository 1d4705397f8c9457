"""Grad-CAM (Selvaraju et al. 2017) on a backbone's last conv map, through the timm contract.

`grad_cam` weights each filter of `forward_features(x)` by the spatial mean of the class score's
gradient, sums, keeps the positive part, upsamples to the input size and scales each map to [0, 1].
`save_gradcam_grid` draws images with their maps before and after debugging.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(backbone: nn.Module, images: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """B x H x W maps in [0, 1] for `classes` (default: the predicted class). The backbone stays in
    whatever mode it is in; call `.eval()` first for deterministic maps."""
    with torch.enable_grad():
        feats = backbone.forward_features(images).detach().requires_grad_(True)
        if feats.ndim != 4:
            raise ValueError(f"Grad-CAM needs a B x C x H x W conv map, got {tuple(feats.shape)}")
        logits = backbone.forward_head(feats)
        if classes is None:
            classes = logits.argmax(1)
        score = logits.gather(1, classes.view(-1, 1).long()).sum()
        (grads,) = torch.autograd.grad(score, feats)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * feats.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)
    return cam / peak[:, None, None]


def to_display(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised B x 3 x H x W tensors back to B x H x W x 3 floats in [0, 1]."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.detach().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def save_gradcam_grid(images: np.ndarray, maps: dict[str, torch.Tensor], path: str | Path,
                      titles: Sequence[str] | None = None) -> Path:
    """One row per image: the image, then each named map (e.g. 'base', 'debugged') overlaid on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.8 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(titles[i] if titles else "", fontsize=7)
        for j, (name, cams) in enumerate(maps.items(), start=1):
            axes[i, j].imshow(images[i])
            axes[i, j].imshow(cams[i].cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
