"""Data for repairing a world classifier: what the repair trains on, what chooses α, what tests it.

Three disjoint pools, so nothing a repair trains or selects on is ever tested on:

- **test** (`test_splits`): the world of `world_seed` -- `iid`, `ood`, `hybrid` (iid + ood) and the
  ground-truth `counterfactual` re-renders of the iid test scenes. The classifier under repair was
  trained on this world's `train` split; none of these images (nor their sources) is used below.
- **held-out sources** (`heldout_world_seed`): a second world, rendered with another seed. Its iid
  scenes and their ground-truth counterfactuals are the repair's material; they are split *by source*
  into a training part and a validation part (`heldout_val_fraction`). Or a generated set
  (`counterfactual_set=<folder>`) read with the generation engineer's reader.
- **validation** = the original `val` split + the held-out validation part; every sample carries
  `part` (0 original, 1 counterfactual) so α can be chosen per part (see `src.modules.wise_ft`).

`repair_data` says what a repair trains on:
`counterfactual` (this method: counterfactuals of the weakest edit types / classes, mixed with
original training images at `counterfactual_ratio`), `original` (original training images only, for
the standard-augmentation baselines), `group_balanced` (held-out original images balanced over
(class, background) groups: DFR, Kirichenko et al.).

Batches are dicts `{"image" | "features", "label", "part"}`. A head-only module calls
`use_features(extractor)`; from then on every split without random augmentation serves cached
backbone features instead of images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from src.datamodules.transforms import build_transforms
from src.datamodules.world import DEFAULT_DATA_CONFIG
from src.modules.feature_cache import image_shas
from src.world.dataset import WorldSpec, build_world
from src.world.grammar import CLASSES, EDIT_TYPES

log = logging.getLogger(__name__)

REPAIR_DATA = ("counterfactual", "original", "group_balanced")
TEST_SPLITS = ("iid", "ood", "hybrid", "counterfactual")


@dataclass
class ImageArraySet:
    """uint8 N x H x W x 3 images with labels, a `part` tag per image and the records behind them."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    part: np.ndarray
    records: pd.DataFrame
    _shas: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shas(self) -> list[str]:
        if self._shas is None:
            self._shas = image_shas(self.images)
        return self._shas

    @staticmethod
    def concat(name: str, sets: Sequence["ImageArraySet"]) -> "ImageArraySet":
        return ImageArraySet(name, np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                             np.concatenate([s.part for s in sets]),
                             pd.concat([s.records for s in sets], ignore_index=True))

    def subset(self, idx: np.ndarray, name: str | None = None) -> "ImageArraySet":
        return ImageArraySet(name or self.name, self.images[idx], self.labels[idx], self.part[idx],
                             self.records.iloc[idx].reset_index(drop=True))


class _ImageBatches(Dataset):
    """Index with a list of rows -> one batch (the loader's sampler is a BatchSampler)."""

    def __init__(self, data: ImageArraySet, transform: Callable) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)
        self.labels = torch.as_tensor(data.labels, dtype=torch.long)
        self.part = torch.as_tensor(data.part, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: list[int]) -> dict:
        # Per-image transform: random augmentations must differ between images of a batch.
        x = torch.stack([self.transform(self.images[i]) for i in rows])
        return {"image": x, "label": self.labels[rows], "part": self.part[rows]}


class _FeatureBatches(Dataset):
    """Cached features: one tensor slice per batch, no per-sample collation."""

    def __init__(self, features: torch.Tensor, data: ImageArraySet) -> None:
        self.features = features
        self.labels = torch.as_tensor(data.labels, dtype=torch.long)
        self.part = torch.as_tensor(data.part, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: list[int]) -> dict:
        return {"features": self.features[rows], "label": self.labels[rows], "part": self.part[rows]}


def _tag(split, name: str, part: int) -> ImageArraySet:
    labels = split.records["label"].to_numpy(np.int64)
    return ImageArraySet(name, split.images, labels, np.full(len(labels), part, np.int64), split.records)


def weakness(correct_source: pd.Series, correct_edit: pd.Series, records: pd.DataFrame) -> pd.DataFrame:
    """Accuracy drop (source - edit) per edit type and class, on paired held-out counterfactuals."""
    df = pd.DataFrame({"edit_type": records["edit_type"].to_numpy(), "label": records["label"].to_numpy(),
                       "src": correct_source.to_numpy(float), "edit": correct_edit.to_numpy(float)})
    out = df.groupby(["edit_type", "label"])[["src", "edit"]].mean()
    out["drop"] = out["src"] - out["edit"]
    return out.reset_index()


