#!/usr/bin/env bash
# Build the imgclass-lite and imgclass-full images from target/dist (see Dockerfile).
#   scripts/ci/build_images.sh WEIGHTS_DIR TAG
# WEIGHTS_DIR holds mobilenet_v3_large.safetensors and wide_resnet50_2.safetensors (real ones from
# `just weights`, or synthetic ones from `just weights-synthetic`); they are staged into
# target/dist/weights, the only weights the Docker build context admits (.dockerignore).
set -euo pipefail
cd "$(dirname "$0")/../.."
weights="${1:?usage: build_images.sh WEIGHTS_DIR TAG}"
tag="${2:?usage: build_images.sh WEIGHTS_DIR TAG}"
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 1; }
[ -x target/dist/imgclass ] || { echo "target/dist/imgclass missing: run \`just build\`" >&2; exit 1; }
mkdir -p target/dist/weights
for m in mobilenet_v3_large wide_resnet50_2; do
  src="$weights/$m.safetensors"
  [ -f "$src" ] || { echo "$src missing (\`just weights\` or \`just weights-synthetic\`)" >&2; exit 1; }
  if [ "$(realpath "$src")" != "$(realpath -m "target/dist/weights/$m.safetensors")" ]; then
    cp -f "$src" "target/dist/weights/$m.safetensors"
  fi
  # readable by the image's non-root user (COPY keeps the mode; the files are owned by root)
  chmod 0444 "target/dist/weights/$m.safetensors"
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
for target in lite full; do
  docker build --target "$target" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
    -t "imgclass-$target:$tag" . >&2
done
for target in lite full; do
  size=$(docker image inspect -f '{{.Size}}' "imgclass-$target:$tag")
  echo "imgclass-$target:$tag $size bytes ($((size / 1000000)) MB)"
done
