"""Captions already in the data (e.g. Counterfactory World's records["caption"]). Sources attach them
to each image as `image.info["caption"]`."""
from __future__ import annotations

from typing import Sequence

from PIL import Image


class GroundTruthCaptioner:
    name = "ground_truth"
    model_id = ""

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return [str(im.info.get("caption", "") or "").strip() for im in images]
