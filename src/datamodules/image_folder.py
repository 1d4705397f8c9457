"""DataModules over image files: `ImageFileDataModule` (the shared machinery: validation at setup,
transforms from the backbone's data config, loaders) and `ImageFolderDataModule` (any tree of class
folders).

Subclasses fill `class_names`, `split_samples` (split name -> [(path, label)]) and `test_split_names`
in `__init__` by scanning folders or metadata; no image is opened before `setup()`.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import lightning as L
from torch.utils.data import DataLoader, default_collate

from src.datamodules.image_io import (
    DEFAULT_MAX_PIXELS,
    ON_BAD_IMAGE,
    VALIDATE_MODES,
    ImageFileDataset,
    check_choice,
    is_image_file,
    skip_bad_collate,
    validate_samples,
)
from src.datamodules.split_loaders import NamedSplitLoaders
from src.datamodules.transforms import build_transforms

log = logging.getLogger(__name__)

# Used until train.py sets the backbone's own data config (`dm.data_config = ...`) before setup().
DEFAULT_DATA_CONFIG = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                       "interpolation": "bilinear", "crop_pct": 0.875}
CLASSES_FILE = "classes.txt"

Samples = list[tuple[str, int]]


def holdout_split(samples: Samples, fraction: float, seed: int = 0, root: str | None = None) -> tuple[Samples, Samples]:
    """Deterministic, class-stratified (rest, held-out) split.

    Each class's files are ordered by a hash of (seed, path relative to `root`), so the split does not
    depend on listing order or on where the tree lives, and adding files moves few others.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in [0, 1), got {fraction}")
    by_class: dict[int, Samples] = defaultdict(list)
    for s in samples:
        by_class[s[1]].append(s)

    def key(s: tuple[str, int]) -> str:
        rel = os.path.relpath(s[0], root) if root else s[0]
        return hashlib.sha1(f"{seed}:{rel}".encode()).hexdigest()

    rest, held = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=key)
        n = len(items)
        k = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)  # every class keeps a training image and gets a validation one
        held += items[:k]
        rest += items[k:]
    return sorted(rest), sorted(held)


class ImageFileDataModule(NamedSplitLoaders, L.LightningDataModule):
    """Shared machinery; subclasses set `class_names`, `split_samples`, `test_split_names` in __init__."""

    def __init__(
        self,
        augment: str = "none",
        batch_size: int = 64,
        num_workers: int = 2,
        data_config: dict | None = None,
        on_bad_image: str = "error",
        validate: str = "header",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        min_image_size: int = 1,
    ) -> None:
        super().__init__()
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.data_config = dict(data_config or DEFAULT_DATA_CONFIG)
        self.on_bad_image = check_choice("data.on_bad_image", on_bad_image, ON_BAD_IMAGE)
        self.validate = check_choice("data.validate", validate, VALIDATE_MODES)
        self.max_image_pixels = int(max_image_pixels)
        self.min_image_size = int(min_image_size)
        self.class_names: list[str] = []
        self.split_samples: dict[str, Samples] = {}
        self.test_split_names: tuple[str, ...] = ()
        self.splits: dict[str, ImageFileDataset] = {}
        self.skipped: dict[str, list[tuple[str, str]]] = {}  # split -> [(path, reason)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        eval_tf = build_transforms(self.data_config, "none")
        train_tf = build_transforms(self.data_config, self.augment)
        checked: dict[int, tuple[Samples, list]] = {}  # the same list under two names is checked once
        for name, samples in self.split_samples.items():
            if id(samples) not in checked:
                checked[id(samples)] = validate_samples(
                    samples, self.validate, self.on_bad_image, self.max_image_pixels, self.min_image_size,
                    desc=f"checking {name} images")
            good, bad = checked[id(samples)]
            self.skipped[name] = bad
            if not good:
                raise ValueError(f"split {name!r} has no usable images ({len(bad)} bad)")
            self.splits[name] = ImageFileDataset(good, train_tf if name == "train" else eval_tf, self.on_bad_image,
                                                 self.max_image_pixels, self.min_image_size)

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        ds = self.splits[name]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          collate_fn=skip_bad_collate if self.on_bad_image == "skip" else default_collate,
                          drop_last=shuffle and len(ds) > self.batch_size)

    def split_dataloader(self, name: str) -> DataLoader:
        """Any split by name (evaluation walks all of them)."""
        self.setup()
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; this datamodule has {sorted(self.splits)}")
        return self._loader(name)


