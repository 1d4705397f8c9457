"""The evaluation task behind evaluate.py: load the classifier, predict every set (through the
cache), measure splits and paired counterfactual sets with bootstrap CIs, cluster edits, write
metrics JSON/CSV, the HTML report, and log to the configured loggers."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from src.evaluation.classifier import load_classifier
from src.evaluation.fid import ClassifierFeatures, frechet_distance
from src.evaluation.insights import EditCluster, cluster_edits
from src.evaluation.metrics import Estimate, PairedBootstrap, accuracy_at_k, delta_p, flips, paired_group_metrics, topk_correct
from src.evaluation.predictions import Predictions, Predictor
from src.evaluation.sets import ImageSet, PairedSet, manifest_paired_set, world_paired_set, world_split_set
from src.evaluation.settings import EvaluationSettings
from src.task import instantiate_loggers

log = logging.getLogger(__name__)


@dataclass
class SetResult:
    """Everything measured on one paired counterfactual set."""

    paired: PairedSet
    sources: Predictions
    edits: Predictions
    reconstructions: Predictions | None
    # group -> {metric -> Estimate}; group "all", "edit_type=<t>", "class=<c>", "edit_type=<t>/class=<c>";
    # metrics vs the reconstruction carry the prefix "vs_recon/".
    groups: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    clusters: list[EditCluster] = field(default_factory=list)
    fid: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.paired.name


@dataclass
class EvaluationResult:
    class_names: list[str]
    classifier: str
    splits: dict[str, dict[str, float]]
    sets: list[SetResult]
    table: pd.DataFrame  # LANCE Table 2 shape: set, acc@1, acc@5, Δ
    metrics: dict[str, float]
    text_encoder: str
    image_features: str
    settings: EvaluationSettings
    cache: dict[str, int]
    seconds: float


def parse_set_entry(entry: str) -> tuple[str | None, str]:
    """`LANCE:/path/to/set` (or `LANCE=/path`, quoted on the command line) names a set; a bare path is
    named after its folder."""
    for sep in ("=", ":"):
        name, found, path = str(entry).partition(sep)
        if found and name and "/" not in name and "\\" not in name:
            return name, path
    return None, str(entry)


def settings_from(cfg: DictConfig) -> EvaluationSettings:
    node = cfg.get("evaluation")
    if node is None:
        return EvaluationSettings()
    # Nested components (text encoder, image features) are built later, only when needed.
    return hydra.utils.instantiate(node, _recursive_=False, _convert_="all") if "_target_" in node else \
        EvaluationSettings(**OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]


def run_evaluation(cfg: DictConfig) -> tuple[dict, dict]:
    started = time.perf_counter()
    settings = settings_from(cfg)
    datamodule = hydra.utils.instantiate(cfg.data) if cfg.get("data") is not None else None
    num_classes = getattr(datamodule, "num_classes", None)
    classifier = load_classifier(cfg.get("ckpt_path"), cfg.get("model"), num_classes,
                                 getattr(datamodule, "class_names", None))
    names = classifier.class_names
    n_classes = len(names)
    log.info("classifier: %s (%d classes, hash %s)", classifier.description, n_classes, classifier.fingerprint)
    predictor = Predictor(classifier, batch_size=cfg.get("batch_size", 256), device=settings.device,
                          cache_dir=cfg.paths.get("cache_dir"))
    topk = [k for k in settings.topk if k == 1 or n_classes > k]

    # ---- plain splits of the DataModule (world: iid, ood, counterfactual per edit type)
    splits: dict[str, dict[str, float]] = {}
    split_names = list(cfg.get("splits") or getattr(datamodule, "test_split_names", ()) or [])
    for split in split_names:
        image_set = world_split_set(datamodule, split)
        preds = predictor.predict(image_set, desc=f"predict {split}")
        splits[split] = split_metrics(preds.probs, image_set, names, topk)

    # ---- paired counterfactual sets
    paired: list[PairedSet] = []
    if datamodule is not None and settings.world_oracle and hasattr(datamodule, "spec"):
        paired.append(world_paired_set(datamodule, name="oracle"))
    for entry in cfg.get("counterfactuals") or []:
        name, path = parse_set_entry(entry)
        paired.append(manifest_paired_set(path, n_classes, settings.on_bad_row, name=name, source_root=settings.source_root,
                                          world_cache=cfg.paths.get("cache_dir")))
    results = []
    for ps in paired:
        src = predictor.predict(ps.sources, desc=f"predict {ps.name} sources")
        edt = predictor.predict(ps.edits, desc=f"predict {ps.name}")
        rec = predictor.predict(ps.reconstructions, desc=f"predict {ps.name} reconstructions") if ps.reconstructions else None
        results.append(SetResult(ps, src, edt, rec))
    predictor.save_cache()
    log.info("predictions: %d computed, %d from the cache", predictor.computed, predictor.cached)

    text_encoder = image_features = None
    for res in results:
        res.groups = group_metrics(res, names, topk, settings)
        if settings.clusters > 0 and len(res.paired.edits) and {"original_words", "edited_words"} <= set(res.paired.edits.records):
            if text_encoder is None:
                text_encoder = build_component(settings.text_encoder, "src.evaluation.text_features.SentenceTextEncoder")
            dp, flipped = per_edit(res)
            res.clusters = cluster_edits(res.paired.edits.records, dp, flipped, text_encoder, names,
                                         k=settings.clusters, seed=settings.seed)
        if image_features is None:
            image_features = build_component(settings.image_features, "src.evaluation.fid.ClassifierFeatures")
        res.fid = realism(res, image_features)

    table = summary_table(results, topk)
    metrics = flatten(splits, results, table)
    result = EvaluationResult(names, classifier.description, splits, results, table, metrics,
                              getattr(text_encoder, "name", "not used"), getattr(image_features, "name", "not used"),
                              settings, {"computed": predictor.computed, "cached": predictor.cached},
                              time.perf_counter() - started)
    out = Path(cfg.paths.output_dir)
    write_outputs(result, out)
    log_to_loggers(result, cfg)
    for key in sorted(k for k in metrics if k.count("/") <= 1 and not k.endswith(("ci_low", "ci_high"))):
        log.info("%-40s %.4f", key, metrics[key])
    return metrics, {"result": result, "classifier": classifier}


def build_component(node: Any, default_target: str):
    if node is None:
        node = {"_target_": default_target}
    return hydra.utils.instantiate(node)


# ------------------------------------------------------------------------------------------ metrics
def split_metrics(probs: np.ndarray, image_set: ImageSet, names: list[str], topk: list[int]) -> dict[str, float]:
    labels = image_set.labels
    out = {f"acc@{k}": accuracy_at_k(probs, labels, k) for k in topk}
    correct = topk_correct(probs, labels, 1)
    for c, name in enumerate(names):
        m = labels == c
        if m.any():
            out[f"recall/{name}"] = float(correct[m].mean())
    if "edit_type" in image_set.records:
        for et, idx in image_set.records.groupby("edit_type").indices.items():
            for k in topk:
                out[f"{et}/acc@{k}"] = accuracy_at_k(probs[idx], labels[idx], k)
    return out


def per_edit(res: SetResult) -> tuple[np.ndarray, np.ndarray]:
    labels = res.paired.edits.labels
    p_src = res.sources.probs[res.paired.source_index]
    _, flipped = flips(p_src, res.edits.probs, labels)
    return delta_p(p_src, res.edits.probs, labels), flipped


def group_metrics(res: SetResult, names: list[str], topk: list[int], s: EvaluationSettings) -> dict[str, dict[str, Estimate]]:
    ps = res.paired
    rec = ps.edits.records
    labels = ps.edits.labels
    boot = PairedBootstrap(len(ps.sources), s.bootstrap, s.confidence, s.seed)
    p_src = res.sources.probs[ps.source_index]
    groups: dict[str, np.ndarray] = {"all": np.arange(len(rec))}
    for et, idx in rec.groupby("edit_type").indices.items():
        groups[f"edit_type={et}"] = idx
    for c in np.unique(labels):
        groups[f"class={names[c]}"] = np.flatnonzero(labels == c)
    for (et, c), idx in rec.groupby(["edit_type", "label"]).indices.items():
        groups[f"edit_type={et}/class={names[int(c)]}"] = idx
    out: dict[str, dict[str, Estimate]] = {}
    for g, idx in groups.items():
        out[g] = paired_group_metrics(boot, ps.source_index[idx], labels[idx], p_src[idx], res.edits.probs[idx], tuple(topk))
        if res.reconstructions is not None and ps.reconstruction_index is not None:
            ridx = idx[ps.reconstruction_index[idx] >= 0]
            if len(ridx):
                p_rec = res.reconstructions.probs[ps.reconstruction_index[ridx]]
                out[g].update(paired_group_metrics(boot, ps.source_index[ridx], labels[ridx], p_rec,
                                                   res.edits.probs[ridx], tuple(topk), prefix="vs_recon/"))
    return out


def realism(res: SetResult, extractor) -> dict[str, float]:
    ps = res.paired
    try:
        f_src = extractor.features(ps.sources, res.sources)
        out = {"fid": frechet_distance(f_src, extractor.features(ps.edits, res.edits))}
        if ps.reconstructions is not None and res.reconstructions is not None:
            out["fid_reconstruction"] = frechet_distance(f_src, extractor.features(ps.reconstructions, res.reconstructions))
        return out
    except Exception as e:  # noqa: BLE001 - realism is an extra; report why it is missing
        log.warning("Fréchet distance for %s failed: %s", ps.name, e)
        return {}


def summary_table(results: list[SetResult], topk: list[int]) -> pd.DataFrame:
    """LANCE Table 2: original, reconstructed (control), each counterfactual set; acc@k and Δacc@k."""
    rows = []
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for r in results:  # the original set T: the union of every set's sources
        for sha, p, y in zip(r.paired.sources.records["sha256"], r.sources.probs, r.paired.sources.labels):
            seen.setdefault(sha, (p, y))
    if seen:
        P = np.stack([v[0] for v in seen.values()])
        Y = np.array([v[1] for v in seen.values()])
        rows.append({"set": "original", "n": len(Y), **{f"acc@{k}": accuracy_at_k(P, Y, k) for k in topk}})
    for r in results:
        if r.reconstructions is not None:
            labels = r.paired.reconstructions.labels  # type: ignore[union-attr]
            rows.append({"set": f"{r.name} reconstructed (control)", "n": len(labels),
                         **{f"acc@{k}": accuracy_at_k(r.reconstructions.probs, labels, k) for k in topk}})
        g = r.groups.get("all", {})
        row: dict[str, Any] = {"set": r.name, "n": len(r.paired.edits)}
        for k in topk:
            if f"acc@{k}" in g:
                row[f"acc@{k}"] = g[f"acc@{k}"].value
                e = g[f"delta_acc@{k}"]
                row[f"delta_acc@{k}"], row[f"delta_acc@{k}/ci_low"], row[f"delta_acc@{k}/ci_high"] = e.value, e.low, e.high
        if "delta_p" in g:
            row["delta_p"] = g["delta_p"].value
            row["flip_rate"] = g["flip_rate"].value
        row.update(r.fid)
        rows.append(row)
    return pd.DataFrame(rows)


def flatten(splits: dict, results: list[SetResult], table: pd.DataFrame) -> dict[str, float]:
    """Flat metric keys: `iid/acc@1`, `oracle/delta_acc@1`, `oracle/edit_type=background/delta_p/ci_low`."""
    out: dict[str, float] = {}
    for split, values in splits.items():
        out.update({f"{split}/{k}": v for k, v in values.items()})
    for _, row in table.iterrows():  # original T and the reconstructed control sets
        if row["set"] == "original" or str(row["set"]).endswith("(control)"):
            key = "original" if row["set"] == "original" else f"{str(row['set']).split(' reconstructed')[0]}/reconstruction"
            out.update({f"{key}/{c}": row[c] for c in table.columns if c.startswith("acc@") and pd.notna(row[c])})
    for r in results:
        for g, ests in r.groups.items():
            base = r.name if g == "all" else f"{r.name}/{g}"
            for m, e in ests.items():
                out.update(e.as_dict(f"{base}/{m}"))
        out.update({f"{r.name}/{k}": v for k, v in r.fid.items()})
        out.update({f"{r.name}/skipped/{k}": float(v) for k, v in r.paired.skipped.items()})
    return {k: float(v) for k, v in out.items()}


def long_table(result: EvaluationResult) -> pd.DataFrame:
    """One row per (set, group, reference, metric) with its CI: the CSV output."""
    rows = []
    for split, values in result.splits.items():
        for m, v in values.items():
            rows.append({"set": split, "edit_type": "", "class": "", "reference": "", "metric": m, "value": v,
                         "ci_low": math.nan, "ci_high": math.nan, "n": math.nan})
    for r in result.sets:
        for g, ests in r.groups.items():
            parts = dict(p.split("=", 1) for p in g.split("/") if "=" in p)
            for m, e in ests.items():
                ref, metric = ("reconstruction", m.split("/", 1)[1]) if m.startswith("vs_recon/") else ("original", m)
                rows.append({"set": r.name, "edit_type": parts.get("edit_type", ""), "class": parts.get("class", ""),
                             "reference": ref, "metric": metric, "value": e.value, "ci_low": e.low, "ci_high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def edit_table(r: SetResult, names: list[str]) -> pd.DataFrame:
    """Per-edit predictions and sensitivities (what repair methods aim at)."""
    rec = r.paired.edits.records.drop(columns=[c for c in ("sha256",) if c in r.paired.edits.records]).copy()
    dp, flipped = per_edit(r)
    rec["delta_p"] = dp
    rec["flipped"] = flipped
    rec["pred_source"] = [names[i] for i in r.sources.probs[r.paired.source_index].argmax(1)]
    rec["pred_edit"] = [names[i] for i in r.edits.probs.argmax(1)]
    return rec


# ------------------------------------------------------------------------------------------ outputs
def write_outputs(result: EvaluationResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_finite(result.metrics), indent=2, sort_keys=True))
    long_table(result).to_csv(out / "metrics.csv", index=False)
    result.table.to_csv(out / "summary.csv", index=False)
    for r in result.sets:
        edit_table(r, result.class_names).to_parquet(out / f"edits_{_slug(r.name)}.parquet", index=False)
    if result.settings.report:
        from src.evaluation.report import write_report

        path = write_report(result, out / "report.html")
        log.info("report: %s", path)


def log_to_loggers(result: EvaluationResult, cfg: DictConfig) -> None:
    loggers = instantiate_loggers(cfg.get("logger"))
    scalars = {k: v for k, v in _finite(result.metrics).items() if v is not None}
    for lg in loggers:
        lg.log_metrics(scalars)
        if type(lg).__name__ == "WandbLogger":
            _log_wandb(lg, result)
        lg.save()
        lg.finalize("success")


def _log_wandb(lg, result: EvaluationResult) -> None:
    from src.evaluation.report import pair_images

    table = result.table.fillna(float("nan"))
    lg.log_table("summary", columns=list(table.columns), data=table.values.tolist())
    longt = long_table(result)
    per_type = longt[(longt["class"] == "") & (longt["edit_type"] != "")]
    lg.log_table("per_edit_type", columns=list(per_type.columns), data=per_type.values.tolist())
    for r in result.sets:
        images, captions = pair_images(r, result.class_names, result.settings.examples)
        if images:
            lg.log_image(key=f"{r.name}/pairs", images=images, caption=captions)


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
