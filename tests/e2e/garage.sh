#!/usr/bin/env bash
# shellcheck shell=bash
# A real 3-node Garage 2.5.0 cluster on 127.0.0.1, for Ferry's bucket tier e2e tests.
# Run it:
#
#   tests/e2e/garage.sh start DIR        # 3 nodes, layout, key ferry-key, bucket ferry (~3 s);
#                                        # a DIR with a garage.env is resumed, not re-created
#   tests/e2e/garage.sh stop DIR         # SIGTERM, SIGKILL after GARAGE_TIMEOUT
#   tests/e2e/garage.sh kill DIR N       # kill -9 node N (1..3) and wait until it is gone
#   tests/e2e/garage.sh restart DIR N    # start node N again; wait until it serves S3 (~1 s)
#   tests/e2e/garage.sh put DIR KEY FILE [NODE] | get DIR KEY OUT|- [NODE] | head DIR KEY [NODE]
#   tests/e2e/garage.sh delete DIR KEY [NODE] | list DIR PREFIX [NODE] | wait DIR [NODE]
#   tests/e2e/garage.sh check DIR PREFIX [NODE] [MIN]   # garage_sha256_check
#   tests/e2e/garage.sh cli DIR NODE ARGS...            # e.g. cli DIR 1 bucket inspect-object ferry KEY
#
# or source it (the same functions; none of them sets shell options):
#
#   source tests/e2e/garage.sh
#   garage_start /tmp/g                  # exports GARAGE_* (also written to /tmp/g/garage.env)
#   garage_put blobs/sha256/<hex> FILE 2 # through node 2
#   garage_get blobs/sha256/<hex> - 3 | sha256sum
#   garage_kill 3; garage_restart 3
#   garage_sha256_check blobs/           # each object's bytes hash to the <hex> in its key
#   garage_stop
#
# Node i (1..3): S3 API 127.0.0.1:${GARAGE_PORT_PREFIX}i0, RPC ...i1, admin ...i3
# (default prefix 159: 15910/15911/15913, 15920/..., 15930/...). sqlite, replication
# factor 3, consistency_mode consistent: read and write quorum 2, so one node may be down.
# DIR/garage.env (sourceable) holds GARAGE_S3_ENDPOINT, GARAGE_KEY_ID, GARAGE_SECRET,
# GARAGE_REGION, GARAGE_BUCKET, GARAGE_ADMIN_TOKEN, GARAGE_PID1..3 and GARAGE_DIR; logs are
# DIR/gI.log. When start fails, the nodes it started keep running: `stop DIR`.
# Environment:
#   GARAGE_BIN          default /var/cache/garage/bin/garage (this script never builds it)
#   GARAGE_TIMEOUT      seconds any single wait may take (default 60)
#   GARAGE_PORT_PREFIX  default 159
#   GARAGE_LOG          RUST_LOG of the servers (default garage=info)
# Requests are signed by curl itself (--aws-sigv4) with x-amz-content-sha256: UNSIGNED-PAYLOAD.
# curl 7.88 signs the query string exactly as sent, so garage_s3 needs it canonical (sorted,
# percent-encoded, "uploads=" not "uploads"); Garage answers 403 otherwise.
# Measured (2 busy vCPUs): start 2.7-3.2 s, restart of a killed node 0.6-1.0 s. After a
# kill -9, the first write through a node that still holds an RPC connection to the dead one
# took 1.9-6.7 s in 7 of 14 trials (until that send fails with EPIPE); the next ones ~0.05 s.
# Every wait polls with a deadline; nothing sleeps a fixed time.

GARAGE_BIN=${GARAGE_BIN:-/var/cache/garage/bin/garage}
GARAGE_TIMEOUT=${GARAGE_TIMEOUT:-60}
GARAGE_PORT_PREFIX=${GARAGE_PORT_PREFIX:-159}
GARAGE_REGION=${GARAGE_REGION:-garage}
GARAGE_BUCKET=${GARAGE_BUCKET:-ferry}
GARAGE_NODES=(1 2 3)

