"""Rebuild the classifier under test: from an exported `classifier.safetensors` (its metadata holds
the model config and class names), from a Lightning `.ckpt` plus the `model=` config, or a timm model
by name with hub weights (`model=resnet50 model.pretrained=true`)."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.modules.backbones import data_config

log = logging.getLogger(__name__)


def _omegaconf_globals() -> list:
    import collections
    import typing

    from omegaconf import ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return [ListConfig, DictConfig, ContainerMetadata, Metadata, AnyNode, StringNode, IntegerNode, FloatNode,
            BooleanNode, typing.Any, list, dict, int, collections.defaultdict]


_OMEGACONF_GLOBALS = _omegaconf_globals()


@dataclass
class LoadedClassifier:
    model: nn.Module
    data_config: dict
    class_names: list[str]
    description: str  # where it came from, for the report
    fingerprint: str  # model hash: weights + preprocessing (keys the prediction cache)


def model_fingerprint(model: nn.Module, preprocessing: dict) -> str:
    """sha256 of every weight and buffer plus the preprocessing that feeds the model."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(preprocessing, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def load_classifier(ckpt_path: str | None, model_cfg: DictConfig | None, num_classes: int | None,
                    class_names: list[str] | None = None) -> LoadedClassifier:
    if ckpt_path:
        path = Path(ckpt_path)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist")
        if path.suffix == ".safetensors":
            return _from_safetensors(path, class_names)
        return _from_lightning(path, model_cfg, num_classes, class_names)
    if model_cfg is None:
        raise ValueError("nothing to evaluate: set ckpt_path=/path/to/classifier.safetensors (or a .ckpt with "
                         "model=<backbone>), or model=<timm name> model.pretrained=true")
    model = hydra.utils.instantiate(model_cfg, **({"num_classes": num_classes} if "num_classes" not in model_cfg else {}))
    return _finish(model, class_names, f"model config {model_cfg.get('name', '?')} "
                                       f"(pretrained={model_cfg.get('pretrained', False)})")


def _from_safetensors(path: Path, class_names: list[str] | None) -> LoadedClassifier:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "model" not in meta:
        raise ValueError(f"ckpt_path={path} has no 'model' metadata; export it with src.training.export_classifier "
                         f"or pass a Lightning .ckpt together with model=<backbone>")
    model_node = json.loads(meta["model"])
    # Weights come from the file: never download, never load a nested checkpoint.
    model_node.update({"pretrained": False, "checkpoint_path": None}) if "pretrained" in model_node else None
    names = json.loads(meta.get("class_names", "[]")) or class_names
    num_classes = int(meta.get("num_classes") or len(names or []))
    model = hydra.utils.instantiate(OmegaConf.create(model_node), num_classes=num_classes)
    state = load_file(str(path))
    model.load_state_dict(state, strict=True)
    return _finish(model, names, f"{path} ({model_node.get('name', model_node.get('_target_'))})")


def _from_lightning(path: Path, model_cfg: DictConfig | None, num_classes: int | None,
                    class_names: list[str] | None) -> LoadedClassifier:
    if model_cfg is None:
        raise ValueError(f"ckpt_path={path} is a Lightning checkpoint: also set model=<the backbone it was trained with>")
    try:
        # Lightning stores hyper-parameters that may be omegaconf containers: allow exactly those
        # types, still without unpickling arbitrary objects.
        with torch.serialization.safe_globals(_OMEGACONF_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - rethrown naming the key
        raise RuntimeError(f"ckpt_path={path} could not be read as a weights-only checkpoint: {e}") from e
    state = ckpt.get("state_dict", ckpt)
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")} or state
    node = OmegaConf.to_container(model_cfg, resolve=True)
    node.update({"pretrained": False, "checkpoint_path": None}) if "pretrained" in node else None
    model = hydra.utils.instantiate(OmegaConf.create(node), num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    names = class_names or (ckpt.get("hyper_parameters", {}) or {}).get("class_names")
    return _finish(model, names, f"{path} ({node.get('name', node.get('_target_'))})")


def _finish(model: nn.Module, class_names: list[str] | None, description: str) -> LoadedClassifier:
    model.eval()
    dc = data_config(model)
    n = _num_outputs(model)
    names = list(class_names) if class_names and len(class_names) == n else [str(i) for i in range(n)]
    return LoadedClassifier(model, dc, names, description, model_fingerprint(model, dc))


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if n:
        return int(n)
    head = model.get_classifier()
    return int(getattr(head, "out_features"))
