#!/usr/bin/env bash
# `make cluster-down`: removes the cluster and everything it left on the machine.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
case "$("$hack_dir/cluster-provider.sh")" in
  local) "$hack_dir/cluster/local-down.sh" ;;
  kind) kind delete cluster --name kubelambda; rm -f "$KUBECONFIG" ;;
esac
