"""Results of the repair study, shaped like Li et al.'s Table 2: one row per method, per test set,
per class and overall accuracy (mean ± std over seeds), worst-class accuracy, the share of the
baseline→oracle gap each method closes and the iid accuracy it gives up; plus accuracy vs α.

Input: run folders written by `train.py` (each with `metrics.json`, and for WiSE-FT runs
`alpha_sweep_val.csv` / `alpha_sweep_test.csv`), grouped as {method: [run folder per seed]}.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

TEST_SETS = ("iid", "ood", "hybrid", "counterfactual")


def load_runs(runs: dict[str, list[Path]]) -> pd.DataFrame:
    """Long table: method, seed index, metric key, value."""
    rows = []
    for method, folders in runs.items():
        for i, folder in enumerate(folders):
            metrics = json.loads((Path(folder) / "metrics.json").read_text())
            rows += [{"method": method, "run": i, "key": k, "value": float(v)} for k, v in metrics.items()
                     if k.startswith("test_") or k == "alpha"]
    return pd.DataFrame(rows)


def _fmt(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return "–"
    return f"{100 * values.mean():.1f} ± {100 * values.std(ddof=1):.1f}" if len(values) > 1 else f"{100 * values.mean():.1f}"


def results_table(long: pd.DataFrame, baseline: str = "baseline", oracle: str = "oracle",
                  gap_set: str = "ood", iid_set: str = "iid") -> pd.DataFrame:
    """One row per (test set, method): acc@1, acc@5, worst-class, per-class recall (mean ± std, %),
    and (for the gap set) the share of the baseline→oracle gap closed and the iid accuracy given up."""
    wide = long.pivot_table(index=["method", "run"], columns="key", values="value")
    methods = list(dict.fromkeys(long["method"]))
    mean = wide.groupby(level="method").mean()
    rows = []
    for test in TEST_SETS:
        if f"test_{test}/acc@1" not in wide:
            continue
        class_keys = sorted(k for k in wide.columns if k.startswith(f"test_{test}/recall/"))
        for m in methods:
            sub = wide.loc[m]
            row = {"test set": test, "method": m, "runs": len(sub)}
            for name in ("acc@1", "acc@5"):
                key = f"test_{test}/{name}"
                if key in sub:
                    row[name] = _fmt(sub[key].to_numpy())
            if class_keys:  # the lowest per-class recall of each run (modules that do not log it too)
                row["worst_class_acc"] = _fmt(sub[class_keys].min(axis=1).to_numpy())
            for key in class_keys:
                row[key.rsplit("/", 1)[-1]] = _fmt(sub[key].to_numpy())
            if "alpha" in sub and sub["alpha"].notna().any():
                row["alpha"] = " ".join(f"{a:.2f}" for a in sub["alpha"])
            if test == gap_set and baseline in mean.index and oracle in mean.index:
                key = f"test_{gap_set}/acc@1"
                gap = mean.loc[oracle, key] - mean.loc[baseline, key]
                closed = (sub[key].to_numpy() - mean.loc[baseline, key]) / gap if gap > 0 else np.full(len(sub), np.nan)
                row["gap closed %"] = (f"{100 * closed.mean():.0f} ± {100 * closed.std(ddof=1):.0f}" if len(closed) > 1
                                       else f"{100 * closed.mean():.0f}")
                iid_key = f"test_{iid_set}/acc@1"
                loss = mean.loc[baseline, iid_key] - sub[iid_key].to_numpy()
                row["iid loss (pt, <0 = gain)"] = (f"{100 * loss.mean():.1f} ± {100 * loss.std(ddof=1):.1f}" if len(loss) > 1
                                        else f"{100 * loss.mean():.1f}")
            rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    cols = columns or [c for c in table.columns if c in ("test set", "method", "runs", "acc@1", "acc@5", "worst_class_acc",
                                                           "gap closed %", "iid loss (pt, <0 = gain)", "alpha")]
    t = table[cols].fillna("")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in t.itertuples(index=False)]
    return "\n".join(lines)


def alpha_curves(folders: list[Path]) -> pd.DataFrame:
    """Accuracy vs α, validation (pooled and per part) and every test set, mean over runs."""
    frames = []
    for i, f in enumerate(folders):
        f = Path(f)
        if (f / "alpha_sweep_val.csv").is_file():
            val = pd.read_csv(f / "alpha_sweep_val.csv")
            for col, name in (("acc", "val"), ("acc_original", "val_original"), ("acc_counterfactual", "val_counterfactual")):
                frames.append(pd.DataFrame({"run": i, "set": name, "alpha": val["alpha"], "acc": val[col]}))
        if (f / "alpha_sweep_test.csv").is_file():
            test = pd.read_csv(f / "alpha_sweep_test.csv")
            frames.append(pd.DataFrame({"run": i, "set": "test_" + test["split"], "alpha": test["alpha"], "acc": test["acc"]}))
    if not frames:
        return pd.DataFrame(columns=["set", "alpha", "acc", "std"])
    df = pd.concat(frames)
    return df.groupby(["set", "alpha"])["acc"].agg(acc="mean", std="std").reset_index()


def plot_alpha_curves(curves: pd.DataFrame, chosen: list[float], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in curves.groupby("set"):
        style = "--" if name.startswith("val") else "-"
        ax.plot(g["alpha"], 100 * g["acc"], style, label=name)
        ax.fill_between(g["alpha"], 100 * (g["acc"] - g["std"].fillna(0)), 100 * (g["acc"] + g["std"].fillna(0)), alpha=0.15)
    for a in chosen:
        ax.axvline(a, color="grey", lw=0.8, alpha=0.6)
    ax.set_xlabel("α  (θ = (1−α)·θ₀ + α·θ₁)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("WiSE-FT: accuracy vs α (dashed: validation, chosen α in grey)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log_to_wandb(table: pd.DataFrame, plot: Path | None, project: str = "counterfactory", name: str = "repair_study") -> None:
    """W&B beside the CSV (offline unless WANDB_MODE=online); never prompts, skipped when disabled."""
    import os

    if os.environ.get("WANDB_MODE", "offline") == "disabled":
        return
    import wandb

    run = wandb.init(project=project, name=name, job_type="repair_study", mode=os.environ.get("WANDB_MODE", "offline"))
    try:
        run.log({"repair/results": wandb.Table(dataframe=table.astype(str))})
        if plot is not None and plot.is_file():
            run.log({"repair/alpha_curves": wandb.Image(str(plot))})
    finally:
        run.finish()
