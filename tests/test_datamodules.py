"""Non-world DataModules on tiny fake trees in their real layouts (and on real Fashion-MNIST when installed)."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from src.config_schema import check_targets
from src.datamodules.cub200 import CUB200DataModule, CubMetadataError
from src.datamodules.fashion_mnist import (
    CLASSES as FMNIST_CLASSES,
    DEFAULT_ROOT as FMNIST_ROOT,
    FashionMNISTDataModule,
    IdxFormatError,
    read_idx,
)
from src.datamodules.hardimagenet import HARD_IMAGENET, HardImageNetDataModule, LabelFileError
from src.datamodules.image_folder import ImageFolderDataModule, holdout_split
from src.datamodules.image_io import BadImageError

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
TINY = {"input_size": (3, 8, 8), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear",
        "crop_pct": 1.0}
FAST = {"num_workers": 0, "batch_size": 4, "data_config": TINY}


def _img(path: Path, value: int = 0, size=(8, 8), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value, 255 - value, 7) if mode == "RGB" else value).save(path)
    return path


def _tree(root: Path, classes=("cat", "dog", "emu"), per_class=5) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _img(root / name / f"{name}_{i}.png", value=10 * c + i)
    return root


def _assert_batch(batch: dict, n_classes: int) -> None:
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (3, 8, 8)
    assert batch["label"].dtype == torch.long and int(batch["label"].max()) < n_classes
    assert batch["index"].dtype == torch.long


# ---------------------------------------------------------------- ImageFolder

def test_image_folder_single_root_deterministic_stratified_val(tmp_path):
    root = _tree(tmp_path / "tree")
    (root / "notes.txt").write_text("not an image, ignored")
    dm = ImageFolderDataModule(str(root), val_fraction=0.2, **FAST)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3  # known before setup
    assert dm.test_split_names == ("val",)
    train, val = dm.split_samples["train"], dm.split_samples["val"]
    assert len(train) == 12 and len(val) == 3
    assert sorted(y for _, y in val) == [0, 1, 2]  # one per class
    assert not set(train) & set(val)
    again = ImageFolderDataModule(str(root), val_fraction=0.2, **FAST)
    assert again.split_samples == dm.split_samples
    other_seed = ImageFolderDataModule(str(root), val_fraction=0.2, split_seed=1, **FAST)
    assert other_seed.split_samples["val"] != val
    for path, label in train + val:
        assert Path(path).parent.name == dm.class_names[label]
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    _assert_batch(batch, 3)
    (test_loader,) = dm.test_dataloader()
    labels = torch.cat([b["label"] for b in test_loader])
    assert labels.tolist() == [y for _, y in dm.splits["val"].samples]


def test_holdout_split_is_independent_of_order_and_location(tmp_path):
    samples = [(f"/a/{c}/{i}.png", c) for c in range(2) for i in range(10)]
    moved = [(p.replace("/a/", "/b/"), y) for p, y in reversed(samples)]
    _, val_a = holdout_split(samples, 0.3, 0, "/a")
    _, val_b = holdout_split(moved, 0.3, 0, "/b")
    assert [p.replace("/a/", "/b/") for p, _ in val_a] == [p for p, _ in val_b]
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_split(samples, 1.0)


def test_image_folder_split_layout_with_classes_file_and_test_splits(tmp_path):
    root = tmp_path / "ds"
    _tree(root / "train", per_class=3)
    _tree(root / "val", per_class=1)
    _tree(root / "test", classes=("emu", "cat"), per_class=2)  # a test split may lack classes
    _tree(root / "shifted", per_class=1)
    (root / "classes.txt").write_text("emu\ncat\ndog\n")
    dm = ImageFolderDataModule(str(root), **FAST)
    assert dm.class_names == ["emu", "cat", "dog"]
    assert dm.test_split_names == ("shifted", "test")
    assert len(dm.split_samples["val"]) == 3 and len(dm.split_samples["train"]) == 9
    assert {Path(p).parent.name: y for p, y in dm.split_samples["test"]} == {"emu": 0, "cat": 1}
    only = ImageFolderDataModule(str(root), test_splits=["test"], **FAST)
    assert only.test_split_names == ("test",)
    only.setup()
    assert [len(dl.dataset) for dl in only.test_dataloader()] == [4]
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolderDataModule(str(root), test_splits=["nope"], **FAST)


def test_image_folder_bad_trees(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root=.*missing"):
        ImageFolderDataModule(str(tmp_path / "missing"), **FAST)
    root = _tree(tmp_path / "empty_class")
    (root / "fox").mkdir()
    with pytest.raises(ValueError, match="fox: class folder has no image files"):
        ImageFolderDataModule(str(root), **FAST)
    root = tmp_path / "unknown"
    _tree(root / "train")
    _tree(root / "test", classes=("cat", "yak"), per_class=1)
    with pytest.raises(ValueError, match="yak: folder is not one of the 3 classes"):
        ImageFolderDataModule(str(root), **FAST)
    root = _tree(tmp_path / "loose")
    _img(root / "stray.png")
    with pytest.raises(ValueError, match="image files lie outside class folders.*stray.png"):
        ImageFolderDataModule(str(root), **FAST)
    root = _tree(tmp_path / "listed")
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="emu: folder is not one of the 2 classes"):
        ImageFolderDataModule(str(root), **FAST)


def test_image_folder_bad_images_error_skip_and_mid_epoch(tmp_path, caplog):
    root = _tree(tmp_path / "tree", per_class=4)
    (root / "dog" / "dog_corrupt.jpg").write_bytes(b"garbage")
    _img(root / "emu" / "emu_gray.png", value=99, mode="L")  # handled, not bad
    _img(root / "emu" / "emu_16.png", mode="RGB").unlink()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(root / "emu" / "emu_16.png")
    dm = ImageFolderDataModule(str(root), **FAST)
    with pytest.raises(BadImageError, match="dog_corrupt.jpg"):
        dm.setup()
    skip = ImageFolderDataModule(str(root), on_bad_image="skip", **FAST)
    with caplog.at_level(logging.WARNING, logger="src.datamodules.image_io"):
        skip.setup()
    skipped = [p for bad in skip.skipped.values() for p, _ in bad]
    assert [Path(p).name for p in skipped] == ["dog_corrupt.jpg"]
    assert sum("dog_corrupt.jpg" in r.getMessage() for r in caplog.records) == 1
    assert any("skipped 1 of" in r.getMessage() for r in caplog.records)
    n_images = sum(len(ds) for name, ds in skip.splits.items())
    assert n_images == 3 * 4 + 2
    pixels = {Path(p).name: skip.splits[n][i]["image"] for n in ("train", "val")
              for i, (p, _) in enumerate(skip.splits[n].samples)}
    assert torch.allclose(pixels["emu_16.png"], torch.ones(3, 8, 8))  # 16-bit white stays white
    assert torch.allclose(pixels["emu_gray.png"], torch.full((3, 8, 8), 99 / 255))

    # A file that breaks after validation still fails naming the file, mid-epoch.
    late = _tree(tmp_path / "late", per_class=2)
    dm = ImageFolderDataModule(str(late), val_fraction=0.5, **FAST)
    dm.setup()
    victim = dm.splits["train"].samples[0][0]
    Path(victim).write_bytes(Path(victim).read_bytes()[:40])
    with pytest.raises(BadImageError, match=Path(victim).name):
        list(dm.train_dataloader())


# ---------------------------------------------------------------- CUB-200-2011

def _cub(root: Path, n_classes=3, per_class=4) -> Path:
    cub = root / "CUB_200_2011"
    folders = [f"{c + 1:03d}.Bird_number_{c}" for c in range(n_classes)]
    images, labels, split = [], [], []
    i = 0
    for c, folder in enumerate(folders):
        for k in range(per_class):
            i += 1
            rel = f"{folder}/Bird_{c}_{k}.jpg"
            _img(cub / "images" / rel, value=c * 40 + k)
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c + 1}")
            split.append(f"{i} {int(k < per_class - 1)}")
    (cub / "classes.txt").write_text("\n".join(f"{c + 1} {f}" for c, f in enumerate(folders)) + "\n")
    (cub / "images.txt").write_text("\n".join(images) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def test_cub200_fake_layout(tmp_path):
    root = _cub(tmp_path)
    dm = CUB200DataModule(str(root), val_fraction=0.34, **FAST)  # the parent folder is accepted
    assert dm.class_names == ["Bird number 0", "Bird number 1", "Bird number 2"] and dm.num_classes == 3
    assert dm.test_split_names == ("test",)
    assert [len(dm.split_samples[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert [Path(p).name for p, _ in dm.split_samples["test"]] == ["Bird_0_3.jpg", "Bird_1_3.jpg", "Bird_2_3.jpg"]
    for path, label in dm.split_samples["train"] + dm.split_samples["val"]:
        assert Path(path).parent.name.startswith(f"{label + 1:03d}.")
    dm.setup()
    _assert_batch(next(iter(dm.test_dataloader()[0])), 3)


def test_cub200_mismatched_metadata(tmp_path):
    root = _cub(tmp_path / "a") / "CUB_200_2011"
    lines = (root / "image_class_labels.txt").read_text().splitlines()
    (root / "image_class_labels.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(CubMetadataError, match=r"image_class_labels.txt: image ids differ.*missing: \[12\]"):
        CUB200DataModule(str(root), **FAST)

    root = _cub(tmp_path / "b") / "CUB_200_2011"
    lines[0] = "1 2"  # an image in folder 001 labelled class 2
    (root / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(CubMetadataError, match=r"image_class_labels.txt:1: image 1 .* lies in '001.Bird_number_0'"):
        CUB200DataModule(str(root), **FAST)

    root = _cub(tmp_path / "c") / "CUB_200_2011"
    (root / "train_test_split.txt").write_text((root / "train_test_split.txt").read_text().replace("5 1", "5 x"))
    with pytest.raises(CubMetadataError, match=r"train_test_split.txt:5: is_training_image must be 0 or 1"):
        CUB200DataModule(str(root), **FAST)

    root = _cub(tmp_path / "d") / "CUB_200_2011"
    (root / "images" / "002.Bird_number_1" / "Bird_1_0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"Bird_1_0.jpg: listed in .*images.txt:5"):
        CUB200DataModule(str(root), **FAST)
    skip = CUB200DataModule(str(root), on_bad_image="skip", **FAST)
    skip.setup()
    assert [Path(p).name for bad in skip.skipped.values() for p, _ in bad] == ["Bird_1_0.jpg"]

    with pytest.raises(FileNotFoundError, match="classes.txt: CUB-200-2011 metadata file missing"):
        CUB200DataModule(str(tmp_path), **FAST)


# ---------------------------------------------------------------- Hard ImageNet

def test_hardimagenet_wnid_layout(tmp_path):
    root = tmp_path / "val"
    for idx, wnid, _ in HARD_IMAGENET:
        for k in range(2):
            _img(root / wnid / f"ILSVRC2012_val_{idx:05d}{k}.JPEG", value=idx % 200)
    _img(root / "n01440764" / "tench.JPEG")  # not a Hard ImageNet class: ignored
    dm = HardImageNetDataModule(str(root), val_fraction=0.5, **FAST)
    assert dm.num_classes == 15 and dm.class_names[0] == "dog sled" and dm.class_names[-1] == "snorkel"
    assert dm.imagenet_indices[:3] == [537, 379, 785] and dm.wnids[4] == "n04356056"
    assert dm.test_split_names == ("test",)
    assert len(dm.split_samples["test"]) == 15 and dm.split_samples["test"] == dm.split_samples["val"]
    for path, label in dm.split_samples["train"] + dm.split_samples["val"]:
        assert Path(path).parent.name == HARD_IMAGENET[label][1]
    train_root = tmp_path / "train"
    for _, wnid, _ in HARD_IMAGENET:
        for k in range(3):
            _img(train_root / wnid / f"{wnid}_{k}.JPEG")
    with_train = HardImageNetDataModule(str(root), train_root=str(train_root), val_fraction=0.34, **FAST)
    assert [len(with_train.split_samples[s]) for s in ("train", "val", "test")] == [30, 15, 30]
    with_train.setup()
    _assert_batch(next(iter(with_train.test_dataloader()[0])), 15)
    (root / HARD_IMAGENET[3][1] / "ILSVRC2012_val_007950.JPEG").unlink()
    (root / HARD_IMAGENET[3][1] / "ILSVRC2012_val_007951.JPEG").unlink()
    with pytest.raises(ValueError, match="n04228054: class folder has no image files"):
        HardImageNetDataModule(str(root), **FAST)


def _flat(root: Path) -> list[str]:
    """Flat val folder: 2 images per Hard ImageNet class and 2 other images, in file-number order."""
    wnids = [w for _, w, _ in HARD_IMAGENET for _ in range(2)] + ["n01440764", "n09999999"]
    for n in range(1, len(wnids) + 1):
        _img(root / f"ILSVRC2012_val_{n:08d}.JPEG", value=n)
    return wnids


def test_hardimagenet_flat_layout_label_files(tmp_path):
    root = tmp_path / "val"
    wnids = _flat(root)
    loc = tmp_path / "LOC_val_solution.csv"  # the parent folder is searched
    loc.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{n:08d},{w} 1 2 30 40 {w} 5 6 7 8\n" for n, w in enumerate(wnids, 1)))
    def labelled(**kw) -> list:
        dm = HardImageNetDataModule(str(root), **kw, **FAST)
        return sorted(dm.split_samples["train"] + dm.split_samples["val"])

    expected = sorted((str(root / f"ILSVRC2012_val_{n:08d}.JPEG"), (n - 1) // 2) for n in range(1, 31))
    assert labelled() == expected

    synsets = tmp_path / "synset_labels.txt"  # one wnid per line
    synsets.write_text("\n".join(wnids) + "\n")
    assert labelled(label_file=str(synsets)) == expected
    indices = {w: i for i, w, _ in HARD_IMAGENET} | {"n01440764": 0, "n09999999": 999}
    caffe = tmp_path / "val.txt"  # "<file> <ImageNet index>"
    caffe.write_text("".join(f"ILSVRC2012_val_{n:08d}.JPEG {indices[w]}\n" for n, w in enumerate(wnids, 1)))
    assert labelled(label_file=str(caffe)) == expected

    # Mismatches: a labelled image that is missing, an image with no row, the devkit's other order.
    (root / "ILSVRC2012_val_00000003.JPEG").unlink()
    with pytest.raises(LabelFileError, match=r"LOC_val_solution.csv:4: labels image ILSVRC2012_val_00000003"):
        HardImageNetDataModule(str(root), **FAST)
    _img(root / "ILSVRC2012_val_00000003.JPEG")
    _img(root / "ILSVRC2012_val_00099999.JPEG")
    with pytest.raises(LabelFileError, match=r"1 images in .* have no label row, e.g. .*ILSVRC2012_val_00099999"):
        HardImageNetDataModule(str(root), **FAST)
    (root / "ILSVRC2012_val_00099999.JPEG").unlink()
    devkit = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    devkit.write_text("490\n361\n171\n")
    with pytest.raises(LabelFileError, match="ILSVRC2012_IDs"):
        HardImageNetDataModule(str(root), label_file=str(devkit), **FAST)
    bad = tmp_path / "bad.txt"
    bad.write_text("ILSVRC2012_val_00000001.JPEG dogsled\n")
    with pytest.raises(LabelFileError, match=r"bad.txt:1: label 'dogsled'"):
        HardImageNetDataModule(str(root), label_file=str(bad), **FAST)
    loc.unlink()
    with pytest.raises(FileNotFoundError, match="data.label_file"):
        HardImageNetDataModule(str(root), **FAST)


# ---------------------------------------------------------------- Fashion-MNIST

def _idx(path: Path, array: np.ndarray, magic: bytes | None = None, cut: int = 0) -> Path:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    raw = header + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw[: len(raw) - cut]))
    return path


def _fake_fmnist(root: Path, n_train=40, n_test=10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_fake_idx_files(tmp_path):
    root = _fake_fmnist(tmp_path / "fm")
    dm = FashionMNISTDataModule(str(root), val_fraction=0.25, num_workers=0, batch_size=4,
                                data_config={**TINY, "input_size": (3, 28, 28)})
    assert dm.num_classes == 10 and dm.class_names == list(FMNIST_CLASSES) and dm.test_split_names == ("test",)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [30, 10, 10]
    assert sorted(dm.splits["val"].labels.tolist()) == list(range(10))
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape == (4, 3, 28, 28) and batch["label"].tolist() == [0, 1, 2, 3]
    raw = read_idx(root / "t10k-images-idx3-ubyte.gz")
    assert torch.allclose(batch["image"][0, 1], torch.from_numpy(raw[0] / 255.0).float(), atol=1e-6)


def test_fashion_mnist_bad_idx_files(tmp_path):
    root = _fake_fmnist(tmp_path / "fm")
    labels = root / "train-labels-idx1-ubyte.gz"
    _idx(labels, np.arange(40) % 10, magic=bytes([0, 0, 0x08, 3]))  # image magic on a labels file
    with pytest.raises(IdxFormatError, match="train-labels-idx1-ubyte.gz: IDX header says 3 dimensions, expected 1"):
        FashionMNISTDataModule(str(root), **FAST).setup()
    _idx(labels, np.arange(40) % 10, magic=b"\x12\x34\x08\x01")
    with pytest.raises(IdxFormatError, match="train-labels-idx1-ubyte.gz: bad IDX magic number 0x12340801"):
        read_idx(labels)
    _idx(labels, np.arange(40) % 10, cut=5)
    with pytest.raises(IdxFormatError, match=r"train-labels-idx1-ubyte.gz: 43 bytes .* needs 48 \(truncated\)"):
        read_idx(labels, expect_ndim=1)
    _idx(labels, np.arange(39) % 10)
    with pytest.raises(IdxFormatError, match="40 images but .*train-labels-idx1-ubyte.gz has 39 labels"):
        FashionMNISTDataModule(str(root), **FAST).setup()
    _idx(labels, np.full(40, 12))
    with pytest.raises(IdxFormatError, match="label 12 out of range"):
        FashionMNISTDataModule(str(root), **FAST).setup()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(IdxFormatError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        read_idx(root / "t10k-images-idx3-ubyte.gz")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no t10k-labels-idx1-ubyte.gz.*apt-get install -y dataset-fashion-mnist"):
        FashionMNISTDataModule(str(root), **FAST)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNISTDataModule(str(tmp_path / "nowhere"), **FAST)


@pytest.mark.skipif(not Path(FMNIST_ROOT, "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason=f"real Fashion-MNIST not installed in {FMNIST_ROOT} (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    images = read_idx(Path(FMNIST_ROOT, "t10k-images-idx3-ubyte.gz"), expect_ndim=3)
    labels = read_idx(Path(FMNIST_ROOT, "t10k-labels-idx1-ubyte.gz"), expect_ndim=1)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the dataset's documented first test labels
    assert np.bincount(labels).tolist() == [1000] * 10
    train_labels = read_idx(Path(FMNIST_ROOT, "train-labels-idx1-ubyte.gz"), expect_ndim=1)
    assert np.bincount(train_labels).tolist() == [6000] * 10


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("name", ["image_folder", "fashion_mnist", "hardimagenet", "cub200"])
def test_data_configs_match_constructors(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    check_targets(OmegaConf.create({"data": cfg}))
    assert cfg.augment == "none" and cfg.batch_size == 64 and cfg.num_workers == 2
    if "on_bad_image" in cfg:
        assert cfg.on_bad_image == "error"


def test_image_folder_config_instantiates(tmp_path):
    root = _tree(tmp_path / "tree")
    cfg = OmegaConf.load(CONF / "image_folder.yaml")
    cfg.root = str(root)
    dm = hydra.utils.instantiate(cfg, num_workers=0)
    assert isinstance(dm, ImageFolderDataModule) and dm.num_classes == 3
