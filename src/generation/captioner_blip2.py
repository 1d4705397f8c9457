"""BLIP-2 captions (transformers `Blip2ForConditionalGeneration`, by hub id), with the LANCE decoding
settings: beam search 5, min length 20, max length 100, repetition penalty."""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from src.generation.pretrained import load_pretrained


class Blip2Captioner:
    name = "blip2"

    def __init__(self, model_id: str = "Salesforce/blip2-opt-2.7b", num_beams: int = 5, min_length: int = 20,
                 max_length: int = 100, repetition_penalty: float = 1.0, prompt: str | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 8, model=None, processor=None) -> None:
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self.model_id = model_id
        self.device = torch.device(device)
        self.generate_kwargs = {"num_beams": num_beams, "min_length": min_length, "max_length": max_length,
                                "repetition_penalty": repetition_penalty}
        self.prompt = prompt
        self.batch_size = batch_size
        self.processor = processor or load_pretrained(Blip2Processor.from_pretrained, model_id,
                                                      "generation.captioner.model_id")
        self.model = model or load_pretrained(
            lambda m: Blip2ForConditionalGeneration.from_pretrained(m, torch_dtype=getattr(torch, dtype)),
            model_id, "generation.captioner.model_id")
        self.model.to(self.device).eval()

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            kwargs = {"text": [self.prompt] * len(batch)} if self.prompt else {}
            inputs = self.processor(images=batch, return_tensors="pt", **kwargs).to(self.device, self.model.dtype)
            ids = self.model.generate(**inputs, **self.generate_kwargs)
            out += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return out
