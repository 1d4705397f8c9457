"""Algorithm 1 of LANCE: caption -> perturb (N edits, random edit types) -> filter -> invert once per
image -> prompt-to-prompt edit with a sweep of self-attention injection fractions -> consistency check ->
counterfactual set (images + manifest rows, accepted or rejected with the reason).

Reliability: sources already in the output folder (same source sha256 and config hash) are skipped, so a
rerun resumes; `shard`/`num_shards` partitions the sources deterministically (index mod num_shards); a
bad input becomes a rejected row, never a crash."""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from src.generation.consistency import NoConsistencyCheck, pick_best
from src.generation.inversion import InversionCache
from src.generation.manifest import ManifestWriter
from src.generation.types import EDIT_TYPES, CaptionEdit, Cost, Rejection

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    sources: int = 0
    skipped: int = 0
    attempts: int = 0
    accepted: int = 0
    inversions: int = 0
    inversions_cached: int = 0
    inversion_cost: Cost = field(default_factory=Cost)
    edit_cost: Cost = field(default_factory=Cost)
    reasons: dict = field(default_factory=dict)

    @property
    def unet_evals(self) -> int:
        return self.inversion_cost.unet_evals + self.edit_cost.unet_evals

    def as_metrics(self) -> dict[str, float]:
        return {"generate/sources": self.sources, "generate/skipped": self.skipped,
                "generate/attempts": self.attempts, "generate/accepted": self.accepted,
                "generate/acceptance_rate": self.accepted / max(self.attempts, 1),
                "generate/unet_evals": self.unet_evals,
                "generate/unet_evals_per_accepted": self.unet_evals / max(self.accepted, 1),
                "generate/seconds": self.inversion_cost.seconds + self.edit_cost.seconds}


def _stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


