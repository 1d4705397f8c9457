"""Counterfactual-filter debugging study (Tariq & Zia) on the world and Fashion-MNIST; prints the tables.

Per dataset, each stage a `train.py` run in its own folder under --out (a stage whose output exists is
reused, so an interrupted study resumes):

1. classifier  -- a CE-trained classifier (or --<dataset>-classifier PATH to reuse one, e.g. the
                  baseline's checkpoints/classifier.safetensors);
2. cfe         -- `experiment=cfe[_fashion_mnist]`: explainer, global MC filters, faithfulness and
                  misclassification detection (Table 1) next to the max-softmax baseline;
3. debug       -- a Hydra multirun of `experiment=mc_debug[_fashion_mnist]` over the lambda_mc x
                  lambda_nonmc grid and the seeds; lambda_mc = lambda_nonmc = 0 is the CE-only control
                  fine-tuned for the same epochs (Table 2; Table 3: per-class recall changes);
4. analysis    -- accuracy per counterfactual edit type (world: does debugging reduce reliance on the
                  background?) and Grad-CAM before/after for chosen test images (PNG).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_filter_debugging.py            # full study
    .venv/bin/python benchmarks/bench_filter_debugging.py --datasets world --seeds 1 --quick

The setting reported as "best" is picked on validation accuracy, never on test accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASETS = {
    "world": {"cfe": "cfe", "debug": "mc_debug", "splits": ["iid", "ood", "counterfactual"], "data": []},
    "fashion_mnist": {"cfe": "cfe_fashion_mnist", "debug": "mc_debug_fashion_mnist", "splits": ["test"],
                      "data": ["data.max_train=12000"]},
}


def run(args: list[str], log: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PROJECT_ROOT": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, "logger=csv_only"]
    print("  $", " ".join(cmd[1:]), flush=True)
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"stage failed ({proc.returncode}); see {log}")
    print(f"    done in {time.time() - t:.0f} s", flush=True)


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    m = 100 * statistics.mean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.2f} ± {s:.2f}"


def debug_runs(sweep: Path) -> list[dict]:
    """One dict per multirun job: lambdas, seed, metrics, folder."""
    import yaml

    runs = []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").exists()):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        runs.append({"lambda_mc": float(overrides["module.lambda_mc"]), "lambda_nonmc": float(overrides["module.lambda_nonmc"]),
                     "seed": int(overrides["seed"]), "metrics": json.loads((job / "metrics.json").read_text()), "dir": job})
    return runs


def table2(runs: list[dict], base: dict, splits: list[str]) -> tuple[str, tuple[float, float]]:
    """Accuracy per lambda setting (mean ± std over seeds), the control first; returns the best
    debugged setting by validation accuracy."""
    settings = sorted({(r["lambda_mc"], r["lambda_nonmc"]) for r in runs})
    head = "| model | λ₁ | λ₂ | seeds | train acc | val acc | " + " | ".join(f"{s} acc" for s in splits) + " |"
    lines = [head, "|" + "---|" * (6 + len(splits))]
    if base:
        lines.append("| base classifier | – | – | – | – | " + f"{100 * base.get('val/acc@1', float('nan')):.2f} | "
                     + " | ".join(f"{100 * base.get(f'test_{s}/acc@1', float('nan')):.2f}" for s in splits) + " |")
    best, best_val = None, -1.0
    for lm, ln in settings:
        rs = [r for r in runs if (r["lambda_mc"], r["lambda_nonmc"]) == (lm, ln)]
        name = "fine-tuned (CE only)" if lm == ln == 0 else "debugged"
        val = [r["metrics"].get("val/acc@1", float("nan")) for r in rs]
        lines.append(f"| {name} | {lm:g} | {ln:g} | {len(rs)} | {mean_std([r['metrics'].get('train/acc@1', float('nan')) for r in rs])} "
                     f"| {mean_std(val)} | " + " | ".join(mean_std([r["metrics"][f"test_{s}/acc@1"] for r in rs]) for s in splits) + " |")
        if not (lm == ln == 0) and statistics.mean(val) > best_val:
            best, best_val = (lm, ln), statistics.mean(val)
    return "\n".join(lines), best


def paired_gain(runs: list[dict], setting: tuple[float, float], split: str) -> str:
    """Debugged minus control test accuracy, paired by seed (points)."""
    ctrl = {r["seed"]: r["metrics"][f"test_{split}/acc@1"] for r in runs if r["lambda_mc"] == r["lambda_nonmc"] == 0}
    dbg = {r["seed"]: r["metrics"][f"test_{split}/acc@1"] for r in runs if (r["lambda_mc"], r["lambda_nonmc"]) == setting}
    diffs = [dbg[s] - ctrl[s] for s in sorted(set(ctrl) & set(dbg))]
    return mean_std(diffs) + f" (n={len(diffs)} seeds)"


def table3(runs: list[dict], setting: tuple[float, float], split: str, k: int = 3) -> str:
    """Classes with the largest mean recall gains and losses, debugged vs control, over seeds."""
    def per_class(rs):
        prefix = f"test_{split}/recall/"
        keys = [key for key in rs[0]["metrics"] if key.startswith(prefix)]
        return {key[len(prefix):]: statistics.mean(r["metrics"][key] for r in rs) for key in keys}

    ctrl = per_class([r for r in runs if r["lambda_mc"] == r["lambda_nonmc"] == 0])
    dbg = per_class([r for r in runs if (r["lambda_mc"], r["lambda_nonmc"]) == setting])
    delta = sorted(((dbg[c] - ctrl[c], c) for c in ctrl), reverse=True)
    lines = [f"| class | control recall | debugged recall | change |", "|---|---|---|---|"]
    for d, c in delta[:k] + [("…", "…")] + delta[-k:] if len(delta) > 2 * k else delta:
        if d == "…":
            lines.append("| … | | | |")
            continue
        lines.append(f"| {c} | {ctrl[c]:.3f} | {dbg[c]:.3f} | {d:+.3f} |")
    return "\n".join(lines)


def faithfulness_table(report: dict) -> str:
    lines = ["| split | acc | MC filters / image | keep-only-MC holds pred. | p drop: MC off | p drop: random off "
             "| recall drop, own global MC off | recall drop, other classes | MI flips to target | MI filters |",
             "|" + "---|" * 10]
    for split, r in report["splits"].items():
        lines.append(f"| {split} | {r['acc@1']:.3f} | {r['mc_count']:.1f} | {r['mc_keep']:.3f} | {r['drop_mc']:.3f} | "
                     f"{r['drop_rand']:.3f} | {r['global_drop_own']:.3f} | {r['global_drop_other']:.3f} | "
                     f"{r['mi_flip']:.3f} | {r['mi_count']:.1f} |")
    return "\n".join(lines)


def analysis(dataset: str, spec: dict, out: Path, base_ckpt: Path, runs: list[dict], best: tuple[float, float]) -> str:
    """Accuracy per counterfactual edit type (world) and Grad-CAM before/after, from exported classifiers."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from src.config_schema import register_schemas
    from src.modules.backbones import data_config
    from src.modules.cfe import load_classifier_weights
    from src.modules.gradcam import grad_cam, save_gradcam_grid, to_display

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    register_schemas()
    GlobalHydra.instance().clear()
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={spec['debug']}", *spec["data"], "module.classifier_path=null"],
                      return_hydra_config=False)

    def load(path: Path):
        bb = instantiate(cfg.model, num_classes=dm.num_classes)
        return load_classifier_weights(bb, path).eval()

    dm = instantiate(cfg.data)
    dm.data_config = data_config(instantiate(cfg.model, num_classes=dm.num_classes))
    dm.setup()
    split = "ood" if dataset == "world" else "test"
    models = {"base": [load(base_ckpt)]}
    for name, setting in (("CE fine-tuned", (0.0, 0.0)), ("debugged", best)):
        models[name] = [load(r["dir"] / "checkpoints" / "classifier.safetensors") for r in runs
                        if (r["lambda_mc"], r["lambda_nonmc"]) == setting]

    @torch.no_grad()
    def predict(model, loader):
        return torch.cat([model(b["image"]).argmax(1) for b in loader])

    text = []
    if dataset == "world":
        loader = dm.split_dataloader("counterfactual")
        rec = dm.records["counterfactual"]
        labels = torch.as_tensor(rec["label"].to_numpy())
        edit = rec["edit_type"].to_numpy()
        types = sorted(set(edit))
        text += ["| model | " + " | ".join(types) + " | ood |", "|" + "---|" * (len(types) + 2)]
        ood_labels = torch.as_tensor(dm.records["ood"]["label"].to_numpy())
        for name, ms in models.items():
            accs = {t: [] for t in types}
            ood = []
            for m in ms:
                p = predict(m, loader)
                for t in types:
                    sel = torch.as_tensor(edit == t)
                    accs[t].append(float((p[sel] == labels[sel]).float().mean()))
                ood.append(float((predict(m, dm.split_dataloader("ood")) == ood_labels).float().mean()))
            text.append(f"| {name} | " + " | ".join(mean_std(accs[t]) for t in types) + f" | {mean_std(ood)} |")
    # Grad-CAM: test images the base model gets wrong and the first debugged model gets right.
    batch = next(iter(dm.split_dataloader(split)))
    x, y = batch["image"][:128], batch["label"][:128]
    with torch.no_grad():
        pb, pd = models["base"][0](x).argmax(1), models["debugged"][0](x).argmax(1)
    chosen = torch.nonzero((pb != y) & (pd == y)).flatten()[:4].tolist()
    chosen += [i for i in range(len(y)) if i not in chosen][: 6 - len(chosen)]
    xs = x[chosen]
    names = dm.class_names
    maps = {"base": grad_cam(models["base"][0], xs), "CE fine-tuned": grad_cam(models["CE fine-tuned"][0], xs),
            "debugged": grad_cam(models["debugged"][0], xs)}
    titles = [f"{names[int(y[i])]}: base→{names[int(pb[i])]}, dbg→{names[int(pd[i])]}" for i in chosen]
    png = save_gradcam_grid(to_display(xs, dm.data_config["mean"], dm.data_config["std"]), maps,
                            out / "gradcam_before_after.png", titles)
    text.append(f"\nGrad-CAM before/after: {png}")
    return "\n".join(text)


