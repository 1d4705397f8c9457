"""Train a LightningModule chosen by config.  `python train.py experiment=baseline model=resnet18`"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.config_schema import register_schemas  # noqa: E402
from src.training import run_training  # noqa: E402
from src.task import metric_value, task_wrapper  # noqa: E402

register_schemas()


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict, dict]:
    return run_training(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
