"""A counterfactual set on disk: `images/*.png` plus `manifest.parquet`, one row per attempt (accepted or
rejected, with its reason) and per source reconstruction (the control set).

Crash safety: an image is written to a temp file and `os.replace`d into place before any row points at
it; rows are committed in batches as immutable part files (`parts/*.parquet`, also temp + replace), all
rows of one source image in the same part. `manifest.parquet` is a merged snapshot of every part,
rewritten (atomically) at the end of a run. A killed run leaves at worst orphan images, which the rerun
overwrites; the rerun skips every source that has rows."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

STATUS = ("accepted", "rejected")

SCHEMA = pa.schema([
    ("id", pa.string()), ("source_key", pa.string()), ("source_id", pa.string()), ("source_path", pa.string()),
    ("source_sha256", pa.string()), ("label", pa.int64()), ("label_name", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("attempt", pa.int64()),
    ("caption", pa.string()), ("edited_caption", pa.string()), ("edit_type", pa.string()),
    ("original_words", pa.string()), ("edited_words", pa.string()),
    ("image_path", pa.string()), ("image_sha256", pa.string()), ("seed", pa.int64()),
    ("captioner", pa.string()), ("captioner_model", pa.string()), ("perturber", pa.string()),
    ("perturber_model", pa.string()), ("edit_filter", pa.string()), ("edit_filter_model", pa.string()),
    ("inverter", pa.string()), ("editor", pa.string()), ("diffusion_model", pa.string()),
    ("consistency", pa.string()), ("consistency_model", pa.string()),
    ("self_replace_fraction", pa.float64()), ("directional_similarity", pa.float64()),
    ("image_similarity", pa.float64()), ("image_text_similarity", pa.float64()), ("text_margin", pa.float64()),
    ("sim_label_original", pa.float64()), ("sim_label_edited", pa.float64()), ("sim_edit_original", pa.float64()),
    ("unet_evals", pa.float64()), ("unet_samples", pa.float64()), ("seconds", pa.float64()),
    ("inversion_cached", pa.bool_()), ("config_hash", pa.string()), ("shard", pa.string()),
])
COLUMNS = SCHEMA.names
MANIFEST = "manifest.parquet"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean(v, type_: pa.DataType):
    """Rows read back through pandas carry NaN for missing strings/ints; arrow wants None there."""
    if v is None or (isinstance(v, float) and v != v and not pa.types.is_floating(type_)):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()  # numpy scalars
    return v


def _table(rows: list[dict]) -> pa.Table:
    cols = {f.name: [_clean(r.get(f.name), f.type) for r in rows] for f in SCHEMA}
    return pa.Table.from_pydict(cols, schema=SCHEMA)


def read_parts(root: str | Path) -> pd.DataFrame:
    """Every committed row (parts merged, duplicates by id resolved to the last)."""
    root = Path(root)
    parts = sorted((root / "parts").glob("*.parquet")) if (root / "parts").exists() else []
    tables = [pq.read_table(p, schema=SCHEMA) for p in parts]
    if not tables:
        return _table([]).to_pandas()
    df = pa.concat_tables(tables).to_pandas()
    return df.drop_duplicates("id", keep="last").reset_index(drop=True)


def read_manifest(root: str | Path) -> pd.DataFrame:
    """The rows of a counterfactual set: manifest.parquet, or the committed parts of an unfinished run."""
    root = Path(root)
    if (root / "parts").exists():
        return read_parts(root)
    if (root / MANIFEST).exists():
        return pd.read_parquet(root / MANIFEST)
    raise FileNotFoundError(f"{root} holds no {MANIFEST} (and no parts/): not a counterfactual set")


class ManifestWriter:
    """Writes images and rows of one run (one shard) into `root`."""

    def __init__(self, root: str | Path, shard: str = "0of1", flush_every: int = 8) -> None:
        self.root = Path(root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "parts").mkdir(parents=True, exist_ok=True)
        self.shard = shard
        self.flush_every = max(1, flush_every)
        self._rows: list[dict] = []
        self._sources = 0
        self._n = len(list((self.root / "parts").glob(f"part-{shard}-*.parquet")))

    def existing(self) -> pd.DataFrame:
        return read_parts(self.root)

    def write_image(self, name: str, image: Image.Image) -> tuple[str, str]:
        """(relative path, sha256) of the PNG written atomically as images/<name>.png."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
        rel = f"images/{name}.png"
        _atomic_write_bytes(self.root / rel, data)
        return rel, sha256_bytes(data)

    def add_source_rows(self, rows: list[dict]) -> None:
        """All rows of one source image; committed together."""
        for r in rows:
            r.setdefault("shard", self.shard)
        self._rows += rows
        self._sources += 1
        if self._sources >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        buf = io.BytesIO()
        pq.write_table(_table(self._rows), buf)
        _atomic_write_bytes(self.root / "parts" / f"part-{self.shard}-{self._n:06d}.parquet", buf.getvalue())
        self._n += 1
        self._rows, self._sources = [], 0

    def finalize(self) -> pd.DataFrame:
        """Commit pending rows and rewrite manifest.parquet as the union of all parts (every shard)."""
        self.flush()
        df = read_parts(self.root)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False), buf)
        _atomic_write_bytes(self.root / MANIFEST, buf.getvalue())
        return df


def merge_sets(roots: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Merge counterfactual sets written to separate folders (e.g. shards on different machines)."""
    out = Path(out)
    writer = ManifestWriter(out, shard="merged")
    for root in roots:
        root = Path(root)
        df = read_manifest(root)
        for rel in df["image_path"].dropna():
            if rel and not (out / rel).exists():
                tmp = out / f"{rel}.tmp"
                shutil.copyfile(root / rel, tmp)
                os.replace(tmp, out / rel)
        writer._rows += df.to_dict("records")
        writer.flush()
    return writer.finalize()
