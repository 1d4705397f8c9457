"""The loader methods shared by DataModules that keep their splits by name."""
from __future__ import annotations

from torch.utils.data import DataLoader


class NamedSplitLoaders:
    """train/val/test dataloaders for a DataModule with `_loader(name, shuffle=False)` and
    `test_split_names`. Mix in before `LightningDataModule`."""

    test_split_names: tuple[str, ...]

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:  # pragma: no cover - provided by the module
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name) for name in self.test_split_names]
