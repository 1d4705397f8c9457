"""Head-only repair with WiSE-FT weight interpolation (Li et al.'s counterfactual reinforcement).

The backbone is frozen (weights and BatchNorm statistics); the classifier head starts from the trained
head θ₀ (not re-initialised) and is fine-tuned into θ₁. After training, the head
θ(α) = (1−α)·θ₀ + α·θ₁ is evaluated on validation features for an α grid -- no retraining, a linear
layer per α on cached features -- and α is chosen there:

- `selection=constrained` (default): the best counterfactual-validation accuracy among the α whose
  original-validation accuracy is at most `max_original_drop` below α = 0's;
- `balanced`: the best mean of the per-part accuracies; `accuracy`: the best pooled accuracy;
- `alpha=0.3`: Li et al.'s fixed setting (no selection).

`choose_alpha` / `alpha_sweep` receive only a `ValidationFeatures`: the selection code has no handle on
any test split. The chosen head is written into `backbone`'s classifier, so the checkpoint and the
exported `classifier.safetensors` are the interpolated model; θ₀ and θ₁ stay in the state dict
(`head_init`, `head_finetuned`) for the α curves on the test sets, written after the choice.

The same module is DFR (`reinit_head=true`, `alpha=1`, an L1 penalty; trained on a group-balanced
held-out set) and head-only standard-augmentation fine-tuning (`alpha=1`, live features).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from src.modules.backbones import _load_checkpoint
from src.modules.feature_cache import FeatureExtractor, pre_logits
from src.modules.metrics import classification_metrics, flatten_per_class

log = logging.getLogger(__name__)

SELECTIONS = ("constrained", "balanced", "accuracy")
ORIGINAL, COUNTERFACTUAL = 0, 1  # the `part` of a validation sample


@dataclass(frozen=True)
class ValidationFeatures:
    """Everything α selection may see: pre-logits features of the validation split, labels, parts."""

    features: torch.Tensor
    labels: torch.Tensor
    part: torch.Tensor


def alpha_grid(start: float = 0.0, stop: float = 1.0, step: float = 0.05) -> list[float]:
    n = int(round((stop - start) / step))
    return [round(start + i * step, 6) for i in range(n + 1)]


def interpolate(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """θ(α) = (1−α)·θ₀ + α·θ₁, parameter by parameter."""
    if theta0.keys() != theta1.keys():
        raise ValueError(f"heads differ: {sorted(theta0)} vs {sorted(theta1)}")
    return {k: torch.lerp(theta0[k], theta1[k], alpha) if theta0[k].is_floating_point() else theta0[k] for k in theta0}


def _head_state(head: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


@torch.no_grad()
def alpha_sweep(head: nn.Module, theta0: dict, theta1: dict, val: ValidationFeatures, alphas: Sequence[float]) -> pd.DataFrame:
    """Validation accuracy (pooled and per part) of the interpolated head for every α."""
    rows = []
    feats = val.features.to(next(iter(theta0.values())).device)
    labels, part = val.labels.to(feats.device), val.part.to(feats.device)
    for a in alphas:
        correct = functional_call(head, interpolate(theta0, theta1, a), (feats,)).argmax(1) == labels
        row = {"alpha": a, "acc": correct.float().mean().item()}
        for name, p in (("original", ORIGINAL), ("counterfactual", COUNTERFACTUAL)):
            m = part == p
            row[f"acc_{name}"] = correct[m].float().mean().item() if m.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def choose_alpha(sweep: pd.DataFrame, selection: str = "constrained", max_original_drop: float = 0.01) -> float:
    """The α a validation sweep picks; ties go to the smallest α (the least change)."""
    if selection not in SELECTIONS:
        raise ValueError(f"module.selection={selection!r}; expected one of {SELECTIONS}")
    df = sweep.sort_values("alpha").reset_index(drop=True)
    if selection == "accuracy" or df["acc_counterfactual"].isna().all() or df["acc_original"].isna().all():
        score = df["acc"]
    elif selection == "balanced":
        score = (df["acc_original"] + df["acc_counterfactual"]) / 2
    else:
        base = df.loc[df["alpha"].idxmin(), "acc_original"]
        ok = df["acc_original"] >= base - max_original_drop - 1e-9
        score = df["acc_counterfactual"].where(ok, -np.inf)
    return float(df.loc[score.idxmax(), "alpha"])


class WiseFTModule(L.LightningModule):
    """Batches: `{"features" | "image", "label"[, "part"]}` (see `src.repair.data.RepairDataModule`)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable,
        classifier_path: str | None = None,
        class_names: Sequence[str] | None = None,
        test_split_names: Sequence[str] = ("test",),
        alpha: float | None = None,
        alphas: Sequence[float] | None = None,
        selection: str = "constrained",
        max_original_drop: float = 0.01,
        reinit_head: bool = False,
        l1: float = 0.0,
        cached_features: bool = True,
        feature_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Plain containers only: checkpoints are read back with weights_only=True.
        test_split_names = [str(n) for n in test_split_names]
        class_names = [str(n) for n in class_names] if class_names else None
        alphas = [float(a) for a in alphas] if alphas is not None else None
        self.save_hyperparameters(ignore=["backbone", "optimizer"], logger=False)
        if selection not in SELECTIONS:
            raise ValueError(f"module.selection={selection!r}; expected one of {SELECTIONS}")
        if classifier_path:
            _load_checkpoint(backbone, classifier_path, key="module.classifier_path")
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        head = self.backbone.get_classifier()
        self.head_init = copy.deepcopy(head).requires_grad_(False)  # θ₀
        if reinit_head:
            head.reset_parameters()
        for p in head.parameters():
            p.requires_grad_(True)
        self.head_finetuned = copy.deepcopy(head).requires_grad_(False)  # θ₁, filled when training ends
        self.register_buffer("alpha", torch.tensor(0.0 if not reinit_head else 1.0))
        self.fixed_alpha = alpha
        self.alphas = list(alphas) if alphas is not None else alpha_grid()
        self.optimizer_factory = optimizer
        self.class_names = list(class_names) if class_names else None
        self.val_metrics = classification_metrics(num_classes, "val")
        self.set_test_splits(test_split_names)
        self.val_sweep: pd.DataFrame | None = None
        self._val_parts: dict[int, list[int]] = {}

    def set_test_splits(self, names: Sequence[str]) -> None:
        self.test_split_names = list(names)
        self.test_metrics = nn.ModuleList(classification_metrics(self.hparams.num_classes, f"test_{n}") for n in names)
        self._test_sweep = {n: np.zeros((len(self.alphas), 2)) for n in names}  # correct, total

    # ------------------------------------------------------------------ plumbing
    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen body: BatchNorm statistics and dropout stay as trained
        return self

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.cached_features and hasattr(dm, "use_features"):
            dm.use_features(FeatureExtractor(self.backbone, dm.data_config, cache_dir=self.hparams.feature_cache_dir))

    def _features(self, batch: dict) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        with torch.no_grad():
            return pre_logits(self.backbone, batch["image"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.head(self._features(batch))
        loss = F.cross_entropy(logits, batch["label"])
        if self.hparams.l1:
            loss = loss + self.hparams.l1 * self.head.weight.abs().sum()
        self.log("train/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.head(self._features(batch))
        self.val_metrics.update(logits, batch["label"])
        correct = (logits.argmax(1) == batch["label"]).long()
        part = batch.get("part", torch.zeros_like(batch["label"]))
        for p in (ORIGINAL, COUNTERFACTUAL):
            m = part == p
            c, n = self._val_parts.get(p, [0, 0])
            self._val_parts[p] = [c + int(correct[m].sum()), n + int(m.sum())]

    def on_validation_epoch_end(self) -> None:
        for key, value in flatten_per_class(self.val_metrics.compute(), self.class_names).items():
            self.log(key, value, prog_bar=key == "val/acc@1")
        self.val_metrics.reset()
        for p, name in ((ORIGINAL, "original"), (COUNTERFACTUAL, "counterfactual")):
            c, n = self._val_parts.get(p, [0, 0])
            if n:
                self.log(f"val_{name}/acc@1", c / n)
        self._val_parts = {}

    def configure_optimizers(self):
        return self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])

    # ------------------------------------------------------------------ choosing α
    def on_fit_end(self) -> None:
        """Take the best θ₁, sweep α on validation only, install θ(α*) as the model's head."""
        best = self._best_checkpoint_path()
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            prefix = f"backbone.{self._head_prefix()}."
            self.head.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        theta0, theta1 = _head_state(self.head_init), _head_state(self.head)
        self.head_finetuned.load_state_dict(theta1)
        if self.fixed_alpha is not None:
            chosen = float(self.fixed_alpha)
            self.val_sweep = None
        else:
            self.val_sweep = alpha_sweep(self.head, theta0, theta1, self._validation_features(), self.alphas)
            chosen = choose_alpha(self.val_sweep, self.hparams.selection, self.hparams.max_original_drop)
            self._write_csv(self.val_sweep, "alpha_sweep_val.csv")
        self.set_alpha(chosen)
        log.info("WiSE-FT: alpha = %.2f (%s)", chosen, "fixed" if self.fixed_alpha is not None else self.hparams.selection)
        if best:
            # The interpolated model is the saved result: the entry point reloads `best_model_path`.
            path = str(Path(best).with_name(f"wise_ft_alpha{chosen:.2f}.ckpt"))
            self.trainer.save_checkpoint(path, weights_only=True)
            self.trainer.checkpoint_callback.best_model_path = path

    def set_alpha(self, alpha: float) -> None:
        """Install θ(α) from θ₀ (`head_init`) and θ₁ (`head_finetuned`) as the backbone's head."""
        self.head.load_state_dict(interpolate(_head_state(self.head_init), _head_state(self.head_finetuned), alpha))
        self.alpha.fill_(alpha)

    def _validation_features(self) -> ValidationFeatures:
        dm = self.trainer.datamodule
        if getattr(dm, "extractor", None) is not None:
            feats, labels, part = dm.features("val")
            return ValidationFeatures(feats, labels, part)
        out: dict[str, list] = {"f": [], "y": [], "p": []}
        self.backbone.eval()
        for batch in dm.val_dataloader():
            batch = self.transfer_batch_to_device(batch, self.device, 0)
            out["f"].append(self._features(batch))
            out["y"].append(batch["label"])
            out["p"].append(batch.get("part", torch.zeros_like(batch["label"])))
        return ValidationFeatures(torch.cat(out["f"]), torch.cat(out["y"]), torch.cat(out["p"]))

    def _best_checkpoint_path(self) -> str | None:
        cb = getattr(self.trainer, "checkpoint_callback", None)
        path = getattr(cb, "best_model_path", "") if cb else ""
        return path if path and Path(path).is_file() else None

    def _head_prefix(self) -> str:
        for name, m in self.backbone.named_modules():
            if m is self.head:
                return name
        raise RuntimeError("the classifier head is not a submodule of the backbone")

    def _write_csv(self, df: pd.DataFrame, name: str) -> None:
        root = getattr(self.trainer, "default_root_dir", None) if self._trainer is not None else None
        if root and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            Path(root).mkdir(parents=True, exist_ok=True)
            df.to_csv(Path(root) / name, index=False)

    # ------------------------------------------------------------------ testing
    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        feats = self._features(batch)
        self.test_metrics[dataloader_idx].update(self.head(feats), batch["label"])
        # Accuracy for every α, reported after α was chosen (the plot), never used to choose it.
        theta0, theta1 = _head_state(self.head_init), _head_state(self.head_finetuned)
        sweep = self._test_sweep[self.test_split_names[dataloader_idx]]
        for i, a in enumerate(self.alphas):
            pred = functional_call(self.head, interpolate(theta0, theta1, a), (feats,)).argmax(1)
            sweep[i] += (int((pred == batch["label"]).sum()), len(pred))

    def on_test_epoch_end(self) -> None:
        for name, collection in zip(self.test_split_names, self.test_metrics):
            values = flatten_per_class(collection.compute(), self.class_names)
            recalls = [v for k, v in values.items() if k.startswith(f"test_{name}/recall/")]
            values[f"test_{name}/worst_class_acc"] = min(recalls) if recalls else float("nan")
            for key, value in values.items():
                self.log(key, value)
            collection.reset()
        self.log("alpha", float(self.alpha))
        rows = [{"split": n, "alpha": a, "acc": c / max(t, 1)} for n, s in self._test_sweep.items()
                for a, (c, t) in zip(self.alphas, s)]
        self._write_csv(pd.DataFrame(rows), "alpha_sweep_test.csv")
        self._test_sweep = {n: np.zeros((len(self.alphas), 2)) for n in self.test_split_names}
