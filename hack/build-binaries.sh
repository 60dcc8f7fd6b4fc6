#!/usr/bin/env bash
# Builds the local cluster's binaries from Go modules (Kubernetes, etcd, pause, CoreDNS,
# local-path-provisioner, Helm) into $KUBELAMBDA_CACHE/bin/<tool>-<version>-<go>/ and links them
# into $KUBELAMBDA_CACHE/bin/current/. A warm machine skips every build.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

go_version="$(go env GOVERSION)"
export CGO_ENABLED=0
mkdir -p "$KUBELAMBDA_BIN"

gomod_version() { awk -v m="$1" '$1 == m { print $2 }' "$hack_dir/k8s/go.mod" | head -n1; }
[[ "$(gomod_version k8s.io/kubernetes)" == "$KUBERNETES_VERSION" ]] ||
  die "hack/k8s/go.mod pins k8s.io/kubernetes $(gomod_version k8s.io/kubernetes), versions.env says $KUBERNETES_VERSION"
[[ "$(gomod_version go.etcd.io/etcd/server/v3)" == "$ETCD_VERSION" ]] ||
  die "hack/k8s/go.mod pins etcd $(gomod_version go.etcd.io/etcd/server/v3), versions.env says $ETCD_VERSION"

# build_once NAME VERSION COMMAND...: runs COMMAND with $out set, once per name+version+Go.
build_once() {
  local name="$1" version="$2"; shift 2
  out="$KUBELAMBDA_CACHE/bin/$name-$version-$go_version"
  if [[ ! -f "$out/.complete" ]]; then
    log "building $name $version"
    rm -rf "$out" && mkdir -p "$out"
    "$@" 2> >(grep -v '^go: downloading' >&2)
    touch "$out/.complete"
  fi
  for binary in "$out"/*; do ln -sfn "$binary" "$KUBELAMBDA_BIN/$(basename "$binary")"; done
}

build_kubernetes() {
  # Version stamps that `kubectl version` and the API server's /version report.
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1
    -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  # Separate `go build`s share compiled packages through Go's build cache; a cold build takes
  # 15-30 minutes on 2 cores, almost all of it the first binary.
  (cd "$hack_dir/k8s" && for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done)
}
build_module_command() { # directory in hack/k8s/cmd
  (cd "$hack_dir/k8s" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/$1" "./cmd/$1")
}
go_install() { # module@version (modules without replace directives install directly)
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "$1"
}

build_once kubernetes "$KUBERNETES_VERSION" build_kubernetes
build_once etcd "$ETCD_VERSION" build_module_command etcd
build_once pause "$(sha256sum "$hack_dir/k8s/cmd/pause/main.go" | cut -c1-12)" build_module_command pause
build_once coredns "$COREDNS_VERSION" go_install "github.com/coredns/coredns@$COREDNS_VERSION"
build_once local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" \
  go_install "github.com/rancher/local-path-provisioner@$LOCAL_PATH_PROVISIONER_VERSION"
build_once helm "$HELM_VERSION" go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
log "binaries ready in $KUBELAMBDA_BIN"
