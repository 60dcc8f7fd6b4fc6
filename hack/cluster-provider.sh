#!/usr/bin/env bash
# Prints the cluster provider: $CLUSTER_PROVIDER if set, else `kind` where kind and a Docker
# engine that can run privileged containers exist (kind's nodes are privileged containers;
# this machine's VM refuses them), else `local`.
set -euo pipefail
if [[ -n "${CLUSTER_PROVIDER:-}" ]]; then
  case "$CLUSTER_PROVIDER" in local | kind) echo "$CLUSTER_PROVIDER"; exit 0 ;; esac
  echo "CLUSTER_PROVIDER must be local or kind, not '$CLUSTER_PROVIDER'" >&2; exit 2
fi
privileged_ok() {
  local image
  image="$(docker images --format '{{.Repository}}:{{.Tag}}' | head -n1)"
  [[ -n "$image" ]] && docker run --rm --pull never --privileged --entrypoint true "$image" >/dev/null 2>&1
}
if command -v kind >/dev/null && privileged_ok; then
  echo kind
else
  echo local
fi
