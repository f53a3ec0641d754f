#!/usr/bin/env python3
"""Make the preprocessing samples and parity fixtures of imgclass.

How to run (from the repository root; CI does NOT run this, its outputs are committed):

    python -m venv /tmp/venv && /tmp/venv/bin/pip install torch torchvision pillow scikit-image numpy
    /tmp/venv/bin/python scripts/make_preprocess_fixtures.py        # or: PYTHON=... $PYTHON scripts/...

Writes:
  samples/{chelsea,coffee,rocket}.jpg      real photos from scikit-image's bundled data (CC0 / public domain)
  samples/expected.json                    labels a real ImageNet model should put in its top-5
  tests/fixtures/preprocess/samples/<stem>.crop.png
        torchvision's Resize(232) + CenterCrop(224) of the sample decoded by PIL (lossless PNG; the uint8
        crop IS the tensor before ToTensor/Normalize)
  tests/fixtures/preprocess/samples/probe.json
        a few values of torchvision's normalised tensor (ToTensor + Normalize) per sample
  tests/fixtures/preprocess/formats/*      tiny images in every accepted format + PIL's decoded RGB of each
  tests/fixtures/preprocess/formats.json   the format cases and their tolerances
  tests/fixtures/preprocess/bad/*          inputs that must be refused, and bad.json with the expected error
"""
import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import skimage
import torch
from PIL import Image, ImageOps
from torchvision import transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "samples")
FIX = os.path.join(ROOT, "tests", "fixtures", "preprocess")
SKDATA = os.path.join(os.path.dirname(skimage.__file__), "data")

RESIZE_CROP = transforms.Compose([transforms.Resize(232), transforms.CenterCrop(224)])
NORMALIZE = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
)

# name -> (skimage file, labels any one of which must be in a real ImageNet model's top-5)
SAMPLE_LIST = {
    "chelsea.jpg": ("chelsea.png", ["tabby", "tiger cat", "Egyptian cat"]),
    "coffee.jpg": ("coffee.png", ["espresso", "cup", "coffee mug", "eggnog"]),
    "rocket.jpg": ("rocket.jpg", ["missile", "projectile", "space shuttle"]),
}


def ensure(d):
    os.makedirs(d, exist_ok=True)


def make_samples():
    ensure(SAMPLES)
    for name, (src, _) in SAMPLE_LIST.items():
        src_path = os.path.join(SKDATA, src)
        dst = os.path.join(SAMPLES, name)
        if src.endswith(".jpg"):
            shutil.copyfile(src_path, dst)  # already a JPEG: keep the original bytes
        else:
            Image.open(src_path).convert("RGB").save(dst, quality=92)
        assert os.path.getsize(dst) <= 300_000, dst
    with open(os.path.join(SAMPLES, "expected.json"), "w") as f:
        json.dump({k: v[1] for k, v in SAMPLE_LIST.items()}, f, indent=2)
        f.write("\n")


def make_sample_fixtures():
    out = os.path.join(FIX, "samples")
    ensure(out)
    probe = {}
    rng = np.random.default_rng(0)
    for name in SAMPLE_LIST:
        img = Image.open(os.path.join(SAMPLES, name)).convert("RGB")
        crop = RESIZE_CROP(img)
        assert crop.size == (224, 224)
        stem = os.path.splitext(name)[0]
        crop.save(os.path.join(out, stem + ".crop.png"), optimize=True)
        t = NORMALIZE(crop)  # [3, 224, 224] float32
        idx = [(int(c), int(y), int(x)) for c, y, x in zip(rng.integers(0, 3, 64), rng.integers(0, 224, 64), rng.integers(0, 224, 64))]
        probe[name] = {
            "shape": list(t.shape),
            "channel_sums": [float(t[c].double().sum()) for c in range(3)],
            "values": [[c, y, x, float(t[c, y, x])] for c, y, x in idx],
        }
    with open(os.path.join(out, "probe.json"), "w") as f:
        json.dump(probe, f, indent=1)
        f.write("\n")


