"""Offline fail-fast messages, CUDA out-of-memory batch halving, retrieval captions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.generation.captioner_clip_retrieval import ClipRetrievalCaptioner, world_slots
from src.generation.editor_p2p import PromptToPromptEditor
from src.generation.inversion import Inversion
from src.generation.tiny_models import tiny_clip_encoder


@pytest.mark.parametrize("build,key", [
    (lambda: __import__("src.generation.captioner_blip2", fromlist=["x"]).Blip2Captioner(), "generation.captioner.model_id"),
    (lambda: __import__("src.generation.diffusion", fromlist=["x"]).DiffusionModel.from_pretrained(),
     "generation.diffusion.model_id"),
    (lambda: __import__("src.generation.clip_model", fromlist=["x"]).ClipEncoder("ViT-L-14", "openai"),
     "generation.consistency.clip.pretrained"),
])
def test_offline_loading_fails_fast_naming_the_key(monkeypatch, build, key):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match=key.replace(".", r"\.")):
        build()


def test_out_of_memory_halves_the_batch():
    class FakeEditor(PromptToPromptEditor):
        def __init__(self):
            self.max_batch, self.batch_sweep, self.progress, self.sizes = 16, True, False, []
            self.diffusion = type("D", (), {"counter": __import__("src.generation.diffusion", fromlist=["x"]).UNetCounter()})()

        def sample(self, inversion, source_prompt, jobs):
            self.sizes.append(len(jobs))
            if len(jobs) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return [Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(len(jobs) + 1)]

    ed = FakeEditor()
    inv = Inversion(torch.zeros(2, 1, 1, 1), torch.zeros(1, 1, 1), "p", 7.5, "x")
    out = ed.edit(inv, "p", ["a", "b"], [0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert ed.sizes[:3] == [12, 7, 3]  # 15 -> 7 -> 3 jobs per batch
    assert [len(c) for c in out.candidates] == [6, 6] and out.reconstruction is not None


def test_clip_retrieval_caption_comes_from_the_grammar():
    order, slots = world_slots()
    cap = ClipRetrievalCaptioner(tiny_clip_encoder(image_size=32), passes=1)
    (c,) = cap.caption([Image.fromarray(np.zeros((32, 32, 3), np.uint8))])
    assert c.startswith("a ") and any(p in c for p in slots["background"]) and any(p in c for p in slots["shape"])
