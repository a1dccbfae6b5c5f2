#!/usr/bin/env bash
# Side-by-side measurements of the shared bucket and of replicas acting as one
# cache, in one run, on a real 3-node Garage cluster (tests/e2e/garage.sh) with
# distribution 2.8.2 as the upstream, all on loopback:
#
#   FERRY_BIN=target/release/ferry benches/load/cluster.sh [SAMPLES]
#
# 1. warm 64 MiB blob: from the local store vs from the bucket (an empty disk)
# 2. cold 64 MiB pull: Ferry alone vs Ferry with [bucket] (the upload runs beside)
# 3. cold 64 MiB pull through the owner vs through a non-owner (the peer hop)
# 4. warm 64 MiB pull from a replica's local cache
# 5. a stale tag HEAD through the owner vs through a non-owner (p50/p99)
# 6. upstream requests for 1,000 node pulls of a small image: 1 Ferry vs 3
#    replicas of one [cluster] (each pull: tag HEAD, manifest GET, blob GETs)
#
# Medians of SAMPLES (default 9) fresh blobs per row; each blob's sha256 is
# checked. Everything runs on the machine's 2 shared vCPUs: upstream, Garage,
# the replicas and curl compete, so loopback times are CPU-bound, not network.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"
# shellcheck source=tests/e2e/garage.sh
source "$REPO/tests/e2e/garage.sh"
LOG_TAG=bench-cluster
FERRY_BIN=${FERRY_BIN:-$REPO/target/release/ferry}
N=${1:-9}
PORT_RANGE=17000-17999
WORK=$(mktemp -d /tmp/ferry-bench-cluster.XXXXXX)
LOGS=$WORK/logs
mkdir -p "$LOGS"
cleanup() { stop_all_bg; garage_stop "$WORK/garage" >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

garage_start "$WORK/garage" 2>"$LOGS/garage.log" || die "garage did not start"
printf '%s' "$GARAGE_KEY_ID" >"$WORK/k"; printf '%s' "$GARAGE_SECRET" >"$WORK/s"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/peer"
pick_port UPORT; UPSTREAM=127.0.0.1:$UPORT
printf 'version: 0.1\nlog: {level: info}\nstorage:\n  filesystem: {rootdirectory: %s}\nhttp: {addr: %s}\n' \
  "$WORK/up" "$UPSTREAM" >"$WORK/up.yml"
start_bg upstream "$LOGS/upstream.log" docker-registry serve "$WORK/up.yml"
wait_until 20 upstream http_ok "http://$UPSTREAM/v2/" || die "upstream"
python3 "$REPO/tests/e2e/seed.py" "http://$UPSTREAM" 1 >"$WORK/expected.json"

# ferry NAME PORT EXTRA_TOML: a Ferry; EMPTY=1 empties its data dir first.
ferry() {
  local name=$1 port=$2
  [ -z "${EMPTY:-}" ] || rm -rf "$WORK/$name"
  mkdir -p "$WORK/$name"
  printf 'listen = "127.0.0.1:%s"\ndata_dir = "%s"\n[[upstream]]\nname = "local"\nurl = "http://%s"\n%s\n' \
    "$port" "$WORK/$name/data" "$UPSTREAM" "$3" >"$WORK/$name.toml"
  start_bg "$name" "$LOGS/$name.log" "$FERRY_BIN" serve --config "$WORK/$name.toml"
  wait_until 30 "$name" http_ok "http://127.0.0.1:$port/readyz" || die "$name did not start"
}
BUCKET="[bucket]
endpoint = \"$(garage_endpoint 1)\"
bucket = \"ferry\"
region = \"garage\"
access_key_file = \"$WORK/k\"
secret_key_file = \"$WORK/s\""
push_blob() { oci_push_blob "http://$UPSTREAM" library/big "$1"; }   # push_blob FILE: to library/big; prints its digest
fresh() { head -c $((64 * 1024 * 1024)) /dev/urandom >"$WORK/blob.bin"; push_blob "$WORK/blob.bin"; }
# get PORT DIGEST: prints the transfer's seconds; fails on wrong bytes
get() {
  local t
  t=$(curl -s -o "$WORK/out" -w '%{time_total}' "http://127.0.0.1:$1/v2/library/big/blobs/$2")
  [ "sha256:$(sha256sum "$WORK/out" | cut -d' ' -f1)" = "$2" ] || die "wrong bytes for $2 via $1"
  echo "$t"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i]}'; }
