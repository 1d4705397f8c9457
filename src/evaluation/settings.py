"""The `evaluation:` config node as a typed object (its keys are checked against this signature)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvaluationSettings:
    """What `evaluate.py` measures and writes.

    bootstrap: resamples of source images for every CI (0 switches CIs off); confidence: CI level;
    seed: bootstrap and K-Means seed; topk: accuracies reported (k > 1 only with more than k classes);
    on_bad_row: `error` names bad manifest rows and stops, `skip` drops and counts them;
    source_root: folder that generated sets' source paths may point into (default: the set folder);
    world_oracle: with data=world, also evaluate the ground-truth counterfactual split as set `oracle`;
    text_encoder / image_features: components for clustering and the Fréchet distance;
    clusters: K of K-Means per class (min(K, number of edits)); examples: image pairs in the report;
    report: write report.html; device: `auto`, `cpu`, `cuda`.
    """

    bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0
    topk: list[int] = field(default_factory=lambda: [1, 5])
    on_bad_row: str = "error"
    source_root: str | None = None
    world_oracle: bool = True
    text_encoder: Any = None
    image_features: Any = None
    clusters: int = 5
    examples: int = 8
    report: bool = True
    device: str = "auto"
