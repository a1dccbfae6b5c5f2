#!/usr/bin/env bash
# benches/load/compare.sh: side-by-side load comparison on loopback.
#
#   nginx (static files, the practical ceiling)
#   peer  (distribution 2.8.2 `docker-registry` in proxy mode, the reference pull-through cache)
#   Ferry ($FERRY_BIN serve ...)
#
# all in front of one real upstream (a second `docker-registry`), seeded with synthetic
# content over the plain OCI push API. Prints one table and writes it to $OUT/results.md.
#
# Usage:   bash benches/load/compare.sh
# Knobs (environment, all optional):
#   FERRY_BIN      ferry binary (default: $CARGO_TARGET_DIR/release/ferry, else
#                  /var/cache/ferry/target/release/ferry, else ./target/release/ferry).
#                  Missing binary: only nginx and the peer are measured.
#   FERRY_TAG_TTL  value for --tag-ttl (default 3600)
#   FERRY_ARGS     extra arguments appended to `ferry serve` (word-split)
#   OUT            output dir (default /tmp/ferry-bench-<timestamp>): results.md, results.tsv, logs/
#   PORT_BASE      ports PORT_BASE+1..+4 are used (default 16500; must stay within 16000-16999)
#   BLOB_MIB       size of each random layer blob (default 64)
#   HEAD_N HEAD_C HEAD_SECS   warm HEAD run: requests, concurrency, time cap (20000, 8, 10)
#   UP_HEADS       HEADs in the upstream-traffic run (default 1000)
#   GET_CONNS GET_THREADS GET_SECS   warm blob GET run with wrk (4, 2, 8)
#   HERD           concurrent clients in the cold herd (default 20)
#   HERD_REPS      cold herds per proxy, each on its own fresh blob, median taken (default 3)
#   REPS           cold single-pull pairs (direct, then each proxy, each on a fresh blob), median taken (default 9)
#   PEER_ACCESS_LOG=1  let the peer write its access log (off by default, like Ferry's)
#   KEEP_DATA=1    keep blobs and registry storage under $OUT/data (deleted by default)
#   LINK=0         skip the last part: cold pulls over a shaped link (benches/load/link.sh, run
#                  when root and Ferry was measured; output in $OUT/link, its tables appended to
#                  results.md under "Cold pulls over a shaped link"; it gets PORT_BASE+100, and
#                  REPS and BLOB_MIB; its herd is LINK_HERD clients, default 10). Adds ~5 minutes.
#
# Exit status: non-zero when a setup step fails (install, seeding, a server not becoming
# ready, a warm-up that returns wrong bytes). Measurement anomalies (failed requests, bad
# bodies) are reported in the table's notes instead. A non-zero exit of link.sh (1: a
# pull returned wrong bytes, 2: its setup failed) becomes this script's exit status, after
# results.md is written. Every process started here is ended by the EXIT trap.
set -euo pipefail

# ---------------------------------------------------------------- settings
PORT_BASE=${PORT_BASE:-16500}
UPORT=$((PORT_BASE + 1))
PPORT=$((PORT_BASE + 2))
NPORT=$((PORT_BASE + 3))
FPORT=$((PORT_BASE + 4))
BLOB_MIB=${BLOB_MIB:-64}
HEAD_N=${HEAD_N:-20000}
HEAD_C=${HEAD_C:-8}
HEAD_SECS=${HEAD_SECS:-10}
UP_HEADS=${UP_HEADS:-1000}
GET_CONNS=${GET_CONNS:-4}
GET_THREADS=${GET_THREADS:-2}
GET_SECS=${GET_SECS:-8}
HERD=${HERD:-20}
HERD_REPS=${HERD_REPS:-3}
REPS=${REPS:-9}
KEEP_DATA=${KEEP_DATA:-0}
FERRY_TAG_TTL=${FERRY_TAG_TTL:-3600}
FERRY_ARGS=${FERRY_ARGS:-}
OUT=${OUT:-/tmp/ferry-bench-$(date +%Y%m%d-%H%M%S)}

ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json'
UP="http://127.0.0.1:$UPORT"
LAYER_MT=application/vnd.oci.image.layer.v1.tar
CONFIG_MT=application/vnd.oci.image.config.v1+json
MANIFEST_MT=application/vnd.oci.image.manifest.v1+json

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

if [[ -z "${FERRY_BIN:-}" ]]; then
  if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    FERRY_BIN=$CARGO_TARGET_DIR/release/ferry
  elif [[ -x /var/cache/ferry/target/release/ferry ]]; then
    FERRY_BIN=/var/cache/ferry/target/release/ferry
  else
    FERRY_BIN=$REPO_ROOT/target/release/ferry
  fi
fi

