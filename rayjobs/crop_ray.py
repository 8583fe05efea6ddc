"""`photographer crop --ray`: the photos cropped by a Ray Data pipeline over a pool of actors.

``ray.data.from_items(paths).map_batches(CropActor, concurrency=N)``: each actor holds the policy
and its models (a Cropper) and crops a batch of photos; the driver consumes the results in order
and writes them like the single-process crop (rayjobs/crop.py), so the files and --resume are the
same. Photo paths are read by the actors: on a multi-node cluster they must lie on storage every
node mounts. Crops come back to the driver as JPEG bytes, so the run folder need not be shared.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rayjobs.cropper import Cropper, CropResult


class CropActor:
    """A Ray Data callable class: one Cropper per actor, built once, cropping batch after batch."""

    def __init__(self, settings: dict[str, Any], device: str = "cpu"):
        self.cropper = Cropper(**settings, device=device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [self.cropper.crop(str(p), str(n)) for p, n in zip(batch["path"], batch["name"], strict=True)]
        return {"record": np.array([json.dumps(r.record) for r in results], dtype=object),
                "crop_jpeg": np.array([r.crop_jpeg for r in results], dtype=object),
                "photo_thumb": np.array([r.photo_thumb for r in results], dtype=object),
                "crop_thumb": np.array([r.crop_thumb for r in results], dtype=object)}


def gpus_per_actor(requested: float) -> float:
    """requested, or (when -1) 1 GPU per actor when the cluster has GPUs, else 0."""
    import ray

    if requested >= 0:
        return float(requested)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def results_with_ray(settings: dict[str, Any], todo: Sequence[tuple[str, str]], actors: int = 2,
                     batch_size: int = 4, num_gpus_per_actor: float = -1) -> Iterator[CropResult]:
    """The photos of todo ((path, crop name) pairs) cropped by `actors` actors, each a Cropper(**settings),
    in todo's order, `batch_size` photos a batch, `num_gpus_per_actor` GPUs each (-1: see gpus_per_actor).

    Joins the cluster at RAY_ADDRESS, or a Ray already started in this process, else starts a local
    one (stopped again at the end).
    """
    import ray
    from ray.data import DataContext

    if not todo:
        return
    started = not ray.is_initialized()
    if started:
        ray.init(log_to_driver=False)
    try:
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the crop's own bar counts photos
        ctx.execution_options.preserve_order = True  # sheets and crops.jsonl in the photos' order
        gpus = gpus_per_actor(num_gpus_per_actor)
        ds = ray.data.from_items([{"path": p, "name": n} for p, n in todo])
        ds = ds.map_batches(CropActor, fn_constructor_kwargs={"settings": settings,
                                                              "device": "cuda" if gpus > 0 else "cpu"},
                            batch_size=batch_size, concurrency=actors, num_gpus=gpus or None,
                            batch_format="numpy")
        for row in ds.iter_rows():
            yield CropResult(json.loads(row["record"]), bytes(row["crop_jpeg"]), bytes(row["photo_thumb"]),
                             bytes(row["crop_thumb"]))
    finally:
        if started:
            ray.shutdown()
