"""Caption edits for fine-tuning the LLM perturber (`data=caption_edits`).

A JSONL file, one record per line:

    {"caption": "...", "edit_type": "background", "edits": ["...", "..."],
     "label": "star",                       # optional: the class word the edit must keep
     "type_phrases": ["on white snow", ...]} # optional: phrases of the caption of that edit type

Every edit becomes one training example: the LANCE instruction prompt of its edit type with the caption
as input (from `src.generation.perturber_llm.build_prompt`, the same prompt the perturber generates
with) and the edited caption plus the end token as the response; the loss sees only the response.

Records are validated: edits that are empty, identical to the caption, change more than one phrase or
repeat an earlier edit are dropped and counted, as are records left with no edits and examples longer
than `max_length` tokens. Train/val are split by caption, so no caption is in both.
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from src.generation.edit_parsing import changed_spans, normalize, words
from src.generation.perturber_llm import build_prompt, encode_prompt, load_tokenizer, prepare_tokenizer
from src.generation.types import EDIT_TYPES

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------- records
def read_caption_edits(path: str | Path) -> list[dict]:
    """Records of a JSONL file; malformed lines raise an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption-edit file {path} does not exist (data.train_file / data.val_file)")
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            for key, kind in (("caption", str), ("edit_type", str), ("edits", list)):
                if not isinstance(rec.get(key), kind):
                    raise ValueError(f"{where}: key {key!r} must be a {kind.__name__}, got {rec.get(key)!r}")
            if rec["edit_type"] not in EDIT_TYPES:
                raise ValueError(f"{where}: edit_type {rec['edit_type']!r} is not one of {EDIT_TYPES}")
            rec["_where"] = where
            records.append(rec)
    return records


@dataclass
class DropReport:
    """What validation removed, by reason."""

    edits: Counter = field(default_factory=Counter)
    records: Counter = field(default_factory=Counter)
    kept_records: int = 0
    kept_edits: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {f"dropped_edits/{k}": v for k, v in sorted(self.edits.items())}
        out.update({f"dropped_records/{k}": v for k, v in sorted(self.records.items())})
        out.update(kept_records=self.kept_records, kept_edits=self.kept_edits)
        return out

    def __str__(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in self.as_dict().items() if k.startswith("dropped")) or "nothing"
        return f"kept {self.kept_records} records / {self.kept_edits} edits; dropped {dropped}"


def validate_records(records: Sequence[dict]) -> tuple[list[dict], DropReport]:
    """Keep the edits that change exactly one phrase of their caption; count the rest by reason."""
    report = DropReport()
    kept = []
    for rec in records:
        if not words(rec["caption"]):
            report.records["empty_caption"] += 1
            continue
        good, seen = [], set()
        for edit in rec["edits"]:
            if not isinstance(edit, str) or not words(edit):
                report.edits["empty"] += 1
                continue
            n_spans = len(changed_spans(rec["caption"], edit))
            if n_spans == 0:
                report.edits["identical"] += 1
            elif n_spans > 1:
                report.edits["multi_phrase"] += 1
            elif normalize(edit) in seen:
                report.edits["duplicate"] += 1
            else:
                seen.add(normalize(edit))
                good.append(edit.strip())
        if not good:
            report.records["no_valid_edits"] += 1
            continue
        kept.append({**rec, "edits": good})
        report.kept_edits += len(good)
    report.kept_records = len(kept)
    return kept, report


