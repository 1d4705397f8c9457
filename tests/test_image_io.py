"""Robust image loading: every mode comes out as correct 8-bit RGB, every bad file as an error naming it."""
from __future__ import annotations

import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from src.datamodules.image_io import (
    BadImageError,
    ImageFileDataset,
    check_image,
    load_rgb,
    skip_bad_collate,
    validate_samples,
)


def _save(img: Image.Image, path, **kw) -> str:
    img.save(path, **kw)
    return str(path)


def _rgb(path) -> np.ndarray:
    return np.asarray(load_rgb(path))


def test_grayscale_and_bilevel_become_equal_rgb_channels(tmp_path):
    gray = np.array([[0, 17], [128, 255]], np.uint8)
    out = _rgb(_save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    bw = _rgb(_save(Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1"), tmp_path / "b.png"))
    np.testing.assert_array_equal(bw[..., 0], [[0, 255], [255, 0]])


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257], [32896, 65535]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    path = _save(img, tmp_path / "g16.png")
    # PIL's own conversion clips everything above 255 to white: the bug this loader avoids.
    assert np.asarray(Image.open(path).convert("RGB"))[1, 0, 0] == 255
    out = _rgb(path)
    np.testing.assert_array_equal(out[..., 0], [[0, 1], [128, 255]])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_32bit_integer_and_float_images(tmp_path):
    ok = _rgb(_save(Image.fromarray(np.array([[0, 65535]], np.int32), "I"), tmp_path / "i.tif"))
    np.testing.assert_array_equal(ok[0, :, 0], [0, 255])
    too_wide = _save(Image.fromarray(np.array([[0, 70000]], np.int32), "I"), tmp_path / "wide.tif")
    with pytest.raises(BadImageError, match="wide.tif.*only 8- and 16-bit"):
        load_rgb(too_wide)
    unit = _rgb(_save(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F"), tmp_path / "f.tif"))
    np.testing.assert_array_equal(unit[0, :, 0], [0, 128, 255])
    neg = _save(Image.fromarray(np.array([[-1.0, 0.5]], np.float32), "F"), tmp_path / "neg.tif")
    with pytest.raises(BadImageError, match="neg.tif"):
        load_rgb(neg)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    out = _rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])  # transparent: background, not the hidden red
    assert 120 <= out[0, 2, 0] <= 135  # half black over white
    la = _rgb(_save(Image.fromarray(np.array([[[0, 0]]], np.uint8), "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(la[0, 0], [255, 255, 255])


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = _rgb(_save(pal, tmp_path / "p.png"))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [200, 100, 50]])
    out_t = _rgb(_save(pal, tmp_path / "pt.png", transparency=0))
    np.testing.assert_array_equal(out_t[0], [[255, 255, 255], [200, 100, 50]])


def test_cmyk_converts_to_rgb(tmp_path):
    out = _rgb(_save(Image.new("CMYK", (3, 2), (255, 0, 0, 0)), tmp_path / "c.tif"))
    np.testing.assert_array_equal(out[0, 0], [0, 255, 255])


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(Image.new("RGB", (40, 20), (0, 0, 255)), tmp_path / "o.jpg", exif=exif)
    assert load_rgb(path).size == (20, 40)


@pytest.mark.parametrize("content", [b"", b"this is not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10])
def test_corrupt_and_empty_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImageError, match="broken.jpg"):
        check_image(path)
    with pytest.raises(BadImageError, match="broken.jpg"):
        load_rgb(path)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file_passes_header_check_but_fails_full_decode(tmp_path, fmt):
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{fmt}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / f"cut.{fmt}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    check_image(cut)  # the header is intact
    with pytest.raises(BadImageError, match=f"cut.{fmt}.*(truncated|corrupt)"):
        check_image(cut, full=True)
    ds = ImageFileDataset([(str(cut), 0)])
    with pytest.raises(BadImageError, match=f"cut.{fmt}"):
        ds[0]


def _png_header_only(path, width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return str(path)


def test_size_limits(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 30000, 30000)  # 900 MP claimed in a 45-byte file
    with pytest.raises(BadImageError, match="bomb.png.*decompression bomb"):
        check_image(bomb)
    big = _save(Image.new("RGB", (20, 20)), tmp_path / "big.png")
    with pytest.raises(BadImageError, match="big.png.*400 pixels exceeds the limit of 100"):
        load_rgb(big, max_pixels=100)
    tiny = _save(Image.new("RGB", (1, 5)), tmp_path / "tiny.png")
    with pytest.raises(BadImageError, match="tiny.png.*smaller than data.min_image_size=2"):
        check_image(tiny, min_size=2)
    assert load_rgb(tiny).size == (1, 5)  # the default accepts any non-empty image


def test_validate_samples_error_and_skip(tmp_path, caplog):
    good = [(_save(Image.new("RGB", (4, 4), (i, 0, 0)), tmp_path / f"ok{i}.png"), i) for i in range(3)]
    bad_a, bad_b = tmp_path / "bad_a.png", tmp_path / "bad_b.png"
    bad_a.write_bytes(b"junk")
    bad_b.write_bytes(b"")
    samples = [good[0], (str(bad_a), 7), good[1], (str(bad_b), 8), good[2]]
    with pytest.raises(BadImageError, match="bad_a.png.*on_bad_image=skip"):
        validate_samples(samples, "header", "error")
    with caplog.at_level(logging.WARNING, logger="src.datamodules.image_io"):
        kept, skipped = validate_samples(samples, "full", "skip", desc="checking train images")
    assert kept == good
    assert [p for p, _ in skipped] == [str(bad_a), str(bad_b)]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("bad_a.png" in m for m in lines) == 1 and sum("bad_b.png" in m for m in lines) == 1
    assert any("skipped 2 of 5 images" in m for m in lines)
    assert validate_samples(samples, "none", "error") == (samples, [])
    with pytest.raises(ValueError, match="data.validate"):
        validate_samples(samples, "quick", "error")


def test_dataset_skip_mode_and_collate(tmp_path, caplog):
    ok = _save(Image.new("RGB", (4, 4), (9, 8, 7)), tmp_path / "ok.png")
    bad = tmp_path / "gone.png"
    bad.write_bytes(b"x")
    ds = ImageFileDataset([(ok, 3), (str(bad), 1)], on_bad_image="skip")
    with caplog.at_level(logging.WARNING):
        items = [ds[0], ds[1]]
    assert items[1] is None and "gone.png" in caplog.text
    batch = skip_bad_collate(items)
    assert batch["image"].shape == (1, 3, 4, 4) and batch["image"].dtype == torch.uint8
    assert batch["label"].tolist() == [3] and batch["index"].tolist() == [0]
    assert batch["image"][0, :, 0, 0].tolist() == [9, 8, 7]
    with pytest.raises(BadImageError, match="all 1 images"):
        skip_bad_collate([None])
