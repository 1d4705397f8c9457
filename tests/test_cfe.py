"""The counterfactual-filter explainer: shapes, sparsity, classifier loading, the experiment end to end."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from src.modules.backbones import create_backbone
from src.modules.cfe import CFEExplainerModule, FilterMaskExplainer, load_classifier_weights
from src.training import run_training
from tests.conftest import TINY_WORLD, compose_config

TINY_CNN = ["model.widths=[8,16,32]"]


def _classifier(tmp_path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    bb = create_backbone("small_cnn", 8, input_size=32, widths=[8, 16, 32])
    path = tmp_path / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in bb.state_dict().items()}, str(path))
    return path


@pytest.fixture
def one_thread():
    """Shared CPUs: one intra-op thread is many times faster than oversubscribed threads. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _optimizer(params):
    return torch.optim.Adam(params, lr=0.02)


def test_explainer_shapes_and_ranges():
    ex = FilterMaskExplainer(num_filters=32, num_classes=8, hidden=16)
    feats = torch.rand(5, 32, 4, 4)
    classes = torch.tensor([0, 1, 2, 3, 7])
    m, s = ex.mc_mask(feats, classes), ex.mi_boost(feats, classes)
    assert m.shape == s.shape == (5, 32)
    assert ((m > 0) & (m < 1)).all() and (s >= 0).all()
    # Initialised with every filter on and nothing boosted.
    assert m.min() > 0.85 and s.max() < 0.1


def test_load_classifier_weights_round_trip_and_errors(tmp_path):
    path = _classifier(tmp_path)
    bb = load_classifier_weights(create_backbone("small_cnn", 8, widths=[8, 16, 32]), path)
    ref = create_backbone("small_cnn", 8, widths=[8, 16, 32])
    from safetensors.torch import load_file

    ref.load_state_dict(load_file(str(path)))
    assert torch.equal(bb.fc.weight, ref.fc.weight)
    with pytest.raises(RuntimeError, match="module.classifier_path"):
        load_classifier_weights(create_backbone("small_cnn", 8, widths=[8, 16, 64]), path)
    with pytest.raises(FileNotFoundError, match="module.classifier_path"):
        load_classifier_weights(create_backbone("small_cnn", 8), tmp_path / "nope.safetensors")


def test_sparsity_loss_prunes_mask_while_keeping_predictions(tmp_path, one_thread):
    torch.manual_seed(0)
    module = CFEExplainerModule(create_backbone("small_cnn", 8, widths=[8, 16, 32]), 8, _optimizer,
                                classifier_path=str(_classifier(tmp_path)), hidden=32, sparsity_weight=2.0)
    x = torch.randn(64, 3, 32, 32)
    feats, logits = module.classify(x)
    preds = logits.argmax(1)
    opt = module.configure_optimizers()
    before = module.explainer.mc_mask(feats, preds).mean().item()
    for _ in range(100):
        out = module.losses(feats, preds)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    # The frozen classifier got no gradient; the explainer learned a sparse MC mask.
    assert all(p.grad is None for p in module.backbone.parameters())
    out = module.losses(feats, preds)
    hard = module.hard_metrics(feats, preds, out)
    assert out["mc_mask"].mean().item() < 0.5 * before
    assert hard["mc_count"] < 32
    assert hard["mc_keep"] > 0.5
    assert hard["mi_flip"] > 0.2 and hard["mi_count"] < 32  # 0 before training


def test_cfe_experiment_fast_dev_run(tmp_path, world_cache, one_thread):
    cfg = compose_config("train", ["experiment=cfe", "debug=fdr", *TINY_WORLD, *TINY_CNN,
                                   f"module.classifier_path={_classifier(tmp_path)}"], tmp_path / "run", world_cache)
    metrics, objects = run_training(cfg)
    module = objects["module"]
    assert set(module.reports) == {"iid", "ood", "counterfactual"}
    report = module.reports["iid"]
    assert 0.0 <= report["acc@1"] <= 1.0 and len(report["detection"]) == 3
    assert "test_ood/drop_mc" in metrics
