"""Per-split classification metrics: one torchmetrics collection per split, keys `split/name`."""
from __future__ import annotations

from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassRecall


def classification_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """acc@1, acc@5 (when there are more than 5 classes) and per-class recall."""
    metrics: dict[str, nn.Module] = {"acc@1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes > 5:
        metrics["acc@5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    metrics["recall"] = MulticlassRecall(num_classes, average="none")
    return MetricCollection(metrics, prefix=f"{prefix}/")


def flatten_per_class(values: dict, class_names: list[str] | None) -> dict[str, float]:
    """Turn vector-valued metrics (per-class recall) into scalar keys `split/recall/<class>`."""
    out = {}
    for key, v in values.items():
        if v.ndim == 0:
            out[key] = float(v)
        else:
            names = class_names or [str(i) for i in range(len(v))]
            out.update({f"{key}/{names[i]}": float(x) for i, x in enumerate(v)})
    return out
