#!/usr/bin/env bash
# Tears the local cluster down completely: no process, mount, iptables chain, veth, network
# namespace or cgroup of it stays behind. Safe to run when nothing is up. Images in containerd's
# root survive (that is what keeps the next cluster-up fast).
set -uo pipefail
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"
source "$hack_dir/cluster/processes.sh"

ctr_k8s() { ctr --address "$CONTAINERD_SOCKET" --namespace k8s.io "$@"; }

# 1. Stop the node agents first so nothing restarts containers, then the control plane.
for name in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop_process "$name"
done

# 2. Kill every pod container and sandbox while containerd can still clean up after them.
if process_alive containerd; then
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$task" >/dev/null 2>&1; done
  sleep 1
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task" >/dev/null 2>&1; done
  for container in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$container" >/dev/null 2>&1; done
fi
stop_process containerd
# Shims that outlived containerd (they hold their containers' processes).
pkill -KILL -f "containerd-shim-runc-v2 -namespace k8s.io -address $CONTAINERD_SOCKET" 2>/dev/null
# Any process still running from our binaries (a crashed start leaves no pid file behind).
for binary in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy etcd; do
  pkill -KILL -f "^$KUBELAMBDA_BIN/$binary( |$)" 2>/dev/null
  pkill -KILL -f "(^|/)$binary( |$)" 2>/dev/null
done

# 3. Network: pod network namespaces, veths on our bridge, the bridge, iptables chains and rules.
for netns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns delete "$netns" 2>/dev/null; done
for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link delete "$veth" 2>/dev/null
done
ip link delete "$BRIDGE" 2>/dev/null
for tool in iptables ip6tables; do
  # Drop every chain Kubernetes or the CNI plugins made, and every rule that jumps to one.
  if "$tool"-save >/dev/null 2>&1; then
    "$tool"-save | grep -vE -- '(KUBE-|CNI-|cali-)' | "$tool"-restore 2>/dev/null
  fi
done

# 4. Mounts under our state and runtime dirs (volumes, overlays, netns bind mounts), deepest first.
awk '{print $2}' /proc/mounts | grep -E "^($KUBELAMBDA_STATE|$KUBELAMBDA_RUN|$KUBELAMBDA_CONTAINERD_ROOT|/run/netns/cni-)" |
  sort -r | while read -r mount_point; do umount -l "$mount_point" 2>/dev/null; done

# 5. cgroups the kubelet created (empty now that their processes are gone), deepest first.
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -d "$hierarchy/kubepods" ]] && find "$hierarchy/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
done

# 6. State: certificates, etcd data, kubelet dirs, PV data. The kubeconfig goes with the cluster.
rm -rf "$KUBELAMBDA_STATE" "$KUBELAMBDA_RUN" "$KUBECONFIG"
log "local cluster down"
exit 0
