#!/usr/bin/env python3
"""Preprocessing benchmark: imgclass vs PIL (torchvision's eval transform), same machine, same run.

How to run (from the repository root):

    python -m venv /tmp/venv && /tmp/venv/bin/pip install pillow torch torchvision   # torchvision optional
    cargo build --release
    /tmp/venv/bin/python scripts/bench_preprocess.py [--iters 10] [--accuracy]

Environment: IMGCLASS_BIN (default target/release/imgclass).

It makes 12 MP (4000x3000) and 42 MP (7952x5304) JPEGs (quality 90, 4:2:0, progressive and
baseline) in a temporary directory (or --dir), from samples/ (never committed): "upscaled" = samples/chelsea.jpg enlarged with bicubic
(smooth), "mosaic" = the samples tiled at their native resolution (real photographic detail).
For each it times decode + Resize(232) + CenterCrop(224):
  - PIL: Image.open(f).convert("RGB") then torchvision's Resize/CenterCrop (or the same PIL calls);
  - imgclass: `imgclass bench --stage preprocess --image f` (decode + resize + crop + normalise).
and prints the median times (best of --rounds alternating rounds) and the ratio imgclass / PIL
(goal: <= 0.3).
With --accuracy it also runs `cargo run --release --example preprocess_accuracy` to compare
imgclass's crops (DCT scaling Auto and Off) with PIL's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    from torchvision import transforms

    RESIZE_CROP = transforms.Compose([transforms.Resize(232), transforms.CenterCrop(224)])
except ImportError:  # the same PIL operations torchvision performs
    def RESIZE_CROP(img):
        w, h = img.size
        if w <= h:
            nw, nh = 232, int(232 * h / w)
        else:
            nw, nh = int(232 * w / h), 232
        img = img.resize((nw, nh), Image.BILINEAR)
        top, left = int(round((nh - 224) / 2.0)), int(round((nw - 224) / 2.0))
        return img.crop((left, top, left + 224, top + 224))


def make_images(d):
    samples = [Image.open(os.path.join(ROOT, "samples", f)).convert("RGB")
               for f in sorted(os.listdir(os.path.join(ROOT, "samples"))) if f.endswith(".jpg")]
    out = []
    for label, (w, h) in [("12mp", (4000, 3000)), ("42mp", (7952, 5304))]:
        up = samples[0].resize((w, h), Image.BICUBIC)
        for kind, prog in [("", True), ("_baseline", False)]:
            p = os.path.join(d, f"{label}_upscaled{kind}.jpg")
            up.save(p, quality=90, progressive=prog)
            out.append(p)
        canvas = Image.new("RGB", (w, h))
        y, k = 0, 0
        while y < h:
            x, rowh = 0, 0
            while x < w:
                t = samples[k % len(samples)]
                if k % 2:
                    t = t.transpose(Image.FLIP_LEFT_RIGHT)
                k += 1
                canvas.paste(t, (x, y))
                x += t.size[0]
                rowh = max(rowh, t.size[1])
            y += rowh
        for kind, prog in [("", True), ("_baseline", False)]:
            p = os.path.join(d, f"{label}_mosaic{kind}.jpg")
            canvas.save(p, quality=90, progressive=prog)
            out.append(p)
    return out


def time_pil(path, iters):
    ts = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        img = Image.open(path).convert("RGB")
        crop = RESIZE_CROP(img)
        ts.append((time.perf_counter() - t0) * 1e3)
    crop.save(path[: -len(".jpg")] + ".pil.png")
    return statistics.median(ts[1:])


def time_imgclass(binary, path, iters):
    out = subprocess.run(
        [binary, "bench", "--stage", "preprocess", "--image", path, "--iters", str(iters), "--warmup", "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return line["preprocess_ms"]["median"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="alternating PIL/imgclass rounds per image")
    ap.add_argument("--dir", help="make the images here and keep them (default: a temporary directory)")
    ap.add_argument("--reuse", action="store_true", help="with --dir: use the images already there")
    a = ap.parse_args()
    binary = os.environ.get("IMGCLASS_BIN", os.path.join(ROOT, "target", "release", "imgclass"))
    if not os.path.exists(binary):
        sys.exit(f"{binary} not found: run `cargo build --release` or set IMGCLASS_BIN")
    with tempfile.TemporaryDirectory() as tmp:
        d = a.dir or tmp
        os.makedirs(d, exist_ok=True)
        if a.reuse and a.dir:
            images = sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jpg"))
        else:
            images = make_images(d)
        print(f"{'image':28} {'size':>10} {'PIL ms':>8} {'imgclass ms':>12} {'ratio':>6}")
        for p in images:
            # Alternate the two for --rounds rounds and keep each one's best round median: on a
            # shared (busy) machine the load then hits both alike.
            pils, ourss = [], []
            for _ in range(a.rounds):
                pils.append(time_pil(p, a.iters))
                ourss.append(time_imgclass(binary, p, a.iters))
            pil, ours = min(pils), min(ourss)
            w, h = Image.open(p).size
            print(f"{os.path.basename(p):28} {w}x{h:<5} {pil:8.1f} {ours:12.1f} {ours / pil:6.3f}")
        if a.accuracy:
            subprocess.run(["cargo", "run", "--release", "-q", "--example", "preprocess_accuracy", "--"] + images,
                           check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
