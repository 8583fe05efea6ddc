"""Regenerate rlhf/data/photos/ from the packages that ship these photographs.

The bundled photos are real photographs copied out of scikit-image (CC0 / public domain, see
skimage.data docstrings), scikit-learn (CC-BY 2.0), matplotlib and Gradio (the example photos in its
wheel, an Apache-2.0 package). Run once; the JPEGs are committed.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "rlhf" / "data" / "photos"


def main() -> None:
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


if __name__ == "__main__":
    main()
