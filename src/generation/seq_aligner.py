"""Token alignment between a source and an edited prompt, ported from the prompt-to-prompt reference
code (Hertz et al.): global (Needleman-Wunsch) alignment for refinement edits, and a word-level
replacement mapper for swaps of equal word count."""
from __future__ import annotations

import numpy as np
import torch

GAP, MATCH, MISMATCH = 0, 1, -1


def global_align(x: list, y: list, gap: int = GAP, match: int = MATCH, mismatch: int = MISMATCH):
    """Score and traceback matrices (1 = left/insertion in y, 2 = up/deletion from x, 3 = diagonal, 4 = origin)."""
    score = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    score[0, 1:] = (np.arange(len(y)) + 1) * gap
    score[1:, 0] = (np.arange(len(x)) + 1) * gap
    trace = np.zeros((len(x) + 1, len(y) + 1), dtype=np.int32)
    trace[0, 1:], trace[1:, 0], trace[0, 0] = 1, 2, 4
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            left = score[i, j - 1] + gap
            up = score[i - 1, j] + gap
            diag = score[i - 1, j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            score[i, j] = max(left, up, diag)
            trace[i, j] = 1 if score[i, j] == left else 2 if score[i, j] == up else 3
    return score, trace


def aligned_sequences(x: list, y: list, trace: np.ndarray):
    """(x aligned, y aligned, mapper y->x as a (len(y) x 2) tensor of (j, i or -1))."""
    x_seq, y_seq, mapper = [], [], []
    i, j = len(x), len(y)
    while i > 0 or j > 0:
        move = trace[i, j]
        if move == 3:
            x_seq.append(x[i - 1]); y_seq.append(y[j - 1])  # noqa: E702
            i, j = i - 1, j - 1
            mapper.append((j, i))
        elif move == 1:
            x_seq.append("-"); y_seq.append(y[j - 1])  # noqa: E702
            j -= 1
            mapper.append((j, -1))
        elif move == 2:
            x_seq.append(x[i - 1]); y_seq.append("-")  # noqa: E702
            i -= 1
        else:
            break
    mapper.reverse()
    return x_seq[::-1], y_seq[::-1], torch.tensor(mapper, dtype=torch.int64).reshape(-1, 2)


def refinement_mapper(source: str, target: str, tokenizer, max_len: int = 77):
    """(mapper, alphas): target token j takes the source token mapper[j]; alphas[j] = 0 for added tokens."""
    x, y = tokenizer.encode(source), tokenizer.encode(target)
    _, trace = global_align(x, y)
    base = aligned_sequences(x, y, trace)[-1]
    alphas = torch.ones(max_len)
    alphas[: base.shape[0]] = base[:, 1].ne(-1).float()
    mapper = torch.zeros(max_len, dtype=torch.int64)
    mapper[: base.shape[0]] = base[:, 1]
    mapper[base.shape[0]:] = len(y) + torch.arange(max_len - len(y))
    mapper = mapper.clamp(0, max_len - 1)  # padding past the end maps to itself
    return mapper, alphas


def word_token_indices(text: str, word_place: int | str, tokenizer) -> np.ndarray:
    """Token positions (with BOS at 0) of the word(s) at `word_place` of `text.split(' ')`."""
    split_text = text.split(" ")
    if isinstance(word_place, str):
        places = [i for i, w in enumerate(split_text) if word_place == w]
    else:
        places = [word_place]
    out = []
    if places:
        pieces = [tokenizer.decode([t]).strip("#").strip() for t in tokenizer.encode(text)][1:-1]
        cur_len, ptr = 0, 0
        for i, piece in enumerate(pieces):
            cur_len += len(piece)
            if ptr in places:
                out.append(i + 1)
            if cur_len >= len(split_text[ptr]):
                ptr += 1
                cur_len = 0
    return np.array(out, dtype=np.int64)


def replacement_mapper(source: str, target: str, tokenizer, max_len: int = 77) -> torch.Tensor:
    """max_len x max_len matrix M: target attention = source attention @ M (word swaps, equal word count)."""
    wx, wy = source.split(" "), target.split(" ")
    if len(wx) != len(wy):
        raise ValueError(f"replacement edits need equal word counts: {source!r} vs {target!r}")
    replaced = [i for i in range(len(wy)) if wy[i] != wx[i]]
    src_inds = [word_token_indices(source, i, tokenizer) for i in replaced]
    tgt_inds = [word_token_indices(target, i, tokenizer) for i in replaced]
    mapper = np.zeros((max_len, max_len))
    i = j = cur = 0
    while i < max_len and j < max_len:
        if cur < len(src_inds) and len(src_inds[cur]) and src_inds[cur][0] == i:
            s, t = src_inds[cur], tgt_inds[cur]
            if len(s) == len(t):
                mapper[s, t] = 1
            else:
                for ti in t:
                    mapper[s, ti] = 1 / len(t)
            cur += 1
            i += len(s)
            j += len(t)
        elif cur < len(src_inds):
            mapper[i, j] = 1
            i += 1
            j += 1
        else:
            mapper[j, j] = 1
            i += 1
            j += 1
    return torch.from_numpy(mapper).float()
