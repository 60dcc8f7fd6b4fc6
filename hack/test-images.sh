#!/usr/bin/env bash
# Images only the e2e tests use: an awslambdaric image function (examples/image-awslambdaric/)
# and an image layer (tests/e2e/images/layer/), tagged kubelambda/e2e-*:$KUBELAMBDA_IMAGE_TAG so
# `make load-images` loads them.
# awslambdaric comes from PyPI as a wheel installed on the host (cached), like the platform's
# dependencies: nothing inside a build reaches the network.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
"$hack_dir/docker.sh"
"$hack_dir/base-images.sh"

images="$repo_root/tests/e2e/images"
context_root="$(mktemp -d)"
trap 'rm -rf "$context_root"' EXIT

AWSLAMBDARIC_VERSION=4.2.2
site_packages="$KUBELAMBDA_CACHE/site-packages/awslambdaric-$AWSLAMBDARIC_VERSION"
if [[ ! -d "$site_packages" ]]; then
  log "installing awslambdaric $AWSLAMBDARIC_VERSION into $site_packages"
  "$repo_root/.venv/bin/pip" install -q --no-warn-conflicts --target "$site_packages.tmp" --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 "awslambdaric==$AWSLAMBDARIC_VERSION"
  mv "$site_packages.tmp" "$site_packages"
fi
cp -r "$repo_root/examples/image-awslambdaric" "$context_root/awslambdaric"
cp -r "$site_packages" "$context_root/awslambdaric/site-packages"
docker_build -t "kubelambda/e2e-awslambdaric:$KUBELAMBDA_IMAGE_TAG" "$context_root/awslambdaric"
docker_build -t "kubelambda/e2e-layer:$KUBELAMBDA_IMAGE_TAG" "$images/layer"
log "built kubelambda/e2e-awslambdaric and kubelambda/e2e-layer"
