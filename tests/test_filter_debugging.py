"""Global MC filter accumulation and misclassification detection on hand-made fixtures."""
import math

import pytest
import torch

from src.evaluation.filter_debugging import (
    DetectionRule,
    GlobalMCFilters,
    agreement_scores,
    detect_misclassifications,
    detection_metrics,
    detection_report,
    format_detection_table,
    load_global_filters,
    msp_flags,
    save_global_filters,
    training_average,
)

PLANTED = {0: [0, 1, 2], 1: [4, 5, 6], 2: [8, 9, 10]}


def _planted_batch(n: int, gen: torch.Generator):
    """Class c turns its planted filters on (p=0.9, strongly active), the others rarely (p=0.1, weak)."""
    labels = torch.arange(n) % 3
    mask = torch.rand(n, 12, generator=gen) < 0.1
    act = torch.rand(n, 12, generator=gen) * 0.3
    for c, ks in PLANTED.items():
        rows = labels == c
        on = torch.rand(int(rows.sum()), len(ks), generator=gen) < 0.9
        sub = mask[rows]
        sub[:, ks] = on
        mask[rows] = sub
        a = act[rows]
        a[:, ks] = 1.0 + torch.rand(int(rows.sum()), len(ks), generator=gen)
        act[rows] = a
    return mask.float(), act, labels


def test_accumulator_recovers_planted_filters_and_ignores_errors_and_unconfident():
    gen = torch.Generator().manual_seed(0)
    acc = GlobalMCFilters(3, 12, confidence_threshold=0.9)
    mask, act, labels = _planted_batch(300, gen)
    assert acc.update(mask, act, labels, labels, torch.full((300,), 0.95)) == 300
    # Wrong or unconfident predictions with a different structure must not count.
    bad_mask = torch.zeros(60, 12)
    bad_mask[:, 11] = 1
    bad_act = torch.ones(60, 12)
    preds = torch.zeros(60, dtype=torch.long)
    assert acc.update(bad_mask, bad_act, preds, torch.ones(60, dtype=torch.long), torch.full((60,), 0.99)) == 0
    assert acc.update(bad_mask, bad_act, preds, preds, torch.full((60,), 0.5)) == 0
    importance = acc.compute()
    assert importance.shape == (3, 12)
    assert torch.allclose(importance.amax(1), torch.ones(3))
    binary = acc.filters(0.5)
    for c, ks in PLANTED.items():
        assert sorted(torch.nonzero(binary[c]).flatten().tolist()) == ks
    assert acc.counts.tolist() == [100, 100, 100]
    masks, classes = acc.training_masks()
    assert masks.shape == (300, 12) and classes.tolist() == labels.tolist()


def test_accumulator_weights_by_normalised_activation():
    acc = GlobalMCFilters(1, 3, 0.5)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    act = torch.tensor([[2.0, 1.0, 5.0], [4.0, 4.0, 1.0]])
    acc.update(mask, act, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.ones(2))
    # row 1: [2/5, 1/5, 0], row 2: [1, 0, 1/4] -> mean [0.7, 0.1, 0.125] -> / 0.7
    expected = torch.tensor([1.0, 0.1 / 0.7, 0.125 / 0.7])
    assert torch.allclose(acc.compute()[0], expected, atol=1e-6)
    assert acc.filters(0.15)[0].tolist() == [True, False, True]
    assert acc.filters(0.0)[0].tolist() == [True, True, True]


def test_agreement_scores_by_hand():
    glob = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    local = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]], dtype=torch.bool)
    s = agreement_scores(local, glob, torch.tensor([0, 0, 1]))
    assert torch.allclose(s["recall"], torch.tensor([0.5, 0.0, 0.5]))
    assert torch.allclose(s["precision"], torch.tensor([2 / 3, 0.0, 1.0]))
    assert torch.allclose(s["f1"], torch.tensor([2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 0.0, 2 / 3]))


def _fixture_filters():
    acc = GlobalMCFilters(2, 4, 0.9)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float)
    ones = torch.ones(3, 4)
    cls = torch.tensor([0, 0, 1])
    acc.update(mask, ones, cls, cls, torch.ones(3))
    return acc


def test_detection_rules_skip_and_training_average():
    acc = _fixture_filters()
    rule = DetectionRule("avg recall", "recall", "train_mean", skip_confidence=0.9, freq_threshold=0.15)
    assert torch.allclose(training_average(acc, rule), torch.tensor([1.0, 1.0]))
    local = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    preds = torch.tensor([0, 0, 0, 1, 0])
    conf = torch.tensor([0.5, 0.5, 0.95, 0.6, 0.8])
    flags, score = detect_misclassifications(acc, rule, local, preds, conf)
    assert score.tolist() == [1.0, 0.5, 0.0, 1.0, 0.5]
    assert flags.tolist() == [False, True, False, False, True]  # row 2 is skipped (confident)
    fixed = DetectionRule("recall < 0.3", "recall", 0.3, skip_confidence=0.0, freq_threshold=0.0)
    flags, _ = detect_misclassifications(acc, fixed, local, preds, conf)
    assert flags.tolist() == [False, False, True, False, False]


def test_detection_metrics_and_msp_budget():
    flags = torch.tensor([True, True, False, False, True])
    is_error = torch.tensor([True, False, True, False, False])
    m = detection_metrics(flags, is_error)
    assert (m["errors"], m["detected"], m["false_flags"]) == (2, 1, 2)
    assert math.isclose(m["precision"], 1 / 3) and math.isclose(m["recall"], 0.5)
    conf = torch.tensor([0.9, 0.2, 0.5, 0.99, 0.1])
    assert msp_flags(conf, 2).tolist() == [False, True, False, False, True]
    assert not msp_flags(conf, 0).any()


def test_detection_report_rows_and_table():
    acc = _fixture_filters()
    local = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    preds = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 1, 0, 1])  # rows 1 and 2 are errors, both with partial agreement
    conf = torch.tensor([0.6, 0.7, 0.3, 0.8])
    rows = detection_report(acc, local, preds, labels, conf, [DetectionRule("avg recall", "recall", "train_mean", 0.9, 0.15)])
    r = rows[0]
    assert (r.errors, r.detected, r.false_flags) == (2, 2, 0)
    assert r.precision == 1.0 and r.auroc == 1.0
    # MSP with the same two flags picks rows 2 (0.3) and 0 (0.6): one hit.
    assert (r.msp_detected, r.msp_false_flags) == (1, 1)
    assert math.isclose(r.msp_auroc, 0.75)
    table = format_detection_table(rows, title="fixture")
    assert "| avg recall | 90% | 15% | 2 | 2 (100.0%) | 0 |" in table


def test_save_and_load_round_trip(tmp_path):
    acc = _fixture_filters()
    save_global_filters(acc, tmp_path / "g.safetensors")
    back = load_global_filters(tmp_path / "g.safetensors")
    assert torch.equal(back.filters(0.15), acc.filters(0.15))
    assert torch.equal(back.training_masks()[0], acc.training_masks()[0])
    with pytest.raises(FileNotFoundError, match="module.global_filters_path"):
        load_global_filters(tmp_path / "missing.safetensors")
