# Certificates and kubeconfigs for the local cluster, made with openssl: sourced by local-up.sh.
# shellcheck shell=bash

pki_dir="$KUBELAMBDA_STATE/pki"

# sign NAME SUBJECT [SAN]: a key and a certificate signed by the cluster CA.
sign() {
  local name="$1" subject="$2" san="${3:-}" ext="$pki_dir/$1.ext"
  openssl genrsa -out "$pki_dir/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki_dir/$name.key" -subj "$subject" -out "$pki_dir/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl x509 -req -in "$pki_dir/$name.csr" -CA "$pki_dir/ca.crt" -CAkey "$pki_dir/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$pki_dir/$name.crt" 2>/dev/null
  rm -f "$pki_dir/$name.csr" "$ext"
}

# kubeconfig FILE CERT_NAME: a kubeconfig that authenticates with pki/CERT_NAME.{crt,key}.
kubeconfig() {
  local file="$1" cert="$2"
  cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: kubelambda
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$pki_dir/ca.crt")
users:
- name: $cert
  user:
    client-certificate-data: $(base64 -w0 "$pki_dir/$cert.crt")
    client-key-data: $(base64 -w0 "$pki_dir/$cert.key")
contexts:
- name: kubelambda
  context: {cluster: kubelambda, user: $cert}
current-context: kubelambda
KUBECONFIG
  chmod 600 "$file"
}

make_pki() {
  mkdir -p "$pki_dir"
  openssl genrsa -out "$pki_dir/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki_dir/ca.key" -subj "/CN=kubelambda-ca" -days 3650 \
    -out "$pki_dir/ca.crt" 2>/dev/null
  local api_san="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  api_san+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  api_san+=",IP:$SERVICE_API_IP,IP:$NODE_IP"
  sign apiserver "/CN=kube-apiserver" "$api_san"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  sign admin "/O=system:masters/CN=kubelambda-admin"
  sign controller-manager "/CN=system:kube-controller-manager"
  sign scheduler "/CN=system:kube-scheduler"
  sign kube-proxy "/CN=system:kube-proxy"
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME"
  sign kubelet-serving "/CN=$NODE_NAME" "DNS:$NODE_NAME,IP:$NODE_IP,IP:127.0.0.1"
  openssl genrsa -out "$pki_dir/service-account.key" 2048 2>/dev/null
  openssl rsa -in "$pki_dir/service-account.key" -pubout -out "$pki_dir/service-account.pub" 2>/dev/null
  chmod 600 "$pki_dir"/*.key

  kubeconfig "$KUBELAMBDA_STATE/controller-manager.kubeconfig" controller-manager
  kubeconfig "$KUBELAMBDA_STATE/scheduler.kubeconfig" scheduler
  kubeconfig "$KUBELAMBDA_STATE/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$KUBELAMBDA_STATE/kubelet.kubeconfig" kubelet-client
  mkdir -p "$(dirname "$KUBECONFIG")"
  kubeconfig "$KUBECONFIG" admin
}
