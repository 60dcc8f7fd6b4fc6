# Start and stop the local cluster's host processes: sourced by local-up.sh and local-down.sh.
# shellcheck shell=bash

pid_dir="$KUBELAMBDA_RUN/pids"
# Stop order: the reverse of the start order.
CLUSTER_PROCESSES=(kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd containerd)

# start_process NAME COMMAND...: runs COMMAND in its own session, logging to $KUBELAMBDA_LOGS/NAME.log.
start_process() {
  local name="$1"; shift
  log "starting $name"
  setsid "$@" >>"$KUBELAMBDA_LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$pid_dir/$name.pid"
}

process_alive() { [[ -f "$pid_dir/$1.pid" ]] && kill -0 "$(cat "$pid_dir/$1.pid")" 2>/dev/null; }

cluster_running() {
  local name
  for name in "${CLUSTER_PROCESSES[@]}"; do process_alive "$name" || return 1; done
  kubectl get --raw /readyz >/dev/null 2>&1
}

# stop_process NAME: SIGTERM, then SIGKILL after 15 s.
stop_process() {
  local name="$1" pid
  [[ -f "$pid_dir/$name.pid" ]] || return 0
  pid="$(cat "$pid_dir/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_dir/$name.pid"
}
