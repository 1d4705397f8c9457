"""Speed of evaluation on the CPU: 10,000 world images (the ground-truth counterfactual split of 2,000
iid scenes), cold cache vs warm cache, plus the paired bootstrap over every group.

`python benchmarks/bench_evaluate.py [--ckpt path/to/classifier.safetensors] [--images 10000]`
Targets (issue 5): cold <= 60 s, warm a few seconds. Rendering the world is cached and not timed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def default_classifier(folder: Path) -> str:
    """An untrained small_cnn (speed does not depend on the weights) exported like train.py does."""
    from safetensors.torch import save_file

    from src.modules.backbones import create_backbone

    node = {"_target_": "src.modules.backbones.create_backbone", "name": "small_cnn", "pretrained": False,
            "checkpoint_path": None, "input_size": 32}
    model = create_backbone("small_cnn", 8, input_size=32)
    path = folder / "classifier.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"model": json.dumps(node), "class_names": "[]", "num_classes": "8"})
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--images", type=int, default=10000, help="edits to evaluate (5 per iid scene)")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache"), help="where the rendered world lives")
    args = ap.parse_args()

    import numpy as np

    from src.datamodules.world import WorldDataModule
    from src.evaluation.classifier import load_classifier
    from src.evaluation.metrics import PairedBootstrap
    from src.evaluation.predictions import Predictor
    from src.evaluation.sets import world_paired_set
    from src.evaluation.settings import EvaluationSettings
    from src.evaluation.stress_test import SetResult, group_metrics

    n_test = max(1, args.images // 5)
    dm = WorldDataModule(n_test=n_test, cache_dir=args.cache_dir, test_splits=("iid", "counterfactual"))
    t = time.perf_counter()
    ps = world_paired_set(dm)
    print(f"world sets ready ({len(ps.sources)} sources, {len(ps.edits)} edits): {time.perf_counter() - t:.1f} s (not timed)")
    with tempfile.TemporaryDirectory() as tmp:
        clf = load_classifier(args.ckpt or default_classifier(Path(tmp)), None, None)
        cache = Path(tmp) / "cache"
        timings = {}
        for label in ("cold", "warm"):
            t = time.perf_counter()
            pred = Predictor(clf, batch_size=256, device="cpu", cache_dir=cache)
            edits = pred.predict(ps.edits)
            sources = pred.predict(ps.sources)
            pred.save_cache()
            t_pred = time.perf_counter() - t
            res = SetResult(ps, sources, edits, None)
            res.groups = group_metrics(res, clf.class_names, [1, 5], EvaluationSettings(bootstrap=1000))
            timings[label] = (t_pred, time.perf_counter() - t, pred.computed)
            print(f"{label:>4} cache: predict {len(ps.edits) + len(ps.sources)} images ({pred.computed} computed) "
                  f"{t_pred:.2f} s; + bootstrap CIs for {len(res.groups)} groups: {timings[label][1]:.2f} s total")
        rate = len(ps.edits) / timings["cold"][0]
        print(f"throughput: {rate:.0f} images/s; cold {timings['cold'][1]:.1f} s (target <= 60 s), "
              f"warm {timings['warm'][1]:.1f} s; cold/warm = {timings['cold'][1] / timings['warm'][1]:.1f}x")
        del np, PairedBootstrap


if __name__ == "__main__":
    main()
