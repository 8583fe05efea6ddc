"""Regenerate rlhf/data/photos/ from the packages that ship these photographs.

The bundled photos are real photographs copied out of scikit-image (CC0 / public domain, see
skimage.data docstrings), scikit-learn (CC-BY 2.0) and matplotlib. Run once; the JPEGs are committed.
"""

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
    OUT.mkdir(parents=True, exist_ok=True)
    for name, arr in photos.items():
        Image.fromarray(arr).save(OUT / f"{name}.jpg", quality=90)
        print(name, arr.shape)


if __name__ == "__main__":
    main()
