"""Training runs end to end on a tiny world: fast_dev_run per image experiment, a real short run with
checkpoint export, a multirun through submitit_local."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from src.training import run_training
from tests.conftest import ROOT, TINY_WORLD, compose_config

IMAGE_EXPERIMENTS = ["baseline", "standard_aug", "oracle"]


@pytest.mark.parametrize("experiment", IMAGE_EXPERIMENTS)
def test_fast_dev_run(experiment, tmp_path, world_cache):
    cfg = compose_config("train", [f"experiment={experiment}", "debug=fdr", *TINY_WORLD], tmp_path, world_cache)
    metrics, objects = run_training(cfg)
    assert 0.0 <= metrics["test_iid/acc@1"] <= 1.0
    assert {"test_iid/acc@1", "test_ood/acc@1", "test_counterfactual/acc@1"} <= set(metrics)


def test_short_training_learns_and_exports(tmp_path, world_cache):
    overrides = ["experiment=baseline", "logger=csv_only", "trainer.max_epochs=3", "data.n_train=1024",
                 "data.n_val=128", "data.n_test=128", "data.batch_size=64", "callbacks.progress_bar=null"]
    cfg = compose_config("train", overrides, tmp_path, world_cache)
    metrics, objects = run_training(cfg)
    # 8 balanced classes: chance is 0.125; the planted background cue alone gives ~0.9 on iid.
    assert metrics["test_iid/acc@1"] > 0.4
    exported = tmp_path / "checkpoints" / "classifier.safetensors"
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["model"])["name"] == "small_cnn"
        assert json.loads(meta["class_names"])[0] == "circle"
        fc = f.get_tensor("fc.weight")
    # The exported weights are the module's (best-epoch) weights.
    torch.testing.assert_close(fc, objects["module"].backbone.fc.weight.detach())
    assert (tmp_path / "metrics.json").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_multirun_through_submitit_local(tmp_path, world_cache):
    env = {**os.environ, "WANDB_MODE": "disabled", "PROJECT_ROOT": str(ROOT)}
    cmd = [sys.executable, "train.py", "-m", "launcher=submitit_local", "debug=fdr", *TINY_WORLD,
           f"paths.log_dir={tmp_path}", f"paths.cache_dir={world_cache}", "model=small_cnn", "seed=1,2"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = sorted((tmp_path / "debug" / "multiruns").glob("*/[0-9]"))
    assert len(runs) == 2
    for run in runs:
        assert (run / ".hydra" / "overrides.yaml").is_file()
    logs = sorted((tmp_path / "debug" / "multiruns").glob("*/.submitit/*/*_result.pkl"))
    assert len(logs) == 2, "each job ran through submitit"


def test_multirun_sweeps_backbones(tmp_path, world_cache):
    """`python train.py -m model=a,b`: each job builds its own backbone and reports its metric."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PROJECT_ROOT": str(ROOT)}
    cmd = [sys.executable, "train.py", "-m", "debug=fdr", *TINY_WORLD, f"paths.log_dir={tmp_path}",
           f"paths.cache_dir={world_cache}", "model=small_cnn,resnet18", "model.input_size=32", "seed=1"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    runs = sorted((tmp_path / "debug" / "multiruns").glob("*/[0-9]"))
    models = [(r / ".hydra" / "overrides.yaml").read_text() for r in runs]
    assert len(runs) == 2 and "model=small_cnn" in models[0] and "model=resnet18" in models[1]
