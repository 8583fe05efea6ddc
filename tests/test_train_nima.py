"""NIMA training on a tiny AVA-format set made of crops of the bundled photos (random-but-fixed votes)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from rayjobs.train_nima import TrainNimaConfig, emd_loss, main, read_ava, run
from rlhf.images import bundled_photos, load_image
from rlhf.scorers import NimaScorer, create_scorer

torch.set_num_threads(1)


@pytest.fixture()
def tiny_ava(tmp_path):
    """12 real crops; votes peak low or high by a fixed rule so there is something to learn."""
    rng = np.random.default_rng(0)
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    lines = []
    k = 0
    for path in bundled_photos(["chelsea", "coffee", "rocket", "flower"]):
        img = load_image(path)
        h, w = img.shape[:2]
        for _ in range(3):
            k += 1
            y, x = rng.integers(0, h // 3), rng.integers(0, w // 3)
            Image.fromarray(img[y:y + h // 2, x:x + w // 2]).save(img_dir / f"{1000 + k}.jpg", quality=90)
            peak = 2 if k % 2 else 7
            votes = rng.integers(0, 4, size=10) + 30 * (np.arange(10) == peak)
            lines.append(f"{k} {1000 + k} {' '.join(map(str, votes))} 0 0 1")
    lines.append("99 424242 " + " ".join(["5"] * 10) + " 0 0 1")        # image missing
    (img_dir / "555.jpg").write_bytes(b"not a jpeg")                       # corrupt image
    lines.append("100 555 " + " ".join(["5"] * 10) + " 0 0 1")
    ava = tmp_path / "AVA.txt"
    ava.write_text("\n".join(lines) + "\n")
    return ava, img_dir


def _cfg(ava, img_dir, out, **kw) -> TrainNimaConfig:
    base = dict(ava=str(ava), images=str(img_dir), out=str(out), input_size=64, batch_size=4, epochs=4,
                lr_backbone=1e-3, lr_head=1e-2, dropout=0.0, val_fraction=0.2, num_workers=0, device="cpu")
    base.update(kw)
    return TrainNimaConfig(**base)


def test_emd_loss():
    p = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert emd_loss(p, p).item() == 0.0
    q = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # cdf gaps: [0, 1, 0] and [1, 1, 0] → sqrt(1/3), sqrt(2/3)
    assert emd_loss(p, q).item() == pytest.approx((np.sqrt(1 / 3) + np.sqrt(2 / 3)) / 2, rel=1e-6)


def test_read_ava_skips_and_errors(tiny_ava, tmp_path):
    ava, img_dir = tiny_ava
    with pytest.warns(UserWarning, match="missing"):
        items = read_ava(ava, img_dir)
    assert len(items) == 13  # 12 crops + the corrupt file (found unreadable when loaded)
    np.testing.assert_allclose(items[0].dist.sum(), 1.0)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 1001 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        read_ava(bad, img_dir)
    with pytest.raises(FileNotFoundError, match="no such AVA"):
        read_ava(tmp_path / "none.txt", img_dir)
    with pytest.raises(ValueError, match="--ava is required"):
        TrainNimaConfig(images=str(img_dir))


def test_train_resume_and_score(tiny_ava, tmp_path):
    ava, img_dir = tiny_ava
    out = tmp_path / "run"
    with pytest.warns(UserWarning):  # the missing and the corrupt image
        ckpt = run(_cfg(ava, img_dir, out, epochs=3))
    assert ckpt == out / "nima.pth" and ckpt.is_file()
    assert json.loads((out / "config.json").read_text())["input_size"] == 64
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (out / "curves.png").stat().st_size > 1000
    first = float(rows[0]["train_emd"])

    # resume: same folder, more epochs → continues at epoch 4
    with pytest.warns(UserWarning):
        main(["--ava", str(ava), "--images", str(img_dir), "--out", str(out), "--input_size", "64",
              "--batch_size", "4", "--epochs", "6", "--lr_backbone", "1e-3", "--lr_head", "1e-2",
              "--dropout", "0", "--val_fraction", "0.2", "--num_workers", "0", "--device", "cpu"])
    rows = list(csv.DictReader((out / "progress.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    last = float(rows[-1]["train_emd"])
    assert last < first, f"train EMD did not decrease: {first:.4f} → {last:.4f}"

    # a changed model setting refuses to resume into the same folder
    with pytest.raises(ValueError, match="cannot resume.*input_size"):
        run(_cfg(ava, img_dir, out, input_size=96, epochs=7))

    scorer = create_scorer("nima", weights=str(ckpt))
    assert isinstance(scorer, NimaScorer) and scorer.input_size == 64
    crops = [load_image(p) for p in bundled_photos(["china", "grace_hopper"])]
    s = scorer.score(crops)
    assert s.shape == (2,) and ((s >= 1) & (s <= 10)).all()
