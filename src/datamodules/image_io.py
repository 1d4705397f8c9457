"""Robust image loading for file-backed datasets: every image comes out as 8-bit RGB or as an error
that names the file.

What is handled (never silently wrong):
- modes: grayscale (`1`, `L`), palette (`P`, with or without transparency), `RGBA`/`LA`/`PA` (alpha is
  composited on a white background, not dropped), `CMYK`, `YCbCr`, 16-bit grayscale (`I;16*`, `I`:
  scaled by 255/65535 -- PIL's own `convert` clips every value above 255 to white), 32-bit float
  (`F`, accepted in [0, 1] or [0, 255], anything else is an error); EXIF orientation is applied.
- corrupt, empty and truncated files, unknown formats: `BadImageError` naming the file and the cause.
- size limits: images larger than `max_pixels` (decompression bombs) and smaller than `min_size`
  on either side are refused.

`validate_samples` checks a whole file list before training (a cheap header check or a full decode),
so errors surface at setup, not mid-epoch; `ImageFileDataset` still names the file if a decode fails
later. With `on_bad_image="skip"` bad files are dropped with one warning line each plus a count.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
ON_BAD_IMAGE = ("error", "skip")
VALIDATE_MODES = ("none", "header", "full")
# PIL's own default limit (about 89.5 megapixels); PIL itself refuses images over twice this.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_MIN_SIZE = 1
_BACKGROUND = (255, 255, 255)


class BadImageError(ValueError):
    """An image file that cannot be used; the message starts with the file's path."""


def is_image_file(path: str | os.PathLike) -> bool:
    name = os.fspath(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def check_choice(key: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key}={value!r}; expected one of {tuple(choices)}")
    return value


def _check_size(img: Image.Image, path: str, max_pixels: int, min_size: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise BadImageError(f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                            "(possible decompression bomb; raise data.max_image_pixels if it is genuine)")
    if min(w, h) < min_size:
        raise BadImageError(f"{path}: {w}x{h} is smaller than data.min_image_size={min_size} on a side")


def _open(path: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError as e:
        raise BadImageError(f"{path}: file not found") from e
    except Image.DecompressionBombError as e:
        raise BadImageError(f"{path}: refused by PIL as a decompression bomb ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _scale_wide_gray(img: Image.Image, path: str) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit L, scaled (not clipped)."""
    a = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.isnan(a).any() or lo < 0:
            raise BadImageError(f"{path}: float image with NaN or negative values; cannot map it to 8 bits")
        if hi <= 1.0:
            a = a * 255.0
        elif hi > 255.0:
            raise BadImageError(f"{path}: float image with values up to {hi}; expected [0, 1] or [0, 255]")
        return Image.fromarray(np.round(a).astype(np.uint8), "L")
    a = a.astype(np.int64)
    if a.min() < 0 or a.max() > 65535:
        raise BadImageError(f"{path}: {img.mode} image with values in [{a.min()}, {a.max()}]; "
                            "only 8- and 16-bit ranges are supported")
    # 65535 -> 255 exactly; round half up like PIL's own 8-bit conversions.
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def to_rgb(img: Image.Image, path: str = "<image>") -> Image.Image:
    """Any PIL image as 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_wide_gray(img, path).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise BadImageError(f"{path}: cannot convert image mode {mode!r} to RGB ({e})") from e


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int = DEFAULT_MIN_SIZE) -> Image.Image:
    """Fully decode `path` into an 8-bit RGB PIL image, or raise `BadImageError` naming it."""
    path = os.fspath(path)
    img = _open(path)
    try:
        _check_size(img, path, max_pixels, min_size)
        try:
            img.load()
            img = ImageOps.exif_transpose(img) or img
        except Image.DecompressionBombError as e:
            raise BadImageError(f"{path}: refused by PIL as a decompression bomb ({e})") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            # A truncated file reads as "image file is truncated"; never accept a partial decode.
            raise BadImageError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from e
        rgb = to_rgb(img, path)
        if rgb is img:
            return img
        img.close()
        return rgb
    except BadImageError:
        img.close()
        raise


def check_image(path: str | os.PathLike, full: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_size: int = DEFAULT_MIN_SIZE) -> None:
    """Header check (format, size, mode) or, with `full`, a complete decode. Raises `BadImageError`."""
    path = os.fspath(path)
    if full:
        load_rgb(path, max_pixels, min_size).close()
        return
    with _open(path) as img:
        _check_size(img, path, max_pixels, min_size)
        if img.mode not in Image.MODES and not img.mode.startswith("I;16"):
            raise BadImageError(f"{path}: unsupported image mode {img.mode!r}")


def validate_samples(
    samples: Sequence[tuple[str, int]],
    mode: str = "header",
    on_bad_image: str = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = DEFAULT_MIN_SIZE,
    desc: str = "checking images",
    workers: int | None = None,
) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Check every file; return (good samples, [(path, reason)] of bad ones).

    `on_bad_image="error"` raises `BadImageError` for the first bad file (in list order);
    `"skip"` logs one warning line per bad file and a summary count.
    """
    check_choice("data.validate", mode, VALIDATE_MODES)
    check_choice("data.on_bad_image", on_bad_image, ON_BAD_IMAGE)
    if mode == "none" or not samples:
        return list(samples), []

    def reason(sample: tuple[str, int]) -> str | None:
        try:
            check_image(sample[0], full=mode == "full", max_pixels=max_pixels, min_size=min_size)
        except BadImageError as e:
            return str(e)
        return None

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes release the GIL
        reasons = list(tqdm(pool.map(reason, samples), total=len(samples), desc=desc, leave=False,
                            disable=len(samples) < 2000))
    good, bad = [], []
    for sample, why in zip(samples, reasons):
        if why is None:
            good.append(sample)
        elif on_bad_image == "error":
            raise BadImageError(f"{why} (set data.on_bad_image=skip to drop bad files)")
        else:
            bad.append((sample[0], why))
            log.warning("skipping bad image: %s", why)
    if bad:
        log.warning("%s: skipped %d of %d images (data.on_bad_image=skip)", desc, len(bad), len(samples))
    return good, bad


class ImageFileDataset(Dataset):
    """Yields `{"image": tensor, "label": int, "index": int}` from (path, label) samples.

    A file that fails to decode raises `BadImageError` naming it (`on_bad_image="error"`), or yields
    None with a warning (`"skip"`); `skip_bad_collate` drops those from the batch.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None,
                 on_bad_image: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_size: int = DEFAULT_MIN_SIZE) -> None:
        self.samples = [(os.fspath(p), int(y)) for p, y in samples]
        self.transform = transform
        self.on_bad_image = check_choice("data.on_bad_image", on_bad_image, ON_BAD_IMAGE)
        self.max_pixels = max_pixels
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([y for _, y in self.samples], dtype=torch.long)

    def __getitem__(self, i: int) -> dict | None:
        path, label = self.samples[i]
        try:
            img = load_rgb(path, self.max_pixels, self.min_size)
        except BadImageError as e:
            if self.on_bad_image == "error":
                raise
            log.warning("skipping bad image: %s", e)
            return None
        x = self.transform(img) if self.transform is not None else torch.from_numpy(np.array(img)).permute(2, 0, 1)
        return {"image": x, "label": torch.tensor(label, dtype=torch.long), "index": i}


def skip_bad_collate(batch: list[dict | None]) -> dict:
    """`default_collate` without the samples that failed to load (see `ImageFileDataset`)."""
    kept = [b for b in batch if b is not None]
    if not kept:
        raise BadImageError(f"all {len(batch)} images of a batch failed to load (see the warnings above)")
    return default_collate(kept)