def split_by_caption(records: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train/val split of records grouped by caption (seeded)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in [0, 1), got {val_fraction}")
    captions = sorted({normalize(r["caption"]) for r in records})
    random.Random(seed).shuffle(captions)
    n_val = math.ceil(val_fraction * len(captions)) if val_fraction > 0 and len(captions) > 1 else 0
    val_caps = set(captions[:n_val])
    train = [r for r in records if normalize(r["caption"]) not in val_caps]
    val = [r for r in records if normalize(r["caption"]) in val_caps]
    return train, val


# ---------------------------------------------------------------------------------------- examples
def encode_example(tokenizer: Any, prompt: str, response: str) -> dict[str, list[int]]:
    """Prompt + response + end token; labels mask the prompt so the loss sees the response only."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


class CaptionEditExamples(Dataset):
    """Tokenized (prompt, edit) examples of validated records."""

    def __init__(self, records: Sequence[dict], tokenizer: Any, max_length: int = 1024, label_in_prompt: bool = True):
        self.examples: list[dict[str, list[int]]] = []
        self.too_long = 0
        for rec in records:
            prompt = build_prompt(rec["caption"], rec["edit_type"], rec.get("label") if label_in_prompt else None)
            for edit in rec["edits"]:
                ex = encode_example(tokenizer, prompt, edit)
                if len(ex["input_ids"]) > max_length:
                    self.too_long += 1
                    continue
                self.examples.append(ex)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


@dataclass
class PadCollator:
    """Right-pads a batch; padding is masked out of attention and loss."""

    pad_token_id: int

    def __call__(self, batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            input_ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :n] = torch.tensor(ex["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ------------------------------------------------------------------------------------- datamodule
class CaptionEditsDataModule(LightningDataModule):
    """Train/val caption-edit examples for `module=perturber_lora`.

    The tokenizer is the base model's: `tokenizer_id` (interpolated from `module.model_id` in the config)
    or a tokenizer object passed in. `heldout_records()` are val captions for measuring edit success.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        val_fraction: float = 0.1,
        tokenizer_id: str | None = None,
        tokenizer: Any = None,
        max_length: int = 1024,
        batch_size: int = 4,
        num_workers: int = 0,
        label_in_prompt: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if tokenizer is None and not tokenizer_id:
            raise ValueError("data.tokenizer_id is required (normally ${module.model_id}) when no tokenizer is given")
        self.train_file, self.val_file = train_file, val_file
        self.val_fraction, self.seed = val_fraction, seed
        self.tokenizer_id = tokenizer_id
        self._tokenizer = tokenizer
        self.max_length, self.batch_size, self.num_workers = max_length, batch_size, num_workers
        self.label_in_prompt = label_in_prompt
        self.train_records: list[dict] = []
        self.val_records: list[dict] = []
        self.drop_report = DropReport()
        self.data_train: CaptionEditExamples | None = None
        self.data_val: CaptionEditExamples | None = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_id, key="data.tokenizer_id")
        return prepare_tokenizer(self._tokenizer)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:
            return
        records, report = validate_records(read_caption_edits(self.train_file))
        if self.val_file:
            val_records, val_report = validate_records(read_caption_edits(self.val_file))
            report.edits.update(val_report.edits)
            report.records.update(val_report.records)
            report.kept_records += val_report.kept_records
            report.kept_edits += val_report.kept_edits
            train_records = records
        else:
            train_records, val_records = split_by_caption(records, self.val_fraction, self.seed)
        if not train_records:
            raise ValueError(f"{self.train_file}: no valid caption edits left for training ({report})")
        self.data_train = CaptionEditExamples(train_records, self.tokenizer, self.max_length, self.label_in_prompt)
        self.data_val = CaptionEditExamples(val_records, self.tokenizer, self.max_length, self.label_in_prompt)
        too_long = self.data_train.too_long + self.data_val.too_long
        if too_long:
            report.edits["too_long"] += too_long
        self.train_records, self.val_records, self.drop_report = train_records, val_records, report
        log.info("caption edits: %s; %d train / %d val examples", report, len(self.data_train), len(self.data_val))

    def heldout_records(self, n: int | None = None) -> list[dict]:
        """Val records (captions unseen in training) for edit-success evaluation."""
        return list(self.val_records[:n] if n is not None else self.val_records)

    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=PadCollator(self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)
