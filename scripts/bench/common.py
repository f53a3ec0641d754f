"""Shared helpers of the benchmark scripts (stdlib only: runs under any python3 >= 3.9).

The heavy packages (torch, torchvision, onnx, onnxruntime, fastapi, ...) live in a virtualenv that
`ensure_venv` creates or reuses:

- `IMGCLASS_BENCH_VENV` (default `./.venv-bench`): the virtualenv to create / reuse.
- `IMGCLASS_BENCH_TORCH_SITE` (optional): a site-packages directory that already holds torch and
  torchvision (e.g. `/root/venv-torch/lib/python3.11/site-packages`); it is linked into the venv with a
  `.pth` file instead of downloading torch again (the interpreter must be the same Python version).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def venv_python(packages: dict[str, str]) -> str:
    """Create/reuse the benchmark venv, install what is missing, return its python.

    `packages` maps an importable module name to its PyPI requirement.
    """
    venv = Path(os.environ.get("IMGCLASS_BENCH_VENV", REPO / ".venv-bench")).resolve()
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating virtualenv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=sys.stderr)
    torch_site = os.environ.get("IMGCLASS_BENCH_TORCH_SITE")
    if torch_site:
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        Path(site, "imgclass_bench_torch.pth").write_text(torch_site + "\n")
    missing = []
    for module, req in packages.items():
        r = subprocess.run([str(py), "-c", f"import {module}"], capture_output=True)
        if r.returncode != 0:
            missing.append(req)
    if missing:
        log(f"pip install {' '.join(missing)}")
        subprocess.run([str(py), "-m", "pip", "install", "-q", *missing], check=True, stdout=sys.stderr)
    return str(py)


def imgclass_binary() -> str:
    """`IMGCLASS_BIN`, or the release binary of this checkout (built when missing)."""
    b = os.environ.get("IMGCLASS_BIN")
    if b:
        return b
    path = REPO / "target" / "release" / "imgclass"
    log("cargo build --release")
    subprocess.run(["cargo", "build", "--release", "--bin", "imgclass"], cwd=REPO, check=True,
                   stdout=sys.stderr)
    return str(path)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def write_safetensors(tensors: dict, path: Path) -> None:
    """Write a dict of torch tensors as .safetensors without the safetensors package."""
    import json
    import struct

    import torch

    names = sorted(tensors)
    dtypes = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16"}
    header, blobs, offset = {}, [], 0
    for n in names:
        t = tensors[n].detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[n] = {"dtype": dtypes[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
