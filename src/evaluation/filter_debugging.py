"""Global minimum-correct (MC) filters and misclassification detection (Tariq & Zia).

Three pieces, all plain tensors in and out so they work on any backbone:

- `GlobalMCFilters` accumulates, per class, the activation-weighted local MC filters of training
  images the classifier predicts correctly with confidence > tau (0.9), and normalises them to [0, 1]
  per class. `filters(freq_threshold)` turns that into a binary class x filter matrix.
- `agreement_scores` compares a prediction's local MC filters with its predicted class's global
  filters (recall, precision, F1); `detect_misclassifications` flags predictions whose score falls
  below the training average (or a fixed recall bound), skipping confident predictions.
- `detection_report` scores the flags against the truth (the paper's Table 1 columns plus precision,
  recall, AUROC) next to the maximum-softmax-probability baseline (Hendrycks & Gimpel) given the same
  number of flags.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


class GlobalMCFilters:
    """Per-class global MC filters, accumulated over confident correct training predictions.

    `update` takes a batch of local MC masks (B x K, 0/1), the filters' activations (B x K, e.g. the
    GAP of the last conv map), predictions, labels and confidences. An image contributes
    `mc * activation / max(activation)` to its class: filters that are both kept by the explainer and
    strongly active weigh most. `compute()` returns the class x filter importance, each class's row
    divided by its maximum (so a frequency threshold of 15% keeps filters at >= 15% of the class's top).
    The kept images' local masks are remembered so that detection can compare against the training
    average of the same score.
    """

    def __init__(self, num_classes: int, num_filters: int, confidence_threshold: float = 0.9) -> None:
        self.num_classes = num_classes
        self.num_filters = num_filters
        self.confidence_threshold = confidence_threshold
        self.weight_sum = torch.zeros(num_classes, num_filters, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.long)
        self._masks: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []

    def update(self, mc_mask: torch.Tensor, activations: torch.Tensor, preds: torch.Tensor,
               labels: torch.Tensor, confidences: torch.Tensor) -> int:
        """Add the confident correct rows of a batch; returns how many were kept."""
        if mc_mask.shape != activations.shape or mc_mask.shape[1] != self.num_filters:
            raise ValueError(f"mc_mask {tuple(mc_mask.shape)} and activations {tuple(activations.shape)} "
                             f"must both be B x {self.num_filters}")
        keep = (preds == labels) & (confidences > self.confidence_threshold)
        if not keep.any():
            return 0
        mask = (mc_mask[keep] > 0.5).to(torch.float64)
        act = activations[keep].detach().to(torch.float64).clamp_min(0)
        act = act / act.amax(dim=1, keepdim=True).clamp_min(1e-12)
        cls = preds[keep].long().cpu()
        self.weight_sum.index_add_(0, cls, (mask * act).cpu())
        self.counts += torch.bincount(cls, minlength=self.num_classes)
        self._masks.append(mask.bool().cpu())
        self._classes.append(cls)
        return int(keep.sum())

    def compute(self) -> torch.Tensor:
        """Class x filter importance in [0, 1] (row max 1; zero rows for classes never seen)."""
        mean = self.weight_sum / self.counts.clamp_min(1)[:, None]
        return (mean / mean.amax(dim=1, keepdim=True).clamp_min(1e-12)).float()

    def filters(self, freq_threshold: float = 0.15) -> torch.Tensor:
        """Binary class x filter matrix: importance >= freq_threshold (0 keeps every filter seen)."""
        importance = self.compute()
        if freq_threshold <= 0:
            return importance > 0
        return importance >= freq_threshold

    def training_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The local MC masks (N x K bool) and classes (N) of the accumulated training images."""
        if not self._masks:
            return torch.zeros(0, self.num_filters, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
        return torch.cat(self._masks), torch.cat(self._classes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        masks, classes = self.training_masks()
        return {"importance": self.compute().contiguous(), "weight_sum": self.weight_sum.contiguous(),
                "counts": self.counts.contiguous(), "train_masks": masks.contiguous(), "train_classes": classes.contiguous(),
                "confidence_threshold": torch.tensor(self.confidence_threshold)}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "GlobalMCFilters":
        num_classes, num_filters = state["weight_sum"].shape
        acc = cls(num_classes, num_filters, float(state["confidence_threshold"]))
        acc.weight_sum = state["weight_sum"].to(torch.float64).clone()
        acc.counts = state["counts"].long().clone()
        if len(state["train_masks"]):
            acc._masks, acc._classes = [state["train_masks"].bool()], [state["train_classes"].long()]
        return acc


def save_global_filters(acc: GlobalMCFilters, path) -> None:
    from safetensors.torch import save_file

    save_file(acc.state_dict(), str(path), metadata={"format": "counterfactory.global_mc_filters/1"})


def load_global_filters(path, key: str = "module.global_filters_path") -> GlobalMCFilters:
    """Read what `save_global_filters` (the cfe run) wrote; a clear error naming the config key."""
    from pathlib import Path

    from safetensors.torch import load_file

    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path} does not exist; run `train.py experiment=cfe` first "
                                f"(it writes checkpoints/global_mc_filters.safetensors)")
    state = load_file(str(path))
    missing = {"weight_sum", "counts", "train_masks", "train_classes", "confidence_threshold"} - set(state)
    if missing:
        raise KeyError(f"{key}={path} lacks {sorted(missing)}; not a global MC filter file")
    return GlobalMCFilters.from_state_dict(state)


def agreement_scores(local_mc: torch.Tensor, global_filters: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """Recall, precision and F1 of each row's local MC set against its class's global set.

    recall = |L & G| / |G| (how many of the class's usual filters this prediction uses),
    precision = |L & G| / |L|. Empty sets score 0.
    """
    local = local_mc.bool()
    glob = global_filters.bool()[classes.long()]
    inter = (local & glob).sum(1).float()
    recall = inter / glob.sum(1).clamp_min(1).float()
    precision = inter / local.sum(1).clamp_min(1).float()
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {"recall": recall, "precision": precision, "f1": f1}


@dataclass(frozen=True)
class DetectionRule:
    """One row of the paper's Table 1.

    score: 'recall' or 'f1'. threshold: 'train_mean' flags scores below the training average of the
    predicted class (the paper's rule), a number flags scores below it (recall < 0.3).
    skip_confidence: predictions more confident than this are not examined (0 examines all).
    """

    name: str
    score: str = "recall"
    threshold: str | float = "train_mean"
    skip_confidence: float = 0.9
    freq_threshold: float = 0.15


PAPER_RULES = (
    DetectionRule("avg recall", "recall", "train_mean", 0.9, 0.15),
    DetectionRule("avg F1", "f1", "train_mean", 0.9, 0.15),
    DetectionRule("recall < 0.3", "recall", 0.3, 0.0, 0.0),
)


def training_average(acc: GlobalMCFilters, rule: DetectionRule) -> torch.Tensor:
    """Per-class mean of the rule's score over the accumulated training images (global mean for unseen classes)."""
    masks, classes = acc.training_masks()
    glob = acc.filters(rule.freq_threshold)
    if len(masks) == 0:
        return torch.zeros(acc.num_classes)
    score = agreement_scores(masks, glob, classes)[rule.score]
    sums = torch.zeros(acc.num_classes).index_add_(0, classes, score)
    counts = torch.bincount(classes, minlength=acc.num_classes).float()
    return torch.where(counts > 0, sums / counts.clamp_min(1), score.mean())


def detect_misclassifications(acc: GlobalMCFilters, rule: DetectionRule, local_mc: torch.Tensor,
                              preds: torch.Tensor, confidences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flags, scores) for test predictions: flag = examined and score below the rule's threshold."""
    glob = acc.filters(rule.freq_threshold)
    score = agreement_scores(local_mc, glob, preds)[rule.score]
    if rule.threshold == "train_mean":
        bound = training_average(acc, rule)[preds.long()]
    else:
        bound = torch.full_like(score, float(rule.threshold))
    examined = confidences <= rule.skip_confidence if rule.skip_confidence > 0 else torch.ones_like(score, dtype=torch.bool)
    return examined & (score < bound), score


@dataclass
class DetectionResult:
    rule: str
    skip_thr: float
    freq_thr: float
    predictions: int
    errors: int
    detected: int
    detected_pct: float
    false_flags: int
    precision: float
    recall: float
    auroc: float
    msp_detected: int
    msp_false_flags: int
    msp_precision: float
    msp_recall: float
    msp_auroc: float

    def as_dict(self) -> dict:
        return asdict(self)


def _auroc(is_error: np.ndarray, error_score: np.ndarray) -> float:
    if is_error.all() or not is_error.any():
        return float("nan")
    return float(roc_auc_score(is_error, error_score))


def detection_metrics(flags: torch.Tensor, is_error: torch.Tensor) -> dict[str, float]:
    flags, is_error = flags.bool(), is_error.bool()
    tp = int((flags & is_error).sum())
    fp = int((flags & ~is_error).sum())
    errors = int(is_error.sum())
    return {"errors": errors, "detected": tp, "false_flags": fp,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(errors, 1)}


def msp_flags(confidences: torch.Tensor, budget: int) -> torch.Tensor:
    """The maximum-softmax-probability baseline: flag the `budget` least confident predictions."""
    flags = torch.zeros_like(confidences, dtype=torch.bool)
    if budget > 0:
        flags[torch.argsort(confidences)[:budget]] = True
    return flags


def detection_report(acc: GlobalMCFilters, local_mc: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor,
                     confidences: torch.Tensor, rules: Sequence[DetectionRule] = PAPER_RULES) -> list[DetectionResult]:
    """Table 1 rows for these predictions, each next to MSP with the same number of flags.

    AUROC of the MC rule ranks all predictions by (1 - score) (no skipping); MSP's by (1 - confidence).
    """
    is_error = preds != labels
    err = is_error.numpy()
    msp_auroc = _auroc(err, (1 - confidences).numpy())
    rows = []
    for rule in rules:
        flags, score = detect_misclassifications(acc, rule, local_mc, preds, confidences)
        ours = detection_metrics(flags, is_error)
        base = detection_metrics(msp_flags(confidences, int(flags.sum())), is_error)
        rows.append(DetectionResult(
            rule=rule.name, skip_thr=rule.skip_confidence, freq_thr=rule.freq_threshold, predictions=len(preds),
            errors=ours["errors"], detected=ours["detected"], detected_pct=100 * ours["recall"],
            false_flags=ours["false_flags"], precision=ours["precision"], recall=ours["recall"],
            auroc=_auroc(err, (1 - score).numpy()), msp_detected=base["detected"], msp_false_flags=base["false_flags"],
            msp_precision=base["precision"], msp_recall=base["recall"], msp_auroc=msp_auroc,
        ))
    return rows


def format_detection_table(rows: Sequence[DetectionResult | dict], title: str = "") -> str:
    """Markdown table shaped like the paper's Table 1, MSP columns beside."""
    head = ("| rule | skip thr. | freq. thr. | errors | detected (%) | new (false) flags | precision | AUROC "
            "| MSP detected (%) | MSP false flags | MSP precision | MSP AUROC |")
    lines = ([f"**{title}**", ""] if title else []) + [head, "|" + "---|" * 12]
    for r in rows:
        r = r.as_dict() if isinstance(r, DetectionResult) else r
        lines.append(
            f"| {r['rule']} | {r['skip_thr']:.0%} | {r['freq_thr']:.0%} | {r['errors']} | {r['detected']} ({r['detected_pct']:.1f}%) "
            f"| {r['false_flags']} | {r['precision']:.3f} | {r['auroc']:.3f} | {r['msp_detected']} "
            f"({100 * r['msp_recall']:.1f}%) | {r['msp_false_flags']} | {r['msp_precision']:.3f} | {r['msp_auroc']:.3f} |")
    return "\n".join(lines)
