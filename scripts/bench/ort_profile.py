#!/usr/bin/env python3
"""ONNX Runtime's own per-node times for one model: where its milliseconds go, to set beside
`cargo run --release --example layer_profile -- [wrn] [batch] [iters]`.

    .venv-bench/bin/python scripts/bench/ort_profile.py --model mobilenet_v3_large --batch 1

Exports the model with random weights (as `compare_models.py` does, into --dir, reused when the
file is there), runs it --iters times on --threads threads with ONNX Runtime's profiler on, and
prints per node (in graph order): op type, output shape and the median of its kernel times in ms,
then the sum of the medians and the median whole-run time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mobilenet_v3_large")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "imgclass-ort-profile"))
    a = p.parse_args()

    import numpy as np
    import onnxruntime as ort

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    onnx_path = d / f"{a.model}_b{a.batch}.onnx"
    if not onnx_path.exists():
        here = Path(__file__).resolve().parent
        subprocess.run([sys.executable, str(here / "compare_models.py"), "--worker", "prepare",
                        "--model", a.model, "--batches", str(a.batch), "--dir", str(d)],
                       check=True, stdout=subprocess.DEVNULL)

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(d / f"ort_{a.model}_b{a.batch}")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
    for _ in range(5 + a.iters):  # the first 5 runs are warm-up, dropped below by run index
        sess.run(None, {name: x})
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink(missing_ok=True)

    runs = [e["dur"] for e in events if e.get("name") == "model_run"][5:]
    order: list[str] = []
    times: dict[str, list[float]] = defaultdict(list)
    info: dict[str, tuple[str, str]] = {}
    run_idx: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        run_idx[node] += 1
        if run_idx[node] <= 5:
            continue
        if node not in times:
            order.append(node)
            args = e.get("args", {})
            shape = args.get("output_type_shape", "")
            info[node] = (args.get("op_name", "?"), json.dumps(shape, separators=(",", ":")))
        times[node].append(e["dur"] / 1e3)
    total = 0.0
    for node in order:
        med = statistics.median(times[node])
        total += med
        op, shape = info[node]
        print(f"{med:8.3f} ms  {op:<22} {shape[:60]:<60} {node}")
    print(f"sum of node medians {total:.3f} ms; whole run median "
          f"{statistics.median(runs) / 1e3 if runs else float('nan'):.3f} ms "
          f"({a.model}, batch {a.batch}, {a.threads} threads, {a.iters} runs, ORT {ort.__version__})")


if __name__ == "__main__":
    main()
