#!/usr/bin/env bash
# The `local` provider: a single-node Kubernetes cluster from host processes (etcd, API server,
# controller manager, scheduler, kubelet, kube-proxy) on Debian's containerd + runc + CNI
# plugins, with CoreDNS and local-path-provisioner as pods. Idempotent: a running cluster is left
# as it is.
set -euo pipefail
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"
source "$hack_dir/cluster/pki.sh"
source "$hack_dir/cluster/processes.sh"

if cluster_running; then
  log "local cluster already running (kubeconfig: $KUBECONFIG)"
  exit 0
fi
if [[ -d "$KUBELAMBDA_STATE" ]]; then
  log "a cluster that is not running left state behind: cleaning it up first"
  "$hack_dir/cluster/local-down.sh"
fi

NODE_IP="${NODE_IP:-$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')}"
[[ -n "$NODE_IP" ]] || die "cannot find this machine's IPv4 address (set NODE_IP)"
export NODE_IP

mkdir -p "$KUBELAMBDA_LOGS"
"$hack_dir/install-deps.sh"
"$hack_dir/docker.sh"
# debootstrap waits on the network while Go keeps both cores busy: run them side by side.
"$hack_dir/base-images.sh" >"$KUBELAMBDA_LOGS/base-images.log" 2>&1 &
base_images=$!
"$hack_dir/build-binaries.sh"
wait "$base_images" || die "building base images failed: see $KUBELAMBDA_LOGS/base-images.log"
"$hack_dir/cluster/addon-images.sh"

mkdir -p "$KUBELAMBDA_STATE" "$KUBELAMBDA_RUN/pids" "$KUBELAMBDA_CONTAINERD_ROOT"
log "certificates and kubeconfigs for node $NODE_NAME at $NODE_IP"
make_pki

# Kernel settings kube-proxy and the bridge CNI plugin rely on.
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
  net.bridge.bridge-nf-call-ip6tables=1

# ---- containerd: our own instance (its own socket, state and root), beside Docker's.
mkdir -p "$KUBELAMBDA_STATE/cni/net.d" "$KUBELAMBDA_STATE/cni/ipam"
cat >"$KUBELAMBDA_STATE/containerd.toml" <<TOML
version = 2
root = "$KUBELAMBDA_CONTAINERD_ROOT"
state = "$KUBELAMBDA_RUN/containerd"
[grpc]
  address = "$CONTAINERD_SOCKET"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/kubelambda/pause:$PAUSE_TAG"
  # This machine lacks CAP_SYS_RESOURCE: lowering a container's oom_score_adj fails, so clamp it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$KUBELAMBDA_STATE/cni/net.d"
TOML
cat >"$KUBELAMBDA_STATE/cni/net.d/10-kubelambda.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "kubelambda",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$KUBELAMBDA_STATE/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"}
  ]
}
JSON
# The firewall plugin ACCEPTs pod traffic in FORWARD before kube-proxy's chains, which would
# skip kube-proxy's REJECT for a Service with no ready endpoint: the connection then leaves by
# the default route (here a proxy answers it with an HTTP 404). A real cluster refuses it, so
# the plugin's admin chain, consulted first, sends new connections to kube-proxy's rules.
for tool in iptables ip6tables; do
  "$tool" -N CNI-ADMIN 2>/dev/null || true
  "$tool" -N KUBE-SERVICES 2>/dev/null || true
  "$tool" -C CNI-ADMIN -m conntrack --ctstate NEW -j KUBE-SERVICES 2>/dev/null ||
    "$tool" -A CNI-ADMIN -m conntrack --ctstate NEW -j KUBE-SERVICES
done
start_process containerd containerd --config "$KUBELAMBDA_STATE/containerd.toml"
wait_for 30 containerd ctr --address "$CONTAINERD_SOCKET" version
"$hack_dir/load-images.sh" "kubelambda/pause:$PAUSE_TAG" "kubelambda/coredns:$COREDNS_VERSION" \
  "kubelambda/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION" "kubelambda/toolbox:$KUBELAMBDA_IMAGE_TAG" &
