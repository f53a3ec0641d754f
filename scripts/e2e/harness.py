"""Processes, HTTP and test images for the ingress fallback e2e tests (loopback only)."""

from __future__ import annotations

import functools
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = float(os.environ.get("IMGCLASS_E2E_READY_TIMEOUT", "180"))


def require_tool(name: str) -> str:
    """Path of a tool the tests need; a missing tool FAILS the test (never skips it)."""
    path = shutil.which(name)
    assert path is not None, f"required tool `{name}` is not installed (.ci/run installs it; see README 'Development')"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    request_id: str
    sent_body: bytes = b""

    def json(self):
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def profile(self) -> str | None:
        try:
            return self.json().get("profile")
        except (ValueError, AttributeError):
            return None


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
    request_id: str | None = None,
) -> Response:
    rid = request_id or f"e2e-{uuid.uuid4().hex[:16]}"
    h = {"X-Request-ID": rid, "Connection": "close", **(headers or {})}
    if body or method in ("POST", "PUT"):
        h["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return Response(
        resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.monotonic() - t0, rid, body
    )


def multipart(data: bytes, filename: str, content_type: str, field: str = "file") -> tuple[bytes, str]:
    boundary = f"----imgclass-e2e-{uuid.uuid4().hex}"
    body = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def classify(port: int, image: "Image", *, as_multipart: bool = False, top_k: int = 3, timeout: float = 120.0) -> Response:
    path = f"/classify?top_k={top_k}"
    if as_multipart:
        body, ctype = multipart(image.data, image.name, image.content_type)
    else:
        body, ctype = image.data, image.content_type
    return request(port, "POST", path, body, {"Content-Type": ctype}, timeout=timeout)


def metrics(port: int) -> str:
    return request(port, "GET", "/metrics", timeout=10).body.decode()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, lbl = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in lbl for k, v in labels.items()):
            total += float(value)
    return total


# ---------------------------------------------------------------------------------------------
# Test images (PNG written by hand: no imaging library needed)


@dataclass(frozen=True)
class Image:
    name: str
    data: bytes
    content_type: str


def png(width: int, height: int, seed: int, noise: bool) -> bytes:
    """An RGB PNG: a smooth pattern, or (noise=True) incompressible pseudo-random pixels."""
    rows = []
    x = seed * 2654435761 % 2**32 or 1
    for yy in range(height):
        if noise:
            row = bytearray(width * 3)
            for i in range(0, width * 3, 4):
                x ^= (x << 13) & 0xFFFFFFFF
                x ^= x >> 17
                x ^= (x << 5) & 0xFFFFFFFF
                row[i : i + 4] = x.to_bytes(4, "little")[: len(row) - i]
        else:
            row = bytearray()
            for xx in range(width):
                row += bytes(((xx * 7 + seed * 31) % 256, (yy * 5 + seed * 17) % 256, ((xx + yy) * 3 + seed) % 256))
        rows.append(b"\x00" + bytes(row))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b"")


@functools.lru_cache(maxsize=1)
def sample_images() -> tuple[Image, ...]:
    """Small, medium and large (> nginx's in-memory body buffer, so nginx re-sends it from disk)."""
    imgs = [
        Image("pattern_320x240.png", png(320, 240, 1, noise=False), "image/png"),
        Image("noise_400x300.png", png(400, 300, 2, noise=True), "image/png"),
        Image("noise_1400x1000.png", png(1400, 1000, 3, noise=True), "image/png"),
    ]
    for p in sorted((ROOT / "samples").glob("*.jpg"))[:2]:
        imgs.append(Image(p.name, p.read_bytes(), "image/jpeg"))
    return tuple(imgs)


NOT_AN_IMAGE = Image("notes.jpg", b"This is a text file saved with a .jpg extension.\n" * 20, "image/jpeg")


# ---------------------------------------------------------------------------------------------
# imgclass serve processes


class Server:
    """One `imgclass serve` process on 127.0.0.1:port."""

    def __init__(self, binary: Path, weights: Path, profile: str, port: int, logdir: Path, name: str, env: dict[str, str] | None = None):
        self.binary, self.weights, self.profile, self.port = binary, weights, profile, port
        self.logdir, self.name, self.env = logdir, name, env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, **env: str) -> "Server":
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.starts += 1
        log = open(self.logdir / f"{self.name}.{self.starts}.log", "wb")
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMGCLASS_")},
            "IMGCLASS_THREADS": "1",
            **self.env,
            **env,
        }
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--profile", self.profile, "--addr", f"127.0.0.1:{self.port}",
             "--weights-dir", str(self.weights)],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (
                f"{self.name} exited with {self.proc.returncode if self.proc else None}: {self.log_tail()}"
            )
            try:
                if request(self.port, "GET", "/readyz", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        logs = sorted(self.logdir.glob(f"{self.name}.*.log"))
        return logs[-1].read_text(errors="replace")[-n:] if logs else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def pause(self) -> None:
        """Freeze the process (like `docker pause`): it keeps its sockets but never answers."""
        self.signal(signal.SIGSTOP)

    def unpause(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (what the kubelet sends after preStop) and wait: the exit code."""
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)

    def restart(self, **env: str) -> "Server":
        self.kill()
        return self.start(**env).wait_ready()


class Nginx:
    def __init__(self, conf_text: str, prefix: Path, port: int):
        self.prefix, self.port = prefix, port
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(conf_text)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        nginx = require_tool("nginx")
        test = subprocess.run([nginx, "-t", "-p", str(self.prefix), "-c", str(self.conf)], capture_output=True, text=True)
        assert test.returncode == 0, f"nginx -t failed: {test.stderr}"
        self.proc = subprocess.Popen(
            [nginx, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=open(self.prefix / "stderr.log", "wb"), start_new_session=True,
        )
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def access_log(self) -> str:
        p = self.prefix / "access.log"
        return p.read_text(errors="replace") if p.exists() else ""
