"""The factor grammar of Counterfactory World: what can vary in a scene and how captions name it.

Each factor has a fixed vocabulary. A scene is a `Factors` record; its caption is produced by
`caption(factors)` from phrases, so a single-factor edit changes exactly one phrase of the caption.
The mapping factor -> LANCE edit type lives in `EDIT_TYPES`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CLASSES = ("circle", "square", "triangle", "star", "cross", "heart", "ring", "arrow")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
PATTERNS = ("plain", "striped", "dotted")
SIZES = ("small", "large")
BACKGROUNDS = ("grass", "sand", "snow", "water", "bricks", "wood", "sky", "carpet")
WEATHERS = ("clear", "foggy", "night", "rainy")
DOMAINS = ("photo", "sketch", "painting", "cartoon")
OBJECTS = ("tree", "rock", "house", "lamp")
SUBJECTS = ("person", "dog", "cat", "robot")

VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": CLASSES,
    "colour": COLOURS,
    "pattern": PATTERNS,
    "size": SIZES,
    "background": BACKGROUNDS,
    "weather": WEATHERS,
    "domain": DOMAINS,
    "object": OBJECTS,
    "subject": SUBJECTS,
}

# LANCE edit type of each factor (weather counts as background, as in the paper).
EDIT_TYPES: dict[str, str] = {
    "colour": "adjective",
    "pattern": "adjective",
    "size": "adjective",
    "background": "background",
    "weather": "background",
    "domain": "domain",
    "object": "object",
    "subject": "subject",
}
EDIT_TYPE_NAMES = ("subject", "object", "background", "adjective", "domain")

# Caption phrases. Kept as a function of one factor value each so that an edit changes one phrase.
_BACKGROUND_PHRASE = {
    "grass": "on green grass",
    "sand": "on desert sand",
    "snow": "on white snow",
    "water": "on blue water",
    "bricks": "in front of a brick wall",
    "wood": "on a wooden floor",
    "sky": "against the open sky",
    "carpet": "on a patterned carpet",
}
_WEATHER_PHRASE = {"clear": "on a clear day", "foggy": "in the fog", "night": "at night", "rainy": "in the rain"}
_DOMAIN_PHRASE = {"photo": "a photo", "sketch": "a sketch", "painting": "a painting", "cartoon": "a cartoon"}
_PATTERN_PHRASE = {"plain": "plain", "striped": "striped", "dotted": "dotted"}


@dataclass(frozen=True)
class Factors:
    """One scene. `shape` is the label; everything else is a nuisance factor."""

    shape: str
    colour: str
    pattern: str
    size: str
    background: str
    weather: str
    domain: str
    object: str
    subject: str

    def __post_init__(self) -> None:
        for name, vocab in VOCABULARY.items():
            value = getattr(self, name)
            if value not in vocab:
                raise ValueError(f"factor {name!r} has unknown value {value!r}; expected one of {vocab}")

    @property
    def label(self) -> int:
        return CLASSES.index(self.shape)

    def replace(self, **changes: str) -> "Factors":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def phrases(f: Factors) -> dict[str, str]:
    """The caption split into one phrase per factor (empty phrases are dropped when joined)."""
    return {
        "domain": _DOMAIN_PHRASE[f.domain] + " of a",
        "size": f.size,
        "colour": f.colour,
        "pattern": _PATTERN_PHRASE[f.pattern],
        "shape": f.shape,
        "background": _BACKGROUND_PHRASE[f.background],
        "weather": _WEATHER_PHRASE[f.weather],
        "object": f"next to a {f.object}",
        "subject": f"with a {f.subject}",
    }


CAPTION_ORDER = ("domain", "size", "colour", "pattern", "shape", "background", "weather", "object", "subject")


def caption(f: Factors, mention: "set[str] | None" = None) -> str:
    """E.g. 'a photo of a small red striped star on white snow at night next to a tree with a dog'.

    `mention` names the factors the caption speaks of (all by default); a partial caption such as
    'a star on white snow' or 'a star' is what a web caption of less detail would say.
    """
    p = phrases(f)
    if mention is not None:
        unknown = set(mention) - set(CAPTION_ORDER)
        if unknown:
            raise ValueError(f"caption: unknown factors {sorted(unknown)}; expected some of {CAPTION_ORDER}")
        p = {k: (v if k in mention else "") for k, v in p.items()}
        if not p["domain"]:
            p["domain"] = "a"
    return " ".join(p[k] for k in CAPTION_ORDER if p[k])


def edit_words(before: Factors, factor: str, value: str) -> tuple[str, str]:
    """The phrase that an edit of `factor` to `value` replaces, and its replacement."""
    return phrases(before)[factor], phrases(before.replace(**{factor: value}))[factor]
