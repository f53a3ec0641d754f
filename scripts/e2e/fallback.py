"""The ingress fallback scenarios (a)-(g) of the deployment issue, written once and run against
two topologies: `imgclass serve` processes (test_nginx_fallback.py) and the Docker images as
containers (test_docker_fallback.py).

Topology: client -> nginx (rendered from the Ingress) -> full-a, full-b (round robin);
nginx's fallback location -> recorder -> lite. Every request carries a unique X-Request-ID that
nginx forwards, so each client response is matched with what lite received (or did not).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from contextlib import contextmanager
from typing import Iterator, Protocol

from harness import NOT_AN_IMAGE, Image, Nginx, Response, free_port, classify, metric_sum, metrics, multipart, request, sample_images
from ingress_nginx import render
from recorder import Recorder, Recorded


class Pod(Protocol):
    name: str
    port: int

    def restart(self, **env: str) -> "Pod": ...
    def kill(self) -> None: ...
    def pause(self) -> None: ...
    def unpause(self) -> None: ...
    def log_tail(self, n: int = 2000) -> str: ...


@dataclass
class Topology:
    full_a: Pod
    full_b: Pod
    lite: Pod
    recorder: Recorder
    nginx_port: int
    read_timeout_s: float
    env_a: dict | None = None
    env_b: dict | None = None
    notes: list[str] = field(default_factory=list)

    def set_full(self, a: dict[str, str] | None = None, b: dict[str, str] | None = None) -> None:
        """(Re)start the full pods whose settings differ (None = healthy defaults)."""
        a, b = a or {}, b or {}
        if self.env_a != a:
            self.full_a.restart(**a)
            self.env_a = a
        if self.env_b != b:
            self.full_b.restart(**b)
            self.env_b = b
        self.recorder.clear()

    def forget(self, which: str) -> None:
        """The pod was killed/changed behind set_full's back: restart it next time."""
        if which == "a":
            self.env_a = None
        else:
            self.env_b = None


@contextmanager
def behind_ingress(ingress, full_a: Pod, full_b: Pod, lite: Pod, recorder: Recorder, prefix) -> Iterator[Topology]:
    """A real nginx, rendered from the Ingress, in front of the two full pods, with the recorder (in
    front of lite) as its fallback upstream; yields the Topology and stops nginx afterwards."""
    port = free_port()
    conf = render(
        ingress,
        listen_port=port,
        full_upstreams=[f"127.0.0.1:{full_a.port}", f"127.0.0.1:{full_b.port}"],
        lite_upstream=f"127.0.0.1:{recorder.port}",
        prefix=prefix,
    )
    nginx = Nginx(conf, prefix, port).start()
    try:
        t = Topology(full_a, full_b, lite, recorder, port, ingress.read_timeout_s, env_a={}, env_b={})
        yield t
        for note in t.notes:
            print(note)
    finally:
        nginx.stop()


def lite_records(topo: Topology, resp: Response) -> list[Recorded]:
    return [r for r in topo.recorder.records() if r.header("x-request-id") == resp.request_id]


def assert_answered_by_full(topo: Topology, resp: Response) -> None:
    assert resp.status == 200, f"{resp.status} {resp.body[:300]!r}"
    assert resp.profile == "full", f"expected full's answer, got {resp.body[:300]!r}"
    assert resp.header("x-imgclass-model") in ("wide_resnet50_2", "mobilenet_v3_large")
    assert not lite_records(topo, resp), "lite saw a request that full answered"


