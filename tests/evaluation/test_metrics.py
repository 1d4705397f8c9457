"""Stress-test metrics against hand-computed values, and bootstrap reproducibility."""
import numpy as np
import pytest
import torch

from src.evaluation.metrics import (
    PairedBootstrap,
    PairedSensitivity,
    accuracy_at_k,
    delta_p,
    flip_rate,
    paired_group_metrics,
)

# 3 sources (labels 0, 1, 2), 4 classes.
P_SRC = np.array([[0.7, 0.1, 0.1, 0.1],   # correct, p(y)=0.7
                  [0.5, 0.3, 0.1, 0.1],   # wrong (top-1 is 0), p(y)=0.3, top-2 correct
                  [0.1, 0.1, 0.6, 0.2]])  # correct, p(y)=0.6
Y_SRC = np.array([0, 1, 2])
# 5 edits: two of source 0, one of source 1, two of source 2.
SRC_IDX = np.array([0, 0, 1, 2, 2])
P_EDIT = np.array([[0.2, 0.6, 0.1, 0.1],  # src 0: flipped, p(y)=0.2
                   [0.6, 0.2, 0.1, 0.1],  # src 0: still correct, p(y)=0.6
                   [0.1, 0.8, 0.05, 0.05],  # src 1: now correct, p(y)=0.8
                   [0.1, 0.1, 0.7, 0.1],  # src 2: correct, p(y)=0.7
                   [0.1, 0.1, 0.3, 0.5]])  # src 2: flipped, p(y)=0.3
Y_EDIT = Y_SRC[SRC_IDX]


def test_accuracy_at_k_hand_computed():
    assert accuracy_at_k(P_SRC, Y_SRC, 1) == pytest.approx(2 / 3)
    assert accuracy_at_k(P_SRC, Y_SRC, 2) == pytest.approx(1.0)
    assert accuracy_at_k(P_EDIT, Y_EDIT, 1) == pytest.approx(3 / 5)


def test_delta_p_and_flip_rate_hand_computed():
    dp = delta_p(P_SRC[SRC_IDX], P_EDIT, Y_EDIT)
    np.testing.assert_allclose(dp, [0.5, 0.1, 0.5, 0.1, 0.3])
    # sources correct for edits 0, 1, 3, 4 (4 edits); flipped: edits 0 and 4.
    assert flip_rate(P_SRC[SRC_IDX], P_EDIT, Y_EDIT) == pytest.approx(2 / 4)


def test_paired_group_metrics_point_values():
    boot = PairedBootstrap(3, n_resamples=200, seed=0)
    m = paired_group_metrics(boot, SRC_IDX, Y_EDIT, P_SRC[SRC_IDX], P_EDIT, topk=(1, 5))
    assert m["acc@1"].value == pytest.approx(3 / 5)
    assert m["source_acc@1"].value == pytest.approx(2 / 3)  # each source once
    assert m["delta_acc@1"].value == pytest.approx(3 / 5 - 2 / 3)
    assert m["delta_p"].value == pytest.approx(1.5 / 5)
    assert m["flip_rate"].value == pytest.approx(0.5)
    assert "acc@5" not in m  # 4 classes: acc@5 is meaningless
    assert m["delta_p"].low <= m["delta_p"].value <= m["delta_p"].high


def test_subgroup_uses_only_its_sources():
    boot = PairedBootstrap(3, n_resamples=50, seed=0)
    sel = np.array([2])  # the single edit of source 1: wrong -> right
    m = paired_group_metrics(boot, SRC_IDX[sel], Y_EDIT[sel], P_SRC[SRC_IDX][sel], P_EDIT[sel], topk=(1,))
    assert m["delta_acc@1"].value == pytest.approx(1.0)
    assert np.isnan(m["flip_rate"].value)  # no correct source


def test_bootstrap_reproducible_and_seed_dependent():
    rng = np.random.default_rng(1)
    n = 200
    p = rng.dirichlet(np.ones(6), size=n)
    q = rng.dirichlet(np.ones(6), size=n)
    y = rng.integers(0, 6, n)
    idx = np.arange(n)
    a = paired_group_metrics(PairedBootstrap(n, 300, seed=7), idx, y, p, q, (1, 5))
    b = paired_group_metrics(PairedBootstrap(n, 300, seed=7), idx, y, p, q, (1, 5))
    c = paired_group_metrics(PairedBootstrap(n, 300, seed=8), idx, y, p, q, (1, 5))
    assert a == b
    assert a["delta_acc@1"].low != c["delta_acc@1"].low
    # Identical predictions: every Δ is exactly zero, and so is its interval.
    z = paired_group_metrics(PairedBootstrap(n, 100, seed=0), idx, y, p, p, (1,))
    assert (z["delta_acc@1"].value, z["delta_acc@1"].low, z["delta_acc@1"].high) == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_a_planted_shift():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    p = np.eye(3)[y] * 0.9 + 0.1 / 3  # always correct
    q = p.copy()
    wrong = rng.random(n) < 0.3  # break 30% of them
    q[wrong] = np.eye(3)[(y[wrong] + 1) % 3] * 0.9 + 0.1 / 3
    m = paired_group_metrics(PairedBootstrap(n, 500, seed=0), np.arange(n), y, p, q, (1,))
    assert m["delta_acc@1"].excludes_zero() and m["delta_acc@1"].high < 0
    assert m["delta_acc@1"].low < -wrong.mean() < m["delta_acc@1"].high


def test_streaming_metric_matches_functional():
    metric = PairedSensitivity()
    ps, pe, y = (torch.tensor(P_SRC[SRC_IDX]), torch.tensor(P_EDIT), torch.tensor(Y_EDIT))
    metric.update(ps[:2], pe[:2], y[:2])
    metric.update(ps[2:], pe[2:], y[2:])
    out = metric.compute()
    assert float(out["delta_p"]) == pytest.approx(delta_p(P_SRC[SRC_IDX], P_EDIT, Y_EDIT).mean())
    assert float(out["flip_rate"]) == pytest.approx(0.5)
