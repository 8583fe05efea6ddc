"""Loading photos: every kind of bad input gets a clear error naming the file, good input is RGB."""

import warnings

import numpy as np
import pytest
from PIL import Image

from rlhf.images import (
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    ImageLoadError,
    Photo,
    augmented_variants,
    bundled_photos,
    load_collection,
    load_image,
    resolve_paths,
)


def test_bundled_photos_are_real_and_split():
    paths = bundled_photos()
    assert len(paths) >= 8
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    for p in paths:
        arr = load_image(p)
        assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        assert arr.std() > 20  # a photograph, not a flat fill


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    src = Image.open(bundled_photos(["chelsea"])[0])
    if mode == "I;16":
        grey = np.asarray(src.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey, mode="I;16")
        path = tmp_path / "x.png"
    else:
        img = src.convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    arr = load_image(path)
    assert arr.shape == (src.height, src.width, 3) and arr.dtype == np.uint8
    if mode == "I;16":  # 16-bit range mapped to 8 bits, not clipped to white
        assert 30 < arr.mean() < 220


def test_exif_orientation_is_applied(tmp_path):
    img = Image.open(bundled_photos(["chelsea"])[0])  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).shape[:2] == (451, 300)


def test_corrupt_truncated_nonimage_missing(tmp_path):
    good = bundled_photos(["coffee"])[0].read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 3])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 500)
    (tmp_path / "notes.png").write_text("hello, not a picture")
    for name in ["trunc.jpg", "garbage.jpg", "notes.png", "missing.jpg"]:
        with pytest.raises(ImageLoadError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (5000, 5000)).save(path)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(path, max_pixels=10_000_000)


def test_collection_skips_bad_files_with_one_line_each(tmp_path, caplog):
    Image.open(bundled_photos(["rocket"])[0]).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped photo is a log line, not a Python warning
        photos = load_collection(tmp_path)
    assert len(photos) == 1 and photos[0].id.endswith("a.jpg")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"skipped {tmp_path / 'b.jpg'}: ") and "\n" not in line


def test_collection_with_nothing_usable_fails(tmp_path):
    (tmp_path / "b.jpg").write_bytes(b"broken")
    with pytest.raises(ImageLoadError, match="no usable photo"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_collection(tmp_path)


def test_resolve_file_folder_glob(tmp_path):
    folder = bundled_photos()[0].parent
    assert len(resolve_paths(folder)) == len(bundled_photos())
    assert [p.stem for p in resolve_paths(str(folder / "ch*.jpg"))] == ["cheetah", "cheetah2", "chelsea", "china"]
    with pytest.raises(FileNotFoundError):
        resolve_paths(str(tmp_path / "nope*.jpg"))


def test_augmented_variants_are_fixed_framings():
    """Sub-photos of 70-100 % of each side, every second mirrored; the same rng seed, the same framings."""
    px = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    photo = Photo("p.png", px)
    out = augmented_variants(photo, 4, np.random.default_rng(1))
    assert [v.id for v in out] == [v.id for v in augmented_variants(photo, 4, np.random.default_rng(1))]
    assert len({v.id for v in out}) == 4 and all(v.id.startswith("p.png#aug") for v in out)
    for i, v in enumerate(out):
        x0, y0, w, h, mirror = (int(n) for n in v.id.split("#aug")[1].split(","))
        assert 0.69 * 80 <= w <= 80 and 0.69 * 60 <= h <= 60 and v.pixels.shape == (h, w, 3)
        window = px[y0:y0 + h, x0:x0 + w]
        assert mirror == i % 2
        np.testing.assert_array_equal(v.pixels, window[:, ::-1] if mirror else window)