# ---------------------------------------------------------------- helpers
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin   # nginx lives in /usr/sbin
# log, die, install_missing, port_free, start_bg, wait_until, http_ok
# shellcheck source=SCRIPTDIR/../../tests/e2e/lib.sh
source "$REPO_ROOT/tests/e2e/lib.sh"
now() { date +%s.%N; }
# float arithmetic: calc 'a / b' -> value with 6 decimals
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

PIDS=()
# ours PID: true while PID is still a live child of this script (a PID we waited for may be
# reused by an unrelated process; never signal that one)
ours() {
  local ppid stat
  read -r ppid stat < <(ps -o ppid=,stat= -p "$1" 2>/dev/null) || return 1
  [[ $ppid == "$$" && $stat != Z* ]]
}
# stop_servers: end every process started here that still runs (TERM, then KILL after 5 s)
stop_servers() {
  local pid live=()
  for pid in "${PIDS[@]}"; do ours "$pid" && live+=("$pid"); done
  for pid in "${live[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${live[@]}"; do ours "$pid" && alive=1; done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${live[@]}"; do ours "$pid" && kill -KILL "$pid" 2>/dev/null; done
  wait 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_servers
  if [[ "$KEEP_DATA" != 1 && -n "${DATA:-}" && -d "${DATA:-}" ]]; then rm -rf "$DATA"; fi
  [[ $rc != 0 ]] && log "failed (exit $rc); logs are in $OUT/logs"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# results: one "key<TAB>value" line per measurement, rendered at the end
R=""
put() { printf '%s\t%s\n' "$1" "$2" >>"$R"; }
NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }

# ---------------------------------------------------------------- tools
ensure_tools() {
  local had_nginx=0
  command -v nginx >/dev/null 2>&1 && had_nginx=1
  install_missing docker-registry:docker-registry nginx:nginx ab:apache2-utils wrk:wrk curl:curl \
    python3:python3 jq:jq sha256sum:coreutils ss:iproute2 awk:gawk pgrep:procps ps:procps
  # Debian starts a system nginx after installing it (port 80); we run our own, so stop it.
  if ((!had_nginx)) && command -v systemctl >/dev/null 2>&1; then systemctl stop nginx >/dev/null 2>&1 || true; fi
}

# start_server NAME URL CMD...: start a server (output to logs/NAME.log, its pid
# from `bg_pid NAME`), then wait (30 s at most) until URL answers 200
start_server() {
  local name=$1 url=$2; shift 2
  start_bg "$name" "$OUT/logs/$name.log" "$@"
  PIDS+=("$(bg_pid "$name")")
  wait_until 30 "$name" http_ok "$url" \
    || { tail -n 20 "$OUT/logs/$name.log" >&2; die "$name not ready at $url (log: $OUT/logs/$name.log)"; }
  log "$name ready at $url"
}

# ---------------------------------------------------------------- seeding (OCI push API)
# mkblob FILE: BLOB_MIB of random bytes; prints the hex sha256
mkblob() {
  head -c $((BLOB_MIB * 1024 * 1024)) /dev/urandom >"$1"
  sha256_hex "$1"
}

# push_blob REPO FILE HEX: the blob pushed to the upstream (HEX is FILE's; checked)
push_blob() {
  [[ $(oci_push_blob "$UP" "$1" "$2") == "sha256:$3" ]] || die "blob push to $1 failed"
}

# push_image REPO TAG LAYER_HEX...: config blob + OCI manifest listing the layers (already pushed)
push_image() {
  local repo=$1 tag=$2; shift 2
  local cfg="$DATA/seed/${repo//\//_}-$tag.config.json" man="$DATA/seed/${repo//\//_}-$tag.manifest.json"
  local ids="" layers="" h
  for h in "$@"; do
    ids+="${ids:+,}\"sha256:$h\""
    layers+="${layers:+,}{\"mediaType\":\"$LAYER_MT\",\"digest\":\"sha256:$h\",\"size\":$((BLOB_MIB * 1024 * 1024))}"
  done
  printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$ids" >"$cfg"
  local chex csize
  chex=$(sha256sum "$cfg" | cut -c1-64); csize=$(stat -c %s "$cfg")
  push_blob "$repo" "$cfg" "$chex"
  printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[%s]}' \
    "$MANIFEST_MT" "$CONFIG_MT" "$chex" "$csize" "$layers" >"$man"
  curl -sS -f --max-time 30 -X PUT -H "Content-Type: $MANIFEST_MT" --data-binary @"$man" \
    -o /dev/null "$UP/v2/$repo/manifests/$tag" || die "manifest PUT $repo:$tag failed"
  echo "$man"
}

# upstream access-log lines matching an extended regex (0 when none)
up_count() { grep -cE -- "$1" "$OUT/logs/upstream.log" || true; }
up_total() { up_count '"(GET|HEAD|POST|PUT|PATCH|DELETE) /'; }

