"""World export round trip: PNG class folders + manifest, loaded back with ImageFolderDataModule."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.datamodules.image_folder import ImageFolderDataModule
from src.world.dataset import WorldSpec, build_world
from src.world.export import export_world, main
from src.world.grammar import CLASSES

SPEC = WorldSpec(image_size=32, n_train=16, n_val=8, n_test=8, seed=3)
IDENTITY = {"input_size": (3, 32, 32), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear",
            "crop_pct": 1.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "world"
    manifest = export_world(out, SPEC)
    return out, manifest


def test_export_layout_and_manifest(exported):
    out, manifest = exported
    assert (out / "classes.txt").read_text().split() == list(CLASSES)
    assert not out.with_name("world.partial").exists()
    assert manifest["split"].value_counts().to_dict() == {"train": 16, "val": 8, "iid": 8, "ood": 8, "counterfactual": 40}
    on_disk = pd.read_parquet(out / "manifest.parquet")
    pd.testing.assert_frame_equal(on_disk, manifest)
    from_csv = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert from_csv["path"].tolist() == manifest["path"].tolist()
    assert from_csv["caption"].tolist() == manifest["caption"].tolist()
    for col in ("label", "class_name", "caption", "background", "colour", "domain", "seed", "sha256"):
        assert col in manifest.columns
    cf = manifest[manifest["split"] == "counterfactual"]
    assert set(cf["edit_type"]) == {"subject", "object", "background", "adjective", "domain"}
    assert cf["source_id"].isin(manifest.loc[manifest["split"] == "iid", "id"]).all()
    for row in manifest.itertuples():
        assert row.class_name == CLASSES[row.label] and Path(row.path).parts[:2] == (row.split, row.class_name)
    row = manifest.iloc[5]
    assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]


def test_round_trip_with_image_folder_datamodule(exported):
    out, manifest = exported
    world = build_world(SPEC)
    dm = ImageFolderDataModule(str(out), test_splits=["iid", "ood", "counterfactual"], data_config=IDENTITY,
                               num_workers=0, batch_size=64)
    assert dm.class_names == list(CLASSES) and dm.num_classes == len(CLASSES)
    assert dm.test_split_names == ("iid", "ood", "counterfactual")
    dm.setup()
    by_path = manifest.set_index("path")
    for split in ("train", "val", "iid", "ood", "counterfactual"):
        ds = dm.splits[split]
        assert len(ds) == len(world[split])
        ids = world[split].records["id"].tolist()
        for i, (path, label) in enumerate(ds.samples):
            rel = Path(path).relative_to(out).as_posix()
            assert label == by_path.loc[rel, "label"]
            if i < 4:  # pixel-exact: PNG is lossless and the identity transform keeps 32x32
                original = world[split].images[ids.index(by_path.loc[rel, "id"])]
                loaded = ds[i]["image"]
                assert torch.equal((loaded * 255).round().to(torch.uint8), torch.from_numpy(original).permute(2, 0, 1))
    labels = torch.cat([b["label"] for b in dm.test_dataloader()[2]])
    assert labels.tolist() == [y for _, y in dm.splits["counterfactual"].samples]
    assert np.bincount(labels.numpy(), minlength=len(CLASSES)).sum() == 40


def test_export_refuses_existing_folder_and_cli(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["--out", str(out), "--splits", "iid", "ood", "--n-test", "8", "--n-train", "8", "--n-val", "8"]) == 0
    assert "wrote 16 images" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["iid", "ood"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_world(out, SPEC, splits=("iid",))
    export_world(out, SPEC, splits=("iid",), overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["iid"]
    with pytest.raises(ValueError, match="unknown world splits"):
        export_world(tmp_path / "x", SPEC, splits=("test",))
