"""Ground-truth judges for generated counterfactuals: a factor probe trained on rendered images.

The probe is a small CNN with one head per factor (shape, colour, pattern, size, background, weather,
domain, object, subject), trained on renders with every factor independent. It judges whether an
edited image shows the edited factor's new value and still shows the unchanged factors, without using
world_clip (which the generation pipeline itself uses, so it cannot judge its own work).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from src.world.grammar import VOCABULARY, Factors
from src.world.renderer import WorldRenderer

log = logging.getLogger(__name__)
FACTORS = tuple(VOCABULARY)


class FactorProbe(nn.Module):
    """CNN over 32x32 images in [0, 1] -> logits per factor."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, stride=2), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.heads = nn.ModuleDict({k: nn.Linear(16 * w, len(v)) for k, v in VOCABULARY.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predicted value index per factor for N x H x W x 3 uint8 images."""
        self.eval()
        out: dict[str, list] = {k: [] for k in FACTORS}
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
            for k, logits in self(x).items():
                out[k].append(logits.argmax(1).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}


def render_independent(n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, list[Factors]]:
    rng = np.random.default_rng(seed)
    renderer = WorldRenderer(image_size)
    factors = [Factors(**{k: v[rng.integers(len(v))] for k, v in VOCABULARY.items()}) for _ in range(n)]
    return np.stack([renderer.render(f, int(rng.integers(2**31))) for f in factors]), factors


def factor_targets(factors: list[Factors]) -> dict[str, np.ndarray]:
    return {k: np.array([VOCABULARY[k].index(getattr(f, k)) for f in factors]) for k in FACTORS}


def train_probe(n_train: int = 12000, steps: int = 1500, batch_size: int = 64, seed: int = 2024,
                lr: float = 3e-3) -> tuple[FactorProbe, dict[str, float]]:
    """Train on fresh independent renders; returns the probe and its held-out accuracy per factor."""
    torch.manual_seed(seed)
    images, factors = render_independent(n_train, seed)
    val_images, val_factors = render_independent(1000, seed + 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = {k: torch.from_numpy(v) for k, v in factor_targets(factors).items()}
    probe = FactorProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="factor probe", leave=False):
        probe.train()
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb = x[idx]
        # Small shifts: generated images are not pixel-aligned renders.
        dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
        logits = probe(xb)
        loss = sum(F.cross_entropy(logits[k], y[k][idx]) for k in FACTORS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    pred = probe.predict(val_images)
    truth = factor_targets(val_factors)
    acc = {k: float((pred[k] == truth[k]).mean()) for k in FACTORS}
    return probe.eval(), acc


def load_or_train_probe(path: str | Path, **kwargs) -> tuple[FactorProbe, dict[str, float]]:
    """The probe cached at `path` (safetensors, accuracies in its metadata), training it when absent."""
    path = Path(path)
    probe = FactorProbe()
    if path.is_file():
        from safetensors import safe_open

        probe.load_state_dict(load_file(str(path)))
        with safe_open(str(path), "pt") as f:
            acc = {k: float(v) for k, v in f.metadata().items() if k in FACTORS}
        return probe.eval(), acc
    probe, acc = train_probe(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in probe.state_dict().items()}, str(tmp),
              metadata={k: f"{v:.4f}" for k, v in acc.items()})
    tmp.replace(path)
    log.info("factor probe accuracy per factor: %s", acc)
    return probe, acc
