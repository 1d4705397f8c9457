"""Stress-test metrics: acc@k, Δacc@k, paired sensitivity Δp, flip rate, paired bootstrap CIs.

Functional forms work on numpy arrays of probabilities (N x C) and labels; `PairedSensitivity` is the
torchmetrics-style accumulating twin for streaming use. Every Δ is paired by *source image*: an edit
x′ is compared with the image x it was made from (or with x's reconstruction, to separate the edit
from generation artefacts), and bootstrap CIs resample source images with all their edits.

Definitions (T = original images, T′ = counterfactuals, y = true class):
- acc@k(S): fraction of images whose true class is among the k most probable.
- Δacc@k(group) = acc@k(T′_g) − acc@k(T_g), T′_g the edits in the group, T_g the distinct sources
  they were made from (for the whole set with every source edited, T_g = T).
- Δp = |p(y|x) − p(y|x′)| per edit, averaged over edits.
- flip rate = #(x correct, x′ wrong) / #(x correct): how often a correct prediction is broken.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics import Metric


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean per row: the true label is among the k highest probabilities (ties broken by index)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be N x C matching {len(labels)} labels, got {probs.shape}")
    k = min(k, probs.shape[1])
    # argsort on -p with a stable sort: equal probabilities rank by class index, like torch.topk.
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


def accuracy_at_k(probs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    correct = topk_correct(probs, labels, k)
    return float(correct.mean()) if len(correct) else float("nan")


def true_class_prob(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]


def delta_p(p_source: np.ndarray, p_edit: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-edit sensitivity |p(y|x) − p(y|x′)| from the two probability matrices (rows paired)."""
    return np.abs(true_class_prob(p_source, labels) - true_class_prob(p_edit, labels))


