#!/usr/bin/env python3
"""Classify every image in samples/ through an imgclass URL (a server, an ingress, a gateway).

    python3 scripts/ci/smoke.py URL [--expect samples/expected.json] [--samples DIR]

Prints one line per image (HTTP status, answering model, top-5). Exits non-zero when a request
fails or, with --expect, when an image's top-5 contains none of its expected labels
(samples/expected.json maps file name -> acceptable labels). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def classify(url: str, path: Path, timeout: float) -> tuple[int, dict, dict]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: {TYPES.get(path.suffix.lower(), 'application/octet-stream')}\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/classify?top_k=5",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, dict(e.headers), json.loads(raw)
        except ValueError:
            return e.code, dict(e.headers), {"error": raw[:200].decode(errors="replace")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--samples", default=str(Path(__file__).resolve().parents[2] / "samples"))
    ap.add_argument("--expect", help="JSON file: image name -> acceptable top-5 labels")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    samples = sorted(p for p in Path(args.samples).iterdir() if p.suffix.lower() in TYPES)
    if not samples:
        print(f"no images in {args.samples}", file=sys.stderr)
        return 2
    expected = json.loads(Path(args.expect).read_text()) if args.expect else {}
    missing = sorted(set(expected) - {p.name for p in samples})
    failures = [f"{m}: listed in {args.expect} but not found" for m in missing]
    for p in samples:
        t0 = time.monotonic()
        try:
            status, headers, body = classify(args.url, p, args.timeout)
        except OSError as e:
            failures.append(f"{p.name}: {e}")
            print(f"{p.name}: request failed: {e}")
            continue
        ms = (time.monotonic() - t0) * 1000
        if status != 200:
            failures.append(f"{p.name}: HTTP {status} {body}")
            print(f"{p.name}: HTTP {status} {body}")
            continue
        labels = [pr["label"] for pr in body.get("predictions", [])]
        top = ", ".join(f"{pr['label']} {pr['probability']:.3f}" for pr in body.get("predictions", []))
        fb = f" fallback={body.get('fallback_reason')}" if body.get("fallback") else ""
        print(f"{p.name}: {status} {body.get('profile')}/{body.get('model')}{fb} {ms:.0f} ms: {top}")
        if p.name in expected and not set(labels) & set(expected[p.name]):
            failures.append(f"{p.name}: top-5 {labels} has none of {expected[p.name]}")
    print(f"smoke: {len(samples) - len(failures)} passed, {len(failures)} failed")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