def assert_answered_by_lite(topo: Topology, resp: Response, code: int | tuple[int, ...], original_uri: str) -> None:
    """The client got lite's 200, and lite received the client's request unchanged except for
    the ingress's rewrite to `/` and its X-Code / X-Original-URI headers."""
    assert resp.status == 200, f"{resp.status} {resp.body[:300]!r}"
    assert resp.profile == "lite", f"expected lite's answer, got {resp.body[:300]!r}"
    assert resp.header("x-imgclass-model") == "mobilenet_v3_large"
    recs = lite_records(topo, resp)
    assert len(recs) == 1, f"lite saw request {resp.request_id} {len(recs)} times"
    r = recs[0]
    # `rewrite (.*) / break` replaces the path and keeps the query string (top_k survives)
    query = original_uri.partition("?")[2]
    assert r.method == "POST" and r.path == "/" + (f"?{query}" if query else ""), (r.method, r.path)
    codes = code if isinstance(code, tuple) else (code,)
    assert r.header("x-code") in [str(c) for c in codes], f"X-Code {r.header('x-code')} not in {codes}"
    assert r.header("x-original-uri") == original_uri
    assert r.body == resp.sent_body, (
        f"body at lite differs from the client's: {len(r.body)} vs {len(resp.sent_body)} bytes"
    )
    assert r.status == 200


def send(topo: Topology, image: Image, i: int, top_k: int = 3) -> Response:
    return classify(topo.nginx_port, image, as_multipart=bool(i % 2), top_k=top_k, timeout=120)


def split(topo: Topology, responses: list[Response], code: int | tuple[int, ...], top_k: int = 3) -> tuple[int, int]:
    """Check every response is full's or (with X-Code `code`) lite's; return (by_full, by_lite)."""
    full = lite = 0
    for r in responses:
        if r.profile == "lite":
            assert_answered_by_lite(topo, r, code, f"/classify?top_k={top_k}")
            lite += 1
        else:
            assert_answered_by_full(topo, r)
            full += 1
    return full, lite


