"""UNet evaluations per accepted counterfactual: the LANCE reference configuration vs the fast one.

reference: null-text inversion (T steps x `--inner-steps` Adam steps), a fresh inversion for every edit,
           the six self-attention injection fractions run one after another (one UNet batch each);
fast:      negative-prompt inversion, cached once per image, every edit and fraction of an image in one
           UNet batch per step.
Both run the same pipeline on Counterfactory World scenes with tiny random models built in code (the
consistency thresholds are open, so acceptance is equal and the ratio is the cost ratio). "UNet evals"
counts batched forward calls; "UNet samples" counts batch rows (what a GPU pays when it is not batch-bound).

    .venv/bin/python benchmarks/bench_generation.py [--images 2 --edits 3 --steps 10 --inner-steps 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from src.generation.captioner_ground_truth import GroundTruthCaptioner
from src.generation.consistency import ClipConsistency
from src.generation.editor_p2p import PromptToPromptEditor
from src.generation.inverter_negative_prompt import NegativePromptInverter
from src.generation.inverter_null_text import NullTextInverter
from src.generation.perturber_rules import RulePerturber
from src.generation.pipeline import GenerationPipeline
from src.generation.sources import WorldSource
from src.generation.tiny_models import tiny_clip_encoder, tiny_diffusion

FRACTIONS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def run(name: str, fast: bool, args, tmp: str) -> dict:
    d = tiny_diffusion(image_size=args.image_size, num_inference_steps=args.steps)
    inverter = NegativePromptInverter(d) if fast else NullTextInverter(d, num_inner_steps=args.inner_steps,
                                                                       early_stop_epsilon=args.early_stop)
    consistency = ClipConsistency(tiny_clip_encoder(image_size=args.image_size), directional=-1, image=-1,
                                  image_text=-1, require_closer_to_edit=False)
    pipe = GenerationPipeline(GroundTruthCaptioner(), RulePerturber(), editor=PromptToPromptEditor(d, batch_sweep=fast),
                              inverter=inverter, consistency=consistency, num_edits=args.edits,
                              self_replace_fractions=FRACTIONS, reuse_inversion=fast, progress=False,
                              config_hash=name)
    src = WorldSource(n_train=4, n_val=4, n_test=args.images, image_size=args.image_size, cache_dir=f"{tmp}/cache")
    t0 = time.perf_counter()
    pipe.run(src, f"{tmp}/{name}")
    s = pipe.stats
    samples = s.inversion_cost.extra.get("unet_samples", 0) + s.edit_cost.extra.get("unet_samples", 0)
    return {"name": name, "accepted": s.accepted, "unet_evals": s.unet_evals, "unet_samples": samples,
            "inversion_evals": s.inversion_cost.unet_evals, "edit_evals": s.edit_cost.unet_evals,
            "seconds": time.perf_counter() - t0,
            "evals_per_accepted": s.unet_evals / max(s.accepted, 1),
            "samples_per_accepted": samples / max(s.accepted, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--inner-steps", type=int, default=10)
    ap.add_argument("--early-stop", type=float, default=1e-5)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run("reference", False, args, tmp), run("fast", True, args, tmp)]
    print(f"{'config':10s} {'accepted':>8s} {'unet evals':>10s} {'inversion':>9s} {'editing':>8s} "
          f"{'evals/acc':>9s} {'samples/acc':>11s} {'seconds':>8s}")
    for r in rows:
        print(f"{r['name']:10s} {r['accepted']:8d} {r['unet_evals']:10d} {r['inversion_evals']:9d} {r['edit_evals']:8d} "
              f"{r['evals_per_accepted']:9.1f} {r['samples_per_accepted']:11.1f} {r['seconds']:8.1f}")
    ref, fast = rows
    print(f"UNet evaluations per accepted counterfactual: reference/fast = "
          f"{ref['evals_per_accepted'] / max(fast['evals_per_accepted'], 1e-9):.1f}x (target >= 10x); "
          f"per UNet sample (batch rows): {ref['samples_per_accepted'] / max(fast['samples_per_accepted'], 1e-9):.1f}x; "
          f"wall clock: {ref['seconds'] / max(fast['seconds'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
