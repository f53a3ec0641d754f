#!/usr/bin/env bash
# `just k8s-up [WEIGHTS_DIR]`: deploy imgclass with the ingress fallback and print its URL.
#
#   CLUSTER=minikube (default)  start (or reuse) the minikube profile $MINIKUBE_PROFILE (imgclass),
#                               enable its ingress-nginx addon, build both images inside minikube's
#                               Docker, apply manifests/overlays/minikube.
#   CLUSTER=current             use the current kubectl context (an ingress-nginx controller must be
#                               installed). With REGISTRY=host/path the images are built, pushed
#                               there and deployed; without it the released images are deployed.
#
# WEIGHTS_DIR (default: weights) must hold the real weights; they are fetched when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

weights="${1:-weights}"
cluster="${CLUSTER:-minikube}"
profile="${MINIKUBE_PROFILE:-imgclass}"
tag="${TAG:-dev}"
ns=imgclass

need() { command -v "$1" >/dev/null || { echo "k8s-up needs \`$1\` on PATH" >&2; exit 1; }; }
need kubectl
need just

ensure_weights() {
  if [ ! -f "$weights/wide_resnet50_2.safetensors" ] || [ ! -f "$weights/mobilenet_v3_large.safetensors" ]; then
    echo "==> fetching the real weights into $weights"
    just build
    target/dist/imgclass weights fetch --profile full --weights-dir "$weights"
  fi
}

case "$cluster" in
  minikube)
    need minikube
    need docker
    if ! minikube status -p "$profile" >/dev/null 2>&1; then
      # Sized for the minikube overlay: 2 full pods (500m / 1Gi requested each, 2Gi limit) +
      # 1 lite pod (500m / 256Mi) + the ingress-nginx controller (100m / 90Mi) + the control
      # plane (~1 CPU / ~1.5Gi), with room for a rolling update's surge pod.
      echo "==> starting minikube profile $profile"
      minikube start -p "$profile" --cpus 4 --memory 8g --disk-size 20g
      mkdir -p target && echo "$profile" > target/k8s-minikube-created
    fi
    kubectl config use-context "$profile" >/dev/null
    echo "==> enabling the ingress-nginx addon"
    minikube -p "$profile" addons enable ingress
    ensure_weights
    echo "==> building the images inside minikube's Docker"
    just build
    # shellcheck disable=SC2046 # word splitting of the exported variables is intended
    eval $(minikube -p "$profile" docker-env)
    scripts/ci/build_images.sh "$weights" "$tag"
    overlay=manifests/overlays/minikube
    ;;
  current)
    ensure_weights
    if [ -n "${REGISTRY:-}" ]; then
      need docker
      just build
      scripts/ci/build_images.sh "$weights" "$tag"
      overlay="$(mktemp -d)"
      trap 'rm -rf "$overlay"' EXIT
      for t in full lite; do
        docker tag "imgclass-$t:$tag" "$REGISTRY/imgclass-$t:$tag"
        docker push "$REGISTRY/imgclass-$t:$tag"
      done
      cat > "$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(pwd)/manifests/base
images:
  - name: ghcr.io/imgclass/imgclass-full
    newName: $REGISTRY/imgclass-full
    newTag: "$tag"
  - name: ghcr.io/imgclass/imgclass-lite
    newName: $REGISTRY/imgclass-lite
    newTag: "$tag"
YAML
    else
      overlay=manifests
    fi
    ;;
  *)
    echo "CLUSTER must be minikube or current" >&2
    exit 2
    ;;
esac

echo "==> waiting for the ingress controller"
kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=300s

echo "==> applying $overlay"
kubectl apply -k "$overlay"
for d in imgclass-lite imgclass-full; do
  kubectl -n "$ns" rollout status "deployment/$d" --timeout=600s
done

echo "==> waiting for the Ingress address"
addr=""
for _ in $(seq 1 90); do
  addr="$(kubectl -n "$ns" get ingress imgclass -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}' 2>/dev/null || true)"
  [ -n "$addr" ] && break
  sleep 2
done
if [ "$cluster" = minikube ]; then
  # the addon listens on the node's port 80 (on macOS/Windows Docker drivers run `minikube tunnel`)
  addr="$(minikube -p "$profile" ip)"
fi
[ -n "$addr" ] || { echo "the Ingress got no address (is an ingress-nginx controller serving class nginx?)" >&2; exit 1; }
url="http://$addr"

echo "==> checking $url/readyz"
for _ in $(seq 1 60); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 2
done

cat <<MSG

imgclass is up: $url
  curl -sS -F file=@samples/chelsea.jpg "$url/classify?top_k=3"
  curl -sS --data-binary @samples/coffee.jpg -H 'Content-Type: image/jpeg' "$url/classify"
  just smoke $url
MSG
