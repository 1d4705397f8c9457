"""Generate a counterfactual set (LANCE, Algorithm 1).  `python generate.py` writes one for
Counterfactory World with the world mini models (`generator=oracle`: the exact re-renders); see
conf/generate.yaml for the full LANCE configuration (BLIP-2, LLM perturber, Stable Diffusion +
null-text inversion + prompt-to-prompt, CLIP)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from src.config_schema import register_schemas  # noqa: E402
from src.generation.task import run_generation  # noqa: E402
from src.task import metric_value, task_wrapper  # noqa: E402

register_schemas()


@task_wrapper
def generate(cfg: DictConfig) -> tuple[dict, dict]:
    return run_generation(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = generate(cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
