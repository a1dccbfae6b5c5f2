# shellcheck shell=bash
# A containerd "node" whose CRI plugin pulls images the way a kubelet's node does:
# the CRI ImageService on containerd's socket, registries configured by a hosts
# directory (CRI `config_path`, one <registry>/hosts.toml each, as on a real node).
# No kubelet, CNI or runc needed: only image pulls are used. Source this file:
#
#   source tests/e2e/cri-node.sh
#   start_cri_node n1 /tmp/x/n1 /tmp/x/certs.d    # containerd on /tmp/x/n1/sock
#   cri --socket /tmp/x/n1/sock pull 127.0.0.1:PORT/library/test:1.0 --username U --password P
#   stop_cri_node n1                               # or stop_all_cri_nodes
#
# DIR holds config.toml, root/, state/, cni/, sock and log; keep it short (the
# socket path must fit in ~107 bytes). Environment:
#   CRI_STREAM_PORT  the CRI stream server's 127.0.0.1 port (default 0: any free one)
#   CRI_LOG_LEVEL    containerd's log level (default info; debug logs every registry request)
#   CRI_NODE_WAIT    seconds to wait for the CRI plugin to answer (default 30)
# Needs root, the `containerd` binary (1.6; Debian 12's package) and Debian's
# python3-grpcio for cri.py.

CRI_NODE_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# alive, unmount_under
# shellcheck source=SCRIPTDIR/lib.sh
source "$CRI_NODE_HERE/lib.sh"
CRI_PY=${CRI_PY:-$CRI_NODE_HERE/cri.py}
declare -gA CRI_NODE_PID=() CRI_NODE_DIR=()

# Debian's Python by its path: a python3 earlier on PATH (pyenv, a venv) does not
# see Debian's python3-grpcio.
cri() { /usr/bin/python3 "$CRI_PY" "$@"; }   # cri ARGS...: cri.py

start_cri_node() {   # start_cri_node NAME DIR HOSTS_DIR
  local name=$1 dir=$2 hosts=$3 pid
  [ $# = 3 ] || { echo "usage: start_cri_node NAME DIR HOSTS_DIR" >&2; return 2; }
  [ -z "${CRI_NODE_PID[$name]:-}" ] || { echo "cri node $name is already running" >&2; return 1; }
  mkdir -p "$dir/root" "$dir/state" "$dir/cni" "$hosts" || return 1
  dir=$(cd "$dir" && pwd) hosts=$(cd "$hosts" && pwd)
  if [ $((${#dir} + 12)) -gt 100 ]; then   # sock.ttrpc is the longest socket name
    echo "cri node $name: $dir is too long for a unix socket path" >&2; return 1
  fi
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/sock"
[debug]
  level = "${CRI_LOG_LEVEL:-info}"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "${CRI_STREAM_PORT:-0}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$dir/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$hosts"
TOML
  containerd --config "$dir/config.toml" >>"$dir/log" 2>&1 </dev/null &
  pid=$!
  CRI_NODE_PID[$name]=$pid CRI_NODE_DIR[$name]=$dir
  echo "$pid" >"$dir/pid"
  local i
  for ((i = 0; i < ${CRI_NODE_WAIT:-30} * 5; i++)); do
    cri --socket "$dir/sock" list --timeout 2 >/dev/null 2>&1 && return 0
    if ! alive "$pid"; then
      echo "cri node $name: containerd exited; last lines of $dir/log:" >&2
      tail -n 15 "$dir/log" >&2
      unset "CRI_NODE_PID[$name]" "CRI_NODE_DIR[$name]"
      return 1
    fi
    sleep 0.2
  done
  echo "cri node $name: CRI plugin not answering on $dir/sock after ${CRI_NODE_WAIT:-30}s" >&2
  tail -n 15 "$dir/log" >&2
  stop_cri_node "$name"
  return 1
}

stop_cri_node() {   # stop_cri_node NAME: SIGTERM, then SIGKILL after 15 s
  local name=$1 pid=${CRI_NODE_PID[$1]:-} dir=${CRI_NODE_DIR[$1]:-} i
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null
  for ((i = 0; i < 150; i++)); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && { echo "cri node $name ($pid): SIGKILL" >&2; kill -9 "$pid" 2>/dev/null; }
  wait "$pid" 2>/dev/null
  # The native snapshotter mounts nothing, but be safe before anyone rm -rf's DIR.
  unmount_under "$dir"
  rm -f "$dir/pid"
  unset "CRI_NODE_PID[$name]" "CRI_NODE_DIR[$name]"
  return 0
}

stop_all_cri_nodes() {
  local name
  for name in "${!CRI_NODE_PID[@]}"; do stop_cri_node "$name"; done
}
