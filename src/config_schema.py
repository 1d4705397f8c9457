"""Config schemas registered in Hydra's ConfigStore, plus a `_target_` signature check.

The dataclass schemas make the top level strict and typed: `python train.py sed=1` or `seed=abc`
fails at compose time naming the key. Group nodes (data, model, module, ...) are free-form, so
`check_targets` walks the composed config and compares every buildable node's keys with the
signature of its `_target_` -- `data.batch_siz=8` fails before anything runs, naming the key.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


@dataclass
class _Common:
    task_name: str = MISSING
    tags: list[str] = field(default_factory=lambda: ["dev"])
    seed: Optional[int] = None
    paths: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    launcher: Optional[dict[str, Any]] = None
    experiment_name: Optional[str] = None


@dataclass
class TrainSchema(_Common):
    data: Any = MISSING
    model: Any = None
    module: Any = MISSING
    trainer: Any = MISSING
    callbacks: Optional[dict[str, Any]] = None
    logger: Optional[dict[str, Any]] = None
    train: bool = True
    test: bool = True
    ckpt_path: Optional[str] = None
    optimized_metric: Optional[str] = None
    compile: bool = False
    export: Optional[dict[str, Any]] = None


@dataclass
class EvaluateSchema(_Common):
    data: Any = MISSING
    model: Any = None
    module: Any = None
    trainer: Any = None
    logger: Optional[dict[str, Any]] = None
    callbacks: Optional[dict[str, Any]] = None
    ckpt_path: Optional[str] = None
    splits: Optional[list[str]] = None
    batch_size: int = 256
    counterfactuals: list[str] = field(default_factory=list)
    evaluation: Optional[dict[str, Any]] = None
    optimized_metric: Optional[str] = None


@dataclass
class GenerateSchema:
    task_name: str = MISSING
    paths: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    optimized_metric: Optional[str] = None


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="evaluate_schema", node=EvaluateSchema)
    cs.store(name="generate_schema", node=GenerateSchema)


class ConfigKeyError(ValueError):
    pass


def check_targets(cfg: DictConfig, root: str = "") -> None:
    """Raise ConfigKeyError naming `path.key` for any key a `_target_` would not accept."""
    if isinstance(cfg, (DictConfig, ListConfig)) and (cfg._is_none() or cfg._is_missing()):
        return
    if isinstance(cfg, DictConfig):
        target = cfg.get("_target_") if "_target_" in cfg else None
        if isinstance(target, str):
            _check_node(cfg, target, root)
        for key in cfg.keys():
            if str(key).startswith("_"):
                continue
            child = cfg._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                check_targets(child, f"{root}.{key}" if root else str(key))
    elif isinstance(cfg, ListConfig):
        for i, child in enumerate(cfg._iter_ex(resolve=False)):
            if isinstance(child, (DictConfig, ListConfig)):
                check_targets(child, f"{root}[{i}]")


def _check_node(node: DictConfig, target: str, path: str) -> None:
    try:
        obj = get_object(target)  # also resolves nested attributes such as Class.from_pretrained
    except Exception as e:  # noqa: BLE001 - hydra wraps import errors in several types
        raise ConfigKeyError(f"{path or '<root>'}._target_={target!r} cannot be imported: {e}") from e
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = {p.name for p in params}
    for key in node.keys():
        if not str(key).startswith("_") and key not in accepted:
            hint = ", ".join(sorted(accepted))
            raise ConfigKeyError(f"unknown key '{path}.{key}' for {target} (accepted: {hint})")


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
