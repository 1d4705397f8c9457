"""What world_clip knows, on fresh independent-factor renders (a seed no training split uses):

    python benchmarks/bench_world_clip.py [--clip assets/world/clip] [--n 512]

- zero-shot class accuracy with several prompt sets (the template ensemble of `class_prompts`, 'a {shape}',
  32 full captions per class with random other factors);
- true caption vs the same caption with one factor swapped, per factor (what the consistency checks use);
- a linear probe per factor on the frozen image embedding (fit on 2/3, scored on 1/3): how much of each
  factor the image tower encodes at all, whatever the text tower says.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FRESH_SEED = 12345  # no training split uses it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=str(ROOT / "assets/world/clip"))
    ap.add_argument("--n", type=int, default=512, help="fresh renders (the linear probe uses 3x as many)")
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression

    from src.world.grammar import CLASSES, VOCABULARY, Factors, caption
    from src.world.models import class_prompts, load_world_clip, zero_shot_weights
    from src.world.probes import factor_targets, render_independent

    model, tokenizer, preprocess = load_world_clip(args.clip)
    images, factors = render_independent(3 * args.n, seed=FRESH_SEED)

    @torch.no_grad()
    def embed(batch: np.ndarray) -> torch.Tensor:
        return F.normalize(model.encode_image(torch.stack([preprocess(Image.fromarray(a)) for a in batch])), dim=-1)

    img = torch.cat([embed(images[i:i + 256]) for i in range(0, len(images), 256)])
    labels = torch.tensor([f.label for f in factors])
    rng = np.random.default_rng(0)
    full = {c: [caption(Factors(**{k: (c if k == "shape" else v[rng.integers(len(v))]) for k, v in VOCABULARY.items()}))
                for _ in range(32)] for c in CLASSES}
    prompt_sets = {"template ensemble (class_prompts)": None, "'a {shape}'": {c: [f"a {c}"] for c in CLASSES},
                   "32 full captions per class": full}
    out: dict = {"zero_shot": {}, "caption_swap": {}, "linear_probe": {}}
    head = img[:args.n]
    print(f"zero-shot class accuracy on {args.n} fresh renders (chance {1 / len(CLASSES):.3f}):")
    for name, prompts in prompt_sets.items():
        weights = zero_shot_weights(model, tokenizer, prompts)
        acc = float(((head @ weights.T).argmax(1) == labels[:args.n]).float().mean())
        out["zero_shot"][name] = acc
        print(f"  {name}: {acc:.3f}")

    with torch.no_grad():
        true = F.normalize(model.encode_text(tokenizer([caption(f) for f in factors[:args.n]])), dim=-1)
        for k, vocab in VOCABULARY.items():
            wrong = [caption(f.replace(**{k: rng.choice([v for v in vocab if v != getattr(f, k)])}))
                     for f in factors[:args.n]]
            wrong = F.normalize(model.encode_text(tokenizer(wrong)), dim=-1)
            out["caption_swap"][k] = float(((head * true).sum(1) > (head * wrong).sum(1)).float().mean())
    print("true caption preferred over one factor swapped:", json.dumps({k: round(v, 3) for k, v in out["caption_swap"].items()}))

    targets = factor_targets(factors)
    x = img.numpy()
    split = 2 * args.n
    for k in VOCABULARY:
        clf = LogisticRegression(max_iter=2000).fit(x[:split], targets[k][:split])
        out["linear_probe"][k] = float(clf.score(x[split:], targets[k][split:]))
    print("linear probe on the image embedding (held-out accuracy):",
          json.dumps({k: round(v, 3) for k, v in out["linear_probe"].items()}))


if __name__ == "__main__":
    main()
