#!/usr/bin/env python3
"""Validate the Kubernetes manifests and the Dockerfile (run by `just validate`, part of `just test`).

For each kustomization (default, minikube overlay, gateway-api overlay):
  1. render it with `kubectl kustomize` (kustomize v5 built into kubectl);
  2. validate every rendered object strictly (unknown fields rejected) with kubernetes-validate,
     against the oldest Kubernetes version the manifests support (1.30: `preStop.sleep`) and the
     newest the validator knows;
  3. Gateway API / Envoy Gateway objects (CRDs, whose schemas kubernetes-validate does not ship
     and which cannot be downloaded here) are listed explicitly in SKIPPED_SCHEMAS with the reason;
     instead of schema validation they get structural and cross-reference checks (every route,
     backend and policy reference resolves to an object rendered with it). Any other kind
     without a schema fails.
  4. checkov (policy scanner) on the rendered manifests and on the Dockerfile; every inline skip
     must carry a justification.
A self-test first proves that strict validation rejects an unknown field and that checkov flags
an insecure Deployment, so a toothless validator cannot pass silently.

Needs: kubectl, and kubernetes-validate + checkov + PyYAML (installed by .ci/run into .venv-ci).
Every missing tool is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["manifests", "manifests/overlays/minikube", "manifests/overlays/gateway-api"]
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

# kind -> (apiVersion, why its schema is skipped)
SKIPPED_SCHEMAS = {
    "Gateway": (
        "gateway.networking.k8s.io/v1",
        "Gateway API CRD: schema not bundled by kubernetes-validate, not downloadable offline",
    ),
    "HTTPRoute": (
        "gateway.networking.k8s.io/v1",
        "Gateway API CRD: schema not bundled by kubernetes-validate, not downloadable offline",
    ),
    "Backend": (
        "gateway.envoyproxy.io/v1alpha1",
        "Envoy Gateway CRD: schema not bundled by kubernetes-validate, not downloadable offline",
    ),
    "BackendTrafficPolicy": (
        "gateway.envoyproxy.io/v1alpha1",
        "Envoy Gateway CRD: schema not bundled by kubernetes-validate, not downloadable offline",
    ),
}

RESULTS: list[tuple[str, bool, str]] = []


def record(name: str, ok: bool, detail: str = "") -> None:
    RESULTS.append((name, ok, detail))
    print(f"{'PASS' if ok else 'FAIL'} {name}{(': ' + detail) if detail and not ok else ''}", flush=True)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"FAIL: required tool `{name}` not found on PATH (run .ci/run or see README 'Development')")
    return path


def render(target: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / target)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def strict_validate(doc: dict, version: str) -> str | None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return f"{e.message} at {'/'.join(str(p) for p in e.path)}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"no schema: {e}"
    return None


def crd_checks(docs: list[dict]) -> list[str]:
    """Structural and cross-reference checks for the objects whose schemas are skipped."""
    errs: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    services = by_kind.get("Service", {})
    for name, gw in by_kind.get("Gateway", {}).items():
        spec = gw.get("spec", {})
        if not spec.get("gatewayClassName"):
            errs.append(f"Gateway {name}: no gatewayClassName")
        if not spec.get("listeners"):
            errs.append(f"Gateway {name}: no listeners")
    for name, route in by_kind.get("HTTPRoute", {}).items():
        spec = route.get("spec", {})
        for p in spec.get("parentRefs", []):
            if p.get("kind", "Gateway") == "Gateway" and p["name"] not in by_kind.get("Gateway", {}):
                errs.append(f"HTTPRoute {name}: parentRef Gateway {p['name']} not rendered")
        for rule in spec.get("rules", []):
            refs = rule.get("backendRefs", [])
            if not refs:
                errs.append(f"HTTPRoute {name}: rule without backendRefs")
            for ref in refs:
                kind = ref.get("kind", "Service")
                if kind == "Service":
                    svc = services.get(ref["name"])
                    if svc is None:
                        errs.append(f"HTTPRoute {name}: Service {ref['name']} not rendered")
                    elif ref.get("port") not in [p["port"] for p in svc["spec"]["ports"]]:
                        errs.append(f"HTTPRoute {name}: Service {ref['name']} has no port {ref.get('port')}")
                elif kind == "Backend":
                    be = by_kind.get("Backend", {}).get(ref["name"])
                    if be is None:
                        errs.append(f"HTTPRoute {name}: Backend {ref['name']} not rendered")
                    elif ref.get("port") not in [e["fqdn"]["port"] for e in be["spec"]["endpoints"]]:
                        errs.append(f"HTTPRoute {name}: Backend {ref['name']} has no port {ref.get('port')}")
                else:
                    errs.append(f"HTTPRoute {name}: unexpected backendRef kind {kind}")
            if not any(r.get("kind") == "Backend" for r in refs):
                errs.append(f"HTTPRoute {name}: no fallback Backend in a rule")
    for name, be in by_kind.get("Backend", {}).items():
        for ep in be["spec"].get("endpoints", []):
            host = ep.get("fqdn", {}).get("hostname", "")
            m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", host)
            if not m:
                errs.append(f"Backend {name}: endpoint {host!r} is not an in-cluster Service FQDN")
                continue
            svc = services.get(m.group(1))
            if svc is None or svc["metadata"].get("namespace") != m.group(2):
                errs.append(f"Backend {name}: {host} names no rendered Service")
            elif ep["fqdn"].get("port") not in [p["port"] for p in svc["spec"]["ports"]]:
                errs.append(f"Backend {name}: Service {m.group(1)} has no port {ep['fqdn'].get('port')}")
    for name, pol in by_kind.get("BackendTrafficPolicy", {}).items():
        for t in pol["spec"].get("targetRefs", []):
            if t["name"] not in by_kind.get(t["kind"], {}):
                errs.append(f"BackendTrafficPolicy {name}: target {t['kind']} {t['name']} not rendered")
        codes = pol["spec"].get("retry", {}).get("retryOn", {}).get("httpStatusCodes", [])
        if any(c < 500 for c in codes):
            errs.append(f"BackendTrafficPolicy {name}: retries a 4xx ({codes}); client errors must reach the client")
    return errs


def run_checkov(path: Path, framework: str) -> tuple[bool, str]:
    exe = str(Path(sys.executable).parent / "checkov")
    if not Path(exe).exists():
        exe = require_tool("checkov")
    proc = subprocess.run(
        [exe, "-f", str(path), "--framework", framework, "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_ANALYTICS": "1"},
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return False, f"checkov exit {proc.returncode}, unparsable output: {proc.stdout[-500:]} {proc.stderr[-500:]}"
    reports = report if isinstance(report, list) else [report]
    failed, skipped, passed = [], [], 0
    for r in reports:
        res = r.get("results", {})
        passed += int(r.get("summary", {}).get("passed", 0))
        failed += [f"{c['check_id']} {c.get('resource')}" for c in res.get("failed_checks", [])]
        skipped += res.get("skipped_checks", [])
    for s in skipped:
        reason = (s.get("check_result", {}).get("suppress_comment") or "").strip()
        if len(reason) < 15 or reason.lower().startswith("no comment"):
            failed.append(f"skip of {s['check_id']} without a justification")
    if passed == 0:
        failed.append("checkov ran no check")
    return not failed, "; ".join(failed)


def self_test() -> None:
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i:1", "imagePullPolicy": "Always", "bogusField": 1}]},
            },
        },
    }
    record("self-test: strict schema validation rejects an unknown field", strict_validate(bad, K8S_VERSIONS[0]) is not None)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "insecure.yaml"
        del bad["spec"]["template"]["spec"]["containers"][0]["bogusField"]
        p.write_text(yaml.safe_dump(bad))
        ok, _ = run_checkov(p, "kubernetes")
        record("self-test: checkov flags a Deployment without securityContext/probes/limits", not ok)


def main() -> int:
    require_tool("kubectl")
    self_test()
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            try:
                docs = render(target)
            except subprocess.CalledProcessError as e:
                record(f"{target}: kustomize renders", False, e.stderr.strip())
                continue
            record(f"{target}: kustomize renders ({len(docs)} objects)", bool(docs))
            for d in docs:
                ident = f"{d['kind']}/{d['metadata']['name']}"
                if d["kind"] in SKIPPED_SCHEMAS:
                    api, why = SKIPPED_SCHEMAS[d["kind"]]
                    record(f"{target}: {ident} apiVersion {api}", d["apiVersion"] == api, d["apiVersion"])
                    print(f"     schema skipped for {ident}: {why}")
                    continue
                for v in K8S_VERSIONS:
                    err = strict_validate(d, v)
                    record(f"{target}: {ident} strict schema k8s {v}", err is None, err or "")
            crd_errs = crd_checks(docs)
            if any(d["kind"] in SKIPPED_SCHEMAS for d in docs):
                record(f"{target}: Gateway API / Envoy Gateway references resolve", not crd_errs, "; ".join(crd_errs))
            out = Path(tmp) / (target.replace("/", "_") + ".yaml")
            out.write_text(yaml.safe_dump_all(docs))
            ok, detail = run_checkov(out, "kubernetes")
            record(f"{target}: checkov", ok, detail)
    ok, detail = run_checkov(ROOT / "Dockerfile", "dockerfile")
    record("Dockerfile: checkov", ok, detail)
    n_fail = sum(1 for _, ok, _ in RESULTS if not ok)
    print(f"manifests: {len(RESULTS) - n_fail} passed, {n_fail} failed")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
