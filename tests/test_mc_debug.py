"""The MC-filter debugging loss against hand-computed values, Grad-CAM, and the experiment end to end."""
import math

import pytest
import torch
from torch import nn

from src.evaluation.filter_debugging import GlobalMCFilters, save_global_filters
from src.modules.backbones import create_backbone
from src.modules.gradcam import grad_cam
from src.modules.mc_debug import MCDebugModule, mc_loss_terms, thresholded_relu
from src.training import run_training
from tests.conftest import TINY_WORLD, compose_config
from tests.test_cfe import TINY_CNN, _classifier, one_thread  # noqa: F401 - fixture


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_thresholded_relu_hard_and_relaxed():
    u = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert torch.equal(thresholded_relu(u, 0.5, temperature=0), torch.tensor([0.0, 0.0, 0.51, 0.9]))
    soft = thresholded_relu(u, 0.5, temperature=0.02)
    assert abs(soft[0].item()) < 1e-6 and abs(soft[3].item() - 0.9) < 1e-6
    assert math.isclose(soft[1].item(), 0.25, rel_tol=1e-6)  # u * sigmoid(0) at the threshold
    # The relaxation passes a gradient just below the threshold, the hard version does not.
    v = torch.tensor([0.49], requires_grad=True)
    thresholded_relu(v, 0.5, 0.02).sum().backward()
    assert v.grad.item() > 0
    w = torch.tensor([0.49], requires_grad=True)
    thresholded_relu(w, 0.5, 0).sum().backward()
    assert w.grad.item() == 0


def test_loss_terms_by_hand():
    g = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])
    mc = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    l_mc, l_nonmc = mc_loss_terms(g, mc, threshold=0.5, temperature=0)
    # sigmoid(0) = 0.5 is not above 0.5 -> 0; the rest pass.
    exp_mc = (_sig(1.0) + _sig(1.0)) / 2
    exp_nonmc = (_sig(2.0) + _sig(3.0)) / 2
    assert math.isclose(l_mc.item(), exp_mc, rel_tol=1e-6)
    assert math.isclose(l_nonmc.item(), exp_nonmc, rel_tol=1e-6)


def _filters_file(tmp_path, num_classes=8, num_filters=32):
    acc = GlobalMCFilters(num_classes, num_filters, 0.9)
    mask = torch.zeros(num_classes, num_filters)
    for c in range(num_classes):
        mask[c, c * 4:(c + 1) * 4] = 1
    cls = torch.arange(num_classes)
    acc.update(mask, torch.ones(num_classes, num_filters), cls, cls, torch.ones(num_classes))
    path = tmp_path / "global_mc_filters.safetensors"
    save_global_filters(acc, path)
    return path


def test_training_step_adds_the_weighted_terms(tmp_path, one_thread):
    torch.manual_seed(0)
    opt = lambda params: torch.optim.SGD(params, lr=0.0)  # noqa: E731
    kwargs = dict(classifier_path=str(_classifier(tmp_path)), global_filters_path=str(_filters_file(tmp_path)),
                  temperature=0.0)
    debug = MCDebugModule(create_backbone("small_cnn", 8, widths=[8, 16, 32]), 8, opt, lambda_mc=0.5, lambda_nonmc=0.25, **kwargs)
    control = MCDebugModule(create_backbone("small_cnn", 8, widths=[8, 16, 32]), 8, opt, lambda_mc=0, lambda_nonmc=0, **kwargs)
    debug.eval(), control.eval()  # no dropout: both see the same logits
    batch = {"image": torch.randn(6, 3, 32, 32), "label": torch.tensor([0, 1, 2, 3, 4, 5]), "index": torch.arange(6)}
    debug.log = debug.log_dict = control.log = control.log_dict = lambda *a, **k: None
    ce = control.training_step(batch, 0)
    feats = debug.backbone.forward_features(batch["image"])
    l_mc, l_nonmc = mc_loss_terms(feats.mean((2, 3)), debug.global_mc[batch["label"]], 0.5, 0.0)
    assert debug.global_mc.sum(1).tolist() == [4.0] * 8
    assert torch.allclose(debug.training_step(batch, 0), ce - 0.5 * l_mc + 0.25 * l_nonmc, atol=1e-6)


def test_lambdas_need_global_filters(tmp_path):
    with pytest.raises(ValueError, match="module.global_filters_path"):
        MCDebugModule(create_backbone("small_cnn", 8, widths=[8, 16, 32]), 8, torch.optim.Adam,
                      classifier_path=str(_classifier(tmp_path)), lambda_mc=0.1)


class _Planted(nn.Module):
    """forward_features is the input; the head only reads channel 0."""

    def forward_features(self, x):
        return x

    def forward_head(self, f, pre_logits=False):
        g = f.mean((2, 3))
        return torch.stack([g[:, 0], -g[:, 0]], 1)


def test_grad_cam_follows_the_used_channel():
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 2:4, 5:7] = 1.0  # the evidence the head uses
    x[0, 1, 6:8, 0:2] = 5.0  # a strong channel the head ignores
    cam = grad_cam(_Planted(), x, torch.tensor([0]))
    assert cam.shape == (1, 8, 8) and cam.max() == 1.0
    assert torch.equal(cam[0] > 0.5, x[0, 0] > 0.5)


def test_mc_debug_experiment_fast_dev_run(tmp_path, world_cache, one_thread):
    cfg = compose_config("train", ["experiment=mc_debug", "debug=fdr", *TINY_WORLD, *TINY_CNN,
                                   f"module.classifier_path={_classifier(tmp_path)}",
                                   f"module.global_filters_path={_filters_file(tmp_path)}"], tmp_path / "run", world_cache)
    metrics, _ = run_training(cfg)
    assert "test_ood/acc@1" in metrics and "train/l_mc" in metrics
