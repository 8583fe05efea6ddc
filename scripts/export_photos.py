"""Regenerate rlhf/data/photos/ from the packages that ship these photographs.

The bundled photos are real photographs copied out of scikit-image (CC0 / public domain, see
skimage.data docstrings), scikit-learn (CC-BY 2.0), matplotlib, Gradio (the example photos in its
wheel, an Apache-2.0 package) and OpenCV's sample data as Debian ships it (package opencv-doc
4.6.0+dfsg, under OpenCV's licence per its debian/copyright; Debian's "+dfsg" repack drops the
sample images it does not consider free, e.g. lena). Run once; the JPEGs are committed.

    python scripts/export_photos.py                       # fetches opencv-doc with apt-get download
    python scripts/export_photos.py --opencv-doc DIR      # DIR: the .deb already unpacked (dpkg-deb -x)
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "rlhf" / "data" / "photos"


# Our name -> path inside opencv-doc's examples folder. Real photographs only (no paintings, charts,
# calibration boards or stereo/flow pairs); copied byte for byte.
OPENCV_PHOTOS = {
    "apple": "data/apple.jpg", "baboon": "data/baboon.jpg", "building": "data/building.jpg",
    "butterfly": "data/butterfly.jpg", "fruits": "data/fruits.jpg", "home": "data/home.jpg",
    "messi": "data/messi5.jpg", "orange": "data/orange.jpg", "squirrel": "data/squirrel_cls.jpg",
    "plant": "alphamat/input_images/plant.jpg", "aerial": "data/aero3.jpg", "leuven": "data/leuvenA.jpg",
    "notebook": "data/ela_original.jpg", "robin": "hfs/data/000.jpg", "circuit": "data/board.jpg",
    "desk": "data/stuff.jpg",
}


def opencv_examples(unpacked: str | None) -> Path:
    """opencv-doc's examples folder: from an unpacked .deb, or fetched now with apt-get download."""
    if unpacked is None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True)
        deb = next(tmp.glob("opencv-doc_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        unpacked = str(tmp / "x")
    return Path(unpacked) / "usr/share/doc/opencv-doc/examples"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opencv-doc", help="Debian's opencv-doc .deb unpacked with dpkg-deb -x (default: fetch it)")
    args = ap.parse_args()
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos: dict[str, np.ndarray] = {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
    }
    sk = load_sample_images()
    for name, img in zip(sk.filenames, sk.images, strict=True):
        photos[Path(name).stem] = img
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    photos["camera"] = skimage.data.camera()  # greyscale: the loader makes it RGB
    OUT.mkdir(parents=True, exist_ok=True)
    for name, arr in photos.items():
        Image.fromarray(arr).save(OUT / f"{name}.jpg", quality=90)
        print(name, arr.shape)
    # Gradio's example photos are JPEGs already: copied byte for byte, not re-encoded.
    import gradio

    root = Path(gradio.__file__).parent
    for name, rel in {"cheetah": "media_assets/images/cheetah.jpg", "cheetah2": "test_data/cheetah2.jpg",
                      "lion": "media_assets/images/lion.jpg", "tower": "media_assets/images/tower.jpg"}.items():
        shutil.copyfile(root / rel, OUT / f"{name}.jpg")
        print(name, Image.open(OUT / f"{name}.jpg").size)
    examples = opencv_examples(args.opencv_doc)
    for name, rel in OPENCV_PHOTOS.items():
        shutil.copyfile(examples / rel, OUT / f"{name}.jpg")
        print(name, Image.open(OUT / f"{name}.jpg").size)


if __name__ == "__main__":
    main()
