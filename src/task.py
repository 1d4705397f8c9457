"""What every entry point shares: the task wrapper, building callbacks/loggers, seeding, the metric
a sweeper optimises."""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from src.config_schema import check_targets

log = logging.getLogger(__name__)


def task_wrapper(task: Callable[[DictConfig], tuple[dict, dict]]) -> Callable[[DictConfig], tuple[dict, dict]]:
    """Validate the config, run the task, log any exception with the run folder, always close loggers.

    Closing W&B in `finally` keeps the runs of a multirun apart even when one of them fails.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> tuple[dict, dict]:
        try:
            check_targets(cfg)
            return task(cfg)
        except Exception:
            out = cfg.get("paths", {}).get("output_dir", "?") if OmegaConf.is_dict(cfg) else "?"
            log.exception("task %s failed (run folder: %s)", cfg.get("task_name"), out)
            raise
        finally:
            _close_wandb()

    return wrapped


def _close_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover
        pass


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for _, c in cfg.items() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for _, c in cfg.items() if c is not None and "_target_" in c]


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a sweeper optimises; a clear error when the task did not produce it."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}")
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)


def log_hyperparameters(cfg: DictConfig, loggers: list[Logger], **counts: Any) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    params.update(counts)  # type: ignore[union-attr]
    for lg in loggers:
        lg.log_hyperparams(params)  # type: ignore[arg-type]
