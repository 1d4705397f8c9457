"""How long `python train.py experiment=baseline` takes on this machine, against the 3-minute budget,
and what the baseline and oracle learn (the world's calibration numbers in the README).

    python benchmarks/bench_train.py [--skip-oracle] [extra hydra overrides...]

Prints wall-clock seconds per run, the ratio to the budget, and acc@1 on iid, ood, and each
counterfactual edit type for the baseline (trained with the planted cue) and the oracle (trained
on independent factors).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUDGET_S = 180.0


def train(experiment: str, out: Path, extra: list[str]) -> float:
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "train.py", f"experiment={experiment}", "logger=csv_only", f"hydra.run.dir={out}",
           "callbacks.progress_bar.refresh_rate=0", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy_by_edit_type(classifier: Path) -> dict[str, float]:
    """acc@1 of an exported classifier on iid, ood and each ground-truth counterfactual edit type."""
    import numpy as np

    from src.datamodules.world import WorldDataModule
    from src.modules.backbones import _load_checkpoint, create_backbone, data_config

    dm = WorldDataModule(cache_dir=str(ROOT / ".cache"))
    model = create_backbone("small_cnn", dm.num_classes)
    _load_checkpoint(model, classifier)
    model.eval()
    dm.data_config = data_config(model)
    out = {}
    for split in ("iid", "ood", "counterfactual"):
        preds = torch.cat([model(b["image"]).argmax(1) for b in dm.split_dataloader(split)]).numpy()
        correct = preds == dm.records[split]["label"].to_numpy()
        out[split] = float(correct.mean())
        if split == "counterfactual":
            recs = dm.records[split]
            for kind in sorted(recs.edit_type.unique()):
                out[f"cf:{kind}"] = float(correct[(recs.edit_type == kind).to_numpy()].mean())
            bg_only = (recs.factor == "background").to_numpy()
            out["cf:background-scene-only"] = float(correct[bg_only].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-oracle", action="store_true")
    args, extra = ap.parse_known_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for exp in ["baseline"] + ([] if args.skip_oracle else ["oracle"]):
            out = Path(tmp) / exp
            seconds = train(exp, out, extra)
            acc = accuracy_by_edit_type(out / "checkpoints" / "classifier.safetensors")
            rows[exp] = {"seconds": seconds, **acc}
            print(f"{exp}: {seconds:.0f} s ({seconds / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget)", flush=True)
    keys = [k for k in next(iter(rows.values())) if k != "seconds"]
    print("\n| split | " + " | ".join(rows) + " |\n|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{100 * r[k]:.1f}" for r in rows.values()) + " |")
    base = rows["baseline"]
    print(f"\nbaseline drop on background-scene counterfactuals: {100 * (base['iid'] - base['cf:background-scene-only']):.1f} points")
    if "oracle" in rows:
        o = rows["oracle"]
        print(f"oracle drop on background-scene counterfactuals: {100 * (o['iid'] - o['cf:background-scene-only']):.1f} points")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
