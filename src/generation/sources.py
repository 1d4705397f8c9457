"""Where source images come from: Counterfactory World splits, or a folder of class subfolders.

A source yields `SourceItem`s; `load()` returns the RGB image with its ground-truth caption and world
record (when known) attached as `image.info["caption"]` / `image.info["world"]`, and the sha256 of its
bytes. Loading errors are raised from `load()` so the pipeline can record them as rejected rows."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image


@dataclass
class SourceItem:
    id: str
    path: str
    label: int
    label_name: str
    load: Callable[[], tuple[Image.Image, str]]  # (image, sha256)
    meta: dict = field(default_factory=dict)


class WorldSource:
    """One split of Counterfactory World (default: the iid test split)."""

    name = "world"

    def __init__(self, split: str = "iid", image_size: int = 32, n_train: int = 12000, n_val: int = 2000,
                 n_test: int = 2000, rho_background: float = 0.9, rho_object: float = 0.6, world_seed: int = 0,
                 cache_dir: str | None = None) -> None:
        from src.world.dataset import WorldSpec, build_world

        self.spec = WorldSpec(image_size=image_size, n_train=n_train, n_val=n_val, n_test=n_test,
                              rho_background=rho_background, rho_object=rho_object, seed=world_seed)
        self.split_name = split
        self.split = build_world(self.spec, cache_dir=cache_dir, splits=(split,))[split]

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[SourceItem]:
        from src.world.grammar import CLASSES

        records = self.split.records.to_dict("records")
        for i, rec in enumerate(records):
            yield SourceItem(id=str(rec["id"]), path=f"world:{self.spec.key()}/{self.split_name}/{i}",
                             label=int(rec["label"]), label_name=CLASSES[int(rec["label"])],
                             load=self._loader(i, rec), meta={"world": {**rec, "image_size": self.spec.image_size}})

    def _loader(self, i: int, rec: dict):
        def load():
            arr = np.ascontiguousarray(self.split.images[i])
            img = Image.fromarray(arr)
            img.info["caption"] = rec.get("caption", "")
            img.info["world"] = {**rec, "image_size": self.spec.image_size}
            sha = hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()
            return img, sha
        return load


class ImageFolderSource:
    """root/<class name>/<image>; labels are the sorted class folder indices. Optional captions.csv
    (columns path, caption) supplies ground-truth captions."""

    name = "image_folder"

    def __init__(self, root: str, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"generation.source.root={root!r} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.files = [(f, c) for c in range(len(self.classes))
                      for f in sorted((self.root / self.classes[c]).rglob("*")) if f.suffix.lower() in extensions]
        self.captions = {}
        if (self.root / "captions.csv").exists():
            import pandas as pd

            df = pd.read_csv(self.root / "captions.csv")
            self.captions = dict(zip(df["path"].astype(str), df["caption"].fillna("").astype(str)))

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        for f, c in self.files:
            rel = str(f.relative_to(self.root))
            yield SourceItem(id=rel.rsplit(".", 1)[0].replace("/", "__").replace(" ", "_"), path=str(f), label=c,
                             label_name=self.classes[c], load=self._loader(f, rel))

    def _loader(self, f: Path, rel: str):
        def load():
            from src.datamodules.image_io import to_rgb

            data = f.read_bytes()
            with Image.open(f) as im:
                im.load()
                img = to_rgb(im, str(f))
            img.info["caption"] = self.captions.get(rel, "")
            return img, hashlib.sha256(data).hexdigest()
        return load
