"""Reading caption edits out of free LLM text, and checking that an edit changes exactly one phrase.

Two jobs, both pure functions of strings:

- `parse_edits(raw)` turns whatever a language model wrote (numbered lists, bullets, quotes, a line of
  prose before the list, duplicates, a last line cut off by the token limit) into candidate captions.
- `changed_span(before, after)` is the single-phrase diff: the phrase of `before` that was replaced and
  its replacement, or None when nothing or more than one phrase changed. `check_edit` adds the
  label rule and (where the caption's phrases of the requested edit type are known) the type rule, and
  says why an edit fails; `score_edit` turns that into the edit-success criteria of LANCE.

Words are compared lower-cased with punctuation removed, so "A red star." and "a red star" are equal.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Sequence

_WORD = re.compile(r"[a-z0-9]+(?:['’-][a-z0-9]+)*")
# Articles may sit inside one replaced phrase ("in front of a brick wall" -> "on a wooden floor"):
# two changed runs separated by a single article are one phrase.
_ARTICLES = frozenset({"a", "an", "the"})
# A caption never ends in these; a candidate that does was cut off by the token limit.
_DANGLING = frozenset(
    {"a", "an", "the", "of", "on", "in", "at", "with", "to", "and", "or", "next", "by", "for", "from", "its", "their"}
)
_BULLET = re.compile(
    r"^\s*(?:[-*•·]+|\(?\d{1,3}\s*[.):\]]|\[\d{1,3}\]|#+|"
    r"(?:edit(?:ed)?(?:\s+caption)?|caption|output|answer|response|new caption|variation)\s*\d*\s*[:.-])\s*",
    re.IGNORECASE,
)
_INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
_ARROW = re.compile(r"\s*(?:->|=>|→|⟶)\s*")
_QUOTES = "\"'“”‘’`«»"
_PROSE_START = re.compile(
    r"^(?:here(?:'s| is| are)|sure\b|certainly|of course|okay\b|ok\b|note\b|i (?:hope|have|changed|replaced|kept)|"
    r"i've|let me|these\b|below\b|as an\b|explanation|in (?:this|each) |the (?:edited|new|original|changed) "
    r"(?:caption|sentence|word)s?\b|instruction|input\b|###)",
    re.IGNORECASE,
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation."""
    return _WORD.findall(text.lower().replace("’", "'"))


def normalize(text: str) -> str:
    return " ".join(words(text))


# --------------------------------------------------------------------------------------------- diff
@dataclass(frozen=True)
class WordSpan:
    """One changed run: words [start, end) of `before` became words [new_start, new_end) of `after`."""

    start: int
    end: int
    new_start: int
    new_end: int
    original_words: str
    edited_words: str


def changed_spans(before: str, after: str) -> list[WordSpan]:
    """All changed runs of words between two captions (runs split only by one article are merged)."""
    a, b = words(before), words(after)
    opcodes = [op for op in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes() if op[0] != "equal"]
    runs: list[list[int]] = []
    for _, i1, i2, j1, j2 in opcodes:
        if runs:
            prev = runs[-1]
            gap = a[prev[1] : i1]
            if len(gap) <= 1 and all(w in _ARTICLES for w in gap) and b[prev[3] : j1] == gap:
                prev[1], prev[3] = i2, j2
                continue
        runs.append([i1, i2, j1, j2])
    return [WordSpan(i1, i2, j1, j2, " ".join(a[i1:i2]), " ".join(b[j1:j2])) for i1, i2, j1, j2 in runs]


def changed_span(before: str, after: str) -> tuple[str, str] | None:
    """(phrase of `before` replaced, its replacement) if exactly one phrase changed, else None.

    An insertion has an empty original phrase, a deletion an empty replacement.
    """
    spans = changed_spans(before, after)
    if len(spans) != 1:
        return None
    return spans[0].original_words, spans[0].edited_words


# ------------------------------------------------------------------------------------------ checks
@dataclass(frozen=True)
class EditCheck:
    """Outcome of checking one candidate edit; `reason` is empty when it passes."""

    edited_caption: str
    reason: str = ""
    original_words: str = ""
    edited_words: str = ""
    n_changed_phrases: int = 0
    touches_label: bool = False
    right_type: bool | None = None  # None: the caption's phrases of this type are unknown

    @property
    def ok(self) -> bool:
        return not self.reason


def _label_in(label: str, text_words: Sequence[str]) -> bool:
    """Whole-word (or whole-phrase) match of the label, allowing a plural 's'/'es'."""
    lw = words(label)
    if not lw:
        return False
    n = len(lw)
    for i in range(len(text_words) - n + 1):
        window = list(text_words[i : i + n])
        last = window[-1]
        if window[:-1] == lw[:-1] and last in (lw[-1], lw[-1] + "s", lw[-1] + "es"):
            return True
    return False


def _phrase_ranges(caption_words: list[str], phrases: Sequence[str]) -> list[tuple[int, int]]:
    """Word ranges of each phrase inside the caption (first occurrence)."""
    ranges = []
    for phrase in phrases:
        pw = words(phrase)
        if not pw:
            continue
        for i in range(len(caption_words) - len(pw) + 1):
            if caption_words[i : i + len(pw)] == pw:
                ranges.append((i, i + len(pw)))
                break
    return ranges


