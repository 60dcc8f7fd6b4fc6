# Shared settings for hack/*.sh: sourced, never run.
# shellcheck shell=bash
hack_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$hack_dir/.." && pwd)"
# shellcheck source=hack/k8s/versions.env
source "$hack_dir/k8s/versions.env"

# Heavy builds (binaries, rootfs tarballs, image tarballs) live outside the repo, keyed by version.
KUBELAMBDA_CACHE="${KUBELAMBDA_CACHE:-$HOME/.cache/kubelambda}"
KUBELAMBDA_BIN="$KUBELAMBDA_CACHE/bin/current"
# Runtime state of the local cluster (certificates, etcd data, kubelet dirs): wiped by cluster-down.
KUBELAMBDA_STATE="${KUBELAMBDA_STATE:-/var/lib/kubelambda/cluster}"
# Container images survive cluster-down so a warm cluster-up does not import them again.
KUBELAMBDA_CONTAINERD_ROOT="${KUBELAMBDA_CONTAINERD_ROOT:-/var/lib/kubelambda/containerd}"
KUBELAMBDA_RUN="/run/kubelambda"
KUBELAMBDA_LOGS="${KUBELAMBDA_LOGS:-$repo_root/.cluster/logs}"
CONTAINERD_SOCKET="$KUBELAMBDA_RUN/containerd/containerd.sock"
export KUBECONFIG="${KUBECONFIG:-$repo_root/.cluster/kubeconfig}"
export PATH="$KUBELAMBDA_BIN:$PATH"

# The image tag every project image is built and deployed with (never :latest, which kubelet
# would try to pull).
KUBELAMBDA_IMAGE_TAG="${KUBELAMBDA_IMAGE_TAG:-dev}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.5 s until it succeeds.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
}

PAUSE_TAG=3.10
# shellcheck source=hack/cluster/network.env
source "$hack_dir/cluster/network.env"

# docker_build ARGS...: `docker build -q`, quiet unless it fails (the legacy builder prints a
# deprecation banner on every call; BuildKit is not used because it would look for base images
# in a registry).
docker_build() {
  local output
  if ! output="$(docker build -q "$@" 2>&1)"; then
    printf '%s\n' "$output" >&2
    return 1
  fi
}
