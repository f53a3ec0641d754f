#!/usr/bin/env bash
# `just k8s-down`: remove the deployment; delete the minikube profile if `just k8s-up` created it.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster="${CLUSTER:-minikube}"
profile="${MINIKUBE_PROFILE:-imgclass}"
if [ "$cluster" = minikube ] && [ -f target/k8s-minikube-created ]; then
  minikube delete -p "$(cat target/k8s-minikube-created)"
  rm -f target/k8s-minikube-created
  exit 0
fi
if [ "$cluster" = minikube ]; then
  kubectl config use-context "$profile" >/dev/null
  kubectl delete -k manifests/overlays/minikube --ignore-not-found
else
  kubectl delete -k manifests --ignore-not-found
fi
