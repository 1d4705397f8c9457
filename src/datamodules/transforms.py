"""Transforms built from a backbone's own data config (size, mean, std), optionally with augmentation.

Inputs may be PIL images or uint8 CHW tensors; outputs are normalised float tensors.
"""
from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import InterpolationMode, v2

AUGMENTATIONS = ("none", "standard", "flip")


def _interp(name: str) -> InterpolationMode:
    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BILINEAR)


def build_transforms(data_config: dict, augment: str = "none") -> Callable:
    """Eval transform (`augment='none'`) or a training transform.

    `standard` is Li et al.'s standard augmentation: random horizontal and vertical flips, rotation,
    random resized crop, brightness/contrast/saturation jitter and random erasing (masking).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"data.augment={augment!r}; expected one of {AUGMENTATIONS}")
    _, h, w = data_config["input_size"]
    interp = _interp(data_config.get("interpolation", "bilinear"))
    crop_pct = float(data_config.get("crop_pct", 1.0) or 1.0)
    head = [v2.ToImage()]
    if augment == "standard":
        body = [
            v2.RandomResizedCrop((h, w), scale=(0.6, 1.0), interpolation=interp, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        ]
    else:
        resize = (int(round(h / crop_pct)), int(round(w / crop_pct)))
        body = [v2.Resize(resize, interpolation=interp, antialias=True), v2.CenterCrop((h, w))]
        if augment == "flip":
            body.append(v2.RandomHorizontalFlip())
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(data_config["mean"], data_config["std"])]
    if augment == "standard":
        tail.append(v2.RandomErasing(p=0.25, scale=(0.02, 0.15)))
    return v2.Compose(head + body + tail)
