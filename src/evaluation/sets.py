"""Image sets for stress tests, paired by source image.

A `PairedSet` is what every counterfactual set reduces to: the source images T, the edits T′ (each
row names its `source_id`), and optionally the reconstructions of the sources (the control set:
inverted and regenerated with the *unchanged* caption). Two readers build one:

- `world_paired_set`: the world's ground-truth counterfactual split paired with the iid split (the
  renderer is exact, so there is no reconstruction);
- `manifest_paired_set`: a generated set folder (PNGs + `manifest.parquet`), with bad-row
  validation: missing images, labels out of range and paths escaping the folder raise an error
  naming the rows, or are skipped and counted with `on_bad_row='skip'`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ON_BAD_ROW = ("error", "skip")
RECONSTRUCTION = "reconstruction"

# Column names of the generation manifest, with the aliases we accept (first present wins).
MANIFEST_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("id",),
    "path": ("image_path", "path", "image", "file"),
    "source_id": ("source_id",),
    "source_path": ("source_path", "source_image", "source"),
    "source_sha256": ("source_sha256",),
    "sha256": ("image_sha256", "sha256"),
    "label": ("label", "label_index", "y"),
    "edit_type": ("edit_type",),
    "caption": ("caption", "source_caption", "original_caption"),
    "label_name": ("label_name",),
    "edited_caption": ("edited_caption", "edit_caption", "caption_edited"),
    "original_words": ("original_words", "original_phrase"),
    "edited_words": ("edited_words", "edited_phrase"),
    "accepted": ("status", "accepted", "kept"),  # status == "accepted" (generation manifest) or a bool
    "reason": ("reason", "rejection_reason"),
}


class BadRowsError(ValueError):
    """Rows of a set that cannot be evaluated; the message names them."""


def sha256_of_array(image: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def sha256_of_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class ImageSet:
    """Images (in memory, or files read on demand) with one record per image.

    `records` has at least `id`, `label`, `sha256`; edits also `source_id`, `edit_type`,
    `original_words`, `edited_words`.
    """

    name: str
    records: pd.DataFrame
    array: np.ndarray | None = None  # N x H x W x 3 uint8
    paths: list[Path] | None = None

    def __post_init__(self) -> None:
        self.records = self.records.reset_index(drop=True)
        if (self.array is None) == (self.paths is None):
            raise ValueError(f"set {self.name!r}: give exactly one of `array` or `paths`")
        if "sha256" not in self.records:
            if self.array is not None:
                shas = [sha256_of_array(im) for im in self.array]
            else:
                shas = [sha256_of_array(load_image(p)) if isinstance(p, WorldImageRef) else sha256_of_file(p)
                        for p in self.paths]  # type: ignore[union-attr]
            self.records = self.records.assign(sha256=shas)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return self.records["label"].to_numpy(dtype=np.int64)

    @property
    def ids(self) -> np.ndarray:
        return self.records["id"].astype(str).to_numpy()

    def load(self, indices) -> np.ndarray:
        """N x H x W x 3 uint8 for the given rows."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.array is not None:
            return self.array[indices]
        out = [load_image(self.paths[i]) for i in indices]  # type: ignore[index]
        return np.stack(out) if out else np.zeros((0, 1, 1, 3), np.uint8)


@dataclass(frozen=True)
class WorldImageRef:
    """Image `index` of a rendered world split in the cache (`world:<spec key>/<split>/<index>`)."""

    npz: Path
    index: int


_WORLD_ARRAYS: dict[Path, np.ndarray] = {}


def load_image(ref) -> np.ndarray:
    if isinstance(ref, WorldImageRef):
        if ref.npz not in _WORLD_ARRAYS:
            with np.load(ref.npz) as z:
                _WORLD_ARRAYS[ref.npz] = z["images"]
        return _WORLD_ARRAYS[ref.npz][ref.index]
    from PIL import Image

    with Image.open(ref) as im:
        return np.asarray(im.convert("RGB"))


@dataclass
class PairedSet:
    """Edits paired with their sources (and the sources' reconstructions, when there are any)."""

    name: str
    sources: ImageSet
    edits: ImageSet
    reconstructions: ImageSet | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pos = {sid: i for i, sid in enumerate(self.sources.ids)}
        missing = sorted(set(self.edits.records["source_id"].astype(str)) - set(pos))
        if missing:
            raise BadRowsError(f"set {self.name!r}: edits name unknown source ids {missing[:5]}")
        self.source_index = np.array([pos[s] for s in self.edits.records["source_id"].astype(str)], dtype=np.int64)
        self.reconstruction_index: np.ndarray | None = None
        if self.reconstructions is not None:
            rpos = {sid: i for i, sid in enumerate(self.reconstructions.records["source_id"].astype(str))}
            idx = np.array([rpos.get(s, -1) for s in self.edits.records["source_id"].astype(str)], dtype=np.int64)
            self.reconstruction_index = idx  # -1 where a source has no reconstruction

    @property
    def edit_types(self) -> list[str]:
        return sorted(self.edits.records["edit_type"].astype(str).unique())


