# shellcheck shell=bash
# Helpers shared by the scripts that start real servers and clients on this
# machine: tests/e2e/run.sh, image.sh, cri-selftest.sh (and cri-node.sh),
# tests/e2e/cluster.sh, tests/deploy/validate.sh and benches/load/ (compare.sh,
# link.sh, cluster.sh). Source it near the top:
#
#   source "$REPO/tests/e2e/lib.sh"
#
# Conventions every helper keeps:
#   - log and die write to stderr, so a script's stdout holds only its results.
#     Lines read "[TAG HH:MM:SS] ...", TAG being $LOG_TAG (default: the script's
#     name without .sh).
#   - die exits 2: the script stopped before its verdict (a setup step failed,
#     or, in a script whose every check is fatal, a check did). A script that
#     runs all its checks exits 1 when one of them failed.
#   - A daemon started with start_bg has its pid in $WORK/pids/NAME.pid (WORK is
#     the script's temp dir); stop_bg, stop_all_bg and wait_until find it there.
#   - pick_port draws from $PORT_RANGE ("15000-15999"), the range the script
#     documents, and never hands out a port twice.
#   - Only die exits, and the helpers that call it when setup cannot go on
#     (apt_install, install_missing, pick_port, start_containerd); the others
#     return a status. All of them work with and without `set -e`.
# Sourcing it twice is harmless (cri-node.sh sources it for itself).

log() { printf '[%s %s] %s\n' "${LOG_TAG:-$(basename "$0" .sh)}" "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# ---------------------------------------------------------------- packages
apt_install() {   # apt_install PKG...: install with apt-get (Debian 12, root)
  [ "$(id -u)" = 0 ] || die "missing packages ($*): run as root, or install them"
  log "installing: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

install_missing() {   # install_missing COMMAND:PACKAGE...: install what provides each missing command
  local pair need=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  ((${#need[@]} == 0)) && return 0
  apt_install "${need[@]}"
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || die "${pair%%:*} still missing after installing ${pair#*:}"
  done
}

# ---------------------------------------------------------------- ports
port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }   # port_free PORT: nothing listens on it

PICKED_PORTS=${PICKED_PORTS:- }
pick_port() {   # pick_port VAR: a free port from $PORT_RANGE into VAR, never one picked before
  local lo=${PORT_RANGE%-*} hi=${PORT_RANGE#*-} p
  for _ in $(seq 1 300); do
    p=$((lo + RANDOM % (hi - lo + 1)))
    [[ $PICKED_PORTS == *" $p "* ]] && continue
    port_free "$p" && { PICKED_PORTS+="$p "; printf -v "$1" %s "$p"; return 0; }
  done
  die "no free port in $PORT_RANGE"
}

# ---------------------------------------------------------------- processes
alive() {   # alive PID: running (not gone, not a zombie: bash may reap it at any moment)
  local st; st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [ -n "$st" ] && [ "$st" != Z ]
}

start_bg() {   # start_bg NAME LOGFILE CMD...: run CMD in the background, output appended to LOGFILE
  local name=$1 logf=$2; shift 2
  mkdir -p "$WORK/pids"
  "$@" >>"$logf" 2>&1 </dev/null &
  echo $! >"$WORK/pids/$name.pid"
}

bg_pid() { cat "$WORK/pids/$1.pid" 2>/dev/null || true; }   # bg_pid NAME: the pid start_bg recorded (empty once stopped)

stop_bg() {   # stop_bg NAME: SIGTERM, SIGKILL after 15 s; always returns 0
  local f=$WORK/pids/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f"); rm -f "$f"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then log "$1 ($pid) did not stop on SIGTERM: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

stop_all_bg() {   # stop_all_bg [NAME...]: stop the NAMEd daemons in that order, then every other one
  local n f
  for n in "$@"; do stop_bg "$n"; done
  for f in "$WORK"/pids/*.pid; do
    if [ -e "$f" ]; then stop_bg "$(basename "$f" .pid)"; fi
  done
}

unmount_under() {   # unmount_under DIR: lazily unmount whatever is mounted below DIR (deepest first)
  [ -n "${1%/}" ] || return 0   # never everything below /
  awk -v d="${1%/}/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null \
    || true
}

wait_until() {   # wait_until SECONDS NAME CMD...: poll CMD until it succeeds; fail early if NAME's daemon died
  local secs=$1 name=$2 pid; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    pid=$(bg_pid "$name")
    if [ -n "$pid" ] && ! alive "$pid"; then log "$name exited early"; return 1; fi
    sleep 0.1
  done
  log "$name not ready after ${secs}s"; return 1
}

# ---------------------------------------------------------------- HTTP
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${@:2}" "$1" || true; }   # http_code URL [CURL_ARG...]: 000 when nothing answered
http_ok() { [ "$(http_code "$@")" = 200 ]; }   # http_ok URL [CURL_ARG...]
status_is() { [ "$(http_code "${@:2}")" = "$1" ]; }   # status_is CODE URL [CURL_ARG...]

lines() { wc -l <"$1" 2>/dev/null || echo 0; }   # lines FILE: its line count (0 when missing)

# ---------------------------------------------------------------- containerd
start_containerd() {   # start_containerd NAME DIR: a containerd without CRI, socket DIR/containerd.sock, log $LOGS/NAME.log
  local name=$1 dir=$2
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  start_bg "$name" "$LOGS/$name.log" containerd --config "$dir/config.toml"
  wait_until 30 "$name" ctr -a "$dir/containerd.sock" version \
    || { tail -20 "$LOGS/$name.log" >&2; die "$name did not start"; }
}

# ---------------------------------------------------------------- registries
oci_push_blob() {   # oci_push_blob BASE REPO FILE: a monolithic OCI blob upload to BASE (http://host:port); prints sha256:HEX
  local base=$1 repo=$2 file=$3 digest loc sep
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(curl -sS -f --max-time 30 -X POST -D - -o /dev/null "$base/v2/$repo/blobs/uploads/" |
        tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }') || { log "upload start for $repo failed"; return 1; }
  [ -n "$loc" ] || { log "upload start for $repo: no Location header"; return 1; }
  case $loc in http*) ;; *) loc=$base$loc ;; esac
  sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -sS -f --max-time 120 -X PUT -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -T "$file" -o /dev/null "${loc}${sep}digest=$digest" || { log "blob PUT for $repo failed"; return 1; }
  echo "$digest"
}

# registry_config FILE ROOT ADDR ACCESS_LOG_DISABLED [PROXY_URL]: a distribution 2.8 config
# in FILE: storage under ROOT, listening on ADDR; with PROXY_URL a pull-through proxy of it
# (the peer), without one a registry that accepts pushes and deletes (the upstream)
registry_config() {
  local file=$1 root=$2 addr=$3 no_access_log=$4 proxy=${5:-}
  {
    echo "version: 0.1"
    echo "log: {level: warn, accesslog: {disabled: $no_access_log}}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $root}"
    echo "  cache: {blobdescriptor: inmemory}"
    [ -n "$proxy" ] || echo "  delete: {enabled: true}"
    echo "http: {addr: $addr}"
    [ -z "$proxy" ] || echo "proxy: {remoteurl: \"$proxy\"}"
  } >"$file"
}

