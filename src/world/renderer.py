"""Deterministic procedural renderer of Counterfactory World scenes.

`render(factors, seed)` draws a scene; `intervene(scene, factor, value)` redraws it with exactly one
factor changed and everything else (layout, textures, noise) identical: the ground-truth
counterfactual. Every random number is drawn from per-purpose streams in a fixed order that does not
depend on factor values, which is what makes interventions exact.

Pixel ownership: the shape, secondary object and companion own their own pixels; background and
weather own the background pixels; the domain owns all pixels. Non-photo domains use 3x3
neighbourhood filters, so ownership masks are dilated by one pixel there (`owned_mask`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from src.world.grammar import Factors

_SUPERSAMPLE = 4

_RGB = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.60, 0.20, 0.75),
    "orange": (0.98, 0.55, 0.05),
}


@dataclass(frozen=True)
class Scene:
    factors: Factors
    seed: int


# ----------------------------------------------------------------------------- shapes and icons
def _polygon(n: int, r: float, cx: float, cy: float, rot: float = -math.pi / 2, inner: float | None = None):
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        rad = (inner if inner and i % 2 else 1.0) * r
        a = rot + 2 * math.pi * i / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    w = r * 0.38
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=255)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r * 1.1, cx, cy + r * 0.15), fill=255)
    elif shape == "star":
        draw.polygon(_polygon(5, r * 1.1, cx, cy, inner=0.45), fill=255)
    elif shape == "cross":
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
    elif shape == "heart":
        q = r * 0.5
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy - r * 0.8 + 2 * q + r * 0.1], fill=255)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy - r * 0.8 + 2 * q + r * 0.1], fill=255)
        draw.polygon([(cx - r * 0.97, cy - r * 0.15), (cx + r * 0.97, cy - r * 0.15), (cx, cy + r)], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.5
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif shape == "arrow":
        draw.rectangle([cx - r, cy - w * 0.8, cx + r * 0.1, cy + w * 0.8], fill=255)
        draw.polygon([(cx + r * 0.1, cy - r * 0.8), (cx + r, cy), (cx + r * 0.1, cy + r * 0.8)], fill=255)
    else:  # pragma: no cover - guarded by Factors validation
        raise ValueError(shape)


# Icons are lists of (colour, primitive, coords in units of the icon radius around its centre).
_ICONS = {
    "tree": [((0.45, 0.28, 0.10), "rect", (-0.15, 0.1, 0.15, 1.0)), ((0.05, 0.45, 0.10), "ellipse", (-0.8, -1.0, 0.8, 0.3))],
    "rock": [((0.50, 0.50, 0.52), "ellipse", (-1.0, -0.2, 1.0, 0.9))],
    "house": [((0.80, 0.75, 0.60), "rect", (-0.8, -0.1, 0.8, 1.0)), ((0.65, 0.10, 0.10), "poly", ((-1.0, -0.1), (0.0, -1.0), (1.0, -0.1)))],
    "lamp": [((0.20, 0.20, 0.20), "rect", (-0.1, -0.5, 0.1, 1.0)), ((1.00, 0.95, 0.50), "ellipse", (-0.5, -1.0, 0.5, -0.3))],
    "person": [((0.95, 0.75, 0.60), "ellipse", (-0.35, -1.0, 0.35, -0.35)), ((0.10, 0.35, 0.80), "rect", (-0.45, -0.3, 0.45, 1.0))],
    "dog": [((0.55, 0.35, 0.15), "ellipse", (-1.0, -0.1, 0.5, 0.7)), ((0.55, 0.35, 0.15), "ellipse", (0.2, -0.7, 0.9, 0.1)), ((0.30, 0.18, 0.05), "rect", (-0.9, 0.5, 0.5, 1.0))],
    "cat": [((0.98, 0.60, 0.25), "ellipse", (-0.7, -0.3, 0.7, 1.0)), ((0.98, 0.60, 0.25), "poly", ((-0.7, -0.1), (-0.5, -1.0), (0.0, -0.3))), ((0.98, 0.60, 0.25), "poly", ((0.0, -0.3), (0.5, -1.0), (0.7, -0.1)))],
    "robot": [((0.70, 0.72, 0.78), "rect", (-0.6, -0.2, 0.6, 1.0)), ((0.45, 0.47, 0.55), "rect", (-0.4, -0.9, 0.4, -0.3)), ((1.0, 0.1, 0.1), "rect", (-0.2, -0.75, 0.2, -0.55))],
}


@functools.lru_cache(maxsize=4096)
def _shape_alpha(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    big = size * _SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(img), shape, cx * _SUPERSAMPLE, cy * _SUPERSAMPLE, r * _SUPERSAMPLE)
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=256)
def _icon_layers(icon: str, cx: float, cy: float, r: float, size: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(alpha, rgb) layers of an icon, drawn in order."""
    layers = []
    big = size * _SUPERSAMPLE
    s = r * _SUPERSAMPLE
    ox, oy = cx * _SUPERSAMPLE, cy * _SUPERSAMPLE
    for colour, kind, coords in _ICONS[icon]:
        img = Image.new("L", (big, big), 0)
        d = ImageDraw.Draw(img)
        if kind == "poly":
            d.polygon([(ox + x * s, oy + y * s) for x, y in coords], fill=255)
        else:
            x0, y0, x1, y1 = coords
            box = [ox + x0 * s, oy + y0 * s, ox + x1 * s, oy + y1 * s]
            (d.rectangle if kind == "rect" else d.ellipse)(box, fill=255)
        alpha = np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
        layers.append((alpha, np.array(colour, dtype=np.float32)))
    return tuple(layers)


