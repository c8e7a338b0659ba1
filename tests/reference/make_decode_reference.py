#!/usr/bin/env python3
"""What PIL decodes, for tandem's image decoding tests (models/tests/vision_preprocess.rs).

Usage: make_decode_reference.py [OUT_JSON]

1. Each JPEG photo in images/ (rocket.jpg: 4:4:4, no chroma subsampling) and encoded/ (made
   here: chelsea.png saved by PIL at quality 90 with 4:2:0 subsampling, as most product photos
   are) decoded by PIL (libjpeg-turbo) and converted to RGB, stored losslessly as
   decoded/NAME.png: JPEG decoders differ in IDCT, colour conversion and chroma upsampling, so
   the test measures how far the Rust decoder is from these bytes, and runs the resize on them
   to check it reproduces the reference crop exactly.
2. Tiny PNGs in every colour type and bit depth the PNG format has (grey 1/2/4/8/16 bits,
   grey+alpha, RGB, RGBA at 8 and 16, palettes of 1/2/4/8 bits, with and without tRNS
   transparency), written by hand with zlib into png_formats/, with the RGB bytes of PIL's
   `Image.open(f).convert("RGB")`: the conversions a decoder must match for PNGs to be
   bit-exact.
3. Very thin PNGs (1x1, 1x500, 500x1, ...) with the sha256 of their bytes after torchvision's
   Resize(256) and CenterCrop(224), where the resized long side runs to 128000 pixels.

Writes OUT_JSON (default: decode_reference.json beside this script). Needs Pillow, numpy and
torchvision.
"""

import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features

HERE = Path(__file__).resolve().parent
WIDTH, HEIGHT = 7, 5


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(bit_depth, color_type, rows, extra=b"", width=WIDTH):
    """A PNG of packed, unfiltered scanlines (each already bytes)."""
    header = struct.pack(">IIBBBBB", width, len(rows), bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pack(samples, bits):
    """Packs one row of samples of `bits` bits, most significant first, as PNG does."""
    if bits == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    if bits == 8:
        return bytes(samples)
    out, acc, used = bytearray(), 0, 0
    for s in samples:
        acc, used = (acc << bits) | s, used + bits
        if used == 8:
            out.append(acc)
            acc, used = 0, 0
    if used:
        out.append(acc << (8 - used))
    return bytes(out)


def sample(x, y, c, bits):
    """A deterministic spread of values over the full range of `bits` (16-bit ones above 255
    included, since PIL clamps 16-bit grey)."""
    top = (1 << bits) - 1
    return (x * 97 + y * 57 + c * 131 + x * y * 13) * (top // 255 if bits == 16 else 1) % (top + 1)


def rows(channels, bits):
    return [pack([sample(x, y, c, bits) for x in range(WIDTH) for c in range(channels)], bits) for y in range(HEIGHT)]


def palette_png(bits, transparency):
    entries = 1 << bits
    plte = bytes((i * 71 + c * 29) % 256 for i in range(entries) for c in range(3))
    extra = chunk(b"PLTE", plte) + (chunk(b"tRNS", bytes(range(0, 256, 256 // entries))[:entries]) if transparency else b"")
    index_rows = [pack([sample(x, y, 0, bits) for x in range(WIDTH)], bits) for y in range(HEIGHT)]
    return png(bits, 3, index_rows, extra)


def png_formats():
    formats = {}
    for bits in (1, 2, 4, 8, 16):
        formats[f"grey{bits}"] = png(bits, 0, rows(1, bits))
    formats["grey8_trns"] = png(8, 0, rows(1, 8), chunk(b"tRNS", struct.pack(">H", 57)))
    for bits in (8, 16):
        formats[f"grey_alpha{bits}"] = png(bits, 4, rows(2, bits))
        formats[f"rgb{bits}"] = png(bits, 2, rows(3, bits))
        formats[f"rgba{bits}"] = png(bits, 6, rows(4, bits))
    formats["rgb8_trns"] = png(8, 2, rows(3, 8), chunk(b"tRNS", struct.pack(">HHH", 0, 57, 114)))
    for bits in (1, 2, 4, 8):
        formats[f"palette{bits}"] = palette_png(bits, False)
        formats[f"palette{bits}_trns"] = palette_png(bits, True)
    return formats


# Photos as thin as a product banner or a single pixel: torchvision's Resize(256) scales the
# shorter side up to 256 (a 1x500 image becomes 256x128000) before the crop.
THIN_SIZES = [(1, 1), (1, 500), (500, 1), (3, 700), (301, 2)]


def thin_image(width, height):
    rows_rgb = [bytes((x * 89 + y * 31 + c * 113 + x * y * 7) % 256 for x in range(width) for c in range(3)) for y in range(height)]
    return png(8, 2, rows_rgb, width=width)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) == 2 else HERE / "decode_reference.json"
    (HERE / "encoded").mkdir(exist_ok=True)
    with Image.open(HERE / "images" / "chelsea.png") as img:
        img.convert("RGB").save(HERE / "encoded" / "chelsea_420.jpg", "JPEG", quality=90, subsampling=2)
    jpegs = []
    (HERE / "decoded").mkdir(exist_ok=True)
    for path in sorted((HERE / "images").glob("*.jpg")) + sorted((HERE / "encoded").glob("*.jpg")):
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        decoded = HERE / "decoded" / f"{path.stem}.png"
        rgb.save(decoded, "PNG", optimize=True)
        jpegs.append(
            {
                "file": f"{path.parent.name}/{path.name}",
                "decoded_png": f"decoded/{decoded.name}",
                "rgb_sha256": hashlib.sha256(np.asarray(rgb, dtype=np.uint8).tobytes()).hexdigest(),
            }
        )

    pngs = []
    (HERE / "png_formats").mkdir(exist_ok=True)
    for name, data in png_formats().items():
        path = HERE / "png_formats" / f"{name}.png"
        path.write_bytes(data)
        with Image.open(path) as img:
            mode = img.mode
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        assert rgb.shape == (HEIGHT, WIDTH, 3)
        pngs.append({"file": f"png_formats/{path.name}", "pil_mode": mode, "rgb_hex": rgb.tobytes().hex()})

    from torchvision import transforms

    resize_and_crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    thin = []
    for width, height in THIN_SIZES:
        path = HERE / "png_formats" / f"thin_{width}x{height}.png"
        path.write_bytes(thin_image(width, height))
        with Image.open(path) as img:
            crop = np.asarray(resize_and_crop(img.convert("RGB")), dtype=np.uint8)
        assert crop.shape == (224, 224, 3)
        thin.append({"file": f"png_formats/{path.name}", "crop_sha256": hashlib.sha256(crop.tobytes()).hexdigest()})

    reference = {
        "made_by": {
            "script": "tests/reference/make_decode_reference.py",
            "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "libjpeg_api": features.version("jpg"),
        },
        "jpegs": jpegs,
        "pngs": pngs,
        "thin": thin,
    }
    out.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}: {len(jpegs)} decoded JPEGs, {len(pngs)} PNG formats, {len(thin)} thin PNGs")


if __name__ == "__main__":
    main()