class GenerationPipeline:
    def __init__(self, captioner, perturber, edit_filter=None, editor=None, inverter=None, consistency=None,
                 num_edits: int = 5, edit_types: tuple[str, ...] = EDIT_TYPES,
                 self_replace_fractions: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 reuse_inversion: bool = True, write_reconstruction: bool = True, seed: int = 0,
                 inversion_cache_dir: str | None = None, config_hash: str = "", progress: bool = True) -> None:
        if editor is None:
            raise ValueError("generation.editor is required")
        if getattr(editor, "needs_inversion", False) and inverter is None:
            raise ValueError(f"generation.editor={editor.name} needs an inverter (generation.inverter)")
        self.captioner, self.perturber, self.edit_filter = captioner, perturber, edit_filter
        self.editor, self.inverter = editor, inverter
        self.consistency = consistency or NoConsistencyCheck()
        self.num_edits = num_edits
        self.edit_types = tuple(edit_types)
        self.fractions = [float(f) for f in self_replace_fractions]
        self.reuse_inversion = reuse_inversion
        self.write_reconstruction = write_reconstruction
        self.seed = seed
        self.config_hash = config_hash
        self.progress = progress
        inv_key = f"{getattr(inverter, 'name', '')}|{config_hash}"
        self.inversions = InversionCache(inversion_cache_dir if reuse_inversion else None, inv_key)
        self.stats = GenerationStats()

    # ------------------------------------------------------------------ provenance
    def _base_row(self, item, sha: str) -> dict:
        d = getattr(self.editor, "diffusion", None)
        return {
            "source_key": f"{item.id}|{sha}|{self.config_hash}", "source_id": item.id, "source_path": item.path,
            "source_sha256": sha, "label": item.label, "label_name": item.label_name,
            "captioner": getattr(self.captioner, "name", type(self.captioner).__name__),
            "captioner_model": getattr(self.captioner, "model_id", ""),
            "perturber": getattr(self.perturber, "name", type(self.perturber).__name__),
            "perturber_model": getattr(self.perturber, "model_id", ""),
            "edit_filter": getattr(self.edit_filter, "name", "none"),
            "edit_filter_model": getattr(self.edit_filter, "model_id", ""),
            "inverter": getattr(self.inverter, "name", "none"), "editor": self.editor.name,
            "diffusion_model": getattr(d, "model_id", getattr(self.editor, "model_id", "")),
            "consistency": self.consistency.name, "consistency_model": getattr(self.consistency, "model_id", ""),
            "config_hash": self.config_hash,
        }

    def _reject(self, stats_reason: str) -> None:
        key = stats_reason.split(" (")[0].split(":")[0][:60]
        self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1

    # ------------------------------------------------------------------ one source image
    def process(self, item, writer: ManifestWriter) -> list[dict]:
        sha = ""
        try:
            image, sha = item.load()
        except Exception as err:  # noqa: BLE001 - unreadable input is a rejected row
            sha = hashlib.sha256(f"unreadable:{item.path}".encode()).hexdigest()
            self._reject("unreadable image")
            return [{**self._base_row(item, sha), "id": f"{item.id}-source", "status": "rejected",
                     "edit_type": "source", "reason": f"unreadable image: {type(err).__name__}: {err}"[:500]}]
        base = self._base_row(item, sha)
        item_seed = (self.seed * 1_000_003 + _stable_int(item.id)) % 2**31
        rng = np.random.default_rng(item_seed)
        try:
            caption = (self.captioner.caption([image])[0] or "").strip()
        except Exception as err:  # noqa: BLE001
            caption, reason = "", f"captioner failed: {type(err).__name__}: {err}"[:500]
        else:
            reason = "empty caption"
        base["caption"] = caption
        if not caption:
            self._reject(reason)
            return [{**base, "id": f"{item.id}-source", "status": "rejected", "edit_type": "source", "reason": reason,
                     "seed": item_seed}]

        rows: list[dict] = []
        pending: list[tuple[int, CaptionEdit, dict]] = []
        for a in range(self.num_edits):
            edit_type = self.edit_types[int(rng.integers(len(self.edit_types)))]
            pseed = int(rng.integers(2**31))
            row = {**base, "id": f"{item.id}-{a:02d}", "attempt": a, "edit_type": edit_type, "seed": pseed}
            self.stats.attempts += 1
            try:
                out = self.perturber.perturb(caption, edit_type, label=item.label_name, num_edits=1, seed=pseed)
                result = out[0] if out else Rejection(edit_type, caption, "perturber returned nothing")
            except Exception as err:  # noqa: BLE001 - unparseable perturber output etc.
                result = Rejection(edit_type, caption, f"perturber failed: {type(err).__name__}: {err}"[:500])
            if isinstance(result, Rejection):
                self._reject(result.reason)
                rows.append({**row, "status": "rejected", "reason": result.reason, "edit_type": result.edit_type,
                             "edited_caption": result.edited_caption})
                continue
            row.update(edit_type=result.edit_type, edited_caption=result.edited_caption,
                       original_words=result.original_words, edited_words=result.edited_words)
            if self.edit_filter is not None:
                why, scores = self.edit_filter.check(result, item.label_name)
                row.update(scores)
                if why:
                    self._reject(why)
                    rows.append({**row, "status": "rejected", "reason": why})
                    continue
            pending.append((a, result, row))

        if not pending and not self.write_reconstruction:
            return rows
        try:
            output, cost, cached = self._edit(image, sha, caption, item, [e for _, e, _ in pending])
        except Exception as err:  # noqa: BLE001 - e.g. OOM at batch 1, a broken model file
            if isinstance(err, KeyboardInterrupt):
                raise
            reason = f"editing failed: {type(err).__name__}: {err}"[:500]
            log.warning("%s: %s", item.id, reason)
            for _, _, row in pending:
                self._reject(reason)
                rows.append({**row, "status": "rejected", "reason": reason})
            return rows
        share = {k: v / (len(pending) + 1) for k, v in cost.items()}  # cost amortised over this image's rows
        if self.write_reconstruction and output.reconstruction is not None:
            rel, img_sha = writer.write_image(f"{item.id}-recon", output.reconstruction)
            rows.append({**base, **share, "id": f"{item.id}-recon", "status": "accepted", "edit_type": "reconstruction",
                         "edited_caption": caption, "image_path": rel, "image_sha256": img_sha, "seed": item_seed,
                         "inversion_cached": cached})
        for (a, edit, row), cands in zip(pending, output.candidates):
            row.update(share, inversion_cached=cached)
            if not cands:
                self._reject("editor cannot realise this edit")
                rows.append({**row, "status": "rejected", "reason": "editor cannot realise this edit"})
                continue
            verdicts = self.consistency.score(image, caption, edit.edited_caption, [im for _, im in cands])
            best = pick_best(verdicts)
            pick = best if best is not None else max(range(len(cands)), key=lambda i: _nan_low(
                verdicts[i].scores.get("directional_similarity")))
            row.update(verdicts[pick].scores, self_replace_fraction=cands[pick][0])
            if best is None:
                reason = f"failed consistency checks: {verdicts[pick].reason}"
                self._reject("failed consistency checks")
                rows.append({**row, "status": "rejected", "reason": reason})
                continue
            rel, img_sha = writer.write_image(row["id"], cands[best][1])
            self.stats.accepted += 1
            rows.append({**row, "status": "accepted", "reason": "", "image_path": rel, "image_sha256": img_sha})
        return rows

    def _edit(self, image, sha, caption, item, edits: list[CaptionEdit]):
        prompts = [e.edited_caption for e in edits]
        if not getattr(self.editor, "needs_inversion", False):
            out = self.editor.edit_world(item.meta.get("world") or image.info.get("world") or {}, edits, self.fractions) \
                if hasattr(self.editor, "edit_world") else self.editor.edit(image, caption, edits, self.fractions)
            self.stats.edit_cost.add(out.cost)
            return out, {"unet_evals": out.cost.unet_evals, "seconds": out.cost.seconds,
                         "unet_samples": out.cost.extra.get("unet_samples", 0)}, False
        total = Cost(extra={"unet_samples": 0})

        def account(c: Cost, inversion: bool) -> None:
            for into in (self.stats.inversion_cost if inversion else self.stats.edit_cost, total):
                into.add(c)  # Cost.add sums evals and seconds; batch rows live in extra
                into.extra["unet_samples"] = into.extra.get("unet_samples", 0) + c.extra.get("unet_samples", 0)

        if self.reuse_inversion:
            inv, cached = self.inversions.get_or_compute(sha, caption, lambda: self.inverter.invert(image, caption))
            self.stats.inversions += 1
            self.stats.inversions_cached += int(cached)
            if not cached:
                account(inv.cost, True)
            out = self.editor.edit(inv, caption, prompts, self.fractions)
            account(out.cost, False)
        else:  # the LANCE reference: a fresh inversion for every edit
            out = None
            for p in prompts or [None]:
                inv = self.inverter.invert(image, caption)
                self.stats.inversions += 1
                account(inv.cost, True)
                o = self.editor.edit(inv, caption, [p] if p else [], self.fractions)
                account(o.cost, False)
                if out is None:
                    out = o
                else:
                    out.candidates += o.candidates
            cached = False
        return out, {"unet_evals": total.unet_evals, "seconds": total.seconds,
                     "unet_samples": total.extra["unet_samples"]}, cached

    # ------------------------------------------------------------------ the run
    def run(self, source, output_dir: str | Path, shard: int = 0, num_shards: int = 1, max_images: int | None = None,
            flush_every: int = 8):
        if not 0 <= shard < num_shards:
            raise ValueError(f"generation.shard={shard} must lie in [0, generation.num_shards={num_shards})")
        writer = ManifestWriter(output_dir, shard=f"{shard}of{num_shards}", flush_every=flush_every)
        existing = writer.existing()
        other = set(existing["config_hash"].dropna()) - {self.config_hash}
        if other:
            raise RuntimeError(f"{output_dir} holds a set made with another config (hash {sorted(other)}); "
                               "choose another generation.output_dir or delete it")
        suffix = f"|{self.config_hash}"
        done_ids = {k.split("|")[0] for k in existing["source_key"].dropna() if k.endswith(suffix)}
        items = [it for k, it in enumerate(source) if (max_images is None or k < max_images) and k % num_shards == shard]
        t0 = time.perf_counter()
        for item in tqdm(items, desc=f"generate shard {shard}/{num_shards}", disable=not self.progress):
            if item.id in done_ids:  # rows of a source are committed together: present = done
                self.stats.skipped += 1
                continue
            self.stats.sources += 1
            rows = self.process(item, writer)
            writer.add_source_rows(rows)
        df = writer.finalize()
        log.info("generated %d sources (%d skipped) in %.1fs: %s", self.stats.sources, self.stats.skipped,
                 time.perf_counter() - t0, self.stats.as_metrics())
        return df


def _nan_low(x) -> float:
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def config_hash(cfg: dict, ignore: tuple[str, ...] = ("shard", "num_shards", "max_images", "output_dir", "progress",
                                                       "flush_every", "device", "name", "inversion_cache_dir",
                                                       "cache_dir")) -> str:
    """Hash of the settings that determine the content of a set (not how much of it or where)."""
    import json

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in sorted(x.items()) if k not in ignore}
        if isinstance(x, (list, tuple)):
            return [strip(v) for v in x]
        return x

    return hashlib.sha256(json.dumps(strip(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]

