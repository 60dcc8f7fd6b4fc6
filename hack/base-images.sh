#!/usr/bin/env bash
# Creates the local base images (Debian bookworm rootfs from debootstrap, `docker import`ed) that
# the project's Dockerfiles build FROM when no registry is reachable. Each rootfs tarball is cached
# under $KUBELAMBDA_CACHE/rootfs/, keyed by its package list.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

# name -> extra Debian packages
declare -A bases=(
  [python]="python3"
  [nodejs]="nodejs python3"
)

for name in "${!bases[@]}"; do
  packages="${bases[$name]}"
  key="$(echo "bookworm minbase $packages" | sha256sum | cut -c1-12)"
  image="kubelambda/base-$name:bookworm-$key"
  if docker image inspect "$image" >/dev/null 2>&1; then
    log "base image $image present"; continue
  fi
  tarball="$KUBELAMBDA_CACHE/rootfs/$name-$key.tar"
  if [[ ! -f "$tarball" ]]; then
    log "debootstrap $name ($packages)"
    root="$(mktemp -d)"
    debootstrap --variant=minbase --include="${packages// /,}" bookworm "$root" >/dev/null
    # Trim what a runtime image never uses: apt lists, docs, man pages, caches.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
      "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*
    mkdir -p "$(dirname "$tarball")"
    tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$root"
  fi
  docker import "$tarball" "$image" >/dev/null
  docker tag "$image" "kubelambda/base-$name:bookworm"
  log "imported $image"
done
