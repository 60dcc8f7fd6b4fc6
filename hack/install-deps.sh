#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine: the container runtime, Docker's
# engine (for image builds), CNI plugins, debootstrap and networking tools from Debian's packages,
# and the Python virtualenv at .venv. Go must already be on PATH (it builds Kubernetes).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

packages=(containerd runc docker.io containernetworking-plugins debootstrap iptables iproute2
  conntrack ethtool socat openssl gettext-base zip procps psmisc)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || die "Go is needed to build Kubernetes from its modules"

venv="$repo_root/.venv"
stamp="$venv/.installed-$(sha256sum "$repo_root/pyproject.toml" | cut -c1-12)"
if [[ ! -f "$stamp" ]]; then
  log "installing the Python package and its dev tools into .venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e "$repo_root[dev]"
  rm -f "$venv"/.installed-* && touch "$stamp"
fi
