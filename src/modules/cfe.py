"""Counterfactual-filter explainer (CFE, Tariq, Zia & Ghafoor 2022) over a frozen classifier's last conv layer.

For an image and a class the explainer predicts one value per filter of the last conv layer:

- minimum-correct (MC) filters for the predicted class: a mask m in [0, 1]^K; the classifier's head
  on the masked map F * m must still predict the class (the filters that must stay on);
- minimum-incorrect (MI) filters for a target class: a non-negative boost s in R+^K; the head on the
  altered map F + s (each filter's map raised by s_k) must predict the target class (the filters whose
  change flips the decision). The boost is additive because a multiplicative one cannot switch on a
  filter that is silent on the image, and the target class's filters usually are.

Both are trained with a logits loss (cross-entropy of the altered logits towards the class) plus
`sparsity_weight` (lambda = 2) times the mean mask value. The backbone is frozen and only its
`forward_features`/`forward_head` are used, so any timm-contract CNN works.

Testing also builds the per-class global MC filters from the training split (see
`src.evaluation.filter_debugging`), reports faithfulness and misclassification detection per test
split, and writes `checkpoints/explainer.safetensors`, `checkpoints/global_mc_filters.safetensors`
and `filter_debugging.json` into `output_dir`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from src.evaluation.filter_debugging import (
    PAPER_RULES,
    GlobalMCFilters,
    detection_report,
    format_detection_table,
    save_global_filters,
)

log = logging.getLogger(__name__)


def load_classifier_weights(backbone: nn.Module, path: str | os.PathLike, key: str = "module.classifier_path") -> nn.Module:
    """Load a trained classifier (train.py's classifier.safetensors, or a Lightning .ckpt/.pth read with
    weights_only=True) into `backbone`, head included; any mismatch fails naming `key`."""
    path = Path(path) if path else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist; train one with "
                                f"`python train.py experiment=baseline` (checkpoints/classifier.safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - rethrown naming the key
            raise RuntimeError(f"{key}={path} could not be read as a weights-only checkpoint: {e}") from e
        state = state.get("state_dict", state)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{key}={path} does not fit the configured `model` (pick the model config the "
                           f"classifier was trained with): {str(e)[:400]}") from e
    return backbone


def filter_activations(feats: torch.Tensor) -> torch.Tensor:
    """Per-filter activation: global average over space of a B x K x H x W map."""
    if feats.ndim != 4:
        raise ValueError(f"expected a B x K x H x W conv feature map from forward_features, got {tuple(feats.shape)}; "
                         f"the filter explainer needs a CNN backbone")
    return feats.mean(dim=(2, 3))


class FilterMaskExplainer(nn.Module):
    """Pooled filter activations + a class embedding -> per-filter MC mask and MI boost."""

    def __init__(self, num_filters: int, num_classes: int, hidden: int = 256, mc_init: float = 2.0,
                 mi_init: float = -3.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * num_filters)
        self.trunk = nn.Linear(2 * num_filters, hidden)
        self.class_embedding = nn.Embedding(num_classes, hidden)
        self.mc_head = nn.Linear(hidden, num_filters)
        self.mi_head = nn.Linear(hidden, num_filters)
        # Start with every filter on and nothing boosted: the prediction holds, sparsity then prunes.
        for head, bias in ((self.mc_head, mc_init), (self.mi_head, mi_init)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, bias)

    def _hidden(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1)
        return F.relu(self.trunk(self.norm(pooled)) + self.class_embedding(classes))

    def mc_mask(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """B x K in (0, 1): which filters must stay on for `classes`."""
        return torch.sigmoid(self.mc_head(self._hidden(feats, classes)))

    def mi_boost(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """B x K >= 0: how much to raise each filter's activation to reach `classes`."""
        return F.softplus(self.mi_head(self._hidden(feats, classes)))


def _masked(feats: torch.Tensor, per_filter: torch.Tensor) -> torch.Tensor:
    return feats * per_filter[:, :, None, None]


