"""The LLM-output parser and the single-phrase diff."""
import pytest

from src.generation.edit_parsing import (
    changed_span,
    changed_spans,
    check_edit,
    parse_edits,
    score_edit,
    summarize_scores,
)

CAP = "a photo of a small red striped star on white snow at night next to a tree with a dog"


@pytest.mark.parametrize(
    "after, expected",
    [
        (CAP.replace("red", "blue"), ("red", "blue")),
        (CAP.replace("on white snow", "in front of a brick wall"), ("on white snow", "in front of a brick wall")),
        (CAP.replace("at night", "in the rain"), ("at night", "in the rain")),
        (CAP.replace("a photo", "a sketch"), ("photo", "sketch")),
        (CAP.replace("with a dog", "with a fluffy dog"), ("", "fluffy")),
        (CAP.replace(" striped", ""), ("striped", "")),
        ("A photo of a small red striped star, on white snow at night next to a tree with a CAT.", ("dog", "cat")),
    ],
)
def test_changed_span_single_phrase(after, expected):
    assert changed_span(CAP, after) == expected


def test_changed_span_rejects_identical_and_two_phrases():
    assert changed_span(CAP, CAP) is None
    assert changed_span(CAP, CAP.upper() + "!") is None  # case and punctuation are not edits
    two = CAP.replace("red", "blue").replace("with a dog", "with a cat")
    assert changed_span(CAP, two) is None
    assert len(changed_spans(CAP, two)) == 2
    # "photo of a red" must not merge into one phrase: the gap "of a" holds more than an article
    assert changed_span("a photo of a red star", "a sketch of a blue star") is None


def test_check_edit_reasons():
    assert check_edit(CAP, CAP).reason == "identical to the caption"
    assert check_edit(CAP, "  ").reason == "empty edit"
    two = check_edit(CAP, CAP.replace("red", "blue").replace("dog", "cat"))
    assert two.reason.startswith("changes 2 phrases") and not two.ok
    lab = check_edit(CAP, CAP.replace("star", "circle"), label="star")
    assert lab.touches_label and "label" in lab.reason
    assert check_edit(CAP, CAP.replace("dog", "stars"), label="star").touches_label  # plural adds the label
    ok = check_edit(CAP, CAP.replace("dog", "cat"), label="star", type_phrases=["with a dog"])
    assert ok.ok and ok.right_type and (ok.original_words, ok.edited_words) == ("dog", "cat")
    wrong = check_edit(CAP, CAP.replace("red", "blue"), label="star", type_phrases=["with a dog"])
    assert wrong.right_type is False and "requested type" in wrong.reason
    # an inserted adjective at the edge of an adjective phrase counts as that type
    ins = check_edit("a dog on a couch", "a fluffy dog on a couch", type_phrases=["dog"])
    assert ins.ok and ins.right_type


def test_parse_numbered_list_with_prose_quotes_and_duplicates():
    raw = (
        "Sure! Here are 4 edits of the caption:\n"
        '1. "a photo of a small blue striped star on white snow at night next to a tree with a dog"\n'
        "2) a photo of a small green striped star on white snow at night next to a tree with a dog.\n"
        "- 'A photo of a small blue striped star on white snow at night next to a tree with a dog'\n"
        "I hope these help.\n"
        "4. a photo of a small yellow striped star on white snow at night next to a"
    )
    out = parse_edits(raw, CAP)
    assert out == [
        "a photo of a small blue striped star on white snow at night next to a tree with a dog",
        "a photo of a small green striped star on white snow at night next to a tree with a dog.",
    ]


def test_parse_truncation_arrows_inline_numbers_and_prefixes():
    raw = f"{CAP} -> {CAP.replace('dog', 'cat')}\nEdited caption: {CAP.replace('tree', 'rock')}\n{CAP.replace('red', 'blue')}"
    assert parse_edits(raw, CAP, truncated=True) == [CAP.replace("dog", "cat"), CAP.replace("tree", "rock")]
    inline = "1. a red star on sand 2. a blue circle on sand 3. a red star on grass"
    assert parse_edits(inline, "a red circle on sand") == ["a red star on sand", "a blue circle on sand", "a red star on grass"]
    assert parse_edits("### Response:\n`a cartoon of a dog`", "a photo of a dog") == ["a cartoon of a dog"]
    assert parse_edits("", CAP) == []
    assert parse_edits("Okay.", CAP) == []


def test_score_edit_and_summary():
    good = score_edit(CAP, CAP.replace("dog", "cat"), label="star", type_phrases=["with a dog"])
    assert good.success
    label_hit = score_edit(CAP, CAP.replace("star", "heart"), label="star")
    assert label_hit.parsed and label_hit.one_phrase and not label_hit.label_safe and not label_hit.success
    nothing = score_edit(CAP, None)
    assert not nothing.parsed and not nothing.success
    summary = summarize_scores([good, label_hit, nothing, good])
    assert summary["edit_success"] == pytest.approx(0.5)
    assert summary["edit_parsed"] == pytest.approx(0.75)
    assert summary["edit_one_phrase"] == pytest.approx(0.75)
