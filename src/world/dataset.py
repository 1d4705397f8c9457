"""Splits of Counterfactory World: sampling factors with planted spurious correlations, rendering,
ground-truth counterfactuals, and an on-disk cache keyed by the split's settings."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.world.grammar import (
    BACKGROUNDS,
    CLASSES,
    EDIT_TYPES,
    OBJECTS,
    VOCABULARY,
    Factors,
    caption,
    edit_words,
)
from src.world.renderer import Scene, WorldRenderer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "iid", "ood", "counterfactual")
# Which factors each LANCE edit type may change in the ground-truth counterfactual split.
FACTORS_BY_EDIT_TYPE = {
    "subject": ("subject",),
    "object": ("object",),
    "background": ("background", "weather"),
    "adjective": ("colour", "pattern", "size"),
    "domain": ("domain",),
}
_CACHE_VERSION = 2


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines the world's splits (and so the cache key)."""

    image_size: int = 32
    n_train: int = 8000
    n_val: int = 2000
    n_test: int = 2000
    rho_background: float = 0.9
    rho_object: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rho_background", "rho_object"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"data.{name} must lie in [0, 1], got {v}")
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": _CACHE_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _pick(rng: np.random.Generator, vocab: tuple[str, ...], preferred: str | None, rho: float) -> str:
    """`preferred` with probability rho, otherwise uniform over the rest of the vocabulary."""
    if preferred is not None and rng.random() < rho:
        return preferred
    others = [v for v in vocab if v != preferred]
    return others[rng.integers(len(others))]


def sample_factors(rng: np.random.Generator, label: int, rho_background: float, rho_object: float) -> Factors:
    """Factors of one scene. rho=None-like independence is rho = 1/len(vocab) (uniform)."""
    bg = _pick(rng, BACKGROUNDS, BACKGROUNDS[label % len(BACKGROUNDS)], rho_background)
    obj = _pick(rng, OBJECTS, OBJECTS[label % len(OBJECTS)], rho_object)
    free = {k: v[rng.integers(len(v))] for k, v in VOCABULARY.items() if k not in ("shape", "background", "object")}
    return Factors(shape=CLASSES[label], background=bg, object=obj, **free)


def _independent_rho(vocab: tuple[str, ...]) -> float:
    return 1.0 / len(vocab)


@dataclass
class WorldSplit:
    images: np.ndarray  # N x H x W x 3 uint8
    records: pd.DataFrame  # one row per image: id, label, factors, caption, seed, (edit columns)

    def __len__(self) -> int:
        return len(self.records)


def _render_all(renderer: WorldRenderer, scenes: list[Scene]) -> np.ndarray:
    return np.stack([renderer.render_scene(s) for s in scenes]) if scenes else np.zeros((0, 3, 3, 3), np.uint8)


def _source_split(spec: WorldSpec, split: str, n: int, renderer: WorldRenderer) -> tuple[list[Scene], pd.DataFrame]:
    split_seed = {"train": 1, "val": 2, "iid": 3, "ood": 4}[split]
    rng = np.random.default_rng([spec.seed, split_seed])
    correlated = split in ("train", "val", "iid")
    rho_bg = spec.rho_background if correlated else _independent_rho(BACKGROUNDS)
    rho_obj = spec.rho_object if correlated else _independent_rho(OBJECTS)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    scenes, rows = [], []
    for i, label in enumerate(labels):
        f = sample_factors(rng, int(label), rho_bg, rho_obj)
        seed = int(rng.integers(2**31))
        scenes.append(Scene(f, seed))
        rows.append({"id": f"{split}-{i:06d}", "label": int(label), **f.as_dict(), "caption": caption(f), "seed": seed})
    return scenes, pd.DataFrame(rows)


def _counterfactual_split(spec: WorldSpec, sources: list[Scene], source_rows: pd.DataFrame, renderer: WorldRenderer):
    """For every iid test scene, one exact single-factor re-render per LANCE edit type."""
    rng = np.random.default_rng([spec.seed, 5])
    scenes, rows = [], []
    for scene, (_, src) in zip(sources, source_rows.iterrows()):
        for edit_type, factors in FACTORS_BY_EDIT_TYPE.items():
            factor = factors[rng.integers(len(factors))]
            current = getattr(scene.factors, factor)
            choices = [v for v in VOCABULARY[factor] if v != current]
            value = choices[rng.integers(len(choices))]
            after = renderer.intervene(scene, factor, value)
            before_words, after_words = edit_words(scene.factors, factor, value)
            scenes.append(after)
            rows.append({
                "id": f"{src['id']}-{edit_type}", "source_id": src["id"], "label": int(src["label"]),
                **after.factors.as_dict(), "caption": caption(after.factors), "source_caption": src["caption"],
                "seed": scene.seed, "edit_type": edit_type, "factor": factor, "original_value": current,
                "edited_value": value, "original_words": before_words, "edited_words": after_words,
            })
    return scenes, pd.DataFrame(rows)


def build_world(spec: WorldSpec, cache_dir: str | Path | None = None, splits=SPLITS) -> dict[str, WorldSplit]:
    """Render the requested splits (from the cache when present)."""
    cache = Path(cache_dir) / f"world-{spec.key()}" if cache_dir else None
    out: dict[str, WorldSplit] = {}
    missing = []
    for name in splits:
        if name not in SPLITS:
            raise KeyError(f"unknown world split {name!r}; expected one of {SPLITS}")
        if cache and (cache / f"{name}.npz").exists() and (cache / f"{name}.parquet").exists():
            out[name] = WorldSplit(np.load(cache / f"{name}.npz")["images"], pd.read_parquet(cache / f"{name}.parquet"))
        else:
            missing.append(name)
    if not missing:
        return out
    renderer = WorldRenderer(spec.image_size)
    sizes = {"train": spec.n_train, "val": spec.n_val, "iid": spec.n_test, "ood": spec.n_test}
    log.info("rendering world splits %s (spec %s)", missing, spec)
    iid_scenes = iid_rows = None
    for name in missing:
        if name == "counterfactual":
            if iid_scenes is None:
                iid_scenes, iid_rows = _source_split(spec, "iid", spec.n_test, renderer)
            scenes, rows = _counterfactual_split(spec, iid_scenes, iid_rows, renderer)
        else:
            scenes, rows = _source_split(spec, name, sizes[name], renderer)
            if name == "iid":
                iid_scenes, iid_rows = scenes, rows
        out[name] = WorldSplit(_render_all(renderer, scenes), rows)
        if cache:
            cache.mkdir(parents=True, exist_ok=True)
            _atomic_save(cache, name, out[name])
    return out


def _atomic_save(folder: Path, name: str, split: WorldSplit) -> None:
    tmp_npz, tmp_pq = folder / f".{name}.npz.tmp", folder / f".{name}.parquet.tmp"
    with open(tmp_npz, "wb") as fh:
        np.savez(fh, images=split.images)
    split.records.to_parquet(tmp_pq, index=False)
    tmp_pq.replace(folder / f"{name}.parquet")
    tmp_npz.replace(folder / f"{name}.npz")


def edit_type_of(factor: str) -> str:
    return EDIT_TYPES[factor]