# ---------------------------------------------------------------- measurements
# ab_head NAME URL: warm tag HEAD req/s with ab -k -i
ab_head() {
  local name=$1 url=$2 f="$OUT/logs/ab-head-$1.txt"
  ab -k -i -t "$HEAD_SECS" -n "$HEAD_N" -c "$HEAD_C" -H "$ACCEPT" "$url" >"$f" 2>&1 ||
    { tail -n 5 "$f" >&2; note "$name: ab HEAD run failed (see $f)"; put "head_rps.$name" "error"; return 0; }
  local rps done_n failed non2xx ka
  rps=$(awk '/^Requests per second:/ { print $4 }' "$f")
  done_n=$(awk '/^Complete requests:/ { print $3 }' "$f")
  failed=$(awk '/^Failed requests:/ { print $3 }' "$f")
  non2xx=$(awk '/^Non-2xx responses:/ { print $3 }' "$f"); non2xx=${non2xx:-0}
  ka=$(awk '/^Keep-Alive requests:/ { print $3 }' "$f"); ka=${ka:-0}
  done_n=${done_n:-0}; failed=${failed:-0}
  [[ -n $rps ]] || { note "$name: ab printed no rate (see $f)"; put "head_rps.$name" "error"; return 0; }
  put "head_rps.$name" "$rps"
  log "$name HEAD: $rps req/s ($done_n done, $failed failed, $non2xx non-2xx, $ka keep-alive)"
  [[ "$failed" == 0 && "$non2xx" == 0 ]] || note "$name HEAD run: $failed failed, $non2xx non-2xx of $done_n (see $f)"
  ((ka * 10 >= done_n * 9)) || note "$name HEAD run: only $ka of $done_n requests reused a keep-alive connection (ab needs a 'Keep-Alive' response header to an HTTP/1.0 request)"
}

# up_per_heads NAME URL: upstream access-log lines caused by UP_HEADS client HEADs
up_per_heads() {
  local name=$1 url=$2 before after f="$OUT/logs/ab-uphead-$1.txt"
  sleep 0.5; before=$(up_total)
  ab -k -i -n "$UP_HEADS" -c "$HEAD_C" -H "$ACCEPT" "$url" >"$f" 2>&1 || note "$name: ab upstream-count run failed (see $f)"
  sleep 1; after=$(up_total)
  put "up_per_1k.$name" "$(calc "($after - $before) * 1000 / $UP_HEADS")"
  log "$name: $((after - before)) upstream requests for $UP_HEADS HEADs"
}

WRK_LUA=""
# wrk_get NAME URL: warm blob GET throughput in MB/s (10^6 bytes/s, bodies included)
wrk_get() {
  local name=$1 url=$2 f="$OUT/logs/wrk-get-$1.txt"
  wrk -t "$GET_THREADS" -c "$GET_CONNS" -d "${GET_SECS}s" --timeout 60s -s "$WRK_LUA" "$url" >"$f" 2>&1 ||
    { tail -n 5 "$f" >&2; note "$name: wrk GET run failed (see $f)"; put "get_mbps.$name" "error"; return 0; }
  local line; line=$(grep '^WRKJSON ' "$f" | cut -d' ' -f2-)
  [[ -n $line ]] || { note "$name: wrk printed no summary (see $f)"; put "get_mbps.$name" "error"; return 0; }
  local mbps reqs errs
  mbps=$(jq -r '(.bytes / .duration_us * 100 | floor) / 100' <<<"$line")
  reqs=$(jq -r '.requests' <<<"$line")
  errs=$(jq -r '.errors_connect + .errors_read + .errors_write + .errors_status + .errors_timeout' <<<"$line")
  put "get_mbps.$name" "$mbps"
  log "$name GET: $mbps MB/s ($reqs complete responses, $errs errors)"
  [[ $errs == 0 ]] || note "$name GET run: $errs errors ($line)"
}

# pyget NAME URL: the same with blobget.py (1 MiB reads: a cheaper client, a higher ceiling)
pyget() {
  local name=$1 url=$2 f="$OUT/logs/blobget-$1.txt" line
  python3 "$SCRIPT_DIR/blobget.py" "$url" "$GET_CONNS" "$GET_SECS" >"$f" 2>&1 ||
    { tail -n 5 "$f" >&2; note "$name: blobget.py run failed (see $f)"; put "getpy_mbps.$name" "error"; return 0; }
  line=$(tail -n 1 "$f")
  put "getpy_mbps.$name" "$(jq -r '.mbps' <<<"$line")"
  log "$name GET (blobget.py): $line"
  [[ $(jq -r '.bad_status + .errors' <<<"$line") == 0 ]] || note "$name blobget.py run: $line"
}

