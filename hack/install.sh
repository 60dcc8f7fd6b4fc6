#!/usr/bin/env bash
# `make install`: the platform onto the current cluster with Helm (images must be loaded).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
upgrade=false
helm status kubelambda --namespace kubelambda-system >/dev/null 2>&1 && upgrade=true
helm upgrade --install kubelambda "$repo_root/charts/kubelambda" --namespace kubelambda-system \
  --create-namespace --set image.tag="$KUBELAMBDA_IMAGE_TAG" --wait --timeout 180s "$@"
if $upgrade; then
  # Local images keep their tag when rebuilt, so an unchanged pod template would keep running
  # the old code: restart the platform's pods onto what `make images` just loaded.
  kubectl --namespace kubelambda-system rollout restart deployment \
    --selector app.kubernetes.io/instance=kubelambda >/dev/null
  kubectl --namespace kubelambda-system rollout status deployment \
    --selector app.kubernetes.io/instance=kubelambda --timeout 180s >/dev/null
fi