def study(dataset: str, a: argparse.Namespace) -> str:
    spec = DATASETS[dataset]
    out = Path(a.out) / dataset
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"== {dataset} ==", flush=True)
    lim = ["++trainer.limit_train_batches=5", "++trainer.limit_val_batches=2", "++trainer.limit_test_batches=2"] if a.quick else []
    base = {}
    clf = getattr(a, f"{dataset}_classifier")
    if clf:
        clf = Path(clf)
        if (clf.parent.parent / "metrics.json").exists():  # a train.py run folder
            base = json.loads((clf.parent.parent / "metrics.json").read_text())
    else:
        clf = out / "classifier" / "checkpoints" / "classifier.safetensors"
        if not clf.exists():
            # CE training from scratch: the debug module with both lambdas 0 is a plain classifier.
            run([f"experiment={spec['debug']}", *spec["data"], *lim, "module.classifier_path=null", "module.lambda_mc=0",
                 "module.lambda_nonmc=0", "module.optimizer.lr=0.002", f"trainer.max_epochs={a.classifier_epochs}",
                 "seed=0", f"hydra.run.dir={out / 'classifier'}"], out / "classifier.log")
        base = json.loads((out / "classifier" / "metrics.json").read_text())
    cfe_dir = out / "cfe"
    if not (cfe_dir / "filter_debugging.json").exists():
        run([f"experiment={spec['cfe']}", *spec["data"], *lim, *(["module.max_accumulate_batches=5"] if a.quick else []),
             f"module.classifier_path={clf}",
             f"trainer.max_epochs={a.cfe_epochs}", f"hydra.run.dir={cfe_dir}"], out / "cfe.log")
    report = json.loads((cfe_dir / "filter_debugging.json").read_text())
    # One multirun per (lambda_mc, lambda_nonmc) setting still missing, over the seeds, each in its own
    # folder `debug-<l1>-<l2>`; every folder is read back, so settings can be added later.
    pairs = [(lm, ln) for lm in a.lambda_mc for ln in a.lambda_nonmc]
    pairs += [tuple(float(v) for v in e.split(":")) for e in (a.extra_settings or [])]
    wanted = {(lm, ln, sd) for lm, ln in pairs for sd in a.seeds}

    def all_runs() -> list[dict]:
        return [r for d in sorted(out.glob("debug*")) if d.is_dir() for r in debug_runs(d)]

    have = {(r["lambda_mc"], r["lambda_nonmc"], r["seed"]) for r in all_runs()}
    for lm, ln in pairs:
        if all((lm, ln, sd) in have for sd in a.seeds):
            continue
        sweep = out / f"debug-{lm:g}-{ln:g}"
        run(["-m", f"experiment={spec['debug']}", *spec["data"], *lim, f"module.classifier_path={clf}",
             f"module.global_filters_path={cfe_dir / 'checkpoints' / 'global_mc_filters.safetensors'}",
             f"trainer.max_epochs={a.debug_epochs}", *(a.debug_overrides or []), f"module.lambda_mc={lm}",
             f"module.lambda_nonmc={ln}", f"seed={','.join(map(str, a.seeds))}", f"hydra.sweep.dir={sweep}"],
            out / f"debug-{lm:g}-{ln:g}.log")
    seen, runs = set(), []
    for r in all_runs():  # first copy of each (setting, seed)
        key = (r["lambda_mc"], r["lambda_nonmc"], r["seed"])
        if key in wanted and key not in seen:
            seen.add(key)
            runs.append(r)

    parts = [f"## {dataset}", "", f"Global MC filters from {report['train_images_accumulated']} confident correct training "
             f"images; filters per class at 15%: {report['global_filter_counts']}", "",
             "### Faithfulness", "", faithfulness_table(report), ""]
    from src.evaluation.filter_debugging import format_detection_table

    for split, r in report["splits"].items():
        parts += [f"### Table 1 — misclassification detection, {split} ({r['n']} predictions)", "",
                  format_detection_table(r["detection"]), ""]
    t2, best = table2(runs, base, spec["splits"])
    parts += ["### Table 2 — debugged vs CE-only fine-tuned (mean ± std over seeds, %)", "", t2, ""]
    has_control = any(r["lambda_mc"] == r["lambda_nonmc"] == 0 for r in runs)
    if best is not None and has_control:
        parts += [f"Best debugged setting on validation: λ₁={best[0]:g}, λ₂={best[1]:g}. Paired gain over the control "
                  f"(debugged − CE-only, points): " + "; ".join(f"{s}: {paired_gain(runs, best, s)}" for s in spec["splits"]), ""]
        main_split = "ood" if dataset == "world" else "test"
        parts += [f"### Table 3 — per-class recall, {main_split}, best debugged vs control (mean over seeds)", "",
                  table3(runs, best, main_split), ""]
        if not a.skip_analysis:
            parts += ["### Accuracy per counterfactual edit type and Grad-CAM", "",
                      analysis(dataset, spec, out, clf, runs, best), ""]
    parts.append(f"({dataset}: {time.time() - t0:.0f} s)")
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "logs" / "filter_debugging" / "bench"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--lambda-mc", nargs="+", type=float, default=[0.0, 0.01])
    p.add_argument("--lambda-nonmc", nargs="+", type=float, default=[0.0, 0.001])
    p.add_argument("--extra-settings", nargs="*", help="more lambda_mc:lambda_nonmc pairs beyond the grid, e.g. 0.3:0.03")
    p.add_argument("--classifier-epochs", type=int, default=4)
    p.add_argument("--cfe-epochs", type=int, default=3)
    p.add_argument("--debug-epochs", type=int, default=2)
    p.add_argument("--debug-overrides", nargs="*", help="extra overrides for the debug multirun")
    p.add_argument("--world-classifier", help="reuse this classifier.safetensors for the world")
    p.add_argument("--fashion-mnist-classifier", dest="fashion_mnist_classifier")
    p.add_argument("--quick", action="store_true", help="a few batches per stage: checks the wiring")
    p.add_argument("--skip-analysis", action="store_true")
    a = p.parse_args()
    t = time.time()
    texts = [study(d, a) for d in a.datasets]
    print("\n\n".join(texts))
    print(f"\ntotal {time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