row() { printf '| %s | %s |\n' "$1" "$2"; }

pick_port P_ALONE; pick_port P_BUCKET; pick_port P_R
ferry alone "$P_ALONE" ""
ferry bucketed "$P_BUCKET" "$BUCKET"
echo "| measurement ($N samples, medians) | seconds |"
echo "|---|---:|"

# 1 and 2 -------------------------------------------------------------------
a=(); b=(); w=(); r=()
for _ in $(seq 1 "$N"); do
  d=$(fresh)
  a+=("$(get "$P_ALONE" "$d")")
  d=$(fresh)
  b+=("$(get "$P_BUCKET" "$d")")
  # The upload finishes after the client's transfer: measure warm reads after it.
  for _ in $(seq 1 100); do [ "$(garage_head "blobs/sha256/${d#sha256:}")" = 200 ] && break; sleep 0.1; done
  w+=("$(get "$P_BUCKET" "$d")")
  stop_bg reader; EMPTY=1 ferry reader "$P_R" "$BUCKET"
  r+=("$(get "$P_R" "$d")")
done
row "cold 64 MiB pull, Ferry alone" "$(printf '%s\n' "${a[@]}" | median)"
row "cold 64 MiB pull, Ferry with [bucket] (uploading beside)" "$(printf '%s\n' "${b[@]}" | median)"
row "warm 64 MiB, from the local store" "$(printf '%s\n' "${w[@]}" | median)"
row "warm 64 MiB, from the bucket (empty local disk)" "$(printf '%s\n' "${r[@]}" | median)"
stop_bg reader; stop_bg alone; stop_bg bucketed

# 3, 4, 5 -------------------------------------------------------------------
pick_port P_X; pick_port P_Y; pick_port P_Z
MEMBERS=("127.0.0.1:$P_X" "127.0.0.1:$P_Y" "127.0.0.1:$P_Z")
cluster_toml() {
  printf '[cluster]\nself = "%s"\npeers = ["%s", "%s", "%s"]\nsecret_file = "%s"\n[freshness]\ntag_ttl = "%s"\n%s\n' \
    "$1" "${MEMBERS[0]}" "${MEMBERS[1]}" "${MEMBERS[2]}" "$WORK/peer" "$2" "$BUCKET"
}
start_cluster() {   # start_cluster TAG_TTL
  EMPTY=1 ferry X "$P_X" "$(cluster_toml "127.0.0.1:$P_X" "$1")"
  EMPTY=1 ferry Y "$P_Y" "$(cluster_toml "127.0.0.1:$P_Y" "$1")"
  EMPTY=1 ferry Z "$P_Z" "$(cluster_toml "127.0.0.1:$P_Z" "$1")"
}
owner_port() {   # owner_port KEY: the port of KEY's owner (Ferry's rendezvous hashing)
  local best='' port='' m s
  for m in "${MEMBERS[@]}"; do
    s=$(printf '%s\0%s' "$m" "$1" | sha256sum | cut -c1-16)
    if [[ -z $best || $s > $best ]]; then best=$s port=${m##*:}; fi
  done
  echo "$port"
}
start_cluster 500ms
o=(); n=(); wl=()
for _ in $(seq 1 "$N"); do
  d=$(fresh); op=$(owner_port "$d")
  o+=("$(get "$op" "$d")")
  d=$(fresh); op=$(owner_port "$d")
  for p in "$P_X" "$P_Y" "$P_Z"; do [ "$p" = "$op" ] || { np=$p; break; }; done
  n+=("$(get "$np" "$d")")
  wl+=("$(get "$np" "$d")")
done
row "cold 64 MiB pull through the blob's owner" "$(printf '%s\n' "${o[@]}" | median)"
row "cold 64 MiB pull through a non-owner (streams from the owner)" "$(printf '%s\n' "${n[@]}" | median)"
row "warm 64 MiB pull from a replica's local cache" "$(printf '%s\n' "${wl[@]}" | median)"

# Stale tag HEADs: the TTL is 500 ms, one HEAD every 600 ms, so each is stale.
head_ms() { curl -s -o /dev/null -I -w '%{time_total}' "http://127.0.0.1:$1/v2/library/test/manifests/1.0" | awk '{printf "%.3f\n", $1 * 1000}'; }
# The tag's key holds NUL bytes, which a shell variable cannot: ask Ferry
# instead. Each replica HEADs the tag once: the two non-owners forward.
tport=''
for p in "$P_X" "$P_Y" "$P_Z"; do head_ms "$p" >/dev/null; done
for p in "$P_X" "$P_Y" "$P_Z"; do
  f=$(curl -s "http://127.0.0.1:$p/metrics" | awk '$1 == "ferry_cluster_requests_total{role=\"forwarded\",kind=\"tag\"}" {print $2}')
  [ "${f:-0}" = 0 ] && tport=$p
done
[ -n "$tport" ] || die "no replica owns the tag?"
for p in "$P_X" "$P_Y" "$P_Z"; do [ "$p" = "$tport" ] || { tn=$p; break; }; done
ho=(); hn=()
for _ in $(seq 1 40); do
  sleep 0.6; ho+=("$(head_ms "$tport")")
  sleep 0.6; hn+=("$(head_ms "$tn")")
done
row "stale tag HEAD through the tag's owner, p50 / p99 (ms)" "$(printf '%s\n' "${ho[@]}" | pct 50) / $(printf '%s\n' "${ho[@]}" | pct 99)"
row "stale tag HEAD through a non-owner, p50 / p99 (ms)" "$(printf '%s\n' "${hn[@]}" | pct 50) / $(printf '%s\n' "${hn[@]}" | pct 99)"
stop_bg X; stop_bg Y; stop_bg Z

# 6 ---------------------------------------------------------------------------
index=$(jq -r .multi.index "$WORK/expected.json")
man=$(jq -r '.multi.platforms["linux/amd64"].manifest' "$WORK/expected.json")
mapfile -t blobs < <(jq -r '.multi.platforms["linux/amd64"].blobs[]' "$WORK/expected.json")
node_pull() {   # node_pull PORT: what a node does: resolve, manifests, blobs
  local base=http://127.0.0.1:$1/v2/library/multi b
  curl -s -o /dev/null -I "$base/manifests/1.0"
  curl -s -o /dev/null "$base/manifests/$index"
  curl -s -o /dev/null "$base/manifests/$man"
  for b in "${blobs[@]}"; do curl -s -o /dev/null "$base/blobs/$b"; done
}
export -f node_pull; export index man
upstream_requests() { grep -cE '"(GET|HEAD) /v2/library/multi/' "$LOGS/upstream.log" || true; }
count_pulls() {   # count_pulls PORT...: 1,000 pulls spread over the ports, 8 at a time; prints upstream requests
  local before after
  before=$(upstream_requests)
  for i in $(seq 0 999); do echo "${@:$((i % $# + 1)):1}"; done |
    BLOBS="${blobs[*]}" xargs -P 8 -I{} bash -c 'blobs=($BLOBS); node_pull {}'
  sleep 0.5
  after=$(upstream_requests)
  echo $((after - before))
}
EMPTY=1 ferry alone "$P_ALONE" ""
one=$(count_pulls "$P_ALONE")
stop_bg alone
start_cluster 30s
three=$(count_pulls "$P_X" "$P_Y" "$P_Z")
row "upstream requests for 1,000 node pulls of multi:1.0 (amd64), 1 Ferry" "$one"
row "upstream requests for 1,000 node pulls, 3 replicas of one [cluster]" "$three"
