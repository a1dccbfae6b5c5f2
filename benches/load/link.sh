#!/usr/bin/env bash
# benches/load/link.sh: cold blob pulls when the upstream is across a shaped network link.
#
# The upstream (distribution 2.8.2 `docker-registry`) runs in a network namespace of its
# own, reached over a veth pair: host 198.18.0.1/30, namespace 198.18.0.2/30 (RFC 2544's
# benchmarking range; nothing leaves the machine). The upstream-to-host direction is shaped
# with `tbf` on the namespace side's veth; host-to-upstream (requests, seeding) is not.
# On the host: the peer (`docker-registry` in proxy mode), Ferry, and curl as the client.
#
# For each link rate: (re)start Ferry and the peer with empty data dirs and pull one cold
# blob through each as soon as GET /v2/ answers ("first pull after start"), then REPS
# repetitions, each on a fresh blob: direct from upstream, through the peer, through Ferry
# (the order rotates). Then, at HERD_RATE, HERD clients at once on one fresh blob for each
# of direct, peer and Ferry. Per pull: time to first byte, total time, the body's sha256
# (checked after the clock), CPU of each server (utime+stime from /proc/PID/stat, read
# right before and right after the pull, and again once all servers are idle), and the
# upstream's blob GETs (its access log).
#
# Usage:   bash benches/load/link.sh          (root: it creates a namespace, a veth pair, qdiscs)
# Knobs (environment, all optional):
#   FERRY_BIN   ferry binary (default /var/cache/ferry/target-release/release/ferry)
#   FERRY_ARGS  extra arguments appended to `ferry serve` (word-split)
#   OUT         output dir (default /tmp/ferry-link-<timestamp>): results.md, results.tsv, logs/
#   REPS        cold pulls per rate, each on a fresh blob, medians taken (default 9)
#   BLOB_MIB    size of each random blob (default 64)
#   HERD        concurrent clients in the herd; 0 skips it (default 10)
#   HERD_RATE   the link rate the herd runs at, if it is in RATES (default 400mbit)
#   RATES       link rates (tc units kbit/mbit/gbit, or "unshaped"); default "400mbit 4gbit unshaped"
#   PORT_BASE   the peer listens on 127.0.0.1:PORT_BASE+2, Ferry on +4 (default 16600;
#               within 16000-16999). The upstream listens on 198.18.0.2:5000 in the namespace.
#   KEEP_DATA=1 keep blobs and registry storage under $OUT/data (deleted by default)
#
# tbf burst per rate: rate / 250 Hz in bytes, rounded up to a power of two KiB, at least
# 64 KiB (400mbit: 256kb, 4gbit: 2mb); latency 50ms.
#
# Output: the tables on stdout and in $OUT/results.md, one row per pull in $OUT/results.tsv,
# logs in $OUT/logs. Exit status: 2 when a setup step fails (not root, install, namespace,
# seeding, a server not ready), 1 when any pull returned a non-200 or wrong bytes (a loud
# note in the table), else 0; targets that are not met do not change it. The EXIT trap ends
# every process started here (those in the namespace too) and deletes the veth pair and
# the namespace. Namespaces named ferry-link-PID left by a run that was killed are removed
# at start, once nothing runs in them and PID is no longer a link.sh.
set -euo pipefail

# ---------------------------------------------------------------- settings
FERRY_BIN=${FERRY_BIN:-/var/cache/ferry/target-release/release/ferry}
FERRY_ARGS=${FERRY_ARGS:-}
FERRY_TAG_TTL=${FERRY_TAG_TTL:-3600}
REPS=${REPS:-9}
BLOB_MIB=${BLOB_MIB:-64}
HERD=${HERD:-10}
HERD_RATE=${HERD_RATE:-400mbit}
RATES=${RATES:-400mbit 4gbit unshaped}
PORT_BASE=${PORT_BASE:-16600}
KEEP_DATA=${KEEP_DATA:-0}
OUT=${OUT:-/tmp/ferry-link-$(date +%Y%m%d-%H%M%S)}