def blocky(w, h, seed):
    """A lossless test picture that PNG compresses well: random 8x8-ish blocks, gradients, thin lines."""
    rng = np.random.default_rng(seed)
    bw, bh = (w + 6) // 7, (h + 6) // 7
    blocks = rng.integers(0, 256, (bh, bw, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((7, 7, 1), dtype=np.uint8))[:h, :w]
    img[::13, :, 0] = 255
    img[:, ::11, 2] = 0
    yy, xx = np.mgrid[0:h, 0:w]
    img[..., 1] = ((img[..., 1].astype(np.int64) + xx * 255 // max(w - 1, 1)) // 2).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(img))


def make_resize_fixtures():
    """Lossless inputs (PNG) and torchvision's crop: the resize itself must match bit for bit."""
    out = os.path.join(FIX, "resize")
    ensure(out)
    cases = []
    # (w, h): downscale, banker's rounding of the crop offset (233-224 = 9 -> round(4.5) = 4),
    # (235-224 = 11 -> round(5.5) = 6), portrait, tiny upscale, near identity, extreme aspect.
    for i, (w, h) in enumerate([(1005, 1000), (1014, 1000), (461, 307), (250, 997), (20, 13), (240, 232), (1500, 20)]):
        img = blocky(w, h, 10 + i)
        name = f"in_{w}x{h}.png"
        img.save(os.path.join(out, name), optimize=True)
        crop = RESIZE_CROP(img)
        exp = f"in_{w}x{h}.crop.png"
        crop.save(os.path.join(out, exp), optimize=True)
        cases.append({"file": name, "expected": exp})
    with open(os.path.join(FIX, "resize.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


def make_dct_fixtures():
    """JPEGs for the DCT-domain path: progressive and baseline, 4:2:0, 4:4:4, grayscale, restart markers."""
    out = os.path.join(FIX, "dct")
    ensure(out)
    img = Image.open(os.path.join(SKDATA, "rocket.jpg")).convert("RGB").resize((333, 221), Image.BICUBIC)
    img.save(os.path.join(out, "prog420.jpg"), quality=90, progressive=True)
    img.save(os.path.join(out, "prog444.jpg"), quality=90, progressive=True, subsampling=0)
    img.convert("L").save(os.path.join(out, "prog_gray.jpg"), quality=90, progressive=True)
    img.save(os.path.join(out, "prog420_rst.jpg"), quality=90, progressive=True, restart_marker_blocks=5)
    img.save(os.path.join(out, "base420.jpg"), quality=90)
    img.save(os.path.join(out, "base444_rst.jpg"), quality=90, subsampling=0, restart_marker_blocks=7)
    img.convert("L").save(os.path.join(out, "base_gray.jpg"), quality=90)


def png_chunk(kind, data):
    c = struct.pack(">I", len(data)) + kind + data
    return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(arr):
    """Minimal PNG writer for 16-bit gray (H,W) or RGB (H,W,3) uint16 arrays (PIL cannot write RGB 16-bit)."""
    h, w = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw, 9))
        + png_chunk(b"IEND", b"")
    )


def exif_with_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def make_format_fixtures():
    out = os.path.join(FIX, "formats")
    ensure(out)
    base = Image.open(os.path.join(SKDATA, "chelsea.png")).convert("RGB").resize((48, 32), Image.BILINEAR)
    cases = []

    def save(name, data_or_fn, expected_img, max_abs, mean_abs, note):
        path = os.path.join(out, name)
        if callable(data_or_fn):
            data_or_fn(path)
        else:
            with open(path, "wb") as f:
                f.write(data_or_fn)
        exp_name = os.path.splitext(name)[0] + "." + name.rsplit(".", 1)[1] + ".expected.png"
        expected_img.convert("RGB").save(os.path.join(out, exp_name))
        cases.append(
            {"file": name, "expected": exp_name, "max_abs": max_abs, "mean_abs": mean_abs, "note": note}
        )

    def pil_rgb(path):
        return ImageOps.exif_transpose(Image.open(path)).convert("RGB")

    # JPEGs: expected = what PIL (libjpeg-turbo) decodes; imgclass decodes them with libjpeg-turbo
    # too, with PIL's settings, so they must be identical. CMYK goes through `image`'s decoder
    # (libjpeg-turbo gives no RGB for it): a few levels apart.
    for name, kw, note in [
        ("baseline.jpg", dict(quality=90), "baseline JPEG 4:2:0"),
        ("progressive.jpg", dict(quality=90, progressive=True), "progressive JPEG"),
        ("baseline444.jpg", dict(quality=90, subsampling=0), "baseline JPEG 4:4:4"),
    ]:
        p = os.path.join(out, name)
        base.save(p, **kw)
        save(name, lambda _p: None, pil_rgb(p), 0, 0.0, note)
    p = os.path.join(out, "gray.jpg")
    base.convert("L").save(p, quality=90)
    save("gray.jpg", lambda _p: None, pil_rgb(p), 0, 0.0, "grayscale JPEG")
    p = os.path.join(out, "cmyk.jpg")
    base.convert("CMYK").save(p, quality=95)
    save("cmyk.jpg", lambda _p: None, pil_rgb(p), 6, 1.0, "Adobe CMYK JPEG (inverted), converted to RGB")
    p = os.path.join(out, "exif6.jpg")
    base.save(p, quality=90, exif=exif_with_orientation(6))
    save("exif6.jpg", lambda _p: None, pil_rgb(p), 0, 0.0, "JPEG with EXIF orientation 6: shown rotated 90 degrees clockwise (32x48)")

    # Lossless formats: exact.
    save("rgb8.png", lambda p: base.save(p), base, 0, 0.0, "8-bit RGB PNG")
    save("gray8.png", lambda p: base.convert("L").save(p), base.convert("L"), 0, 0.0, "8-bit grayscale PNG")
    pal = base.quantize(colors=64)
    save("palette.png", lambda p: pal.save(p), pal.convert("RGB"), 0, 0.0, "palette PNG")
    rgba = base.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    save("rgba.png", lambda p: rgba.save(p), base, 0, 0.0, "RGBA PNG: alpha dropped like PIL's convert('RGB')")
    arr8 = np.asarray(base).astype(np.int64)
    rng = np.random.default_rng(1)
    arr16 = (arr8 * 257 + rng.integers(-128, 128, arr8.shape)).clip(0, 65535).astype(np.uint16)
    exp16 = np.round(arr16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    save("rgb16.png", png16(arr16), Image.fromarray(exp16), 1, 0.5, "16-bit RGB PNG: scaled to 8 bits (value/257)")
    g16 = arr16[..., 1]
    expg = np.round(g16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    save("gray16.png", png16(g16), Image.fromarray(expg), 1, 0.5,
         "16-bit gray PNG: scaled to 8 bits (PIL's convert('RGB') clips I;16 at 255 instead)")
    save("image.bmp", lambda p: base.save(p), base, 0, 0.0, "24-bit BMP")
    save("image.tiff", lambda p: base.save(p), base, 0, 0.0, "uncompressed TIFF")
    save("lzw.tiff", lambda p: base.save(p, compression="tiff_lzw"), base, 0, 0.0, "LZW TIFF")
    save("lossless.webp", lambda p: base.save(p, lossless=True), base, 0, 0.0, "lossless WebP")
    p = os.path.join(out, "lossy.webp")
    base.save(p, quality=90)
    save("lossy.webp", lambda _p: None, pil_rgb(p), 2, 0.2, "lossy WebP (libwebp vs image-webp upsampling)")
    # GIF with two frames: the first one counts.
    f1 = base.quantize(colors=128)
    f2 = ImageOps.invert(base).quantize(colors=128)
    p = os.path.join(out, "anim.gif")
    f1.save(p, save_all=True, append_images=[f2], duration=100, loop=0)
    save("anim.gif", lambda _p: None, Image.open(p).convert("RGB"), 0, 0.0, "animated GIF: first frame")

    with open(os.path.join(FIX, "formats.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


def make_bad_fixtures():
    out = os.path.join(FIX, "bad")
    ensure(out)
    cases = []

    def bad(name, data, error_type, note):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        cases.append({"file": name, "error_type": error_type, "note": note})

    bad("text.jpg", b"This is a text file saved with a .jpg extension.\nIt is not an image.\n",
        "not_an_image", "text saved as .jpg")
    bad("random.bin", bytes(np.random.default_rng(2).integers(1, 255, 300, dtype=np.uint8)),
        "not_an_image", "random bytes")
    buf = io.BytesIO()
    Image.open(os.path.join(SKDATA, "chelsea.png")).convert("RGB").resize((160, 120)).save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    bad("truncated.jpg", jpg[: len(jpg) // 2], "corrupt_image", "baseline JPEG cut in half")
    buf = io.BytesIO()
    Image.open(os.path.join(SKDATA, "chelsea.png")).convert("RGB").resize((160, 120)).save(buf, "JPEG", quality=90, progressive=True)
    pj = buf.getvalue()
    bad("truncated_progressive.jpg", pj[: len(pj) * 2 // 3], "corrupt_image", "progressive JPEG cut at 2/3")
    buf = io.BytesIO()
    Image.open(os.path.join(SKDATA, "chelsea.png")).convert("RGB").resize((160, 120)).save(buf, "PNG")
    png = buf.getvalue()
    bad("truncated.png", png[: len(png) // 2], "corrupt_image", "PNG cut in half")
    # Garbage in the middle of the entropy-coded data of a PNG (zlib stream broken).
    corrupt = bytearray(png)
    mid = len(corrupt) // 2
    corrupt[mid: mid + 64] = bytes(64)
    bad("corrupt.png", bytes(corrupt), "corrupt_image", "PNG with 64 zeroed bytes in its IDAT (CRC mismatch)")
    # A PNG whose header declares 100000 x 100000 (10 gigapixels), with a tiny IDAT.
    raw = zlib.compress(b"\x00" + b"\x00" * 30, 9)
    huge_png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", raw)
        + png_chunk(b"IEND", b"")
    )
    bad("huge.png", huge_png, "image_too_large", "PNG header declares 100000x100000")
    # A JPEG whose SOF declares 60000 x 60000: patch a small JPEG's frame header.
    j = bytearray(jpg)
    i = 2
    while True:
        assert j[i] == 0xFF
        m = j[i + 1]
        ln = struct.unpack(">H", j[i + 2: i + 4])[0]
        if m in (0xC0, 0xC1, 0xC2):
            j[i + 5: i + 9] = struct.pack(">HH", 60000, 60000)
            break
        i += 2 + ln
    bad("huge.jpg", bytes(j), "image_too_large", "JPEG frame header declares 60000x60000")
    bad("image.qoi", b"qoif" + struct.pack(">IIBB", 16, 16, 3, 0) + b"\x00" * 16 + b"\x00" * 7 + b"\x01",
        "unsupported_format", "QOI: a recognised format we do not decode")
    bad("image.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
        "unsupported_format", "HEIC header")
    bad("lossless.jpg", bytes(jpg[:2]) + b"\xff\xc3\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00" + b"\xff\xd9",
        "unsupported_format", "lossless JPEG (SOF3)")
    with open(os.path.join(FIX, "bad.json"), "w") as f:
        json.dump(cases, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    make_samples()
    make_sample_fixtures()
    make_resize_fixtures()
    make_format_fixtures()
    make_dct_fixtures()
    make_bad_fixtures()
    total = 0
    for d, _, files in os.walk(FIX):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(f"fixtures: {total} bytes under {FIX}")
