#!/usr/bin/env bash
# `make up`: from a clean machine to a called function. Brings up the cluster (if none), builds
# and loads the images, installs the platform with Helm, deploys the hello example with an HTTP
# route, calls it once, and prints how to call it. Arguments go to `helm upgrade --install`.
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
"$hack_dir/cluster-up.sh"
"$hack_dir/images.sh"
"$hack_dir/load-images.sh"
"$hack_dir/install.sh" "$@"

kubectl apply --namespace default -f "$repo_root/examples/hello-python.yaml" \
  -f "$repo_root/examples/hello-python-route.yaml" >/dev/null
wait_for 120 "the hello-python Function to be Ready" \
  kubectl wait --namespace default --for=condition=Ready function/hello-python --timeout=2s
gateway="http://$(kubectl -n kubelambda-system get service kubelambda-gateway -o jsonpath='{.spec.clusterIP}'):8080"
# The gateway learns of the new route through its watch: wait for the first answer.
wait_for 60 "the hello route to answer" curl -sf "$gateway/hello?name=kubelambda"
log "kubelambda is up; the example answered: $(curl -sf "$gateway/hello?name=kubelambda")"
cat <<MSG

kubelambda is running. Call the example function:

  export KUBECONFIG=$KUBECONFIG PATH=$KUBELAMBDA_BIN:\$PATH
  curl -s "$gateway/hello"
  curl -s -XPOST "$gateway/2015-03-31/functions/hello-python/invocations" -d '{"name":"you"}'
  .venv/bin/kubelambda invoke hello-python -p '{"name":"you"}' --log-tail

or with the AWS CLI: aws lambda invoke --endpoint-url $gateway --function-name hello-python out.json
MSG
