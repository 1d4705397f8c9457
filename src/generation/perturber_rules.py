"""Structured single-phrase caption edits from a vocabulary: for the requested edit type, find a phrase
of that type in the caption and swap it for another phrase of the same group. Counterfactory World's
grammar supplies the vocabulary (`world_vocabulary`); any {edit_type: [[phrase, ...], ...]} works."""
from __future__ import annotations

import re

import numpy as np

from src.generation.types import CaptionEdit, Rejection


def world_vocabulary() -> dict[str, list[list[str]]]:
    """Edit type -> groups of interchangeable phrases (one group per world factor)."""
    from src.world.grammar import EDIT_TYPES, VOCABULARY, Factors, phrases

    base = Factors(**{k: v[0] for k, v in VOCABULARY.items()})
    vocab: dict[str, list[list[str]]] = {}
    for factor, edit_type in EDIT_TYPES.items():
        group = [phrases(base.replace(**{factor: v}))[factor] for v in VOCABULARY[factor]]
        vocab.setdefault(edit_type, []).append(group)
    return vocab


def _matches(caption: str, phrase: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", caption)]


class RulePerturber:
    name = "rules"

    def __init__(self, vocabulary: dict[str, list[list[str]]] | None = None) -> None:
        self.vocabulary = {k: [list(g) for g in v] for k, v in (vocabulary or world_vocabulary()).items()}

    def perturb(self, caption: str, edit_type: str, *, label: str | None = None, num_edits: int = 1,
                seed: int = 0) -> list[CaptionEdit | Rejection]:
        rng = np.random.default_rng(seed)
        if not caption or not caption.strip():
            return [Rejection(edit_type, caption, "empty caption")] * num_edits
        # A phrase counts only where it is not part of a longer vocabulary phrase ('green' in 'on green grass').
        spans = {p: _matches(caption, p) for groups in self.vocabulary.values() for g in groups for p in g}
        every = [(a, b) for v in spans.values() for a, b in v]

        def free(p: str) -> tuple[int, int] | None:
            for a, b in spans.get(p, []):
                if not any(a2 <= a and b <= b2 and (b2 - a2) > (b - a) for a2, b2 in every):
                    return a, b
            return None

        options = []
        for group in self.vocabulary.get(edit_type, []):
            present = [p for p in sorted(group, key=len, reverse=True) if free(p)]
            if present:
                options += [(present[0], q) for q in group if q not in present]
        if not options:
            return [Rejection(edit_type, caption, f"no {edit_type} phrase of the vocabulary in caption")] * num_edits
        out: list[CaptionEdit | Rejection] = []
        for idx in rng.permutation(len(options))[:num_edits]:
            before, after = options[int(idx)]
            a, b = free(before)
            edited = caption[:a] + after + caption[b:]
            out.append(CaptionEdit(edit_type, caption, edited, before, after, source=self.name))
        while len(out) < num_edits:
            out.append(Rejection(edit_type, caption, "vocabulary exhausted"))
        return out
