#!/usr/bin/env bash
# Makes sure a Docker engine answers (for image builds); starts Debian's dockerd if none does.
# There is no systemd here, so it runs as a plain background process, logging beside the cluster.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

docker info >/dev/null 2>&1 && exit 0
mkdir -p "$KUBELAMBDA_LOGS"
log "starting dockerd"
setsid dockerd >>"$KUBELAMBDA_LOGS/dockerd.log" 2>&1 </dev/null &
wait_for 60 dockerd docker info
