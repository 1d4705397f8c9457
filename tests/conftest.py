"""Shared fixtures: compose configs the way the entry points do, in a temporary output folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from src.config_schema import register_schemas  # noqa: E402

register_schemas()

# A world small enough to render and train on in seconds.
TINY_WORLD = ["data.n_train=256", "data.n_val=64", "data.n_test=64", "data.batch_size=32"]


def compose_config(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path | None = None) -> DictConfig:
    """Compose like @hydra.main does, with the runtime output folder set to `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir / "logs")
        if cache_dir is not None:
            cfg.paths.cache_dir = str(cache_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    """One rendered-world cache shared by the whole session."""
    return tmp_path_factory.mktemp("world-cache")