_glog() { printf '[garage %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
_gnow() { date +%s.%N; }
_gsince() { awk -v a="$1" -v b="$(_gnow)" 'BEGIN { printf "%.2f", b - a }'; }   # seconds since $1

garage_port() {   # garage_port NODE s3|rpc|admin
  case $2 in
    s3) echo "${GARAGE_PORT_PREFIX}${1}0" ;;
    rpc) echo "${GARAGE_PORT_PREFIX}${1}1" ;;
    admin) echo "${GARAGE_PORT_PREFIX}${1}3" ;;
    *) echo "garage_port: unknown kind $2" >&2; return 2 ;;
  esac
}

garage_endpoint() { echo "http://127.0.0.1:$(garage_port "${1:-1}" s3)"; }   # garage_endpoint [NODE]

_galive() {   # _galive PID: a live process, not a zombie
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

_gall_dead() {   # _gall_dead PID...: none of them is alive (reaps this shell's children)
  local p
  for p in "$@"; do
    ! _galive "$p" || return 1
    wait "$p" 2>/dev/null || true   # a zombie child: reap it
  done
}

# _gpid NODE: the pid of NODE's server, or empty; only a live process whose command line names
# this DIR's config counts, so a stale pid file never points at a reused pid.
_gpid() {
  local pid
  pid=$(cat "$GARAGE_DIR/g$1.pid" 2>/dev/null) || return 0
  if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$GARAGE_DIR/g$1.toml"; then
    echo "$pid"
  fi
}

_gneed_dir() {
  [ -n "${GARAGE_DIR:-}" ] || { echo "garage: GARAGE_DIR is not set (garage_start DIR or garage_load DIR first)" >&2; return 2; }
}

garage_cli() {   # garage_cli NODE ARGS...: the garage CLI against node NODE (its config file)
  local n=$1; shift
  _gneed_dir || return
  "$GARAGE_BIN" -c "$GARAGE_DIR/g$n.toml" "$@"
}

# garage_wait SECONDS WHAT NODE CMD...: poll CMD every 0.1-0.5 s until it succeeds; fail at
# the deadline, or at once when NODE's server process has died (NODE may be "-").
garage_wait() {
  local secs=$1 what=$2 node=$3 t0 delay=0.1 pid; shift 3
  t0=$(_gnow)
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ "$node" != - ]; then
      pid=$(_gpid "$node")
      if [ -z "$pid" ] || ! _galive "$pid"; then
        _glog "node $node died while waiting for: $what"
        tail -n 20 "$GARAGE_DIR/g$node.log" >&2 2>/dev/null || true
        return 1
      fi
    fi
    if awk -v a="$t0" -v b="$(_gnow)" -v s="$secs" 'BEGIN { exit !(b - a > s) }'; then
      _glog "timeout after ${secs}s waiting for: $what"
      return 1
    fi
    sleep "$delay"
    case $delay in 0.1) delay=0.2 ;; 0.2) delay=0.5 ;; esac
  done
}

_gwrite_config() {   # _gwrite_config NODE SECRET TOKEN
  local n=$1 d="$GARAGE_DIR/n$1"
  mkdir -p "$d/meta" "$d/data"
  cat >"$GARAGE_DIR/g$n.toml" <<TOML
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$(garage_port "$n" rpc)"
rpc_public_addr = "127.0.0.1:$(garage_port "$n" rpc)"
rpc_secret = "$2"

[s3_api]
s3_region = "$GARAGE_REGION"
api_bind_addr = "127.0.0.1:$(garage_port "$n" s3)"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$(garage_port "$n" admin)"
admin_token = "$3"
TOML
}

_ghex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }   # _ghex NBYTES

garage_write_env() {   # (re)writes $GARAGE_DIR/garage.env from the current variables and pid files
  _gneed_dir || return
  local n
  {
    echo "GARAGE_DIR=$GARAGE_DIR"
    echo "GARAGE_BIN=$GARAGE_BIN"
    echo "GARAGE_S3_ENDPOINT=$(garage_endpoint 1)"
    echo "GARAGE_KEY_ID=${GARAGE_KEY_ID:-}"
    echo "GARAGE_SECRET=${GARAGE_SECRET:-}"
    echo "GARAGE_REGION=$GARAGE_REGION"
    echo "GARAGE_BUCKET=$GARAGE_BUCKET"
    echo "GARAGE_ADMIN_TOKEN=${GARAGE_ADMIN_TOKEN:-}"
    echo "GARAGE_PORT_PREFIX=$GARAGE_PORT_PREFIX"
    for n in "${GARAGE_NODES[@]}"; do echo "GARAGE_PID$n=$(_gpid "$n")"; done
  } >"$GARAGE_DIR/garage.env.tmp"
  mv "$GARAGE_DIR/garage.env.tmp" "$GARAGE_DIR/garage.env"
}

