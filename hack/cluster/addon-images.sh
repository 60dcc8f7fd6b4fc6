#!/usr/bin/env bash
# Builds the images the local cluster itself runs (pause, CoreDNS, local-path-provisioner, the
# provisioner's helper "toolbox") from the binaries in $KUBELAMBDA_BIN, without any registry.
set -euo pipefail
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"

build_static_image() { # image binary
  local context
  context="$(mktemp -d)"
  cp -L "$KUBELAMBDA_BIN/$2" "$context/$2"
  docker_build -f "$hack_dir/cluster/images/Dockerfile.static" --build-arg "BINARY=$2" \
    -t "$1" "$context"
  rm -rf "$context"
}

build_static_image "kubelambda/pause:$PAUSE_TAG" pause
build_static_image "kubelambda/coredns:$COREDNS_VERSION" coredns
build_static_image "kubelambda/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION" local-path-provisioner
# The provisioner's helper pod runs `sh -c mkdir/rm` in a hostPath: any image with a shell.
docker tag kubelambda/base-python:bookworm "kubelambda/toolbox:$KUBELAMBDA_IMAGE_TAG"
log "cluster add-on images built"
