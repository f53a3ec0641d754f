"""Render manifests/base/ingress.yaml into a plain nginx.conf the way ingress-nginx does.

ingress-nginx turns the Ingress annotations into nginx directives (controller template
`nginx.tmpl`); this module reproduces the directives that matter for imgclass's fallback so that
the e2e tests run a real nginx with exactly the values the Ingress ships:

  location /  (the Ingress path, backend imgclass-full)
      client_max_body_size        <- proxy-body-size
      client_body_buffer_size     <- client-body-buffer-size
      proxy_connect_timeout       <- proxy-connect-timeout
      proxy_send_timeout          <- proxy-send-timeout
      proxy_read_timeout          <- proxy-read-timeout
      proxy_next_upstream         <- proxy-next-upstream
      proxy_next_upstream_tries   <- proxy-next-upstream-tries
      proxy_request_buffering     <- proxy-request-buffering
      proxy_intercept_errors on + error_page <code> = @custom_<lite>_<code>
                                  <- custom-http-errors + default-backend
  location @custom_<lite>_<code>  (one per code, as the CUSTOM_ERRORS template renders it)
      internal; proxy_intercept_errors off;
      proxy_set_header X-Code <code>; X-Format; X-Original-URI $request_uri; X-Namespace;
      X-Ingress-Name; X-Service-Name; X-Service-Port; X-Request-ID; Host
      rewrite (.*) / break; proxy_pass to the default backend

Upstreams are plain nginx upstream blocks standing in for ingress-nginx's Lua balancer (which
does round robin over the Service's endpoints with no passive marking: max_fails=0). The named
locations inherit the controller's global defaults (connect 5 s, send/read 60 s), as in the
real controller, where the annotations apply to the Ingress's own location only.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INGRESS = ROOT / "manifests" / "base" / "ingress.yaml"
PREFIX = "nginx.ingress.kubernetes.io/"

# ingress-nginx controller defaults (ConfigMap defaults) for what the annotations do not set.
CONTROLLER_DEFAULTS = {
    "proxy-connect-timeout": "5",
    "proxy-send-timeout": "60",
    "proxy-read-timeout": "60",
    "proxy-body-size": "1m",
    "client-body-buffer-size": "8k",
    "proxy-next-upstream": "error timeout",
    "proxy-next-upstream-tries": "3",
    "proxy-next-upstream-timeout": "0",
    "proxy-request-buffering": "on",
}


@dataclass(frozen=True)
class IngressSettings:
    annotations: dict[str, str]
    full_service: str
    namespace: str
    ingress_name: str

    def get(self, key: str) -> str:
        return self.annotations.get(key, CONTROLLER_DEFAULTS.get(key, ""))

    @property
    def read_timeout_s(self) -> float:
        return float(self.get("proxy-read-timeout"))

    @property
    def connect_timeout_s(self) -> float:
        return float(self.get("proxy-connect-timeout"))

    @property
    def next_upstream_tries(self) -> int:
        return int(self.get("proxy-next-upstream-tries"))

    @property
    def error_codes(self) -> list[int]:
        return [int(c) for c in self.get("custom-http-errors").split(",") if c.strip()]

    @property
    def default_backend(self) -> str:
        return self.get("default-backend")

    @property
    def body_size_bytes(self) -> int:
        v = self.get("proxy-body-size").lower()
        mult = {"k": 1024, "m": 1024**2, "g": 1024**3}.get(v[-1], 1)
        return int(v.rstrip("kmg")) * mult


def load_ingress(path: Path = INGRESS) -> IngressSettings:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    ing = next(d for d in docs if d["kind"] == "Ingress")
    ann = {k[len(PREFIX):]: str(v) for k, v in ing["metadata"].get("annotations", {}).items() if k.startswith(PREFIX)}
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
    return IngressSettings(ann, backend, ing["metadata"].get("namespace", "imgclass"), ing["metadata"]["name"])


def _worker_user() -> str:
    """Started as root (CI), nginx's workers would switch to `nobody`, which cannot enter the
    test's private temp directories: keep them as the invoking user. Unprivileged: no directive."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"


def render(
    settings: IngressSettings,
    *,
    listen_port: int,
    full_upstreams: list[str],
    lite_upstream: str,
    prefix: Path,
) -> str:
    """nginx.conf text for a server on 127.0.0.1:listen_port."""
    s = settings
    lite_name = f"{s.namespace}-{s.default_backend}-80"
    error_pages = "\n".join(f"            error_page {c} = @custom_{lite_name}_{c};" for c in s.error_codes)
    custom_locations = "\n".join(
        f"""
        location @custom_{lite_name}_{c} {{
            internal;
            proxy_intercept_errors off;
            proxy_set_header       X-Code             {c};
            proxy_set_header       X-Format           $http_accept;
            proxy_set_header       X-Original-URI     $request_uri;
            proxy_set_header       X-Namespace        {s.namespace};
            proxy_set_header       X-Ingress-Name     {s.ingress_name};
            proxy_set_header       X-Service-Name     {s.full_service};
            proxy_set_header       X-Service-Port     80;
            proxy_set_header       X-Request-ID       $req_id;
            proxy_set_header       Host               $host;
            proxy_set_header       Connection         "";
            set $proxy_upstream_name "{lite_name}";
            rewrite                (.*) / break;
            proxy_pass             http://default_backend;
        }}"""
        for c in s.error_codes
    )
    fulls = "\n".join(f"        server {u} max_fails=0;" for u in full_upstreams)
    tmp = prefix / "tmp"
    for d in ("client_body", "proxy"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
        os.chmod(tmp / d, 0o777)
    os.chmod(tmp, 0o777)
    return f"""# Rendered by scripts/e2e/ingress_nginx.py from {INGRESS.relative_to(ROOT)}
{_worker_user()}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format upstreaminfo '$remote_addr "$request" $status $body_bytes_sent '
                            'upstream=$upstream_addr upstream_status=$upstream_status '
                            'upstream_time=$upstream_response_time req_id=$req_id';
    access_log {prefix}/access.log upstreaminfo;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    # controller-wide defaults (ConfigMap), inherited by the @custom_* locations
    proxy_connect_timeout {CONTROLLER_DEFAULTS['proxy-connect-timeout']}s;
    proxy_send_timeout {CONTROLLER_DEFAULTS['proxy-send-timeout']}s;
    proxy_read_timeout {CONTROLLER_DEFAULTS['proxy-read-timeout']}s;
    proxy_http_version 1.1;
    proxy_buffering off;
    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        ""      $request_id;
    }}
    upstream full_backend {{
{fulls}
        keepalive 32;
    }}
    upstream default_backend {{
        server {lite_upstream} max_fails=0;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        server_name _;
        location / {{
            client_max_body_size {s.get('proxy-body-size')};
            client_body_buffer_size {s.get('client-body-buffer-size')};
            proxy_connect_timeout {s.get('proxy-connect-timeout')}s;
            proxy_send_timeout {s.get('proxy-send-timeout')}s;
            proxy_read_timeout {s.get('proxy-read-timeout')}s;
            proxy_request_buffering {s.get('proxy-request-buffering')};
            proxy_next_upstream {s.get('proxy-next-upstream')};
            proxy_next_upstream_timeout {s.get('proxy-next-upstream-timeout')};
            proxy_next_upstream_tries {s.get('proxy-next-upstream-tries')};
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $req_id;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Connection "";
            proxy_intercept_errors on;
{error_pages}
            proxy_pass http://full_backend;
        }}
{custom_locations}
    }}
}}
"""
