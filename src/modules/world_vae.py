"""world_vae: a diffusers `AutoencoderKL` trained on Counterfactory World images (32x32x3 -> 16x16x4 by
default): pixel reconstruction (MSE + L1) plus a small KL term, as in Stable Diffusion's VAE minus the
adversarial and perceptual losses (too costly here).

Exported with `save_pretrained` (config.json + diffusion_pytorch_model.safetensors). At export the
latent `scaling_factor` is set to 1 / std of the training latents, the way SD's 0.18215 was chosen, so
the diffusion model sees unit-variance latents.

`init_from=<vae folder> train_encoder=false` fine-tunes the decoder alone (as SD's ft-MSE decoder): the
latent space, its scaling factor and so any diffusion model trained on it stay valid.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F

from src.modules.world_clip import plain, with_scheduler

log = logging.getLogger(__name__)


def build_vae(vae_cfg: dict):
    from diffusers import AutoencoderKL

    cfg = dict(vae_cfg)
    n = len(cfg["block_out_channels"])
    cfg.setdefault("down_block_types", ["DownEncoderBlock2D"] * n)
    cfg.setdefault("up_block_types", ["UpDecoderBlock2D"] * n)
    cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    cfg["down_block_types"] = tuple(cfg["down_block_types"])
    cfg["up_block_types"] = tuple(cfg["up_block_types"])
    return AutoencoderKL(**cfg)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x.clamp(-1, 1) - y) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean()


class WorldVaeModule(L.LightningModule):
    def __init__(self, vae_cfg: dict, optimizer: Callable, scheduler: Callable | None = None,
                 kl_weight: float = 1e-4, l1_weight: float = 0.5, export_dir: str | None = None,
                 init_from: str | None = None, train_encoder: bool = True) -> None:
        super().__init__()
        # Plain containers in the checkpoint's hparams: the best epoch reloads with weights_only=True.
        vae_cfg = plain(vae_cfg)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        if init_from:
            from diffusers import AutoencoderKL

            self.vae = AutoencoderKL.from_pretrained(init_from)
        else:
            self.vae = build_vae(vae_cfg)
        self.train_encoder = train_encoder
        if not train_encoder:
            if not init_from:
                raise ValueError("module.train_encoder=false needs module.init_from=<trained vae folder>")
            self.vae.encoder.requires_grad_(False)
            self.vae.quant_conv.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.kl_weight = kl_weight
        self.l1_weight = l1_weight
        self.export_dir = export_dir

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        x = batch["image"] * 2 - 1
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            posterior = self.vae.encode(x).latent_dist
        z = posterior.sample() if stage == "train" else posterior.mode()
        rec = self.vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        l1 = F.l1_loss(rec, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, comparable to the reconstruction terms
        loss = mse + self.l1_weight * l1 + (self.kl_weight * kl if self.train_encoder else 0.0)
        bs = len(x)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"{stage}/kl", kl, batch_size=bs)
        self.log(f"{stage}/psnr", psnr(rec.detach(), x), prog_bar=True, batch_size=bs)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    @torch.no_grad()
    def latent_scaling_factor(self, loader, max_batches: int = 8) -> float:
        zs = []
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            zs.append(self.vae.encode(batch["image"].to(self.device) * 2 - 1).latent_dist.mode())
        std = torch.cat(zs).std().item()
        return 1.0 / std if std > 0 and math.isfinite(std) else 1.0

    def on_fit_end(self) -> None:
        if not self.export_dir or self.trainer.fast_dev_run:
            return
        self.vae.eval()
        if self.train_encoder:  # a frozen encoder keeps its latent space and scaling factor
            scale = self.latent_scaling_factor(self.trainer.datamodule.train_dataloader())
            self.vae.register_to_config(scaling_factor=scale)
        scale = self.vae.config.scaling_factor
        self.vae.save_pretrained(self.export_dir, safe_serialization=True)
        log.info("exported world_vae to %s (latent scaling factor %.4f)", self.export_dir, scale)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        return with_scheduler(self, optimizer, self.scheduler_factory)
