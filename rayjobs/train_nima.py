"""Train a NIMA aesthetic scorer on AVA-format data (Talebi & Milanfar 2018, EMD loss with r = 2).

    python -m rayjobs.train_nima --ava AVA.txt --images DIR --out results/nima-run

AVA.txt lines are ``index image_id c1 .. c10 tag1 tag2 challenge_id`` (c_i = votes for score i); images are
``DIR/<image_id>.jpg``. Missing or unreadable images are skipped with a warning; a malformed line is an
error naming the file and line. The run folder gets config.json, progress.csv (one row per epoch),
curves.png, checkpoints/last.pth (resumable: model, optimiser, epoch, history) and nima.pth (the best
epoch by validation EMD), which `rlhf.scorers.create_scorer("nima", weights=...)` loads.

Plain PyTorch on one device (CUDA with autocast when available); Ray is not needed for one model on one
GPU. On the CPU it is slow beyond toy sizes: use the GPU machine for real AVA training.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlhf.backbone import DEFAULT_BACKBONE, preprocess
from rlhf.config import parse_config, run_dir, save_config
from rlhf.images import ImageLoadError, load_image, resize
from rlhf.scorers import NimaModel, nima_mean_score, save_nima_checkpoint

STAGE = "nima"


@dataclass
class TrainNimaConfig:
    """Train a NIMA aesthetic scorer on AVA-format votes (EMD loss)."""

    ava: str = field(default="", metadata={"help": "AVA.txt: 'index image_id c1..c10 tag1 tag2 challenge' lines"})
    images: str = field(default="", metadata={"help": "folder holding <image_id>.jpg"})
    out: str | None = field(default=None, metadata={"help": "run folder (default results/nima-<time>)"})
    backbone: str = field(default=DEFAULT_BACKBONE, metadata={"help": "timm backbone name"})
    backbone_weights: str | None = field(default=None, metadata={
        "help": "backbone state dict; default: the shipped ImageNet weights (efficientnet_lite0 only); "
                "'random' for none"})
    input_size: int = field(default=224, metadata={"help": "square input side in pixels"})
    epochs: int = field(default=10, metadata={"help": "epochs to train (total, counting resumed ones)"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr_backbone: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the backbone"})
    lr_head: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the 10-way head"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    dropout: float = field(default=0.75, metadata={"help": "dropout before the head (NIMA paper: 0.75)"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of images held out for validation"})
    max_images: int | None = field(default=None, metadata={"help": "use only the first N usable lines"})
    max_steps_per_epoch: int | None = field(default=None, metadata={"help": "cap on steps per epoch"})
    num_workers: int = field(default=2, metadata={"help": "data loader worker processes"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    amp: bool = field(default=True, metadata={"help": "autocast (bf16/fp16) on CUDA"})
    resume: bool = field(default=True, metadata={"help": "continue from <out>/checkpoints/last.pth if present"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the order and the augmentation"})

    def __post_init__(self) -> None:
        if not self.ava:
            raise ValueError("--ava is required (the AVA.txt votes file)")
        if not self.images:
            raise ValueError("--images is required (the folder of <image_id>.jpg)")
        for name in ("input_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.input_size < 32:
            raise ValueError(f"--input_size must be >= 32, got {self.input_size}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"--val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("lr_backbone", "lr_head", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class AvaItem:
    image_id: str
    path: Path
    dist: np.ndarray  # (10,) vote shares


def read_ava(ava: str | Path, images: str | Path, max_images: int | None = None) -> list[AvaItem]:
    """Parse AVA.txt; keep lines whose image exists and has votes (warn about the rest)."""
    ava_p, img_dir = Path(ava), Path(images)
    if not ava_p.is_file():
        raise FileNotFoundError(f"{ava_p}: no such AVA votes file")
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{img_dir}: no such images folder")
    items: list[AvaItem] = []
    missing, no_votes = [], []
    with ava_p.open() as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 12:
                raise ValueError(f"{ava_p}:{lineno}: expected 'index image_id c1..c10 ...', got {line.strip()!r}")
            try:
                votes = np.array([float(v) for v in parts[2:12]])
            except ValueError as e:
                raise ValueError(f"{ava_p}:{lineno}: vote counts c1..c10 must be numbers ({e})") from e
            if (votes < 0).any() or not np.isfinite(votes).all():
                raise ValueError(f"{ava_p}:{lineno}: vote counts must be finite and >= 0")
            image_id = parts[1]
            if votes.sum() <= 0:
                no_votes.append(image_id)
                continue
            path = img_dir / f"{image_id}.jpg"
            if not path.is_file():
                missing.append(image_id)
                continue
            items.append(AvaItem(image_id, path, votes / votes.sum()))
            if max_images is not None and len(items) >= max_images:
                break
    if missing:
        warnings.warn(f"{ava_p}: skipping {len(missing)} line(s) whose image is missing in {img_dir} "
                      f"(e.g. {', '.join(missing[:5])})", stacklevel=2)
    if no_votes:
        warnings.warn(f"{ava_p}: skipping {len(no_votes)} line(s) with no votes (e.g. {', '.join(no_votes[:5])})",
                      stacklevel=2)
    if not items:
        raise ValueError(f"{ava_p}: no usable line (image present in {img_dir} and votes > 0)")
    return items


def split(items: list[AvaItem], val_fraction: float, seed: int) -> tuple[list[AvaItem], list[AvaItem]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(len(items) - 1, max(1, round(val_fraction * len(items)))) if val_fraction > 0 else 0
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


class AvaDataset(torch.utils.data.Dataset):
    """Images as normalised tensors with their vote distributions; unreadable images yield None.

    Training augmentation as in the NIMA paper: resize to 256/224 of the input size, random crop, random
    horizontal flip. Validation: resize to the input size.
    """

    def __init__(self, items: list[AvaItem], input_size: int, mean: tuple, std: tuple, train: bool, seed: int):
        self.items, self.size, self.mean, self.std, self.train = items, input_size, mean, std, train
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        item = self.items[i]
        try:
            img = load_image(item.path)
        except ImageLoadError as e:
            warnings.warn(f"skipping unreadable image {e}", stacklevel=2)
            return None
        if self.train:
            big = round(self.size * 256 / 224)
            img = resize(img, big)
            y, x = self.rng.integers(0, big - self.size + 1, size=2)
            img = img[y:y + self.size, x:x + self.size]
            if self.rng.random() < 0.5:
                img = img[:, ::-1]
        x = preprocess([np.ascontiguousarray(img)], self.size, self.mean, self.std)[0]
        return x, torch.as_tensor(item.dist, dtype=torch.float32)


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def emd_loss(p: torch.Tensor, q: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Earth mover's distance between (N, 10) distributions over ordered bins, averaged over the batch:
    (mean_k |CDF_p(k) - CDF_q(k)|^r)^(1/r) per sample (NIMA's loss, r = 2)."""
    d = torch.cumsum(p, dim=-1) - torch.cumsum(q, dim=-1)
    return (d.abs().pow(r).mean(dim=-1)).pow(1.0 / r).mean()


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    # average the ranks of ties
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def correlations(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """(Pearson LCC, Spearman SRCC) of predicted and true mean scores; NaN when undefined."""
    if len(pred) < 2 or np.std(pred) == 0 or np.std(true) == 0:
        return float("nan"), float("nan")
    lcc = float(np.corrcoef(pred, true)[0, 1])
    srcc = float(np.corrcoef(_ranks(pred), _ranks(true))[0, 1])
    return lcc, srcc


def _device(cfg: TrainNimaConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast(device.type, enabled=False)


def _evaluate(model: NimaModel, loader, device: torch.device, amp: bool) -> dict[str, float]:
    model.eval()
    losses, preds, trues, n = 0.0, [], [], 0
    with torch.inference_mode(), _autocast(device, amp):
        for batch in loader:
            if batch is None:
                continue
            x, q = batch[0].to(device), batch[1].to(device)
            p = model(x).float()
            losses += float(emd_loss(p, q)) * len(x)
            n += len(x)
            preds.append(nima_mean_score(p).cpu().numpy())
            trues.append(nima_mean_score(q).cpu().numpy())
    if n == 0:
        return {"emd": float("nan"), "lcc": float("nan"), "srcc": float("nan")}
    lcc, srcc = correlations(np.concatenate(preds), np.concatenate(trues))
    return {"emd": losses / n, "lcc": lcc, "srcc": srcc}


# Fields that must match to resume: they define the model or what the epochs mean.
_RESUME_KEYS = ("backbone", "input_size", "dropout", "ava", "images", "val_fraction", "seed", "max_images")


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [h["train_emd"] for h in history], "o-", label="train EMD")
    ax.plot(ep, [h["val_emd"] for h in history], "s-", label="val EMD")
    ax.set_xlabel("epoch")
    ax.set_ylabel("EMD (r=2)")
    ax.set_title("NIMA training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: TrainNimaConfig) -> Path:
    """Train (or resume) and return the path of the best checkpoint (<run folder>/nima.pth)."""
    device = _device(cfg)
    items = read_ava(cfg.ava, cfg.images, cfg.max_images)  # bad input fails before a run folder exists
    out = run_dir(cfg.out, STAGE)
    torch.manual_seed(cfg.seed)
    train_items, val_items = split(items, cfg.val_fraction, cfg.seed)
    print(f"[train_nima] {len(items)} images: {len(train_items)} train, {len(val_items)} val; "
          f"{cfg.backbone} at {cfg.input_size}px on {device}", flush=True)

    model = NimaModel(cfg.backbone, cfg.dropout, "rlhf", cfg.backbone_weights).to(device)
    head = list(model.classifier.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    opt = torch.optim.AdamW([{"params": body, "lr": cfg.lr_backbone}, {"params": head, "lr": cfg.lr_head}],
                            weight_decay=cfg.weight_decay)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.pth"
    best = out / "nima.pth"
    history: list[dict] = []
    start = 1
    if cfg.resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        old = state.get("train_config", {})
        changed = [k for k in _RESUME_KEYS if str(old.get(k)) != str(getattr(cfg, k))]
        if changed:
            raise ValueError(f"{last}: cannot resume, {', '.join(changed)} differ from that run "
                             "(use another --out or --no-resume)")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        history = list(state.get("history", []))
        start = int(state["epoch"]) + 1
        print(f"[train_nima] resumed from {last} after epoch {start - 1}", flush=True)
    save_config(cfg, out)  # after the resume check, so a refused resume leaves the old run untouched

    loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, collate_fn=_collate,
                     pin_memory=device.type == "cuda", persistent_workers=False)
    val_loader = torch.utils.data.DataLoader(
        AvaDataset(val_items, cfg.input_size, model.mean, model.std, False, cfg.seed), shuffle=False, **loader_kw)
    best_val = min((h["val_emd"] for h in history if math.isfinite(h["val_emd"])), default=math.inf)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp
                                  and not torch.cuda.is_bf16_supported())
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.time()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        train_loader = torch.utils.data.DataLoader(
            AvaDataset(train_items, cfg.input_size, model.mean, model.std, True, cfg.seed * 1000 + epoch),
            shuffle=True, generator=g, **loader_kw)
        model.train()
        total, n, steps = 0.0, 0, 0
        for batch in train_loader:
            if batch is None:
                continue
            x, q = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                p = model(x)
            loss = emd_loss(p.float(), q)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss) * len(x)
            n += len(x)
            steps += 1
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
        if n == 0:
            raise RuntimeError("no training image could be read (every one was skipped)")
        val = _evaluate(model, val_loader, device, cfg.amp)
        row = {"epoch": epoch, "train_emd": total / n, "val_emd": val["emd"], "val_lcc": val["lcc"],
               "val_srcc": val["srcc"], "images": n, "seconds": round(time.time() - t0, 2)}
        history.append(row)
        print(f"[train_nima] epoch {epoch}/{cfg.epochs} train_emd {row['train_emd']:.4f} "
              f"val_emd {row['val_emd']:.4f} val_srcc {row['val_srcc']:.3f} ({row['seconds']} s)", flush=True)
        extra = {"epoch": epoch, "history": history, "train_config": dataclasses.asdict(cfg)}
        improved = math.isfinite(val["emd"]) and val["emd"] < best_val
        if improved or not best.is_file():
            best_val = val["emd"] if math.isfinite(val["emd"]) else best_val
            save_nima_checkpoint(best, model, cfg.input_size, **extra)
        save_nima_checkpoint(last, model, cfg.input_size, optimizer=opt.state_dict(), **extra)
        with (out / "progress.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            w.writerows(history)
        _plot(history, out / "curves.png")
    print(f"[train_nima] best checkpoint: {best}", flush=True)
    return best


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_config(TrainNimaConfig, argv, prog="python -m rayjobs.train_nima")
    return run(cfg)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

