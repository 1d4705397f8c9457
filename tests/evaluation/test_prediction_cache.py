"""The prediction cache stays aligned when a batch repeats an image (an edit that changed no pixel)."""
import numpy as np

from src.evaluation.predictions import PredictionCache


def test_duplicate_shas_keep_rows_aligned_across_adds_and_reload(tmp_path):
    cache = PredictionCache(tmp_path, "model")
    p1 = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    cache.add(["a", "b", "b"], p1, p1.astype(np.float16))
    p2 = np.eye(3, dtype=np.float32)[[2]]
    cache.add(["c"], p2, p2.astype(np.float16))
    cache.save()
    again = PredictionCache(tmp_path, "model")
    found, probs, _ = again.get(["a", "b", "c", "d"])
    assert found.tolist() == [True, True, True, False]
    assert probs.argmax(1).tolist() == [0, 1, 2]


def test_feature_cache_shares_the_alignment_fix(tmp_path):
    from src.modules.feature_cache import FeatureCache

    cache = FeatureCache(tmp_path, "body")
    cache.add(["a", "a", "b"], np.array([[1.0], [1.0], [2.0]]))
    cache.add(["c"], np.array([[3.0]]))
    cache.save()
    again = FeatureCache(tmp_path, "body")
    assert again.features[again.lookup(["c", "b", "a"])].ravel().tolist() == [3.0, 2.0, 1.0]
