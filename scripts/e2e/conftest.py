"""Fixtures shared by the e2e tests: the binary, the weights, the Ingress settings.

The binary and weights are produced by `just e2e-prep` (static release binary in target/dist,
synthetic weights in target/dist/weights); override with IMGCLASS_BIN / IMGCLASS_E2E_WEIGHTS.
A missing prerequisite FAILS the tests with the command that makes it; nothing is skipped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ROOT  # noqa: E402
from ingress_nginx import load_ingress  # noqa: E402


@pytest.fixture(scope="session")
def binary() -> Path:
    p = Path(os.environ.get("IMGCLASS_BIN", ROOT / "target" / "dist" / "imgclass"))
    assert p.is_file() and os.access(p, os.X_OK), f"{p} missing: run `just e2e-prep` (or set IMGCLASS_BIN)"
    return p


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    p = Path(os.environ.get("IMGCLASS_E2E_WEIGHTS", ROOT / "target" / "dist" / "weights"))
    for name in ("wide_resnet50_2.safetensors", "mobilenet_v3_large.safetensors"):
        assert (p / name).is_file(), f"{p / name} missing: run `just e2e-prep` (or set IMGCLASS_E2E_WEIGHTS)"
    return p


@pytest.fixture(scope="session")
def ingress():
    return load_ingress()
