"""Debugging a classifier with its global minimum-correct filters (Tariq & Zia).

    L_d = L_CE - lambda_mc * L_MC + lambda_nonmc * L_nonMC
    L_MC    = sum_k |MC_y(k) * f(k)|        (activation of the label's global MC filters: rewarded)
    L_nonMC = sum_k |(1 - MC_y(k)) * f(k)|  (activation of every other filter: penalised)
    f = thresholded-ReLU(sigmoid(g), t)      g = GAP of the last conv map, t = 0.5

Sign convention: the paper's summary writes L_MC with a leading minus *and* subtracts it in L_d; taken
literally that penalises the MC filters, the opposite of the method's stated aim (strengthen the
class's MC filters, weaken the rest). We implement the aim: L_MC is the positive sum above and
L_d subtracts it.

Differentiable relaxation of the threshold: thresholded-ReLU(u, t) = u * 1[u > t] jumps at t. We use
the gate u * sigmoid((u - t) / temperature) (temperature 0.02 by default): it equals the hard
threshold away from t, and filters just below t still get a gradient instead of none.
`temperature=0` gives the hard version (its gradient is that of u above t, zero below).
Note that for ReLU networks g >= 0, so sigmoid(g) >= 0.5: the threshold at 0.5 switches off
exactly the filters that are silent on the image, and the gate decides how fast they turn on.

With lambda_mc = lambda_nonmc = 0 this is continued cross-entropy fine-tuning: the paper's control.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from src.evaluation.filter_debugging import load_global_filters
from src.modules.cfe import filter_activations, load_classifier_weights
from src.modules.classifier import ClassifierModule

log = logging.getLogger(__name__)


def thresholded_relu(u: torch.Tensor, threshold: float = 0.5, temperature: float = 0.02) -> torch.Tensor:
    """u where u > threshold, else 0; softened by a sigmoid gate of width `temperature` (0: hard)."""
    if temperature <= 0:
        return u * (u > threshold).to(u.dtype)
    return u * torch.sigmoid((u - threshold) / temperature)


def mc_loss_terms(g: torch.Tensor, mc: torch.Tensor, threshold: float = 0.5, temperature: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_MC, L_nonMC), each averaged over the batch. g: B x K GAP features, mc: B x K MC indicator of each row's class."""
    f = thresholded_relu(torch.sigmoid(g), threshold, temperature)
    l_mc = (mc * f).abs().sum(1).mean()
    l_nonmc = ((1 - mc) * f).abs().sum(1).mean()
    return l_mc, l_nonmc


class MCDebugModule(ClassifierModule):
    """Fine-tunes the classifier at `classifier_path` with L_d, using the global MC filters at
    `global_filters_path` (written by `train.py experiment=cfe`). Test metrics are the classifier's."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: Callable,
        classifier_path: str | None = None,
        global_filters_path: str | None = None,
        lambda_mc: float = 0.001,
        lambda_nonmc: float = 0.00005,
        threshold: float = 0.5,
        temperature: float = 0.02,
        freq_threshold: float = 0.15,
        scheduler: Callable | None = None,
        class_names: Sequence[str] | None = None,
        test_split_names: Sequence[str] = ("test",),
    ) -> None:
        # Plain lists, not the ListConfigs Hydra passes: checkpoints must load with weights_only=True.
        class_names = [str(c) for c in class_names] if class_names else None
        test_split_names = [str(n) for n in test_split_names]
        super().__init__(backbone, num_classes, optimizer, scheduler, class_names, 0.0, test_split_names)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        if classifier_path:
            load_classifier_weights(backbone, classifier_path)
        else:
            log.warning("module.classifier_path is empty: debugging an untrained classifier")
        uses_filters = lambda_mc != 0 or lambda_nonmc != 0
        num_filters = int(getattr(backbone, "num_features"))
        if global_filters_path:
            mc = load_global_filters(global_filters_path).filters(freq_threshold).float()
            if mc.shape != (num_classes, num_filters):
                raise ValueError(f"module.global_filters_path={global_filters_path} holds {tuple(mc.shape)} filters; "
                                 f"the classifier has {num_classes} classes x {num_filters} filters")
        elif uses_filters:
            raise ValueError("module.global_filters_path is required when lambda_mc or lambda_nonmc is non-zero "
                             "(run `train.py experiment=cfe` and pass its checkpoints/global_mc_filters.safetensors)")
        else:
            mc = torch.zeros(num_classes, num_filters)
        self.register_buffer("global_mc", mc, persistent=False)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        feats = self.backbone.forward_features(x)
        logits = self.backbone.forward_head(feats)
        ce = F.cross_entropy(logits, y)
        l_mc, l_nonmc = mc_loss_terms(filter_activations(feats), self.global_mc[y], self.hparams.threshold,
                                      self.hparams.temperature)
        loss = ce - self.hparams.lambda_mc * l_mc + self.hparams.lambda_nonmc * l_nonmc
        self.train_metrics["acc@1"](logits, y)
        self.log_dict({"train/ce": ce, "train/l_mc": l_mc, "train/l_nonmc": l_nonmc})
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc@1", self.train_metrics["acc@1"], on_step=False, on_epoch=True, prog_bar=True)
        return loss
