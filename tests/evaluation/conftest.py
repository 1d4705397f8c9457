"""Fixtures for evaluation tests: a tiny generated-set folder, a tiny classifier."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def make_set(folder: Path, n_sources: int = 4, edit_types=("background", "domain"), size: int = 8) -> Path:
    """A counterfactual set like generate.py writes: images/, sources/, manifest.parquet with a
    reconstruction row and accepted/rejected edit rows per source."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "sources").mkdir()
    rows = []
    for s in range(n_sources):
        sid = f"src-{s}"
        src_rel = f"sources/{sid}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / src_rel)
        base = {"source_id": sid, "source_path": src_rel, "label": s % 3, "caption": f"a shape on grass {s}"}
        rec = f"images/{sid}-recon.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / rec)
        rows.append({**base, "id": f"{sid}-recon", "status": "accepted", "edit_type": "reconstruction",
                     "image_path": rec, "original_words": None, "edited_words": None, "edited_caption": None})
        for j, et in enumerate(edit_types):
            rel = f"images/{sid}-{j}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / rel)
            rows.append({**base, "id": f"{sid}-{j}", "status": "accepted", "edit_type": et, "image_path": rel,
                         "original_words": "on grass", "edited_words": f"on snow {j}",
                         "edited_caption": f"a shape on snow {j} {s}"})
        rows.append({**base, "id": f"{sid}-rej", "status": "rejected", "reason": "directional", "edit_type": "subject",
                     "image_path": None, "original_words": "x", "edited_words": "y", "edited_caption": None})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet", index=False)
    return folder


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    return make_set(tmp_path / "set")


def tiny_classifier_file(path: Path, num_classes: int = 3, input_size: int = 8, seed: int = 0) -> Path:
    """A small_cnn exported like src.training.export_classifier."""
    import torch
    from safetensors.torch import save_file

    from src.modules.backbones import create_backbone

    torch.manual_seed(seed)
    node = {"_target_": "src.modules.backbones.create_backbone", "name": "small_cnn", "pretrained": False,
            "checkpoint_path": None, "input_size": input_size, "widths": [4, 8], "dropout": 0.0}
    model = create_backbone("small_cnn", num_classes, input_size=input_size, widths=[4, 8], dropout=0.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"model": json.dumps(node), "class_names": json.dumps([f"c{i}" for i in range(num_classes)]),
                        "num_classes": str(num_classes)})
    return path


@pytest.fixture
def make_classifier():
    return tiny_classifier_file