# ----------------------------------------------------------------------------- textures
def _background(name: str, noise: np.ndarray, phase: float, size: int) -> np.ndarray:
    """Background texture from shared noise fields (same noise for every background: exact edits)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    n0, n1 = noise[0], noise[1]

    def solid(rgb, amount, field):
        return np.clip(np.array(rgb, np.float32)[None, None] * (1 + amount * (field[..., None] - 0.5)), 0, 1)

    if name == "grass":
        blades = (np.sin((xx * 23 + n0 * 0.8 + phase) * math.pi * 2) > 0.3).astype(np.float32)
        return solid((0.30, 0.62, 0.22), 0.5, n1 * 0.5 + blades * 0.5)
    if name == "sand":
        dots = (n0 > 0.85).astype(np.float32)
        return solid((0.88, 0.78, 0.52), 0.25, n1 - dots * 0.8)
    if name == "snow":
        return solid((0.93, 0.95, 0.99), 0.12, n1)
    if name == "water":
        waves = np.sin((yy * 9 + 0.15 * np.sin(xx * 12 + phase)) * math.pi * 2) * 0.5 + 0.5
        return solid((0.15, 0.40, 0.78), 0.6, waves * 0.7 + n1 * 0.3)
    if name == "bricks":
        row = np.floor(yy * 8)
        xoff = (row % 2) * 0.125
        mortar = ((yy * 8) % 1 < 0.18) | (((xx + xoff) * 4) % 1 < 0.08)
        base = solid((0.66, 0.26, 0.18), 0.3, n1)
        return np.where(mortar[..., None], np.float32(0.80), base)
    if name == "wood":
        planks = ((xx * 5 + 0.02 * n0) % 1)
        grain = np.sin((yy * 3 + xx * 40 + phase) * math.pi) * 0.5 + 0.5
        base = solid((0.55, 0.36, 0.18), 0.4, grain * 0.6 + n1 * 0.4)
        return np.where((planks < 0.06)[..., None], base * 0.55, base)
    if name == "sky":
        grad = np.stack([0.45 + 0.4 * yy, 0.65 + 0.3 * yy, np.full_like(yy, 0.97)], -1)
        cloud = np.clip((n0 * 0.6 + 0.7 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.25) ** 2) * 25)) - 0.55, 0, 1)[..., None]
        return np.clip(grad + cloud * 1.2, 0, 1)
    if name == "carpet":
        check = ((np.floor(xx * 6 + yy * 6) + np.floor(xx * 6 - yy * 6)) % 2).astype(np.float32)
        a, b = np.array((0.45, 0.12, 0.30), np.float32), np.array((0.85, 0.70, 0.30), np.float32)
        return np.clip(a + (b - a) * check[..., None] * 0.6 + 0.06 * (n1[..., None] - 0.5), 0, 1)
    raise ValueError(name)


def _weather(rgb: np.ndarray, weather: str, noise: np.ndarray) -> np.ndarray:
    size = rgb.shape[0]
    if weather == "clear":
        return rgb
    if weather == "foggy":
        return rgb * 0.6 + np.float32(0.62) * 0.4
    if weather == "night":
        return rgb * np.array((0.45, 0.48, 0.65), np.float32)
    if weather == "rainy":
        yy, xx = np.mgrid[0:size, 0:size]
        streak = (((xx + yy // 2) + (noise[2] * 3).astype(int)) % 5 == 0) & (noise[3] > 0.4)
        out = rgb * 0.7
        return np.where(streak[..., None], np.float32(0.75), out)
    raise ValueError(weather)


def _pattern(colour: str, pattern: str, size: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.broadcast_to(np.array(_RGB[colour], np.float32), (size, size, 3)).copy()
    if pattern == "striped":
        stripe = (((xx + yy) / max(size / 10.0, 1.0) + phase) % 2) < 1
        rgb[stripe] *= 0.35
    elif pattern == "dotted":
        cell = max(size / 8.0, 2.0)
        dots = (((xx % cell) - cell / 2) ** 2 + ((yy % cell) - cell / 2) ** 2) < (cell / 4) ** 2
        rgb[dots] = 1.0
    return rgb


def _box3(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[:2]
    return sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0


def _domain(rgb: np.ndarray, domain: str, noise: np.ndarray) -> np.ndarray:
    if domain == "photo":
        return np.clip(rgb + (noise[4][..., None] - 0.5) * 0.08, 0, 1)
    lum = rgb @ np.array((0.299, 0.587, 0.114), np.float32)
    p = np.pad(lum, 1, mode="edge")
    gx = p[1:-1, 2:] - p[1:-1, :-2]
    gy = p[2:, 1:-1] - p[:-2, 1:-1]
    edges = np.sqrt(gx**2 + gy**2)
    if domain == "sketch":
        # Coloured-pencil sketch: dark strokes on paper washed with the scene's colours.
        ink = np.clip(1.0 - edges * 3.0 - (noise[5] - 0.5) * 0.1, 0, 1)[..., None]
        paper = 0.45 * rgb + 0.55 * np.array((0.98, 0.96, 0.90), np.float32)
        return paper * ink
    if domain == "painting":
        blurred = _box3(rgb)
        quant = np.round(blurred * 4) / 4
        canvas = (noise[5][..., None] - 0.5) * 0.12
        return np.clip(quant * 0.85 + 0.1 + canvas, 0, 1)
    if domain == "cartoon":
        flat = np.round(rgb * 2) / 2
        flat = np.clip(flat * 0.8 + 0.2, 0, 1)
        return np.where((edges > 0.12)[..., None], np.float32(0.0), flat)
    raise ValueError(domain)


# ----------------------------------------------------------------------------- the renderer
class WorldRenderer:
    """Draws `Factors` into an HxWx3 uint8 image. Stateless apart from caches; safe to share."""

    def __init__(self, image_size: int = 32) -> None:
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
        self.image_size = image_size

    def _streams(self, seed: int):
        ss = np.random.SeedSequence(seed)
        layout_ss, noise_ss = ss.spawn(2)
        return np.random.default_rng(layout_ss), np.random.default_rng(noise_ss)

    def _layout(self, factors: Factors, layout_rng: np.random.Generator) -> dict:
        s = self.image_size
        jx, jy, phase, tex_phase = layout_rng.uniform(-1, 1, size=4)
        # Jitter is quantised to 1/4 pixel so the mask cache stays small.
        cx = round((0.5 + 0.06 * jx) * s * 4) / 4
        cy = round((0.40 + 0.05 * jy) * s * 4) / 4
        r = (0.17 if factors.size == "small" else 0.26) * s
        return {"cx": cx, "cy": cy, "r": r, "phase": float(phase), "tex_phase": float(tex_phase) * 3}

    def _layers(self, factors: Factors, seed: int):
        s = self.image_size
        layout_rng, noise_rng = self._streams(seed)
        lay = self._layout(factors, layout_rng)
        noise = noise_rng.random((6, s, s), dtype=np.float32)
        bg = _weather(_background(factors.background, noise, lay["tex_phase"], s), factors.weather, noise)
        icon_r = 0.14 * s
        obj_layers = _icon_layers(factors.object, 0.17 * s, 0.80 * s, icon_r, s)
        subj_layers = _icon_layers(factors.subject, 0.83 * s, 0.80 * s, icon_r, s)
        shape_alpha = _shape_alpha(factors.shape, lay["cx"], lay["cy"], lay["r"], s)
        shape_rgb = _pattern(factors.colour, factors.pattern, s, lay["phase"])
        return bg, obj_layers, subj_layers, shape_alpha, shape_rgb, noise

    def render(self, factors: Factors, seed: int) -> np.ndarray:
        bg, obj_layers, subj_layers, shape_alpha, shape_rgb, noise = self._layers(factors, seed)
        img = bg
        for alpha, colour in obj_layers + subj_layers:
            img = img * (1 - alpha[..., None]) + colour * alpha[..., None]
        img = img * (1 - shape_alpha[..., None]) + shape_rgb * shape_alpha[..., None]
        img = _domain(img.astype(np.float32), factors.domain, noise)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    def render_scene(self, scene: Scene) -> np.ndarray:
        return self.render(scene.factors, scene.seed)

    def intervene(self, scene: Scene, factor: str, value: str) -> Scene:
        """The same scene with exactly one factor changed (the ground-truth counterfactual)."""
        if factor not in scene.factors.as_dict():
            raise KeyError(f"unknown factor {factor!r}")
        if getattr(scene.factors, factor) == value:
            raise ValueError(f"intervention on {factor!r} must change it; it is already {value!r}")
        return Scene(scene.factors.replace(**{factor: value}), scene.seed)

    def region_masks(self, factors: Factors, seed: int) -> dict[str, np.ndarray]:
        """Boolean masks of the pixels each scene element covers (before the domain filter)."""
        _, obj_layers, subj_layers, shape_alpha, _, _ = self._layers(factors, seed)
        shape = shape_alpha > 0
        under_shape = shape_alpha >= 1  # fully hidden behind the shape
        obj = np.any([a > 0 for a, _ in obj_layers], axis=0) & ~under_shape
        subj = np.any([a > 0 for a, _ in subj_layers], axis=0) & ~under_shape
        fully = under_shape | np.any([a >= 1 for a, _ in obj_layers + subj_layers], axis=0)
        return {"shape": shape, "object": obj, "subject": subj, "background": ~fully, "all": np.ones_like(shape)}

    def owned_mask(self, scene: Scene, factor: str, value: str) -> np.ndarray:
        """Pixels that an intervention on `factor` may change (union over before and after)."""
        after = self.intervene(scene, factor, value)
        region = {"shape": "shape", "colour": "shape", "pattern": "shape", "size": "shape", "object": "object",
                  "subject": "subject", "background": "background", "weather": "background", "domain": "all"}[factor]
        m = self.region_masks(scene.factors, scene.seed)[region] | self.region_masks(after.factors, after.seed)[region]
        if scene.factors.domain != "photo" or after.factors.domain != "photo":
            p = np.pad(m, 1)
            m = np.any([p[i : i + m.shape[0], j : j + m.shape[1]] for i in range(3) for j in range(3)], axis=0)
        return m
