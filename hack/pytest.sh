#!/usr/bin/env bash
# Runs pytest from the project's virtualenv. Exit code 5 (no tests collected) is a failure here:
# a suite that collects nothing proves nothing.
set -uo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
cd "$repo_root"
.venv/bin/pytest "$@"
status=$?
if ((status == 5)); then
  log "pytest collected no tests for: $*"
  exit 1
fi
exit "$status"
