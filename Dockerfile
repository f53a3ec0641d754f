# imgclass container images. Two targets that differ only in the bundled weights and the profile:
#
#   lite  MobileNetV3-Large only                  imgclass serve --profile lite
#   full  Wide ResNet-50-2 + MobileNetV3-Large   imgclass serve --profile full
#
# No base image is pulled: the images are built FROM scratch around a static binary that is built
# outside Docker (no Rust image can be pulled either). `just images` does all of this; by hand:
#
#   RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
#     cargo build --release --locked --target x86_64-unknown-linux-gnu
#   mkdir -p target/dist/weights
#   install -m 0555 target/x86_64-unknown-linux-gnu/release/imgclass target/dist/imgclass
#   cp weights/*.safetensors target/dist/weights/     # `imgclass weights fetch --profile full`
#   docker build --target full -t imgclass:full .
#   docker build --target lite -t imgclass:lite .
#
# The build context is the repository root; .dockerignore admits only target/dist/. The binary is
# statically linked against glibc (crt-static), so the image needs no libc, no shell and no
# /etc/passwd: it runs as the numeric user 65532 and works with a read-only root filesystem (the
# server writes nothing to disk). Weights are read-only files owned by root.

# Paths inside the build context (overridable, e.g. by the release workflow).
ARG BINARY=target/dist/imgclass
ARG WEIGHTS=target/dist/weights

FROM scratch AS base
ARG BINARY
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=https://github.com/imgclass/imgclass
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="imgclass" \
      org.opencontainers.image.description="ImageNet image classification over HTTP (Wide ResNet-50-2, MobileNetV3-Large) on candle, CPU" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY ${BINARY} /usr/local/bin/imgclass
# JSON log lines for container log collectors; listen on all interfaces of the pod/container.
ENV IMGCLASS_ADDR=0.0.0.0:8080 \
    IMGCLASS_JSON_LOGS=true \
    IMGCLASS_WEIGHTS_DIR=/weights
EXPOSE 8080
# 65532 = the conventional "nonroot" uid/gid of distroless images; numeric so that Kubernetes'
# runAsNonRoot can verify it without an /etc/passwd.
USER 65532:65532
# Liveness/readiness are checked by the orchestrator (Kubernetes probes on /healthz and /readyz):
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK: the FROM-scratch image has no shell or HTTP client to run one; Kubernetes probes /healthz and /readyz instead

FROM base AS lite
ARG WEIGHTS
COPY ${WEIGHTS}/mobilenet_v3_large.safetensors /weights/
ENTRYPOINT ["/usr/local/bin/imgclass", "serve", "--profile", "lite"]

FROM base AS full
ARG WEIGHTS
COPY ${WEIGHTS}/mobilenet_v3_large.safetensors ${WEIGHTS}/wide_resnet50_2.safetensors /weights/
ENTRYPOINT ["/usr/local/bin/imgclass", "serve", "--profile", "full"]
