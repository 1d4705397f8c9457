"""The backbone-feature cache: features equal the live ones, a second pass runs nothing, and the cache
misses when the model body, the preprocessing or the image changes (but not when only the head does)."""
import numpy as np
import torch

from src.modules.backbones import SmallCNN
from src.modules.feature_cache import FeatureExtractor, body_fingerprint, pre_logits
from src.datamodules.transforms import build_transforms
from src.datamodules.world import DEFAULT_DATA_CONFIG


def _model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(num_classes=4, widths=(4, 8)).eval()


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_features_match_live_and_hit_the_cache(tmp_path):
    model, images = _model(), _images()
    ext = FeatureExtractor(model, DEFAULT_DATA_CONFIG, cache_dir=tmp_path, batch_size=4)
    feats = ext(images)
    x = build_transforms(DEFAULT_DATA_CONFIG)(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        torch.testing.assert_close(feats, pre_logits(model, x))
        # head(features) are the model's logits
        torch.testing.assert_close(model.get_classifier()(feats), model(x))
    assert (ext.computed, ext.cached) == (6, 0)
    again = FeatureExtractor(model, DEFAULT_DATA_CONFIG, cache_dir=tmp_path)  # a fresh process: from disk
    torch.testing.assert_close(again(images), feats)
    assert (again.computed, again.cached) == (0, 6)


def test_cache_invalidates_on_model_or_image_change(tmp_path):
    model, images = _model(), _images()
    FeatureExtractor(model, DEFAULT_DATA_CONFIG, cache_dir=tmp_path)(images)

    edited = images.copy()
    edited[2, 0, 0, 0] ^= 1  # one pixel of one image
    ext = FeatureExtractor(model, DEFAULT_DATA_CONFIG, cache_dir=tmp_path)
    ext(edited)
    assert (ext.computed, ext.cached) == (1, 5)

    other = _model(seed=1)  # different body weights
    ext = FeatureExtractor(other, DEFAULT_DATA_CONFIG, cache_dir=tmp_path)
    ext(images)
    assert ext.computed == 6

    bn = _model()
    bn.features[1].running_mean += 0.5  # a buffer, not a parameter, changes the features too
    assert body_fingerprint(bn, DEFAULT_DATA_CONFIG) != body_fingerprint(model, DEFAULT_DATA_CONFIG)

    other_prep = {**DEFAULT_DATA_CONFIG, "mean": (0.4, 0.4, 0.4)}
    assert body_fingerprint(model, other_prep) != body_fingerprint(model, DEFAULT_DATA_CONFIG)


def test_head_changes_keep_the_cache(tmp_path):
    model = _model()
    key = body_fingerprint(model, DEFAULT_DATA_CONFIG)
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)
    assert body_fingerprint(model, DEFAULT_DATA_CONFIG) == key
    assert isinstance(model.get_classifier(), torch.nn.Linear)  # fingerprinting did not strip the real head
