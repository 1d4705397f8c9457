"""Negative-prompt inversion (Miyake et al. 2023): DDIM inversion at guidance 1, then sample with the
source prompt's embedding in place of the null embedding. No optimisation: about as cheap as DDIM
inversion, with reconstruction close to null-text inversion."""
from __future__ import annotations

from PIL import Image

from src.generation.diffusion import DiffusionModel
from src.generation.inversion import Inversion
from src.generation.inverter_ddim import ddim_trajectory


class NegativePromptInverter:
    name = "negative_prompt"

    def __init__(self, diffusion: DiffusionModel, guidance_scale: float = 7.5) -> None:
        self.diffusion = diffusion
        self.guidance_scale = guidance_scale

    def invert(self, image: Image.Image, prompt: str) -> Inversion:
        d = self.diffusion
        snap = d.counter.snapshot()
        cond = d.encode_prompts([prompt])
        latents = ddim_trajectory(d, d.encode_image(image), cond, cond, 1.0)
        # With uncond == cond, guided prediction equals the conditional one at any guidance scale, so
        # sampling retraces the guidance-1 inversion trajectory.
        return Inversion(latents, cond, prompt, self.guidance_scale, self.name, d.counter.since(snap))
