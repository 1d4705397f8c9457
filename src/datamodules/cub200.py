"""CUB-200-2011 (Wah et al. 2011): 11,788 photos of 200 bird species, official train/test split.

`data.root` is the extracted `CUB_200_2011/` folder (or its parent) with the standard metadata:

    images.txt               "<image_id> <relative path under images/>"
    image_class_labels.txt   "<image_id> <class_id>"          (class ids 1..200)
    train_test_split.txt     "<image_id> <is_training_image>"  (1 train, 0 test)
    classes.txt              "<class_id> <folder name>"        e.g. "1 001.Black_footed_Albatross"
    images/<folder name>/*.jpg

The files are cross-checked (same image ids everywhere, known class ids, each image inside the folder
of its labelled class, every image file present); any mismatch is an error naming file and line.
Splits: `train` (official train less a deterministic `val_fraction` per class), `val`, test split `test`.
Class names are the folder names without the number, underscores as spaces ("Black footed Albatross").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from src.datamodules.image_folder import ImageFileDataModule, holdout_split
from src.datamodules.image_io import DEFAULT_MAX_PIXELS

METADATA = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


class CubMetadataError(ValueError):
    """Malformed or inconsistent CUB metadata; the message names the file and line."""


def _read_pairs(path: Path) -> dict[int, tuple[str, int]]:
    """id -> (value, line number) of a "<int id> <value>" file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CUB-200-2011 metadata file missing (expected {', '.join(METADATA)})")
    out: dict[int, tuple[str, int]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise CubMetadataError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        key = int(parts[0])
        if key in out:
            raise CubMetadataError(f"{path}:{n}: id {key} repeats line {out[key][1]}")
        out[key] = (parts[1].strip(), n)
    if not out:
        raise CubMetadataError(f"{path}: empty")
    return out


def display_name(folder: str) -> str:
    return folder.split(".", 1)[-1].replace("_", " ")


def read_cub(root: Path, check_files: bool = True) -> tuple[list[str], list[str], list[tuple[str, int]], list[bool]]:
    """(class folder names, display names, [(path, label 0-based)], [is_train]) in image-id order."""
    classes, images, labels, split = (_read_pairs(root / f) for f in
                                      ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt"))
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise CubMetadataError(f"{root / 'classes.txt'}: class ids must be 1..N without gaps, got {class_ids[:5]}...")
    folders = [classes[i][0] for i in class_ids]
    ids = set(images)
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        if set(table) != ids:
            extra, missing = sorted(set(table) - ids), sorted(ids - set(table))
            raise CubMetadataError(f"{root / name}: image ids differ from images.txt "
                                   f"(not in images.txt: {extra[:5]}, missing: {missing[:5]})")
    known_folders = set(folders)
    samples, is_train = [], []
    for i in sorted(ids):
        rel, line = images[i]
        label_s, label_line = labels[i]
        if not label_s.isdigit() or int(label_s) not in classes:
            raise CubMetadataError(f"{root / 'image_class_labels.txt'}:{label_line}: unknown class id {label_s!r}")
        label = int(label_s) - 1
        folder = rel.split("/", 1)[0]
        if folder in known_folders and folder != folders[label]:
            raise CubMetadataError(f"{root / 'image_class_labels.txt'}:{label_line}: image {i} ({rel}, images.txt:{line}) "
                                   f"lies in {folder!r} but is labelled {folders[label]!r}")
        flag, flag_line = split[i]
        if flag not in ("0", "1"):
            raise CubMetadataError(f"{root / 'train_test_split.txt'}:{flag_line}: is_training_image must be 0 or 1, got {flag!r}")
        path = os.path.join(root, "images", rel)
        if check_files and not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: listed in {root / 'images.txt'}:{line} but missing "
                                    "(set data.on_bad_image=skip to drop missing files)")
        samples.append((path, label))
        is_train.append(flag == "1")
    return folders, [display_name(f) for f in folders], samples, is_train


class CUB200DataModule(ImageFileDataModule):
    def __init__(
        self,
        root: str,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: str = "none",
        batch_size: int = 64,
        num_workers: int = 2,
        data_config: dict | None = None,
        on_bad_image: str = "error",
        validate: str = "header",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        min_image_size: int = 1,
        test_splits: Sequence[str] = ("test",),
    ) -> None:
        super().__init__(augment, batch_size, num_workers, data_config, on_bad_image, validate,
                         max_image_pixels, min_image_size)
        root_path = Path(root)
        if not root_path.is_dir():
            raise FileNotFoundError(f"data.root={root!r} is not a directory (expected the CUB_200_2011 folder)")
        if not (root_path / "images.txt").is_file() and (root_path / "CUB_200_2011" / "images.txt").is_file():
            root_path = root_path / "CUB_200_2011"
        self.root = root_path
        # Missing files become per-file warnings at setup with on_bad_image=skip, errors here otherwise.
        self.class_folders, self.class_names, samples, is_train = read_cub(root_path, check_files=on_bad_image == "error")
        train = [s for s, t in zip(samples, is_train) if t]
        test = [s for s, t in zip(samples, is_train) if not t]
        train, val = holdout_split(train, val_fraction, split_seed, str(root_path))
        self.split_samples = {"train": train, "val": val, "test": test}
        bad = [s for s in test_splits if s not in self.split_samples]
        if bad:
            raise ValueError(f"data.test_splits has unknown splits {bad}; CUB-200-2011 has {sorted(self.split_samples)}")
        self.test_split_names = tuple(test_splits)
