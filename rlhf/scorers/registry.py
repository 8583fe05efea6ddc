"""The scorer interface (`AestheticScorer`), the registry of scorers by name, and the factory.

A scorer module registers its class or factory with `@register_scorer(name, *aliases)`; importing the
`rlhf.scorers` package imports every scorer module, so `create_scorer` knows them all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlhf.images import Photo

Crops = np.ndarray | Sequence[np.ndarray]
ScorerFactory = Callable[..., "AestheticScorer"]


class AestheticScorer(ABC):
    """Scores crops on the 1-10 scale. Subclasses implement `score`; photo-aware ones `score_boxes`."""

    name: str = "base"
    input_size: int = 224

    @abstractmethod
    def score(self, crops: Crops) -> np.ndarray:
        """Scores (N,) in [1, 10] of uint8 RGB crops (an N×H×W×3 array, or a list of H×W×3)."""

    def distribution(self, crops: Crops) -> np.ndarray | None:
        """(N, 10) probabilities of the scores 1..10, for scorers that model one; else None."""
        return None

    def score_boxes(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Scores of boxes of one photo: by default each box is cut from the photo's working pixels
        (rlhf.context.crop_resized), resized to input_size and scored."""
        from rlhf.context import crop_resized

        if len(boxes) == 0:
            return np.zeros(0, dtype=np.float64)
        crops = np.stack([crop_resized(photo, b, self.input_size) for b in boxes])
        return np.asarray(self.score(crops), dtype=np.float64)


_REGISTRY: dict[str, ScorerFactory] = {}
_ALIASES: dict[str, str] = {}


def register_scorer(name: str, *aliases: str) -> Callable[[ScorerFactory], ScorerFactory]:
    """Decorator: make a scorer class (or factory) available to `create_scorer` by name and aliases."""
    def deco(factory: ScorerFactory) -> ScorerFactory:
        _REGISTRY[name] = factory
        for a in aliases:
            _ALIASES[a] = name
        return factory
    return deco


def list_scorers() -> list[str]:
    """Registered scorer names (aliases not included)."""
    return sorted(_REGISTRY)


def create_scorer(name: str = "default", weights: str | None = None, device: str = "cpu",
                  **kwargs: Any) -> AestheticScorer:
    """Build a registered scorer: "default" (= "proxy") or "nima" (or "nima:<timm backbone>").

    weights: for the proxy, an optional state dict for its EfficientNet-Lite0; for NIMA, the checkpoint
    (required: no NIMA weights ship offline). Extra keyword arguments go to the scorer's constructor.
    """
    base, _, variant = name.partition(":")
    key = _ALIASES.get(base, base)
    if key not in _REGISTRY:
        known = ", ".join(sorted([*_REGISTRY, *_ALIASES]))
        raise ValueError(f"unknown scorer {name!r}; known: {known}")
    if variant:
        kwargs.setdefault("backbone", variant)
    return _REGISTRY[key](weights=weights, device=device, **kwargs)


def as_crop_list(crops: Crops) -> list[np.ndarray]:
    """Crops as a list of H×W×3 uint8 arrays; float crops with values <= 1 are taken as [0, 1]."""
    if isinstance(crops, np.ndarray):
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be an N×H×W×3 uint8 array, got shape {crops.shape}")
        items = list(crops)
    else:
        items = []
        for i, c in enumerate(crops):
            c = np.asarray(c)
            if c.ndim != 3 or c.shape[-1] != 3:
                raise ValueError(f"crop {i} must be H×W×3, got shape {c.shape}")
            items.append(c)
    out = []
    for c in items:
        if c.dtype != np.uint8:
            if np.issubdtype(c.dtype, np.floating) and c.size and float(c.max()) <= 1.0:
                c = c * 255.0  # float crops in [0, 1]
            c = np.clip(c, 0, 255).astype(np.uint8)
        out.append(c)
    return out
