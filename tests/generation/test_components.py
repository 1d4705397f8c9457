"""Edit filter (real MiniLM from the installed package), rule and random perturbers."""
from __future__ import annotations

import pytest

from src.generation.edit_filter import EditFilter, SentenceEncoder
from src.generation.perturber_random import RandomWordPerturber
from src.generation.perturber_rules import RulePerturber
from src.generation.tiny_models import tiny_masked_lm
from src.generation.types import CaptionEdit, Rejection

CAPTION = "a photo of a small red striped star on white snow at night next to a tree with a dog"


@pytest.fixture(scope="module")
def edit_filter():
    return EditFilter(SentenceEncoder())


def _edit(before, after, caption=CAPTION):
    return CaptionEdit("adjective", caption, caption.replace(before, after), before, after)


def test_filter_rejects_label_changing_edits(edit_filter):
    why, scores = edit_filter.check(_edit("star", "heart"), "star")
    assert why and "label" in why and scores["sim_label_original"] > 0.99
    why, _ = edit_filter.check(_edit("with a dog", "with a puppy"), "dog")
    assert why and "label" in why


def test_filter_keeps_nuisance_edits_and_rejects_synonyms(edit_filter):
    assert edit_filter.check(_edit("on white snow", "on desert sand"), "star")[0] is None
    assert edit_filter.check(_edit("red", "blue"), "star")[0] is None
    why, _ = edit_filter.check(_edit("with a dog", "with a puppy"), "star")
    assert why and "same" in why


def test_rule_perturber_swaps_one_phrase_of_the_type():
    p = RulePerturber()
    for seed in range(5):
        (e,) = p.perturb(CAPTION, "background", label="star", seed=seed)
        assert isinstance(e, CaptionEdit) and e.original_words in CAPTION and e.edited_words in e.edited_caption
        assert e.edited_caption.replace(e.edited_words, e.original_words, 1) == CAPTION
    (r,) = p.perturb("", "background")
    assert isinstance(r, Rejection) and "empty" in r.reason
    (r,) = p.perturb("a blurry picture", "domain")
    assert isinstance(r, Rejection)


def test_random_perturber_with_tiny_masked_lm(tmp_path):
    words = CAPTION.split() + ["blue", "green", "circle", "house", "cat", "rain", "large"]
    model, tok = tiny_masked_lm(words, folder=str(tmp_path))
    p = RandomWordPerturber(model=model, tokenizer=tok, top_k=5)
    out = p.perturb(CAPTION, "background", label="star", num_edits=4, seed=0)
    assert len(out) == 4
    for e in out:
        assert isinstance(e, CaptionEdit) and e.edit_type == "random"
        assert e.original_words != "star" and e.edited_words != e.original_words
        assert len(e.edited_caption.split()) == len(CAPTION.split())
    assert isinstance(p.perturb("a of the", "subject")[0], Rejection)
