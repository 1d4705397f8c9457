"""The text-to-image diffusion model the inverters and editors share: UNet, optional VAE, text encoder,
tokenizer and DDIM scheduler, plus the one place that counts UNet evaluations.

Works for latent models (with a VAE) and pixel-space ones (no VAE), and for epsilon-, v- and
sample-prediction UNets (the scheduler does the conversion).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from src.generation.pretrained import load_pretrained
from src.generation.types import Cost


@dataclass
class UNetCounter:
    """UNet forward calls (one batched call counts once) and samples evaluated (batch rows)."""

    calls: int = 0
    samples: int = 0

    def snapshot(self) -> tuple[int, int, float]:
        return self.calls, self.samples, time.perf_counter()

    def since(self, snap: tuple[int, int, float]) -> Cost:
        calls, samples, t0 = snap
        return Cost(unet_evals=self.calls - calls, seconds=time.perf_counter() - t0,
                    extra={"unet_samples": self.samples - samples})


class DiffusionModel:
    """A text-conditioned DDIM diffusion model. Build with `from_pretrained` or from parts."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, num_inference_steps: int = 50,
                 image_size: int | None = None, device: str = "cpu", dtype: str = "float32",
                 model_id: str = "in-memory") -> None:
        from diffusers import DDIMScheduler

        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.unet = self._place(unet)
        self.text_encoder = self._place(text_encoder)
        self.vae = self._place(vae) if vae is not None else None
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.model_id = model_id
        self.counter = UNetCounter()
        if image_size is None:
            sample = self.unet.config.sample_size
            sample = sample[0] if isinstance(sample, (list, tuple)) else sample
            image_size = sample * self.vae_scale if self.vae is not None else sample
        self.image_size = int(image_size)
        self.scheduler.set_timesteps(self.num_inference_steps, device=self.device)

    def _place(self, module):
        module = module.to(self.device)
        if next(module.parameters()).dtype != self.dtype:
            module = module.to(self.dtype)
        return module.eval().requires_grad_(False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model_id: str = "CompVis/stable-diffusion-v1-4", num_inference_steps: int = 50,
                        device: str = "cpu", dtype: str = "float32", image_size: int | None = None,
                        config_key: str = "generation.diffusion.model_id") -> "DiffusionModel":
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        def load(path: str):
            return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)

        pipe = load_pretrained(load, model_id, config_key)
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
        return cls(pipe.unet, pipe.text_encoder, pipe.tokenizer, scheduler, vae=pipe.vae,
                   num_inference_steps=num_inference_steps, device=device, dtype=dtype, image_size=image_size,
                   model_id=model_id)

    # ------------------------------------------------------------------ properties
    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps  # descending: sampling order

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_tokens, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    # ------------------------------------------------------------------ images <-> latents
    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        return x.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        x = self.image_to_tensor(image)
        if self.vae is None:
            return x
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        x = latents if self.vae is None else self.vae.decode(latents / self.vae.config.scaling_factor).sample
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in x]

    # ------------------------------------------------------------------ the UNet
    def unet_forward(self, latents: torch.Tensor, t, embeddings: torch.Tensor) -> torch.Tensor:
        self.counter.calls += 1
        self.counter.samples += latents.shape[0]
        return self.unet(latents, t, encoder_hidden_states=embeddings).sample

    def guided_prediction(self, latents: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor,
                          guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance in one batched call ([uncond; cond]); guidance 1 needs only cond."""
        if guidance_scale == 1.0:
            return self.unet_forward(latents, t, cond)
        out = self.unet_forward(torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
        u, c = out.chunk(2)
        return u + guidance_scale * (c - u)

    def step(self, model_output: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
        """One deterministic DDIM sampling step t -> previous timestep (differentiable)."""
        return self.scheduler.step(model_output, t, latents, eta=0.0, return_dict=False)[0]

    def inverse_scheduler(self):
        from diffusers import DDIMInverseScheduler

        cfg = dict(self.scheduler.config)
        if cfg.get("timestep_spacing") not in ("leading", "trailing"):
            cfg["timestep_spacing"] = "leading"  # the inverse scheduler supports these two only
        inv = DDIMInverseScheduler.from_config(cfg)
        inv.set_timesteps(self.num_inference_steps, device=self.device)
        if not torch.equal(inv.timesteps.flip(0).cpu(), self.timesteps.cpu()):
            raise ValueError("generation.diffusion: inverse and forward DDIM timesteps differ; use "
                             "timestep_spacing 'leading' or 'trailing' in the scheduler config")
        return inv
