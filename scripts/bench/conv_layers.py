#!/usr/bin/env python3
"""PyTorch eager time of the layer shapes in benches/conv_kernels.rs (conv + bias + activation), to put
next to `cargo bench --bench conv_kernels`.

    PYTHON=/path/to/python-with-torch; $PYTHON scripts/bench/conv_layers.py [--threads 2]

Needs: pip install torch. Prints a markdown table (median of 30 runs after 5 warm-up runs, in ms).
Not run by CI.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

# name, C, HW, O, K, stride, groups, activation (same list as benches/conv_kernels.rs)
LAYERS = [
    ("dw3x3_s1_16ch_112", 16, 112, 16, 3, 1, 16, "hardswish"),
    ("dw3x3_s2_64ch_112", 64, 112, 64, 3, 2, 64, "hardswish"),
    ("dw5x5_s2_72ch_56", 72, 56, 72, 5, 2, 72, "hardswish"),
    ("dw5x5_s1_120ch_28", 120, 28, 120, 5, 1, 120, "hardswish"),
    ("dw3x3_s1_240ch_28", 240, 28, 240, 3, 1, 240, "hardswish"),
    ("dw3x3_s1_480ch_14", 480, 14, 480, 3, 1, 480, "hardswish"),
    ("dw5x5_s2_672ch_14", 672, 14, 672, 5, 2, 672, "hardswish"),
    ("dw5x5_s1_960ch_7", 960, 7, 960, 5, 1, 960, "hardswish"),
    ("pw_120to40_28", 120, 28, 40, 1, 1, 1, "relu"),
    ("pw_160to960_7", 160, 7, 960, 1, 1, 1, "relu"),
    ("stem7x7_s2_3to64_224", 3, 224, 64, 7, 2, 1, "relu"),
    ("c1x1_256to128_56", 256, 56, 128, 1, 1, 1, "relu"),
    ("c1x1_s2_512to1024_56", 512, 56, 1024, 1, 2, 1, "relu"),
    ("c3x3_128_56", 128, 56, 128, 3, 1, 1, "relu"),
    ("c3x3_256_56", 256, 56, 256, 3, 1, 1, "relu"),
    ("c3x3_256_28", 256, 28, 256, 3, 1, 1, "relu"),
    ("c3x3_512_14", 512, 14, 512, 3, 1, 1, "relu"),
    ("c3x3_1024_7", 1024, 7, 1024, 3, 1, 1, "relu"),
]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"| layer | PyTorch {torch.__version__} ms (batch {a.batch}, {a.threads} threads) |")
    print("|---|---:|")
    for name, c, hw, o, k, s, g, act in LAYERS:
        x = torch.randn(a.batch, c, hw, hw)
        w = torch.randn(o, c // g, k, k)
        b = torch.randn(o)
        f = F.hardswish if act == "hardswish" else F.relu
        times = []
        with torch.inference_mode():
            for i in range(35):
                t = time.perf_counter()
                f(F.conv2d(x, w, b, stride=s, padding=k // 2, groups=g))
                if i >= 5:
                    times.append(time.perf_counter() - t)
        print(f"| {name} | {statistics.median(times) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
