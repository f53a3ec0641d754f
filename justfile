# imgclass task runner (https://github.com/casey/just; `cargo install just --locked`).
# `just` lists the recipes. `just test` is what CI runs.

set shell := ["bash", "-euo", "pipefail", "-c"]

target := "x86_64-unknown-linux-gnu"
static_flags := "-C target-feature=+crt-static -C strip=symbols"
venv := ".venv-ci"
py := venv / "bin/python"

# list the recipes
default:
    @just --list --unsorted

# static release binary (glibc, crt-static, stripped) -> target/dist/imgclass; the images use it
build:
    RUSTFLAGS="{{static_flags}}" cargo build --release --locked --target {{target}} --bin imgclass
    mkdir -p target/dist
    install -m 0555 target/{{target}}/release/imgclass target/dist/imgclass
    @ls -l target/dist/imgclass

# everything CI checks; runs every step, then prints one summary and fails if any step failed
test:
    bash scripts/ci/test_all.sh

# cargo fmt --check
fmt-check:
    cargo fmt --all --check -- --color never

# clippy on every target, warnings are errors
clippy:
    cargo clippy --all-targets --locked -- -D warnings

# every crate test (unit, integration, doc)
cargo-test:
    cargo test --locked
    # the GEMM kernels chosen by CPU vendor (ops::cpu::packed_gemms_by_default), each one forced
    IMGCLASS_WINO_GEMM=1 IMGCLASS_KXK_CV=1 cargo test --locked --lib winograd
    IMGCLASS_WINO_GEMM=1 IMGCLASS_KXK_CV=1 cargo test --locked --test parity
    IMGCLASS_WINO_GEMM=0 IMGCLASS_KXK_CV=0 cargo test --locked --lib winograd
    IMGCLASS_WINO_GEMM=0 IMGCLASS_KXK_CV=0 cargo test --locked --test parity
    # Wide ResNet's stages 1-2 on the whole batch, as before they ran image by image
    IMGCLASS_PER_IMAGE_STAGES=0 cargo test --locked --test parity
    # the AVX2 kernels, on AVX-512 CPUs too (IMGCLASS_SIMD caps ops::cpu::level)
    IMGCLASS_SIMD=avx2 cargo test --locked --lib ops
    IMGCLASS_SIMD=avx2 cargo test --locked --test parity

# the real torchvision weights of both models -> weights/ (needs internet)
weights:
    cargo run --release --locked --bin imgclass -- weights fetch --profile full --weights-dir weights

# synthetic weights (real names/shapes, calibrated values) -> DIR; for tests and offline images
weights-synthetic dir="target/dist/weights":
    RUSTFLAGS="{{static_flags}}" cargo run --release --locked --target {{target}} --example make_synthetic_weights -- {{dir}} full

# the lite and full images, tagged imgclass-{lite,full}:TAG, from the weights in WEIGHTS
images weights="weights" tag="dev": build
    scripts/ci/build_images.sh {{weights}} {{tag}}

# Python tools of the checks (.venv-ci): kubernetes-validate, checkov, actionlint, pytest
venv:
    [ -x {{py}} ] || python3 -m venv {{venv}}
    {{py}} -m pip install --quiet --disable-pip-version-check -r scripts/ci/requirements.txt

# render every kustomization, validate strictly, checkov the manifests and the Dockerfile
validate:
    {{py}} scripts/ci/validate_manifests.py

# actionlint (with shellcheck on `run:` scripts) on the workflows; shellcheck on the CI scripts
lint-workflows:
    command -v shellcheck >/dev/null || { echo "shellcheck is not installed" >&2; exit 1; }
    {{venv}}/bin/actionlint -no-color -shellcheck shellcheck .github/workflows/*.yml
    shellcheck .ci/run scripts/ci/*.sh scripts/k8s/*.sh
    @echo "actionlint + shellcheck: clean"

# what the e2e tests need: the static binary and synthetic weights in target/dist
e2e-prep: build
    [ -f target/dist/weights/wide_resnet50_2.safetensors ] && [ -f target/dist/weights/mobilenet_v3_large.safetensors ] || just weights-synthetic target/dist/weights

# ingress fallback e2e: real nginx + imgclass processes, then the Docker images as containers
e2e *args: e2e-prep
    cd scripts/e2e && ../../{{py}} -m pytest -v {{args}}

# only the nginx + processes half of the e2e
e2e-nginx: e2e-prep
    cd scripts/e2e && ../../{{py}} -m pytest -v test_nginx_fallback.py

# only the Docker half of the e2e
e2e-docker: e2e-prep
    cd scripts/e2e && ../../{{py}} -m pytest -v test_docker_fallback.py

# deploy to minikube (started if needed) or, with CLUSTER=current, to the current kubectl context
k8s-up weights="weights":
    bash scripts/k8s/up.sh {{weights}}

# delete the deployment (and the minikube profile when k8s-up created it)
k8s-down:
    bash scripts/k8s/down.sh

# classify samples/ through URL (e.g. the one k8s-up prints); checks top-5 when EXPECT=1
smoke url:
    python3 scripts/ci/smoke.py {{url}} {{ if env_var_or_default("EXPECT", "") == "1" { "--expect samples/expected.json" } else { "" } }}
