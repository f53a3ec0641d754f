#!/usr/bin/env bash
# Install what `just test` needs on a fresh Debian machine (run as root by .ci/run; idempotent):
# nginx (e2e), just, the Python tools (.venv-ci), and checks for what cannot be installed here
# (the Rust toolchain with rustfmt/clippy, kubectl with its built-in kustomize, a Docker daemon).
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive

# nginx: the e2e tests' ingress; shellcheck: actionlint checks the workflows' `run:` scripts with it;
# cmake and nasm: the build compiles libjpeg-turbo (JPEG decoding) from source, with its SIMD code.
if ! command -v nginx >/dev/null || ! command -v shellcheck >/dev/null \
  || ! command -v cmake >/dev/null || ! command -v nasm >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx shellcheck cmake nasm >/dev/null
fi
nginx -v
shellcheck --version | head -n2
cmake --version | head -n1
nasm -v

export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --version
cargo clippy --version
if ! command -v just >/dev/null; then
  cargo install just --locked --quiet
fi
just --version

# kubectl (kustomize v5 built in) renders the manifests; it is part of this machine image.
command -v kubectl >/dev/null || { echo "kubectl is required (kubectl kustomize renders the manifests)" >&2; exit 1; }
kubectl version --client

# The Docker daemon is started by the machine; start it if it is not running.
if ! docker info >/dev/null 2>&1; then
  (service docker start || (nohup dockerd >/tmp/dockerd.log 2>&1 &)) || true
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info --format 'docker engine {{.ServerVersion}}'

[ -x .venv-ci/bin/python ] || python3 -m venv .venv-ci
.venv-ci/bin/python -m pip install --quiet --disable-pip-version-check -r scripts/ci/requirements.txt
