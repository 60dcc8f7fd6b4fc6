#!/usr/bin/env bash
# `make install`: the platform onto the current cluster with Helm (images must be loaded).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
helm upgrade --install kubelambda "$repo_root/charts/kubelambda" --namespace kubelambda-system \
  --create-namespace --set image.tag="$KUBELAMBDA_IMAGE_TAG" --wait --timeout 180s "$@"
