"""Consistency thresholds for world_clip, calibrated on the renderer's exact counterfactuals.

    python benchmarks/calibrate_world_consistency.py [--clip assets/world/clip] [--sources 400] [--quantile 0.1]

LANCE's thresholds (directional 0.2, image 0.7, image-text 0.2) were set for OpenAI's CLIP ViT-L/14; a
mini CLIP spreads its scores differently (with the first world_clip the image threshold alone rejected
most exact background and domain edits). Here every score is computed on ground-truth single-factor
counterfactuals of iid sources that the benchmark does not use (sources from index 1000 on), and the
threshold is set at a low quantile of the ground truth: a correct edit passes each check with
probability >= 1 - quantile. Prints the per-edit-type quantiles, the thresholds, and the share of exact
counterfactuals that pass all checks at LANCE's thresholds and at the calibrated ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THRESHOLDED = ("directional_similarity", "image_similarity", "image_text_similarity")
LANCE = {"directional_similarity": 0.2, "image_similarity": 0.7, "image_text_similarity": 0.2}
FIRST_SOURCE = 1000  # bench_world_models.py judges sources 0..39


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=str(ROOT / "assets/world/clip"))
    ap.add_argument("--sources", type=int, default=400)
    ap.add_argument("--quantile", type=float, default=0.1)
    args = ap.parse_args()

    from src.generation.consistency import ClipConsistency
    from src.world.dataset import WorldSpec, build_world
    from src.world.models import world_clip_encoder

    world = build_world(WorldSpec(), ROOT / ".cache", splits=("iid", "counterfactual"))
    iid, cf = world["iid"], world["counterfactual"]
    if len(iid.records) < FIRST_SOURCE + args.sources:
        raise SystemExit(f"--sources {args.sources}: the iid split has {len(iid.records)} scenes; at most "
                         f"{len(iid.records) - FIRST_SOURCE} are apart from the benchmark's")
    iid_index = {r: i for i, r in enumerate(iid.records["id"])}
    by_source = cf.records.groupby("source_id").groups
    scorer = ClipConsistency(world_clip_encoder(args.clip), require_closer_to_edit=False)
    rows = []
    for _, src in tqdm(list(iid.records.iloc[FIRST_SOURCE:FIRST_SOURCE + args.sources].iterrows()), desc="scores"):
        source = Image.fromarray(iid.images[iid_index[src["id"]]])
        for ei in by_source.get(src["id"], []):
            edit = cf.records.loc[ei]
            v = scorer.score(source, src["caption"], edit["caption"], [Image.fromarray(cf.images[ei])])[0]
            rows.append({"edit_type": edit["edit_type"], **v.scores})
    types = sorted({r["edit_type"] for r in rows})
    print(f"{len(rows)} exact counterfactuals of {args.sources} sources; quantile {args.quantile} per edit type:")
    print("score".ljust(24) + "".join(t.rjust(12) for t in types) + "all".rjust(12))
    thresholds = {}
    for k in (*THRESHOLDED, "text_margin"):
        per = [np.quantile([r[k] for r in rows if r["edit_type"] == t], args.quantile) for t in types]
        thresholds[k] = float(np.quantile([r[k] for r in rows], args.quantile))
        print(k.ljust(24) + "".join(f"{q:12.3f}" for q in per) + f"{thresholds[k]:12.3f}")

    def pass_rate(th: dict) -> float:
        return float(np.mean([all(r[k] >= th[k] for k in THRESHOLDED) and r["text_margin"] > 0 for r in rows]))

    calibrated = {k: round(thresholds[k], 2) for k in THRESHOLDED}
    print(f"\nexact counterfactuals passing every check: LANCE thresholds {pass_rate(LANCE):.3f}, "
          f"calibrated {calibrated} {pass_rate(calibrated):.3f}")


if __name__ == "__main__":
    main()
