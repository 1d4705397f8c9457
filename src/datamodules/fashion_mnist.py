"""Fashion-MNIST from its standard IDX files (Xiao et al. 2017): 60k train / 10k test 28x28 grayscale.

`data.root` holds `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz` (or the same names without `.gz`). The Debian package installs them:

    apt-get install -y dataset-fashion-mnist      # -> /usr/share/datasets/fashion-mnist

Splits: `train` (the official train set less a deterministic, class-stratified `val_fraction`),
`val`, and the official test set as the test split `test`.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from src.datamodules.arrays import ArrayImageDataset
from src.datamodules.split_loaders import NamedSplitLoaders
from src.datamodules.transforms import build_transforms

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
APT_HINT = "install it with `apt-get install -y dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist)"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEFAULT_DATA_CONFIG = {"input_size": (3, 28, 28), "mean": (0.286, 0.286, 0.286), "std": (0.353, 0.353, 0.353),
                       "interpolation": "bilinear", "crop_pct": 1.0}
# IDX type codes (LeCun's format): the third magic byte.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(ValueError):
    """A malformed IDX file; the message names the file."""


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (gzip or raw), validating the magic number and the payload size."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise IdxFormatError(f"{path}: cannot read ({type(e).__name__}: {e})") from e
    if len(raw) < 4:
        raise IdxFormatError(f"{path}: {len(raw)} bytes; too short for an IDX header")
    zero, code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or code not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000 + type code + ndim)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise IdxFormatError(f"{path}: IDX header says {ndim} dimensions, expected {expect_ndim} "
                             f"(magic 0x{raw[:4].hex()}; images are 0x00000803, labels 0x00000801)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IdxFormatError(f"{path}: {len(raw)} bytes but the header {shape} of {dtype} needs {expected} "
                             f"({'truncated' if len(raw) < expected else 'trailing data'})")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).copy()  # writable, owns its memory


def _locate(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"data.root={str(root)!r} has no {stem}.gz (nor {stem}); {APT_HINT}")


def load_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N x 28 x 28 uint8 images, N int64 labels) of `train` or `test`, cross-checked."""
    images_path, labels_path = (_locate(Path(root), s) for s in FILES[split])
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{images_path} / {labels_path}: expected unsigned bytes, got {images.dtype} / {labels.dtype}")
    if len(images) != len(labels):
        raise IdxFormatError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} out of range 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (rest, held-out) index arrays, `fraction` of every class held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in [0, 1), got {fraction}")
    rng = np.random.default_rng([seed, int(hashlib.sha1(b"fashion_mnist").hexdigest()[:8], 16)])
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), held_idx)
    return rest, held_idx


class FashionMNISTDataModule(NamedSplitLoaders, L.LightningDataModule):
    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        max_train: int | None = None,
        augment: str = "none",
        batch_size: int = 64,
        num_workers: int = 2,
        data_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} does not exist; {APT_HINT}")
        for stems in FILES.values():  # fail now, naming the file, rather than at setup
            for stem in stems:
                _locate(self.root, stem)
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.max_train = max_train
        self.augment = augment
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.data_config = dict(data_config or DEFAULT_DATA_CONFIG)
        self.class_names = list(CLASSES)
        self.num_classes = len(CLASSES)
        self.test_split_names = ("test",)
        self.splits: dict[str, ArrayImageDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_x, train_y = load_split(self.root, "train")
        test_x, test_y = load_split(self.root, "test")
        rest, held = stratified_holdout(train_y, self.val_fraction, self.split_seed)
        if self.max_train is not None:
            rest = rest[: self.max_train]
        eval_tf = build_transforms(self.data_config, "none")
        train_tf = build_transforms(self.data_config, self.augment)
        arrays = {"train": (train_x[rest], train_y[rest]), "val": (train_x[held], train_y[held]), "test": (test_x, test_y)}
        for name, (x, y) in arrays.items():
            self.splits[name] = ArrayImageDataset(x[..., None], y, train_tf if name == "train" else eval_tf)

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        ds = self.splits[name]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=shuffle and len(ds) > self.batch_size)

    def split_dataloader(self, name: str) -> DataLoader:
        self.setup()
        if name not in self.splits:
            raise KeyError(f"no split {name!r}; Fashion-MNIST has {sorted(self.splits)}")
        return self._loader(name)
