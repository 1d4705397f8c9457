"""DDIM inversion: run the deterministic DDIM ODE backwards from the image latent to noise
(diffusers' `DDIMInverseScheduler`). Exact when the UNet's prediction does not depend on the latent;
with guidance > 1 reconstruction drifts, which null-text inversion corrects."""
from __future__ import annotations

import torch
from PIL import Image

from src.generation.diffusion import DiffusionModel
from src.generation.inversion import Inversion


@torch.no_grad()
def ddim_trajectory(diffusion: DiffusionModel, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                    guidance_scale: float = 1.0) -> torch.Tensor:
    """Latents x_0 .. x_T ((T + 1) x C x H x W) of the DDIM inversion of `x0` (1 x C x H x W)."""
    inverse = diffusion.inverse_scheduler()
    latents = [x0]
    x = x0
    for t in inverse.timesteps:
        eps = diffusion.guided_prediction(x, t, cond, uncond, guidance_scale)
        x = inverse.step(eps, t, x, return_dict=False)[0]
        latents.append(x)
    return torch.cat(latents)


class DDIMInverter:
    """Plain DDIM inversion; sampling then uses the empty-prompt embedding as the null embedding."""

    name = "ddim"

    def __init__(self, diffusion: DiffusionModel, guidance_scale: float = 7.5, inversion_guidance: float = 1.0) -> None:
        self.diffusion = diffusion
        self.guidance_scale = guidance_scale  # the guidance the editor will sample with
        self.inversion_guidance = inversion_guidance

    def invert(self, image: Image.Image, prompt: str) -> Inversion:
        d = self.diffusion
        snap = d.counter.snapshot()
        uncond, cond = d.encode_prompts(["", prompt]).chunk(2)
        latents = ddim_trajectory(d, d.encode_image(image), cond, uncond, self.inversion_guidance)
        return Inversion(latents, uncond, prompt, self.guidance_scale, self.name, d.counter.since(snap))
