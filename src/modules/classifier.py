"""Image classification task: any backbone from `src.modules.backbones`, cross-entropy, torchmetrics."""
from __future__ import annotations

from typing import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from src.modules.metrics import classification_metrics, flatten_per_class


class ClassifierModule(L.LightningModule):
    """Trains `backbone` with cross-entropy. Batches are dicts with `image` and `label`.

    `test_split_names` names the test dataloaders (metric keys `test_<split>/acc@1`); the entry
    point fills it from the DataModule.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        label_smoothing: float = 0.0,
        test_split_names: Sequence[str] = ("test",),
    ) -> None:
        super().__init__()
        # Plain lists, so that checkpoints load with torch.load(weights_only=True).
        class_names = list(class_names) if class_names is not None else None
        test_split_names = list(test_split_names)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else None
        self.label_smoothing = label_smoothing
        self.train_metrics = classification_metrics(num_classes, "train")
        self.val_metrics = classification_metrics(num_classes, "val")
        self.test_split_names = list(test_split_names)
        self.test_metrics = nn.ModuleList(classification_metrics(num_classes, f"test_{n}") for n in self.test_split_names)

    def set_test_splits(self, names: Sequence[str]) -> None:
        num_classes = self.hparams.num_classes
        self.test_split_names = list(names)
        self.test_metrics = nn.ModuleList(classification_metrics(num_classes, f"test_{n}") for n in names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        self.train_metrics["acc@1"](logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc@1", self.train_metrics["acc@1"], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), prog_bar=True)
        self.val_metrics.update(logits, batch["label"])

    def on_validation_epoch_end(self) -> None:
        self._log_collection(self.val_metrics, prog_bar_key="val/acc@1")

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_metrics[dataloader_idx].update(self(batch["image"]), batch["label"])

    def on_test_epoch_end(self) -> None:
        for collection in self.test_metrics:
            self._log_collection(collection)

    def _log_collection(self, collection, prog_bar_key: str | None = None) -> None:
        values = flatten_per_class(collection.compute(), self.class_names)
        for key, value in values.items():
            self.log(key, value, prog_bar=key == prog_bar_key)
        collection.reset()

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/acc@1", "interval": "epoch"}}