def read_classes_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate class names {dup}")
    if not names:
        raise ValueError(f"{path}: no class names")
    return names


def scan_class_folders(split_root: Path, class_to_idx: dict[str, int], split: str, require_all: bool) -> Samples:
    """(path, label) for every image under `split_root/<class>/` (recursively), sorted.

    Unknown class folders, images lying outside class folders and, when `require_all`, missing or
    empty class folders are errors naming the folder.
    """
    samples: Samples = []
    seen = set()
    loose = []
    for entry in sorted(os.scandir(split_root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if is_image_file(entry.path):
                loose.append(entry.path)
            continue
        if entry.name not in class_to_idx:
            raise ValueError(f"{entry.path}: folder is not one of the {len(class_to_idx)} classes "
                             f"(classes: {sorted(class_to_idx)[:10]}...)")
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(entry.path, followlinks=True) for f in fs
                       if is_image_file(f))
        if not files:
            msg = f"{entry.path}: class folder has no image files"
            if require_all:
                raise ValueError(msg)
            log.warning("%s (split %s)", msg, split)
        seen.add(entry.name)
        samples += [(f, class_to_idx[entry.name]) for f in files]
    if loose:
        raise ValueError(f"{split_root}: {len(loose)} image files lie outside class folders, e.g. {loose[0]}")
    missing = [c for c in class_to_idx if c not in seen]
    if missing and require_all:
        raise ValueError(f"{split_root}: no folder for classes {missing[:10]} (split {split})")
    return samples


class ImageFolderDataModule(ImageFileDataModule):
    """Any tree of class folders.

    Layouts (`data.root`):
    - split roots: `root/train/<class>/*`, optional `root/val/<class>/*` (else a deterministic
      `val_fraction` of train is held out) and any other split folders (`root/test/...`, or the world
      export's `iid`, `ood`, `counterfactual`) used as test splits: `test_splits`, or all of them
      in sorted order (`val` when there are none).
    - a single root of class folders `root/<class>/*`: train and a deterministic held-out `val`, which
      is also the test split.

    Class order: `class_names` if given, else `root/classes.txt` (one name a line, as written by
    `python -m src.world.export`), else the sorted folder names of the training root.
    """

    def __init__(
        self,
        root: str,
        test_splits: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        class_names: Sequence[str] | None = None,
        augment: str = "none",
        batch_size: int = 64,
        num_workers: int = 2,
        data_config: dict | None = None,
        on_bad_image: str = "error",
        validate: str = "header",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        min_image_size: int = 1,
    ) -> None:
        super().__init__(augment, batch_size, num_workers, data_config, on_bad_image, validate,
                         max_image_pixels, min_image_size)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} is not a directory")
        split_layout = (self.root / "train").is_dir()
        train_root = self.root / "train" if split_layout else self.root
        if class_names is not None:
            self.class_names = [str(c) for c in class_names]
        elif (self.root / CLASSES_FILE).is_file():
            self.class_names = read_classes_file(self.root / CLASSES_FILE)
        else:
            self.class_names = sorted(e.name for e in os.scandir(train_root) if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise ValueError(f"{train_root}: no class folders found")
        class_to_idx = {c: i for i, c in enumerate(self.class_names)}
        train = scan_class_folders(train_root, class_to_idx, "train", require_all=True)

        if not split_layout:
            train, val = holdout_split(train, val_fraction, split_seed, str(self.root))
            self.split_samples = {"train": train, "val": val}
            names = tuple(test_splits or ("val",))
        else:
            if (self.root / "val").is_dir():
                val = scan_class_folders(self.root / "val", class_to_idx, "val", require_all=False)
            else:
                train, val = holdout_split(train, val_fraction, split_seed, str(self.root))
            self.split_samples = {"train": train, "val": val}
            others = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
                            and e.name not in ("train", "val"))
            names = tuple(test_splits) if test_splits else (tuple(others) or ("val",))
            for name in names:
                if name in self.split_samples:
                    continue
                if not (self.root / name).is_dir():
                    raise FileNotFoundError(f"data.test_splits names {name!r} but {self.root / name} is not a directory")
                self.split_samples[name] = scan_class_folders(self.root / name, class_to_idx, name, require_all=False)
        unknown = [n for n in names if n not in self.split_samples]
        if unknown:
            raise ValueError(f"data.test_splits={list(names)}: no split {unknown} under {self.root}")
        if not self.split_samples["val"]:
            raise ValueError(f"{self.root}: the validation split is empty (raise data.val_fraction or add a val/ folder)")
        self.test_split_names = names
