"""LoRA fine-tuning of a causal LM into a caption perturber (`module=perturber_lora`), as LANCE fine-tuned
LLaMA-7B: rank 8, alpha 16, dropout 0.05 on the attention q, k, v projections; base model frozen;
loss on the response tokens only (the datamodule masks the prompt with -100).

Checkpoints hold the adapter only: `on_save_checkpoint` keeps the LoRA tensors of the state dict (a 7B
base is never copied into a .ckpt), and the adapter is exported as safetensors with peft's
`save_pretrained` into `<checkpoint dir>/adapter` whenever the monitored validation metric improves
(and `adapter_last` after every validation), ready for `generation/perturber=llm adapter_path=...`.

Validation also measures LANCE's perturber edit success on held-out captions (`val/edit_success`).
"""
from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from lightning import LightningModule
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchmetrics import MeanMetric

from src.generation.perturber_llm import LLMPerturber, evaluate_edit_success, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

LORA_MARKER = "lora_"


def _plain(value: Any) -> Any:
    """OmegaConf containers (what Hydra passes in) as plain dicts and lists."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def add_lora(
    model: torch.nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj"),
) -> torch.nn.Module:
    """Freeze `model` and wrap it with a peft LoRA adapter on `target_modules`."""
    from peft import LoraConfig, TaskType, get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none", task_type=TaskType.CAUSAL_LM
    )
    return get_peft_model(model, config)


class PerturberLoRAModule(LightningModule):
    """Causal LM + LoRA adapter trained on (instruction prompt, edited caption) pairs.

    Args:
        model_id: hub id or local folder of the base model (config key `module.model_id`).
        optimizer: partial optimizer (`_partial_: true`); it receives only the adapter parameters.
        scheduler: optional partial LR scheduler, stepped per optimizer step.
        lora: rank `r`, `alpha`, `dropout`, `target_modules`.
        dtype: dtype the base model is loaded in ("auto", "bfloat16", "float32", ...).
        gradient_checkpointing: trade compute for activation memory on large bases.
        eval_captions: held-out captions scored for edit success after each validation (0: off).
        eval_every_n_epochs: how often to run that (generation is slow on a 7B model).
        eval_generation: LLMPerturber sampling settings for the evaluation (greedy by default).
        monitor / mode: the metric whose improvement re-exports `adapter/`.
        model / tokenizer: already-built objects (tests, notebooks); they replace `model_id` loading.
        datamodule: train.py passes it; its tokenizer is reused for the edit-success evaluation.
    """

    def __init__(
        self,
        model_id: str | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        lora: dict | None = None,
        dtype: str | None = "auto",
        gradient_checkpointing: bool = False,
        eval_captions: int = 32,
        eval_every_n_epochs: int = 1,
        eval_batch_size: int = 8,
        eval_generation: dict | None = None,
        monitor: str = "val/loss",
        mode: str = "min",
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        datamodule: Any = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "model", "tokenizer", "datamodule"])
        if model is None:
            if not model_id:
                raise ValueError("module.model_id is required: a hub id (e.g. huggyllama/llama-7b) or a local folder")
            model = load_causal_lm(model_id, key="module.model_id", dtype=dtype)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
        self.model = add_lora(model, **(lora or {}))
        self.model_id = model_id
        self._tokenizer = tokenizer if tokenizer is not None else getattr(datamodule, "tokenizer", None) if datamodule else None
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=3e-4, weight_decay=0.0)
        self.scheduler_factory = scheduler
        self.eval_generation = {"do_sample": False, "max_new_tokens": 64, **(eval_generation or {})}
        if mode not in ("min", "max"):
            raise ValueError(f"module.mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best_score = math.inf if mode == "min" else -math.inf
        self.val_loss = MeanMetric()
        self.train_loss = MeanMetric()
        # the .ckpt state dict holds the adapter only, so loading it into a fresh module is non-strict
        self.strict_loading = False

    # ---------------------------------------------------------------------------------- plumbing
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            self._tokenizer = getattr(dm, "tokenizer", None) or load_tokenizer(self.model_id, key="module.model_id")
        return self._tokenizer

    def adapter_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    @staticmethod
    def _n_targets(batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())  # the causal shift drops the first position

    # ---------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.train_loss(loss.detach(), self._n_targets(batch))
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self(**batch).loss
        self.val_loss(loss, self._n_targets(batch))  # token-weighted over the whole val set
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def on_fit_start(self) -> None:
        report = getattr(getattr(self.trainer, "datamodule", None), "drop_report", None)
        if report is not None and self.logger is not None:
            self.logger.log_metrics({f"data/{k}": float(v) for k, v in report.as_dict().items()}, step=0)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = {"val/loss": float(self.val_loss.compute())}
        epoch = self.current_epoch
        if self.hparams.eval_captions > 0 and (epoch + 1) % max(1, self.hparams.eval_every_n_epochs) == 0:
            for key, value in self.edit_success().items():
                self.log(f"val/{key}", value)
                metrics[f"val/{key}"] = value
        self._export_adapters(metrics)

    # ---------------------------------------------------------------------------------- evaluation
    def edit_success(self, records: Sequence[dict] | None = None) -> dict[str, float]:
        """Shares of held-out outputs that parse, change one phrase of the requested type, avoid the label."""
        if records is None:
            dm = getattr(self.trainer, "datamodule", None)
            records = dm.heldout_records(self.hparams.eval_captions) if hasattr(dm, "heldout_records") else []
        if not records:
            return {}
        perturber = LLMPerturber(model=self.model, tokenizer=self.tokenizer, **self.eval_generation)
        summary, _ = evaluate_edit_success(perturber, records, batch_size=self.hparams.eval_batch_size, progress=False)
        return summary

    # ---------------------------------------------------------------------------------- adapters
    def save_adapter(self, directory: str | Path) -> Path:
        """Write the LoRA adapter (adapter_config.json + adapter_model.safetensors) to `directory`."""
        directory = Path(directory)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        return directory

    def _checkpoint_dir(self) -> Path | None:
        if self._trainer is None or getattr(self.trainer, "fast_dev_run", False):
            return None
        cb = self.trainer.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return Path(cb.dirpath)
        return Path(self.trainer.default_root_dir) / "checkpoints"

    def _export_adapters(self, metrics: dict[str, float]) -> None:
        directory = self._checkpoint_dir()
        if directory is None or not self.trainer.is_global_zero:
            return
        self.save_adapter(directory / "adapter_last")
        score = metrics.get(self.monitor)
        if score is None:
            return
        better = score < self.best_score if self.mode == "min" else score > self.best_score
        if better:
            self.best_score = score
            self.save_adapter(directory / "adapter")
            log.info("exported adapter (%s=%.4f) to %s", self.monitor, score, directory / "adapter")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if LORA_MARKER in k}
        checkpoint["adapter_best_score"] = float(self.best_score)
        if "hyper_parameters" in checkpoint:  # plain containers, so torch.load(weights_only=True) reads it
            checkpoint["hyper_parameters"] = _plain(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.best_score = checkpoint.get("adapter_best_score", self.best_score)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Accepts adapter-only state dicts (what the checkpoints hold): strict about the adapter tensors,
        silent about the frozen base, which comes from `model_id`."""
        adapter_keys = {k for k in self.state_dict() if LORA_MARKER in k}
        if strict and adapter_keys and set(state_dict) == adapter_keys:
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---------------------------------------------------------------------------------- optim
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.adapter_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
