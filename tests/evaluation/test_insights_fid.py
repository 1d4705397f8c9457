"""Edit clustering on a planted structure, the offline text encoder, the Fréchet distance."""
import numpy as np
import pandas as pd
import pytest

from src.evaluation.fid import frechet_distance
from src.evaluation.insights import cluster_edits


class LookupEncoder:
    """Phrases -> fixed vectors: two well-separated families of edits."""

    name = "lookup"

    def encode(self, texts):
        vocab = {"on grass": [0, 0, 0, 0], "on snow": [5, 0, 0, 0], "on sand": [5, 0.2, 0, 0],
                 "red": [0, 0, 0, 0], "blue": [0, 0, 5, 0], "green": [0, 0, 5, 0.2]}
        return np.array([vocab[t] for t in texts], np.float32)


def test_clusters_recover_planted_edit_families():
    rows = ([("on grass", "on snow")] * 6 + [("on grass", "on sand")] * 4 + [("red", "blue")] * 5 + [("red", "green")] * 5)
    rec = pd.DataFrame({"label": 0, "original_words": [a for a, _ in rows], "edited_words": [b for _, b in rows]})
    dp = np.array([0.8] * 10 + [0.1] * 10)  # background edits hurt, colour edits do not
    flipped = np.array([True] * 10 + [False] * 10)
    clusters = cluster_edits(rec, dp, flipped, LookupEncoder(), ["circle"], k=2, seed=0)
    assert len(clusters) == 2
    top, bottom = clusters
    assert top.size == 10 and top.mean_delta_p == pytest.approx(0.8) and top.flip_rate == 1.0
    assert top.name.startswith("on grass → on snow (6)")
    assert bottom.mean_delta_p == pytest.approx(0.1) and "red →" in bottom.name
    assert set(top.exemplars) <= set(range(10))
    # k is capped by the number of edits (and of distinct edits).
    assert len(cluster_edits(rec.iloc[:3], dp[:3], flipped[:3], LookupEncoder(), ["circle"], k=5)) == 1


def test_offline_sentence_encoder_separates_meanings():
    from src.evaluation.text_features import SentenceTextEncoder

    enc = SentenceTextEncoder()
    e = enc.encode(["on white snow", "in the snow", "a red shape"])
    assert e.shape[0] == 3 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by 3 along one axis: distance ≈ 9.
    assert frechet_distance(a, a + np.array([3, 0, 0, 0])) == pytest.approx(9.0, abs=1e-6)
    b = rng.normal(size=(500, 4)) * 2  # variance 4: Tr(1 + 4 - 2·2) = 1 per dimension
    assert frechet_distance(rng.normal(size=(4000, 4)), rng.normal(size=(4000, 4)) * 2) == pytest.approx(4.0, rel=0.1)
    assert frechet_distance(a, b) > 1
