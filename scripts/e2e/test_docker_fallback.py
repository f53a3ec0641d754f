"""Ingress fallback, end to end, with the Docker images: the `full` image twice and the `lite`
image once, as containers on a private Docker network, run the way the Kubernetes manifests run
them (non-root uid 65532, read-only root filesystem, all capabilities dropped, no privilege
escalation). Their ports are published on 127.0.0.1 only; the same nginx (rendered from the
Ingress) and the recorder run on the host. The full containers are killed (`docker kill`) and
frozen (`docker pause`) mid-run. Also checks the images themselves: size, OCI labels, user, no
shell.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

import fallback as fb
from harness import ROOT, free_port, request, require_tool
from recorder import Recorder

TAG = "e2e"
LITE_MAX_BYTES = 50_000_000
FULL_MAX_BYTES = 350_000_000
RUN_ID = f"imgclass-e2e-{os.getpid()}"


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def images(binary, weights_dir):
    require_tool("docker")
    info = docker("info", check=False)
    assert info.returncode == 0, f"the Docker daemon is not reachable: {info.stderr}"
    out = subprocess.run(
        [str(ROOT / "scripts" / "ci" / "build_images.sh"), str(weights_dir), TAG],
        capture_output=True, text=True, timeout=1200,
    )
    assert out.returncode == 0, f"image build failed:\n{out.stderr[-4000:]}"
    print(out.stdout)
    return {t: int(docker("image", "inspect", "-f", "{{.Size}}", f"imgclass-{t}:{TAG}").stdout) for t in ("lite", "full")}


class ContainerPod:
    def __init__(self, name: str, image: str, network: str, port: int):
        self.name, self.image, self.network, self.port = name, image, network, port
        self.cid: str | None = None

    def restart(self, **env: str) -> "ContainerPod":
        self.remove()
        args = [
            "run", "-d", "--name", self.name, "--network", self.network,
            "-p", f"127.0.0.1:{self.port}:8080",
            # the restricted securityContext of manifests/base
            "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--user", "65532:65532", "--memory", "3g", "--pids-limit", "256",
            "-e", "IMGCLASS_THREADS=1",
        ]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.cid = docker(*args, self.image).stdout.strip()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = docker("inspect", "-f", "{{.State.Status}}", self.name, check=False).stdout.strip()
            assert state in ("created", "running"), f"{self.name} is {state}: {self.log_tail()}"
            try:
                if request(self.port, "GET", "/readyz", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not ready: {self.log_tail()}")

    def kill(self) -> None:
        docker("kill", self.name, check=False)

    def pause(self) -> None:
        docker("pause", self.name)

    def unpause(self) -> None:
        docker("unpause", self.name, check=False)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)

    def log_tail(self, n: int = 2000) -> str:
        r = docker("logs", "--tail", "40", self.name, check=False)
        return (r.stdout + r.stderr)[-n:]


@pytest.fixture(scope="module")
def topo(images, ingress, tmp_path_factory):
    require_tool("nginx")
    docker("network", "rm", RUN_ID, check=False)
    docker("network", "create", "--driver", "bridge", "--label", "imgclass-e2e=1", RUN_ID)
    lite = ContainerPod(f"{RUN_ID}-lite", f"imgclass-lite:{TAG}", RUN_ID, free_port())
    full_a = ContainerPod(f"{RUN_ID}-full-a", f"imgclass-full:{TAG}", RUN_ID, free_port())
    full_b = ContainerPod(f"{RUN_ID}-full-b", f"imgclass-full:{TAG}", RUN_ID, free_port())
    pods = [lite, full_a, full_b]
    recorder = None
    try:
        for p in pods:
            p.restart()
        recorder = Recorder("127.0.0.1", lite.port).start()
        with fb.behind_ingress(ingress, full_a, full_b, lite, recorder, tmp_path_factory.mktemp("nginx-docker")) as t:
            yield t
    finally:
        if recorder is not None:
            recorder.stop()
        for p in pods:
            p.unpause()
            p.remove()
        docker("network", "rm", RUN_ID, check=False)


def test_images_are_small_labelled_non_root_and_shell_less(images):
    assert images["lite"] <= LITE_MAX_BYTES, images
    assert images["full"] <= FULL_MAX_BYTES, images
    for t in ("lite", "full"):
        cfg = json.loads(docker("image", "inspect", f"imgclass-{t}:{TAG}").stdout)[0]["Config"]
        labels = cfg["Labels"]
        for key in ("source", "version", "revision"):
            assert labels.get(f"org.opencontainers.image.{key}"), f"{t}: OCI label {key} missing"
        assert cfg["User"] == "65532:65532"
        assert cfg["Entrypoint"][-2:] == ["--profile", t], cfg["Entrypoint"]
        sh = docker("run", "--rm", "--entrypoint", "/bin/sh", f"imgclass-{t}:{TAG}", "-c", "true", check=False)
        assert sh.returncode != 0, f"{t}: the image has a shell"
    ver = docker("run", "--rm", "--read-only", "--entrypoint", "/usr/local/bin/imgclass", f"imgclass-lite:{TAG}", "--version")
    assert "imgclass" in ver.stdout


def test_a_normal_requests_are_answered_by_full_containers(topo):
    fb.scenario_a_normal(topo)


def test_b_full_container_answering_500_falls_back_to_lite(topo):
    fb.scenario_b_fault_error(topo)


def test_d_full_container_killed_mid_request_falls_back_to_lite(topo):
    fb.scenario_d_killed_mid_request(topo)


def test_paused_full_container_falls_back_to_lite_after_read_timeout(topo):
    topo.set_full()
    topo.full_a.pause()
    try:
        imgs = fb.sample_images()
        responses = [fb.send(topo, imgs[i % len(imgs)], i) for i in range(4)]
        full, lite = fb.split(topo, responses, 504)
        assert lite >= 1 and full >= 1, (full, lite)
        for r in responses:
            if r.profile == "lite":
                assert topo.read_timeout_s * 0.9 <= r.elapsed < 2 * topo.read_timeout_s, r.elapsed
    finally:
        topo.full_a.unpause()


def test_f_client_errors_reach_the_client_and_never_lite(topo, ingress):
    fb.scenario_f_client_errors(topo, ingress.body_size_bytes)


def test_g_steady_load_with_container_faults_loses_nothing(topo):
    by = fb.scenario_g_steady_load(topo, fb.host_faults(topo))
    print(f"steady load answered by: {by}")
