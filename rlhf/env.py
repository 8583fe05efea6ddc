"""CropEnv: a crop box on a grid over a photo collection, in the manner of A2-RL (Li et al. 2018).

An episode starts from the whole photo (or the largest box of the locked aspect ratio) and
takes discrete actions that shrink, move, squash or stretch the box by one grid step, until
the agent stops, the step cap is reached, or an action would make the box smaller than the
minimum area. Reward is dense: the change of the crop's score, so an episode's return is
``score(final crop) - score(start)`` (less a small cost per action that changes nothing) and the
agent is paid for improvement only.

Why a grid: a coarse action set keeps the policy's job small (14 actions) and makes boxes
recur, so the scoring cache hits often. Why 10 steps per side and a cap of 10 steps: at a tenth
of the photo per step, a step changes the score by more than the scorer's local noise and a good
crop is 2-4 decisions away instead of 5-8, so PPO's credit assignment is easier. `--grid 20` gives
finer crops from longer training.

The photo's framings (rlhf.images.augmented_variants), colour cues (rlhf.boxstats) and pooled
Lite0 features (rlhf.feature_map) are computed by their own modules from the photo's context
(rlhf.context: computed once per photo, kept on disk); this one composes them into the observation.
Photos are listed lazily: an env holds paths, never the collection's pixels.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from rlhf.boxstats import colour_cues, colour_sat, framing_cues, moment_sat, same_box, spectral_residual
from rlhf.context import PhotoContext, context_of
from rlhf.feature_map import FEATURE_DIM, feature_sat, pooled_features
from rlhf.images import (
    Box,
    ImageLoadError,
    Photo,
    augmented_variants,
    clip_box,
    fit_long_side,
    load_collection,
    resize,
)

log = logging.getLogger(__name__)

ASPECTS = {"free": None, "1:1": 1.0, "4:3": 4 / 3, "3:2": 3 / 2, "16:9": 16 / 9}
SALIENCY_MAPS = ("spectral", "subject")  # what the saliency channel shows: see CropEnv
FEATURES = ("none", "lite0")  # pretrained features the policy sees besides its thumbnails: see CropEnv


class Action(enum.IntEnum):
    STOP = 0
    SHRINK = 1
    SHRINK_TOP_LEFT = 2
    SHRINK_TOP_RIGHT = 3
    SHRINK_BOTTOM_LEFT = 4
    SHRINK_BOTTOM_RIGHT = 5
    LEFT = 6
    RIGHT = 7
    UP = 8
    DOWN = 9
    SQUASH_X = 10
    STRETCH_X = 11
    SQUASH_Y = 12
    STRETCH_Y = 13


# (dl, dt, dr, db) in grid steps, for each action but STOP.
_DELTAS = {
    Action.SHRINK: (1, 1, -1, -1),
    Action.SHRINK_TOP_LEFT: (0, 0, -1, -1),
    Action.SHRINK_TOP_RIGHT: (1, 0, 0, -1),
    Action.SHRINK_BOTTOM_LEFT: (0, 1, -1, 0),
    Action.SHRINK_BOTTOM_RIGHT: (1, 1, 0, 0),
    Action.LEFT: (-1, 0, -1, 0),
    Action.RIGHT: (1, 0, 1, 0),
    Action.UP: (0, -1, 0, -1),
    Action.DOWN: (0, 1, 0, 1),
    Action.SQUASH_X: (1, 0, -1, 0),
    Action.STRETCH_X: (-1, 0, 1, 0),
    Action.SQUASH_Y: (0, 1, 0, -1),
    Action.STRETCH_Y: (0, -1, 0, 1),
}
# With a locked aspect ratio an axis cannot change alone: squash/stretch zoom the whole box.
_LOCKED_DELTAS = {
    **_DELTAS,
    Action.SQUASH_X: (1, 1, -1, -1),
    Action.SQUASH_Y: (1, 1, -1, -1),
    Action.STRETCH_X: (-1, -1, 1, 1),
    Action.STRETCH_Y: (-1, -1, 1, 1),
}

RewardFn = Callable[[Photo, Sequence[Box]], np.ndarray]
"""Scores boxes of one photo; higher is better, about [0, 1]. See rlhf.reward."""


@dataclass
class CropEnvConfig:
    """The crop environment; every field is also an RLlib env_config key.

    A field with ``fixed_by_policy`` in its metadata changes what the policy observes: a trained
    policy is tied to its value.
    """

    images: list[str] = field(default_factory=list, metadata={
        "help": "photos: files, folders or globs", "aliases": ("image",)})
    grid: int = field(default=10, metadata={
        "help": "grid steps per side: one action moves a side by 1/grid of the photo", "fixed_by_policy": True})
    max_steps: int = field(default=10, metadata={"help": "step cap per episode"})
    min_area: float = field(default=0.25, metadata={"help": "smallest crop, as a fraction of the photo's area"})
    aspect: str = field(default="free", metadata={"help": "aspect-ratio lock", "choices": list(ASPECTS)})
    obs_size: int = field(default=64, metadata={
        "help": "side of the photo and crop thumbnails the policy sees", "fixed_by_policy": True})
    augment_variants: int = field(
        default=0, metadata={"help": "per photo, this many fixed random sub-photos/mirrors also used as "
                             "training photos (more variety from few photos; 0 = off)"})
    max_aspect: float = field(default=3.0, metadata={"help": "longest/shortest side limit (pixels): actions "
                                                     "that would make a sliver are refused"})
    noop_penalty: float = field(
        default=0.005, metadata={"help": "cost of an action that leaves the box unchanged (a blocked move): "
                                 "without it, idling at the border is as good as stopping"})
    random_start: float = field(
        default=0.0, metadata={"help": "share of episodes that start from a random box instead of the whole "
                               "photo (exploring starts for training: the policy learns to repair bad "
                               "framings, so stopping at once is no longer a safe habit)"})
    saliency: str = field(
        default="spectral", metadata={"help": "the saliency channel and framing cues: 'subject' (spectral + "
                                     "fine-grained saliency, the frozen Lite0's class-activation map, heads: "
                                     "where the subject is) or 'spectral' (spectral residual only, no network)",
                                     "choices": list(SALIENCY_MAPS), "fixed_by_policy": True})
    box_mask: bool = field(
        default=False, metadata={"help": "a fifth channel on the photo thumbnail marks the box (255 inside): "
                                 "the conv tower then sees where the crop lies on the photo's content, "
                                 "rather than the MLP having to relate four numbers to a feature map",
                                 "fixed_by_policy": True})
    features: str = field(
        default="none", metadata={"help": "'lite0': the frozen EfficientNet-Lite0's ImageNet features of the crop "
                                  "and of the whole photo (pooled from one feature map per photo) join the "
                                  "observation, as A2-RL feeds its policy pretrained features; 'none': "
                                  "thumbnails, box and cues only", "choices": list(FEATURES), "fixed_by_policy": True})
    colour_cues: bool = field(
        default=False, metadata={"help": "colour cues join the box vector: the crop's brightness, warmth (R - B) and "
                                 "green-magenta balance, and how the strip one grid step outside and inside each "
                                 "edge differs from it: what moving or shrinking that edge brings in or gives "
                                 "up (see colour_cues)", "fixed_by_policy": True})
    lookahead: bool = field(
        default=False, metadata={"help": "the change of the objective each of the 13 moves would bring joins the box "
                                 "vector (see CropEnv): the policy sees what each move pays instead of having to "
                                 "learn the reward's rule from its training photos; crop/pairs/evaluate then score "
                                 "with the policy's own reward", "fixed_by_policy": True})
    # A run sets it from its --seed (PPOSettings.seed): one seed per run.
    seed: int = field(default=0, metadata={"help": "seed for photo order and augmentation", "cli": False})

    @classmethod
    def fixed_by_policy(cls) -> tuple[str, ...]:
        """The settings a trained policy is tied to (they change what it observes)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("fixed_by_policy"))

    def __post_init__(self) -> None:
        if self.grid < 4:
            raise ValueError(f"grid must be >= 4, got {self.grid}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if not 0.01 <= self.min_area <= 1.0:
            raise ValueError(f"min_area must be in [0.01, 1], got {self.min_area}")
        if self.aspect not in ASPECTS:
            raise ValueError(f"aspect must be one of {list(ASPECTS)}, got {self.aspect!r}")
        if self.max_aspect < 1.0:
            raise ValueError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0.0 <= self.random_start <= 1.0:
            raise ValueError(f"random_start must be in [0, 1], got {self.random_start}")
        if self.obs_size < 16:
            raise ValueError(f"obs_size must be >= 16, got {self.obs_size}")
        if self.saliency not in SALIENCY_MAPS:
            raise ValueError(f"saliency must be one of {SALIENCY_MAPS}, got {self.saliency!r}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")


BOX_FEATURES = 13  # box (4), steps used (1), saliency framing cues (8): see CropEnv
COLOUR_CUES = 27  # the crop's colour (3), each edge's outer and inner strip against it (8 x 3): see boxstats.colour_cues
LOOKAHEAD = len(Action) - 1  # one per move: see CropEnv
# One-step changes of the objective are about 0.005-0.05 (a tenth of the photo moves the score little):
# x10 spreads them over a tenth to half of the cue's range either side of 0.5.
LOOKAHEAD_SCALE = 10.0


def observation_space(obs_size: int, box_mask: bool = False, features: str = "none",
                      colour_cues: bool = False, lookahead: bool = False) -> gym.spaces.Dict:
    """CropEnv's observation space for thumbnails of side `obs_size` (policies are checked against it)."""
    s, c = int(obs_size), 5 if box_mask else 4
    spaces = {
        "photo": gym.spaces.Box(0, 255, (s, s, c), np.uint8),
        "crop": gym.spaces.Box(0, 255, (s, s, c), np.uint8),
        "box": gym.spaces.Box(0.0, 1.0, (BOX_FEATURES + (COLOUR_CUES if colour_cues else 0)
                                         + (LOOKAHEAD if lookahead else 0),), np.float32),
    }
    if features != "none":
        # Lite0's feature map ends in ReLU6: every pooled value lies in [0, 6].
        spaces["feat"] = gym.spaces.Box(0.0, 6.0, (2 * FEATURE_DIM,), np.float32)
    return gym.spaces.Dict(spaces)


def _framing_cues(sat: np.ndarray, box: Box) -> np.ndarray:
    """The box's saliency framing cues (see CropEnv) from the photo's moment table (boxstats.moment_sat)."""
    l, t, r, b = box
    h, w = sat.shape[1] - 1, sat.shape[2] - 1
    cues = framing_cues(sat, l, t, r, b)
    area = (r - l) * (b - t) / (h * w)
    return np.array([cues.kept, area, cues.cx, cues.cy, *(cues.edges / 4)])


def saliency_channel(rgb: np.ndarray) -> np.ndarray:
    """Spectral-residual saliency (boxstats.spectral_residual) as uint8, blurred, scaled to its max."""
    m = spectral_residual(rgb, blur_sigma=max(1.0, 0.03 * max(rgb.shape[:2])))
    if m is None:
        return np.zeros(rgb.shape[:2], np.uint8)
    return np.clip(m / max(float(m.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)


def subject_channel(photo: Photo, like: np.ndarray) -> np.ndarray:
    """The proxy scorer's subject map of the photo (rlhf.scorers.subject_map) as uint8 at `like`'s size."""
    from rlhf.scorers import subject_map  # lazy: the env stays importable without loading a network

    m = subject_map(photo).astype(np.float32)
    m = cv2.resize(m, (like.shape[1], like.shape[0]), interpolation=cv2.INTER_LINEAR)
    return np.clip(m / max(float(m.max()), 1e-6) * 255.0, 0, 255).astype(np.uint8)


class CropEnv(gym.Env):
    """Gymnasium env: observe the photo, the current crop and the box; act on the box.

    Observation (Dict):
      photo: uint8 (S, S, 4), the whole photo resized, RGB + a saliency channel (+ with box_mask a
             fifth channel, 255 inside the box);
      crop: uint8 (S, S, 4), the current crop, the same channels (its box channel all 255);
      box: float32 (13,), [left, top, right, bottom] as fractions of the photo, steps used / cap, then
           framing cues from the saliency map: share of the photo's saliency inside the box, the box's
           area, the saliency centroid inside the box (x, y as fractions of the box), and the saliency
           density of a thin strip inside each edge (left, top, right, bottom; /4, clipped): high
           means the edge cuts through the subject. With colour_cues, 27 more (boxstats.colour_cues): the
           crop's brightness, warmth and green-magenta balance, and how the strip one grid step
           beyond and inside each edge differs from it. With lookahead, 13 more (after those): for each
           move (SHRINK ... STRETCH_Y), 0.5 + 10 x the change of the objective it would bring, clipped to
           [0, 1]; 0.5 for a move that changes nothing (blocked, or below the minimum size).
      feat (with features="lite0"): float32 (2560,), the frozen EfficientNet-Lite0's last feature map
           of the photo (ImageNet weights, 320 px), averaged over the box, then over the whole photo:
           what the crop and the scene hold, in features pretrained on far more photos than ours.

    The saliency channel is a hint of where the subject is, computed once per photo. By default
    (`saliency="spectral"`) it is OpenCV's spectral residual: no network, under a millisecond.
    `saliency="subject"` shows the subject map of rlhf.scorers instead: spectral-residual and
    fine-grained saliency, the class-activation map of the frozen EfficientNet-Lite0 (ImageNet
    weights, as A2-RL feeds its policy frozen VGG features) and heads; the default (proxy) scorer
    computes its composition terms from that same map. It is the better hint of where the subject
    is, but it costs ~40 ms per new photo and did not make held-out crops of stage 1 better
    (docs/experiments.md), so it is opt-in.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, config: dict[str, Any] | CropEnvConfig | None = None,
                 reward_fn: RewardFn | None = None, photos: Sequence[Photo] | None = None):
        config = dict(config or {}) if not isinstance(config, CropEnvConfig) else config.__dict__.copy()
        reward_spec = config.pop("reward", None)
        known = {k: v for k, v in config.items() if k in CropEnvConfig.__dataclass_fields__}
        self.cfg = CropEnvConfig(**known)
        if reward_fn is None:
            from rlhf.reward import AESTHETIC, build_reward  # lazy: keeps env importable without torch models

            reward_fn = build_reward(reward_spec or {"kind": AESTHETIC})
        self.reward_fn = reward_fn
        if photos is None:
            if not self.cfg.images:
                raise ValueError("CropEnv needs photos: set config['images'] or pass photos=")
            # Headers only: the driver listed the photos; one that fails to decode is skipped at reset.
            photos = load_collection(self.cfg.images, check=False)
        rng = np.random.default_rng(self.cfg.seed)
        self.photos: list[Photo] = list(photos)
        if self.cfg.augment_variants:
            for p in list(self.photos):
                self.photos.extend(augmented_variants(p, self.cfg.augment_variants, rng))
        self.ratio = ASPECTS[self.cfg.aspect]
        self.observation_space = observation_space(self.cfg.obs_size, self.cfg.box_mask, self.cfg.features,
                                                   self.cfg.colour_cues, self.cfg.lookahead)
        self.action_space = gym.spaces.Discrete(len(Action))
        self.photo: Photo = self.photos[0]
        self.box = np.array([0.0, 0.0, 1.0, 1.0])
        self.steps = 0
        self.score = 0.0
        self.explored_start = False
        self._ahead: dict[Action, float] = {}  # lookahead: each move's score from the current box
        self._order = np.arange(len(self.photos))
        self._cursor = len(self.photos)
        self._unusable: set[int] = set()
        self._context: PhotoContext | None = None

    # -- geometry ------------------------------------------------------------------------------
    def pixel_box(self, box: np.ndarray | None = None) -> Box:
        l, t, r, b = self.box if box is None else box
        w, h = self.photo.width, self.photo.height
        return clip_box((l * w, t * h, r * w, b * h), w, h)

    def _initial_box(self) -> np.ndarray:
        if self.ratio is None:
            return np.array([0.0, 0.0, 1.0, 1.0])
        return self._project(np.array([0.0, 0.0, 1.0, 1.0]))

    def _random_box(self) -> np.ndarray:
        g = self.cfg.grid
        while True:
            w, h = self.np_random.integers(g // 2, g + 1, size=2)
            aspect = (w * self.photo.width) / (h * self.photo.height)
            if w * h >= self.cfg.min_area * g * g and max(aspect, 1 / aspect) <= self.cfg.max_aspect:
                break
        x, y = self.np_random.integers(0, g - w + 1), self.np_random.integers(0, g - h + 1)
        box = np.array([x, y, x + w, y + h], dtype=float) / g
        return self._project(box) if self.ratio else box

    def _project(self, box: np.ndarray) -> np.ndarray:
        """Fit the box to the locked aspect ratio about its centre, inside the photo."""
        w_px, h_px = self.photo.width, self.photo.height
        l, t, r, b = box
        cx, cy = (l + r) / 2, (t + b) / 2
        w = r - l
        h = w * w_px / (self.ratio * h_px)
        if h > 1.0:
            h, w = 1.0, self.ratio * h_px / w_px
        cx = min(max(cx, w / 2), 1 - w / 2)
        cy = min(max(cy, h / 2), 1 - h / 2)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    def _too_small(self, box: np.ndarray) -> bool:
        return (box[2] - box[0]) * (box[3] - box[1]) < self.cfg.min_area - 1e-9

    def moves(self) -> dict[Action, np.ndarray]:
        """Each action that would change the box without ending the episode, and the box it leads to
        (the moves `step` applies: not STOP, not refused, not below the minimum size)."""
        moves = {}
        for action in Action:
            if action != Action.STOP:
                new = self._apply(action)
                if not self._too_small(new) and not same_box(new, self.box):
                    moves[action] = new
        return moves

    def _apply(self, action: Action) -> np.ndarray:
        deltas = (_LOCKED_DELTAS if self.ratio else _DELTAS)[action]
        step = 1.0 / self.cfg.grid
        new = self.box + np.array(deltas, dtype=float) * step
        if action in (Action.LEFT, Action.RIGHT, Action.UP, Action.DOWN):
            # A move that would leave the photo is blocked rather than shrinking the box.
            if new.min() < -1e-9 or new.max() > 1 + 1e-9:
                return self.box.copy()
        new = np.clip(new, 0.0, 1.0)
        if self.ratio:
            new = self._project(new)
        w_px = (new[2] - new[0]) * self.photo.width
        h_px = (new[3] - new[1]) * self.photo.height
        if w_px <= 0 or h_px <= 0 or max(w_px / h_px, h_px / w_px) > self.cfg.max_aspect + 1e-9:
            return self.box.copy()  # refused like a blocked move: slivers are not crops
        return np.round(new, 9)

    # -- gym API ---------------------------------------------------------------------------------
    def _thumbs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """The photo at obs size, a 4x larger copy to cut crop thumbnails from, and its tables.

        Cutting the crop from the small copy instead of the full photo makes each step's
        resize ~20x cheaper; a crop is at least half the photo's side, so it keeps >= 2x the
        pixels the thumbnail needs. Kept with the photo's context.
        """
        key = ("env", self.cfg.obs_size, self.cfg.saliency, self.cfg.colour_cues)
        return self._context.derived(key, self._build_thumbs)

    def _build_thumbs(self, ctx: PhotoContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        s = self.cfg.obs_size
        big = fit_long_side(ctx.work, 4 * s)
        sal = saliency_channel(big) if self.cfg.saliency == "spectral" else subject_channel(self.photo, big)
        big = np.concatenate([big, sal[..., None]], axis=2)
        colour = colour_sat(big) if self.cfg.colour_cues else None
        return (resize(big, s), big, moment_sat(sal), colour)

    def _obs(self) -> dict[str, np.ndarray]:
        s = self.cfg.obs_size
        small, big, sat, colour = self._thumbs()
        l, t, r, b = self.box
        h, w = big.shape[:2]
        l, t, r, b = clip_box((l * w, t * h, r * w, b * h), w, h)
        parts = [self.box, [self.steps / self.cfg.max_steps], _framing_cues(sat, (l, t, r, b))]
        if colour is not None:
            parts.append(colour_cues(colour, (l, t, r, b), self.cfg.grid))
        if self.cfg.lookahead:
            parts.append(self._lookahead())
        vec = np.concatenate(parts)
        crop = resize(big[t:b, l:r], s)
        if self.cfg.box_mask:
            # The photo's mask shows the box; the crop's is all inside (one tower reads both).
            mask = np.zeros((s, s, 1), np.uint8)
            bl, bt, br, bb = (int(round(v * s)) for v in self.box)
            mask[bt:max(bb, bt + 1), bl:max(br, bl + 1)] = 255
            small = np.concatenate([small, mask], axis=2)
            crop = np.concatenate([crop, np.full((s, s, 1), 255, np.uint8)], axis=2)
        obs = {"photo": small, "crop": crop, "box": np.clip(vec, 0.0, 1.0).astype(np.float32)}
        if self.cfg.features != "none":
            sat = self._context.derived("feature_sat", lambda c: feature_sat(c.fmap))
            feat = np.concatenate([pooled_features(sat, self.box), pooled_features(sat, (0.0, 0.0, 1.0, 1.0))])
            obs["feat"] = np.clip(feat, 0.0, 6.0).astype(np.float32)
        return obs

    def _lookahead(self) -> np.ndarray:
        """Each move's change of the objective (scaled, about 0.5), scored in one batch.

        Why: without it stage 3 fits its training photos rather than learning what the reward model
        pays for (greedy search on its objective beats it on unseen photos). With the change in view
        the policy learns how to weigh it, which carries to photos it never saw.
        """
        moves = self.moves()
        scores = self.reward_fn(self.photo, [self.pixel_box(b) for b in moves.values()]) if moves else []
        self._ahead = {a: float(s) for a, s in zip(moves, scores, strict=True)}
        cue = np.full(LOOKAHEAD, 0.5)
        for a, s in self._ahead.items():
            cue[a - 1] = 0.5 + LOOKAHEAD_SCALE * (s - self.score)
        return np.clip(cue, 0.0, 1.0)

    def _score(self, box: np.ndarray) -> float:
        return float(self.reward_fn(self.photo, [self.pixel_box(box)])[0])

    def _info(self) -> dict[str, Any]:
        return {"photo": self.photo.id, "box": list(self.pixel_box()), "score": self.score,
                "steps": self.steps, "random_start": self.explored_start}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._cursor = len(self._order)  # a new seed starts a new pass, so resets are reproducible
        options = options or {}
        if "photo_index" in options:
            self.photo = self.photos[int(options["photo_index"])]
            self._context = context_of(self.photo)
        else:
            self._next_photo()
        explore = options.get("random_start", self.cfg.random_start)
        self.explored_start = bool(explore and self.np_random.random() < explore)
        self.box = self._random_box() if self.explored_start else self._initial_box()
        self.steps = 0
        self._ahead = {}
        self.score = self._score(self.box)
        self.start_score = self.score
        return self._obs(), self._info()

    def _next_photo(self) -> None:
        """The next usable photo of a shuffled pass (every photo is seen equally often); a photo that
        cannot be decoded is logged once and left out from then on."""
        while len(self._unusable) < len(self.photos):
            if self._cursor >= len(self._order):
                self._order = self.np_random.permutation(len(self.photos))
                self._cursor = 0
            i = int(self._order[self._cursor])
            self._cursor += 1
            if i in self._unusable:
                continue
            try:
                self._context = context_of(self.photos[i])
            except ImageLoadError as e:
                log.warning("skipped %s: %s", e.path, e.reason)
                self._unusable.add(i)
                continue
            self.photo = self.photos[i]
            return
        raise ImageLoadError(str(self.cfg.images), f"none of the {len(self.photos)} photos can be decoded")

    def step(self, action: int):
        action = Action(int(action))
        self.steps += 1
        terminated = False
        reward = 0.0
        if action == Action.STOP:
            terminated = True
        else:
            new = self._apply(action)
            if self._too_small(new):
                terminated = True  # the minimum size ends the episode; the box stays valid
            elif same_box(new, self.box):
                reward = -self.cfg.noop_penalty
            else:
                self.box = new
                new_score = self._ahead[action] if action in self._ahead else self._score(new)
                reward = new_score - self.score
                self.score = new_score
        truncated = not terminated and self.steps >= self.cfg.max_steps
        return self._obs(), float(reward), terminated, truncated, self._info()

    def render(self) -> np.ndarray:
        from rlhf.contact_sheet import draw_box

        return draw_box(self.photo.pixels, self.pixel_box())
