import numpy as np
import torch

from src.generation.seq_aligner import (
    aligned_sequences,
    global_align,
    refinement_mapper,
    replacement_mapper,
    word_token_indices,
)
from src.generation.tiny_models import clip_tokenizer


def test_global_align_inserts_gap_for_added_token():
    x, y = [1, 2, 3, 4], [1, 2, 9, 3, 4]
    score, trace = global_align(x, y)
    xs, ys, mapper = aligned_sequences(x, y, trace)
    assert xs == [1, 2, "-", 3, 4] and ys == y
    assert mapper[:, 1].tolist() == [0, 1, -1, 2, 3]
    assert score[-1, -1] == 4


def test_refinement_mapper_marks_added_words():
    tok = clip_tokenizer()
    mapper, alphas = refinement_mapper("a photo of a star", "a photo of a red star", tok, 77)
    n_src = len(tok.encode("a photo of a star"))
    assert alphas[:7].tolist() == [1, 1, 1, 1, 1, 0, 1]  # bos a photo of a [red] star
    assert mapper[6].item() == 5 and mapper[7].item() == n_src - 1  # star -> star, eos -> eos
    assert alphas[7:].eq(1).all()


def test_replacement_mapper_is_identity_except_swapped_word():
    tok = clip_tokenizer()
    m = replacement_mapper("a photo of a red star", "a photo of a blue star", tok, 77)
    assert m.shape == (77, 77)
    assert torch.equal(m, torch.eye(77))  # one token swapped for one token at the same place
    src, tgt = "a photo of a cat", "a photo of a butterflyish"
    m = replacement_mapper(src, tgt, tok, 77)
    t = word_token_indices(tgt, 4, tok)
    assert len(t) > 1 and np.allclose(m[5, t].numpy(), 1 / len(t))
    assert m.sum(0)[: 5].tolist() == [1, 1, 1, 1, 1]
