"""Counterfactory World as a LightningDataModule: train/val with planted spurious correlations,
test splits `iid`, `ood` and the ground-truth `counterfactual` re-renders."""
from __future__ import annotations

from dataclasses import fields

import pandas as pd
import lightning as L
from torch.utils.data import DataLoader

from src.datamodules.arrays import ArrayImageDataset
from src.datamodules.split_loaders import NamedSplitLoaders
from src.datamodules.transforms import build_transforms
from src.world.dataset import SPLITS, WorldSpec, build_world
from src.world.grammar import CLASSES

DEFAULT_DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                       "interpolation": "bilinear", "crop_pct": 1.0}


class WorldDataModule(NamedSplitLoaders, L.LightningDataModule):
    """`train_distribution='ood'` trains on independent factors: the oracle that has no cue to learn."""

    def __init__(
        self,
        image_size: int = 32,
        n_train: int = 8000,
        n_val: int = 2000,
        n_test: int = 2000,
        rho_background: float = 0.9,
        rho_object: float = 0.6,
        world_seed: int = 0,
        train_distribution: str = "correlated",
        test_splits: tuple[str, ...] = ("iid", "ood", "counterfactual"),
        augment: str = "none",
        batch_size: int = 128,
        num_workers: int = 0,
        cache_dir: str | None = None,
        data_config: dict | None = None,
    ) -> None:
        super().__init__()
        if train_distribution not in ("correlated", "ood"):
            raise ValueError(f"data.train_distribution={train_distribution!r}; expected 'correlated' or 'ood'")
        bad = [s for s in test_splits if s not in SPLITS]
        if bad:
            raise ValueError(f"data.test_splits has unknown splits {bad}; expected some of {SPLITS}")
        self.spec = WorldSpec(image_size, n_train, n_val, n_test, rho_background, rho_object, world_seed)
        # The oracle's training data: the same sizes, factors drawn independently.
        self.train_spec = self.spec if train_distribution == "correlated" else WorldSpec(
            **{f.name: getattr(self.spec, f.name) for f in fields(WorldSpec)} | {"rho_background": 1 / 8, "rho_object": 1 / 4}
        )
        self.test_split_names = tuple(test_splits)
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.data_config = dict(data_config or DEFAULT_DATA_CONFIG)
        self.class_names = list(CLASSES)
        self.num_classes = len(CLASSES)
        self.splits: dict = {}
        self.records: dict[str, pd.DataFrame] = {}

    def prepare_data(self) -> None:
        build_world(self.spec, self.cache_dir, splits=tuple(s for s in SPLITS if s not in ("train", "val")))
        build_world(self.train_spec, self.cache_dir, splits=("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        test = build_world(self.spec, self.cache_dir, splits=tuple(dict.fromkeys(self.test_split_names)))
        train = build_world(self.train_spec, self.cache_dir, splits=("train", "val"))
        eval_tf = build_transforms(self.data_config, "none")
        train_tf = build_transforms(self.data_config, self.augment)
        for name, split in {**train, **test}.items():
            tf = train_tf if name == "train" else eval_tf
            self.splits[name] = ArrayImageDataset(split.images, split.records["label"].to_numpy(), tf)
            self.records[name] = split.records

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.splits[name], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=shuffle and len(self.splits[name]) > self.batch_size)

    def split_dataloader(self, name: str) -> DataLoader:
        """Any split by name (evaluation walks all of them)."""
        self.setup()
        if name not in self.splits:
            split = build_world(self.spec, self.cache_dir, splits=(name,))[name]
            self.splits[name] = ArrayImageDataset(split.images, split.records["label"].to_numpy(),
                                                  build_transforms(self.data_config, "none"))
            self.records[name] = split.records
        return self._loader(name)
