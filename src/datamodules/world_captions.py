"""Image + caption pairs from Counterfactory World with every factor drawn independently, for training
the world's mini CLIP, VAE and latent diffusion model.

Independent factors matter: a CLIP trained on the correlated split would learn "grass" as a synonym of
"circle". Batches are dicts `{"image": float CHW in [0, 1], "caption": list[str], "label", "index",
"factors": {factor: list[str]}, "seed"}` (factors + seed redraw the scene);
each model normalises pixels its own way (CLIP mean/std, diffusion [-1, 1]).
"""
from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from src.world.dataset import WorldSpec, build_world
from src.world.grammar import BACKGROUNDS, CLASSES, OBJECTS, VOCABULARY


class CaptionedImageDataset(Dataset):
    """`{"image", "caption", "label", "index"}` from N x H x W x 3 uint8 images and their records."""

    def __init__(self, images: np.ndarray, records: pd.DataFrame) -> None:
        if len(images) != len(records):
            raise ValueError(f"{len(images)} images but {len(records)} caption records")
        if "caption" not in records.columns:
            raise KeyError(f"world records lack a 'caption' column (columns: {list(records.columns)})")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.captions = records["caption"].astype(str).tolist()
        self.labels = torch.tensor(records["label"].to_numpy(), dtype=torch.long)
        # Factor values per sample (collated to {factor: [values]}): modules build hard-negative captions.
        self.factors = records[list(VOCABULARY)].astype(str).to_dict("records") \
            if set(VOCABULARY) <= set(records.columns) else None
        # Render seeds: with the factors they redraw a scene exactly (modules render counterfactual twins).
        self.seeds = records["seed"].astype("int64").tolist() if "seed" in records.columns else None

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict:
        item = {"image": self.images[i].float() / 255.0, "caption": self.captions[i], "label": self.labels[i],
                "index": i}
        if self.factors is not None:
            item["factors"] = self.factors[i]
        if self.seeds is not None:
            item["seed"] = self.seeds[i]
        return item


class WorldCaptionsDataModule(L.LightningDataModule):
    """Train/val caption pairs of an independent-factor world (its own seed, apart from the test splits)."""

    def __init__(self, image_size: int = 32, n_train: int = 20000, n_val: int = 1000, world_seed: int = 100,
                 batch_size: int = 128, num_workers: int = 0, cache_dir: str | None = None) -> None:
        super().__init__()
        # rho = 1 / |vocabulary| is uniform sampling: background and object independent of the class.
        self.spec = WorldSpec(image_size=image_size, n_train=n_train, n_val=n_val, n_test=1,
                              rho_background=1 / len(BACKGROUNDS), rho_object=1 / len(OBJECTS), seed=world_seed)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.class_names = list(CLASSES)
        self.num_classes = len(CLASSES)
        self.test_split_names = ("val",)
        self.splits: dict[str, CaptionedImageDataset] = {}
        self.records: dict[str, pd.DataFrame] = {}

    def prepare_data(self) -> None:
        build_world(self.spec, self.cache_dir, splits=("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, split in build_world(self.spec, self.cache_dir, splits=("train", "val")).items():
            self.splits[name] = CaptionedImageDataset(split.images, split.records)
            self.records[name] = split.records

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.splits[name], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=shuffle and len(self.splits[name]) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", False)
