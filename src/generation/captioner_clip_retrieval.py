"""Caption by retrieval: pick, slot by slot, the phrase from a caption grammar that a CLIP model scores
highest for the image (coordinate ascent over slots, a few passes). Works with any CLIP; for
Counterfactory World the grammar is the world's own (`world_slots`)."""
from __future__ import annotations

from typing import Sequence

from PIL import Image

from src.generation.clip_model import ClipEncoder


def world_slots() -> tuple[list[str], dict[str, list[str]]]:
    """(slot order, phrases per slot) of Counterfactory World captions."""
    from src.world.grammar import CAPTION_ORDER, VOCABULARY, Factors, phrases

    base = Factors(**{k: v[0] for k, v in VOCABULARY.items()})
    slots = {k: sorted({phrases(base.replace(**{k: v}))[k] for v in VOCABULARY[k]}) for k in CAPTION_ORDER}
    return list(CAPTION_ORDER), slots


class ClipRetrievalCaptioner:
    name = "clip_retrieval"

    def __init__(self, clip: ClipEncoder, slots: dict[str, list[str]] | None = None, order: list[str] | None = None,
                 passes: int = 2) -> None:
        if slots is None:
            order, slots = world_slots()
        self.clip = clip
        self.order = list(order or slots)
        self.slots = {k: list(v) for k, v in slots.items()}
        self.passes = passes
        self.model_id = clip.model_id

    def _join(self, choice: dict[str, str]) -> str:
        return " ".join(choice[k] for k in self.order if choice[k])

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        feats = self.clip.encode_images(images)
        out = []
        for f in feats:
            choice = {k: v[0] for k, v in self.slots.items()}
            for _ in range(self.passes):
                for slot in self.order:
                    cands = [self._join({**choice, slot: p}) for p in self.slots[slot]]
                    scores = self.clip.encode_texts(cands) @ f
                    choice[slot] = self.slots[slot][int(scores.argmax())]
            out.append(self._join(choice))
        return out
