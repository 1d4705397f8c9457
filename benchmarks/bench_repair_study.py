"""The repair study: baseline, standard augmentation (head / full), DFR and counterfactual WiSE-FT on the
world, several seeds, one results table (Li et al. Table 2 shape) + accuracy-vs-α plot.

    python benchmarks/bench_repair_study.py --out logs/repair_study --seeds 1 2 3
    python benchmarks/bench_repair_study.py --baseline logs/demo/baseline/checkpoints/classifier.safetensors \
        --oracle logs/demo/oracle/checkpoints/classifier.safetensors --n-train 12000 --n-test 2000

Every run is `train.py` with a fixed folder `<out>/<method>/s<seed>`; a folder with `metrics.json` is
skipped, so a rerun only does what is missing. Seeds vary the repair (data sampling, order, init);
the classifier under repair and the oracle are one run each (pass --baseline/--oracle to reuse yours).
Writes `<out>/results.csv`, `results.md`, `alpha_curves.csv`, `alpha_curves.png` (and W&B offline).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.repair.report import (alpha_curves, load_runs, log_to_wandb, plot_alpha_curves,  # noqa: E402
                               results_table, to_markdown)

METHODS = {
    # name in the table: train.py overrides (besides the shared ones)
    "standard_aug_head": ["experiment=standard_aug_head"],
    "standard_aug_full": ["experiment=standard_aug_full", "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"],
    "dfr": ["experiment=dfr"],
    "counterfactual": ["experiment=wise_ft"],
    "counterfactual_a0.3": ["experiment=wise_ft", "module.alpha=0.3"],
    # The same counterfactual mix, whole network fine-tuned (no WiSE-FT): what the data can do when the
    # frozen body lacks the features the head would need.
    "counterfactual_full": ["experiment=standard_aug_full", "data.repair_data=counterfactual", "data.augment=none",
                            "callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false"],
}


def run(args: list[str], folder: Path, log: Path) -> Path:
    if (folder / "metrics.json").is_file():
        return folder
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled")}
    cmd = [sys.executable, "train.py", *args, f"hydra.run.dir={folder}", "callbacks.progress_bar=null"]
    start = time.time()
    print(f"[study] {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}: {' '.join(args)}", flush=True)
    with open(log, "a") as fh:
        out = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if out.returncode != 0 or not (folder / "metrics.json").is_file():
        raise SystemExit(f"[study] run failed ({out.returncode}); see {log} and {folder}")
    print(f"[study]   {time.time() - start:.0f} s", flush=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "repair_study")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--methods", nargs="+", default=["counterfactual", "dfr", "counterfactual_a0.3", "standard_aug_head", "counterfactual_full", "standard_aug_full"], choices=list(METHODS))
    p.add_argument("--baseline", type=Path, help="classifier.safetensors to repair (default: train one)")
    p.add_argument("--oracle", type=Path, help="oracle classifier.safetensors (default: train one)")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-heldout", type=int, default=800)
    p.add_argument("--n-original", type=int, default=1200,
                   help="original training images for the standard-augmentation repairs (about the counterfactual mix's size)")
    p.add_argument("--classifier-epochs", type=int, default=4)
    p.add_argument("--max-epochs", type=int, default=50, help="repair epochs (early stopping decides)")
    p.add_argument("--live-max-epochs", type=int, default=10, help="epochs for the repairs without cached features")
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "study.log"
    world = [f"data.n_train={args.n_train}", f"data.n_val={args.n_val}", f"data.n_test={args.n_test}", "logger=csv_only"]

    # The classifier under repair and the oracle (lead's bug workaround: no best-checkpoint reload).
    fixed = ["callbacks.model_checkpoint=null", "+trainer.enable_checkpointing=false", "callbacks.early_stopping=null", f"trainer.max_epochs={args.classifier_epochs}", "seed=1"]
    baseline = args.baseline or run(["experiment=baseline", *world, *fixed], out / "baseline", log) / "checkpoints" / "classifier.safetensors"
    oracle = args.oracle or run(["experiment=oracle", *world, *fixed], out / "oracle", log) / "checkpoints" / "classifier.safetensors"

    repair = [*world, f"data.n_heldout={args.n_heldout}", f"trainer.max_epochs={args.max_epochs}"]
    # No repair: the classifiers themselves, tested on the same splits (train=false).
    runs: dict[str, list[Path]] = {
        "baseline": [run(["experiment=wise_ft", "train=false", "optimized_metric=null", f"module.classifier_path={baseline}",
                          *repair], out / "eval_baseline", log)],
        "oracle": [run(["experiment=wise_ft", "train=false", "optimized_metric=null", f"module.classifier_path={oracle}",
                        *repair], out / "eval_oracle", log)],
    }
    ceiling = head_only_ceiling(baseline, args, out)
    print(f"[study] head-only ceiling (linear probe on the baseline body, trained on held-out ood): {ceiling}", flush=True)
    # Cached-feature repairs first (minutes), then the ones that run the backbone every step.
    live = ("standard_aug_head", "standard_aug_full", "counterfactual_full")
    order = [m for m in args.methods if m not in live] + [m for m in args.methods if m in live]
    for m in order:
        for seed in args.seeds:
            clf = ([f"model.checkpoint_path={baseline}", f"data.weakness_classifier={baseline}"] if m.endswith("_full")
                   else [f"module.classifier_path={baseline}"])
            if m.startswith("standard_aug"):
                clf.append(f"data.n_original={args.n_original}")
            epochs = [f"trainer.max_epochs={args.live_max_epochs}"] if m in live else []
            runs.setdefault(m, []).append(run([*METHODS[m], *clf, *repair, *epochs, f"seed={seed}"], out / m / f"s{seed}", log))
            report(runs, out)


def head_only_ceiling(classifier: Path, args, out: Path) -> dict:
    """What any head-only repair could reach at best: a logistic-regression probe on the frozen body's
    features, trained on *ood* images of the held-out world (the distribution it is tested on)."""
    import json

    from sklearn.linear_model import LogisticRegression

    from src.evaluation.classifier import load_classifier
    from src.modules.feature_cache import FeatureExtractor
    from src.world.dataset import WorldSpec, build_world

    file = out / "head_only_ceiling.json"
    if file.is_file():
        return json.loads(file.read_text())
    clf = load_classifier(str(classifier), None, 8)
    ext = FeatureExtractor(clf.model, clf.data_config, cache_dir=ROOT / ".cache")
    test = build_world(WorldSpec(32, args.n_train, args.n_val, args.n_test, seed=0), ROOT / ".cache", splits=("iid", "ood"))
    held = build_world(WorldSpec(32, 1, 1, args.n_heldout, seed=1), ROOT / ".cache", splits=("ood",))
    probe = LogisticRegression(max_iter=3000).fit(ext(held["ood"].images).numpy(), held["ood"].records["label"])
    result = {f"probe_{k}/acc@1": float(probe.score(ext(v.images).numpy(), v.records["label"])) for k, v in test.items()}
    file.write_text(json.dumps(result, indent=2))
    return result


def report(runs: dict[str, list[Path]], out: Path) -> None:
    table = results_table(load_runs(runs))
    table.to_csv(out / "results.csv", index=False)
    md = to_markdown(table)
    if (out / "head_only_ceiling.json").is_file():
        md += ("\n\nHead-only ceiling (logistic-regression probe on the frozen baseline body, trained on held-out "
               f"`ood` images): {(out / 'head_only_ceiling.json').read_text()}")
    (out / "results.md").write_text(md + "\n")
    curves = alpha_curves(runs.get("counterfactual", []))
    curves.to_csv(out / "alpha_curves.csv", index=False)
    plot = None
    if len(curves):
        import json

        chosen = [json.loads((f / "metrics.json").read_text()).get("alpha", 0.0) for f in runs["counterfactual"]]
        plot = plot_alpha_curves(curves, chosen, out / "alpha_curves.png")
    print(md, flush=True)
    if os.environ.get("WANDB_MODE", "disabled") != "disabled":
        log_to_wandb(table, plot)


if __name__ == "__main__":
    main()
