"""Ingress fallback, end to end, with real processes: a real nginx configured as ingress-nginx
renders manifests/base/ingress.yaml, in front of two `imgclass serve --profile full` and one
`--profile lite` (synthetic weights), all on 127.0.0.1. Scenarios (a)-(g) are in fallback.py.
"""

from __future__ import annotations

import pytest

import fallback as fb
from harness import Server, free_port, require_tool
from recorder import Recorder


@pytest.fixture(scope="module")
def topo(binary, weights_dir, ingress, tmp_path_factory):
    require_tool("nginx")
    logdir = tmp_path_factory.mktemp("logs")
    lite = Server(binary, weights_dir, "lite", free_port(), logdir, "lite").start()
    full_a = Server(binary, weights_dir, "full", free_port(), logdir, "full-a").start()
    full_b = Server(binary, weights_dir, "full", free_port(), logdir, "full-b").start()
    procs = [lite, full_a, full_b]
    recorder = Recorder("127.0.0.1", lite.port).start()
    try:
        for p in procs:
            p.wait_ready()
        with fb.behind_ingress(ingress, full_a, full_b, lite, recorder, tmp_path_factory.mktemp("nginx")) as t:
            yield t
    finally:
        recorder.stop()
        for p in procs:
            p.kill()


def test_a_normal_requests_are_answered_by_full(topo):
    fb.scenario_a_normal(topo)


def test_b_full_pod_answering_500_falls_back_to_lite(topo):
    fb.scenario_b_fault_error(topo)


def test_c_stalled_full_pod_falls_back_to_lite_after_read_timeout(topo):
    fb.scenario_c_fault_stall(topo)


def test_d_full_pod_killed_mid_request_falls_back_to_lite(topo):
    fb.scenario_d_killed_mid_request(topo)


def test_e_overloaded_full_sheds_503_to_lite(topo):
    fb.scenario_e_overload(topo)


def test_f_client_errors_reach_the_client_and_never_lite(topo, ingress):
    fb.scenario_f_client_errors(topo, ingress.body_size_bytes)


def test_h_no_full_pod_left_lite_answers_everything(topo):
    fb.scenario_h_no_full_pod_left(topo)


def test_i_sigterm_on_a_full_pod_loses_nothing(topo):
    fb.scenario_i_graceful_shutdown(topo, topo.full_a.terminate)


def test_g_steady_load_with_faults_loses_nothing(topo):
    by = fb.scenario_g_steady_load(topo, fb.host_faults(topo))
    print(f"steady load answered by: {by}")
