"""Export Counterfactory World to disk, so any tool can use it: class folders of PNGs plus a manifest.

    python -m src.world.export --out data/world_export [--splits train val iid ood counterfactual]
                               [--image-size 32 --n-train 12000 --n-val 2000 --n-test 2000 ...]

Layout (readable by `ImageFolderDataModule(root=OUT)` and torchvision's `ImageFolder(OUT/<split>)`):

    OUT/classes.txt                      class names in label order (one a line)
    OUT/world_spec.json                  the WorldSpec and its cache key
    OUT/<split>/<class>/<id>.png         lossless 8-bit RGB
    OUT/manifest.parquet, manifest.csv   one row per image: path (relative to OUT), split, class_name,
                                         sha256 of the PNG, and every world record column (id, label,
                                         factors, caption, seed; counterfactual rows add source_id,
                                         edit_type, factor, original/edited value and words)

The export is written to `OUT.partial` and renamed at the end, so OUT is complete or absent.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from src.world.dataset import SPLITS, WorldSpec, build_world
from src.world.grammar import CLASSES

log = logging.getLogger(__name__)

MANIFEST_COLUMNS_FIRST = ("path", "split", "id", "label", "class_name", "caption", "sha256")


def export_world(
    out: str | Path,
    spec: WorldSpec = WorldSpec(),
    splits: Sequence[str] = SPLITS,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write the world's `splits` under `out` (see the module docstring); return the manifest."""
    out = Path(out)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown world splits {bad}; expected some of {SPLITS}")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    world = build_world(spec, cache_dir, splits=tuple(dict.fromkeys(splits)))
    rows = []
    for name in dict.fromkeys(splits):
        split = world[name]
        for cls in CLASSES:
            (tmp / name / cls).mkdir(parents=True, exist_ok=True)
        for image, rec in tqdm(zip(split.images, split.records.to_dict("records")), total=len(split),
                               desc=f"exporting {name}", leave=False):
            cls = CLASSES[int(rec["label"])]
            rel = f"{name}/{cls}/{rec['id']}.png"
            buf = io.BytesIO()
            Image.fromarray(image, "RGB").save(buf, format="PNG")
            data = buf.getvalue()
            (tmp / rel).write_bytes(data)
            rows.append({"path": rel, "split": name, "class_name": cls, "sha256": hashlib.sha256(data).hexdigest(), **rec})
    manifest = pd.DataFrame(rows)
    first = [c for c in MANIFEST_COLUMNS_FIRST if c in manifest.columns]
    manifest = manifest[first + [c for c in manifest.columns if c not in first]]
    manifest.to_parquet(tmp / "manifest.parquet", index=False)
    manifest.to_csv(tmp / "manifest.csv", index=False)
    (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp / "world_spec.json").write_text(json.dumps({**asdict(spec), "key": spec.key(), "splits": list(splits)}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported %d images of splits %s to %s", len(manifest), list(splits), out)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    d = WorldSpec()
    p = argparse.ArgumentParser(prog="python -m src.world.export", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--rho-background", type=float, default=d.rho_background)
    p.add_argument("--rho-object", type=float, default=d.rho_object)
    p.add_argument("--seed", type=int, default=d.seed, help="world seed")
    p.add_argument("--cache-dir", default=None, help="reuse/render world splits through this cache")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    spec = WorldSpec(a.image_size, a.n_train, a.n_val, a.n_test, a.rho_background, a.rho_object, a.seed)
    manifest = export_world(a.out, spec, a.splits, a.cache_dir, a.overwrite)
    print(f"wrote {len(manifest)} images ({', '.join(f'{k}: {v}' for k, v in manifest['split'].value_counts(sort=False).items())}) to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