loading_images=$!

# ---- control plane
pki="$KUBELAMBDA_STATE/pki"
# A throwaway test cluster: fsync buys nothing but seconds.
start_process etcd etcd --name kubelambda --data-dir "$KUBELAMBDA_STATE/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster kubelambda=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
start_process kube-apiserver kube-apiserver \
  --etcd-servers http://127.0.0.1:2379 --advertise-address "$NODE_IP" --bind-address 0.0.0.0 \
  --secure-port 6443 --service-cluster-ip-range "$SERVICE_CIDR" \
  --client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP,Hostname \
  --service-account-key-file "$pki/service-account.pub" --service-account-signing-key-file "$pki/service-account.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --allow-privileged=false --profiling=false --v 1
wait_for 60 "the API server" kubectl get --raw /readyz
start_process kube-controller-manager kube-controller-manager \
  --kubeconfig "$KUBELAMBDA_STATE/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$KUBELAMBDA_STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$KUBELAMBDA_STATE/controller-manager.kubeconfig" \
  --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/service-account.key" \
  --use-service-account-credentials --service-cluster-ip-range "$SERVICE_CIDR" \
  --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v 1
start_process kube-scheduler kube-scheduler --kubeconfig "$KUBELAMBDA_STATE/scheduler.kubeconfig" \
  --authentication-kubeconfig "$KUBELAMBDA_STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$KUBELAMBDA_STATE/scheduler.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1 --profiling=false --v 1

# ---- node
cat >"$KUBELAMBDA_STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
cgroupDriver: cgroupfs
# This machine has cgroup v1 only; Kubernetes 1.34 still supports it when asked.
failCgroupV1: false
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: cluster.local
failSwapOn: false
# Images cannot be pulled again here (no registry): never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2Gi, imagefs.available: 2Gi}
# Fast feedback for tests: react to pod and eviction changes within a second or two.
evictionPressureTransitionPeriod: 10s
housekeepingInterval: 2s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
serializeImagePulls: false
maxPods: 250
podLogsDir: $KUBELAMBDA_STATE/pod-logs
YAML
start_process kubelet kubelet --config "$KUBELAMBDA_STATE/kubelet.yaml" \
  --kubeconfig "$KUBELAMBDA_STATE/kubelet.kubeconfig" --hostname-override "$NODE_NAME" \
  --node-ip "$NODE_IP" --root-dir "$KUBELAMBDA_STATE/kubelet" --v 1
cat >"$KUBELAMBDA_STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $KUBELAMBDA_STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $CLUSTER_CIDR
# Leave the host's conntrack sysctls alone (setting them needs more than this VM allows).
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
YAML
start_process kube-proxy kube-proxy --config "$KUBELAMBDA_STATE/kube-proxy.yaml" --v 1

wait "$loading_images" || die "loading the add-on images failed"
wait_for 90 "node $NODE_NAME to register" kubectl get node "$NODE_NAME"
kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null

# ---- add-ons
export COREDNS_VERSION LOCAL_PATH_PROVISIONER_VERSION KUBELAMBDA_IMAGE_TAG CLUSTER_DNS_IP
export LOCAL_PATH_DIR="$KUBELAMBDA_STATE/local-path"
for addon in "$hack_dir"/cluster/addons/*.yaml; do
  # Only our variables: the provisioner's scripts use shell variables of their own ($VOL_DIR).
  envsubst '$COREDNS_VERSION $LOCAL_PATH_PROVISIONER_VERSION $KUBELAMBDA_IMAGE_TAG $CLUSTER_DNS_IP $LOCAL_PATH_DIR' \
    <"$addon" | kubectl apply -f - >/dev/null
done
kubectl -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null
kubectl -n local-path-storage rollout status deployment/local-path-provisioner --timeout=120s >/dev/null
log "local cluster ready: export KUBECONFIG=$KUBECONFIG (logs in $KUBELAMBDA_LOGS)"
