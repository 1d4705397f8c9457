"""A generated counterfactual set (images + manifest.parquet) as a LightningDataModule.

Yields `{"image": tensor, "label": int tensor, "index": int}` like the other data modules; `.records` is
the manifest rows behind the dataset (same order as the indices), for per-edit-type analyses."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from src.generation.manifest import read_manifest


class CounterfactualDataset(Dataset):
    def __init__(self, root: str | Path, records: pd.DataFrame, transform: Callable | None = None) -> None:
        self.root, self.records, self.transform = Path(root), records.reset_index(drop=True), transform
        self._paths = self.records["image_path"].tolist()
        self._labels = self.records["label"].astype(int).tolist()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        path = self.root / self._paths[i]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as err:  # noqa: BLE001
            raise RuntimeError(f"counterfactual set {self.root}: row {i} ({self.records['id'][i]}) image {path}: {err}") from err
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return {"image": x, "label": torch.tensor(self._labels[i], dtype=torch.long), "index": i}


class CounterfactualDataModule(L.LightningDataModule):
    """`include`: which rows to serve; 'edits' = accepted edits, 'reconstruction' = the control set,
    'source' = the original images are not stored here (use the source data module)."""

    def __init__(self, root: str, include: Sequence[str] = ("edits",), edit_types: Sequence[str] | None = None,
                 transform: Callable | None = None, data_config: dict | None = None, batch_size: int = 128,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.include = tuple(include)
        bad = set(self.include) - {"edits", "reconstruction"}
        if bad:
            raise ValueError(f"data.include has unknown entries {sorted(bad)}; use edits and/or reconstruction")
        self.edit_types = tuple(edit_types) if edit_types else None
        self.batch_size, self.num_workers = batch_size, num_workers
        if transform is None:
            from src.datamodules.transforms import build_transforms
            from src.datamodules.world import DEFAULT_DATA_CONFIG

            transform = build_transforms(data_config or DEFAULT_DATA_CONFIG)
        self.transform = transform
        self.records = self._select(read_manifest(self.root))
        self.dataset = CounterfactualDataset(self.root, self.records, self.transform)

    def _select(self, df: pd.DataFrame) -> pd.DataFrame:
        ok = (df["status"] == "accepted") & df["image_path"].notna()
        kind = pd.Series(False, index=df.index)
        if "edits" in self.include:
            kind |= df["edit_type"] != "reconstruction"
        if "reconstruction" in self.include:
            kind |= df["edit_type"] == "reconstruction"
        if self.edit_types:
            kind &= df["edit_type"].isin(self.edit_types) | (df["edit_type"] == "reconstruction")
        return df[ok & kind].sort_values("id").reset_index(drop=True)

    def setup(self, stage: str | None = None) -> None:  # everything is ready at construction
        pass

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)
