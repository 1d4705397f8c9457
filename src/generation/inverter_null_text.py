"""Null-text inversion (Mokady et al. 2023), as in the reference implementation: the pivot is the DDIM
inversion at guidance 1; then, step by step from the noisiest, the null embedding is optimised with Adam
(`num_inner_steps`, lr `lr * (1 - i / 100)`, early stop when the loss falls below
`early_stop_epsilon + i * 2e-5`) so that guided sampling lands on the pivot's next latent."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from src.generation.diffusion import DiffusionModel
from src.generation.inversion import Inversion
from src.generation.inverter_ddim import ddim_trajectory


class NullTextInverter:
    name = "null_text"

    def __init__(self, diffusion: DiffusionModel, guidance_scale: float = 7.5, num_inner_steps: int = 10,
                 lr: float = 1e-2, early_stop_epsilon: float = 1e-5, progress: bool = False) -> None:
        self.diffusion = diffusion
        self.guidance_scale = guidance_scale
        self.num_inner_steps = num_inner_steps
        self.lr = lr
        self.early_stop_epsilon = early_stop_epsilon
        self.progress = progress

    def invert(self, image: Image.Image, prompt: str) -> Inversion:
        d = self.diffusion
        snap = d.counter.snapshot()
        uncond, cond = d.encode_prompts(["", prompt]).chunk(2)
        pivot = ddim_trajectory(d, d.encode_image(image), cond, uncond, 1.0)
        T = pivot.shape[0] - 1
        null = uncond.clone()
        nulls = []
        x = pivot[-1:]
        for i, t in enumerate(tqdm(d.timesteps, desc="null-text", disable=not self.progress, leave=False)):
            target = pivot[T - i - 1 : T - i]
            null = null.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([null], lr=self.lr * (1.0 - i / 100.0))
            with torch.no_grad():
                eps_cond = d.unet_forward(x, t, cond)
            for _ in range(self.num_inner_steps):
                with torch.enable_grad():
                    eps_uncond = d.unet_forward(x, t, null)
                    eps = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
                    loss = F.mse_loss(d.step(eps, t, x), target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                if loss.item() < self.early_stop_epsilon + i * 2e-5:
                    break
            null = null.detach()
            nulls.append(null)
            with torch.no_grad():
                x = d.step(d.guided_prediction(x, t, cond, null, self.guidance_scale), t, x)
        return Inversion(pivot, torch.cat(nulls), prompt, self.guidance_scale, self.name, d.counter.since(snap))
