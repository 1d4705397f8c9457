"""Direct inversion (Ju et al. 2023, "PnP Inversion: Boosting diffusion-based editing with 3 lines of
code"): DDIM inversion at guidance 1, then, while editing, the source branch is put back on the inversion
trajectory after every step. The source branch — whose attention maps prompt-to-prompt injects — then
reconstructs the image exactly (up to the VAE), with no optimisation; the edited branches are left free.

The editor sees `Inversion.pin_source` and does the correction; the inverter only records the trajectory.
"""
from __future__ import annotations

from PIL import Image

from src.generation.diffusion import DiffusionModel
from src.generation.inversion import Inversion
from src.generation.inverter_ddim import ddim_trajectory


class DirectInverter:
    name = "direct"

    def __init__(self, diffusion: DiffusionModel, guidance_scale: float = 7.5) -> None:
        self.diffusion = diffusion
        self.guidance_scale = guidance_scale  # the guidance the editor samples the edited branches with

    def invert(self, image: Image.Image, prompt: str) -> Inversion:
        d = self.diffusion
        snap = d.counter.snapshot()
        uncond, cond = d.encode_prompts(["", prompt]).chunk(2)
        latents = ddim_trajectory(d, d.encode_image(image), cond, uncond, 1.0)
        return Inversion(latents, uncond, prompt, self.guidance_scale, self.name, d.counter.since(snap),
                         pin_source=True)
