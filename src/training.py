"""The training task behind train.py: build data, backbone, module, trainer from config; fit; test;
export the classifier as safetensors with the config needed to rebuild it."""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from src.modules.backbones import data_config
from src.task import instantiate_callbacks, instantiate_loggers, log_hyperparameters

log = logging.getLogger(__name__)


def _accepted(target: Any, candidates: dict[str, Any]) -> dict[str, Any]:
    """The subset of `candidates` that `target`'s constructor accepts (modules differ in what they need)."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return candidates
    return {k: v for k, v in candidates.items() if k in params}


def build_components(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, Any]:
    datamodule = hydra.utils.instantiate(cfg.data)
    backbone = None
    if cfg.get("model") is not None:
        backbone = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes)
        datamodule.data_config = data_config(backbone)
    target = hydra.utils.get_class(cfg.module._target_)
    extra = _accepted(target, {
        "backbone": backbone,
        "num_classes": getattr(datamodule, "num_classes", None),
        "class_names": getattr(datamodule, "class_names", None),
        "test_split_names": getattr(datamodule, "test_split_names", ("test",)),
        "datamodule": datamodule,
    })
    # Config containers become plain Python so that checkpoints stay weights_only-loadable.
    extra = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in extra.items()}
    module = hydra.utils.instantiate(cfg.module, **extra)
    return datamodule, module, backbone


def run_training(cfg: DictConfig) -> tuple[dict, dict]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, module, backbone = build_components(cfg)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if loggers:
        log_hyperparameters(cfg, loggers, params_trainable=sum(p.numel() for p in module.parameters() if p.requires_grad))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best = _best_checkpoint(trainer)
    if best:
        # Test (and export) the best epoch, not the last one.
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        log.info("best checkpoint: %s", best)
    if backbone is not None and cfg.get("train", True):
        export_classifier(cfg, module, datamodule, Path(cfg.paths.output_dir) / "checkpoints" / "classifier.safetensors")
    test_metrics: dict[str, float] = {}
    if cfg.get("test", True):
        trainer.test(module, datamodule=datamodule)
        test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics = {**train_metrics, **test_metrics}
    if not trainer.fast_dev_run:
        out = Path(cfg.paths.output_dir) / "metrics.json"
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics, {"trainer": trainer, "module": module, "datamodule": datamodule}


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    cb = getattr(trainer, "checkpoint_callback", None)
    path = getattr(cb, "best_model_path", "") if cb else ""
    return path if path and Path(path).is_file() else None


def export_classifier(cfg: DictConfig, module: L.LightningModule, datamodule, path: Path) -> Path:
    """Write `backbone` weights + the model config and class names as safetensors metadata.

    `evaluate.py ckpt_path=<this file>` rebuilds the exact model from it, whatever `model=` says.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.backbone.state_dict().items()}
    metadata = {
        "format": "counterfactory.classifier/1",
        "model": json.dumps(OmegaConf.to_container(cfg.model, resolve=True)),
        "class_names": json.dumps(list(getattr(datamodule, "class_names", []) or [])),
        "num_classes": str(getattr(datamodule, "num_classes", "")),
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    log.info("exported classifier to %s", path)
    return path
