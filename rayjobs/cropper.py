"""Cropping one photo for `photographer crop`: the policy and its models in a Cropper, the result as bytes.

The same Cropper runs in the crop's own process and in each Ray Data actor (rayjobs/crop_ray.py);
its results are plain bytes and a JSON-able record, so they travel between processes as they are.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from rlhf.contact_sheet import COLORS, MAX_WIDTH, PAD, draw_box
from rlhf.context import context_of, store
from rlhf.images import Box, ImageLoadError, Photo, clip_box, resize

SHEET_HEIGHT = 200  # px: height of each picture on a contact sheet


@dataclass
class CropResult:
    """A photo's journal record, its crop as JPEG and its two contact-sheet pictures as JPEG (not for errors)."""

    record: dict[str, Any]
    crop_jpeg: bytes = b""
    photo_thumb: bytes = b""
    crop_thumb: bytes = b""


def jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def unjpeg(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def sheet_pictures(photo: Photo, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The photo with its box (photo pixels) drawn and the crop, each SHEET_HEIGHT px tall (narrower than
    a page), from the photo's working pixels: a page shows them small."""
    room = MAX_WIDTH - 2 * PAD
    ctx = context_of(photo)
    pixels = ctx.work
    box = clip_box([v * ctx.scale for v in box], pixels.shape[1], pixels.shape[0])

    def fit(px: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = px.shape[:2]
        s = min(SHEET_HEIGHT / h, room / w)
        return resize(px, (max(1, round(w * s)), max(1, round(h * s)))), s

    small, s = fit(pixels)
    drawn = draw_box(small, [round(v * s) for v in box], COLORS[0])
    return drawn, fit(pixels[box[1]:box[3], box[0]:box[2]])[0]


class Cropper:
    """The policy and its models, cropping one photo at a time (in this process, or in each Ray Data actor).

    With ``human_reward_model`` the policy is steered by it (CropPolicy.steered: it chooses each photo's crop
    among the policy's candidates, at weight ``w_human``, among those keeping ``photo_min_kept``); a fine-tuned
    policy's crops are held to that floor against its bootstrap's (CropPolicy.floored). The journal gives each
    photo's weight."""

    def __init__(self, policy: str, scorer: str = "default", scorer_weights: str | None = None,
                 score: bool = True, deterministic: bool = True, seed: int = 0, device: str = "cpu",
                 write_crops: bool = True, human_reward_model: str | None = None, w_human: float = 1.0,
                 photo_min_kept: float = 0.0):
        # oneDNN keeps compiled kernels per input shape (1024 by default); every photo's aspect is a new
        # shape for the backbone, so the default lets a long crop grow by a few hundred MB. A bfloat16
        # backbone pass (rlhf.feature_map.feature_precision) needs about 100 of them: fewer than that
        # recompiles every photo. Read lazily, at the first convolution, so setting it here still counts.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
        from rlhf.policy import CropPolicy

        self.policy = CropPolicy.load(policy)
        if human_reward_model:  # the few-pairs path: the reward model chooses among the policy's crops
            self.policy = self.policy.steered(human_reward_model, w_human, photo_min_kept)
        else:
            self.policy = self.policy.floored(photo_min_kept)
        if self.policy.reward and device != "cpu":
            self.policy.reward = {**self.policy.reward, "device": device}  # the lookahead's models on the GPU
        self.scorer_name, self.scorer_weights, self.device = scorer, scorer_weights, device
        self.score, self.deterministic, self.seed, self.write_crops = score, deterministic, seed, write_crops
        self.env: Any = None
        self.scorer: Any = None

    def _setup(self, photo: Photo) -> None:
        from rlhf.evaluation import policy_env
        from rlhf.scorers import create_scorer

        self.env = policy_env(self.policy, [photo])
        if self.score:
            # The lookahead's own scorer when it is the one asked for: one set of models, one context per photo.
            same = getattr(getattr(self.env.reward_fn, "spec", None), "scorer", None) == self.scorer_name and \
                self.env.reward_fn.spec.scorer_weights == self.scorer_weights
            self.scorer = self.env.reward_fn.scorer if same and getattr(self.env.reward_fn, "scorer", None) \
                else create_scorer(self.scorer_name, weights=self.scorer_weights, device=self.device)

    def box(self, photo: Photo, path: str) -> Box:
        """The policy's final box on the photo."""
        if self.env is None:
            self._setup(photo)
        self.env.photos = [photo]
        rng = np.random.default_rng([self.seed, zlib.crc32(path.encode())])
        return tuple(int(v) for v in self.policy.rollout(self.env, 0, self.deterministic, rng)[-1])

    def crop(self, path: str, name: str) -> CropResult:
        """Crop the photo at path (its crop file to be `<name>_crop.jpg`); a record of the error if unusable."""
        try:
            photo = Photo.from_path(path)
            fallbacks = self.policy.fallbacks
            box = self.box(photo, path)
            pixels = photo.pixels if self.write_crops else None  # full resolution only for the crop file
        except ImageLoadError as e:
            return CropResult({"image": path, "error": e.reason})
        record: dict[str, Any] = {"image": path, "box": list(box), "size": [photo.width, photo.height]}
        if self.policy.floor is not None or self.policy.steering is not None:
            record["w_human"] = self.policy.last_weight  # the weight this photo's crop was chosen at
        if self.policy.fallbacks > fallbacks:  # the photo kept its reference policy's crop
            record[self.policy.fallback] = True
        if self.score:
            record["score"] = round(float(self.scorer.score_boxes(photo, [box])[0]), 4)
            record["whole_photo_score"] = round(float(self.scorer.score_boxes(photo, [photo.full_box])[0]), 4)
        if pixels is not None:
            record["crop"] = f"{name}_crop.jpg"
        drawn, crop = sheet_pictures(photo, box)
        l, t, r, b = box
        crop_file = jpeg(pixels[t:b, l:r]) if pixels is not None else b""
        result = CropResult(record, crop_file, jpeg(drawn, 90), jpeg(crop, 90))
        # A crop visits each photo once: contexts kept after it only grow memory with the library.
        store().forget()
        return result


