"""The ``"nima"`` scorer: NIMA (Talebi & Milanfar 2018), its model, and its checkpoint files.

A timm backbone, dropout, a 10-way linear layer and softmax over the vote bins 1..10;
``score = sum_i i * p_i``. It needs weights: its own checkpoints (``rayjobs/train_nima.py``) or a pyiqa
NIMA state dict (``base_model.*``, ``classifier.*``); ``"nima:<timm name>"`` names the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from rlhf.backbone import (
    DEFAULT_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneWeightsError,
    input_stats,
    load_backbone,
    preprocess,
    read_torch_file,
)
from rlhf.scorers.registry import AestheticScorer, Crops, as_crop_list, register_scorer

NIMA_BINS = 10
NIMA_FORMAT = "rlhf-nima"

# Backbones pyiqa's NIMA weights were trained with; a pyiqa file is matched against these by its keys.
PYIQA_BACKBONES = ("vgg16", "inception_resnet_v2", "mobilenetv2_100")
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class NimaModel(nn.Module):
    """NIMA: backbone → global average pool → dropout → linear(10) → softmax over the vote bins.

    layout "rlhf": the whole timm backbone without its classifier (pooled pre-logit features; for
    EfficientNet-Lite0, its 1280-channel head conv). layout "pyiqa": a timm `features_only` backbone and
    its last feature map, as pyiqa builds it, so pyiqa's state dicts load unchanged. Either way the head is
    `classifier = Sequential(Flatten, Dropout, Linear, Softmax)` (pyiqa's key names classifier.2.*).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, dropout: float = 0.75, layout: str = "rlhf",
                 backbone_weights: str | None = None):
        super().__init__()
        if layout not in ("rlhf", "pyiqa"):
            raise ValueError(f"layout must be 'rlhf' or 'pyiqa', got {layout!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.backbone_name = backbone
        self.layout = layout
        if layout == "rlhf":
            self.base_model = load_backbone(backbone, weights=backbone_weights, num_classes=0)
            in_ch = int(self.base_model.num_features)
            mean, std = input_stats(self.base_model)
        else:
            self.base_model = timm.create_model(backbone, pretrained=False, features_only=True)
            in_ch = int(self.base_model.feature_info.channels()[-1])
            inception = "inception" in backbone
            mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(p=dropout), nn.Linear(in_ch, NIMA_BINS),
                                        nn.Softmax(dim=-1))
        self.mean, self.std = tuple(mean), tuple(std)
        self.dropout = float(dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "rlhf":
            return self.base_model.forward_head(self.base_model.forward_features(x), pre_logits=True)
        return self.global_pool(self.base_model(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) → probabilities (N, 10) of the scores 1..10."""
        return self.classifier(self.features(x))


def nima_mean_score(probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Mean score sum_i i * p_i of (N, 10) bin probabilities."""
    bins = np.arange(1, NIMA_BINS + 1, dtype=np.float64)
    if isinstance(probs, torch.Tensor):
        return probs @ torch.as_tensor(bins, dtype=probs.dtype, device=probs.device)
    return np.asarray(probs, dtype=np.float64) @ bins


def _meta_state_keys(backbone: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        m = timm.create_model(backbone, pretrained=False, features_only=True)
    return {f"base_model.{k}": tuple(v.shape) for k, v in m.state_dict().items()}


def _match_pyiqa_backbone(sd: dict[str, torch.Tensor], source: str, candidates: Sequence[str]) -> str:
    want = {k: tuple(v.shape) for k, v in sd.items() if k.startswith("base_model.")}
    for name in candidates:
        try:
            have = _meta_state_keys(name)
        except RuntimeError:
            continue
        if have == want:
            return name
    raise BackboneWeightsError(
        f"{source}: a pyiqa-style NIMA state dict whose base_model.* keys match none of "
        f"{', '.join(candidates)}; name the backbone with create_scorer('nima:<timm name>', weights=...)")


def load_nima_checkpoint(path: str | Path, backbone: str | None = None) -> tuple[NimaModel, dict[str, Any]]:
    """A NimaModel from an rlhf-nima checkpoint or a pyiqa NIMA state dict, and the stored metadata.

    Raises BackboneWeightsError (a ValueError) naming the file when it is missing, unreadable, or its
    keys do not fit.
    """
    p = Path(path).expanduser()
    obj = read_torch_file(p, "NIMA checkpoint")
    if not isinstance(obj, dict):
        raise BackboneWeightsError(f"{p}: holds a {type(obj).__name__}, not a checkpoint dict")
    if obj.get("format") == NIMA_FORMAT:
        cfg = obj.get("config") or {}
        try:
            model = NimaModel(cfg["backbone"], float(cfg.get("dropout", 0.0)), cfg.get("layout", "rlhf"),
                              backbone_weights="random")
        except KeyError as e:
            raise BackboneWeightsError(f"{p}: checkpoint config lacks {e}") from e
        sd = obj.get("state_dict")
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer")}
    else:
        sd = obj.get("params", obj)  # pyiqa saves {"params": state_dict}
        if not isinstance(sd, dict) or "classifier.2.weight" not in sd:
            raise BackboneWeightsError(
                f"{p}: neither an {NIMA_FORMAT} checkpoint nor a pyiqa NIMA state dict "
                "(expected keys base_model.* and classifier.2.weight)")
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        name = backbone or _match_pyiqa_backbone(sd, str(p), PYIQA_BACKBONES)
        model = NimaModel(name, 0.0, "pyiqa")
        meta = {"format": "pyiqa", "config": {"backbone": name, "layout": "pyiqa"}}
    if not isinstance(sd, dict):
        raise BackboneWeightsError(f"{p}: checkpoint has no state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:3])})" for v, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of another shape")) if v]
        raise BackboneWeightsError(
            f"{p}: weights do not fit NIMA on {model.backbone_name} ({model.layout} layout): " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)
    cfg = meta.get("config", {})
    if "mean" in cfg and "std" in cfg:
        model.mean, model.std = tuple(cfg["mean"]), tuple(cfg["std"])
    return model.eval(), meta


def save_nima_checkpoint(path: str | Path, model: NimaModel, input_size: int, **extra: Any) -> Path:
    """Write an rlhf-nima checkpoint: the state dict with the config needed to rebuild the model."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cfg = {"backbone": model.backbone_name, "dropout": model.dropout, "layout": model.layout,
           "input_size": int(input_size), "mean": list(model.mean), "std": list(model.std)}
    tmp = p.with_suffix(p.suffix + ".tmp")
    torch.save({"format": NIMA_FORMAT, "version": 1, "config": cfg, "state_dict": model.state_dict(), **extra},
               tmp)
    tmp.replace(p)  # atomic: a crash mid-save never leaves a half-written checkpoint
    return p


class NimaScorer(AestheticScorer):
    """NIMA (Talebi & Milanfar 2018) on a timm backbone; score = the mean of the predicted distribution.

    weights: an rlhf-nima checkpoint or a pyiqa NIMA state dict. Without weights the head is untrained
    (for training only: `create_scorer("nima")` refuses that).
    """

    name = "nima"

    def __init__(self, weights: str | None = None, device: str = "cpu", *, backbone: str | None = None,
                 dropout: float = 0.75, input_size: int | None = None, batch_size: int = 32,
                 backbone_weights: str | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' asked for, but torch sees no CUDA GPU")
        if weights:
            self.model, self.meta = load_nima_checkpoint(weights, backbone)
            self.trained = True
        else:
            self.model = NimaModel(backbone or DEFAULT_BACKBONE, dropout, "rlhf", backbone_weights)
            self.meta = {}
            self.trained = False
        cfg = self.meta.get("config", {})
        default_size = 299 if "inception" in self.model.backbone_name else 224
        self.input_size = int(input_size or cfg.get("input_size") or default_size)
        self.batch_size = int(batch_size)
        self.model.to(self.device).eval()
        self.name = f"nima ({self.model.backbone_name})"

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    def distribution(self, crops: Crops) -> np.ndarray:
        items = as_crop_list(crops)
        out = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(items), self.batch_size):
                x = preprocess(items[i:i + self.batch_size], self.input_size, self.model.mean, self.model.std)
                out.append(self.model(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, NIMA_BINS))

    def score(self, crops: Crops) -> np.ndarray:
        return np.asarray(nima_mean_score(self.distribution(crops)), dtype=np.float64)


@register_scorer("nima")
def create_nima_scorer(weights: str | None = None, device: str = "cpu", **kwargs: Any) -> NimaScorer:
    """`create_scorer("nima")`: a NimaScorer that refuses to run without a trained checkpoint."""
    if not weights:
        raise ValueError(
            "the 'nima' scorer needs weights=CHECKPOINT: no NIMA weights ship offline. Train one with "
            "`python -m rayjobs.train_nima --ava AVA.txt --images DIR` or pass a pyiqa NIMA .pth; "
            "the offline default is create_scorer('default') (a proxy, not NIMA)")
    return NimaScorer(weights=weights, device=device, **kwargs)