def concurrently(fn, n: int) -> list:
    out: list = [None] * n
    errs: list = []

    def run(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errs.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errs, f"requests failed at the HTTP level: {errs}"
    return out


def wait_in_flight(pod: Pod, at_least: int = 1, timeout: float = 60.0) -> None:
    """Wait until `pod` is working on a classify request (the scrape itself counts as one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_sum(metrics(pod.port), "imgclass_http_requests_in_flight") >= at_least + 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"{pod.name} never had a request in flight")


# ----------------------------------------------------------------------------------------------
# Scenarios


def scenario_a_normal(topo: Topology) -> None:
    topo.set_full()
    imgs = sample_images()
    responses = [send(topo, imgs[i % len(imgs)], i) for i in range(4)]
    for r in responses:
        assert_answered_by_full(topo, r)
    assert topo.recorder.records() == []


def scenario_b_fault_error(topo: Topology) -> None:
    topo.set_full(a={"IMGCLASS_FAULT": "error"})
    imgs = sample_images()
    responses = [send(topo, imgs[i % len(imgs)], i) for i in range(6)]
    full, lite = split(topo, responses, 500)
    assert lite >= 1, "no request reached the broken pod"
    assert full >= 1, "the healthy full pod answered nothing"
    # the lite answer is the same classification lite gives for that image directly
    r = next(r for r in responses if r.profile == "lite")
    direct = request(topo.lite.port, "POST", "/classify?top_k=3", r.sent_body, {"Content-Type": _ctype(topo, r)})
    assert direct.status == 200 and direct.json()["predictions"] == r.json()["predictions"]


def _ctype(topo: Topology, r: Response) -> str:
    rec = lite_records(topo, r)[0]
    return rec.header("content-type") or "application/octet-stream"


def scenario_c_fault_stall(topo: Topology) -> None:
    topo.set_full(a={"IMGCLASS_FAULT": "stall"})
    imgs = sample_images()
    responses = [send(topo, imgs[i % len(imgs)], i) for i in range(4)]
    full, lite = split(topo, responses, 504)
    assert lite >= 1 and full >= 1, (full, lite)
    for r in responses:
        if r.profile == "lite":
            # answered after one read timeout (not retried on the other full pod: a POST that
            # reached a pod is never re-sent to another full pod), well before a second one
            assert r.elapsed >= topo.read_timeout_s * 0.9, r.elapsed
            assert r.elapsed < 2 * topo.read_timeout_s, r.elapsed


def scenario_d_killed_mid_request(topo: Topology) -> None:
    # full-a answers slowly (its Wide ResNet waits past the primary deadline), so a request is
    # surely in flight there when it is killed
    topo.set_full(a={"IMGCLASS_TEST_PRIMARY_DELAY_MS": "4000"})
    imgs = sample_images()
    results: list = [None] * 2
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, send(topo, imgs[i], i))) for i in range(2)]
    for t in threads:
        t.start()
    wait_in_flight(topo.full_a)
    topo.full_a.kill()
    topo.forget("a")
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None for r in results), "a request was lost"
    full, lite = split(topo, results, 502)
    assert lite >= 1, "the request in flight on the killed pod did not reach lite"
    # the dead pod refuses connections: nginx tries the other full pod (not lite)
    topo.recorder.clear()
    after = [send(topo, imgs[i % len(imgs)], i) for i in range(4)]
    for r in after:
        assert_answered_by_full(topo, r)


def scenario_e_overload(topo: Topology) -> None:
    shed = {"IMGCLASS_MAX_CONCURRENT": "1", "IMGCLASS_QUEUE_DEPTH": "0", "IMGCLASS_TEST_PRIMARY_DELAY_MS": "1000"}
    topo.set_full(a=shed, b=shed)
    imgs = sample_images()
    responses = concurrently(lambda i: send(topo, imgs[i % len(imgs)], i), 6)
    # a pod that sheds answers 503 at once, possibly before nginx finished uploading a large
    # body; closing that connection makes nginx see a reset instead (502): lite either way
    full, lite = split(topo, responses, (503, 502))
    assert lite >= 1, "no request was shed to lite"
    assert full >= 1, "full answered nothing"
    shed_total = sum(
        metric_sum(metrics(p.port), "imgclass_shed_requests_total", reason="overloaded") for p in (topo.full_a, topo.full_b)
    )
    # every shed request was answered by lite (nginx never re-sends a POST to another full pod)
    assert 1 <= shed_total <= lite, (shed_total, lite)


def scenario_f_client_errors(topo: Topology, body_limit: int) -> None:
    topo.set_full()
    port = topo.nginx_port
    cases = []
    r = request(port, "POST", "/classify", NOT_AN_IMAGE.data, {"Content-Type": "image/jpeg"})
    cases.append(("text saved as .jpg, raw", r, (415, 422)))
    body, ctype = multipart(NOT_AN_IMAGE.data, NOT_AN_IMAGE.name, "image/jpeg")
    r = request(port, "POST", "/classify", body, {"Content-Type": ctype})
    cases.append(("text saved as .jpg, multipart", r, (415, 422)))
    r = request(port, "POST", "/classify", b"", {"Content-Type": "image/png"})
    cases.append(("empty body", r, (400,)))
    body, ctype = multipart(sample_images()[0].data, "x.png", "image/png", field="image")
    r = request(port, "POST", "/classify", body, {"Content-Type": ctype})
    cases.append(("multipart without `file`", r, (400,)))
    r = request(port, "POST", "/classify", b"GIF89a" + b"\0" * 10, {"Content-Type": "text/plain"})
    cases.append(("wrong content type", r, (415,)))
    for name, r, codes in cases:
        assert r.status in codes, f"{name}: {r.status} {r.body[:200]!r}"
        err = r.json()
        assert err.get("error") and err.get("error_type"), f"{name}: {err}"
        assert not lite_records(topo, r), f"{name}: lite saw a client error"
    # bigger than proxy-body-size: nginx's own 413 (a 4xx: not re-routed either)
    r = request(port, "POST", "/classify", b"\xff" * (body_limit + 1024), {"Content-Type": "image/jpeg"})
    assert r.status == 413, r.status
    assert not lite_records(topo, r)
    assert topo.recorder.records() == [], "lite saw client errors"


def scenario_h_no_full_pod_left(topo: Topology) -> None:
    """Every full pod gone (as a Service without ready endpoints): lite answers everything."""
    topo.set_full()
    topo.full_a.kill()
    topo.full_b.kill()
    topo.forget("a")
    topo.forget("b")
    imgs = sample_images()
    for i in range(3):
        r = send(topo, imgs[i % len(imgs)], i)
        assert_answered_by_lite(topo, r, 502, "/classify?top_k=3")


def scenario_i_graceful_shutdown(topo: Topology, terminate) -> None:
    """A full pod gets SIGTERM (rollout, scale-in) with requests in flight: they complete, the
    process exits 0, and nothing fails; new requests go to the other full pod or lite."""
    topo.set_full(a={"IMGCLASS_TEST_PRIMARY_DELAY_MS": "1500"})
    imgs = sample_images()
    results: list = [None] * 4
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, send(topo, imgs[i % len(imgs)], i))) for i in range(4)]
    for t in threads:
        t.start()
    wait_in_flight(topo.full_a)
    code = terminate()
    topo.forget("a")
    for t in threads:
        t.join(timeout=120)
    assert code == 0, f"full-a exited with {code} after SIGTERM"
    assert all(r is not None for r in results), "a request was lost"
    for r in results:
        assert r.status == 200, (r.status, r.body[:200])
        if r.profile == "lite":
            assert_answered_by_lite(topo, r, int(lite_records(topo, r)[0].header("x-code")), "/classify?top_k=3")
        else:
            assert_answered_by_full(topo, r)
    assert any(r.profile == "full" for r in results)


def scenario_g_steady_load(topo: Topology, faults: list[tuple[str, callable]], total: int = 40, clients: int = 4) -> dict:
    """`clients` threads send `total` requests (every 8th a non-image); `faults` run one after the
    other while the load runs, each once a share of the requests is answered."""
    topo.set_full()
    imgs = sample_images()
    lock = threading.Lock()
    nxt = [0]
    done: list[tuple[int, Image, Response]] = []
    errors: list = []

    def worker():
        while True:
            with lock:
                i = nxt[0]
                if i >= total:
                    return
                nxt[0] += 1
            img = NOT_AN_IMAGE if i % 8 == 7 else imgs[i % len(imgs)]
            try:
                r = send(topo, img, i)
            except Exception as e:  # noqa: BLE001 - a lost request, asserted below
                errors.append((i, repr(e)))
                continue
            with lock:
                done.append((i, img, r))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for k, (label, action) in enumerate(faults):
        target = total * (k + 1) // (len(faults) + 1)
        deadline = time.monotonic() + 300
        while len(done) + len(errors) < target and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        topo.notes.append(f"steady load: {label} after {len(done)} answers")
        action()
    for t in threads:
        t.join(timeout=600)
    assert not errors, f"requests lost: {errors}"
    assert len(done) == total, f"{len(done)} of {total} answered"
    by = {"full": 0, "lite": 0, "4xx": 0}
    for i, img, r in done:
        if img is NOT_AN_IMAGE:
            assert r.status in (415, 422), f"request {i}: non-image got {r.status}"
            # a healthy full pod answers the 4xx itself; only a request that hit a broken or
            # frozen pod (5xx, before it looked at the body) reaches lite, which gives the 4xx
            for rec in lite_records(topo, r):
                assert int(rec.header("x-code")) in (500, 502, 503, 504)
                assert rec.body == r.sent_body and rec.status == r.status
            by["4xx"] += 1
        elif r.profile == "lite":
            recs = lite_records(topo, r)
            assert len(recs) == 1, f"request {i}: lite saw it {len(recs)} times"
            code = int(recs[0].header("x-code"))
            assert code in (500, 502, 503, 504), code
            assert_answered_by_lite(topo, r, code, "/classify?top_k=3")
            by["lite"] += 1
        else:
            assert_answered_by_full(topo, r)
            by["full"] += 1
    assert by["lite"] >= 1, "the faults never sent anything to lite"
    return by


def host_faults(topo: Topology) -> list[tuple[str, callable]]:
    """Mid-run faults on `imgclass serve` processes / containers."""

    def a_broken():
        topo.full_a.restart(IMGCLASS_FAULT="error")
        topo.forget("a")

    def b_paused():
        topo.full_b.pause()

    def b_resumed_a_killed():
        topo.full_b.unpause()
        topo.full_a.kill()
        topo.forget("a")

    return [("full-a restarted with --fault error", a_broken), ("full-b paused", b_paused),
            ("full-b resumed, full-a killed", b_resumed_a_killed)]

