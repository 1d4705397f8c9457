"""Build a caption-edit dataset (JSONL for `data=caption_edits`) to fine-tune the LLM perturber.

Two sources:

    # exact edits from the Counterfactory World grammar (one factor changed, so one phrase changed)
    python -m src.generation.caption_edits_builder world --out data/caption_edits/world_seed.jsonl \
        --n-records 200 --edits-per-record 3 --seed 0

    # a user's captions (one per line, or JSONL with "caption" and optional "label") edited by a perturber:
    # a config of conf/generation/perturber/ (e.g. `rules`) with key=value overrides ...
    python -m src.generation.caption_edits_builder captions --captions my_captions.txt --perturber rules \
        --out data/caption_edits/mine.jsonl --max-edits 600
    # ... or a teacher instruct LLM by hub id (or local folder), prompted for numbered lists as LANCE did
    python -m src.generation.caption_edits_builder captions --captions coco.txt \
        --teacher Qwen/Qwen2.5-7B-Instruct --out data/caption_edits/teacher.jsonl --max-edits 600

    # edit success of any perturber on held-out records (LANCE reports 89% for its fine-tuned LLaMA)
    python -m src.generation.caption_edits_builder score --records data/caption_edits/world_heldout.jsonl \
        --perturber llm --set model_id=/models/llama-7b adapter_path=logs/train/runs/<run>/checkpoints/adapter

Every record is {caption, edit_type, edits, label?, type_phrases?, source}; edits that fail the single-
phrase check are left out and counted.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from src.generation.edit_parsing import EditScore, changed_span, normalize, score_edit, summarize_scores
from src.generation.types import CaptionEdit, Perturber
from src.world.dataset import FACTORS_BY_EDIT_TYPE, sample_factors
from src.world.grammar import CLASSES, EDIT_TYPE_NAMES, VOCABULARY, caption, phrases

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "generation" / "perturber"


# ------------------------------------------------------------------------------------------- world
def world_records(n_records: int, edits_per_record: int = 3, seed: int = 0) -> list[dict]:
    """Records of random world scenes, each with `edits_per_record` exact single-factor edits of one type."""
    rng = np.random.default_rng(seed)
    uniform = lambda factor: 1.0 / len(VOCABULARY[factor])  # noqa: E731 -- independent factors
    records = []
    for _ in range(n_records):
        f = sample_factors(rng, int(rng.integers(len(CLASSES))), uniform("background"), uniform("object"))
        edit_type = EDIT_TYPE_NAMES[int(rng.integers(len(EDIT_TYPE_NAMES)))]
        factors = FACTORS_BY_EDIT_TYPE[edit_type]
        options = [(k, v) for k in factors for v in VOCABULARY[k] if v != getattr(f, k)]
        picks = rng.permutation(len(options))[:edits_per_record]
        text = caption(f)
        edits = [caption(f.replace(**{options[i][0]: options[i][1]})) for i in picks]
        records.append(
            {
                "caption": text,
                "edit_type": edit_type,
                "edits": edits,
                "label": f.shape,
                "type_phrases": [phrases(f)[k] for k in factors],
                "source": "world",
            }
        )
    return records


# ---------------------------------------------------------------------------------------- captions
def read_captions(path: str | Path) -> list[dict]:
    """Captions of a text file (one per line) or a JSONL file ({"caption": ..., "label": ...})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions {path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or not isinstance(rec.get("caption"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'caption'")
            rows.append({"caption": rec["caption"].strip(), "label": rec.get("label")})
        else:
            rows.append({"caption": line.strip(), "label": None})
    return rows


def perturber_records(
    perturber: Perturber,
    captions: Sequence[dict],
    *,
    edits_per_record: int = 3,
    max_edits: int = 600,
    edit_types: Sequence[str] = EDIT_TYPE_NAMES,
    seed: int = 0,
) -> tuple[list[dict], Counter]:
    """Ask `perturber` for edits of random types until `max_edits` good ones; counts rejections by reason."""
    rng = random.Random(seed)
    rejected: Counter = Counter()
    records: list[dict] = []
    total = 0
    order = list(range(len(captions)))
    rng.shuffle(order)
    with tqdm(total=max_edits, desc=f"edits ({getattr(perturber, 'name', 'perturber')})") as bar:
        for n, i in enumerate(order):
            if total >= max_edits:
                break
            row = captions[i]
            edit_type = rng.choice(list(edit_types))
            results = perturber.perturb(row["caption"], edit_type, label=row.get("label"), num_edits=edits_per_record, seed=seed + n)
            edits, seen = [], set()
            for r in results:
                if not isinstance(r, CaptionEdit):
                    rejected[r.reason] += 1
                elif changed_span(row["caption"], r.edited_caption) is None:
                    rejected["changes more than one phrase"] += 1
                elif normalize(r.edited_caption) in seen:
                    rejected["duplicate"] += 1
                else:
                    seen.add(normalize(r.edited_caption))
                    edits.append(r.edited_caption)
            edits = edits[: max_edits - total]
            if edits:
                rec = {"caption": row["caption"], "edit_type": edit_type, "edits": edits, "source": getattr(perturber, "name", "")}
                if row.get("label"):
                    rec["label"] = row["label"]
                records.append(rec)
                total += len(edits)
                bar.update(len(edits))
    return records, rejected


def score_perturber(perturber: Perturber, records: Sequence[dict], seed: int = 0) -> tuple[dict[str, float], list[EditScore]]:
    """Edit success of any perturber: one edit per held-out record {caption, edit_type, label?, type_phrases?};
    a rejection that still carries an edited caption is scored on it (it parsed), one without did not parse."""
    scores = []
    for i, rec in enumerate(tqdm(records, desc="edit success")):
        (result,) = perturber.perturb(rec["caption"], rec["edit_type"], label=rec.get("label"), num_edits=1, seed=seed + i)
        edited = result.edited_caption or None
        scores.append(score_edit(rec["caption"], edited, label=rec.get("label"), type_phrases=rec.get("type_phrases")))
    return summarize_scores(scores), scores


def load_perturber(name_or_yaml: str, overrides: Sequence[str] = ()) -> Perturber:
    """A perturber from conf/generation/perturber/<name>.yaml (or a YAML path) with key=value overrides."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = Path(name_or_yaml)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_yaml}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"--perturber {name_or_yaml!r}: no config {path} (known: {known})")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    return instantiate(cfg)


def write_jsonl(records: Iterable[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(out)  # atomic: a crashed run never leaves half a file
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.generation.caption_edits_builder", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="source", required=True)
    w = sub.add_parser("world", help="exact edits from the world grammar")
    w.add_argument("--n-records", type=int, default=200)
    c = sub.add_parser("captions", help="edits of your captions by a perturber or a teacher LLM")
    c.add_argument("--captions", required=True, help="text file (one caption a line) or JSONL with caption/label")
    sc = sub.add_parser("score", help="edit success of a perturber on held-out caption-edit records")
    sc.add_argument("--records", required=True, help="caption-edit JSONL (e.g. a val file)")
    sc.add_argument("--limit", type=int, default=None)
    for p in (c, sc):
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--perturber", help="name in conf/generation/perturber/ (e.g. rules, llm) or a YAML path")
        who.add_argument("--teacher", help="instruct LLM hub id or local folder, prompted for numbered lists")
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the perturber config")
    c.add_argument("--max-edits", type=int, default=600)
    c.add_argument("--edit-types", nargs="*", default=list(EDIT_TYPE_NAMES), choices=EDIT_TYPE_NAMES)
    for p in (w, c):
        p.add_argument("--out", required=True)
        p.add_argument("--edits-per-record", type=int, default=3)
    for p in (w, c, sc):
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    perturber = None
    if args.source in ("captions", "score"):
        if args.teacher:
            from src.generation.perturber_llm import LLMPerturber

            perturber = LLMPerturber(args.teacher, prompt_style="teacher", config_key="--teacher")
        else:
            perturber = load_perturber(args.perturber, args.set)
    if args.source == "score":
        from src.datamodules.caption_edits import read_caption_edits

        records = read_caption_edits(args.records)[: args.limit]
        summary, _ = score_perturber(perturber, records, seed=args.seed)
        log.info("%d records: %s", len(records), json.dumps({k: round(v, 4) for k, v in summary.items()}))
        return 0
    if args.source == "world":
        records = world_records(args.n_records, args.edits_per_record, args.seed)
        rejected: Counter = Counter()
    else:
        records, rejected = perturber_records(
            perturber,
            read_captions(args.captions),
            edits_per_record=args.edits_per_record,
            max_edits=args.max_edits,
            edit_types=args.edit_types,
            seed=args.seed,
        )
    out = write_jsonl(records, args.out)
    n_edits = sum(len(r["edits"]) for r in records)
    log.info("wrote %d records / %d edits to %s", len(records), n_edits, out)
    for reason, n in rejected.most_common():
        log.info("  rejected %d: %s", n, reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