# verify_get NAME URL HEX: one full GET, body must hash to HEX (setup step: fatal)
verify_get() {
  local got
  got=$(curl -sS -f --max-time 120 "$2" | sha256sum | cut -c1-64) || die "$1: GET $2 failed"
  [[ $got == "$3" ]] || die "$1: GET $2 returned wrong bytes (sha256 $got, want $3)"
  log "$1: $2 verified"
}

# sha256_hex FILE...: one hex digest per line (hashlib uses the CPU's SHA extensions;
# coreutils sha256sum here runs at ~200 MB/s)
sha256_hex() {
  python3 -c 'import hashlib, sys
for p in sys.argv[1:]:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    print(h.hexdigest())' "$@"
}

# herd NAME BASE HEX: HERD clients at once on one cold blob; appends to HERD_GETS/HERD_WALL/HERD_OK.
# Bodies go to files and are hashed after the clock stops, so hashing does not compete
# with the servers for CPU.
declare -A HERD_GETS=() HERD_WALL=() HERD_OK=()
herd() {
  local name=$1 base=$2 hex=$3 d="$DATA/herd-$1" i pids=() t0 t1 before after hbefore hafter ok wall
  local url="$base/v2/bench/herd/blobs/sha256:$hex"
  mkdir -p "$d"
  sleep 0.5
  before=$(up_count "\"GET /v2/bench/herd/blobs/sha256:$hex ")
  hbefore=$(up_count "\"HEAD /v2/bench/herd/blobs/sha256:$hex ")
  t0=$(now)
  for i in $(seq "$HERD"); do
    curl -sS --max-time 300 -o "$d/$i.body" -w '%{http_code}\n' "$url" >"$d/$i.code" 2>"$d/$i.err" &
    pids+=("$!"); PIDS+=("$!")
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  t1=$(now)
  sleep 1
  after=$(up_count "\"GET /v2/bench/herd/blobs/sha256:$hex ")
  hafter=$(up_count "\"HEAD /v2/bench/herd/blobs/sha256:$hex ")
  local sums=() files=()
  for i in $(seq "$HERD"); do [[ -f "$d/$i.body" ]] || : >"$d/$i.body"; files+=("$d/$i.body"); done
  mapfile -t sums < <(sha256_hex "${files[@]}")
  ok=0
  for i in $(seq "$HERD"); do
    if [[ $(cat "$d/$i.code") == 200 && ${sums[$((i - 1))]:-} == "$hex" ]]; then
      ok=$((ok + 1))
    else
      log "$name herd client $i: status $(cat "$d/$i.code" 2>/dev/null) $(head -c 200 "$d/$i.err" 2>/dev/null)"
    fi
  done
  rm -f "$d"/*.body
  wall=$(calc "$t1 - $t0")
  HERD_GETS[$name]+=" $((after - before))"; HERD_WALL[$name]+=" $wall"; HERD_OK[$name]=$((${HERD_OK[$name]:-0} + ok))
  log "$name herd: $((after - before)) upstream GETs (+$((hafter - hbefore)) HEADs), $wall s, $ok/$HERD verified"
  ((hafter - hbefore == 0)) || HERD_HEADS_NOTE[$name]+=" $((hafter - hbefore))"
  ((ok == HERD)) || note "$name herd: $((HERD - ok)) of $HERD bodies missing or wrong"
}
declare -A HERD_HEADS_NOTE=()

# get_time URL: seconds for one full GET to /dev/null; dies on error or short body
get_time() {
  local r
  r=$(curl -sS -f --max-time 300 -o /dev/null -w '%{time_total} %{size_download}' "$1") || die "GET $1 failed"
  [[ ${r#* } == $((BLOB_MIB * 1024 * 1024)) ]] || die "GET $1: got ${r#* } bytes"
  echo "${r% *}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

vmhwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "n/a"; }

# rss_note PHASE: each proxy's peak RSS so far, so the table's peak can be traced to a phase
rss_note() {
  local t line="peak RSS after $1:"
  for t in "${PROXIES[@]}"; do line+=" $t $(vmhwm_mib "${PIDOF[$t]}") MiB"; done
  note "$line"
}

# ================================================================== main
mkdir -p "$OUT/logs"
[[ -d "$OUT" ]] || die "cannot create $OUT"
DATA="$OUT/data"
rm -rf "$DATA"; mkdir -p "$DATA"/{seed,upstream,peer,ferry,nginx/www,nginx/tmp}
WORK=$DATA   # start_bg keeps its pid files in $WORK/pids
R="$OUT/results.tsv"; : >"$R"
T_START=$(now)
((PORT_BASE >= 16000 && PORT_BASE + 4 <= 16999)) || die "PORT_BASE=$PORT_BASE: ports must stay in 16000-16999"

ensure_tools
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
awk "BEGIN { exit !($LOAD_START > 1.0) }" &&
  note "load average was $LOAD_START at start: other processes (a cargo build?) are competing for the CPUs; numbers are noisier than usual"
for p in $UPORT $PPORT $NPORT $FPORT; do port_free "$p" || die "port $p on 127.0.0.1 is in use (set PORT_BASE)"; done

HAVE_FERRY=0
if [[ -x "$FERRY_BIN" ]]; then HAVE_FERRY=1; log "Ferry: $FERRY_BIN"
else log "no Ferry binary at $FERRY_BIN (set FERRY_BIN to measure one): measuring only nginx and the peer"; fi

cat >"$DATA/wrk.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"bytes\":%d,\"duration_us\":%d,\"errors_connect\":%d,\"errors_read\":%d,\"errors_write\":%d,\"errors_status\":%d,\"errors_timeout\":%d}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
LUA
WRK_LUA="$DATA/wrk.lua"

# ---- upstream
registry_config "$DATA/upstream.yml" "$DATA/upstream" "127.0.0.1:$UPORT" false
start_server upstream "$UP/v2/" docker-registry serve "$DATA/upstream.yml"

# ---- seed: bench/app:1.0 (warm tests), bench/herd:1.0 (cold herd), bench/cold:1.0 (cold single pulls)
log "seeding upstream with $((REPS + HERD_REPS + 1)) random ${BLOB_MIB} MiB blobs"
APP_HEX=$(mkblob "$DATA/seed/app.layer"); push_blob bench/app "$DATA/seed/app.layer" "$APP_HEX"
APP_MAN=$(push_image bench/app 1.0 "$APP_HEX")
HERD_HEX=()
for i in $(seq "$HERD_REPS"); do
  h=$(mkblob "$DATA/seed/herd$i.layer"); push_blob bench/herd "$DATA/seed/herd$i.layer" "$h"; HERD_HEX+=("$h")
done
push_image bench/herd 1.0 "${HERD_HEX[@]}" >/dev/null
COLD_HEX=()
for i in $(seq "$REPS"); do
  h=$(mkblob "$DATA/seed/cold$i.layer"); push_blob bench/cold "$DATA/seed/cold$i.layer" "$h"; COLD_HEX+=("$h")
done
push_image bench/cold 1.0 "${COLD_HEX[@]}" >/dev/null
# the upstream must log one line per request: the traffic counts depend on it
b=$(up_total); curl -sS -f --max-time 5 -o /dev/null "$UP/v2/"; sleep 0.3
(($(up_total) > b)) || die "upstream does not write an access log line per request (see $OUT/logs/upstream.log)"
verify_get upstream "$UP/v2/bench/app/blobs/sha256:$APP_HEX" "$APP_HEX"
MAN_HEX=$(sha256sum "$APP_MAN" | cut -c1-64)
got=$(curl -sS -f --max-time 10 -I -H "$ACCEPT" "$UP/v2/bench/app/manifests/1.0" | tr -d '\r' |
      awk 'tolower($1) == "docker-content-digest:" { print $2 }')
[[ $got == "sha256:$MAN_HEX" ]] || die "upstream manifest digest $got, pushed sha256:$MAN_HEX"

# ---- peer (distribution in proxy mode)
# access log off, like Ferry's default (it has --access-log); PEER_ACCESS_LOG=1 turns it on
PEER_AL=true; [[ "${PEER_ACCESS_LOG:-0}" == 1 ]] && PEER_AL=false
registry_config "$DATA/peer.yml" "$DATA/peer" "127.0.0.1:$PPORT" "$PEER_AL" "$UP"
start_server peer "http://127.0.0.1:$PPORT/v2/" docker-registry serve "$DATA/peer.yml"

# ---- nginx: same blob and manifest bytes as static files, same URL shapes
mkdir -p "$DATA/nginx/www/v2/bench/app/manifests" "$DATA/nginx/www/v2/bench/app/blobs"
cp "$APP_MAN" "$DATA/nginx/www/v2/bench/app/manifests/1.0"
ln "$DATA/seed/app.layer" "$DATA/nginx/www/v2/bench/app/blobs/sha256:$APP_HEX" 2>/dev/null ||
  cp "$DATA/seed/app.layer" "$DATA/nginx/www/v2/bench/app/blobs/sha256:$APP_HEX"
echo '{}' >"$DATA/nginx/www/v2/index.json"
{
  [[ $EUID == 0 ]] && echo 'user root;'
  cat <<NGX
worker_processes 1;
daemon off;
pid $DATA/nginx/nginx.pid;
error_log $OUT/logs/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path $DATA/nginx/tmp/body;
  proxy_temp_path $DATA/nginx/tmp/proxy;
  fastcgi_temp_path $DATA/nginx/tmp/fastcgi;
  uwsgi_temp_path $DATA/nginx/tmp/uwsgi;
  scgi_temp_path $DATA/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$NPORT;
    root $DATA/nginx/www;
    location = /v2/ { try_files /v2/index.json =404; }
  }
}
NGX
} >"$DATA/nginx/nginx.conf"
start_server nginx "http://127.0.0.1:$NPORT/v2/" \
  nginx -e "$OUT/logs/nginx-error.log" -p "$DATA/nginx" -c "$DATA/nginx/nginx.conf"

# ---- Ferry
if ((HAVE_FERRY)); then
  # shellcheck disable=SC2086
  start_server ferry "http://127.0.0.1:$FPORT/v2/" "$FERRY_BIN" serve --listen "127.0.0.1:$FPORT" \
    --data-dir "$DATA/ferry" --upstream "$UP" --tag-ttl "$FERRY_TAG_TTL" $FERRY_ARGS
  "$FERRY_BIN" --version >"$OUT/logs/ferry-version.txt" 2>&1 || true
fi

PROXIES=(peer); ((HAVE_FERRY)) && PROXIES+=(ferry)
declare -A BASE=([nginx]="http://127.0.0.1:$NPORT" [peer]="http://127.0.0.1:$PPORT" [ferry]="http://127.0.0.1:$FPORT")
declare -A PIDOF=([peer]="$(bg_pid peer)" [nginx]="$(bg_pid nginx)")
((HAVE_FERRY)) && PIDOF[ferry]=$(bg_pid ferry)

# ---- warm-up and correctness (setup: fatal on wrong bytes)
for t in "${PROXIES[@]}"; do
  b=${BASE[$t]}
  d=$(curl -sS -f --max-time 30 -I -H "$ACCEPT" "$b/v2/bench/app/manifests/1.0" | tr -d '\r' |
      awk 'tolower($1) == "docker-content-digest:" { print $2 }') || die "$t: manifest HEAD failed"
  [[ $d == "sha256:$MAN_HEX" ]] || die "$t: manifest HEAD gave digest '$d', want sha256:$MAN_HEX"
  got=$(curl -sS -f --max-time 30 -H "$ACCEPT" "$b/v2/bench/app/manifests/1.0" | sha256sum | cut -c1-64) ||
    die "$t: manifest GET failed"
  [[ $got == "$MAN_HEX" ]] || die "$t: manifest GET returned different bytes than upstream"
  verify_get "$t" "$b/v2/bench/app/blobs/sha256:$APP_HEX" "$APP_HEX"
done
verify_get nginx "${BASE[nginx]}/v2/bench/app/blobs/sha256:$APP_HEX" "$APP_HEX"
curl -sS -f --max-time 10 -I "${BASE[nginx]}/v2/bench/app/manifests/1.0" -o /dev/null || die "nginx: manifest HEAD failed"

# ---- 1. warm tag HEAD req/s, and upstream requests per 1,000 HEADs
log "warm tag HEAD: ab -k -i -n $HEAD_N -c $HEAD_C (capped at ${HEAD_SECS}s)"
for t in nginx "${PROXIES[@]}"; do ab_head "$t" "${BASE[$t]}/v2/bench/app/manifests/1.0"; done
for t in "${PROXIES[@]}"; do up_per_heads "$t" "${BASE[$t]}/v2/bench/app/manifests/1.0"; done
rss_note "warm HEADs"

# ---- 2. warm blob GET throughput
log "warm blob GET: wrk -t $GET_THREADS -c $GET_CONNS -d ${GET_SECS}s"
for t in nginx "${PROXIES[@]}"; do wrk_get "$t" "${BASE[$t]}/v2/bench/app/blobs/sha256:$APP_HEX"; done
log "warm blob GET: blobget.py, $GET_CONNS connections, ${GET_SECS}s, 1 MiB reads"
for t in nginx "${PROXIES[@]}"; do pyget "$t" "${BASE[$t]}/v2/bench/app/blobs/sha256:$APP_HEX"; done
rss_note "warm GETs"

# the order of proxies alternates between repetitions, so neither always goes first
order() { # order REP: PROXIES, reversed on odd REP
  local i
  if (($1 % 2 == 0)); then echo "${PROXIES[@]}"
  else for ((i = ${#PROXIES[@]} - 1; i >= 0; i--)); do printf '%s ' "${PROXIES[$i]}"; done; echo; fi
}

# ---- 3. cold herd (each herd blob is fetched by no proxy before its herd)
log "cold herd: $HERD clients at once on one cold ${BLOB_MIB} MiB blob, $HERD_REPS times per proxy"
for i in $(seq 0 $((HERD_REPS - 1))); do
  for t in $(order "$i"); do herd "$t" "${BASE[$t]}" "${HERD_HEX[$i]}"; done
done
for t in "${PROXIES[@]}"; do
  put "herd_up_gets.$t" "$(median <<<"${HERD_GETS[$t]}")"
  put "herd_wall.$t" "$(median <<<"${HERD_WALL[$t]}")"
  put "herd_ok.$t" "${HERD_OK[$t]}"
  note "$t herd, per repetition: upstream GETs${HERD_GETS[$t]}; wall s${HERD_WALL[$t]}"
  [[ -z "${HERD_HEADS_NOTE[$t]:-}" ]] || note "$t herd: also upstream blob HEADs per repetition:${HERD_HEADS_NOTE[$t]}"
done
rss_note "cold herds"

# ---- 4. cold single pull: proxy time / direct-from-upstream time, each blob cold for each proxy
log "cold single pull: $REPS fresh blobs, direct from upstream then through each proxy"
declare -A TIMES=() RATIOS=()
DIRECT=""
for i in $(seq 0 $((REPS - 1))); do
  h=${COLD_HEX[$i]}
  td=$(get_time "$UP/v2/bench/cold/blobs/sha256:$h"); DIRECT+=" $td"
  line="rep $((i + 1)): direct ${td}s"
  for t in $(order "$i"); do
    tp=$(get_time "${BASE[$t]}/v2/bench/cold/blobs/sha256:$h")
    TIMES[$t]+=" $tp"; RATIOS[$t]+=" $(calc "$tp / $td")"
    line+=", $t ${tp}s"
  done
  log "$line"
done
put "single_direct" "$(median <<<"$DIRECT")"
for t in "${PROXIES[@]}"; do
  put "single_time.$t" "$(median <<<"${TIMES[$t]}")"
  put "single_ratio.$t" "$(median <<<"${RATIOS[$t]}")"
done

# ---- 5. peak RSS
for t in "${PROXIES[@]}"; do
  kill -0 "${PIDOF[$t]}" 2>/dev/null || note "$t exited before the end of the run (see $OUT/logs/$t.log)"
  put "rss.$t" "$(vmhwm_mib "${PIDOF[$t]}")"
done
nw=$(pgrep -P "${PIDOF[nginx]}" | head -n 1 || true)
[[ -n $nw ]] && put "rss.nginx" "$(vmhwm_mib "$nw")"

# ---------------------------------------------------------------- report
T_END=$(now)
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
NOTES_FILE="$OUT/notes.txt"; : >"$NOTES_FILE"
for n in "${NOTES[@]+"${NOTES[@]}"}"; do echo "$n" >>"$NOTES_FILE"; done
FERRY_DESC="not run (no binary at $FERRY_BIN)"
((HAVE_FERRY)) && FERRY_DESC="$FERRY_BIN ($(head -n1 "$OUT/logs/ferry-version.txt" 2>/dev/null || echo '?'))"
export R NOTES_FILE FERRY_DESC BLOB_MIB HEAD_N HEAD_C HEAD_SECS UP_HEADS GET_CONNS GET_THREADS GET_SECS HERD HERD_REPS REPS
export ELAPSED LOAD_START LOAD_END; ELAPSED=$(calc "$T_END - $T_START")
python3 - "$OUT/results.md" <<'PY'
import os, sys, datetime
env = os.environ
vals = {}
for line in open(env["R"]):
    k, _, v = line.rstrip("\n").partition("\t")
    vals[k] = v
cols = ["nginx", "peer", "ferry"]
rows = [
    ("head_rps",     "Warm tag HEAD, req/s (higher is better)"),
    ("up_per_1k",    "Upstream requests per 1,000 tag HEADs (lower)"),
    ("get_mbps",     f"Warm {env['BLOB_MIB']} MiB blob GET, wrk {env['GET_CONNS']} conns, MB/s (higher)"),
    ("getpy_mbps",   f"Warm {env['BLOB_MIB']} MiB blob GET, 1 MiB-read client {env['GET_CONNS']} conns, MB/s (higher)"),
    ("herd_up_gets", f"Cold herd: upstream blob GETs for {env['HERD']} clients, median of {env['HERD_REPS']} (lower)"),
    ("herd_wall",    f"Cold herd: wall time until all {env['HERD']} finish, s, median of {env['HERD_REPS']} (lower)"),
    ("herd_ok",      f"Cold herd: bodies with the right sha256, of {int(env['HERD']) * int(env['HERD_REPS'])}"),
    ("single_time",  f"Cold single pull, {env['BLOB_MIB']} MiB: median time, s (lower)"),
    ("single_ratio", f"Cold single pull: proxy / direct-from-upstream, median of {env['REPS']} (lower)"),
    ("rss",          "Peak RSS (VmHWM), MiB (lower)"),
]
def num(s):
    try: return float(s)
    except (TypeError, ValueError): return None
def fmt(s):
    x = num(s)
    if x is None: return s if s else "n/a"
    if x == int(x): return f"{int(x)}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
def ratio(a, b):
    a, b = num(a), num(b)
    if a is None or b is None: return "—"
    if b == 0: return "=" if a == 0 else "∞"
    r = a / b
    return "0×" if r == 0 else f"{r:.2f}×" if r >= 0.1 else f"{r:.4f}×"
head = ["Metric", "nginx (static)", "peer (distribution proxy)", "Ferry", "Ferry / peer", "Ferry / nginx"]
table = []
for key, label in rows:
    v = {c: vals.get(f"{key}.{c}") for c in cols}
    if key == "rss" and v["nginx"]:
        v["nginx"] = v["nginx"] + " (worker)"
    table.append([label] + [fmt(v[c]) for c in cols] + [ratio(v["ferry"], v["peer"]), ratio(v["ferry"], vals.get(f"{key}.nginx"))])
notes = [l.strip() for l in open(env["NOTES_FILE"]) if l.strip()]
# terminal table
w = [max(len(r[i]) for r in [head] + table) for i in range(len(head))]
out = ["  ".join(c.ljust(w[i]) for i, c in enumerate(head)), "  ".join("-" * x for x in w)]
out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in table]
print("\n".join(out))
print(f"\ndirect-from-upstream single pull, median: {fmt(vals.get('single_direct'))} s")
for n in notes: print("note:", n)
# markdown
md = [f"# Ferry load comparison ({datetime.datetime.now().isoformat(timespec='seconds')})", "",
      f"Ferry: {env['FERRY_DESC']}  ",
      f"Machine: {os.cpu_count()} CPUs shared by the load generators and all servers; everything on 127.0.0.1.  ",
      f"HEAD: `ab -k -i -n {env['HEAD_N']} -c {env['HEAD_C']}` capped at {env['HEAD_SECS']} s; upstream count over {env['UP_HEADS']} HEADs. "
      f"GET: `wrk -t {env['GET_THREADS']} -c {env['GET_CONNS']} -d {env['GET_SECS']}s` (8 KiB reads) and `blobget.py` (1 MiB reads), MB = 10^6 bytes. "
      f"Run took {float(env['ELAPSED']):.0f} s; 1-minute load average {env['LOAD_START']} at start, {env['LOAD_END']} at end.", "",
      "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
md += ["| " + " | ".join(r) + " |" for r in table]
md += ["", f"Direct-from-upstream single pull, median: {fmt(vals.get('single_direct'))} s."]
if notes:
    md += ["", "Notes:", ""] + [f"- {n}" for n in notes]
open(sys.argv[1], "w").write("\n".join(md) + "\n")
PY
log "results: $OUT/results.md (raw: $R, logs: $OUT/logs)"

# ---- 6. cold pulls over a shaped link (benches/load/link.sh): root only; LINK=0 skips it
if [[ "${LINK:-1}" == 0 ]]; then
  log "LINK=0: cold pulls over a shaped link skipped"
elif [[ $EUID != 0 ]]; then
  log "not root: cold pulls over a shaped link skipped (link.sh needs a network namespace)"
elif ((!HAVE_FERRY)); then
  log "no Ferry binary: cold pulls over a shaped link skipped"
else
  stop_servers   # this run's servers are done; link.sh starts its own
  log "cold pulls over a shaped link: benches/load/link.sh (LINK=0 skips it), output in $OUT/link"
  rm -f "$OUT/link/results.md"
  link_rc=0
  # HERD is this script's (20, exported above); the link herd is issue 24's 10.
  OUT="$OUT/link" FERRY_BIN="$FERRY_BIN" PORT_BASE=$((PORT_BASE + 100)) KEEP_DATA="$KEEP_DATA" \
    HERD="${LINK_HERD:-10}" bash "$SCRIPT_DIR/link.sh" || link_rc=$?
  {
    printf '\n## Cold pulls over a shaped link\n\n'
    if [[ -s "$OUT/link/results.md" ]]; then
      # its title line and the blank line after it give way to this heading
      awk 'NR == 1 && /^# / { next } NR == 2 && /^$/ { next } { sub(/^## /, "### "); print }' "$OUT/link/results.md"
    else
      echo "link.sh stopped before its results (exit $link_rc); see $OUT/link/logs."
    fi
  } >>"$OUT/results.md"
  ((link_rc == 0)) || { log "link.sh exited $link_rc"; exit "$link_rc"; }
fi