PPORT=$((PORT_BASE + 2))
FPORT=$((PORT_BASE + 4))
NS=ferry-link-$$
VH=flk$$h          # host side of the veth pair (interface names: 15 characters at most)
VN=flk$$n          # namespace side: its egress is the shaped upstream-to-host direction
HOST_IP=198.18.0.1
NS_IP=198.18.0.2
UP="http://$NS_IP:5000"
BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))
REPO=bench/cold
HERD_REPO=bench/herd

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin   # ip, tc
# log, die, install_missing, port_free, start_bg, bg_pid, stop_bg, alive, wait_until, http_ok
# shellcheck source=SCRIPTDIR/../../tests/e2e/lib.sh
source "$REPO_ROOT/tests/e2e/lib.sh"
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# ---------------------------------------------------------------- cleanup
PIDS=()
NS_MADE=0
# ours PID: a live child of this script (never signal a reused PID)
ours() {
  local ppid stat
  read -r ppid stat < <(ps -o ppid=,stat= -p "$1" 2>/dev/null) || return 1
  [[ $ppid == "$$" && $stat != Z* ]]
}
ns_pids() { ip netns pids "$NS" 2>/dev/null || true; }
cleanup() {
  local rc=$? pid live=() alive_n
  trap - EXIT INT TERM HUP
  # our own children on the host and in the namespace (those in it are children too)
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do ours "$pid" && live+=("$pid"); done
  if ((NS_MADE)); then for pid in $(ns_pids); do live+=("$pid"); done; fi
  for pid in "${live[@]+"${live[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive_n=0
    for pid in "${live[@]+"${live[@]}"}"; do alive "$pid" && alive_n=1; done
    ((alive_n == 0)) && break
    sleep 0.1
  done
  for pid in "${live[@]+"${live[@]}"}"; do alive "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
  if ((NS_MADE)); then
    ip link del "$VH" 2>/dev/null || true    # deletes both ends
    ip link del "$VN" 2>/dev/null || true    # if it never moved into the namespace
    ip netns del "$NS" 2>/dev/null || true
    ip netns list 2>/dev/null | grep -q "^$NS\b" && log "WARNING: namespace $NS is still there"
  fi
  if [[ "$KEEP_DATA" != 1 && -n "${DATA:-}" && -d "${DATA:-}" ]]; then rm -rf "$DATA"; fi
  [[ $rc == 0 || $rc == 1 ]] || log "failed (exit $rc); logs are in $OUT/logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# remove namespaces and veths of runs that were killed (SIGKILL skips the EXIT trap):
# only when nothing runs in the namespace and the PID in its name is no link.sh any more
reap_stale() {
  local ns pid ifc
  for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E '^ferry-link-[0-9]+$' || true); do
    pid=${ns#ferry-link-}
    [[ -n $(ip netns pids "$ns" 2>/dev/null) ]] && { log "namespace $ns still has processes: left alone"; continue; }
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'link\.sh'; then
      log "namespace $ns belongs to a running link.sh ($pid): left alone"; continue
    fi
    log "removing stale namespace $ns"
    ip netns del "$ns" 2>/dev/null || true
  done
  for ifc in $(ip -o link show 2>/dev/null | grep -oE 'flk[0-9]+[hn]' | sort -u || true); do
    pid=${ifc#flk}; pid=${pid%[hn]}
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'link\.sh'; then continue; fi
    log "removing stale interface $ifc"
    ip link del "$ifc" 2>/dev/null || true
  done
}

# ---------------------------------------------------------------- link
# rate_bps RATE: bits per second for a tc rate (kbit, mbit, gbit: powers of 10)
rate_bps() {
  [[ $1 =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] || return 1
  case ${BASH_REMATCH[2]} in
    kbit) echo $((BASH_REMATCH[1] * 1000)) ;;
    mbit) echo $((BASH_REMATCH[1] * 1000000)) ;;
    gbit) echo $((BASH_REMATCH[1] * 1000000000)) ;;
  esac
}
# burst_for RATE: rate/250 Hz in bytes, rounded up to a power of two KiB, at least 64 KiB
burst_for() {
  local bytes kib=64
  bytes=$(($(rate_bps "$1") / 8 / 250))
  while ((kib * 1024 < bytes)); do kib=$((kib * 2)); done
  if ((kib % 1024 == 0)); then echo "$((kib / 1024))mb"; else echo "${kib}kb"; fi
}
shape() {
  if [[ $1 == unshaped ]]; then
    ip netns exec "$NS" tc qdisc del dev "$VN" root 2>/dev/null || true
  else
    ip netns exec "$NS" tc qdisc replace dev "$VN" root tbf rate "$1" burst "$(burst_for "$1")" latency 50ms ||
      die "tc tbf $1 on $VN failed"
  fi
  ip netns exec "$NS" tc qdisc show dev "$VN" >>"$OUT/logs/tc.log"
}
setup_link() {
  ip -o -4 addr show 2>/dev/null | grep -q " $HOST_IP/" &&
    die "$HOST_IP is already assigned on this host: another link.sh is running, or one was killed and its servers still run (ip netns list; ip netns pids ferry-link-PID)"
  NS_MADE=1
  ip netns add "$NS" || die "ip netns add $NS failed"
  ip link add "$VH" type veth peer name "$VN" || die "veth pair $VH/$VN failed"
  ip link set "$VN" netns "$NS"
  ip addr add "$HOST_IP/30" dev "$VH"
  ip link set "$VH" up
  ip netns exec "$NS" ip link set lo up
  ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$VN"
  ip netns exec "$NS" ip link set "$VN" up
  # tbf must exist in this kernel before anything is measured
  ip netns exec "$NS" tc qdisc replace dev "$VN" root tbf rate 1gbit burst 1mb latency 50ms ||
    die "tc tbf is not available"
  ip netns exec "$NS" tc qdisc del dev "$VN" root
  log "namespace $NS: $VH $HOST_IP/30 <-> $VN $NS_IP/30"
}

# ---------------------------------------------------------------- servers
# cpu_ticks PID: utime + stime (fields 14 and 15 of /proc/PID/stat, all threads), 0 when gone
cpu_ticks() {
  local s fields
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
  read -ra fields <<<"${s##*) }"   # fields[0] is field 3
  echo $((fields[11] + fields[12]))
}
# machine_ticks: "BUSY TOTAL" jiffies of all CPUs (/proc/stat's cpu line; idle and iowait are not busy)
machine_ticks() {
  local _ user nice system idle iowait irq softirq steal
  read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
  echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}
declare -A PIDOF=()
cpu_all() { echo "$(cpu_ticks "${PIDOF[upstream]:-0}") $(cpu_ticks "${PIDOF[peer]:-0}") $(cpu_ticks "${PIDOF[ferry]:-0}")"; }
# settle: until no server used CPU for 0.4 s (10 s at most): background work of a pull
# (a proxy's store writes, the peer's second upstream fetch) lands in this pull's figures
settle() {
  local prev cur
  prev=$(cpu_all)
  for _ in $(seq 50); do
    sleep 0.2; cur=$(cpu_all)
    [[ $cur == "$prev" ]] && { sleep 0.2; cur=$(cpu_all); [[ $cur == "$prev" ]] && return 0; }
    prev=$cur
  done
  log "servers still busy 10 s after a pull"
}

# start_server NAME URL CMD...: start a server, wait (30 s at most) until URL answers 200
start_server() {
  local name=$1 url=$2 t0; shift 2
  t0=$(now)
  start_bg "$name" "$OUT/logs/$name.log" "$@"
  PIDS+=("$(bg_pid "$name")"); PIDOF[$name]=$(bg_pid "$name")
  wait_until 30 "$name" http_ok "$url" ||
    { tail -n 20 "$OUT/logs/$name.log" >&2; die "$name not ready at $url (log: $OUT/logs/$name.log)"; }
  log "$name ready at $url after $(calc "$(now) - $t0") s"
}

GEN=0
# restart_proxy NAME: stop it, give it a new empty data dir, start it, wait for GET /v2/ 200
restart_proxy() {
  local name=$1 dir
  stop_bg "$name"; PIDOF[$name]=""
  if [[ $KEEP_DATA != 1 ]]; then rm -rf "$DATA/$name"-*; fi
  GEN=$((GEN + 1)); dir="$DATA/$name-$GEN"; mkdir -p "$dir"
  echo "=== $(date +%T) start, data dir $dir" >>"$OUT/logs/$name.log"
  if [[ $name == peer ]]; then
    registry_config "$DATA/peer.yml" "$dir" "127.0.0.1:$PPORT" true "$UP"
    start_server peer "http://127.0.0.1:$PPORT/v2/" docker-registry serve "$DATA/peer.yml"
  else
    # shellcheck disable=SC2086
    start_server ferry "http://127.0.0.1:$FPORT/v2/" "$FERRY_BIN" serve --listen "127.0.0.1:$FPORT" \
      --data-dir "$dir" --upstream "$UP" --tag-ttl "$FERRY_TAG_TTL" $FERRY_ARGS
  fi
}

# ---------------------------------------------------------------- seeding (OCI push API)
# sha256_hex FILE...: one hex digest per line (hashlib: the CPU's SHA extensions)
sha256_hex() {
  python3 -c 'import hashlib, sys
for p in sys.argv[1:]:
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        print(h.hexdigest())
    except OSError:
        print("missing")' "$@"
}
# push_blob REPO FILE HEX: the blob pushed to the upstream (HEX is FILE's; checked)
push_blob() {
  [[ $(oci_push_blob "$UP" "$1" "$2") == "sha256:$3" ]] || die "blob push to $1 failed"
}
# seed REPO: one fresh random blob pushed to REPO; prints its hex digest
seed() {
  local f="$DATA/seed.blob" hex
  head -c "$BLOB_BYTES" /dev/urandom >"$f"
  hex=$(sha256_hex "$f")
  push_blob "$1" "$f" "$hex"
  rm -f "$f"
  echo "$hex"
}
up_file() { echo "$DATA/upstream/docker/registry/v2/blobs/sha256/${1:0:2}/$1/data"; }
# upstream access-log lines for one blob: "GETS HEADS"
up_counts() {
  local g h
  g=$(grep -c "\"GET /v2/$1/blobs/sha256:$2 " "$OUT/logs/upstream.log" || true)
  h=$(grep -c "\"HEAD /v2/$1/blobs/sha256:$2 " "$OUT/logs/upstream.log" || true)
  echo "$g $h"
}

# ---------------------------------------------------------------- measurements
declare -A BASE=()
BAD=0
TSV=""
row() { local IFS=$'\t'; echo "$*" >>"$TSV"; }
ms() { awk "BEGIN { printf \"%d\", ($1) * 1000 / $CLK_TCK }"; }

# pull_one RATE KIND REP POS PATH HEX: one cold GET of blob HEX via PATH (direct|peer|ferry),
# one row in results.tsv; sets LAST to "PATH TOTALs" for the log (not run in $(...): BAD counts)
LAST=""
pull_one() {
  local rate=$1 kind=$2 rep=$3 pos=$4 path=$5 hex=$6 f="$DATA/body" r c0 c1 c2 u0 u1 ttfb total size code sum ok
  local a0 a1 a2 b0 b1 b2 s0 s1 s2 m0 m1 t0 t1
  read -r u0 < <(up_counts "$REPO" "$hex" | tr ' ' ':')
  read -r a0 a1 a2 <<<"$(cpu_all)"
  read -r m0 t0 <<<"$(machine_ticks)"
  r=$(curl -s --max-time 300 -o "$f" -w '%{time_starttransfer} %{time_total} %{size_download} %{http_code}' \
      "${BASE[$path]}/v2/$REPO/blobs/sha256:$hex") || true
  read -r m1 t1 <<<"$(machine_ticks)"
  read -r b0 b1 b2 <<<"$(cpu_all)"
  settle
  read -r s0 s1 s2 <<<"$(cpu_all)"
  sleep 0.1
  read -r u1 < <(up_counts "$REPO" "$hex" | tr ' ' ':')
  read -r ttfb total size code <<<"${r:-0 0 0 000}"
  sum=$(sha256_hex "$f"); rm -f "$f"
  ok=1
  if [[ $code != 200 || $sum != "$hex" ]]; then
    ok=0; BAD=$((BAD + 1))
    log "BAD: $rate $kind rep $rep via $path: HTTP $code, $size bytes, sha256 $sum (want $hex)"
  fi
  c0=$(ms "$b0 - $a0"); c1=$(ms "$b1 - $a1"); c2=$(ms "$b2 - $a2")
  row "$rate" "$kind" "$rep" "$pos" "$path" "$ttfb" "$total" "$size" "$code" "$ok" \
    "$((${u1%%:*} - ${u0%%:*}))" "$((${u1#*:} - ${u0#*:}))" "$c0" "$c1" "$c2" \
    "$(ms "$s0 - $a0")" "$(ms "$s1 - $a1")" "$(ms "$s2 - $a2")" "$hex" \
    "$(awk -v b="$((m1 - m0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.0f", (t > 0 ? 100 * b / t : 0) }')"
  LAST="$path ${total}s"
}

# herd RATE PATH HEX: HERD clients at once on cold blob HEX (in $HERD_REPO) via PATH
herd() {
  local rate=$1 path=$2 hex=$3 d="$DATA/herd" i pids=() t0 t1 u0 u1 ok=0 wall files=() sums=()
  local a0 a1 a2 b0 b1 b2 s0 s1 s2 maxt=0 code t
  rm -rf "$d"; mkdir -p "$d"
  read -r u0 < <(up_counts "$HERD_REPO" "$hex" | tr ' ' ':')
  read -r a0 a1 a2 <<<"$(cpu_all)"
  t0=$(now)
  for i in $(seq "$HERD"); do
    curl -s --max-time 300 -o "$d/$i.body" -w '%{time_total} %{http_code}' \
      "${BASE[$path]}/v2/$HERD_REPO/blobs/sha256:$hex" >"$d/$i.w" 2>/dev/null &
    pids+=("$!"); PIDS+=("$!")
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  t1=$(now)
  read -r b0 b1 b2 <<<"$(cpu_all)"
  settle
  read -r s0 s1 s2 <<<"$(cpu_all)"
  sleep 0.1
  read -r u1 < <(up_counts "$HERD_REPO" "$hex" | tr ' ' ':')
  for i in $(seq "$HERD"); do files+=("$d/$i.body"); done
  mapfile -t sums < <(sha256_hex "${files[@]}")
  for i in $(seq "$HERD"); do
    t=0; code=000
    read -r t code <"$d/$i.w" || true   # no trailing newline: read "fails" but assigns
    t=${t:-0}; code=${code:-000}
    if [[ $code == 200 && ${sums[$((i - 1))]} == "$hex" ]]; then ok=$((ok + 1)); else
      log "BAD: herd via $path client $i: HTTP $code, sha256 ${sums[$((i - 1))]} (want $hex)"; fi
    maxt=$(awk -v a="$maxt" -v b="$t" 'BEGIN { print (b > a) ? b : a }')
  done
  rm -rf "$d"
  ((ok == HERD)) || BAD=$((BAD + HERD - ok))
  wall=$(calc "$t1 - $t0")
  row "$rate" herd 1 0 "$path" "" "$wall" "$BLOB_BYTES" "$ok/$HERD" "$((ok == HERD ? 1 : 0))" \
    "$((${u1%%:*} - ${u0%%:*}))" "$((${u1#*:} - ${u0#*:}))" \
    "$(ms "$b0 - $a0")" "$(ms "$b1 - $a1")" "$(ms "$b2 - $a2")" \
    "$(ms "$s0 - $a0")" "$(ms "$s1 - $a1")" "$(ms "$s2 - $a2")" "$hex" ""
  log "$rate herd of $HERD via $path: ${wall}s until all finished, $((${u1%%:*} - ${u0%%:*})) upstream GETs, $ok/$HERD bodies right"
}

# ================================================================== main
[[ $EUID == 0 ]] || die "needs root: it creates a network namespace, a veth pair and qdiscs"
mkdir -p "$OUT/logs" || die "cannot create $OUT"
DATA="$OUT/data"
rm -rf "$DATA"; mkdir -p "$DATA/upstream"
WORK=$DATA   # start_bg keeps its pid files in $WORK/pids
TSV="$OUT/results.tsv"
T_START=$(now)
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

((PORT_BASE >= 16000 && PORT_BASE + 4 <= 16999)) || die "PORT_BASE=$PORT_BASE: ports must stay in 16000-16999"
if ! [[ $REPS =~ ^[1-9][0-9]*$ ]]; then die "REPS=$REPS: want a whole number >= 1"; fi
[[ $HERD =~ ^[0-9]+$ ]] || die "HERD=$HERD: want a whole number"
if ! [[ $BLOB_MIB =~ ^[1-9][0-9]*$ ]]; then die "BLOB_MIB=$BLOB_MIB: want a whole number >= 1"; fi
read -ra RATE_LIST <<<"$RATES"
((${#RATE_LIST[@]} > 0)) || die "RATES is empty"
for r in "${RATE_LIST[@]}"; do
  [[ $r == unshaped ]] || rate_bps "$r" >/dev/null || die "RATES: '$r' is not NNN(kbit|mbit|gbit) or unshaped"
done
DO_HERD=0
if ((HERD > 0)); then for r in "${RATE_LIST[@]}"; do [[ $r == "$HERD_RATE" ]] && DO_HERD=1; done; fi
[[ -x $FERRY_BIN ]] || die "no Ferry binary at $FERRY_BIN (set FERRY_BIN)"
install_missing docker-registry:docker-registry curl:curl python3:python3 ip:iproute2 tc:iproute2 \
  awk:gawk ps:procps getconf:libc-bin
CLK_TCK=$(getconf CLK_TCK)
for p in $PPORT $FPORT; do port_free "$p" || die "port $p on 127.0.0.1 is in use (set PORT_BASE)"; done
awk "BEGIN { exit !($LOAD_START > 1.0) }" &&
  log "note: 1-minute load average is $LOAD_START at start: other work competes for the CPUs"
FERRY_SUM=$(sha256sum "$FERRY_BIN" | cut -c1-12)
log "Ferry: $FERRY_BIN (sha256 $FERRY_SUM…, $(date -r "$FERRY_BIN" '+%F %T'))"
printf 'rate\tkind\trep\tpos\tpath\tttfb_s\ttotal_s\tbytes\thttp\tok\tup_gets\tup_heads\tcpu_ms_upstream\tcpu_ms_peer\tcpu_ms_ferry\tcpu_idle_ms_upstream\tcpu_idle_ms_peer\tcpu_idle_ms_ferry\tdigest\tbusy_pct\n' >"$TSV"

reap_stale
setup_link

# ---- upstream, inside the namespace (access log on: upstream GETs are counted from it)
registry_config "$DATA/upstream.yml" "$DATA/upstream" "$NS_IP:5000" false
start_server upstream "$UP/v2/" ip netns exec "$NS" docker-registry serve "$DATA/upstream.yml"
[[ $(ip netns identify "${PIDOF[upstream]}" 2>/dev/null) == "$NS" ]] ||
  die "the upstream (pid ${PIDOF[upstream]}) is not in namespace $NS"

# ---- seed every blob up front: (REPS + 1) per rate, 3 for the herd
NEED=$((${#RATE_LIST[@]} * (REPS + 1)))
log "seeding $NEED + $((DO_HERD * 3)) random ${BLOB_MIB} MiB blobs over the push API (unshaped direction)"
declare -A FIRST_HEX=() REP_HEX=() HERD_HEX=()
for r in "${RATE_LIST[@]}"; do
  FIRST_HEX[$r]=$(seed "$REPO")
  for i in $(seq "$REPS"); do REP_HEX[$r.$i]=$(seed "$REPO"); done
done
if ((DO_HERD)); then for p in direct peer ferry; do HERD_HEX[$p]=$(seed "$HERD_REPO"); done; fi
# a blob pushed without a manifest is served by distribution (the upload links it into the repo)
h=${FIRST_HEX[${RATE_LIST[0]}]}
got=$(curl -sS -f --max-time 60 "$UP/v2/$REPO/blobs/sha256:$h" | sha256sum | cut -c1-64) ||
  die "upstream GET of a seeded blob failed"
[[ $got == "$h" ]] || die "upstream returned wrong bytes for a seeded blob"
[[ -f $(up_file "$h") ]] || die "no blob file at $(up_file "$h") (distribution's storage layout changed?)"
b=$(wc -l <"$OUT/logs/upstream.log"); curl -sS -f --max-time 5 -o /dev/null "$UP/v2/"; sleep 0.3
(($(wc -l <"$OUT/logs/upstream.log") > b)) || die "upstream writes no access log line per request"
log "seeded in $(calc "$(now) - $T_START") s"

BASE=([direct]="$UP" [peer]="http://127.0.0.1:$PPORT" [ferry]="http://127.0.0.1:$FPORT")
ORDER=(direct peer ferry)
for r in "${RATE_LIST[@]}"; do
  shape "$r"
  if [[ $r == unshaped ]]; then log "link unshaped"; else log "link $r (tbf burst $(burst_for "$r"), latency 50ms)"; fi

  # ---- first pull after start: each proxy fresh (new empty data dir), pulled from at once
  h=${FIRST_HEX[$r]}
  cat "$(up_file "$h")" >/dev/null   # upstream page cache warm for every path alike
  restart_proxy ferry; pull_one "$r" first 0 1 ferry "$h"; line=$LAST
  restart_proxy peer;  pull_one "$r" first 0 2 peer "$h"; line+=", $LAST"
  pull_one "$r" first 0 3 direct "$h"; line+=", $LAST"
  log "$r first pull after start: $line"

  # ---- REPS cold pulls, each on a fresh blob; the order rotates
  for i in $(seq "$REPS"); do
    h=${REP_HEX[$r.$i]}
    cat "$(up_file "$h")" >/dev/null
    line=""
    for k in 0 1 2; do
      p=${ORDER[$(((i - 1 + k) % 3))]}
      pull_one "$r" rep "$i" $((k + 1)) "$p" "$h"
      line+="${line:+, }$LAST"
    done
    log "$r rep $i/$REPS: $line"
  done

  # ---- herd
  if ((DO_HERD)) && [[ $r == "$HERD_RATE" ]]; then
    for p in direct peer ferry; do
      cat "$(up_file "${HERD_HEX[$p]}")" >/dev/null
      herd "$r" "$p" "${HERD_HEX[$p]}"
    done
  fi
done
shape unshaped
for p in upstream peer ferry; do
  alive "${PIDOF[$p]}" || { BAD=$((BAD + 1)); log "BAD: $p exited during the run (see $OUT/logs/$p.log)"; }
done

# ---------------------------------------------------------------- report
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
ELAPSED=$(calc "$(now) - $T_START")
BURSTS=""
for r in "${RATE_LIST[@]}"; do [[ $r == unshaped ]] || BURSTS+="${BURSTS:+, }$r: burst $(burst_for "$r")"; done
RATE_BPS=""
for r in "${RATE_LIST[@]}"; do RATE_BPS+="$r=$(rate_bps "$r" || echo 0) "; done
export TSV RATES RATE_BPS REPS BLOB_MIB BLOB_BYTES HERD HERD_RATE DO_HERD LOAD_START LOAD_END ELAPSED \
  FERRY_BIN FERRY_SUM BURSTS BAD OUT
python3 - "$OUT/results.md" <<'PY'
import csv, os, statistics, sys, datetime
E = os.environ
rows = list(csv.DictReader(open(E["TSV"]), delimiter="\t"))
rates = E["RATES"].split()
bps = dict(kv.split("=") for kv in E["RATE_BPS"].split())
reps, blob, herd_n = int(E["REPS"]), int(E["BLOB_BYTES"]), int(E["HERD"])
notes, loud = [], []

def f(x): return float(x) if x not in ("", None) else None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def s(x, d=3): return "n/a" if x is None else f"{x:.{d}f}"
def r2(x): return "n/a" if x is None else f"{x:.2f}×"
def ms(x, k=1): return "n/a" if x is None else f"{x * k:.0f}"
def pick(rate, kind, path): return [r for r in rows if r["rate"] == rate and r["kind"] == kind and r["path"] == path]

for r in rows:
    if r["ok"] != "1":
        loud.append(f"**BAD BODY/STATUS**: {r['rate']} {r['kind']} rep {r['rep']} via {r['path']}: HTTP {r['http']}, {r['bytes']} bytes, blob sha256:{r['digest'][:12]}…")

main = ["| Link | Measure | direct s | peer s | Ferry s | Ferry/direct | peer/direct | Ferry/peer | worst Ferry/direct | TTFB ms direct / peer / Ferry | CPU ms per pull, peer: median / mean | CPU ms per pull, Ferry: median / mean | upstream blob GETs (+HEADs) per pull, peer / Ferry |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
cpu = ["| Link | Measure | peer, until idle: median / mean | Ferry, until idle: median / mean | upstream serving direct / peer / Ferry (median, until idle) | all CPUs busy during the pull, direct / peer / Ferry (median) |",
       "|---|---|---:|---:|---:|---:|"]
res = {}   # (rate, key) -> value, for the targets
for rate in rates:
    label = "unshaped" if rate == "unshaped" else rate.replace("mbit", " Mbit/s").replace("gbit", " Gbit/s").replace("kbit", " kbit/s")
    line = None if rate == "unshaped" else blob * 8 / int(bps[rate])
    for kind, mlabel in (("first", "first pull after start"), ("rep", f"cold pull, median of {reps}")):
        by = {p: pick(rate, kind, p) for p in ("direct", "peer", "ferry")}
        if not by["direct"]: continue
        reps_of = lambda p: {r["rep"]: r for r in by[p]}
        d, pe, fe = reps_of("direct"), reps_of("peer"), reps_of("ferry")
        keys = sorted(d, key=int)
        tot = lambda m, k: f(m[k]["total_s"]) if k in m else None
        rfd = [tot(fe, k) / tot(d, k) for k in keys if tot(fe, k) and tot(d, k)]
        rpd = [tot(pe, k) / tot(d, k) for k in keys if tot(pe, k) and tot(d, k)]
        rfp = [tot(fe, k) / tot(pe, k) for k in keys if tot(fe, k) and tot(pe, k)]
        col = lambda m, c: [f(x[c]) for x in m.values()]
        cmed = lambda m, c: med(col(m, c))
        cmean = lambda m, c: (sum(col(m, c)) / len(m)) if m else None
        main.append("| " + " | ".join([
            label, mlabel, s(cmed(d, "total_s")), s(cmed(pe, "total_s")), s(cmed(fe, "total_s")),
            r2(med(rfd)), r2(med(rpd)), r2(med(rfp)), r2(max(rfd) if rfd else None),
            f"{ms(cmed(d, 'ttfb_s'), 1000)} / {ms(cmed(pe, 'ttfb_s'), 1000)} / {ms(cmed(fe, 'ttfb_s'), 1000)}",
            f"{ms(cmed(pe, 'cpu_ms_peer'))} / {ms(cmean(pe, 'cpu_ms_peer'))}",
            f"{ms(cmed(fe, 'cpu_ms_ferry'))} / {ms(cmean(fe, 'cpu_ms_ferry'))}",
            f"{ms(cmed(pe, 'up_gets'))} (+{ms(cmed(pe, 'up_heads'))}) / {ms(cmed(fe, 'up_gets'))} (+{ms(cmed(fe, 'up_heads'))})"]) + " |")
        cpu.append("| " + " | ".join([
            label, mlabel,
            f"{ms(cmed(pe, 'cpu_idle_ms_peer'))} / {ms(cmean(pe, 'cpu_idle_ms_peer'))}",
            f"{ms(cmed(fe, 'cpu_idle_ms_ferry'))} / {ms(cmean(fe, 'cpu_idle_ms_ferry'))}",
            f"{ms(cmed(d, 'cpu_idle_ms_upstream'))} / {ms(cmed(pe, 'cpu_idle_ms_upstream'))} / {ms(cmed(fe, 'cpu_idle_ms_upstream'))}",
            f"{ms(cmed(d, 'busy_pct'))}% / {ms(cmed(pe, 'busy_pct'))}% / {ms(cmed(fe, 'busy_pct'))}%"]) + " |")
        res[(rate, kind, "fd")] = med(rfd); res[(rate, kind, "fp")] = med(rfp)
        res[(rate, kind, "worst")] = max(rfd) if rfd else None
        res[(rate, kind, "direct")] = cmed(d, "total_s")
        res[(rate, kind, "cpu")] = (cmean(pe, "cpu_ms_peer"), cmean(fe, "cpu_ms_ferry"),
                                    cmean(pe, "cpu_idle_ms_peer"), cmean(fe, "cpu_idle_ms_ferry"))
        if kind == "rep":
            notes.append(f"{label}: Ferry/direct per repetition: " + " ".join(f"{x:.2f}" for x in rfd) +
                         f"; peer/direct: " + " ".join(f"{x:.2f}" for x in rpd))
            dm = cmed(d, "total_s")
            if line:
                notes.append(f"{label}: {blob / 2**20:.0f} MiB at line rate is {line:.3f} s (payload only); direct median {dm:.3f} s = {dm / line:.2f}× that")
                if dm < 0.95 * line:
                    loud.append(f"**SHAPING NOT EFFECTIVE** at {label}: direct pull {dm:.3f} s is faster than the line rate allows ({line:.3f} s)")

herd_tbl = []
hr = [r for r in rows if r["kind"] == "herd"]
if hr:
    rate = hr[0]["rate"]
    one = res.get((rate, "rep", "direct"))
    herd_tbl = [f"| Herd of {herd_n} at {rate}, one fresh blob each | wall s until all finish | ÷ one direct pull ({s(one)} s) | upstream blob GETs | upstream blob HEADs | bodies right | CPU ms of the proxy, until idle |",
                "|---|---:|---:|---:|---:|---:|---:|"]
    for r in hr:
        w = f(r["total_s"])
        c = {"direct": "—", "peer": ms(f(r["cpu_idle_ms_peer"])), "ferry": ms(f(r["cpu_idle_ms_ferry"]))}[r["path"]]
        herd_tbl.append(f"| {dict(direct='direct (each client its own GET)', peer='peer', ferry='Ferry')[r['path']]} | {s(w)} | {r2(w / one) if one else 'n/a'} | {r['up_gets']} | {r['up_heads']} | {r['http']} | {c} |")
        res[("herd", r["path"])] = (w, int(r["up_gets"]), w / one if one else None)

def tgt(name, want, got, ok):
    return f"| {name} | {want} | {got} | {'n/a' if ok is None else ('met' if ok else '**not met**')} |"
T = ["| Target (issue 24) | wants | measured | |", "|---|---|---|---|"]
if "400mbit" in rates:
    m = res.get(("400mbit", "rep", "fd")); T.append(tgt("400 Mbit/s: Ferry vs direct, median", "≤ 1.03×", r2(m), None if m is None else m <= 1.03))
    w = [x for x in (res.get(("400mbit", "rep", "worst")), res.get(("400mbit", "first", "worst"))) if x is not None]
    T.append(tgt("400 Mbit/s: every single Ferry pull incl. the first vs its direct pull", "≤ 1.1×",
                 f"worst {r2(max(w)) if w else 'n/a'} (first pull {r2(res.get(('400mbit', 'first', 'worst')))})", max(w) <= 1.1 if w else None))
else:
    T.append(tgt("400 Mbit/s targets", "", "not measured (400mbit not in RATES)", None))
if "4gbit" in rates:
    m = res.get(("4gbit", "rep", "fd")); T.append(tgt("4 Gbit/s: Ferry vs direct, median", "≤ 1.1×", r2(m), None if m is None else m <= 1.1))
if "unshaped" in rates:
    m = res.get(("unshaped", "rep", "fp")); T.append(tgt("unshaped: Ferry wall time vs peer, median", "≤ 0.9×", r2(m), None if m is None else m <= 0.9))
for rate in rates:
    c = res.get((rate, "rep", "cpu"))
    if c and c[0]:
        ok = c[1] <= 0.5 * c[0]
        idle = f"; until idle {c[3]:.0f} vs {c[2]:.0f} ms = {c[3] / c[2]:.2f}×" if c[2] else ""
        T.append(tgt(f"{rate}: CPU per cold pull, Ferry vs peer (mean over {reps})", "≤ 0.5×",
                     f"{c[1]:.0f} vs {c[0]:.0f} ms = {c[1] / c[0]:.2f}×{idle}", ok))
if ("herd", "ferry") in res:
    w, g, x = res[("herd", "ferry")]
    T.append(tgt(f"herd of {herd_n}: Ferry's upstream GETs", "1", str(g), g == 1))
    T.append(tgt(f"herd of {herd_n}: Ferry's wall time vs one direct pull", "≤ 1.1×", r2(x), None if x is None else x <= 1.1))

load_note = f" (above 1 at start: other work was competing for the CPUs)" if float(E["LOAD_START"]) > 1 else ""
head = [f"Ferry: `{E['FERRY_BIN']}` (sha256 {E['FERRY_SUM']}…). {os.cpu_count()} CPUs shared by the upstream, both proxies and curl.  ",
        f"Upstream: distribution 2.8.2 in a network namespace behind a veth pair, the upstream-to-host direction "
        + (f"shaped with tbf ({E['BURSTS']}; latency 50ms)" if E["BURSTS"] else "not shaped")
        + f". Client ↔ proxy on loopback. {blob / 2**20:.0f} MiB random blobs, "
        f"a fresh one for every repetition; {reps} repetition(s) per rate, order direct/peer/Ferry rotated.  ",
        f"Run took {float(E['ELAPSED']):.0f} s; 1-minute load average {E['LOAD_START']} at start{load_note}, {E['LOAD_END']} at end."]
md = [f"# Cold pulls over a shaped link ({datetime.datetime.now().isoformat(timespec='seconds')})", ""] + head + [""]
if loud: md += [f"- {l}" for l in loud] + [""]
md += main + ["", "CPU ms per pull: utime+stime of the server process (all threads) read right before and right after the pull, in 10 ms ticks; the mean is total/REPS. "
              "Ratios are medians of per-repetition ratios (same blob). The first-pull row is one sample per column: Ferry started and pulled at once, then the peer, then direct.", ""]
md += cpu + ["", "Until idle: the same counters read again once no server used CPU for 0.4 s after the pull (work after the response: a proxy's store writes, the peer's own background fetch). "
              "All CPUs busy: the machine's non-idle share of every CPU over the pull (/proc/stat; the upstream, the proxy, curl and the kernel together): near 100%, the pull is CPU-bound and only less work makes it faster.", ""]
if herd_tbl: md += herd_tbl + [""]
md += T + [""]
if notes: md += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
text = "\n".join(md)
open(sys.argv[1], "w").write(text)
print(text)
PY
log "results: $OUT/results.md (raw: $TSV, logs: $OUT/logs); took $ELAPSED s"
if ((BAD > 0)); then log "FAILED: $BAD pull(s) with a non-200 or wrong bytes (see the table)"; exit 1; fi
