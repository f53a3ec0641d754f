"""A recording HTTP/1.1 reverse proxy: the test's eyes at the lite side.

nginx's fallback location proxies to this proxy, which records every request exactly as it
arrived (method, path, headers, the complete body bytes) and forwards it unchanged to the lite
server, relaying the answer back. Tests then compare what lite received byte for byte with what
the client sent, and check the X-Code / X-Original-URI headers the ingress added.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    seq: int = 0
    extra: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Recorder:
    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):  # quiet
                pass

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._read_body()
                headers = {k.lower(): v for k, v in self.headers.items()}
                r = Recorded(self.command, self.path, headers, body)
                with rec._lock:
                    r.seq = len(rec._records)
                    rec._records.append(r)
                fwd = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
                fwd["Content-Length"] = str(len(body))
                try:
                    conn = http.client.HTTPConnection(*rec.upstream, timeout=120)
                    conn.request(self.command, self.path, body=body, headers=fwd)
                    resp = conn.getresponse()
                    data = resp.read()
                    r.status = resp.status
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP | {"content-length"}:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    conn.close()
                except OSError as e:  # lite unreachable: say so loudly (a 502 the test will see)
                    r.status = 599
                    msg = f"recorder: lite upstream failed: {e}".encode()
                    self.send_response_only(502, "Bad Gateway")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)

            do_POST = do_GET = do_PUT = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def records(self) -> list[Recorded]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
