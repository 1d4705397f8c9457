"""Fail fast, with the config key to fix, when a model must come from the Hugging Face hub but can't.

huggingface_hub retries a missing network for ~45 s per file; users deserve an answer at once.
"""
from __future__ import annotations

import functools
import os
import socket
from pathlib import Path


class HubUnavailableError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(model_id: str, key: str) -> None:
    """Raise unless `model_id` is a local folder/file or the hub can be reached.

    `key` names the config entry the user should point at a local copy (e.g. `model.checkpoint_path`).
    """
    if Path(str(model_id)).expanduser().exists() or _in_local_cache(model_id):
        return
    if not hub_reachable():
        raise HubUnavailableError(
            f"{model_id!r} must be downloaded from the Hugging Face hub, which is not reachable "
            f"(offline or HF_HUB_OFFLINE=1). Set {key}=/path/to/a/local/copy."
        )


def _in_local_cache(model_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return any(r.repo_id == model_id for r in scan_cache_dir().repos)
    except Exception:  # noqa: BLE001 - no cache folder yet
        return False
