#!/usr/bin/env bash
# Fails (listing the leftovers) if the local cluster left anything behind after cluster-down:
# processes, mounts, iptables chains, veths/bridge, network namespaces, kubelet cgroups.
set -uo pipefail
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"

leftovers=()
for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  pgrep -f "(^|/)$binary( |$)" >/dev/null && leftovers+=("process $binary")
done
pgrep -f -- "-address $CONTAINERD_SOCKET" >/dev/null && leftovers+=("containerd shim")
pgrep -f -- "--config $KUBELAMBDA_STATE/containerd.toml" >/dev/null && leftovers+=("containerd")
while read -r mount_point; do leftovers+=("mount $mount_point"); done < <(
  awk '{print $2}' /proc/mounts | grep -E "^($KUBELAMBDA_STATE|$KUBELAMBDA_RUN|$KUBELAMBDA_CONTAINERD_ROOT|/run/netns/cni-)")
for tool in iptables ip6tables; do
  "$tool"-save 2>/dev/null | grep -qE -- '(KUBE-|CNI-)' && leftovers+=("$tool chains")
done
ip link show "$BRIDGE" >/dev/null 2>&1 && leftovers+=("bridge $BRIDGE")
ip -o link show type veth 2>/dev/null | grep -q . && leftovers+=("veth: $(ip -o link show type veth | awk -F': ' '{print $2}' | xargs)")
ip netns list 2>/dev/null | grep -q '^cni-' && leftovers+=("network namespaces")
ls -d /sys/fs/cgroup/*/kubepods >/dev/null 2>&1 && leftovers+=("kubepods cgroups")

if ((${#leftovers[@]})); then
  printf 'cluster-down left behind: %s\n' "${leftovers[@]}" >&2
  exit 1
fi
log "nothing of the cluster is left on the machine"