def _inside(span: WordSpan, ranges: list[tuple[int, int]]) -> bool:
    if span.start == span.end:  # an insertion: it must land inside or at the edge of a phrase of the type
        return any(s <= span.start <= e for s, e in ranges)
    return any(s <= span.start and span.end <= e for s, e in ranges)


def check_edit(
    caption: str, edited: str, *, label: str | None = None, type_phrases: Sequence[str] | None = None
) -> EditCheck:
    """Does `edited` change exactly one phrase of `caption`, leave the label alone and (when the
    caption's phrases of the requested type are given) change one of those?"""
    if not words(edited):
        return EditCheck(edited, reason="empty edit")
    spans = changed_spans(caption, edited)
    if not spans:
        return EditCheck(edited, reason="identical to the caption")
    if len(spans) > 1:
        changed = "; ".join(f"{s.original_words!r}->{s.edited_words!r}" for s in spans)
        return EditCheck(edited, reason=f"changes {len(spans)} phrases ({changed})", n_changed_phrases=len(spans))
    span = spans[0]
    base = dict(original_words=span.original_words, edited_words=span.edited_words, n_changed_phrases=1)
    right_type = None
    if type_phrases:
        right_type = _inside(span, _phrase_ranges(words(caption), type_phrases))
    if label and (_label_in(label, words(span.original_words)) or _label_in(label, words(span.edited_words))):
        return EditCheck(edited, reason=f"touches the label {label!r}", touches_label=True, right_type=right_type, **base)
    if right_type is False:
        return EditCheck(
            edited, reason=f"changes {span.original_words!r}, not a phrase of the requested type", right_type=False, **base
        )
    return EditCheck(edited, right_type=right_type, **base)


@dataclass(frozen=True)
class EditScore:
    """LANCE's edit-success criteria for one model output."""

    parsed: bool
    one_phrase: bool
    right_type: bool
    label_safe: bool

    @property
    def success(self) -> bool:
        return self.parsed and self.one_phrase and self.right_type and self.label_safe


def score_edit(
    caption: str, edited: str | None, *, label: str | None = None, type_phrases: Sequence[str] | None = None
) -> EditScore:
    """Score one output (`edited` None or empty: nothing parsed). Unknown type phrases count as right."""
    if not edited or not words(edited):
        return EditScore(False, False, False, False)
    check = check_edit(caption, edited, label=label, type_phrases=type_phrases)
    one = check.n_changed_phrases == 1
    return EditScore(
        parsed=True,
        one_phrase=one,
        right_type=one and check.right_type is not False,
        label_safe=one and not check.touches_label,
    )


def summarize_scores(scores: Sequence[EditScore]) -> dict[str, float]:
    """Shares of outputs meeting each criterion (keys without a split prefix)."""
    n = max(len(scores), 1)
    return {
        "edit_parsed": sum(s.parsed for s in scores) / n,
        "edit_one_phrase": sum(s.one_phrase for s in scores) / n,
        "edit_right_type": sum(s.right_type for s in scores) / n,
        "edit_label_safe": sum(s.label_safe for s in scores) / n,
        "edit_success": sum(s.success for s in scores) / n,
    }


# ------------------------------------------------------------------------------------------ parser
def _strip_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text.strip(_QUOTES + " ").strip()


def _clean_line(line: str) -> str:
    line = line.strip()
    for _ in range(3):  # "1. Edit: "..."" carries nested prefixes
        stripped = _BULLET.sub("", line, count=1)
        stripped = _strip_quotes(stripped)
        if stripped == line:
            break
        line = stripped
    parts = _ARROW.split(line)
    if len(parts) > 1:  # "original -> edited": keep the edited side
        line = _strip_quotes(parts[-1])
    line = re.sub(r"\s*\((?:changed|replaced|edit|note)[^)]*\)\s*$", "", line, flags=re.IGNORECASE)
    return _strip_quotes(line).rstrip(" ,;")


def _split_lines(raw: str) -> list[str]:
    lines: list[str] = []
    for line in raw.replace("\r", "\n").split("\n"):
        # "1. a red star 2. a blue star" on one line
        if len(_INLINE_NUMBER.findall(line)) >= 2:
            lines.extend(p for p in _INLINE_NUMBER.split(line) if p.strip())
        else:
            lines.append(line)
    return lines


def parse_edits(raw: str, caption: str | None = None, *, truncated: bool = False, min_overlap: float = 0.5) -> list[str]:
    """Candidate edited captions in `raw`, in order, without duplicates.

    `truncated`: generation stopped at the token limit, so the last candidate is incomplete and dropped.
    With `caption`, lines sharing less than `min_overlap` of the caption's words are prose and dropped
    (an edit changes one phrase, so most words stay).
    """
    lines = _split_lines(raw)
    if truncated:
        while lines and not lines[-1].strip():
            lines.pop()
        lines = lines[:-1]
    cap_words = words(caption) if caption else []
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        if not line.strip() or _PROSE_START.match(line.strip()) or line.rstrip().endswith(":"):
            continue
        cand = _clean_line(line)
        w = words(cand)
        if not w or w[-1] in _DANGLING:
            continue
        if cap_words:
            shared = sum(min(w.count(x), cap_words.count(x)) for x in set(cap_words))
            if shared / len(cap_words) < min_overlap:
                continue
        key = " ".join(w)
        if key in seen:
            continue
        seen.add(key)
        out.append(cand)
    return out
