#!/usr/bin/env python3
"""Model forward time: imgclass vs PyTorch eager vs ONNX Runtime, same machine, same run.

    python3 scripts/bench/compare_models.py [--models wide_resnet50_2,mobilenet_v3_large]
        [--batches 1,8] [--threads 2] [--iters-scale 1.0] [--out results.json]

Needs: python3 (stdlib) to run this file; it creates/reuses a virtualenv (IMGCLASS_BENCH_VENV,
default ./.venv-bench) and pip-installs `torch torchvision onnx onnxscript onnxruntime` there
(IMGCLASS_BENCH_TORCH_SITE reuses an existing torch install, see common.py). imgclass is
`IMGCLASS_BIN` or `target/release/imgclass` (built with cargo when IMGCLASS_BIN is unset).

All three run fp32 with the same thread count (default 2), on the same random weights: torchvision's
random initialisation, exported once to ONNX (static batch) and to .safetensors for imgclass.
Prints a markdown table with the per-image times and the ratios (imgclass / other: < 1 is faster).
Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

PACKAGES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
}

# (warmup, timed iterations) at --iters-scale 1.
ITERS = {
    ("wide_resnet50_2", 1): (3, 20),
    ("wide_resnet50_2", 8): (1, 6),
    ("mobilenet_v3_large", 1): (10, 100),
    ("mobilenet_v3_large", 8): (3, 30),
}


# ---------------------------------------------------------------- workers (run in the venv)

def summarize(times_s: list[float], batch: int) -> dict:
    ms = sorted(t * 1e3 for t in times_s)
    med = statistics.median(ms)
    return {"median_ms": med, "min_ms": ms[0], "max_ms": ms[-1], "per_image_ms": med / batch,
            "times_ms": ms}


def worker_prepare(model: str, batches: list[int], out: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, model)(weights=None).eval()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    common.write_safetensors(sd, out / f"{model}.safetensors")
    torch.save(net.state_dict(), out / f"{model}.pth")
    for b in batches:
        x = torch.randn(b, 3, 224, 224)
        with torch.inference_mode():
            torch.onnx.export(net, (x,), str(out / f"{model}_b{b}.onnx"), opset_version=18,
                              input_names=["input"], output_names=["logits"], dynamo=True,
                              external_data=False)


def worker_torch(model: str, batch: int, threads: int, warmup: int, iters: int, d: Path) -> dict:
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    net = getattr(torchvision.models, model)(weights=None).eval()
    net.load_state_dict(torch.load(d / f"{model}.pth"))
    x = torch.randn(batch, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t = time.perf_counter()
            net(x)
            if i >= warmup:
                times.append(time.perf_counter() - t)
    return summarize(times, batch) | {"version": torch.__version__}


def worker_ort(model: str, batch: int, threads: int, warmup: int, iters: int, d: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(d / f"{model}_b{batch}.onnx"), so,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        sess.run(None, {name: x})
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return summarize(times, batch) | {"version": ort.__version__}


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batches", default="1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--dir", required=True)
    a = p.parse_args(argv)
    d = Path(a.dir)
    batches = [int(b) for b in a.batches.split(",") if b]
    if a.worker == "prepare":
        worker_prepare(a.model, batches, d)
        print("{}")
    elif a.worker == "torch":
        print(json.dumps(worker_torch(a.model, batches[0], a.threads, a.warmup, a.iters, d)))
    elif a.worker == "ort":
        print(json.dumps(worker_ort(a.model, batches[0], a.threads, a.warmup, a.iters, d)))
    else:
        raise SystemExit(f"unknown worker {a.worker}")


# ---------------------------------------------------------------- driver

def run_json(cmd: list[str], env: dict | None = None) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="wide_resnet50_2,mobilenet_v3_large")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters-scale", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate the three engines this many times per row (spreads machine noise "
                        "over all of them); the figures are over all rounds' iterations")
    p.add_argument("--out", help="also write the results as JSON here")
    a = p.parse_args()
    models = a.models.split(",")
    batches = [int(b) for b in a.batches.split(",")]

    py = common.venv_python(PACKAGES)
    binary = common.imgclass_binary()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    me = str(Path(__file__).resolve())
    results = []
    with tempfile.TemporaryDirectory(prefix="imgclass-bench-") as tmp:
        for model in models:
            common.log(f"{model}: random weights -> .pth, .safetensors, ONNX")
            run_json([py, me, "--worker", "prepare", "--model", model, "--batches",
                      ",".join(map(str, batches)), "--dir", tmp], env)
            for b in batches:
                warm, iters = ITERS.get((model, b), (2, 10))
                iters = max(3, round(iters * a.iters_scale))
                row = {"model": model, "batch": b, "threads": a.threads, "iters": iters,
                       "rounds": a.rounds}
                per_round = max(1, iters // a.rounds)
                times: dict[str, list[float]] = {"torch": [], "ort": [], "imgclass": []}
                # each round's median per engine: the round-by-round ratios show the host's drift
                rounds: dict[str, list[float]] = {"torch": [], "ort": [], "imgclass": []}
                for rnd in range(a.rounds):
                    for eng in ("torch", "ort"):
                        common.log(f"{model} batch {b} round {rnd + 1}/{a.rounds}: {eng}")
                        r = run_json([py, me, "--worker", eng, "--model", model, "--batches", str(b),
                                      "--threads", str(a.threads), "--warmup", str(warm),
                                      "--iters", str(per_round), "--dir", tmp], env)
                        times[eng] += r["times_ms"]
                        rounds[eng].append(statistics.median(r["times_ms"]))
                        row[f"{eng}_version"] = r["version"]
                    common.log(f"{model} batch {b} round {rnd + 1}/{a.rounds}: imgclass")
                    r = run_json([binary, "bench", "--model", model, "--batch", str(b), "--iters",
                                  str(per_round), "--warmup", str(warm), "--weights-dir", tmp,
                                  "--times"], env)
                    times["imgclass"] += r["times_ms"]
                    rounds["imgclass"].append(statistics.median(r["times_ms"]))
                for eng, t in times.items():
                    row[eng] = summarize([x / 1e3 for x in t], b)
                    row[eng]["round_medians_ms"] = rounds[eng]
                results.append(row)

    print(f"\nMachine: {common.machine()}; {a.threads} threads, fp32, random weights\n")
    tv, ov = results[0]["torch_version"], results[0]["ort_version"]
    print(f"| model | batch | PyTorch {tv} eager ms/img | ONNX Runtime {ov} ms/img "
          "| imgclass ms/img | imgclass / ORT | imgclass / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t, o, i = (r[k]["per_image_ms"] for k in ("torch", "ort", "imgclass"))
        print(f"| {r['model']} | {r['batch']} | {t:.1f} | {o:.1f} | {i:.1f} | {i / o:.2f}x | {i / t:.2f}x |")
    # The host's noise, made visible: the ratio in each round (medians of that round) and the
    # ratio of the fastest passes (what each engine does when nothing else takes the cores).
    print("\n| model | batch | imgclass / ORT per round | fastest passes: imgclass / ORT | imgclass / PyTorch per round |")
    print("|---|---:|---|---:|---|")
    for r in results:
        ri, ro, rt = (r[k]["round_medians_ms"] for k in ("imgclass", "ort", "torch"))
        per_ort = " ".join(f"{i / o:.2f}" for i, o in zip(ri, ro))
        per_torch = " ".join(f"{i / t:.2f}" for i, t in zip(ri, rt))
        fastest = r["imgclass"]["min_ms"] / r["ort"]["min_ms"]
        print(f"| {r['model']} | {r['batch']} | {per_ort} | {fastest:.2f}x | {per_torch} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": common.machine(), "results": results}, indent=1))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
    else:
        main()