# --------------------------------------------------------------------------------------- the world
def world_paired_set(datamodule, name: str = "oracle") -> PairedSet:
    """The world's exact single-factor re-renders (`counterfactual` split) paired with `iid`."""
    datamodule.setup()
    for split in ("iid", "counterfactual"):
        datamodule.split_dataloader(split)  # renders/loads splits outside data.test_splits
    sources = world_split_set(datamodule, "iid")
    edits = world_split_set(datamodule, "counterfactual", name=name)
    return PairedSet(name, sources, edits)


def world_split_set(datamodule, split: str, name: str | None = None) -> ImageSet:
    datamodule.split_dataloader(split)
    images = datamodule.splits[split].images.permute(0, 2, 3, 1).numpy()  # back to N H W C, no copy
    return ImageSet(name or split, datamodule.records[split].copy(), array=images)


# ------------------------------------------------------------------------------------ manifests
def _column(df: pd.DataFrame, key: str, manifest: Path, required: bool = True) -> str | None:
    for alias in MANIFEST_COLUMNS[key]:
        if alias in df.columns:
            return alias
    if required:
        raise BadRowsError(f"{manifest}: no column for {key!r} (looked for {MANIFEST_COLUMNS[key]}); "
                           f"columns are {list(df.columns)}")
    return None


def _resolve_inside(folder: Path, rel) -> Path | None:
    """The file `rel` names inside `folder`, or None when it escapes the folder."""
    if rel is None or (isinstance(rel, float) and np.isnan(rel)) or str(rel) == "":
        return None
    p = Path(str(rel))
    full = (p if p.is_absolute() else folder / p).resolve()
    try:
        full.relative_to(folder.resolve())
    except ValueError:
        return None
    return full


def _read_manifest(folder: Path) -> pd.DataFrame:
    try:  # the generation engine's reader also merges the parts of an unfinished run
        from src.generation.manifest import read_manifest
    except ImportError:  # pragma: no cover - evaluation without the generation package
        read_manifest = None
    if read_manifest is not None:
        return read_manifest(folder)
    if not (folder / "manifest.parquet").is_file():
        raise FileNotFoundError(f"counterfactual set {folder} has no manifest.parquet")
    return pd.read_parquet(folder / "manifest.parquet")


def _resolve_source(ref, roots: list[Path], world_cache: Path | None) -> tuple[object | None, str | None]:
    """(image reference, None) or (None, why it cannot be read)."""
    if ref is None or (isinstance(ref, float) and np.isnan(ref)) or str(ref) == "":
        return None, "has no source path"
    ref = str(ref)
    if ref.startswith("world:"):
        try:
            key, split, index = ref[len("world:"):].split("/")
            npz = (world_cache / f"world-{key}" / f"{split}.npz") if world_cache else None
        except ValueError:
            return None, f"source {ref!r} is not world:<key>/<split>/<index>"
        if npz is None or not npz.is_file():
            return None, f"source {ref!r}: world split not rendered in {world_cache} (evaluate with the same data= settings)"
        return WorldImageRef(npz, int(index)), None
    for root in roots:
        p = _resolve_inside(root, ref)
        if p is not None:
            return (p, None) if p.is_file() else (None, f"source image {p} is missing")
    return None, (f"source path {ref!r} escapes {' and '.join(map(str, roots))} "
                  f"(set evaluation.source_root to the folder holding the sources)")


