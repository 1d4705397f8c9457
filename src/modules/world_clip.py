"""world_clip: a small open_clip CLIP trained contrastively on Counterfactory World (image, caption) pairs.

The model is a plain `open_clip.model.CLIP` built from a config dict (small ViT image tower, causal text
transformer, open_clip's bundled BPE tokenizer) and exported in open_clip's own hub layout
(`open_clip_config.json` + `open_clip_model.safetensors`), so `open_clip.create_model("local-dir:<folder>")`
loads it the way it loads `hf-hub:` models.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

log = logging.getLogger(__name__)

# Same normalisation as OpenAI CLIP, so `src.generation.clip_model.ClipEncoder` feeds it correctly.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(embed_dim: int, vision_cfg: dict, text_cfg: dict):
    from open_clip.model import CLIP

    return CLIP(embed_dim=embed_dim, vision_cfg=dict(vision_cfg), text_cfg=dict(text_cfg))


def save_open_clip_folder(model, model_cfg: dict, folder: str | Path) -> Path:
    """Write `model` in open_clip's hub layout (config with model_cfg/preprocess_cfg + safetensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_size = model_cfg["vision_cfg"]["image_size"]
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic",
                                 "resize_mode": "shortest", "size": image_size}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    return folder


class WorldClipModule(L.LightningModule):
    """Symmetric InfoNCE (open_clip's `ClipLoss`) with a learned temperature, plus hard negatives.

    With in-batch negatives alone, colour and background already tell captions apart, and CLIP learns
    little about the shape (zero-shot class accuracy near chance after 700 steps, though image-to-text
    retrieval in a batch of 64 was 97%). Hard negatives fix that shortcut (as NegCLIP does): for each image
    one extra caption with a single factor swapped — the shape with probability `shape_negative_prob`,
    otherwise another factor — joins the image-to-text candidates.

    Text hard negatives teach the text tower; the image tower still learnt colour and background and
    barely the shape (a linear probe on its embedding read the shape in 18-30% of renders). With
    `shape_twins` each image's exact counterfactual with another shape (the renderer redraws the scene
    from its seed) joins the text-to-image candidates: the twin differs from the image in the shape
    alone, so only a shape feature tells them apart.
    """

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict, optimizer: Callable,
                 scheduler: Callable | None = None, class_names: Sequence[str] | None = None,
                 export_dir: str | None = None, hard_negatives: bool = True, shape_negative_prob: float = 0.5,
                 partial_caption_prob: float = 0.0, shape_twins: bool = False,
                 init_from: str | None = None, lock_text: bool = False) -> None:
        super().__init__()
        # Plain containers in the checkpoint's hparams: the best epoch reloads with weights_only=True.
        vision_cfg = plain(vision_cfg)
        text_cfg = plain(text_cfg)
        class_names = [str(c) for c in class_names] if class_names is not None else None
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        from open_clip import ClipLoss
        from open_clip.tokenizer import SimpleTokenizer

        self.model_cfg = {"embed_dim": int(embed_dim), "vision_cfg": dict(vision_cfg), "text_cfg": dict(text_cfg)}
        self.model = build_clip(embed_dim, vision_cfg, text_cfg)
        if init_from:  # continue from an exported world_clip folder
            from safetensors.torch import load_file

            self.model.load_state_dict(load_file(str(Path(init_from) / "open_clip_model.safetensors")))
        if lock_text:  # world_ldm is conditioned on the text tower: train the image tower alone
            if not init_from:
                raise ValueError("module.lock_text=true needs module.init_from=<trained world_clip folder>")
            self.model.lock_text_tower()
        self.hard_negatives = hard_negatives
        self.shape_negative_prob = shape_negative_prob
        if not 0.0 <= partial_caption_prob <= 1.0:
            raise ValueError(f"module.partial_caption_prob must be in [0, 1], got {partial_caption_prob}")
        self.partial_caption_prob = partial_caption_prob
        self.shape_twins = shape_twins
        self.tokenizer = SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)))
        self.loss = ClipLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else None
        self.export_dir = export_dir
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, images: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm features of images in [0, 1] and of captions."""
        x = (images - self.mean) / self.std
        tokens = self.tokenizer(list(captions)).to(self.device)
        img = F.normalize(self.model.encode_image(x), dim=-1)
        txt = F.normalize(self.model.encode_text(tokens), dim=-1)
        return img, txt

    def training_captions(self, factors: dict[str, list[str]], partial: bool) -> tuple[list[str], list[str]]:
        """(caption, hard-negative caption) per sample.

        With probability `partial_caption_prob` (training only) a caption mentions the shape and each other
        factor with probability 1/2 ('a star', 'a red star at night', ...). Full captions only let colour
        and background separate a batch; a partial caption that names little but the shape makes the shape
        the text's main content, which is what zero-shot class prompts need. The hard negative swaps one
        mentioned factor (the shape with probability `shape_negative_prob`) in the same partial caption.
        """
        import random

        from src.world.grammar import VOCABULARY, Factors, caption

        names = list(factors)
        positives, negatives = [], []
        for i in range(len(factors[names[0]])):
            f = Factors(**{k: factors[k][i] for k in names})
            mention = set(VOCABULARY)
            if partial and random.random() < self.partial_caption_prob:
                mention = {"shape"} | {k for k in VOCABULARY if k != "shape" and random.random() < 0.5}
            others = [n for n in mention if n != "shape"]
            k = "shape" if not others or random.random() < self.shape_negative_prob else random.choice(others)
            swapped = f.replace(**{k: random.choice([v for v in VOCABULARY[k] if v != getattr(f, k)])})
            positives.append(caption(f, mention))
            negatives.append(caption(swapped, mention))
        return positives, negatives

    def render_shape_twins(self, factors: dict[str, list[str]], seeds) -> torch.Tensor:
        """Each scene redrawn (same seed, same everything else) with another shape: N x 3 x H x W in [0, 1]."""
        import random

        import numpy as np

        from src.world.grammar import CLASSES, VOCABULARY, Factors
        from src.world.renderer import WorldRenderer

        renderer = WorldRenderer(int(self.model_cfg["vision_cfg"]["image_size"]))
        names = list(factors)
        images = []
        for i, seed in enumerate(seeds.tolist() if torch.is_tensor(seeds) else seeds):
            f = Factors(**{k: factors[k][i] for k in names if k in VOCABULARY})
            images.append(renderer.render(f.replace(shape=random.choice([c for c in CLASSES if c != f.shape])),
                                          int(seed)))
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).to(self.device)

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        captions, negatives = list(batch["caption"]), None
        if "factors" in batch and (self.hard_negatives or self.partial_caption_prob > 0):
            captions, negatives = self.training_captions(batch["factors"], partial=stage == "train")
        img, txt = self.encode(batch["image"], captions)
        scale = self.model.logit_scale.exp()
        loss = self.loss(img, txt, scale)
        if self.shape_twins and "seed" in batch and "factors" in batch and stage == "train":
            twins = self.render_shape_twins(batch["factors"], batch["seed"])
            twin = F.normalize(self.model.encode_image((twins - self.mean) / self.std), dim=-1)
            logits = scale * txt @ torch.cat([img, twin]).T  # caption -> [batch images; shape twins]
            twin_loss = F.cross_entropy(logits, torch.arange(len(img), device=self.device))
            self.log(f"{stage}/twin_loss", twin_loss, batch_size=len(img))
            self.log(f"{stage}/twin_pair_acc", ((txt * img).sum(1) > (txt * twin).sum(1)).float().mean(),
                     batch_size=len(img))
            loss = loss + twin_loss
        if self.hard_negatives and negatives is not None:
            neg = F.normalize(self.model.encode_text(self.tokenizer(negatives).to(self.device)), dim=-1)
            logits = scale * img @ torch.cat([txt, neg]).T  # image -> [batch captions; hard negatives]
            hard = F.cross_entropy(logits, torch.arange(len(img), device=self.device))
            pair_acc = ((img * txt).sum(1) > (img * neg).sum(1)).float().mean()
            self.log(f"{stage}/hard_loss", hard, batch_size=len(img))
            self.log(f"{stage}/hard_pair_acc", pair_acc, prog_bar=stage != "train", batch_size=len(img))
            loss = loss + hard
        with torch.no_grad():
            sims = img @ txt.T
            target = torch.arange(len(img), device=self.device)
            i2t = (sims.argmax(1) == target).float().mean()
        bs = len(img)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=bs)
        self.log(f"{stage}/i2t_acc", i2t, prog_bar=stage != "train", batch_size=bs)
        self.log(f"{stage}/logit_scale", scale, batch_size=bs)
        if stage != "train" and self.class_names:
            self.log(f"{stage}/zero_shot_acc", self._zero_shot(img, batch["label"]), prog_bar=True, batch_size=bs)
        return loss

    def _zero_shot(self, img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Zero-shot class accuracy with the grammar's prompt ensemble (see `src.world.models.class_prompts`)."""
        from src.world.models import zero_shot_weights

        txt = zero_shot_weights(self.model, self.tokenizer)
        return ((img @ txt.T.to(img)).argmax(1) == labels).float().mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        # Keep the temperature in open_clip's range (it clamps to ln 100 during its own training).
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, 4.6052)

    def on_fit_end(self) -> None:
        if self.export_dir and not self.trainer.fast_dev_run:
            path = save_open_clip_folder(self.model, self.model_cfg, self.export_dir)
            log.info("exported world_clip to %s", path)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        return with_scheduler(self, optimizer, self.scheduler_factory)


def plain(cfg: Any) -> Any:
    """A DictConfig/ListConfig as plain dicts and lists (anything else unchanged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def with_scheduler(module: L.LightningModule, optimizer, scheduler_factory: Callable | None) -> Any:
    """Optimizer alone, or with a per-step scheduler told the run's total steps (OneCycleLR and alike)."""
    if scheduler_factory is None:
        return optimizer
    import inspect

    kwargs = {}
    if "total_steps" in inspect.signature(scheduler_factory.func).parameters:
        kwargs["total_steps"] = max(1, int(module.trainer.estimated_stepping_batches))
    scheduler = scheduler_factory(optimizer, **kwargs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
