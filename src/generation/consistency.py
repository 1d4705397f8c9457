"""Consistency checks on a generated edit (LANCE): CLIP directional similarity
cos(E_I(x') - E_I(x), E_T(c') - E_T(c)), image similarity cos(E_I(x), E_I(x')), image-text similarity
cos(E_I(x'), E_T(c')), and x' closer to c' than to c. Among the candidates of one edit (one per
self-attention injection fraction) the controller keeps the passing one with the highest directional
similarity."""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

from src.generation.clip_model import ClipEncoder

SCORE_NAMES = ("directional_similarity", "image_similarity", "image_text_similarity", "text_margin")


@dataclass
class Verdict:
    passed: bool
    scores: dict[str, float]
    reason: str = ""


class ClipConsistency:
    name = "clip"

    def __init__(self, clip: ClipEncoder, directional: float = 0.2, image: float = 0.7, image_text: float = 0.2,
                 require_closer_to_edit: bool = True) -> None:
        self.clip = clip
        self.thresholds = {"directional_similarity": directional, "image_similarity": image,
                           "image_text_similarity": image_text}
        self.require_closer_to_edit = require_closer_to_edit
        self.model_id = clip.model_id

    def score(self, source: Image.Image, caption: str, edited_caption: str, candidates: list[Image.Image]) -> list[Verdict]:
        img = self.clip.encode_images([source] + list(candidates))
        txt = self.clip.encode_texts([caption, edited_caption])
        x, xs = img[0], img[1:]
        t, t2 = txt[0], txt[1]
        dt = t2 - t
        out = []
        for xe in xs:
            di = xe - x
            denom = float(di.norm() * dt.norm())
            scores = {
                "directional_similarity": float(di @ dt) / denom if denom > 0 else 0.0,
                "image_similarity": float(x @ xe),
                "image_text_similarity": float(xe @ t2),
                "text_margin": float(xe @ t2 - xe @ t),
            }
            failed = [f"{k} {scores[k]:.3f} < {v}" for k, v in self.thresholds.items() if not scores[k] >= v]
            if self.require_closer_to_edit and not scores["text_margin"] > 0:
                failed.append("closer to the source caption than to the edited one")
            out.append(Verdict(not failed, scores, "; ".join(failed)))
        return out


class NoConsistencyCheck:
    """Accepts every candidate (for exact editors such as the world oracle); scores are NaN."""

    name = "none"
    model_id = ""

    def score(self, source, caption, edited_caption, candidates) -> list[Verdict]:
        return [Verdict(True, {k: math.nan for k in SCORE_NAMES}) for _ in candidates]


def pick_best(verdicts: list[Verdict]) -> int | None:
    """Index of the passing candidate with the highest directional similarity (first when NaN)."""
    passing = [i for i, v in enumerate(verdicts) if v.passed]
    if not passing:
        return None
    key = lambda i: verdicts[i].scores.get("directional_similarity", math.nan)  # noqa: E731
    return max(passing, key=lambda i: -math.inf if math.isnan(key(i)) else key(i))