def _boosted(feats: torch.Tensor, per_filter: torch.Tensor) -> torch.Tensor:
    return feats + per_filter[:, :, None, None]


class CFEExplainerModule(L.LightningModule):
    """Trains a `FilterMaskExplainer` on a frozen classifier loaded from `classifier_path`."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable,
        classifier_path: str | None = None,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        test_split_names: Sequence[str] = ("test",),
        sparsity_weight: float = 2.0,
        mi_weight: float = 1.0,
        hidden: int = 256,
        mask_threshold: float = 0.5,
        mi_threshold: float = 0.5,
        confidence_threshold: float = 0.9,
        global_freq_threshold: float = 0.15,
        max_accumulate_batches: int | None = None,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Plain lists, not the ListConfigs Hydra passes: checkpoints must load with weights_only=True.
        class_names = [str(c) for c in class_names] if class_names else None
        test_split_names = [str(n) for n in test_split_names]
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        if classifier_path:
            load_classifier_weights(backbone, classifier_path)
        else:
            log.warning("module.classifier_path is empty: explaining an untrained classifier")
        self.backbone = backbone.requires_grad_(False).eval()
        num_filters = int(getattr(backbone, "num_features"))
        self.explainer = FilterMaskExplainer(num_filters, num_classes, hidden)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.test_split_names = list(test_split_names)
        self.global_filters: GlobalMCFilters | None = None
        self._test_rows: dict[int, list[dict]] = {}
        self.reports: dict[str, dict] = {}

    # The classifier stays frozen and in eval mode (no dropout, fixed BatchNorm) whatever Lightning does.
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def set_test_splits(self, names: Sequence[str]) -> None:
        self.test_split_names = list(names)

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature map, logits) of the frozen classifier."""
        feats = self.backbone.forward_features(x)
        return feats, self.backbone.forward_head(feats)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(feats)

    def losses(self, feats: torch.Tensor, preds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits + sparsity losses for MC (towards the prediction) and MI (towards a random other class)."""
        lam = self.hparams.sparsity_weight
        m = self.explainer.mc_mask(feats, preds)
        mc_logits = self.head(_masked(feats, m))
        mc_logit_loss = F.cross_entropy(mc_logits, preds)
        mc_sparsity = m.mean()
        targets = (preds + torch.randint(1, self.hparams.num_classes, preds.shape, device=preds.device)) % self.hparams.num_classes
        s = self.explainer.mi_boost(feats, targets)
        mi_logits = self.head(_boosted(feats, s))
        mi_logit_loss = F.cross_entropy(mi_logits, targets)
        mi_sparsity = s.mean()
        loss = mc_logit_loss + lam * mc_sparsity + self.hparams.mi_weight * (mi_logit_loss + lam * mi_sparsity)
        return {"loss": loss, "mc_logits": mc_logit_loss, "mc_sparsity": mc_sparsity, "mi_logits": mi_logit_loss,
                "mi_sparsity": mi_sparsity, "mc_mask": m, "mi_boost": s, "mi_targets": targets}

    def hard_metrics(self, feats: torch.Tensor, preds: torch.Tensor, out: dict) -> dict[str, torch.Tensor]:
        """With binary masks: does keeping only the MC filters hold the prediction, does boosting the MI
        filters flip it, and how many filters each takes."""
        mc = (out["mc_mask"] > self.hparams.mask_threshold).float()
        mi = (out["mi_boost"] > self.hparams.mi_threshold).float()
        keep = (self.head(_masked(feats, mc)).argmax(1) == preds).float().mean()
        flip = (self.head(_boosted(feats, out["mi_boost"] * mi)).argmax(1) == out["mi_targets"]).float().mean()
        return {"mc_keep": keep, "mc_count": mc.sum(1).mean(), "mi_flip": flip, "mi_count": mi.sum(1).mean()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        feats, logits = self.classify(batch["image"])
        out = self.losses(feats, logits.argmax(1))
        for k in ("mc_logits", "mc_sparsity", "mi_logits", "mi_sparsity"):
            self.log(f"train/{k}", out[k])
        self.log("train/loss", out["loss"], prog_bar=True)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        feats, logits = self.classify(batch["image"])
        preds = logits.argmax(1)
        out = self.losses(feats, preds)
        self.log("val/loss", out["loss"], prog_bar=True)
        for k, v in self.hard_metrics(feats, preds, out).items():
            self.log(f"val/{k}", v, prog_bar=k == "mc_keep")

    # ---- testing: global filters, faithfulness, detection ----

    def on_test_start(self) -> None:
        if self.global_filters is None:
            self.global_filters = self.accumulate_global_filters(self.trainer.datamodule.train_dataloader())
        self._global_binary = self.global_filters.filters(self.hparams.global_freq_threshold).to(self.device)
        self._test_rows = {}

    @torch.no_grad()
    def local_mc(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.explainer.mc_mask(feats, classes) > self.hparams.mask_threshold

    @torch.no_grad()
    def accumulate_global_filters(self, loader) -> GlobalMCFilters:
        """Global MC filters from confident (> tau) correct predictions on `loader` (the training split)."""
        was_training = self.training
        self.eval()
        acc = GlobalMCFilters(self.hparams.num_classes, self.explainer.mc_head.out_features,
                              self.hparams.confidence_threshold)
        limit = self.hparams.max_accumulate_batches
        if self.trainer is not None and getattr(self.trainer, "fast_dev_run", False):
            limit = 1
        kept = 0
        for i, batch in enumerate(tqdm(loader, desc="global MC filters", leave=False, total=limit)):
            if limit is not None and i >= limit:
                break
            x, y = batch["image"].to(self.device), batch["label"].to(self.device)
            feats, logits = self.classify(x)
            conf, preds = logits.softmax(1).max(1)
            kept += acc.update(self.local_mc(feats, preds), filter_activations(feats), preds, y, conf)
        log.info("global MC filters from %d confident correct training images (tau=%.2f)", kept,
                 self.hparams.confidence_threshold)
        self.train(was_training)
        return acc

    @torch.no_grad()
    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch["image"], batch["label"]
        feats, logits = self.classify(x)
        probs = logits.softmax(1)
        conf, preds = probs.max(1)
        rows = torch.arange(len(y), device=y.device)
        mc = self.local_mc(feats, preds)
        # Faithfulness 1: switch off the image's MC filters vs as many random filters.
        n_mc = mc.sum(1, keepdim=True)
        rand_rank = torch.rand(mc.shape, device=mc.device).argsort(1).argsort(1)
        rand = rand_rank < n_mc
        p_no_mc = self.head(_masked(feats, (~mc).float())).softmax(1)[rows, preds]
        p_no_rand = self.head(_masked(feats, (~rand).float())).softmax(1)[rows, preds]
        keep_only = self.head(_masked(feats, mc.float())).argmax(1) == preds
        # Faithfulness 2: switch off one class's global MC filters at a time (B x C predictions).
        off = torch.stack([self.head(_masked(feats, (~g).float().expand(len(y), -1))).argmax(1)
                           for g in self._global_binary], dim=1)
        # MI: boost the MI filters towards a random other class.
        targets = (preds + torch.randint(1, self.hparams.num_classes, preds.shape, device=preds.device)) % self.hparams.num_classes
        s = self.explainer.mi_boost(feats, targets)
        mi = s > self.hparams.mi_threshold
        flip = self.head(_boosted(feats, s * mi)).argmax(1) == targets
        self._test_rows.setdefault(dataloader_idx, []).append({
            "label": y.cpu(), "pred": preds.cpu(), "conf": conf.cpu(), "mc": mc.cpu(),
            "drop_mc": (conf - p_no_mc).cpu(), "drop_rand": (conf - p_no_rand).cpu(), "keep_only": keep_only.cpu(),
            "off": off.cpu(), "mi_flip": flip.cpu(), "mi_count": mi.sum(1).cpu(),
        })

    def on_test_epoch_end(self) -> None:
        for idx, chunks in sorted(self._test_rows.items()):
            split = self.test_split_names[idx] if idx < len(self.test_split_names) else str(idx)
            cat = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
            report = self.split_report(cat)
            self.reports[split] = report
            prefix = f"test_{split}"
            for k in ("acc@1", "mc_count", "mc_keep", "drop_mc", "drop_rand", "global_drop_own", "global_drop_other",
                      "mi_flip", "mi_count"):
                self.log(f"{prefix}/{k}", float(report[k]))
            for row in report["detection"]:
                name = row["rule"].replace(" ", "_").replace("<", "lt")
                for k in ("detected_pct", "precision", "auroc", "msp_precision", "msp_auroc", "false_flags"):
                    self.log(f"{prefix}/detect/{name}/{k}", float(row[k]))
            log.info("%s\n%s", split, format_detection_table(report["detection"], title=f"{split}: misclassification detection"))
        self._test_rows = {}
        self.export()

    def split_report(self, cat: dict[str, torch.Tensor]) -> dict:
        labels, preds, off = cat["label"], cat["pred"], cat["off"]
        C = self.hparams.num_classes

        def recall(p: torch.Tensor) -> torch.Tensor:
            hits = torch.zeros(C).index_add_(0, labels, (p == labels).float())
            return hits / torch.bincount(labels, minlength=C).clamp_min(1)

        base = recall(preds)
        present = torch.bincount(labels, minlength=C) > 0
        drops = torch.stack([base - recall(off[:, c]) for c in range(C)])  # [disabled class, measured class]
        own = drops.diagonal()[present]
        other_mask = present[None, :] & ~torch.eye(C, dtype=torch.bool)
        other = torch.stack([drops[c][other_mask[c]].mean() for c in range(C)])[present]
        rows = detection_report(self.global_filters, cat["mc"], preds, labels, cat["conf"], PAPER_RULES)
        return {
            "n": len(labels), "acc@1": float((preds == labels).float().mean()),
            "mc_count": float(cat["mc"].sum(1).float().mean()), "mc_keep": float(cat["keep_only"].float().mean()),
            "drop_mc": float(cat["drop_mc"].mean()), "drop_rand": float(cat["drop_rand"].mean()),
            "global_drop_own": float(own.mean()), "global_drop_other": float(other.mean()),
            "global_drop_per_class": {self.class_names[c]: {"own": float(drops[c, c]),
                                                            "other": float(drops[c][other_mask[c]].mean())}
                                      for c in range(C) if present[c]},
            "mi_flip": float(cat["mi_flip"].float().mean()), "mi_count": float(cat["mi_count"].float().mean()),
            "detection": [r.as_dict() for r in rows],
        }

    def export(self) -> None:
        """Explainer weights, global filters and the reports, for mc_debug and the benchmark."""
        out = self.hparams.output_dir
        if not out or self.global_filters is None or self.trainer.fast_dev_run or self.global_rank != 0:
            return
        from safetensors.torch import save_file

        ckpt = Path(out) / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.explainer.state_dict().items()},
                  str(ckpt / "explainer.safetensors"))
        save_global_filters(self.global_filters, ckpt / "global_mc_filters.safetensors")
        (Path(out) / "filter_debugging.json").write_text(json.dumps(
            {"global_freq_threshold": self.hparams.global_freq_threshold,
             "global_filter_counts": self.global_filters.filters(self.hparams.global_freq_threshold).sum(1).tolist(),
             "train_images_accumulated": int(self.global_filters.counts.sum()),
             "splits": self.reports}, indent=2))
        log.info("wrote explainer, global MC filters and filter_debugging.json to %s", out)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.explainer.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer=optimizer)}
