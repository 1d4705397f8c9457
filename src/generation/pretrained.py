"""Loading real models by hub id, failing fast and clearly when they cannot be had (offline, typo).

Every real component (Stable Diffusion, BLIP-2, CLIP, a masked LM, a sentence encoder) is configured by
a hub id or a local folder under one config key; when loading fails we name that key so the user knows
what to point at a local copy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def load_pretrained(loader: Callable[[str], T], model_id: str, config_key: str) -> T:
    """`loader(model_id)`, re-raising any failure as one clear error that names `config_key`."""
    is_local = Path(str(model_id)).expanduser().exists()
    if not is_local and hub_offline():
        raise RuntimeError(
            f"{config_key}={model_id!r} is not a local folder and HF_HUB_OFFLINE is set; "
            f"download it elsewhere and set {config_key}=/path/to/local/copy"
        )
    from src.hub import require_hub

    require_hub(model_id, config_key)  # fails at once when the hub is unreachable
    try:
        return loader(str(Path(model_id).expanduser()) if is_local else model_id)
    except Exception as err:  # noqa: BLE001 - any loader failure becomes one actionable message
        raise RuntimeError(
            f"could not load {config_key}={model_id!r} ({type(err).__name__}: {str(err)[:300]}); "
            f"without network access set {config_key}=/path/to/local/copy"
        ) from err
