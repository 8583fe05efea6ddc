"""The photo context cache (rlhf.context): computed once, verified on read, rebuilt when corrupt or stale,
safe with concurrent writers, keyed by content; lazy photos decode at working size."""

import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rlhf.context import WORK_LONG_SIDE, ContextStore, build_context
from rlhf.images import ImageLoadError, Photo, bundled_photos, load_collection, load_image


@pytest.fixture()
def photo_file(tmp_path: Path) -> Path:
    """A 1600x1200 JPEG (decoded at a reduced DCT scale for the working pixels)."""
    src = load_image(bundled_photos(["coffee"])[0])
    path = tmp_path / "big.jpg"
    Image.fromarray(src).resize((1600, 1200)).save(path, quality=90)
    return path


def test_lazy_photo_reads_only_the_header_and_decodes_at_working_size(photo_file):
    photo = Photo.from_path(photo_file)
    assert (photo.width, photo.height) == (1600, 1200) and photo.nbytes == 0
    work = photo.load(WORK_LONG_SIDE)
    assert work.shape == (288, 384, 3)
    full = photo.pixels
    assert full.shape == (1200, 1600, 3)
    # The reduced decode is the same picture as the full decode shrunk (not bit-equal: DCT scaling).
    ref = Image.fromarray(full).resize((384, 288), Image.BOX)
    assert np.abs(work.astype(float) - np.asarray(ref, float)).mean() < 3.0


def test_context_is_computed_once_then_read_from_disk(tmp_path, photo_file):
    photo = Photo.from_path(photo_file)
    first = ContextStore(tmp_path / "cache")
    ctx = first.get(photo)
    assert first.built == 1 and ctx.work.shape == (288, 384, 3) and ctx.fmap.shape[0] == 1280
    assert first.get(photo) is ctx  # in memory
    second = ContextStore(tmp_path / "cache")  # another process, the same disk
    again = second.get(photo)
    assert second.built == 0 and second.read == 1
    for name in ("work", "fmap", "heads"):
        np.testing.assert_array_equal(getattr(again, name), getattr(ctx, name))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage", "other_settings"])
def test_a_corrupt_or_stale_entry_is_rebuilt_never_trusted(tmp_path, photo_file, damage, caplog):
    photo = Photo.from_path(photo_file)
    store = ContextStore(tmp_path / "cache")
    good = store.get(photo)
    path = store.path(photo.digest())
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[-100] ^= 0xFF  # inside the arrays: the header still parses
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    else:  # a file of the same photo written under other settings, under this name
        from safetensors.numpy import save

        arrays = good.arrays()
        from rlhf.context import _digest_arrays

        path.write_bytes(save(arrays, metadata={"digest": _digest_arrays(arrays), "settings": '{"work": 1}',
                                                "size": "[1600, 1200]"}))
    fresh = ContextStore(tmp_path / "cache")
    ctx = fresh.get(photo)
    assert fresh.rebuilt == 1 and fresh.built == 1 and fresh.read == 0
    assert "corrupt or stale" in caplog.text
    np.testing.assert_array_equal(ctx.work, good.work)
    np.testing.assert_allclose(ctx.fmap, good.fmap, atol=1e-5)
    assert ContextStore(tmp_path / "cache").get(photo) is not None  # the rebuilt entry verifies


def test_a_changed_file_is_hashed_again_and_gets_its_own_context(tmp_path, photo_file):
    photo = Photo.from_path(photo_file)
    store = ContextStore(tmp_path / "cache")
    before = store.get(photo)
    digest = photo.digest()
    img = np.asarray(Image.open(photo_file)).copy()
    img[:, :800] = 255 - img[:, :800]  # same size, other content
    Image.fromarray(img).save(photo_file, quality=90)
    os.utime(photo_file, ns=(1, 1))  # even with an old mtime: the size or mtime changed, so it is re-hashed
    assert photo.digest() != digest
    after = store.get(photo)
    assert after is not before and not np.array_equal(after.work, before.work)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2


def _write_many(root: str, path: str, n: int) -> int:
    store = ContextStore(root)
    photo = Photo.from_path(path)
    ctx = build_context(photo)
    for _ in range(n):
        store._save(ctx)  # the same entry, over and over, racing the other writer and the reader
    return n