class RepairDataModule(L.LightningDataModule):
    def __init__(
        self,
        image_size: int = 32,
        n_train: int = 12000,
        n_val: int = 2000,
        n_test: int = 2000,
        rho_background: float = 0.9,
        rho_object: float = 0.6,
        world_seed: int = 0,
        test_splits: Sequence[str] = TEST_SPLITS,
        repair_data: str = "counterfactual",
        heldout_world_seed: int = 1,
        n_heldout: int = 2000,
        heldout_val_fraction: float = 0.25,
        counterfactual_set: str | None = None,
        edit_types: Sequence[str] | str = "auto",
        n_weak_edit_types: int = 1,
        classes: Sequence[str] | str | None = "auto",
        class_drop_fraction: float = 0.5,
        weakness_classifier: str | None = None,
        counterfactual_ratio: float = 0.5,
        n_original: int | None = None,
        augment: str = "none",
        batch_size: int = 8,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        seed: int | None = 0,
        cache_dir: str | None = None,
        data_config: dict | None = None,
    ) -> None:
        super().__init__()
        if repair_data not in REPAIR_DATA:
            raise ValueError(f"data.repair_data={repair_data!r}; expected one of {REPAIR_DATA}")
        bad = [s for s in test_splits if s not in TEST_SPLITS]
        if bad:
            raise ValueError(f"data.test_splits has unknown splits {bad}; expected some of {TEST_SPLITS}")
        if heldout_world_seed == world_seed:
            raise ValueError(f"data.heldout_world_seed must differ from data.world_seed ({world_seed}): the held-out "
                             f"sources must never be test images")
        if not 0.0 < counterfactual_ratio <= 1.0:
            raise ValueError(f"data.counterfactual_ratio must lie in (0, 1], got {counterfactual_ratio}")
        if isinstance(edit_types, str) and edit_types != "auto":
            edit_types = [edit_types]
        unknown = [] if edit_types == "auto" else [e for e in edit_types if e not in set(EDIT_TYPES.values())]
        if unknown:
            raise ValueError(f"data.edit_types has unknown edit types {unknown}; expected 'auto' or some of "
                             f"{sorted(set(EDIT_TYPES.values()))}")
        self.spec = WorldSpec(image_size, n_train, n_val, n_test, rho_background, rho_object, world_seed)
        # Only the iid split (sources) and its counterfactuals are used from the held-out world.
        self.heldout_spec = WorldSpec(image_size, 1, 1, n_heldout, rho_background, rho_object, heldout_world_seed)
        self.test_split_names = tuple(test_splits)
        self.repair_data = repair_data
        self.heldout_val_fraction = heldout_val_fraction
        self.counterfactual_set = counterfactual_set
        self.edit_types = edit_types
        self.n_weak_edit_types = n_weak_edit_types
        self.classes = classes
        self.class_drop_fraction = class_drop_fraction
        self.weakness_classifier = weakness_classifier
        self.counterfactual_ratio = counterfactual_ratio
        self.n_original = n_original
        self.augment = augment
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed = seed if seed is not None else 0
        self.cache_dir = cache_dir
        self.data_config = dict(data_config or DEFAULT_DATA_CONFIG)
        self.class_names = list(CLASSES)
        self.num_classes = len(CLASSES)
        self.sets: dict[str, ImageArraySet] = {}
        self.weakness_table: pd.DataFrame | None = None
        self.chosen: dict = {}
        self.extractor = None

    # ----------------------------------------------------------------- building the pools
    def prepare_data(self) -> None:
        build_world(self.spec, self.cache_dir, splits=("train", "val", "iid", "ood", "counterfactual"))
        if self.counterfactual_set is None or self.repair_data == "group_balanced":
            build_world(self.heldout_spec, self.cache_dir, splits=("iid", "counterfactual"))

    def setup(self, stage: str | None = None) -> None:
        if self.sets:
            return
        world = build_world(self.spec, self.cache_dir, splits=("train", "val", "iid", "ood", "counterfactual"))
        rng = np.random.default_rng(self.seed)
        tests = {"iid": _tag(world["iid"], "iid", 0), "ood": _tag(world["ood"], "ood", 0),
                 "counterfactual": _tag(world["counterfactual"], "counterfactual", 1)}
        tests["hybrid"] = ImageArraySet.concat("hybrid", [tests["iid"], tests["ood"]])
        original_train = _tag(world["train"], "train", 0)
        val_parts = [_tag(world["val"], "val", 0)]

        if self.counterfactual_set is not None and self.repair_data == "counterfactual":
            cf_train, cf_val, sources = self._generated_pools(rng, tests)
        else:
            cf_train, cf_val, sources = self._heldout_pools(rng)
        if self.repair_data == "counterfactual":
            cf_train, cf_val = self._target_weakness(cf_train, cf_val, sources)
        val_parts.append(cf_val)

        if self.repair_data == "counterfactual":
            n_cf = len(cf_train)
            n_orig = self.n_original if self.n_original is not None else int(round(n_cf * (1 - self.counterfactual_ratio)
                                                                                  / self.counterfactual_ratio))
            train = ImageArraySet.concat("repair_train", [cf_train, self._sample(original_train, n_orig, rng)])
        elif self.repair_data == "original":
            train = self._sample(original_train, self.n_original or len(original_train), rng)
        else:
            train = self._group_balanced(sources["train"], rng)
        self.sets = {"train": train, "val": ImageArraySet.concat("val", val_parts),
                     **{name: tests[name] for name in self.test_split_names}}
        log.info("repair data (%s): train %d images, val %d (%d counterfactual), tests %s", self.repair_data,
                 len(train), len(self.sets["val"]), len(cf_val), {k: len(tests[k]) for k in self.test_split_names})

    @staticmethod
    def _sample(data: ImageArraySet, n: int, rng: np.random.Generator) -> ImageArraySet:
        n = min(n, len(data))
        return data.subset(np.sort(rng.choice(len(data), n, replace=False)), data.name)

    def _heldout_pools(self, rng: np.random.Generator):
        held = build_world(self.heldout_spec, self.cache_dir, splits=("iid", "counterfactual"))
        src, cf = _tag(held["iid"], "heldout_source", 0), _tag(held["counterfactual"], "heldout_counterfactual", 1)
        ids = src.records["id"].to_numpy()
        val_ids = set(rng.choice(ids, int(round(len(ids) * self.heldout_val_fraction)), replace=False).tolist())
        in_val_src = np.array([i in val_ids for i in ids])
        in_val_cf = cf.records["source_id"].isin(val_ids).to_numpy()
        sources = {"train": src.subset(np.flatnonzero(~in_val_src)), "val": src.subset(np.flatnonzero(in_val_src))}
        return (cf.subset(np.flatnonzero(~in_val_cf), "counterfactual_train"),
                cf.subset(np.flatnonzero(in_val_cf), "counterfactual_val"), sources)

    def _generated_pools(self, rng: np.random.Generator, tests: dict[str, ImageArraySet]):
        """A generate.py set: accepted edits, split by source into train/val parts."""
        from PIL import Image

        from src.datamodules.counterfactual import CounterfactualDataModule

        reader = CounterfactualDataModule(self.counterfactual_set, include=("edits",), data_config=self.data_config)
        rec = reader.records
        if len(rec) == 0:
            raise ValueError(f"data.counterfactual_set={self.counterfactual_set} has no accepted edits")
        root = Path(self.counterfactual_set)
        images = np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in rec["image_path"]])
        test_shas = set().union(*(tests[k].shas for k in ("iid", "ood")))
        leaked = rec["source_sha256"].isin(test_shas) if "source_sha256" in rec else pd.Series(False, index=rec.index)
        if leaked.any():
            log.warning("data.counterfactual_set: %d of %d edits come from test source images; they are dropped "
                        "(repair data must never share sources with a test set)", int(leaked.sum()), len(rec))
            images, rec = images[~leaked.to_numpy()], rec[~leaked].reset_index(drop=True)
        cf = ImageArraySet("counterfactual_set", images, rec["label"].to_numpy(np.int64), np.ones(len(rec), np.int64), rec)
        src_ids = rec["source_id"].astype(str).unique()
        val_ids = set(rng.choice(src_ids, int(round(len(src_ids) * self.heldout_val_fraction)), replace=False).tolist())
        in_val = rec["source_id"].astype(str).isin(val_ids).to_numpy()
        return cf.subset(np.flatnonzero(~in_val), "counterfactual_train"), cf.subset(np.flatnonzero(in_val), "counterfactual_val"), {}

    def _target_weakness(self, cf_train: ImageArraySet, cf_val: ImageArraySet, sources: dict):
        """Keep the counterfactuals of the weakest edit types (and classes), measured on the held-out
        training part only: the classifier's paired accuracy drop, source -> counterfactual."""
        edit_types, classes = self.edit_types, self.classes
        needs_weakness = edit_types == "auto" or classes == "auto"
        if needs_weakness:
            if not self.weakness_classifier:
                raise ValueError("data.edit_types=auto / data.classes=auto need data.weakness_classifier (the trained "
                                 "classifier.safetensors; experiment=wise_ft sets it to module.classifier_path)")
            self.weakness_table = self._measure_weakness(cf_train, sources.get("train"))
            by_type = self.weakness_table.groupby("edit_type")["drop"].mean().sort_values(ascending=False)
            if edit_types == "auto":
                edit_types = list(by_type.index[: self.n_weak_edit_types])
            if classes == "auto":
                per_class = self.weakness_table[self.weakness_table["edit_type"].isin(edit_types)].groupby("label")["drop"].mean()
                keep = per_class[per_class >= self.class_drop_fraction * per_class.max()]
                classes = [CLASSES[i] for i in keep.index]
            log.info("weakness (accuracy drop per edit type, held-out):\n%s\nrepairing edit types %s, classes %s",
                     by_type.round(3).to_string(), edit_types, classes)
        self.chosen = {"edit_types": list(edit_types), "classes": list(classes) if classes else list(CLASSES)}

        def keep(data: ImageArraySet) -> ImageArraySet:
            mask = data.records["edit_type"].isin(edit_types).to_numpy().copy()
            if classes:
                mask &= np.isin(data.labels, [CLASSES.index(c) for c in classes])
            return data.subset(np.flatnonzero(mask), data.name)

        return keep(cf_train), keep(cf_val)

    def _measure_weakness(self, cf: ImageArraySet, sources: ImageArraySet | None) -> pd.DataFrame:
        from src.evaluation.classifier import load_classifier

        clf = load_classifier(self.weakness_classifier, None, self.num_classes, self.class_names)
        tf = build_transforms(clf.data_config, "none")

        @torch.no_grad()
        def correct(data: ImageArraySet) -> np.ndarray:
            out = []
            for s in range(0, len(data), self.eval_batch_size):
                x = tf(torch.from_numpy(np.ascontiguousarray(data.images[s:s + self.eval_batch_size])).permute(0, 3, 1, 2))
                out.append(clf.model(x).argmax(1).numpy())
            return np.concatenate(out) == data.labels

        edit_ok = pd.Series(correct(cf))
        if sources is not None and "source_id" in cf.records:
            src_ok = dict(zip(sources.records["id"], correct(sources)))
            source_ok = cf.records["source_id"].map(src_ok).fillna(1.0)
        else:  # a generated set without its sources: rank by accuracy on the edits
            source_ok = pd.Series(np.ones(len(cf)))
        return weakness(source_ok, edit_ok, cf.records)

    @staticmethod
    def _group_balanced(sources: ImageArraySet, rng: np.random.Generator) -> ImageArraySet:
        """DFR's held-out set: equal counts of every (class, background) group present."""
        groups = sources.records.groupby(["label", "background"]).indices
        n = min(len(v) for v in groups.values())
        idx = np.sort(np.concatenate([rng.choice(v, n, replace=False) for v in groups.values()]))
        log.info("group-balanced held-out set: %d groups x %d images", len(groups), n)
        return sources.subset(idx, "group_balanced")

    # ----------------------------------------------------------------- serving
    def use_features(self, extractor: Callable[..., torch.Tensor] | None) -> None:
        """Serve cached backbone features (`extractor(images, shas) -> N x D`) for every split that has no
        random augmentation; `None` goes back to images."""
        self.extractor = extractor

    def features(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, labels, part) of one split; requires `use_features`."""
        if self.extractor is None:
            raise RuntimeError("features() needs use_features(extractor) first")
        self.setup()
        data = self.sets[name]
        return (self.extractor(data.images, data.shas, desc=f"features {name}"),
                torch.as_tensor(data.labels, dtype=torch.long), torch.as_tensor(data.part, dtype=torch.long))

    def _loader(self, name: str, train: bool) -> DataLoader:
        data = self.sets[name]
        augment = self.augment if train else "none"
        if self.extractor is not None and augment == "none":
            ds: Dataset = _FeatureBatches(self.features(name)[0], data)
        else:
            ds = _ImageBatches(data, build_transforms(self.data_config, augment))
        bs = self.batch_size if train else self.eval_batch_size
        gen = torch.Generator().manual_seed(self.seed) if train else None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning only swaps plain samplers; shard this batch sampler's source ourselves (DDP).
            base = DistributedSampler(ds, shuffle=train, seed=self.seed)
        else:
            base = RandomSampler(ds, generator=gen) if train else SequentialSampler(ds)
        sampler = BatchSampler(base, bs, drop_last=False)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, train=False) for name in self.test_split_names]
