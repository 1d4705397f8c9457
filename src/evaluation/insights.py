"""Class-level insights (LANCE §4.3): per class, cluster its edits by text features of the edited vs
original words, rank clusters by mean sensitivity Δp, name each by its most frequent edits.

The feature of an edit is |E(edited words) − E(original words)| (the L1-style distance vector the
paper clusters); K-Means with k = min(K, number of edits), fixed seed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans


@dataclass
class EditCluster:
    class_name: str
    name: str  # its most frequent edits, e.g. "on green grass → on white snow (12), ..."
    size: int
    mean_delta_p: float
    flip_rate: float
    top_edits: list[tuple[str, int]]
    exemplars: list[int] = field(default_factory=list)  # edit rows (in the set), highest Δp first


def edit_features(encoder, original: list[str], edited: list[str], mode: str = "absdiff") -> np.ndarray:
    """Encode each distinct phrase once (sets repeat phrases a lot), then combine per edit."""
    phrases = sorted(set(original) | set(edited))
    emb = encoder.encode(phrases)
    pos = {p: i for i, p in enumerate(phrases)}
    a = emb[[pos[p] for p in original]]
    b = emb[[pos[p] for p in edited]]
    if mode == "absdiff":
        return np.abs(b - a)
    if mode == "diff":
        return b - a
    raise ValueError(f"unknown edit feature mode {mode!r}; expected 'absdiff' or 'diff'")


def cluster_edits(records: pd.DataFrame, delta_p: np.ndarray, flipped: np.ndarray, encoder, class_names: list[str],
                  k: int = 5, seed: int = 0, exemplars: int = 3, mode: str = "absdiff",
                  features: np.ndarray | None = None) -> list[EditCluster]:
    """Clusters of every class, each class's clusters ranked by mean Δp (highest first).

    `records` needs `label`, `original_words`, `edited_words`; rows align with `delta_p`/`flipped`.
    """
    orig = records["original_words"].fillna("").astype(str).tolist()
    edit = records["edited_words"].fillna("").astype(str).tolist()
    feats = edit_features(encoder, orig, edit, mode) if features is None else features
    labels = records["label"].to_numpy()
    out: list[EditCluster] = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n_clusters = min(k, len(rows))
        if n_clusters == 0:
            continue
        # Identical features (one distinct edit) cannot form more clusters than distinct points.
        n_distinct = len(np.unique(feats[rows].round(6), axis=0))
        n_clusters = max(1, min(n_clusters, n_distinct))
        assign = (KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(feats[rows])
                  if n_clusters > 1 else np.zeros(len(rows), int))
        name = class_names[c] if c < len(class_names) else str(c)
        clusters = []
        for j in range(n_clusters):
            members = rows[assign == j]
            counts = Counter(f"{orig[i]} → {edit[i]}" for i in members).most_common(3)
            order = members[np.argsort(-delta_p[members], kind="stable")]
            clusters.append(EditCluster(
                class_name=name,
                name=", ".join(f"{e} ({n})" for e, n in counts[:2]),
                size=len(members),
                mean_delta_p=float(delta_p[members].mean()),
                flip_rate=float(flipped[members].mean()),
                top_edits=counts,
                exemplars=order[:exemplars].tolist(),
            ))
        out.extend(sorted(clusters, key=lambda cl: -cl.mean_delta_p))
    return out
