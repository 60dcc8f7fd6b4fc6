#!/usr/bin/env bash
# Puts images from the local Docker engine into the cluster: `ctr import` into containerd's
# k8s.io namespace for the local provider, `kind load` for kind. With no arguments: every
# kubelambda/* image at tag $KUBELAMBDA_IMAGE_TAG. Images already there (same ID) are skipped.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

images=("$@")
if ((${#images[@]} == 0)); then
  mapfile -t images < <(docker images --format '{{.Repository}}:{{.Tag}}' --filter "reference=kubelambda/*:$KUBELAMBDA_IMAGE_TAG")
fi
provider="$("$hack_dir/cluster-provider.sh")"
marker_dir="$KUBELAMBDA_CONTAINERD_ROOT/../imported"
mkdir -p "$marker_dir"
for image in "${images[@]}"; do
  id="$(docker image inspect -f '{{.Id}}' "$image")" || die "no image $image: run 'make images'"
  if [[ "$provider" == kind ]]; then
    kind load docker-image --name kubelambda "$image"
    continue
  fi
  marker="$marker_dir/$(echo "$image" | tr '/:' '__')"
  if [[ "$(cat "$marker" 2>/dev/null)" == "$id" ]] &&
    ctr --address "$CONTAINERD_SOCKET" -n k8s.io images ls -q | grep -qx "docker.io/$image"; then
    continue
  fi
  docker save "$image" | ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --no-unpack=false - >/dev/null
  echo "$id" >"$marker"
  log "loaded $image"
done
