"""Prompt-to-prompt attention control (Hertz et al. 2022) through diffusers' attention-processor API.

The UNet runs one batch: sample 0 is the source prompt (it reconstructs the image from its inversion),
samples 1..B-1 are edits, each with its own edited prompt and self-attention injection fraction. During
the first `cross_replace_steps` of the steps the edits' cross-attention maps are taken from the source
(re-mapped to the edited tokens: AttentionReplace for word swaps, AttentionRefine for added words); during
the first `self_fraction` of the steps their self-attention maps are the source's. AttentionReweight
scales chosen tokens' maps. Only the conditional half of a classifier-free-guidance batch is edited, as in
the reference code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class AttentionReplace:
    """Word swap: edited map = source map re-mapped through a token matrix M (target = source @ M)."""

    def __init__(self, mapper: torch.Tensor) -> None:
        self.mapper = mapper  # L x L

    def __call__(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:  # heads x q x L
        return torch.einsum("hpw,wn->hpn", base, self.mapper.to(base))


class AttentionRefine:
    """Added/removed words: aligned tokens take the source's map, added tokens (alpha 0) keep their own."""

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor) -> None:
        self.mapper, self.alphas = mapper, alphas

    def __call__(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.to(base)
        return base[:, :, self.mapper.to(base.device)] * alphas + own * (1 - alphas)


class AttentionReweight:
    """Scales the maps of chosen tokens by `equalizer` (length L), after the inner edit."""

    def __init__(self, equalizer: torch.Tensor, inner=None) -> None:
        self.equalizer, self.inner = equalizer, inner

    def __call__(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        out = self.inner(base, own) if self.inner is not None else own
        return out * self.equalizer.to(base)


@dataclass
class EditSlot:
    """What one edited sample of the batch does: its cross-attention edit and self-injection fraction."""

    cross_edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    self_fraction: float


class PromptToPromptController:
    """Holds the step counter and the per-sample edits; processors call it with attention probabilities."""

    def __init__(self, slots: list[EditSlot], num_steps: int, cross_replace_steps: float = 0.8,
                 self_max_tokens: int = 16**2, recorder: Callable | None = None) -> None:
        self.slots = slots
        self.num_steps = num_steps
        self.cross_until = int(cross_replace_steps * num_steps)
        self.self_until = [int(s.self_fraction * num_steps) for s in slots]
        self.self_max_tokens = self_max_tokens
        self.recorder = recorder
        self.step = 0

    def __call__(self, probs: torch.Tensor, is_cross: bool, layer: str, heads: int) -> torch.Tensor:
        b = len(self.slots) + 1
        n = probs.shape[0] // heads
        if n not in (b, 2 * b):
            raise RuntimeError(f"prompt-to-prompt batch has {n} samples; expected {b} or {2 * b}")
        probs = probs.reshape(n, heads, *probs.shape[1:])
        cond = probs[n - b:]  # the conditional half (all of it without classifier-free guidance)
        base = cond[0]
        edited = [cond[0]]
        for k, slot in enumerate(self.slots):
            own = cond[k + 1]
            if is_cross and self.step < self.cross_until:
                own = slot.cross_edit(base, own)
            elif not is_cross and self.step < self.self_until[k] and own.shape[1] <= self.self_max_tokens:
                own = base
            edited.append(own)
        cond = torch.stack(edited)
        if self.recorder is not None:
            self.recorder(self.step, layer, is_cross, cond)
        probs = torch.cat([probs[: n - b], cond]) if n == 2 * b else cond
        return probs.reshape(n * heads, *probs.shape[2:])


class PromptToPromptAttnProcessor:
    """diffusers attention processor (standard `__call__` signature) that lets a controller edit the
    attention probabilities before they weight the values."""

    def __init__(self, controller: PromptToPromptController, layer: str) -> None:
        self.controller, self.layer = controller, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        batch_size, sequence_length, _ = hidden_states.shape if not is_cross else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)
        probs = self.controller(probs, is_cross, self.layer, attn.heads)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class attention_control:  # noqa: N801 - used as a context manager: `with attention_control(unet, ctl):`
    """Installs prompt-to-prompt processors on every attention layer and restores the old ones on exit."""

    def __init__(self, unet, controller: PromptToPromptController) -> None:
        self.unet, self.controller = unet, controller

    def __enter__(self):
        self.saved = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({k: PromptToPromptAttnProcessor(self.controller, k) for k in self.saved})
        return self.controller

    def __exit__(self, *exc):
        self.unet.set_attn_processor(self.saved)
        return False
