#!/usr/bin/env bash
# `make cluster-up`: a single-node Kubernetes cluster, kubeconfig at .cluster/kubeconfig.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
provider="$("$hack_dir/cluster-provider.sh")"
start=$SECONDS
case "$provider" in
  local) "$hack_dir/cluster/local-up.sh" ;;
  kind)
    kind get clusters 2>/dev/null | grep -qx kubelambda ||
      kind create cluster --name kubelambda --config "$repo_root/tests/e2e/kind-config.yaml" --kubeconfig "$KUBECONFIG"
    ;;
esac
log "cluster-up ($provider) took $((SECONDS - start)) s"
