"""Oracle editor for Counterfactory World: the renderer's exact intervention (`WorldRenderer.intervene`
+ `render`) for the factor whose phrase the caption edit swapped. Ground truth only; needs the source's
world record (factors and seed), which world sources attach as `image.info["world"]`."""
from __future__ import annotations

from PIL import Image

from src.generation.editor_p2p import EditOutput
from src.generation.types import CaptionEdit, Cost


class OracleEditor:
    name = "oracle"
    needs_inversion = False
    model_id = "world-renderer"

    def __init__(self, image_size: int | None = None) -> None:
        self.image_size = image_size

    def _intervention(self, factors, edit: CaptionEdit) -> tuple[str, str]:
        from src.world.grammar import VOCABULARY, edit_words

        for factor, values in VOCABULARY.items():
            for v in values:
                if v != getattr(factors, factor) and edit_words(factors, factor, v) == (edit.original_words, edit.edited_words):
                    return factor, v
        raise ValueError(f"edit {edit.original_words!r} -> {edit.edited_words!r} is not a single world-factor change")

    def edit_world(self, record: dict, edits: list[CaptionEdit], fractions: list[float]) -> EditOutput:
        import time

        from src.world.grammar import VOCABULARY, Factors
        from src.world.renderer import Scene, WorldRenderer

        t0 = time.perf_counter()
        factors = Factors(**{k: record[k] for k in VOCABULARY})
        scene = Scene(factors, int(record["seed"]))
        renderer = WorldRenderer(self.image_size or int(record.get("image_size", 32)))
        recon = Image.fromarray(renderer.render_scene(scene))
        candidates = []
        for e in edits:
            try:
                factor, value = self._intervention(factors, e)
            except ValueError:
                candidates.append([])  # the pipeline records "oracle cannot realise this edit"
                continue
            img = Image.fromarray(renderer.render_scene(renderer.intervene(scene, factor, value)))
            candidates.append([(float("nan"), img)])
        return EditOutput(recon, candidates, Cost(0, time.perf_counter() - t0))
