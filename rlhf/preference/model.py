"""The trained reward model r(photo, box) and its file format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf.cache import LRUCache
from rlhf.images import Box, Photo
from rlhf.preference.bayes import Members
from rlhf.preference.config import CENTRINGS
from rlhf.preference.features import POOLING, CropFeaturizer
from rlhf.preference.head import FeatureNormaliser, RewardHead

# The file's layout and the features its normaliser and head were fit to. 2: the share hinge cues
# joined the features; 3: the crop embedding is RoI-pooled from the photo's feature map (a version-2
# model's PCA was fit to one backbone pass per crop, another feature); 4: colour as luminance, warmth,
# tint, contrast, saturation (no mean R, G, B).
FORMAT_VERSION = 4
# Photos whose centring offset a model keeps (a float each).
MAX_CACHED_OFFSETS = 10_000


def reference_boxes(width: int, height: int) -> list[Box]:
    """The crops a photo's rewards are centred on: the whole photo and a 3x3 grid of crops 0.6 of
    its width and height (left/centre/right x top/middle/bottom), the range a crop policy explores."""
    w, h = round(0.6 * width), round(0.6 * height)
    boxes = [(0, 0, width, height)]
    for fy in (0.0, 0.5, 1.0):
        for fx in (0.0, 0.5, 1.0):
            left, top = round(fx * (width - w)), round(fy * (height - h))
            boxes.append((left, top, left + w, top + h))
    return boxes


class PreferenceRewardModel:
    """r(photo, box): featurizer -> normaliser -> head, minus the centring offset; and P(A better than B).

    Centring ``photo`` (default) subtracts the mean r of the photo's own reference crops
    (`reference_boxes`); ``global`` subtracts one offset, the mean r of the training crops.
    ``members``: with --selection bayes, the posterior's most probable models (rlhf.preference.bayes), by which
    `preference` predicts a person's choice between two crops (the posterior predictive); r, the score stage 3
    climbs, is the posterior mean head. Without them (--selection l1) `preference` is sigma(r_a - r_b).
    """

    def __init__(self, featurizer: CropFeaturizer, normaliser: FeatureNormaliser, head: RewardHead,
                 offset: float = 0.0, config: dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None, centring: str = "global", members: Members | None = None):
        if centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {CENTRINGS}, got {centring!r}")
        self.featurizer = featurizer
        self.normaliser = normaliser
        self.head = head.to(featurizer.device).eval()
        self.offset = float(offset)
        self.centring = centring
        self.config = dict(config or {})
        self.metrics = dict(metrics or {})
        self.members = members
        self._photo_offsets: LRUCache[tuple[str, int, int], float] = LRUCache(MAX_CACHED_OFFSETS)

    @property
    def device(self) -> torch.device:
        return self.featurizer.device

    @property
    def indifferent(self) -> bool:
        """Whether it scores every crop alike: its training found no taste in the answers
        (rlhf.preference.training.NO_TASTE), so there is nothing to steer or fine-tune towards."""
        return all(not bool(w.detach().abs().sum()) for w in self.head.weights())

    def to(self, device: str | torch.device) -> PreferenceRewardModel:
        self.featurizer.to(device)
        self.head.to(device)
        return self

    def raw_from_features(self, raw_features: np.ndarray) -> np.ndarray:
        """Uncentred r for raw feature rows."""
        x = torch.from_numpy(self.normaliser.transform(raw_features)).to(self.device)
        with torch.no_grad():
            return self.head(x).double().cpu().numpy()

    def photo_offset(self, photo: Photo) -> float:
        """What `reward` subtracts for this photo (see the class docstring)."""
        if self.centring == "global":
            return self.offset
        key = (photo.id, photo.width, photo.height)
        offset = self._photo_offsets.get(key)
        if offset is None:
            refs = self.featurizer.features(photo, reference_boxes(photo.width, photo.height))
            offset = float(self.raw_from_features(refs).mean())
            self._photo_offsets.put(key, offset)
        return offset

    def reward(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """Centred r per box: 0 for a crop as good as the photo's reference crops on average
        (centring "photo"), or as the average training crop ("global")."""
        return self.raw_from_features(self.featurizer.features(photo, boxes)) - self.photo_offset(photo)

    def human_score(self, photo: Photo, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """sigmoid(r) per box in [0, 1]; 0.5 for an average crop (of this photo, with centring "photo")."""
        return 1.0 / (1.0 + np.exp(-self.reward(photo, boxes)))

    def preference(self, photo: Photo, boxes_a: Sequence[Sequence[float]],
                   boxes_b: Sequence[Sequence[float]]) -> np.ndarray:
        """P(a_i better than b_i) per pair of boxes of one photo: the posterior predictive with ``members``,
        else Bradley-Terry on r. What the few-pairs path chooses crops by and held-out accuracy is measured on."""
        if len(boxes_a) != len(boxes_b):
            raise ValueError(f"got {len(boxes_a)} boxes A for {len(boxes_b)} boxes B")
        x = self.normaliser.transform(self.featurizer.features(photo, [*boxes_a, *boxes_b]))
        d = torch.from_numpy(x[:len(boxes_a)] - x[len(boxes_a):])
        if self.members is not None:
            return self.members.prefer(d).double().numpy()
        with torch.no_grad():  # the head is linear or not: score each crop, then compare
            r = self.head(torch.from_numpy(x).to(self.device)).double().cpu().numpy()
        return 1.0 / (1.0 + np.exp(-(r[:len(boxes_a)] - r[len(boxes_a):])))

    def prefer(self, photo: Photo, box_a: Sequence[float], box_b: Sequence[float]) -> float:
        """P(A better than B) (see `preference`)."""
        return float(self.preference(photo, [box_a], [box_b])[0])

    def save(self, path: str | Path) -> Path:
        """One .pth: head weights, normaliser, centring offset, backbone name + weights, pooling, config, members."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": "rlhf-photographer/human-reward-model", "version": FORMAT_VERSION,
            "backbone": self.featurizer.backbone_name, "backbone_weights": self.featurizer.backbone_weights,
            "pooling": self.featurizer.pooling, "feature_names": list(self.featurizer.feature_names),
            "head": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            "head_in_dim": self.head.in_dim, "head_hidden": self.head.hidden,
            "normaliser": self.normaliser.state_dict(), "offset": self.offset, "centring": self.centring,
            "config": self.config, "metrics": self.metrics,
            "members": self.members.state_dict() if self.members is not None else None,
        }, path)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backbone_weights: str | None = None,
             featurizer: CropFeaturizer | None = None) -> PreferenceRewardModel:
        """Load a saved model; `backbone_weights` overrides the stored path (a moved weights file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such human reward model file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our file"
            raise ValueError(f"{path}: not a readable human reward model ({e}); if an older version wrote it, "
                             "retrain it with `photographer train-reward` on the same preference data") from e
        if not isinstance(state, dict) or state.get("format") != "rlhf-photographer/human-reward-model":
            raise ValueError(f"{path}: not a human reward model file (no 'format' marker)")
        if state.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: human reward model format version {state.get('version')}, this version "
                             f"reads {FORMAT_VERSION} (its features changed); retrain it with "
                             "`photographer train-reward` on the same preference data")
        weights = backbone_weights or state["backbone_weights"]
        if state.get("pooling") != POOLING:
            raise ValueError(f"{path}: crop embeddings pooled as {state.get('pooling')!r}, this version pools "
                             f"{POOLING!r}; retrain it with `photographer train-reward` on the same preference data")
        if featurizer is None:
            featurizer = CropFeaturizer(state["backbone"], weights, device=device)
        elif featurizer.backbone_name != state["backbone"]:
            raise ValueError(f"{path}: saved for {state['backbone']}, featurizer is {featurizer.backbone_name}")
        head = RewardHead(state["head_in_dim"], state["head_hidden"])
        head.load_state_dict(state["head"])
        return cls(featurizer, FeatureNormaliser.from_state_dict(state["normaliser"]), head,
                   state["offset"], state.get("config"), state.get("metrics"), state.get("centring", "global"),
                   Members.from_state_dict(state["members"]) if state.get("members") else None)

