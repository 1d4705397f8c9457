"""The small interfaces every generation component implements, and the records passed between them.

A component is any object with the right method (structural typing, `typing.Protocol`); configs pick
one with `_target_` under `conf/generation/<component>/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

EDIT_TYPES = ("subject", "object", "background", "adjective", "domain")


@dataclass(frozen=True)
class CaptionEdit:
    """A single-factor caption edit c -> c'."""

    edit_type: str
    caption: str  # c
    edited_caption: str  # c'
    original_words: str  # the phrase of c that was replaced
    edited_words: str  # its replacement in c'
    source: str = ""  # which perturber made it (name/version)


@dataclass(frozen=True)
class Rejection:
    """An attempt that produced no usable edit, with the reason (kept as a manifest row)."""

    edit_type: str
    caption: str
    reason: str
    raw_output: str = ""
    edited_caption: str = ""


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: Sequence[Image.Image]) -> list[str]: ...


@runtime_checkable
class Perturber(Protocol):
    """Proposes single-factor edits of one caption.

    `label` is the class name the edit must not touch; `seed` makes sampling reproducible.
    Returns `num_edits` results, each a CaptionEdit or a Rejection with its reason.
    """

    name: str

    def perturb(
        self, caption: str, edit_type: str, *, label: str | None = None, num_edits: int = 1, seed: int = 0
    ) -> list[CaptionEdit | Rejection]: ...


@dataclass
class Cost:
    """Cost ledger of one stage: UNet evaluations and wall-clock seconds."""

    unet_evals: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def add(self, other: "Cost") -> "Cost":
        self.unet_evals += other.unet_evals
        self.seconds += other.seconds
        return self
