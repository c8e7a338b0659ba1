#!/usr/bin/env python3
"""Reference ImageNet logits of torchvision's MobileNetV2 on real photos, for tandem's vision
parity test.

Usage: make_mobilenet_reference.py PTH_FILE [OUT_JSON]

PTH_FILE is mobilenet_v2-b0353104.pth (`tandem fetch mobilenetv2` puts it in
~/.cache/tandem/models/mobilenetv2/); it is loaded into torchvision's `mobilenet_v2()` as a
state dict, so the result does not depend on torchvision's download cache. The photos are
scikit-image's sample photos (`skimage/data/` in its wheel) and scikit-learn's two
(`sklearn/datasets/images/`), copied to `images/` beside this script (licences in
images/README.md).

Preprocessing is torchvision's ImageNet evaluation transform: RGB, Resize(256) (bilinear,
antialiased, on the PIL image), CenterCrop(224), ToTensor, Normalize(ImageNet mean/std).

Writes OUT_JSON (default: mobilenet_v2_logits.json beside this script) with, for each photo:
its path in the scikit-image wheel and in the repo, the file's sha256, the preprocessed
input's shape, sums and first values, the sha256, sum and a few pixels of the
resized and cropped RGB bytes (what a reimplementation of the PIL resize must reproduce), the top-5 classes with their logits, and all 1000
logits rounded to 1e-5. Also writes models/src/vision/imagenet_classes.txt, the class names
in torchvision's order (IMAGENET1K_V1 meta "categories"). Needs torch, torchvision, Pillow
and scikit-image; the tests that read the JSON do not.
"""

import hashlib
import json
import platform
import sys
from pathlib import Path

import PIL
import skimage
import sklearn
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Photos of real objects and where in which wheel they come from (camera and coins are
# grayscale: converted to RGB, as the preprocessing of a product photo would).
PHOTOS = [
    ("astronaut.png", "skimage/data"),
    ("chelsea.png", "skimage/data"),
    ("coffee.png", "skimage/data"),
    ("rocket.jpg", "skimage/data"),
    ("camera.png", "skimage/data"),
    ("coins.png", "skimage/data"),
    ("china.jpg", "sklearn/datasets/images"),
    ("flower.jpg", "sklearn/datasets/images"),
]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# (row, column) of the 224x224 crop whose RGB bytes are stored, to check a resize
# implementation pixel by pixel where the crop's sha256 differs.
PIXELS = [(0, 0), (0, 223), (111, 111), (112, 37), (200, 150), (223, 0), (223, 223)]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    pth = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else HERE / "mobilenet_v2_logits.json"

    model = mobilenet_v2()
    model.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True))
    model.eval()
    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(categories) == 1000
    # The PIL part of the transform (what a reimplementation must match byte for byte), then
    # the tensor part.
    resize_and_crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    images = []
    for name, wheel_dir in PHOTOS:
        path = HERE / "images" / name
        data = path.read_bytes()
        with Image.open(path) as img:
            original_size = list(img.size)
            mode = img.mode
            crop = resize_and_crop(img.convert("RGB"))
        crop_bytes = np.asarray(crop, dtype=np.uint8)  # HWC, RGB
        x = to_input(crop)
        with torch.no_grad():
            logits = model(x.unsqueeze(0))[0]
        top = torch.topk(logits, 5)
        images.append(
            {
                "file": f"images/{name}",
                "wheel_path": f"{wheel_dir}/{name}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "original_mode": mode,
                "original_size_wh": original_size,
                "crop_uint8": {
                    "layout": "224x224 HWC RGB bytes after Resize(256) and CenterCrop(224)",
                    "sha256": hashlib.sha256(crop_bytes.tobytes()).hexdigest(),
                    "sum": int(crop_bytes.sum(dtype=np.int64)),
                    "pixels": [{"row": r, "col": c, "rgb": crop_bytes[r, c].tolist()} for r, c in PIXELS],
                },
                "input": {
                    "shape": list(x.shape),
                    "sum": x.double().sum().item(),
                    "abs_sum": x.double().abs().sum().item(),
                    # Channel 0, row 0, the first 8 pixels; then channel 2, row 223, the last 8.
                    "first": [round(v, 6) for v in x[0, 0, :8].tolist()],
                    "last": [round(v, 6) for v in x[2, 223, -8:].tolist()],
                },
                "top5": [
                    {"class": i, "name": categories[i], "logit": round(v, 5)}
                    for i, v in zip(top.indices.tolist(), top.values.tolist())
                ],
                "logits": [round(v, 5) for v in logits.tolist()],
            }
        )
        print(f"{name}: {', '.join(categories[i] for i in top.indices.tolist())}")

    reference = {
        "made_by": {
            "script": "tests/reference/make_mobilenet_reference.py",
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "pillow": PIL.__version__,
            "scikit_image": skimage.__version__,
            "scikit_learn": sklearn.__version__,
            "python": platform.python_version(),
        },
        "weights": pth.name,
        "preprocess": {
            "resize": 256,
            "interpolation": "bilinear, antialiased (PIL)",
            "center_crop": 224,
            "mean": MEAN,
            "std": STD,
            "layout": "NCHW, RGB, values / 255 before normalizing",
        },
        "images": images,
    }
    out.write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    classes = REPO / "models" / "src" / "vision" / "imagenet_classes.txt"
    classes.write_text("\n".join(categories) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) and {classes}")


if __name__ == "__main__":
    main()
