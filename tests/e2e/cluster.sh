#!/usr/bin/env bash
# End-to-end: Ferry replicas on one real S3 bucket, a 3-node Garage 2.5.0
# cluster on loopback (tests/e2e/garage.sh), with distribution 2.8.2 as the
# upstream (its access log counts upstream traffic) and real clients.
#
#   tests/e2e/cluster.sh                  # every case
#   tests/e2e/cluster.sh spread kill      # some cases
#   KEEP=1 tests/e2e/cluster.sh           # keep the work dir (logs, data)
#
# Cases:
#   spread    skopeo copies test:1.0 through replica A, then through replica B:
#             B costs 0 upstream blob and manifest GETs; every bucket object's
#             sha256 matches its key
#   kill      a 64 MiB blob is fetched through a throttled upstream; its
#             replica is killed (-9) mid-download and upload: no object under
#             the key; restarted, the replica fetches it, verified, and uploads it
#   node      one Garage node killed (-9): a new image still pulls through B,
#             its objects land and read back through another node
#
# Needs root on Debian 12 and the garage binary (GARAGE_BIN, default
# /var/cache/garage/bin/garage; .ci/run builds it once per machine). Every
# server binds 127.0.0.1; nothing leaves the machine. Takes about a minute.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=tests/e2e/garage.sh
source "$REPO/tests/e2e/garage.sh"
LOG_TAG=cluster

FERRY_BIN=${FERRY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/ferry}
[ -x "$FERRY_BIN" ] || die "no ferry binary at $FERRY_BIN (cargo build, or set FERRY_BIN)"
[ -x "$GARAGE_BIN" ] || die "no garage binary at $GARAGE_BIN (see .ci/run)"
install_missing docker-registry:docker-registry skopeo:skopeo curl:curl jq:jq python3:python3

