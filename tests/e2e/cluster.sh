#!/usr/bin/env bash
# End-to-end: Ferry replicas on one real S3 bucket, a 3-node Garage 2.5.0
# cluster on loopback (tests/e2e/garage.sh), with distribution 2.8.2 as the
# upstream (its access log counts upstream traffic) and real clients.
#
#   tests/e2e/cluster.sh                  # every case
#   tests/e2e/cluster.sh spread kill      # some cases
#   KEEP=1 tests/e2e/cluster.sh           # keep the work dir (logs, data)
#
# Cases (the first three: replicas sharing only the bucket; the rest: three
# replicas of one [cluster], owners by rendezvous hashing, on the bucket):
#   spread    skopeo copies test:1.0 through replica A, then through replica B:
#             B costs 0 upstream blob and manifest GETs; every bucket object's
#             sha256 matches its key
#   kill      a 64 MiB blob is fetched through a throttled upstream; its
#             replica is killed (-9) mid-download and upload: no object under
#             the key; restarted, the replica fetches it, verified, and uploads it
#   node      one Garage node killed (-9): a new image still pulls through B,
#             its objects land and read back through another node
#   herd      30 curls of one cold 64 MiB blob, 10 on each of 3 replicas:
#             1 upstream GET, 30 right sha256s
#   tags      tag_ttl 2 s; every replica HEADs a tag every 100 ms for 6 s:
#             at most 4 upstream HEADs (one per TTL, cluster-wide)
#   ownerkill the owner of a cold blob killed (-9) mid-transfer while 10
#             clients pull it from the two others: 10 right sha256s, at most 2
#             upstream GETs, the blob uploaded by the replica that took over
#   otherkill a non-owner killed mid-transfer: clients of the others right,
#             1 upstream GET
#   empty     a replica restarted on an empty disk pulls test:1.0 with 0
#             upstream blob GETs
#   ctr       containerd (hosts.toml) pulls multi:1.0 through B after skopeo
#             copied it through A: 0 upstream blob GETs, digests checked by ctr
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
install_missing docker-registry:docker-registry skopeo:skopeo curl:curl jq:jq python3:python3 ctr:containerd

ALL_CASES=(spread kill node herd tags ownerkill otherkill empty ctr)
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

# mid_transfer FILE MIN TOTAL: waits (15 s at most) until curl has written MIN bytes to FILE;
# fails unless it has, and unless the transfer is still short of TOTAL (a kill that follows
# lands mid-transfer). Sets MID to the size seen.
MID=0
mid_transfer() {
  local f=$1 min=$2 total=$3
  MID=0
  for _ in $(seq 1 300); do
    MID=$(stat -c %s "$f" 2>/dev/null || echo 0)
    [ "$MID" -ge "$min" ] && break
    sleep 0.05
  done
  [ "$MID" -ge "$min" ] || fail "the transfer to $f did not get going ($MID bytes)"
  [ "$MID" -lt "$total" ] || fail "the transfer to $f was over before the kill"
}

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
push_blob() { oci_push_blob "http://$UPSTREAM" "$2" "$1"; }

# ---------------------------------------------------------------- replicas
# start_replica NAME GARAGE_NODE [UPSTREAM_ADDR]: a Ferry on the shared bucket,
# talking to Garage through that node; sets PORT_<NAME>. With CLUSTER set
# (names of the members), it is a member of that [cluster]. With EMPTY=1 its
# data dir starts empty.
start_replica() {
  local name=$1 node=$2 upstream=${3:-$UPSTREAM} port var=PORT_$1 cluster_toml='' peers='' m
  port=${!var:-}
  [ -n "$port" ] || pick_port port
  printf -v "$var" %s "$port"
  if [ -n "${CLUSTER:-}" ]; then
    for m in $CLUSTER; do peers+="\"127.0.0.1:$(port_of "$m")\", "; done
    cluster_toml="[cluster]
self = \"127.0.0.1:$port\"
peers = [${peers%, }]
secret_file = \"$WORK/peer-secret\"
quarantine = \"5s\"
[freshness]
tag_ttl = \"${TAG_TTL:-30s}\""
  fi
  [ -z "${EMPTY:-}" ] || rm -rf "$WORK/$name/data"
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
$cluster_toml
TOML
  start_bg "$name" "$LOGS/$name.log" env RUST_LOG=info NO_COLOR=1 "$FERRY_BIN" serve --config "$WORK/$name/ferry.toml"
  wait_until 30 "$name" http_ok "http://127.0.0.1:$port/readyz" || { tail -20 "$LOGS/$name.log" >&2; die "replica $name did not start"; }
}
port_of() { local var=PORT_$1; echo "${!var}"; }
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/peer-secret"

