"""A CLIP image/text encoder behind one small interface (`encode_images`, `encode_texts`, unit-norm),
from open_clip (any architecture/pretrained tag), transformers' CLIPModel, or a model built in code."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from src.generation.pretrained import load_pretrained

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder:
    def __init__(self, model_name: str = "ViT-L-14", pretrained: str | None = "openai", backend: str = "open_clip",
                 device: str = "cpu", model=None, tokenizer=None, image_size: int | None = None) -> None:
        self.device = torch.device(device)
        self.backend = backend
        self.model_id = f"{model_name}:{pretrained}" if backend == "open_clip" else model_name
        if model is not None:
            self.model, self.tokenizer = model, tokenizer
        elif backend == "open_clip":
            import open_clip

            if pretrained:  # a tag ('openai') or a local weights file
                from pathlib import Path

                ref = pretrained if Path(pretrained).expanduser().exists() else f"{model_name}:{pretrained}"
                self.model = load_pretrained(lambda _: open_clip.create_model(model_name, pretrained=pretrained),
                                             ref, "generation.consistency.clip.pretrained")
            else:
                self.model = open_clip.create_model(model_name, pretrained=None)
            self.tokenizer = open_clip.get_tokenizer(model_name)
        elif backend == "transformers":
            from transformers import CLIPModel, CLIPTokenizer

            self.model = load_pretrained(CLIPModel.from_pretrained, model_name, "generation.consistency.clip.model_name")
            self.tokenizer = load_pretrained(CLIPTokenizer.from_pretrained, model_name,
                                             "generation.consistency.clip.model_name")
        else:
            raise ValueError(f"generation.consistency.clip.backend must be open_clip or transformers, got {backend!r}")
        self.model.to(self.device).eval()
        if image_size is None:
            if backend == "transformers":
                image_size = self.model.config.vision_config.image_size
            else:
                size = getattr(getattr(self.model, "visual", None), "image_size", 224)
                image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.image_size = int(image_size)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arrs = [np.asarray(im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC), np.float32) / 255
                for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
        mean, std = torch.tensor(OPENAI_MEAN)[:, None, None], torch.tensor(OPENAI_STD)[:, None, None]
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        x = self._pixels(images)
        if self.backend == "transformers":
            f = self.model.get_image_features(pixel_values=x)
            f = f if torch.is_tensor(f) else f.pooler_output
        else:
            f = self.model.encode_image(x)
        return F.normalize(f.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if self.backend == "transformers":
            ids = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
            f = self.model.get_text_features(**ids)
            f = f if torch.is_tensor(f) else f.pooler_output
        else:
            f = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return F.normalize(f.float(), dim=-1)
