#!/usr/bin/env bash
# Builds nats-server (the async invocation queue, JetStream) from the Go module proxy into
# $KUBELAMBDA_CACHE/bin/nats-server-<version>-<go>/, links it into $KUBELAMBDA_CACHE/bin/current/
# (unit tests find it there), and, with --image, builds kubelambda/nats:$KUBELAMBDA_IMAGE_TAG: the
# static binary on an empty image (no registry involved). A warm machine skips the build.
#   hack/nats.sh            binary only (what tests/unit/invoker needs)
#   hack/nats.sh --image    binary and image (what the chart's NATS StatefulSet runs locally)
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

NATS_SERVER_VERSION=v2.15.2

go_version="$(go env GOVERSION)"
out="$KUBELAMBDA_CACHE/bin/nats-server-$NATS_SERVER_VERSION-$go_version"
if [[ ! -f "$out/.complete" ]]; then
  log "building nats-server $NATS_SERVER_VERSION"
  rm -rf "$out" && mkdir -p "$out"
  CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" \
    "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION" 2> >(grep -v '^go: downloading' >&2)
  touch "$out/.complete"
fi
mkdir -p "$KUBELAMBDA_BIN"
ln -sfn "$out/nats-server" "$KUBELAMBDA_BIN/nats-server"
log "nats-server ready: $KUBELAMBDA_BIN/nats-server"

if [[ "${1:-}" == "--image" ]]; then
  "$hack_dir/docker.sh"
  context="$(mktemp -d)"
  trap 'rm -rf "$context"' EXIT
  cp -L "$KUBELAMBDA_BIN/nats-server" "$context/nats-server"
  docker_build -f "$hack_dir/cluster/images/Dockerfile.static" --build-arg BINARY=nats-server \
    -t "kubelambda/nats:$KUBELAMBDA_IMAGE_TAG" "$context"
  log "built kubelambda/nats:$KUBELAMBDA_IMAGE_TAG"
fi
