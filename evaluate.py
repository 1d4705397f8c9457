"""Stress-test a classifier on its test splits and counterfactual sets; write metrics and a report.

`python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/classifier.safetensors`
`python evaluate.py ckpt_path=... counterfactuals=[LANCE=/path/to/set,LANCE-R=/path/to/other]`
"""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.config_schema import register_schemas  # noqa: E402
from src.evaluation.stress_test import run_evaluation  # noqa: E402
from src.task import metric_value, task_wrapper  # noqa: E402

register_schemas()


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict, dict]:
    return run_evaluation(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = evaluate(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
