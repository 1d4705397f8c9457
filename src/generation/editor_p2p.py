"""Prompt-to-prompt editor: samples the source prompt and every (edited prompt, self-injection fraction)
pair from one inversion, in as few UNet batches as memory allows (sample 0 of each batch is the source:
its output is the reconstruction). CUDA out-of-memory halves the batch and retries."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm.auto import tqdm

from src.generation.attention_control import (
    AttentionRefine,
    AttentionReplace,
    AttentionReweight,
    EditSlot,
    PromptToPromptController,
    attention_control,
)
from src.generation.diffusion import DiffusionModel
from src.generation.inversion import Inversion
from src.generation.seq_aligner import refinement_mapper, replacement_mapper, word_token_indices
from src.generation.types import Cost


@dataclass
class EditOutput:
    reconstruction: Image.Image | None
    candidates: list[list[tuple[float, Image.Image]]]  # per edited prompt: (self fraction, image) per fraction
    cost: Cost = field(default_factory=Cost)


class PromptToPromptEditor:
    name = "p2p"
    needs_inversion = True

    def __init__(self, diffusion: DiffusionModel, cross_replace_steps: float = 0.8, guidance_scale: float = 7.5,
                 self_max_tokens: int = 16**2, reweight_edited_words: float = 1.0, max_batch: int = 32,
                 batch_sweep: bool = True, progress: bool = False) -> None:
        self.diffusion = diffusion
        self.cross_replace_steps = cross_replace_steps
        self.guidance_scale = guidance_scale
        self.self_max_tokens = self_max_tokens
        self.reweight_edited_words = reweight_edited_words
        self.max_batch = max(2, int(max_batch))
        self.batch_sweep = batch_sweep  # False: one UNet batch per (prompt, fraction), as the LANCE code does
        self.progress = progress
        self.recorder = None  # tests hook attention maps here

    # ------------------------------------------------------------------ cross-attention edits
    def cross_edit(self, source: str, target: str):
        tok, L = self.diffusion.tokenizer, self.diffusion.max_tokens
        if len(source.split(" ")) == len(target.split(" ")):
            edit = AttentionReplace(replacement_mapper(source, target, tok, L))
        else:
            edit = AttentionRefine(*refinement_mapper(source, target, tok, L))
        if self.reweight_edited_words != 1.0:
            eq = torch.ones(L)
            changed = [i for i, (a, b) in enumerate(zip(source.split(" "), target.split(" "))) if a != b]
            for i in changed:
                eq[word_token_indices(target, i, tok)] = self.reweight_edited_words
            edit = AttentionReweight(eq, inner=edit)
        return edit

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, inversion: Inversion, source_prompt: str, jobs: list[tuple[str, float]]) -> list[Image.Image]:
        """Images of [source] + jobs, in one UNet batch."""
        d = self.diffusion
        b = len(jobs) + 1
        slots = [EditSlot(self.cross_edit(source_prompt, p), f) for p, f in jobs]
        controller = PromptToPromptController(slots, len(d.timesteps), self.cross_replace_steps,
                                              self.self_max_tokens, self.recorder)
        cond = d.encode_prompts([source_prompt] + [p for p, _ in jobs])
        latents = inversion.latents[-1:].to(d.device, d.dtype).expand(b, -1, -1, -1).clone()
        if inversion.num_steps != len(d.timesteps):
            raise ValueError(f"inversion has {inversion.num_steps} steps, the model samples {len(d.timesteps)}")
        with attention_control(d.unet, controller):
            for i, t in enumerate(d.timesteps):
                controller.step = i
                uncond = inversion.uncond_at(i).to(d.device, d.dtype).expand(b, -1, -1)
                eps = d.guided_prediction(latents, t, cond, uncond, self.guidance_scale)
                latents = d.step(eps, t, latents)
                if inversion.pin_source:  # direct inversion: the source branch stays on the trajectory
                    latents[0] = inversion.latent_after(i).to(latents)
        return d.decode(latents)

    def edit(self, inversion: Inversion, source_prompt: str, prompts: list[str], fractions: list[float]) -> EditOutput:
        d = self.diffusion
        snap = d.counter.snapshot()
        jobs = [(p, f) for p in prompts for f in fractions]
        per_batch = self.max_batch - 1 if self.batch_sweep else 1
        images: list[Image.Image] = []
        reconstruction = None
        pos = 0
        with tqdm(total=len(jobs), desc="p2p", disable=not self.progress, leave=False) as bar:
            while pos < len(jobs) or reconstruction is None:
                chunk = jobs[pos : pos + per_batch]
                try:
                    out = self.sample(inversion, source_prompt, chunk)
                except torch.cuda.OutOfMemoryError:
                    if per_batch == 1:
                        raise
                    per_batch = max(1, per_batch // 2)
                    torch.cuda.empty_cache()
                    continue
                reconstruction = reconstruction or out[0]
                images.extend(out[1:])
                pos += len(chunk)
                bar.update(len(chunk))
        k = len(fractions)
        candidates = [[(fractions[j], images[i * k + j]) for j in range(k)] for i in range(len(prompts))]
        return EditOutput(reconstruction, candidates, d.counter.since(snap))
