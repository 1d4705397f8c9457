"""The `generate` task: build every component from the Hydra config and run the pipeline."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.generation.pipeline import GenerationPipeline, config_hash

log = logging.getLogger(__name__)


def _build(node, **deps):
    if node is None or (OmegaConf.is_dict(node) and "_target_" not in node):
        return None
    extra = {k: v for k, v in deps.items() if k in node}
    return instantiate(node, **extra)


def build_pipeline(g: DictConfig) -> GenerationPipeline:
    diffusion = _build(g.get("diffusion"))
    inverter = _build(g.get("inverter"), diffusion=diffusion)
    editor = _build(g.get("editor"), diffusion=diffusion)
    if getattr(editor, "needs_inversion", False) and diffusion is None:
        raise ValueError(f"generation.editor={editor.name} needs a diffusion model: set generation/diffusion=...")
    return GenerationPipeline(
        captioner=_build(g.captioner), perturber=_build(g.perturber), edit_filter=_build(g.get("edit_filter")),
        editor=editor, inverter=inverter, consistency=_build(g.get("consistency")), num_edits=g.num_edits,
        edit_types=tuple(g.edit_types), self_replace_fractions=tuple(g.self_replace_fractions),
        reuse_inversion=g.reuse_inversion, write_reconstruction=g.write_reconstruction, seed=g.seed,
        inversion_cache_dir=g.get("inversion_cache_dir"),
        config_hash=config_hash(OmegaConf.to_container(g, resolve=True)), progress=g.progress)


def run_generation(cfg: DictConfig) -> tuple[dict, dict]:
    g = cfg.generation
    pipeline = build_pipeline(g)
    source = _build(g.source)
    out = Path(g.output_dir)
    df = pipeline.run(source, out, shard=g.shard, num_shards=g.num_shards, max_images=g.max_images,
                      flush_every=g.flush_every)
    metrics = pipeline.stats.as_metrics()
    log.info("counterfactual set: %s (%d rows, %d accepted edits); reasons: %s", out, len(df),
             int(((df["status"] == "accepted") & (df["edit_type"] != "reconstruction")).sum()), pipeline.stats.reasons)
    return metrics, {"pipeline": pipeline, "manifest": df, "output_dir": str(out)}