def manifest_paired_set(folder: str | Path, num_classes: int, on_bad_row: str = "error", name: str | None = None,
                        source_root: str | Path | None = None, world_cache: str | Path | None = None) -> PairedSet:
    """Read a generated set: accepted edit rows, their sources, and reconstruction rows.

    Image paths must resolve inside the set folder. Sources are world references
    (`world:<key>/<split>/<i>`, read from the rendered world in `world_cache`) or files inside the set
    folder or `source_root`. Nothing outside those folders is ever read.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"evaluation.on_bad_row={on_bad_row!r}; expected one of {ON_BAD_ROW}")
    folder = Path(folder)
    manifest = folder / "manifest.parquet"
    df = _read_manifest(folder)
    c = {k: _column(df, k, manifest, required=k in ("id", "path", "source_id", "source_path", "label", "edit_type"))
         for k in MANIFEST_COLUMNS}
    if c["accepted"] is not None:
        flag = df[c["accepted"]]
        df = df[flag.astype(bool) if pd.api.types.is_bool_dtype(flag) else (flag.astype(str) == "accepted")]
    df = df.reset_index().rename(columns={"index": "manifest_row"})
    roots = [folder] + ([Path(source_root)] if source_root else [])
    wcache = Path(world_cache) if world_cache else None

    problems: list[tuple[int, str, str, str]] = []  # (manifest row, id, kind, reason)
    image_paths: list[Path | None] = []
    source_refs: list[object | None] = []
    resolved_sources: dict[str, tuple[object | None, str | None]] = {}
    for row in df.to_dict("records"):
        rid, mrow = str(row[c["id"]]), int(row["manifest_row"])
        label = row[c["label"]]
        if pd.isna(label) or not 0 <= int(label) < num_classes:
            problems.append((mrow, rid, "label", f"label {label} out of range [0, {num_classes})"))
        p = _resolve_inside(folder, row[c["path"]])
        if p is None:
            problems.append((mrow, rid, "path", f"image path {row[c['path']]!r} is empty or escapes the set folder {folder}"))
        elif not p.is_file():
            problems.append((mrow, rid, "missing", f"image {p} is missing"))
        image_paths.append(p)
        sref = str(row[c["source_path"]])
        if sref not in resolved_sources:
            resolved_sources[sref] = _resolve_source(row[c["source_path"]], roots, wcache)
        ref, why = resolved_sources[sref]
        if why:
            problems.append((mrow, rid, "source", why))
        source_refs.append(ref)

    bad = sorted({r for r, _, _, _ in problems})
    skipped: dict[str, int] = {}
    if problems:
        listing = "; ".join(f"row {r} (id={i}): {why}" for r, i, _, why in problems[:20])
        more = f" ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        if on_bad_row == "error":
            raise BadRowsError(f"{manifest}: {len(bad)} bad rows: {listing}{more}. "
                               f"Fix them, or set evaluation.on_bad_row=skip to skip and count them.")
        for _, _, kind, _ in problems:
            skipped[kind] = skipped.get(kind, 0) + 1
        log.warning("%s: skipping %d bad rows: %s%s", manifest, len(bad), listing, more)
    keep = ~df["manifest_row"].isin(bad).to_numpy()

    def frame(mask: np.ndarray) -> pd.DataFrame:
        sub = df[mask]
        out = pd.DataFrame({
            "id": sub[c["id"]].astype(str).to_numpy(),
            "source_id": sub[c["source_id"]].astype(str).to_numpy(),
            "label": sub[c["label"]].astype(np.int64).to_numpy(),
            "edit_type": sub[c["edit_type"]].astype(str).to_numpy(),
            "manifest_row": sub["manifest_row"].to_numpy(),
        })
        for key in ("caption", "edited_caption", "original_words", "edited_words", "sha256"):
            if c[key] is not None:
                out[key] = sub[c[key]].to_numpy()
        if "sha256" in out and out["sha256"].isna().any():
            out = out.drop(columns="sha256")  # recomputed from the files
        return out

    set_name = name or folder.name
    is_recon = (df[c["edit_type"]].astype(str) == RECONSTRUCTION).to_numpy()
    edit_mask, recon_mask = keep & ~is_recon, keep & is_recon
    edits = ImageSet(set_name, frame(edit_mask), paths=[p for p, m in zip(image_paths, edit_mask) if m])
    recon_df = frame(recon_mask)
    reconstructions = (ImageSet(f"{set_name}/reconstruction", recon_df,
                                paths=[p for p, m in zip(image_paths, recon_mask) if m]) if len(recon_df) else None)

    # Sources: one row per distinct source id among kept rows.
    src_rows = df[keep].drop_duplicates(subset=[c["source_id"]])
    src_df = pd.DataFrame({"id": src_rows[c["source_id"]].astype(str).to_numpy(),
                           "label": src_rows[c["label"]].astype(np.int64).to_numpy()})
    if c["caption"] is not None:
        src_df["caption"] = src_rows[c["caption"]].to_numpy()
    if c["source_sha256"] is not None and src_rows[c["source_sha256"]].notna().all():
        src_df["sha256"] = src_rows[c["source_sha256"]].to_numpy()
    sources = ImageSet(f"{set_name}/sources", src_df, paths=[source_refs[i] for i in src_rows.index])
    return PairedSet(set_name, sources, edits, reconstructions, skipped={**skipped, "rows": len(bad)} if bad else {})
