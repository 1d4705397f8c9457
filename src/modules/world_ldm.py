"""world_ldm: a diffusers `UNet2DConditionModel` trained on world_vae latents, conditioned on the per-token
hidden states of a `transformers.CLIPTextModel` (open_clip's BPE ids), epsilon prediction with a DDPM
noise schedule, and caption dropout so that classifier-free guidance works.

The text encoder is either world_clip's text tower copied and frozen (`clip_path`), or, with
`clip_path: null`, a CLIPTextModel of `text_encoder_cfg` trained jointly with the UNet (as Imagen-style
joint training; no dependency on world_clip finishing first).

Exported as a `StableDiffusionPipeline` folder (unet, vae, text_encoder, tokenizer, DDIM scheduler;
safetensors): `StableDiffusionPipeline.from_pretrained(folder)` and the generation engine's
`DiffusionModel.from_pretrained(folder)` load it like a hub model. The exported UNet is the EMA copy.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F

from src.modules.world_clip import plain, with_scheduler

log = logging.getLogger(__name__)

# Stable Diffusion's noise schedule; DDIM settings as the generation engine expects them.
SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
DDIM = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading"}


def build_unet(unet_cfg: dict):
    from diffusers import UNet2DConditionModel

    cfg = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(unet_cfg).items()}
    return UNet2DConditionModel(**cfg)


def compact_json(path: Path) -> None:
    """Rewrite a JSON file without indentation (the tokenizer's 3.6 MB become 1.7 MB; same content)."""
    if path.is_file():
        path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False,
                                   separators=(",", ":")), encoding="utf-8")


class WorldLdmModule(L.LightningModule):
    def __init__(self, unet_cfg: dict, vae_path: str, clip_path: str | None, optimizer: Callable,
                 scheduler: Callable | None = None, text_encoder_cfg: dict | None = None,
                 caption_dropout: float = 0.1, ema_decay: float = 0.995, export_dir: str | None = None,
                 init_from: str | None = None) -> None:
        super().__init__()
        # Plain containers in the checkpoint's hparams: the best epoch reloads with weights_only=True.
        unet_cfg = plain(unet_cfg)
        text_encoder_cfg = plain(text_encoder_cfg)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        from diffusers import AutoencoderKL, DDPMScheduler

        from src.world.models import clip_tokenizer, load_world_clip, text_encoder_from_open_clip

        if clip_path:
            clip, _, _ = load_world_clip(clip_path)
            self.text_encoder = text_encoder_from_open_clip(clip).requires_grad_(False)
        elif text_encoder_cfg:
            from transformers import CLIPTextConfig, CLIPTextModel

            cfg = {"vocab_size": 49408, "hidden_act": "gelu", "bos_token_id": 49406, "eos_token_id": 49407,
                   "pad_token_id": 49407, **dict(text_encoder_cfg)}
            self.text_encoder = CLIPTextModel(CLIPTextConfig(**cfg))
        else:
            raise ValueError("module.clip_path or module.text_encoder_cfg must be set (world_clip folder, or a "
                             "CLIPTextConfig dict for a jointly trained text encoder)")
        self.train_text_encoder = not clip_path
        self.tokenizer = clip_tokenizer(self.text_encoder.config.max_position_embeddings)
        self.vae = AutoencoderKL.from_pretrained(vae_path).eval().requires_grad_(False)
        unet_cfg = dict(unet_cfg)
        unet_cfg.setdefault("cross_attention_dim", self.text_encoder.config.hidden_size)
        unet_cfg.setdefault("in_channels", self.vae.config.latent_channels)
        unet_cfg.setdefault("out_channels", self.vae.config.latent_channels)
        unet_cfg.setdefault("sample_size", self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1))
        if init_from:  # continue from an exported pipeline's UNet (e.g. after world_clip changed)
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel.from_pretrained(init_from, subfolder="unet")
        else:
            self.unet = build_unet(unet_cfg)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        # A jointly trained text encoder is averaged too: the EMA UNet must see the EMA encoder's states.
        self.ema_text_encoder = (copy.deepcopy(self.text_encoder).requires_grad_(False)
                                 if self.train_text_encoder else self.text_encoder)
        self.noise_scheduler = DDPMScheduler(**SCHEDULE)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.caption_dropout = caption_dropout
        self.ema_decay = ema_decay
        self.export_dir = export_dir

    # ------------------------------------------------------------------ conditioning and latents
    def encode_text(self, captions: Sequence[str], ema: bool = False) -> torch.Tensor:
        ids = self.tokenizer(list(captions), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        encoder = self.ema_text_encoder if ema else self.text_encoder
        with torch.set_grad_enabled(self.train_text_encoder and not ema and torch.is_grad_enabled()):
            return encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        dist = self.vae.encode(images * 2 - 1).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.vae.config.scaling_factor

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        ema = stage != "train"
        unet = self.ema_unet if ema else self.unet
        captions = list(batch["caption"])
        if stage == "train" and self.caption_dropout > 0:
            drop = torch.rand(len(captions)) < self.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        latents = self.encode_images(batch["image"], sample=stage == "train")
        noise = torch.randn_like(latents)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(latents),), device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=self.encode_text(captions, ema=ema)).sample
        loss = F.mse_loss(pred, noise)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=len(latents))
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # EMA with warm-up: early weights are forgotten quickly, late ones averaged.
        step = self.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            pairs = [(self.ema_unet, self.unet)]
            if self.train_text_encoder:
                pairs.append((self.ema_text_encoder, self.text_encoder))
            for ema, live in pairs:
                for e, p in zip(ema.parameters(), live.parameters()):
                    e.lerp_(p, 1 - decay)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        torch.manual_seed(batch_idx)  # the same noise every epoch: comparable val losses
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def pipeline(self):
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.ema_text_encoder, tokenizer=self.tokenizer,
                                       unet=self.ema_unet, scheduler=DDIMScheduler(**SCHEDULE, **DDIM),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def on_fit_end(self) -> None:
        if self.export_dir and not self.trainer.fast_dev_run:
            self.pipeline().save_pretrained(self.export_dir, safe_serialization=True)
            compact_json(Path(self.export_dir) / "tokenizer" / "tokenizer.json")
            log.info("exported world_ldm pipeline to %s", self.export_dir)

    def configure_optimizers(self) -> Any:
        params = list(self.unet.parameters()) + (list(self.text_encoder.parameters()) if self.train_text_encoder else [])
        optimizer = self.optimizer_factory(params=[p for p in params if p.requires_grad])
        return with_scheduler(self, optimizer, self.scheduler_factory)