def flips(p_source: np.ndarray, p_edit: np.ndarray, labels: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(source correct, source correct and edit wrong) per edit."""
    src_ok = topk_correct(p_source, labels, k)
    return src_ok, src_ok & ~topk_correct(p_edit, labels, k)


def flip_rate(p_source: np.ndarray, p_edit: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    src_ok, flipped = flips(p_source, p_edit, labels, k)
    return float(flipped.sum() / src_ok.sum()) if src_ok.any() else float("nan")


@dataclass(frozen=True)
class Estimate:
    """A point value with its bootstrap interval (nan bounds when the group is too small)."""

    value: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {prefix: self.value, f"{prefix}/ci_low": self.low, f"{prefix}/ci_high": self.high}


class PairedBootstrap:
    """Paired bootstrap over source images: one resampling, shared by every metric and group.

    Resampling draws S sources with replacement (multinomial counts W, B x S); a statistic that is a
    ratio of per-source sums, Σ_s w_s a_s / Σ_s w_s b_s, is then a pair of matrix-vector products,
    so a thousand resamples of every group cost milliseconds. Using one W for all groups keeps
    differences between groups paired as well.
    """

    def __init__(self, n_sources: int, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> None:
        if not 0 < confidence < 1:
            raise ValueError(f"evaluation.confidence must lie in (0, 1), got {confidence}")
        self.n_sources = n_sources
        self.confidence = confidence
        rng = np.random.default_rng(seed)
        if n_resamples > 0 and n_sources > 0:
            self.weights = rng.multinomial(n_sources, np.full(n_sources, 1.0 / n_sources), size=n_resamples).astype(np.float32)
        else:
            self.weights = np.zeros((0, n_sources))

    def _interval(self, samples: np.ndarray) -> tuple[float, float]:
        samples = samples[np.isfinite(samples)]
        if len(samples) < 2:
            return float("nan"), float("nan")
        alpha = (1 - self.confidence) / 2
        lo, hi = np.quantile(samples, [alpha, 1 - alpha])
        return float(lo), float(hi)

    def resample(self, vectors: list[np.ndarray]) -> np.ndarray:
        """Resampled sums of per-source vectors (B x m): one matrix product for all of them."""
        return self.weights @ np.stack(vectors, axis=1) if len(self.weights) else np.zeros((0, len(vectors)))

    def ratio(self, num: np.ndarray, den: np.ndarray, resampled: np.ndarray | None = None) -> Estimate:
        """Σ num / Σ den with its interval; num/den are per-source sums (length S)."""
        total = den.sum()
        value = float(num.sum() / total) if total > 0 else float("nan")
        r = self.resample([num, den]) if resampled is None else resampled
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = r[:, 0] / r[:, 1]
        return Estimate(value, *self._interval(samples), n=int(total))

    def ratio_difference(self, num_a: np.ndarray, den_a: np.ndarray, num_b: np.ndarray, den_b: np.ndarray,
                         resampled: np.ndarray | None = None) -> Estimate:
        """Σa_num/Σa_den − Σb_num/Σb_den (e.g. acc(T′_g) − acc(T_g)), resampled jointly."""
        ok = den_a.sum() > 0 and den_b.sum() > 0
        value = float(num_a.sum() / den_a.sum() - num_b.sum() / den_b.sum()) if ok else float("nan")
        r = self.resample([num_a, den_a, num_b, den_b]) if resampled is None else resampled
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = r[:, 0] / r[:, 1] - r[:, 2] / r[:, 3]
        return Estimate(value, *self._interval(samples), n=int(den_a.sum()))


def per_source_sums(source_index: np.ndarray, values: np.ndarray, n_sources: int) -> np.ndarray:
    return np.bincount(source_index, weights=np.asarray(values, dtype=np.float64), minlength=n_sources)


def paired_group_metrics(
    boot: PairedBootstrap,
    source_index: np.ndarray,
    labels: np.ndarray,
    p_source: np.ndarray,
    p_edit: np.ndarray,
    topk: tuple[int, ...] = (1, 5),
    prefix: str = "",
) -> dict[str, Estimate]:
    """Every paired Δ of one group of edits (rows of `p_edit`, paired with rows of `p_source`).

    `p_source[i]` is the prediction on the image edit i was made from (the original, or its
    reconstruction); `source_index[i]` in [0, S) names the source for resampling.
    """
    S = boot.n_sources
    out: dict[str, Estimate] = {}
    if len(labels) == 0:
        return out
    n_edits = per_source_sums(source_index, np.ones(len(labels)), S)
    has_edit = (n_edits > 0).astype(np.float64)  # T_g: each distinct source once
    uniq, first_row = np.unique(source_index, return_index=True)
    # Collect every per-source vector, resample them all with one matrix product, then read ratios.
    vectors: dict[str, np.ndarray] = {"n_edits": n_edits, "has_edit": has_edit}
    ks = [k for k in topk if k == 1 or p_edit.shape[1] > 5]  # acc@5 means nothing with <= 5 classes
    for k in ks:
        vectors[f"ok_edit@{k}"] = per_source_sums(source_index, topk_correct(p_edit, labels, k), S)
        first = np.zeros(S)
        first[uniq] = topk_correct(p_source, labels, k)[first_row]
        vectors[f"ok_src@{k}"] = first
    vectors["dp"] = per_source_sums(source_index, delta_p(p_source, p_edit, labels), S)
    src_ok, flipped = flips(p_source, p_edit, labels, 1)
    vectors["flips"] = per_source_sums(source_index, flipped, S)
    vectors["src_ok"] = per_source_sums(source_index, src_ok, S)
    names = list(vectors)
    R = boot.resample([vectors[n] for n in names])
    col = {n: R[:, i] for i, n in enumerate(names)}

    def pick(*keys: str) -> np.ndarray:
        return np.stack([col[k] for k in keys], axis=1)

    v = vectors
    for k in ks:
        out[f"{prefix}acc@{k}"] = boot.ratio(v[f"ok_edit@{k}"], v["n_edits"], pick(f"ok_edit@{k}", "n_edits"))
        out[f"{prefix}source_acc@{k}"] = boot.ratio(v[f"ok_src@{k}"], v["has_edit"], pick(f"ok_src@{k}", "has_edit"))
        out[f"{prefix}delta_acc@{k}"] = boot.ratio_difference(
            v[f"ok_edit@{k}"], v["n_edits"], v[f"ok_src@{k}"], v["has_edit"],
            pick(f"ok_edit@{k}", "n_edits", f"ok_src@{k}", "has_edit"))
    out[f"{prefix}delta_p"] = boot.ratio(v["dp"], v["n_edits"], pick("dp", "n_edits"))
    out[f"{prefix}flip_rate"] = boot.ratio(v["flips"], v["src_ok"], pick("flips", "src_ok"))
    return out


class PairedSensitivity(Metric):
    """Streaming mean Δp and flip rate over (source, edit) probability pairs; torchmetrics contract."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("delta_p_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_edits", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_source_correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_flips", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, p_source: torch.Tensor, p_edit: torch.Tensor, labels: torch.Tensor) -> None:
        idx = torch.arange(len(labels), device=labels.device)
        ps, pe = p_source[idx, labels], p_edit[idx, labels]
        self.delta_p_sum += (ps - pe).abs().double().sum()
        self.n_edits += len(labels)
        src_ok = p_source.argmax(1) == labels
        self.n_source_correct += src_ok.sum()
        self.n_flips += (src_ok & (p_edit.argmax(1) != labels)).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "delta_p": self.delta_p_sum / self.n_edits.clamp(min=1),
            "flip_rate": self.n_flips.double() / self.n_source_correct.clamp(min=1),
        }