garage_load() {   # garage_load DIR: sets and exports every GARAGE_* of DIR/garage.env
  local f="$1/garage.env"
  [ -f "$f" ] || { echo "garage: no $f" >&2; return 1; }
  set -a
  # shellcheck source=/dev/null
  . "$f"
  set +a
}

_gexeced() { ! _galive "$1" || tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$GARAGE_DIR/g$2.toml"; }
_gport_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }   # something accepts on PORT

garage_start_node() {   # garage_start_node NODE: start its server process (config must exist)
  local n=$1 pid kind port
  _gneed_dir || return
  pid=$(_gpid "$n")
  if [ -n "$pid" ] && _galive "$pid"; then
    _glog "node $n is already running (pid $pid)"; return 1
  fi
  for kind in s3 rpc admin; do   # another cluster on these ports would answer in our place
    port=$(garage_port "$n" "$kind")
    if _gport_busy "$port"; then
      _glog "node $n: 127.0.0.1:$port is already in use (another cluster? set GARAGE_PORT_PREFIX)"; return 1
    fi
  done
  RUST_LOG=${GARAGE_LOG:-garage=info} "$GARAGE_BIN" -c "$GARAGE_DIR/g$n.toml" server \
    </dev/null >>"$GARAGE_DIR/g$n.log" 2>&1 &
  pid=$!
  echo "$pid" >"$GARAGE_DIR/g$n.pid"
  # until the fork has exec'd garage, /proc/PID/cmdline is bash's and _gpid would not see it
  garage_wait "$GARAGE_TIMEOUT" "node $n to exec" - _gexeced "$pid" "$n" || return 1
  printf -v "GARAGE_PID$n" '%s' "$pid"
  export "GARAGE_PID$n"
}

