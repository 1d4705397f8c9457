"""Hard ImageNet (Moayeri, Singla & Feizi, NeurIPS 2022 D&B): 15 ImageNet classes with strong spurious
cues, read from an ImageNet (ILSVRC-2012) validation folder you point `data.root` at.

Accepted layouts of `data.root`:
1. one folder per wnid (the usual "sorted" val layout): `root/n03218198/ILSVRC2012_val_00000001.JPEG`;
   only the 15 Hard ImageNet folders are read, and all 15 must exist.
2. flat: `root/ILSVRC2012_val_*.JPEG` plus a label file (`data.label_file`; default: a
   `LOC_val_solution.csv` in root or its parent) in one of these forms:
   - Kaggle `LOC_val_solution.csv`: header `ImageId,PredictionString`, the first token of
     PredictionString is the wnid (`ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...`);
   - whitespace separated `<file name> <label>` lines, label a wnid or a 0-based ImageNet-1k index in
     the standard sorted-wnid order (Caffe's `val.txt`);
   - one wnid per line, line n for `ILSVRC2012_val_{n:08d}.JPEG`
     (`imagenet_2012_validation_synset_labels.txt`).
   The devkit's `ILSVRC2012_validation_ground_truth.txt` (ILSVRC2012_IDs, a different order) is refused.
   Every labelled Hard ImageNet image must exist and every image in root must have a label row;
   mismatches are errors naming the label file line or the image.

Splits: the test split `test` is all of `root` (50 images a class on ImageNet val). With
`data.train_root` (an ImageNet train folder, wnid layout) `train`/`val` come from it with a
deterministic `val_fraction` held out; without it, `train`/`val` are a deterministic split of `root`
and `test` equals `val` (there is nothing else to test on).

Labels are 0..14 in the order of `HARD_IMAGENET`; `imagenet_indices` maps them to ImageNet-1k logits
for evaluating 1000-way classifiers.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path

from src.datamodules.image_folder import ImageFileDataModule, holdout_split
from src.datamodules.image_io import DEFAULT_MAX_PIXELS, is_image_file

log = logging.getLogger(__name__)

# (ImageNet-1k index, wnid, class name) -- the 15 Hard ImageNet classes in the paper's order.
HARD_IMAGENET: tuple[tuple[int, str, str], ...] = (
    (537, "n03218198", "dog sled"),
    (379, "n02492660", "howler monkey"),
    (785, "n04162706", "seat belt"),
    (795, "n04228054", "ski"),
    (837, "n04356056", "sunglasses"),
    (433, "n02807133", "swimming cap"),
    (416, "n02777292", "balance beam"),
    (602, "n03535780", "gymnastic horizontal bar"),
    (706, "n03899768", "patio"),
    (746, "n04019541", "hockey puck"),
    (655, "n03770439", "miniskirt"),
    (810, "n04264628", "keyboard space bar"),
    (890, "n04540053", "volleyball"),
    (981, "n09835506", "baseball player"),
    (801, "n04251144", "snorkel"),
)
WNID_TO_LABEL = {wnid: i for i, (_, wnid, _) in enumerate(HARD_IMAGENET)}
INDEX_TO_LABEL = {idx: i for i, (idx, _, _) in enumerate(HARD_IMAGENET)}
_WNID = re.compile(r"^n\d{8}$")
LOC_FILE = "LOC_val_solution.csv"


class LabelFileError(ValueError):
    """A label file that does not match the images; the message names the file and line."""


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _parse_label(token: str, where: str) -> int | None:
    """Hard ImageNet label of a wnid or ImageNet-1k index token; None for the other 985 classes."""
    if _WNID.match(token):
        return WNID_TO_LABEL.get(token)
    if token.isdigit() and int(token) < 1000:
        return INDEX_TO_LABEL.get(int(token))
    raise LabelFileError(f"{where}: label {token!r} is neither a wnid (n########) nor an ImageNet index 0..999")


def read_label_file(path: Path) -> dict[str, tuple[int | None, str]]:
    """image stem -> (Hard ImageNet label or None, 'file:line') for every row of `path`."""
    if not path.is_file():
        raise FileNotFoundError(f"data.label_file={str(path)!r} does not exist")
    lines = path.read_text().splitlines()
    rows: dict[str, tuple[int | None, str]] = {}

    def add(stem: str, label: int | None, where: str) -> None:
        if stem in rows:
            raise LabelFileError(f"{where}: image {stem} already labelled at {rows[stem][1]}")
        rows[stem] = (label, where)

    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for n, rec in enumerate(csv.reader(lines[1:]), 2):
            where = f"{path}:{n}"
            if not rec:
                continue
            if len(rec) < 2 or not rec[1].split():
                raise LabelFileError(f"{where}: expected 'ImageId,PredictionString', got {','.join(rec)!r}")
            add(_stem(rec[0]), _parse_label(rec[1].split()[0], where), where)
        return rows
    content = [(n, line.split()) for n, line in enumerate(lines, 1) if line.strip()]
    if content and all(len(t) == 1 for _, t in content):
        if all(t[0].isdigit() for _, t in content):
            raise LabelFileError(f"{path}: looks like the devkit's ILSVRC2012_validation_ground_truth.txt "
                                 "(ILSVRC2012_IDs, not the standard index order); use LOC_val_solution.csv or a "
                                 "'<file> <wnid>' list instead")
        for n, (tok,) in content:
            add(f"ILSVRC2012_val_{n:08d}", _parse_label(tok, f"{path}:{n}"), f"{path}:{n}")
        return rows
    for n, toks in content:
        where = f"{path}:{n}"
        if len(toks) != 2:
            raise LabelFileError(f"{where}: expected '<file name> <wnid or index>', got {' '.join(toks)!r}")
        add(_stem(toks[0]), _parse_label(toks[1], where), where)
    return rows


def scan_wnid_folders(root: Path) -> list[tuple[str, int]]:
    missing = [w for w in WNID_TO_LABEL if not (root / w).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: wnid-folder layout lacks the Hard ImageNet folders {missing}")
    samples = []
    for wnid, label in WNID_TO_LABEL.items():
        files = sorted(e.path for e in os.scandir(root / wnid) if e.is_file() and is_image_file(e.name))
        if not files:
            raise ValueError(f"{root / wnid}: class folder has no image files")
        samples += [(f, label) for f in files]
    return samples


def scan_flat(root: Path, label_file: Path) -> list[tuple[str, int]]:
    files = {_stem(e.name): e.path for e in os.scandir(root) if e.is_file() and is_image_file(e.name)}
    if not files:
        raise FileNotFoundError(f"{root}: no image files (neither wnid folders nor a flat val folder)")
    rows = read_label_file(label_file)
    unlabelled = sorted(set(files) - set(rows))
    if unlabelled:
        raise LabelFileError(f"{label_file}: {len(unlabelled)} images in {root} have no label row, "
                             f"e.g. {files[unlabelled[0]]} (is this the label file of this folder?)")
    samples = []
    for stem, (label, where) in rows.items():
        if label is None:
            continue
        if stem not in files:
            raise LabelFileError(f"{where}: labels image {stem} but {root} has no such image file")
        samples.append((files[stem], label))
    return sorted(samples)


def scan_imagenet_folder(root: Path, label_file: str | None) -> list[tuple[str, int]]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected an ImageNet val folder)")
    if any((root / w).is_dir() for w in WNID_TO_LABEL):
        if label_file is not None:
            log.warning("%s has wnid folders; data.label_file=%s is not used", root, label_file)
        return scan_wnid_folders(root)
    if label_file is None:
        found = [p for p in (root / LOC_FILE, root.parent / LOC_FILE) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{root} has no wnid folders, so it needs a label file: set data.label_file "
                                    f"(no {LOC_FILE} in {root} or {root.parent})")
        label_path = found[0]
    else:
        label_path = Path(label_file)
    return scan_flat(root, label_path)


class HardImageNetDataModule(ImageFileDataModule):
    def __init__(
        self,
        root: str,
        label_file: str | None = None,
        train_root: str | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
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
        self.class_names = [name for _, _, name in HARD_IMAGENET]
        self.wnids = [wnid for _, wnid, _ in HARD_IMAGENET]
        self.imagenet_indices = [idx for idx, _, _ in HARD_IMAGENET]
        test = scan_imagenet_folder(self.root, label_file)
        if train_root is not None:
            train_path = Path(train_root)
            if not train_path.is_dir():
                raise FileNotFoundError(f"data.train_root={train_root!r} is not a directory")
            train, val = holdout_split(scan_wnid_folders(train_path), val_fraction, split_seed, str(train_path))
            self.split_samples = {"train": train, "val": val, "test": test}
        else:
            train, val = holdout_split(test, val_fraction, split_seed, str(self.root))
            self.split_samples = {"train": train, "val": val, "test": val}
        self.test_split_names = ("test",)