# owner_of KEY NAME...: which replica owns KEY (Ferry's rendezvous hashing:
# the highest first 8 bytes of SHA-256(member 0x00 key), ties to the smaller name).
owner_of() {
  local key=$1 best='' best_m='' m addr score owner=''; shift
  for m in "$@"; do
    addr=127.0.0.1:$(port_of "$m")
    score=$(printf '%s\0%s' "$addr" "$key" | sha256sum | cut -c1-16)
    if [[ -z $best || $score > $best || ($score == "$best" && $addr < $best_m) ]]; then
      best=$score best_m=$addr owner=$m
    fi
  done
  echo "$owner"
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
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
  curl -s --max-time 120 -o "$WORK/big.partial" "$url" &
  local curl_pid=$!
  mid_transfer "$WORK/big.partial" $((24 * 1024 * 1024)) $((64 * 1024 * 1024))
  kill -9 "$(bg_pid K)"; rm -f "$WORK/pids/K.pid"
  wait "$curl_pid" 2>/dev/null || true
  ok "killed K with $((MID / 1024 / 1024)) MiB of 64 sent"
  [ "$(garage_head "$key")" = 404 ] || fail "an object appeared under $key: $(garage_head "$key")"
  ok "no object under the key (the multipart upload was never completed)"
  # Restarted on the same disk: the temp file is swept, the blob fetched again.
  start_replica K 1 "127.0.0.1:$tport"
  [ "$(curl -s --max-time 120 "$url" | sha256sum | cut -d' ' -f1)" = "$hex" ] || fail "the blob after restart"
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
    [ "sha256:$(curl -s --max-time 120 "http://127.0.0.1:$(port_of B)/v2/library/node/blobs/$d" | sha256sum | cut -d' ' -f1)" = "$d" ] \
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
  [ "sha256:$(curl -s --max-time 120 "http://127.0.0.1:$(port_of C)/v2/library/node/blobs/$d1" | sha256sum | cut -d' ' -f1)" = "$d1" ] \
    || fail "C's pull"
  settle
  [ "$(up_count "$from" '^GET /v2/.+/blobs/')" = 0 ] || fail "C went upstream"
  ok "a replica with an empty disk got it from the bucket: 0 upstream GETs"
  garage_restart 3 2>>"$LOGS/garage-start.log" || fail "restarting node 3"
  stop_bg B
  stop_bg C
}

# ---------------------------------------------------------------- a cluster
MEMBERS="X Y Z"
cluster_up() {   # cluster_up [UPSTREAM_ADDR]: replicas X, Y, Z of one [cluster] (X, Y on Garage node 1, Z on node 2)
  local m picked
  for m in $MEMBERS; do
    local var=PORT_$m
    if [ -z "${!var:-}" ]; then pick_port picked; printf -v "$var" %s "$picked"; fi
  done
  CLUSTER=$MEMBERS start_replica X 1 "${1:-$UPSTREAM}"
  CLUSTER=$MEMBERS start_replica Y 1 "${1:-$UPSTREAM}"
  CLUSTER=$MEMBERS start_replica Z 2 "${1:-$UPSTREAM}"
}
cluster_down() { local m; for m in $MEMBERS; do stop_bg "$m"; done; }
digest_gets() {   # digest_gets FROM DIGEST: upstream GETs of that blob since line FROM
  up_requests "$1" | grep -cE "^GET /v2/.+/blobs/$2\$" || true
}
# pull_n REPLICA N DIGEST OUTPREFIX: N curls of the blob through REPLICA, in
# the background; their pids are added to PULLS (wait_pulls waits for them:
# a bare `wait` would wait for the servers too).
PULLS=()
pull_n() {
  local i
  for i in $(seq 1 "$2"); do
    curl -s --max-time 120 -o "$4-$1-$i" "http://127.0.0.1:$(port_of "$1")/v2/library/big/blobs/$3" &
    PULLS+=($!)
  done
}
wait_pulls() {
  local p
  for p in "${PULLS[@]}"; do wait "$p" || true; done
  PULLS=()
}
# throttled NAME RATE: a relay to the upstream at RATE bytes/s; sets TPORT
throttled() {
  pick_port TPORT
  start_bg "$1" "$LOGS/$1.log" python3 "$REPO/tests/e2e/throttle.py" "$TPORT" "$UPSTREAM" "$2"
  wait_until 10 "$1" port_free_not "$TPORT" || die "relay $1 did not start"
}
new_big() {   # new_big FILE MiB: a fresh random blob pushed to library/big; prints its digest
  head -c $(($2 * 1024 * 1024)) /dev/urandom >"$1"
  push_blob "$1" library/big
}

case_herd() {
  echo "== herd: 30 clients, 3 replicas, one cold 64 MiB blob"
  throttled herd-relay $((32 * 1024 * 1024))
  cluster_up "127.0.0.1:$TPORT"
  local d from m
  d=$(new_big "$WORK/herd.bin" 64) || fail "push"
  settle
  from=$(lines "$UPLOG")
  for m in $MEMBERS; do pull_n "$m" 10 "$d" "$WORK/herd"; done
  wait_pulls
  for f in "$WORK"/herd-*; do
    [ "sha256:$(sha_of "$f")" = "$d" ] || fail "$f: wrong bytes"
  done
  settle
  [ "$(digest_gets "$from" "$d")" = 1 ] || fail "$(digest_gets "$from" "$d") upstream GETs"
  ok "30 of 30 right, 1 upstream GET (owner $(owner_of "$d" $MEMBERS))"
  wait_objects "blobs/sha256/${d#sha256:}" 1
  [ "sha256:$(garage_get "blobs/sha256/${d#sha256:}" - 3 | sha256sum | cut -d' ' -f1)" = "$d" ] || fail "bucket object"
  ok "the owner uploaded it; it reads back right"
  cluster_down
  stop_bg herd-relay
}

case_tags() {
  echo "== tags: a tag HEADed every 100 ms by 3 replicas for 6 s, tag_ttl 2 s"
  TAG_TTL=2s cluster_up
  local from end m heads want answers n=0
  local MANIFEST_ACCEPT='application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json'
  want=$(curl -s --max-time 10 -o /dev/null -I -H "Accept: $MANIFEST_ACCEPT" -w '%header{docker-content-digest}' \
    "http://$UPSTREAM/v2/library/test/manifests/1.0")
  [ -n "$want" ] || fail "the upstream does not say the tag's digest"
  settle
  from=$(lines "$UPLOG")
  end=$(($(date +%s%N) + 6000000000))
  while [ "$(date +%s%N)" -lt "$end" ]; do
    for m in $MEMBERS; do
      n=$((n + 1))
      curl -s --max-time 120 -o /dev/null -I -H "Accept: $MANIFEST_ACCEPT" -w '%{http_code} %header{docker-content-digest}\n' \
        "http://127.0.0.1:$(port_of "$m")/v2/library/test/manifests/1.0" >"$WORK/tags-$n.head" &
      PULLS+=($!)
    done
    sleep 0.1
  done
  wait_pulls
  settle
  answers=$(cat "$WORK"/tags-*.head | sort | uniq -c | awk '{print $1 "x" $2 " " $3}')
  [ "$(cat "$WORK"/tags-*.head | grep -cx "200 $want")" = "$n" ] || fail "answers (want ${n}x200 $want): $answers"
  heads=$(up_count "$from" '^HEAD /v2/library/test/manifests/1.0$')
  [ "$heads" -ge 2 ] && [ "$heads" -le 4 ] || fail "$heads upstream HEADs in 6 s with a 2 s TTL"
  [ "$(up_count "$from" '^GET /v2/library/test/manifests/')" = 0 ] || fail "manifest GETs"
  ok "$n client HEADs over 6 s all 200 with the tag's digest; $heads upstream HEADs"
  cluster_down
}

case_ownerkill() {
  echo "== ownerkill: the owner killed mid-transfer"
  throttled kill-relay $((16 * 1024 * 1024))
  cluster_up "127.0.0.1:$TPORT"
  local d o others=() m from f
  d=$(new_big "$WORK/ok.bin" 64) || fail "push"
  o=$(owner_of "$d" $MEMBERS)
  for m in $MEMBERS; do [ "$m" = "$o" ] || others+=("$m"); done
  settle
  from=$(lines "$UPLOG")
  for m in "${others[@]}"; do pull_n "$m" 5 "$d" "$WORK/ok"; done
  mid_transfer "$WORK/ok-${others[0]}-1" $((16 * 1024 * 1024)) $((64 * 1024 * 1024))
  kill -9 "$(bg_pid "$o")"; rm -f "$WORK/pids/$o.pid"
  ok "killed the owner $o with $((MID / 1024 / 1024)) MiB of 64 sent"
  wait_pulls
  for f in "$WORK"/ok-*; do
    [ "sha256:$(sha_of "$f")" = "$d" ] || fail "$f: $(stat -c %s "$f") bytes, wrong"
  done
  settle
  local gets; gets=$(digest_gets "$from" "$d")
  [ "$gets" -le 2 ] || fail "$gets upstream GETs"
  ok "10 of 10 right through ${others[*]}, $gets upstream GETs"
  # The replica that finished the transfer from upstream uploads it.
  wait_objects "blobs/sha256/${d#sha256:}" 1
  [ "sha256:$(garage_get "blobs/sha256/${d#sha256:}" - 1 | sha256sum | cut -d' ' -f1)" = "$d" ] || fail "a wrong object"
  ok "uploaded by the replica that took over; the object in the bucket is right"
  for m in "${others[@]}"; do stop_bg "$m"; done
  stop_bg kill-relay
}

case_otherkill() {
  echo "== otherkill: a non-owner killed mid-transfer"
  throttled other-relay $((16 * 1024 * 1024))
  cluster_up "127.0.0.1:$TPORT"
  local d o victim='' keep=() m from f
  d=$(new_big "$WORK/nk.bin" 64) || fail "push"
  o=$(owner_of "$d" $MEMBERS)
  for m in $MEMBERS; do
    if [ "$m" != "$o" ] && [ -z "$victim" ]; then victim=$m; else keep+=("$m"); fi
  done
  settle
  from=$(lines "$UPLOG")
  for m in $MEMBERS; do pull_n "$m" 3 "$d" "$WORK/nk"; done
  mid_transfer "$WORK/nk-$victim-1" $((16 * 1024 * 1024)) $((64 * 1024 * 1024))
  kill -9 "$(bg_pid "$victim")"; rm -f "$WORK/pids/$victim.pid"
  wait_pulls
  for m in "${keep[@]}"; do
    for f in "$WORK/nk-$m"-*; do
      [ "sha256:$(sha_of "$f")" = "$d" ] || fail "$f: wrong"
    done
  done
  settle
  [ "$(digest_gets "$from" "$d")" = 1 ] || fail "$(digest_gets "$from" "$d") upstream GETs"
  ok "killed $victim with $((MID / 1024 / 1024)) MiB of 64 sent; 6 of 6 right through ${keep[*]}, 1 upstream GET"
  for m in "${keep[@]}"; do stop_bg "$m"; done
  stop_bg other-relay
}

case_empty() {
  echo "== empty: a replica restarted on an empty disk"
  cluster_up
  skopeo --registries-conf "$(registries_conf X)" copy -q --src-tls-verify=false \
    "docker://$UPSTREAM/library/test:1.0" "dir:$WORK/empty-X" >"$LOGS/skopeo-empty-X.log" 2>&1 || fail "skopeo through X"
  stop_bg Z
  EMPTY=1 CLUSTER=$MEMBERS start_replica Z 2
  settle
  local from; from=$(lines "$UPLOG")
  skopeo --registries-conf "$(registries_conf Z)" copy -q --src-tls-verify=false \
    "docker://$UPSTREAM/library/test:1.0" "dir:$WORK/empty-Z" >"$LOGS/skopeo-empty-Z.log" 2>&1 || fail "skopeo through Z"
  settle
  [ "$(up_count "$from" '^GET /v2/.+/blobs/')" = 0 ] || fail "Z went upstream for blobs"
  diff -r "$WORK/empty-X" "$WORK/empty-Z" >/dev/null || fail "different bytes"
  ok "Z, restarted empty, pulled test:1.0 with 0 upstream blob GETs"
  cluster_down
}

case_ctr() {
  echo "== ctr: containerd through Y after skopeo through X"
  cluster_up
  skopeo --registries-conf "$(registries_conf X)" copy -q --multi-arch all --src-tls-verify=false \
    "docker://$UPSTREAM/library/multi:1.0" "oci:$WORK/multi-X" >"$LOGS/skopeo-multi.log" 2>&1 || fail "skopeo through X"
  start_containerd ctr-cluster "$WORK/ctr"
  local hosts=$WORK/certs.d/$UPSTREAM
  mkdir -p "$hosts"
  cat >"$hosts/hosts.toml" <<TOML
server = "http://$UPSTREAM"
[host."http://127.0.0.1:$(port_of Y)"]
  capabilities = ["pull", "resolve"]
TOML
  settle
  local from; from=$(lines "$UPLOG")
  ctr -a "$WORK/ctr/containerd.sock" -n test images pull --all-platforms --hosts-dir "$WORK/certs.d" --plain-http \
    "$UPSTREAM/library/multi:1.0" >"$LOGS/ctr.log" 2>&1 || { cat "$LOGS/ctr.log"; fail "ctr pull through Y"; }
  settle
  [ "$(up_count "$from" '^GET /v2/.+/blobs/')" = 0 ] || fail "$(up_count "$from" '^GET /v2/.+/blobs/') upstream blob GETs"
  local index; index=$(jq -r .multi.index "$WORK/expected.json")
  ctr -a "$WORK/ctr/containerd.sock" -n test images ls | grep -q "$index" || fail "ctr has another digest"
  ok "containerd pulled multi:1.0 (both platforms, $index) through Y: 0 upstream blob GETs"
  stop_bg ctr-cluster
  cluster_down
}

start=$(date +%s)
for c in "${CASES[@]}"; do
  [[ " ${ALL_CASES[*]} " == *" $c "* ]] || die "unknown case $c (cases: ${ALL_CASES[*]})"
  "case_$c"
done
echo "== cluster: ${CASES[*]} passed in $(($(date +%s) - start))s"
