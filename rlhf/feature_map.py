"""The frozen EfficientNet-Lite0's last feature map of a photo, and box features pooled from it
(RoI pooling in O(1) per box from its summed-area table).

The network loads lazily, on the first photo: importing this module loads no model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from rlhf.boxstats import box_sums, summed_area
from rlhf.images import fit_long_side

FEATURE_DIM = 1280  # EfficientNet-Lite0's last feature map: channels
FEATURE_LONG_SIDE = 320  # the photo's long side for that map (stride 32: about 10 x 7 cells)
PRECISION_ENV = "PHOTOGRAPHER_PRECISION"
PRECISIONS = ("bf16", "fp32")


@functools.cache
def feature_precision() -> str:
    """The feature map's arithmetic on a CPU: 'bf16' where the CPU computes bfloat16 natively (AVX512-BF16
    or AMX; torch's autocast), else 'fp32'. $PHOTOGRAPHER_PRECISION forces one.

    bfloat16 moves the proxy scorer's scores by about 0.02 on its 1-10 scale (their spread over a photo's
    boxes is about 1; correlation 0.999). A photo context records the precision it was made in, so a cache
    shared by machines of both kinds keeps them apart."""
    import torch

    forced = os.environ.get(PRECISION_ENV)
    if forced:
        if forced not in PRECISIONS:
            raise ValueError(f"${PRECISION_ENV} must be one of {PRECISIONS}, got {forced!r}")
        return forced
    native = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bf16" if any(f() for f in native) else "fp32"


@functools.cache
def frozen_lite0():
    """EfficientNet-Lite0 with the shipped ImageNet weights, frozen for inference (BatchNorm folded,
    rlhf.backbone.for_inference); one per process."""
    from rlhf.backbone import for_inference, load_backbone

    return for_inference(load_backbone())


def feature_map(pixels: np.ndarray, model=None) -> np.ndarray:
    """The last feature map (C, h, w) float32 of the photo at FEATURE_LONG_SIDE px, its aspect kept.

    One forward pass (about 25 ms on a CPU core); `model` defaults to the frozen shipped Lite0.
    """
    import torch

    from rlhf.backbone import input_stats

    model = model or frozen_lite0()
    mean, std = input_stats(model)
    h, w = pixels.shape[:2]
    s = FEATURE_LONG_SIDE / max(h, w)
    small = fit_long_side(pixels, FEATURE_LONG_SIDE, size=(max(32, round(w * s)), max(32, round(h * s))))
    param = next(model.parameters())
    on_cpu_bf16 = param.device.type == "cpu" and feature_precision() == "bf16"
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on_cpu_bf16):
        x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float().div_(255.0)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        x = x.to(device=param.device, dtype=param.dtype, memory_format=torch.channels_last)
        f = model.forward_features(x)[0]
    return f.float().cpu().contiguous().numpy()


def feature_sat(fmap: np.ndarray) -> np.ndarray:
    """Summed-area table (C, h + 1, w + 1) of a feature map: any box's mean feature is then four
    look-ups per channel, like RoI pooling in Fast R-CNN. Summed in float64, kept in float32: a sum
    of at most ~100 cells of values <= 6 loses nothing that matters at float32's precision."""
    return summed_area(fmap.astype(np.float64)).astype(np.float32)


def pooled_features(sat: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Mean feature over a box given as fractions of the photo (at least one cell)."""
    fh, fw = sat.shape[1] - 1, sat.shape[2] - 1
    l, t, r, b = box
    x0, y0 = min(int(l * fw), fw - 1), min(int(t * fh), fh - 1)
    x1, y1 = max(x0 + 1, min(fw, int(np.ceil(r * fw - 1e-6)))), max(y0 + 1, min(fh, int(np.ceil(b * fh - 1e-6))))
    return box_sums(sat, x0, y0, x1, y1) / ((x1 - x0) * (y1 - y0))
