"""Every config composes; typos fail at compose time naming the key."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError as OmegaKeyError, ValidationError

from src.config_schema import ConfigKeyError, check_targets
from tests.conftest import ROOT, compose_config

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_targets_check(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    check_targets(cfg)
    assert cfg.module._target_


@pytest.mark.parametrize("model", MODELS)
def test_model_group_selects_the_backbone(model, tmp_path):
    cfg = compose_config("train", [f"model={model}"], tmp_path)
    assert cfg.model.name == model
    check_targets(cfg)


def test_unknown_top_level_key_fails_naming_it(tmp_path):
    with pytest.raises(ConfigCompositionException, match="sed"):
        compose_config("train", ["sed=3"], tmp_path)


def test_wrong_type_fails_naming_the_key(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError), match="seed"):
        compose_config("train", ["seed=abc"], tmp_path)


def test_unknown_nested_key_fails_before_running(tmp_path):
    cfg = compose_config("train", ["+data.batch_siz=8"], tmp_path)
    with pytest.raises(ConfigKeyError, match=r"data\.batch_siz"):
        check_targets(cfg)


def test_bad_target_fails_naming_the_node(tmp_path):
    cfg = compose_config("train", ["module._target_=src.modules.classifier.Nope"], tmp_path)
    with pytest.raises(ConfigKeyError, match="module._target_"):
        check_targets(cfg)


def test_wandb_is_offline_by_default(tmp_path):
    cfg = compose_config("train", [], tmp_path)
    assert cfg.logger.wandb.offline is True
    assert "csv" in cfg.logger


def test_slurm_launcher_exposes_cluster_settings(tmp_path):
    cfg = compose_config("train", ["launcher=slurm", "launcher.partition=gpu", "trainer=ddp"], tmp_path)
    assert cfg.launcher.partition == "gpu" and cfg.launcher.array_parallelism == 16
    assert cfg.trainer.strategy == "ddp"


def test_slurm_launcher_config_reaches_hydra():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["launcher=slurm", "launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.array_parallelism == 16 and launcher.timeout_min == 240


def test_classmethod_targets_are_checked(tmp_path):
    """`_target_: Class.from_pretrained` (the real Stable Diffusion config) passes the key check."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=["~generator", "generation/diffusion=sd14", "generation/editor=p2p",
                                             "generation/inverter=null_text", "generation/consistency=clip"])
    check_targets(cfg)
