#!/usr/bin/env bash
# `make images`: builds every project image with the local Docker engine, tagged
# kubelambda/<name>:$KUBELAMBDA_IMAGE_TAG. With no registry, the base images come from
# hack/base-images.sh; Python dependencies are installed on the host into a cached site-packages
# (keyed by pyproject.toml), so nothing inside a build reaches the network.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
"$hack_dir/docker.sh"
"$hack_dir/base-images.sh"

context_root="$(mktemp -d)"
trap 'rm -rf "$context_root"' EXIT
package="$repo_root/operator/kubelambda"

# build NAME DOCKERFILE_DIR: builds $context_root/NAME with DOCKERFILE_DIR's Dockerfile.
build() {
  docker_build -t "kubelambda/$1:$KUBELAMBDA_IMAGE_TAG" -f "$2/Dockerfile" "$context_root/$1"
  log "built kubelambda/$1:$KUBELAMBDA_IMAGE_TAG"
}

# Dependencies for CPython 3.11 on manylinux, resolved once per dependency list.
requirements="$("$repo_root/.venv/bin/python" -c '
import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
  "$repo_root/pyproject.toml")"
site_packages="$KUBELAMBDA_CACHE/site-packages/$(echo "$requirements" | sha256sum | cut -c1-12)"
if [[ ! -d "$site_packages" ]]; then
  log "installing the platform's Python dependencies into $site_packages"
  # shellcheck disable=SC2086
  "$repo_root/.venv/bin/pip" install -q --no-warn-conflicts --target "$site_packages.tmp" --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 $requirements
  mv "$site_packages.tmp" "$site_packages"
fi
# Agent-only package tree for the runtime images: kubelambda/__init__.py + kubelambda/agent/,
# and uvloop (the agent's event loop; the same wheel as the platform's) next to it.
agent_tree() {
  mkdir -p "$1/agent/kubelambda"
  cp "$package/__init__.py" "$1/agent/kubelambda/"
  cp -r "$package/agent" "$1/agent/kubelambda/"
  cp -r "$site_packages/uvloop" "$1/agent/"
  find "$1" -name __pycache__ -prune -exec rm -rf {} +
}

for runtime in python nodejs provided; do
  case "$runtime" in
    python) name=runtime-python3.11 ;;
    nodejs) name=runtime-nodejs18 ;;
    provided) name=runtime-provided ;;
  esac
  mkdir -p "$context_root/$name"
  agent_tree "$context_root/$name"
  cp "$repo_root/runtime-images/$runtime/"* "$context_root/$name/"
  cp -r "$repo_root/runtime-images/launchers" "$context_root/$name/launchers"
  build "$name" "$repo_root/runtime-images/$runtime"
done

# Platform image.
mkdir -p "$context_root/platform"
cp -r "$site_packages" "$context_root/platform/site-packages"
cp -r "$package" "$context_root/platform/kubelambda"
find "$context_root/platform/kubelambda" -name __pycache__ -prune -exec rm -rf {} +
build platform "$repo_root/operator"

# The queue: nats-server built from its Go module, in a static image (hack/nats.sh).
"$hack_dir/nats.sh" --image