_ghttp_code() {   # _ghttp_code URL [CURL ARGS...]: the HTTP status, 000 when nothing answers
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "${@:2}" "$1" || true
}
_gadmin_up() { [ "$(_ghttp_code "http://127.0.0.1:$(garage_port "$1" admin)/health")" != 000 ]; }
# 200 from /health = every partition has quorum ("fully operational" or, with a node down,
# "operational but some storage nodes are unavailable"); 503 = no quorum somewhere.
_ghealth_ok() { [ "$(_ghttp_code "http://127.0.0.1:$(garage_port "$1" admin)/health")" = 200 ]; }
_ghealth_full() {
  curl -s --max-time 5 "http://127.0.0.1:$(garage_port "$1" admin)/health" 2>/dev/null | grep -q 'fully operational'
}

garage_wait_rpc() {   # garage_wait_rpc NODE: its server answers the CLI (RPC) and admin API
  garage_wait "$GARAGE_TIMEOUT" "node $1 RPC" "$1" garage_cli "$1" status &&
    garage_wait "$GARAGE_TIMEOUT" "node $1 admin API" "$1" _gadmin_up "$1"
}

garage_wait_healthy() {   # garage_wait_healthy [NODE] [full]: /health 200 (full: all nodes up)
  local n=${1:-1}
  if [ "${2:-}" = full ]; then
    garage_wait "$GARAGE_TIMEOUT" "node $n: cluster fully operational" "$n" _ghealth_full "$n"
  else
    garage_wait "$GARAGE_TIMEOUT" "node $n: cluster has quorum" "$n" _ghealth_ok "$n"
  fi
}

_gs3_ok() { [ "$(garage_s3 "$1" GET "/$GARAGE_BUCKET?list-type=2&max-keys=1" -o /dev/null -w '%{http_code}')" = 200 ]; }
garage_wait_s3() {   # garage_wait_s3 NODE: a signed ListObjectsV2 on the bucket through NODE is 200
  garage_wait "$GARAGE_TIMEOUT" "node $1 S3 API serves bucket $GARAGE_BUCKET" "$1" _gs3_ok "$1"
}

# garage_s3 NODE METHOD PATH[?QUERY] [CURL ARGS...]: one signed request to NODE's S3 API.
# PATH is path-style (/bucket/key). QUERY must be in canonical form: parameters sorted by
# name, values already percent-encoded (garage_urlencode), "name=" for a bare flag
# (?uploads=): curl 7.88 signs the query string as given. Prints what curl prints.
garage_s3() {
  local n=$1 method=$2 path=$3; shift 3
  : "${GARAGE_KEY_ID:?garage: GARAGE_KEY_ID is not set}" "${GARAGE_SECRET:?garage: GARAGE_SECRET is not set}"
  local head=(-X "$method")
  if [ "$method" = HEAD ]; then head=(-I); fi
  curl -sS --max-time "${GARAGE_CURL_TIMEOUT:-120}" "${head[@]}" \
    --aws-sigv4 "aws:amz:$GARAGE_REGION:s3" --user "$GARAGE_KEY_ID:$GARAGE_SECRET" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "$(garage_endpoint "$n")$path"
}

garage_urlencode() {   # garage_urlencode STRING: S3 (RFC 3986) encoding, '/' encoded too
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) printf -v c '%%%02X' "'$c"; out+=$c ;;
    esac
  done
  printf '%s\n' "$out"
}

garage_put() {   # garage_put KEY FILE [NODE] [CURL ARGS...]: PutObject; fails unless 200
  local key=$1 file=$2 n=${3:-1} code
  shift $(($# < 3 ? $# : 3))
  code=$(garage_s3 "$n" PUT "/$GARAGE_BUCKET/$key" -T "$file" -o /dev/null -w '%{http_code}' "$@") || true
  [ "$code" = 200 ] || { _glog "PUT $key via node $n: HTTP $code"; return 1; }
}

garage_get() {   # garage_get KEY OUT [NODE]: GetObject into OUT ("-" = stdout); fails unless 2xx
  local key=$1 out=$2 n=${3:-1}
  garage_s3 "$n" GET "/$GARAGE_BUCKET/$key" --fail -o "$out"
}

garage_head() {   # garage_head KEY [NODE]: prints the HTTP status of HeadObject (200, 404, ...)
  garage_s3 "${2:-1}" HEAD "/$GARAGE_BUCKET/$1" -o /dev/null -w '%{http_code}\n' || true
}

garage_delete() {   # garage_delete KEY [NODE]: DeleteObject; fails unless 204
  local code
  code=$(garage_s3 "${2:-1}" DELETE "/$GARAGE_BUCKET/$1" -o /dev/null -w '%{http_code}') || true
  [ "$code" = 204 ] || { _glog "DELETE $1: HTTP $code"; return 1; }
}

_gxml_unescape() { sed -e 's/&lt;/</g; s/&gt;/>/g; s/&quot;/"/g; s/&apos;/'"'"'/g; s/&#39;/'"'"'/g; s/&amp;/\&/g'; }

garage_list() {   # garage_list PREFIX [NODE] [PAGE]: every key under PREFIX, one a line (ListObjectsV2)
  local prefix=$1 n=${2:-1} page=${3:-1000} token='' q xml
  while :; do
    q="list-type=2&max-keys=$page&prefix=$(garage_urlencode "$prefix")"
    [ -z "$token" ] || q="continuation-token=$(garage_urlencode "$token")&$q"
    xml=$(garage_s3 "$n" GET "/$GARAGE_BUCKET?$q" --fail) || { _glog "ListObjectsV2 $prefix via node $n failed"; return 1; }
    xml=${xml//$'\n'/}
    grep -o '<Key>[^<]*</Key>' <<<"$xml" | sed -e 's/^<Key>//; s/<\/Key>$//' | _gxml_unescape || true
    grep -q '<IsTruncated>true</IsTruncated>' <<<"$xml" || return 0
    token=$(grep -o '<NextContinuationToken>[^<]*</NextContinuationToken>' <<<"$xml" |
      sed -e 's/^<NextContinuationToken>//; s/<\/NextContinuationToken>$//' | _gxml_unescape) || true
    [ -n "$token" ] || { _glog "ListObjectsV2: truncated without a continuation token"; return 1; }
  done
}

# garage_sha256_check PREFIX [NODE] [MIN]: every object under PREFIX must be named
# .../blobs/sha256/<hex> or .../manifests/sha256/<hex> and its bytes must hash to <hex>;
# and there must be at least MIN objects (default 1). Prints "ok|BAD|BADNAME KEY" per
# object and a summary line; returns 1 on any failure.
garage_sha256_check() {
  local prefix=$1 n=${2:-1} min=${3:-1} keys key want got total=0 bad=0
  keys=$(garage_list "$prefix" "$n") || return 1
  while IFS= read -r key; do
    [ -n "$key" ] || continue
    total=$((total + 1))
    if [[ ! $key =~ (^|/)(blobs|manifests)/sha256/([0-9a-f]{64})$ ]]; then
      echo "BADNAME $key"; bad=$((bad + 1)); continue
    fi
    want=${BASH_REMATCH[3]}
    if ! got=$(set -o pipefail; garage_get "$key" - "$n" | sha256sum | cut -d' ' -f1); then
      echo "BAD $key (GET failed)"; bad=$((bad + 1)); continue
    fi
    if [ "$got" = "$want" ]; then echo "ok $key"; else echo "BAD $key (sha256 $got)"; bad=$((bad + 1)); fi
  done <<<"$keys"
  echo "garage_sha256_check $prefix: $total objects, $bad bad"
  [ "$bad" = 0 ] && [ "$total" -ge "$min" ]
}

garage_kill() {   # garage_kill NODE: kill -9 its server and wait until it is gone
  local n=$1 pid
  _gneed_dir || return
  pid=$(_gpid "$n")
  [ -n "$pid" ] || { _glog "node $n: no pid"; return 1; }
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true   # reaps it when it is this shell's child
  garage_wait "$GARAGE_TIMEOUT" "node $n (pid $pid) to exit" - _gall_dead "$pid" || return 1
  rm -f "$GARAGE_DIR/g$n.pid"
  printf -v "GARAGE_PID$n" '%s' ''
  garage_write_env
}

garage_node_id() {   # garage_node_id NODE: <hex id>@127.0.0.1:<rpc port> (read locally, works when down)
  garage_cli "$1" node id -q 2>/dev/null | tail -n 1
}

# garage_connect NODE: connect NODE and every other live node to each other, both ways. A
# (re)started node, and its peers, only retry a lost connection after about 30 s.
garage_connect() {
  local n=$1 m pid id_n
  id_n=$(garage_node_id "$n")
  for m in "${GARAGE_NODES[@]}"; do
    [ "$m" != "$n" ] || continue
    pid=$(_gpid "$m")
    if [ -z "$pid" ] || ! _galive "$pid"; then continue; fi
    if ! garage_cli "$n" node connect "$(garage_node_id "$m")" >/dev/null 2>&1 ||
      ! garage_cli "$m" node connect "$id_n" >/dev/null 2>&1; then
      _glog "nodes $n and $m: node connect failed"; return 1
    fi
  done
}

garage_restart() {   # garage_restart NODE: start a stopped node again; wait until it serves S3
  local n=$1 t0
  t0=$(_gnow)
  garage_start_node "$n" || return 1
  garage_write_env
  garage_wait_rpc "$n" && garage_connect "$n" && garage_wait_healthy "$n" full && garage_wait_s3 "$n" || return 1
  _glog "node $n restarted in $(_gsince "$t0")s"
}

garage_start() {   # garage_start DIR: a new cluster in DIR (or DIR's existing one, resumed)
  local dir=$1 t0 n id ids=() out resume=0
  [ -x "$GARAGE_BIN" ] || { echo "garage: no executable $GARAGE_BIN (set GARAGE_BIN)" >&2; return 1; }
  mkdir -p "$dir" && GARAGE_DIR=$(cd "$dir" && pwd) || return 1
  export GARAGE_DIR GARAGE_BIN GARAGE_REGION GARAGE_BUCKET GARAGE_PORT_PREFIX
  t0=$(_gnow)
  if [ -f "$GARAGE_DIR/garage.env" ]; then
    resume=1
    garage_load "$GARAGE_DIR" || return 1
  else
    GARAGE_ADMIN_TOKEN=$(_ghex 32)
    export GARAGE_ADMIN_TOKEN
    local secret; secret=$(_ghex 32)
    for n in "${GARAGE_NODES[@]}"; do _gwrite_config "$n" "$secret" "$GARAGE_ADMIN_TOKEN"; done
  fi
  for n in "${GARAGE_NODES[@]}"; do garage_start_node "$n" || return 1; done
  garage_write_env
  for n in "${GARAGE_NODES[@]}"; do garage_wait_rpc "$n" || return 1; done
  _glog "3 servers answer after $(_gsince "$t0")s"
  for n in "${GARAGE_NODES[@]}"; do
    id=$(garage_node_id "$n") || return 1
    [[ $id == *@* ]] || { _glog "node $n: unexpected node id '$id'"; return 1; }
    ids+=("$id")
  done
  garage_connect 1 || return 1
  if [ "$resume" = 0 ]; then
    for n in "${GARAGE_NODES[@]}"; do
      garage_cli 1 layout assign -z "dc$n" -c 1G "${ids[n - 1]%%@*}" >/dev/null || return 1
    done
    garage_cli 1 layout apply --version 1 >/dev/null || return 1
    _glog "layout applied after $(_gsince "$t0")s"
  fi
  for n in "${GARAGE_NODES[@]}"; do garage_wait_healthy "$n" full || return 1; done
  if [ "$resume" = 0 ]; then
    out=$(garage_cli 1 key create ferry-key) || return 1
    GARAGE_KEY_ID=$(awk '/^Key ID:/ { print $NF }' <<<"$out")
    GARAGE_SECRET=$(awk '/^Secret key:/ { print $NF }' <<<"$out")
    [[ $GARAGE_KEY_ID == GK* && ${#GARAGE_SECRET} -ge 32 ]] || { _glog "cannot parse key create output:"; echo "$out" >&2; return 1; }
    export GARAGE_KEY_ID GARAGE_SECRET
    garage_cli 1 bucket create "$GARAGE_BUCKET" >/dev/null || return 1
    garage_cli 1 bucket allow --read --write --owner "$GARAGE_BUCKET" --key ferry-key >/dev/null || return 1
    garage_write_env
  fi
  for n in "${GARAGE_NODES[@]}"; do garage_wait_s3 "$n" || return 1; done
  _glog "cluster ready in $(_gsince "$t0")s: $(garage_endpoint 1), key $GARAGE_KEY_ID, bucket $GARAGE_BUCKET; env in $GARAGE_DIR/garage.env"
}

garage_stop() {   # garage_stop [DIR]: SIGTERM every node, SIGKILL those alive after GARAGE_TIMEOUT
  [ -z "${1:-}" ] || GARAGE_DIR=$(cd "$1" && pwd) || return 1
  _gneed_dir || return
  local n pid pids=()
  for n in "${GARAGE_NODES[@]}"; do
    pid=$(_gpid "$n")
    if [ -z "$pid" ] || ! _galive "$pid"; then continue; fi
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  done
  if [ ${#pids[@]} -gt 0 ] && ! garage_wait "$GARAGE_TIMEOUT" "nodes to stop" - _gall_dead "${pids[@]}"; then
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    garage_wait "$GARAGE_TIMEOUT" "nodes to die" - _gall_dead "${pids[@]}" || return 1
  fi
  for n in "${GARAGE_NODES[@]}"; do rm -f "$GARAGE_DIR/g$n.pid"; printf -v "GARAGE_PID$n" '%s' ''; done
  [ ! -f "$GARAGE_DIR/garage.env" ] || garage_write_env
}

# ---------------------------------------------------------------- command line
_garage_main() {
  set -euo pipefail
  local cmd=${1:-} dir=${2:-}
  if [ -z "$cmd" ] || [ -z "$dir" ]; then
    sed -n '3,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; return 2
  fi
  shift 2
  case $cmd in
    start) garage_start "$dir" ;;
    *)
      garage_load "$dir"
      case $cmd in
        stop) garage_stop "$dir" ;;
        kill) garage_kill "$1" ;;
        restart) garage_restart "$1" ;;
        put) garage_put "$@" ;;
        get) garage_get "$@" ;;
        head) garage_head "$@" ;;
        delete) garage_delete "$@" ;;
        list) garage_list "$@" ;;
        check) garage_sha256_check "$@" ;;
        wait) garage_wait_s3 "${1:-1}" ;;
        cli) garage_cli "$@" ;;
        *) echo "garage.sh: unknown command $cmd" >&2; return 2 ;;
      esac
      ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _garage_main "$@"
fi
