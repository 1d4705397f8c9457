"""`Inversion`: what an inverter returns and an editor starts from, saved as safetensors and cached
per image so that every edit of one image reuses a single inversion."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from src.generation.types import Cost


@dataclass
class Inversion:
    """latents[0] is the clean latent x_0, latents[-1] the noise x_T (sampling starts there).
    uncond_embeddings[i] is the null/negative embedding for sampling step i (shape T x L x D, or 1 x L x D
    when constant). `pin_source`: the editor puts its source branch back on `latents` after every step
    (direct inversion)."""

    latents: torch.Tensor  # (T + 1) x C x H x W
    uncond_embeddings: torch.Tensor  # T x L x D or 1 x L x D
    prompt: str
    guidance_scale: float
    method: str
    cost: Cost = field(default_factory=Cost)
    pin_source: bool = False

    @property
    def num_steps(self) -> int:
        return self.latents.shape[0] - 1

    def latent_after(self, step: int) -> torch.Tensor:
        """The trajectory's latent after sampling step `step` (x_{T-1} after step 0, x_0 after the last)."""
        return self.latents[self.num_steps - 1 - step]

    def uncond_at(self, step: int) -> torch.Tensor:
        """Null embedding (1 x L x D) for sampling step `step` (0 = first, noisiest step)."""
        e = self.uncond_embeddings
        return e[step if e.shape[0] > 1 else 0][None]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prompt": self.prompt, "guidance_scale": str(self.guidance_scale), "method": self.method,
                "pin_source": str(int(self.pin_source)),
                "cost": json.dumps({"unet_evals": self.cost.unet_evals, "seconds": self.cost.seconds,
                                    "extra": self.cost.extra})}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"latents": self.latents.detach().cpu().contiguous(),
                   "uncond_embeddings": self.uncond_embeddings.detach().cpu().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Inversion":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(path), device=str(device))
        cost = json.loads(meta["cost"])
        return cls(tensors["latents"], tensors["uncond_embeddings"], meta["prompt"], float(meta["guidance_scale"]),
                   meta["method"], Cost(cost["unet_evals"], cost["seconds"], cost.get("extra", {})),
                   pin_source=meta.get("pin_source", "0") == "1")


class InversionCache:
    """Inversions on disk keyed by (image sha256, prompt, inverter config). `folder=None`: memory only."""

    def __init__(self, folder: str | Path | None, inverter_key: str) -> None:
        self.folder = Path(folder) if folder else None
        self.inverter_key = inverter_key
        self._memory: dict[str, Inversion] = {}

    def key(self, image_sha256: str, prompt: str) -> str:
        return hashlib.sha256(f"{image_sha256}|{prompt}|{self.inverter_key}".encode()).hexdigest()[:24]

    def get_or_compute(self, image_sha256: str, prompt: str, compute) -> tuple[Inversion, bool]:
        """(inversion, was_cached)."""
        k = self.key(image_sha256, prompt)
        if k in self._memory:
            return self._memory[k], True
        path = self.folder / f"{k}.safetensors" if self.folder else None
        if path is not None and path.exists():
            try:
                inv = Inversion.load(path)
                self._memory = {k: inv}
                return inv, True
            except Exception:  # noqa: BLE001 - a truncated cache file is recomputed
                path.unlink(missing_ok=True)
        inv = compute()
        if path is not None:
            inv.save(path)
        self._memory = {k: inv}  # keep only the latest image in memory
        return inv, False
