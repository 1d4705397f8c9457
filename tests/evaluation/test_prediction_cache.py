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
