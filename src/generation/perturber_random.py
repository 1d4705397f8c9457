"""LANCE-R: mask one random non-stop-word of the caption (never the label) and refill it with a masked
language model (e.g. distilbert-base-uncased, by hub id). The edit type is 'random'."""
from __future__ import annotations

import re

import numpy as np
import torch

from src.generation.pretrained import load_pretrained
from src.generation.types import CaptionEdit, Rejection

STOP_WORDS = frozenset(
    "a an the of on in at to with and or next by for from into onto over under against its it is are was "
    "this that these those there their his her as be very".split()
)


class RandomWordPerturber:
    name = "random"

    def __init__(self, model_id: str = "distilbert-base-uncased", top_k: int = 20, model=None, tokenizer=None,
                 device: str = "cpu") -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.model_id = model_id
        self.top_k = top_k
        self.device = torch.device(device)
        self.tokenizer = tokenizer or load_pretrained(AutoTokenizer.from_pretrained, model_id,
                                                      "generation.perturber.model_id")
        self.model = (model or load_pretrained(AutoModelForMaskedLM.from_pretrained, model_id,
                                               "generation.perturber.model_id")).to(self.device).eval()

    @torch.no_grad()
    def perturb(self, caption: str, edit_type: str, *, label: str | None = None, num_edits: int = 1,
                seed: int = 0) -> list[CaptionEdit | Rejection]:
        rng = np.random.default_rng(seed)
        words = caption.split(" ") if caption else []
        label_words = set((label or "").lower().split())
        slots = [i for i, w in enumerate(words)
                 if re.fullmatch(r"[A-Za-z]+", w) and w.lower() not in STOP_WORDS and w.lower() not in label_words]
        if not slots:
            return [Rejection("random", caption, "no maskable word in caption")] * num_edits
        out: list[CaptionEdit | Rejection] = []
        for _ in range(num_edits):
            i = int(slots[rng.integers(len(slots))])
            masked = " ".join(words[:i] + [self.tokenizer.mask_token] + words[i + 1:])
            enc = self.tokenizer(masked, return_tensors="pt").to(self.device)
            pos = (enc.input_ids[0] == self.tokenizer.mask_token_id).nonzero()[0, 0]
            logits = self.model(**enc).logits[0, pos]
            cands = []
            for tid in logits.topk(min(self.top_k * 3, logits.numel())).indices.tolist():
                w = self.tokenizer.convert_ids_to_tokens(tid)
                if w and re.fullmatch(r"[a-z]+", w) and w != words[i].lower() and w not in STOP_WORDS and w not in label_words:
                    cands.append(w)
                if len(cands) == self.top_k:
                    break
            if not cands:
                out.append(Rejection("random", caption, "masked LM proposed no usable word", raw_output=masked))
                continue
            new = cands[int(rng.integers(len(cands)))]
            edited = " ".join(words[:i] + [new] + words[i + 1:])
            out.append(CaptionEdit("random", caption, edited, words[i], new, source=f"{self.name}:{self.model_id}"))
        return out