def test_two_writers_at_once_never_leave_a_torn_entry(tmp_path, photo_file):
    root = tmp_path / "cache"
    photo = Photo.from_path(photo_file)
    ctx = ContextStore(root).get(photo)
    spawn = mp.get_context("spawn")
    with spawn.Pool(2) as pool:
        jobs = [pool.apply_async(_write_many, (str(root), str(photo_file), 40)) for _ in range(2)]
        reads = 0
        while not all(j.ready() for j in jobs):
            reader = ContextStore(root)
            got = reader.get(photo)
            assert reader.rebuilt == 0, "a reader saw a torn or unverifiable entry"
            np.testing.assert_array_equal(got.work, ctx.work)
            reads += 1
        assert [j.get() for j in jobs] == [40, 40]
    assert reads > 0
    assert not list(root.rglob("*.tmp")), "temporary files left behind"


def test_memory_is_bounded_by_bytes(tmp_path):
    photos = load_collection(bundled_photos(["coffee", "chelsea", "rocket", "flower"]))
    one = ContextStore(tmp_path / "cache").get(photos[0]).nbytes
    store = ContextStore(tmp_path / "cache", max_bytes=int(2.5 * one))  # about two contexts
    for p in photos:
        store.get(p)
    assert 1 <= len(store._mem) <= 3 and store._mem.weight <= 2.5 * one
    assert photos[-1].digest() in store._mem and photos[0].digest() not in store._mem  # least recent gone


def test_listing_skips_unusable_files_and_env_skips_a_truncated_photo(tmp_path, photo_file, caplog):
    from rlhf.env import CropEnv

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photo_file, folder / "a.jpg")
    data = photo_file.read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 3])  # truncated: the header reads fine
    (folder / "c.jpg").write_text("not a photo")
    checked = load_collection(folder)
    assert [Path(p.id).name for p in checked] == ["a.jpg"]
    lazy = load_collection(folder, check=False)
    assert [Path(p.id).name for p in lazy] == ["a.jpg", "b.jpg"]
    with pytest.raises(ImageLoadError, match="truncated"):
        lazy[1].load(WORK_LONG_SIDE)
    caplog.clear()
    env = CropEnv({"images": [str(folder)]})
    seen = {Path(env.reset()[1]["photo"]).name for _ in range(4)}
    assert seen == {"a.jpg"}
    assert caplog.text.count("b.jpg") == 1 and "c.jpg" in caplog.text  # each logged once, then left out


def test_a_file_replaced_after_listing_by_another_shape_fails_clearly(photo_file):
    photo = Photo.from_path(photo_file)
    Image.open(photo_file).resize((1200, 1600)).save(photo_file, quality=90)  # now portrait
    with pytest.raises(ImageLoadError, match="changed on disk"):
        photo.load(WORK_LONG_SIDE)
    with pytest.raises(ImageLoadError, match="changed on disk"):
        _ = photo.pixels


def test_the_feature_maps_precision_is_chosen_once_forced_by_env_and_keys_the_cache(monkeypatch, photo_file):
    """bfloat16 where the CPU computes it natively, else float32; $PHOTOGRAPHER_PRECISION forces one; a
    context made in one precision is another cache entry than one made in the other."""
    import torch

    from rlhf import context, feature_map

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    monkeypatch.delenv(feature_map.PRECISION_ENV, raising=False)
    feature_map.feature_precision.cache_clear()
    assert feature_map.feature_precision() == ("bf16" if native else "fp32")
    maps, keys = {}, {}
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv(feature_map.PRECISION_ENV, forced)
        feature_map.feature_precision.cache_clear()
        assert feature_map.feature_precision() == forced and context.settings()["precision"] == forced
        keys[forced] = context.settings()
        maps[forced] = feature_map.feature_map(Photo.from_path(photo_file).load(WORK_LONG_SIDE))
    assert keys["fp32"] != keys["bf16"]
    # bfloat16 keeps 8 bits of mantissa: the map moves by a few percent, its structure stays.
    rel = np.abs(maps["bf16"] - maps["fp32"]).mean() / np.abs(maps["fp32"]).mean()
    assert 0 < rel < 0.1 and np.corrcoef(maps["bf16"].ravel(), maps["fp32"].ravel())[0, 1] > 0.99
    monkeypatch.setenv(feature_map.PRECISION_ENV, "fp16")
    feature_map.feature_precision.cache_clear()
    with pytest.raises(ValueError, match="PHOTOGRAPHER_PRECISION must be one of"):
        feature_map.feature_precision()
    monkeypatch.delenv(feature_map.PRECISION_ENV)
    feature_map.feature_precision.cache_clear()