ALL_CASES=(spread kill node)
CASES=("$@")
((${#CASES[@]})) || CASES=("${ALL_CASES[@]}")
wants() { [[ " ${CASES[*]} " == *" $1 "* ]]; }

PORT_RANGE=16000-16999
WORK=$(mktemp -d /tmp/ferry-cluster.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
cleanup() {
  local rc=$?
  stop_all_bg
  garage_stop "$WORK/garage" >/dev/null 2>&1 || true
  if [ "$rc" != 0 ] || [ -n "${KEEP:-}" ]; then
    log "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "  FAIL: $*" >&2; exit 1; }
ok() { echo "  ok: $*"; }

# ---------------------------------------------------------------- the cluster
log "starting a 3-node Garage cluster"
garage_start "$WORK/garage" 2>"$LOGS/garage-start.log" || { cat "$LOGS/garage-start.log" >&2; die "garage did not start"; }
printf '%s' "$GARAGE_KEY_ID" >"$WORK/s3-key"
printf '%s' "$GARAGE_SECRET" >"$WORK/s3-secret"

# ---------------------------------------------------------------- upstream
pick_port UPORT
UPSTREAM=127.0.0.1:$UPORT
UPLOG=$LOGS/upstream.log
cat >"$WORK/upstream.yml" <<YML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $WORK/upstream-data}
http: {addr: $UPSTREAM}
YML
start_bg upstream "$UPLOG" docker-registry serve "$WORK/upstream.yml"
wait_until 20 upstream http_ok "http://$UPSTREAM/v2/" || die "upstream did not start"
python3 "$REPO/tests/e2e/seed.py" "http://$UPSTREAM" >"$WORK/expected.json" || die "seeding failed"

# Upstream requests after line FROM of its log, as "METHOD PATH".
up_requests() {
  tail -n +"$(($1 + 1))" "$UPLOG" | sed -nE 's/.*"([A-Z]+) ([^ ?]+)[^ ]* HTTP\/[0-9.]+" [0-9]{3} .*/\1 \2/p'
}
up_count() { up_requests "$1" | grep -cE "$2" || true; }   # up_count FROM REGEX
settle() { sleep 0.5; }   # distribution writes its access line after the response

# push_blob FILE REPO: a monolithic OCI blob upload; prints the digest.
push_blob() {
  local file=$1 repo=$2 digest loc
  digest=sha256:$(sha256sum "$file" | cut -d' ' -f1)
  loc=$(curl -sS -o /dev/null -w '%{redirect_url}' -X POST "http://$UPSTREAM/v2/$repo/blobs/uploads/")
  [ -n "$loc" ] || loc=$(curl -sSI -X POST "http://$UPSTREAM/v2/$repo/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
  case $loc in http*) ;; *) loc=http://$UPSTREAM$loc ;; esac
  local sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -sS --fail -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary @"$file" "$loc${sep}digest=$digest" || return 1
  echo "$digest"
}

# ---------------------------------------------------------------- replicas
# start_replica NAME GARAGE_NODE [UPSTREAM_ADDR]: a Ferry on the shared bucket,
# talking to Garage through that node; sets PORT_<NAME>.
start_replica() {
  local name=$1 node=$2 upstream=${3:-$UPSTREAM} port var=PORT_$1
  port=${!var:-}
  [ -n "$port" ] || pick_port port
  printf -v "$var" %s "$port"
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/ferry.toml" <<TOML
listen = "127.0.0.1:$port"
data_dir = "$WORK/$name/data"
access_log = true
[[upstream]]
name = "local"
url = "http://$upstream"
aliases = ["$UPSTREAM"]
[bucket]
endpoint = "$(garage_endpoint "$node")"
bucket = "$GARAGE_BUCKET"
region = "$GARAGE_REGION"
access_key_file = "$WORK/s3-key"
secret_key_file = "$WORK/s3-secret"
backoff = "5s"
TOML
  start_bg "$name" "$LOGS/$name.log" env RUST_LOG=info NO_COLOR=1 "$FERRY_BIN" serve --config "$WORK/$name/ferry.toml"
  wait_until 30 "$name" http_ok "http://127.0.0.1:$port/readyz" || { tail -20 "$LOGS/$name.log" >&2; die "replica $name did not start"; }
}
port_of() { local var=PORT_$1; echo "${!var}"; }
metric() {   # metric REPLICA NAME_WITH_LABELS: its value (0 when absent)
  curl -s "http://127.0.0.1:$(port_of "$1")/metrics" | awk -v m="$2" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}

# registries_conf REPLICA: a containers registries.conf mirroring the upstream through it.
registries_conf() {
  cat >"$WORK/$1.registries.conf" <<CONF
[[registry]]
location = "$UPSTREAM"
insecure = true
[[registry.mirror]]
location = "127.0.0.1:$(port_of "$1")"
insecure = true
CONF
  echo "$WORK/$1.registries.conf"
}

# wait_objects PREFIX N: until the bucket holds at least N objects under PREFIX.
wait_objects() {
  local prefix=$1 n=$2
  for _ in $(seq 1 300); do
    [ "$(garage_list "$prefix" | grep -c . || true)" -ge "$n" ] && return 0
    sleep 0.1
  done
  fail "the bucket holds $(garage_list "$prefix" | grep -c . || true) objects under $prefix, not $n"
}

# ---------------------------------------------------------------- cases
case_spread() {
  echo "== spread: an image through A, then through B"
  start_replica A 1
  start_replica B 2
  local blobs; blobs=$(jq -r '.test.blobs | length' "$WORK/expected.json")
  skopeo --registries-conf "$(registries_conf A)" copy -q --src-tls-verify=false \
    "docker://$UPSTREAM/library/test:1.0" "dir:$WORK/through-A" >"$LOGS/skopeo-A.log" 2>&1 \
    || { cat "$LOGS/skopeo-A.log"; fail "skopeo through A"; }
  ok "skopeo copied test:1.0 through A (digests verified by skopeo)"
  wait_objects blobs/ "$blobs"
  wait_objects manifests/ 1
  settle
  local from; from=$(lines "$UPLOG")
  skopeo --registries-conf "$(registries_conf B)" copy -q --src-tls-verify=false \
    "docker://$UPSTREAM/library/test:1.0" "dir:$WORK/through-B" >"$LOGS/skopeo-B.log" 2>&1 \
    || { cat "$LOGS/skopeo-B.log"; fail "skopeo through B"; }
  settle
  local gets mgets
  gets=$(up_count "$from" '^GET /v2/.+/blobs/')
  mgets=$(up_count "$from" '^GET /v2/.+/manifests/')
  [ "$gets" = 0 ] || fail "B cost $gets upstream blob GETs"
  [ "$mgets" = 0 ] || fail "B cost $mgets upstream manifest GETs"
  ok "B: 0 upstream blob GETs, 0 manifest GETs ($(up_count "$from" '^HEAD ') HEADs: the tag)"
  diff -r "$WORK/through-A" "$WORK/through-B" >/dev/null || fail "A and B gave different bytes"
  [ "$(metric B 'ferry_bucket_hits_total{object="blob"}')" -ge "$blobs" ] || fail "B's blobs did not come from the bucket"
  garage_sha256_check blobs/ 1 "$blobs" >"$LOGS/check-spread.log" || { cat "$LOGS/check-spread.log"; fail "bucket objects"; }
  garage_sha256_check manifests/ 2 1 >>"$LOGS/check-spread.log" || { cat "$LOGS/check-spread.log"; fail "bucket manifests"; }
  ok "every object's sha256 matches its key ($(grep -c '^ok' "$LOGS/check-spread.log") objects, read through nodes 1 and 2)"
  stop_bg A
  stop_bg B
}

case_kill() {
  echo "== kill: a replica killed mid-download and mid-upload"
  head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/big.bin"
  local digest hex key tport
  digest=$(push_blob "$WORK/big.bin" library/big) || fail "pushing the big blob"
  hex=${digest#sha256:}
  key=blobs/sha256/$hex
  pick_port tport
  # 16 MiB/s: the 64 MiB blob takes about 4 s to arrive.
  start_bg throttle "$LOGS/throttle.log" python3 "$REPO/tests/e2e/throttle.py" "$tport" "$UPSTREAM" $((16 * 1024 * 1024))
  wait_until 10 throttle port_free_not "$tport" 2>/dev/null || sleep 0.5
  start_replica K 1 "127.0.0.1:$tport"
  local url=http://127.0.0.1:$(port_of K)/v2/library/big/blobs/$digest
  curl -s -o "$WORK/big.partial" "$url" &
  local curl_pid=$!
  for _ in $(seq 1 200); do
    [ "$(stat -c %s "$WORK/big.partial" 2>/dev/null || echo 0)" -ge $((24 * 1024 * 1024)) ] && break
    sleep 0.05
  done
  local got; got=$(stat -c %s "$WORK/big.partial" 2>/dev/null || echo 0)
  [ "$got" -ge $((24 * 1024 * 1024)) ] || fail "the transfer did not get going ($got bytes)"
  kill -9 "$(bg_pid K)"; rm -f "$WORK/pids/K.pid"
  wait "$curl_pid" 2>/dev/null || true
  ok "killed K with $((got / 1024 / 1024)) MiB of 64 sent"
  [ "$(garage_head "$key")" = 404 ] || fail "an object appeared under $key: $(garage_head "$key")"
  ok "no object under the key (the multipart upload was never completed)"
  # Restarted on the same disk: the temp file is swept, the blob fetched again.
  start_replica K 1 "127.0.0.1:$tport"
  [ "$(curl -s "$url" | sha256sum | cut -d' ' -f1)" = "$hex" ] || fail "the blob after restart"
  wait_objects "$key" 1
  [ "$(garage_get "$key" - 3 | sha256sum | cut -d' ' -f1)" = "$hex" ] || fail "the uploaded object's bytes"
  ok "restarted: fetched, verified, uploaded; the object reads back right through node 3"
  stop_bg K
  stop_bg throttle
}
port_free_not() { ! port_free "$1"; }

case_node() {
  echo "== node: one Garage node killed"
  garage_kill 3 2>>"$LOGS/garage-start.log" || fail "killing node 3"
  start_replica B 2
  head -c $((12 * 1024 * 1024)) /dev/urandom >"$WORK/n1.bin"
  head -c 300000 /dev/urandom >"$WORK/n2.bin"
  local d1 d2 from
  d1=$(push_blob "$WORK/n1.bin" library/node) || fail "push"
  d2=$(push_blob "$WORK/n2.bin" library/node) || fail "push"
  for d in "$d1" "$d2"; do
    [ "sha256:$(curl -s "http://127.0.0.1:$(port_of B)/v2/library/node/blobs/$d" | sha256sum | cut -d' ' -f1)" = "$d" ] \
      || fail "pull of $d with node 3 down"
  done
  ok "pulled through B with node 3 down, verified"
  wait_objects "blobs/sha256/${d1#sha256:}" 1
  wait_objects "blobs/sha256/${d2#sha256:}" 1
  for d in "$d1" "$d2"; do
    [ "sha256:$(garage_get "blobs/sha256/${d#sha256:}" - 1 | sha256sum | cut -d' ' -f1)" = "$d" ] \
      || fail "object $d through node 1"
  done
  ok "both uploaded with a node down, and read back right through node 1"
  # A second replica with an empty disk reads them from the bucket.
  start_replica C 1
  settle
  from=$(lines "$UPLOG")
  [ "sha256:$(curl -s "http://127.0.0.1:$(port_of C)/v2/library/node/blobs/$d1" | sha256sum | cut -d' ' -f1)" = "$d1" ] \
    || fail "C's pull"
  settle
  [ "$(up_count "$from" '^GET /v2/.+/blobs/')" = 0 ] || fail "C went upstream"
  ok "a replica with an empty disk got it from the bucket: 0 upstream GETs"
  garage_restart 3 2>>"$LOGS/garage-start.log" || fail "restarting node 3"
  stop_bg B
  stop_bg C
}

start=$(date +%s)
for c in "${CASES[@]}"; do
  [[ " ${ALL_CASES[*]} " == *" $c "* ]] || die "unknown case $c (cases: ${ALL_CASES[*]})"
  "case_$c"
done
echo "== cluster: ${CASES[*]} passed in $(($(date +%s) - start))s"
