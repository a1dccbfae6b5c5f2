#!/usr/bin/env bash
# End-to-end tests with real clients: docker, containerd (ctr) and skopeo pull
# through Ferry from a real upstream registry (distribution 2.8.2), all on 127.0.0.1.
#
#   tests/e2e/run.sh [CASE...]     default: every case
#
# Cases:
#   docker        docker pull 127.0.0.1:FPORT/library/{test,multi}:1.0 (host form)
#   dockermirror  dockerd --registry-mirror (daemon.json), docker pull test:1.0
#   containerd    ctr images pull --hosts-dir (hosts.toml mirror, ?ns=), multi-arch;
#                 with Ferry also the prefix form /v2/127.0.0.1:UPORT/... (override_path)
#   skopeo        registries.conf mirror (host form), single- and multi-arch
#   dockerhub     Docker Hub names with docker/containerd/certs.d/docker.io/hosts.toml
#                 (?ns=docker.io) and docker/registries.conf (prefix form
#                 /v2/docker.io/...) as shipped; Ferry maps docker.io to the local
#                 upstream with a config file
#   parallel      docker and containerd pull one cold image at once: one upstream
#                 GET per blob
#   prefetch      `ferry prefetch` (admin API) caches multi:1.0, then skopeo copies
#                 every platform with zero upstream blob GETs (Ferry only)
#   clientauth    Ferry with [[client]] credentials: docker pull fails before and
#                 works after `docker login`; ctr pulls with --user (Ferry only)
#   tls           Ferry on HTTPS (--tls-cert/--tls-key, a test CA): skopeo with the CA
#                 in --src-cert-dir and containerd with `ca` in hosts.toml (Ferry only)
#   events        a second docker-registry posts its notifications to Ferry's
#                 /events/<upstream>: with tag_ttl 1h, a manifest pushed under an
#                 existing tag is seen through Ferry within a second with no upstream
#                 manifest HEAD; deleting it drops the tag (Ferry only)
#   nodeconfig    `ferry node-config` writes containerd's hosts.toml from Ferry's
#                 upstreams; containerd pulls through Ferry with it; a second run
#                 changes nothing; --remove restores the directory (Ferry only)
#   admission     Ferry's admission webhook (HTTPS, SNI ferry-webhook.ferry-system.svc, a test
#                 CA) pins a pod's test:1.0 to its digest and warms it; containerd then
#                 pulls the pinned reference through Ferry with 0 upstream manifest
#                 requests and 0 upstream blob GETs (Ferry only)
#   private       upstream-checked access ([upstream.access]) in front of a private
#                 docker-registry (htpasswd; Ferry fetches as its own user): a CRI node
#                 (containerd's CRI plugin, hosts.toml mirror, PullImage AuthConfig as
#                 the kubelet sends a pod's pull secret) pulls with the right password;
#                 after RemoveImage, a wrong password and no credentials are refused
#                 although everything is cached, and the right one pulls again with 0
#                 upstream blob GETs; a cached layer of library/test is 404 under
#                 library/multi; no credentials get 401 Basic realm="ferry" (Ferry only)
# Every client case pulls twice (the second after emptying the client's store)
# and the second pull must cost zero upstream blob GETs. Each case gets a fresh
# mirror (empty data dir) on the same port.
#
# Environment:
#   MIRROR=ferry|distribution  what to test; distribution = docker-registry in
#                              proxy mode, a stand-in (no prefix routing, no
#                              single-flight: those checks are reported, not enforced)
#   FERRY_BIN=PATH             default: $CARGO_TARGET_DIR/debug/ferry, target/debug/ferry,
#                              /var/cache/ferry/target/debug/ferry (this script never builds)
#   FERRY_ARGS="..."           extra `ferry serve` arguments (e.g. --tag-ttl 0)
#   E2E_RANDOM_MB=4            size of the random layer of test:1.0
#   KEEP=1                     keep the work dir after the run (else, when a case
#                              fails, its logs are copied to /tmp/ferry-e2e-failed/)
#
# Needs root and Debian/Ubuntu (installs missing packages with apt-get). Binds
# only 127.0.0.1 ports in 15000-15999. Takes well under a minute once installed.
# Digest lists from jq are split into arguments on purpose (SC2046); sed is
# clearer than ${var//} for the log rewriting (SC2001):
# shellcheck disable=SC2046,SC2001
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LOG_TAG=e2e PORT_RANGE=15000-15999
# log, die, start_bg, stop_bg, wait_until, pick_port, start_containerd...
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"
# start_cri_node, stop_cri_node and cri (cri.py): a kubelet-style CRI node (case private).
# shellcheck source=SCRIPTDIR/cri-node.sh disable=SC1091 # followed with shellcheck -x
source "$HERE/cri-node.sh"
ALL_CASES=(docker dockermirror containerd skopeo dockerhub parallel headherd prefetch clientauth tls events nodeconfig admission private)
MIRROR=${MIRROR:-ferry}
RANDOM_MB=${E2E_RANDOM_MB:-4}
PULL_TIMEOUT=180

usage() { sed -n '2,/Takes about/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------- arguments
CASES=()
for a in "$@"; do
  case $a in
    -h|--help) usage; exit 0 ;;
    all) CASES+=("${ALL_CASES[@]}") ;;
    *)
      [[ " ${ALL_CASES[*]} " == *" $a "* ]] || die "unknown case '$a' (cases: ${ALL_CASES[*]})"
      CASES+=("$a") ;;
  esac
done
((${#CASES[@]})) || CASES=("${ALL_CASES[@]}")
case $MIRROR in ferry|distribution) ;; *) die "MIRROR must be ferry or distribution" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (dockerd, containerd and apt-get need it)"

wants() { [[ " ${CASES[*]} " == *" $1 "* ]]; }
wants_any() { local c; for c in "$@"; do wants "$c" && return 0; done; return 1; }

# ---------------------------------------------------------------- packages
install_missing docker-registry:docker-registry skopeo:skopeo containerd:containerd \
  ctr:containerd dockerd:docker.io docker:docker.io curl:curl jq:jq \
  python3:python3 ss:iproute2 timeout:coreutils htpasswd:apache2-utils
# cri.py (case private) runs on Debian's Python with Debian's grpc module.
/usr/bin/python3 -c 'import grpc' 2>/dev/null || apt_install python3-grpcio

if [ "$MIRROR" = ferry ]; then
  if [ -z "${FERRY_BIN:-}" ]; then
    for c in ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/debug/ferry"} "$REPO/target/debug/ferry" \
        /var/cache/ferry/target/debug/ferry; do
      [ -x "$c" ] && { FERRY_BIN=$c; break; }
    done
  fi
  [ -x "${FERRY_BIN:-}" ] || die "no ferry binary: build it (cargo build) or set FERRY_BIN"
fi

# ---------------------------------------------------------------- work dir, ports
WORK=$(mktemp -d /tmp/ferry-e2e.XXXXXX)   # short: unix socket paths live here
mkdir -p "$WORK/pids" "$WORK/logs" "$WORK/results"
LOGS=$WORK/logs
if [ "$MIRROR" = ferry ]; then
  # A private copy: a rebuild during the run must not change the binary between cases.
  cp "$FERRY_BIN" "$WORK/ferry" || die "cannot copy $FERRY_BIN"
  FERRY_SRC=$FERRY_BIN FERRY_BIN=$WORK/ferry
fi

pick_port UPORT; pick_port FPORT; pick_port DEADPORT; pick_port APORT; pick_port EVPORT; pick_port WHPORT
# Case private: the private registry, its seeding twin, the CRI node's stream server.
pick_port PRPORT; pick_port PSPORT; pick_port CRIPORT
# Case tls: a docker-registry on HTTPS behind Ferry (an upstream with ca_file).
pick_port TRPORT
UPSTREAM=127.0.0.1:$UPORT
FERRY=127.0.0.1:$FPORT

# Safety net: clients fall back to the real registry when a mirror fails
# (dockerd to Docker Hub, containerd to `server`, skopeo to `location`). Send
# any such request to a closed loopback port; loopback itself is never proxied.
export HTTP_PROXY=http://127.0.0.1:$DEADPORT HTTPS_PROXY=http://127.0.0.1:$DEADPORT
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# ---------------------------------------------------------------- processes
# Every daemon's pid is in $WORK/pids/NAME.pid (start_bg); cleanup stops them all.
CLEANED=0
cleanup() {
  [ "$CLEANED" = 1 ] && return; CLEANED=1
  stop_all_bg dockerd containerd-docker containerd mirror upstream
  # dockerd/containerd may leave mounts under their roots: unmount before rm.
  unmount_under "$WORK"
  if [ "${KEEP:-0}" = 1 ]; then
    log "work dir kept: $WORK"
  else
    if [ "${FAILED_ANY:-0}" = 1 ]; then
      rm -rf /tmp/ferry-e2e-failed && cp -r "$WORK/logs" /tmp/ferry-e2e-failed \
        && cp "$WORK/expected.json" /tmp/ferry-e2e-failed/ 2>/dev/null
      log "logs of the failed run: /tmp/ferry-e2e-failed/"
    fi
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- logs
# Access-log lines from either Ferry (tracing, target ferry::access) or
# distribution (combined log format), as "METHOD URI STATUS".
# norm_log FILE [FROM_LINE]: only lines after FROM_LINE.
norm_log() {
  tail -n +"$(( ${2:-0} + 1 ))" "$1" 2>/dev/null | sed -E 's/\x1b\[[0-9;]*m//g' | sed -nE \
    -e 's/.*ferry::access: ([A-Z]+) ([^ ]+) ([0-9]{3})( .*)?$/\1 \2 \3/p' \
    -e 's/.*"([A-Z]+) ([^ ]+) HTTP\/[0-9.]+" ([0-9]{3}) .*/\1 \2 \3/p'
}
settle() { sleep 0.5; }   # let both servers flush their last access lines
up_blob_gets() {   # up_blob_gets FROM [DIGEST]
  norm_log "$UPLOG" "$1" | grep -E '^GET /v2/.+/blobs/sha256:' | grep -cF "${2:-/blobs/}" || true
}

# ---------------------------------------------------------------- upstream
UPLOG=$LOGS/upstream.log
start_upstream() {
  cat >"$WORK/upstream.yml" <<YML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $WORK/upstream-data}
  delete: {enabled: true}
http: {addr: $UPSTREAM}
YML
  start_bg upstream "$UPLOG" docker-registry serve "$WORK/upstream.yml"
  wait_until 20 upstream http_ok "http://$UPSTREAM/v2/" || { tail -20 "$UPLOG"; die "upstream did not start"; }
}

# ---------------------------------------------------------------- mirror
MLOG=
FERRY_FLAGS=()
if [ "$MIRROR" = ferry ]; then
  "$FERRY_BIN" serve --help 2>/dev/null | grep -q -- '--access-log' && FERRY_FLAGS+=(--access-log)
  # shellcheck disable=SC2206
  FERRY_FLAGS+=(${FERRY_ARGS:-})
fi
start_mirror() {   # start_mirror TAG [FERRY_ARG...]: a fresh mirror (empty data dir) on $FERRY
  stop_bg mirror
  local data=$WORK/mirror-$1 upstream_args=(--upstream "http://$UPSTREAM")
  MLOG=$LOGS/mirror-$1.log
  shift
  ((${#@})) && upstream_args=("$@")
  mkdir -p "$data"
  if [ "$MIRROR" = ferry ]; then
    echo "# ferry serve --listen $FERRY --data-dir $data/data ${upstream_args[*]} ${FERRY_FLAGS[*]}" >"$MLOG"
    start_bg mirror "$MLOG" env RUST_LOG="${FERRY_RUST_LOG:-info}" NO_COLOR=1 \
      "$FERRY_BIN" serve --listen "$FERRY" --data-dir "$data/data" \
      "${upstream_args[@]}" "${FERRY_FLAGS[@]}"
  else
    cat >"$data/config.yml" <<YML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $data/data}
  delete: {enabled: true}
http: {addr: $FERRY}
proxy: {remoteurl: "http://$UPSTREAM"}
YML
    : >"$MLOG"
    start_bg mirror "$MLOG" docker-registry serve "$data/config.yml"
  fi
  # /v2/ may demand credentials (clientauth); Ferry's /readyz never does, and
  # turns 200 only once the store is open.
  local ready=http://$FERRY/v2/
  [ "$MIRROR" = ferry ] && ready=http://$FERRY/readyz
  [ "$MIRROR" = ferry ] && [ -n "${MIRROR_TLS:-}" ] && ready=https://$FERRY/readyz
  wait_until 30 mirror http_ok "$ready" -k || { tail -20 "$MLOG"; return 1; }
}
mirror_lines() { norm_log "$MLOG" "$1"; }   # mirror_lines FROM

# ---------------------------------------------------------------- containerd, dockerd
# Two containerds: one for ctr, one behind dockerd. dockerd (20.10+) keeps the
# manifests it pulls in its containerd's content store, and containerd skips
# fetching any blob that store has, so sharing one would hide requests.
CTD=$WORK/ctd
CTDSOCK=$CTD/containerd.sock
CT_NS=ferry-e2e
CT=(ctr -a "$CTDSOCK" -n "$CT_NS")
ct() { "${CT[@]}" "$@"; }

DK=$WORK/dk
export DOCKER_CONFIG=$WORK/docker-cli   # no user credentials or CLI plugins
start_dockerd() {
  mkdir -p "$DK" "$DOCKER_CONFIG"
  # docker/daemon.json with Ferry's address: registry-mirrors for Hub names.
  jq --arg m "http://$FERRY" '."registry-mirrors" = [$m]' "$REPO/docker/daemon.json" >"$DK/daemon.json" \
    || die "cannot read docker/daemon.json"
  start_bg dockerd "$LOGS/dockerd.log" dockerd --config-file "$DK/daemon.json" \
    --data-root "$DK/root" --exec-root "$DK/exec" --pidfile "$DK/docker.pid" \
    -H "unix://$DK/docker.sock" --containerd "$DK/ctd/containerd.sock" \
    --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none
  wait_until 60 dockerd dk version || { tail -30 "$LOGS/dockerd.log"; die "dockerd did not start"; }
}
DKC=(docker -H "unix://$DK/docker.sock")
dk() { "${DKC[@]}" "$@"; }

# ---------------------------------------------------------------- expected digests
EXP=$WORK/expected.json
x() { jq -r "$@" "$EXP"; }   # x [JQ_OPTION...] FILTER
case $(dpkg --print-architecture 2>/dev/null || uname -m) in
  amd64|x86_64) HOST_PLATFORM=linux/amd64 ;;
  arm64|aarch64) HOST_PLATFORM=linux/arm64 ;;
  *) HOST_PLATFORM= ;;
esac

# ================================================================ case helpers
# These run inside a case's subshell (set -e): `fail` ends the case.
fail() { echo "  FAIL: $*" >&2; exit 1; }
ok() { echo "  ok: $*"; }
note() { echo "  note: $*"; echo "$*" >>"$WORK/results/$CASE.notes"; }
step() { echo "  -- $*"; }
counts() { echo "$1" >>"$WORK/results/$CASE.counts"; }   # counts "cold=4 warm=0"

run_logged() {   # run_logged NAME CMD...: run with a timeout, output to a log; on error show it
  local out=$LOGS/$CASE-$1.log rc; shift
  echo "\$ $*" >"$out"
  timeout "$PULL_TIMEOUT" "$@" >>"$out" 2>&1 && return 0
  rc=$?
  echo "  command failed (rc=$rc): $*" >&2
  sed 's/^/    | /' "$out" | tail -25 >&2
  return "$rc"
}

# Pass when the mirror served (200/206) a GET for every digest given, after line FROM.
expect_mirror_served() {   # expect_mirror_served FROM WHAT DIGEST...
  local from=$1 what=$2 d missing=(); shift 2
  local got; got=$(mirror_lines "$from")
  for d in "$@"; do
    grep -qE "^GET [^ ]*/(blobs|manifests)/$d([?][^ ]*)? (200|206)$" <<<"$got" || missing+=("$d")
  done
  if ((${#missing[@]})); then
    echo "  mirror requests seen:" >&2; sed 's/^/    | /' <<<"$got" | tail -40 >&2
    fail "$what: the mirror did not serve ${missing[*]}"
  fi
  ok "$what: mirror served all $# digests"
}

# Each of the digests was fetched from upstream at most once since FROM (a
# caching proxy with an empty cache fetches each blob once per client pull).
expect_upstream_once() {   # expect_upstream_once FROM WHAT DIGEST...
  local from=$1 what=$2 d n bad=() max=0; shift 2
  for d in "$@"; do
    n=$(up_blob_gets "$from" "$d")
    ((n <= 1)) || bad+=("${d:7:12}..:$n")
    ((n > max)) && max=$n
  done
  ((${#bad[@]})) || { ok "$what: each blob fetched from upstream at most once"; return 0; }
  [ "$MIRROR" = ferry ] && fail "$what: blobs fetched from upstream more than once: ${bad[*]}"
  note "$what: stand-in fetched ${#bad[@]} of $# blobs more than once (up to ${max}x)"
}

expect_zero_upstream() {   # expect_zero_upstream FROM WHAT
  local n; n=$(up_blob_gets "$1")
  if ((n != 0)); then
    norm_log "$UPLOG" "$1" | grep -E '/blobs/' | sed 's/^/    | upstream: /' >&2
    fail "$2: expected 0 upstream blob GETs, saw $n"
  fi
  ok "$2: 0 upstream blob GETs"
}

dk_clean() {   # remove every image (and so every layer) from dockerd
  local ids; ids=$(dk images -aq | sort -u)
  # shellcheck disable=SC2086 # one id per word
  [ -z "$ids" ] || dk rmi -f $ids >/dev/null
  [ -z "$(dk images -aq)" ] || fail "docker images left after rmi"
}

# The content store must be really empty: containerd skips fetching any blob it
# already has, in any namespace.
ct_clean() {
  local imgs blobs
  imgs=$(ct images ls -q)
  # shellcheck disable=SC2086 # one name per word
  [ -z "$imgs" ] || ct images rm --sync $imgs >/dev/null
  blobs=$(ct content ls -q)
  # shellcheck disable=SC2086 # one digest per word
  [ -z "$blobs" ] || ct content rm $blobs >/dev/null || true
  [ -z "$(ct content ls -q)" ] || fail "containerd content left after cleanup: $(ct content ls -q | tr '\n' ' ')"
  [ -z "$(ls "$CTD/root/io.containerd.content.v1.content/blobs/sha256" 2>/dev/null)" ] \
    || fail "containerd blob files left after cleanup"
}

# Docker: the local image has the expected repo digest, config (= image ID) and diff_ids.
dk_verify() {   # dk_verify REF MANIFEST_OR_INDEX_DIGEST CONFIG DIFF_IDS_JSON
  local ref=$1 digest=$2 cfg=$3 diff_ids=$4 j
  j=$(dk image inspect "$ref") || fail "docker image inspect $ref"
  jq -e --arg d "$digest" '.[0].RepoDigests | any(endswith("@" + $d))' <<<"$j" >/dev/null \
    || fail "$ref: RepoDigests $(jq -c '.[0].RepoDigests' <<<"$j") lack $digest"
  [ "$(jq -r '.[0].Id' <<<"$j")" = "$cfg" ] || fail "$ref: image ID $(jq -r '.[0].Id' <<<"$j") != config $cfg"
  jq -e --argjson want "$diff_ids" '.[0].RootFS.Layers == $want' <<<"$j" >/dev/null \
    || fail "$ref: layers $(jq -c '.[0].RootFS.Layers' <<<"$j") != $diff_ids"
  ok "$ref: digest $digest, config and $(jq length <<<"$diff_ids") layer diff_ids match"
}

# ================================================================ cases
case_docker() {
  local ref=$FERRY/library/test:1.0 up mm cold warm
  dk_clean
  step "cold: docker pull $ref"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged pull-test-cold "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  expect_mirror_served "$mm" "docker pull" $(x '.test.blobs[]')
  expect_upstream_once "$up" "docker pull" $(x '.test.blobs[]')
  cold=$(up_blob_gets "$up")

  step "warm: docker rmi, docker pull $ref again"
  dk_clean
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged pull-test-warm "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  expect_mirror_served "$mm" "docker pull (warm)" $(x '.test.blobs[]')
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "docker pull (warm)"
  counts "test:1.0 cold=$cold warm=$warm"

  if [ -z "$HOST_PLATFORM" ]; then note "multi-arch skipped: host platform not amd64/arm64"; return; fi
  ref=$FERRY/library/multi:1.0
  local p=".multi.platforms[\"$HOST_PLATFORM\"]"
  step "cold: docker pull $ref (multi-arch index, $HOST_PLATFORM)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged pull-multi-cold "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .multi.index)" "$(x "$p.config")" "$(x -c "$p.diff_ids")"
  expect_mirror_served "$mm" "docker pull multi" "$(x .multi.index)" "$(x "$p.manifest")" $(x "$p.blobs[]")
  cold=$(up_blob_gets "$up")
  step "warm: docker rmi, docker pull $ref again"
  dk_clean
  up=$(lines "$UPLOG")
  run_logged pull-multi-warm "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .multi.index)" "$(x "$p.config")" "$(x -c "$p.diff_ids")"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "docker pull multi (warm)"
  counts "multi:1.0 cold=$cold warm=$warm"
  dk_clean

  if [ "$MIRROR" = ferry ]; then
    curl -sf --max-time 5 "http://$FERRY/metrics" >"$LOGS/metrics-docker.txt" || fail "GET /metrics failed"
    grep -qE '^# (TYPE|HELP) ' "$LOGS/metrics-docker.txt" || fail "GET /metrics is not Prometheus text"
    ok "/metrics: $(grep -vc '^#' "$LOGS/metrics-docker.txt") samples"
  fi
}

case_dockermirror() {
  # dockerd runs with registry-mirrors=[http://$FERRY] (docker/daemon.json).
  # test:1.0 is a Docker Hub name: the mirror gets /v2/library/test/...; if the
  # mirror failed dockerd would silently try Hub (unreachable here).
  local ref=test:1.0 up mm cold warm got
  dk_clean
  step "cold: docker pull $ref (Docker Hub name, via registry-mirrors)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged pull-cold "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  got=$(mirror_lines "$mm")
  grep -qE '^(HEAD|GET) /v2/library/test/manifests/1\.0 200$' <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "mirror log has no 200 for /v2/library/test/manifests/1.0"; }
  ok "mirror resolved /v2/library/test/manifests/1.0"
  grep -q 'ns=' <<<"$got" && fail "dockerd (classic store) sent ns= to the mirror"
  expect_mirror_served "$mm" "docker pull via mirror" $(x '.test.blobs[]')
  expect_upstream_once "$up" "docker pull via mirror" $(x '.test.blobs[]')
  cold=$(up_blob_gets "$up")

  step "warm: docker rmi, docker pull $ref again"
  dk_clean
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged pull-warm "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  expect_mirror_served "$mm" "docker pull via mirror (warm)" $(x '.test.blobs[]')
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "docker pull via mirror (warm)"
  counts "test:1.0 cold=$cold warm=$warm"
  dk_clean
}

# hosts.toml from docker/containerd/certs.d/docker.io/hosts.toml, for $UPSTREAM.
write_hosts_dir() {
  local dir=$WORK/certs.d
  mkdir -p "$dir/$UPSTREAM"
  sed -e "s#https://registry-1.docker.io#http://$UPSTREAM#" -e "s#http://ferry.local:5000#http://$FERRY#" \
    "$REPO/docker/containerd/certs.d/docker.io/hosts.toml" >"$dir/$UPSTREAM/hosts.toml"
  if ! grep -q "server = \"http://$UPSTREAM\"" "$dir/$UPSTREAM/hosts.toml" \
      || ! grep -q "host.\"http://$FERRY\"" "$dir/$UPSTREAM/hosts.toml"; then
    fail "could not adapt docker/containerd/certs.d/docker.io/hosts.toml"
  fi
  echo "$dir"
}
ct_pull() {   # ct_pull LOGNAME REF [FLAGS...]   (hosts dir: $HOSTS_DIR)
  local name=$1 ref=$2; shift 2
  run_logged "$name" "${CT[@]}" images pull --hosts-dir "$HOSTS_DIR" --plain-http --snapshotter native "$@" "$ref"
}
# Every request containerd sent the mirror since FROM carries ?ns=NS.
expect_ns() {   # expect_ns FROM [NS]
  local got n bad ns=${2:-$UPSTREAM} re
  re=$(sed -e 's/\./\\./g' -e 's/:/(%3A|:)/' <<<"$ns")
  got=$(mirror_lines "$1")
  n=$(grep -c . <<<"$got" || true)
  bad=$(grep -vE "[?&]ns=$re( |&)" <<<"$got" || true)
  ((n > 0)) || fail "no requests reached the mirror"
  [ -z "$bad" ] || { sed 's/^/    | /' <<<"$bad" >&2; fail "requests without ns=$ns"; }
  ok "all $n mirror requests carry ns=$ns (e.g. $(head -1 <<<"$got"))"
}
ct_image_target() { ct images ls | awk -v r="$1" '$1 == r {print $3}'; }
ct_verify_multi() {
  local ref=$UPSTREAM/library/multi:1.0 target have d missing=()
  target=$(ct_image_target "$ref")
  [ "$target" = "$(x .multi.index)" ] || fail "ctr image $ref target '$target' != index $(x .multi.index)"
  have=$(ct content ls -q)
  for d in $(x '.multi.index, (.multi.platforms[] | .manifest, .blobs[])'); do
    grep -qx "$d" <<<"$have" || missing+=("$d")
  done
  ((${#missing[@]} == 0)) || fail "content missing after --all-platforms pull: ${missing[*]}"
  ok "ctr image = index $(x .multi.index); both platforms' manifests, configs and layers present"
}

case_containerd() {
  local ref=$UPSTREAM/library/multi:1.0 up mm cold warm
  containerd --config "$REPO/docker/containerd/config-snippet.toml" config dump 2>/dev/null \
    | grep -q 'config_path = "/etc/containerd/certs.d"' \
    || fail "docker/containerd/config-snippet.toml does not set the CRI registry config_path"
  ok "docker/containerd/config-snippet.toml: containerd $(containerd --version | awk '{print $3}') reads config_path"
  HOSTS_DIR=$(write_hosts_dir)
  ct_clean
  step "cold: ctr images pull --all-platforms $ref (hosts.toml mirror $FERRY)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  ct_pull pull-cold "$ref" --all-platforms
  settle
  ct_verify_multi
  expect_ns "$mm"
  expect_mirror_served "$mm" "ctr pull" "$(x .multi.index)" $(x '.multi.platforms[] | .manifest, .blobs[]')
  expect_upstream_once "$up" "ctr pull" $(x '.multi.platforms[].blobs[]')
  cold=$(up_blob_gets "$up")

  step "warm: ctr images rm + content GC, ctr images pull --all-platforms again"
  ct_clean
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  ct_pull pull-warm "$ref" --all-platforms
  settle
  ct_verify_multi
  expect_ns "$mm"
  expect_mirror_served "$mm" "ctr pull (warm)" $(x '.multi.platforms[].blobs[]')
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "ctr pull (warm)"
  counts "multi:1.0 all-platforms cold=$cold warm=$warm"

  step "ctr images pull --platform linux/arm64 $ref (after cleanup, from the cache)"
  ct_clean
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  ct_pull pull-arm64 "$ref" --platform linux/arm64
  settle
  expect_mirror_served "$mm" "ctr pull arm64" $(x '.multi.platforms["linux/arm64"] | .manifest, .blobs[]')
  expect_zero_upstream "$up" "ctr pull arm64"
  ct_clean

  if [ "$MIRROR" != ferry ]; then
    note "prefix form (/v2/$UPSTREAM/..., override_path) skipped: the stand-in has no prefix routing"
    return 0
  fi
  # Prefix form: a docker reference cannot hold "host:port/host:port/...", but
  # containerd's override_path can send /v2/127.0.0.1:UPORT/library/test/... (with ns).
  HOSTS_DIR=$WORK/certs.d-prefix
  mkdir -p "$HOSTS_DIR/$UPSTREAM"
  cat >"$HOSTS_DIR/$UPSTREAM/hosts.toml" <<TOML
server = "http://$UPSTREAM"

[host."http://$FERRY/v2/$UPSTREAM"]
  capabilities = ["pull", "resolve"]
  override_path = true
TOML
  ref=$UPSTREAM/library/test:1.0
  step "cold: ctr images pull $ref via override_path (Ferry sees /v2/$UPSTREAM/library/test/...)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  ct_pull pull-prefix-cold "$ref"
  settle
  [ "$(ct_image_target "$ref")" = "$(x .test.manifest)" ] || fail "ctr image $ref is not $(x .test.manifest)"
  local got; got=$(mirror_lines "$mm")
  grep -qE "^HEAD /v2/127\.0\.0\.1(:|%3A)$UPORT/library/test/manifests/1\.0[?]ns=[^ ]+ 200$" <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "no prefix-form HEAD manifests/1.0 answered 200"; }
  grep -vqE "^[A-Z]+ /v2/127\.0\.0\.1(:|%3A)$UPORT/" <<<"$got" \
    && { sed 's/^/    | /' <<<"$got" >&2; fail "requests outside the prefix form"; }
  expect_mirror_served "$mm" "ctr pull prefix form" $(x '.test.blobs[]')
  expect_upstream_once "$up" "ctr pull prefix form" $(x '.test.blobs[]')
  cold=$(up_blob_gets "$up")
  ct_clean
  step "warm: ctr images pull $ref via override_path again"
  up=$(lines "$UPLOG")
  ct_pull pull-prefix-warm "$ref"
  settle
  [ "$(ct_image_target "$ref")" = "$(x .test.manifest)" ] || fail "ctr image $ref is not $(x .test.manifest)"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "ctr pull prefix form (warm)"
  counts "test:1.0 prefix-form cold=$cold warm=$warm"
  ct_clean
}

# registries.conf as in docker/registries.conf (host form), for $UPSTREAM.
write_registries_conf() {   # write_registries_conf FILE MIRROR_LOC [PRIMARY_LOC (default $UPSTREAM)]
  cat >"$1" <<CONF
[[registry]]
location = "${3:-$UPSTREAM}"
insecure = true

[[registry.mirror]]
location = "$2"
insecure = true
CONF
}
sk_verify_dir() {   # sk_verify_dir DIR: manifest and blobs of test:1.0, by content
  local dir=$1 d
  [ "sha256:$(sha256sum <"$dir/manifest.json" | cut -d' ' -f1)" = "$(x .test.manifest)" ] \
    || fail "$dir/manifest.json is not $(x .test.manifest)"
  for d in $(x '.test.blobs[]'); do
    [ -f "$dir/${d#sha256:}" ] || fail "$dir lacks blob $d"
    [ "sha256:$(sha256sum <"$dir/${d#sha256:}" | cut -d' ' -f1)" = "$d" ] || fail "$dir: blob $d has wrong content"
  done
  ok "$dir: manifest $(x .test.manifest) and $(x '.test.blobs | length') blobs verified"
}
sk_verify_oci_multi() {   # sk_verify_oci_multi LAYOUT_DIR
  local dir=$1 d
  [ "$(jq -r '.manifests[0].digest' "$dir/index.json")" = "$(x .multi.index)" ] \
    || fail "$dir/index.json does not point at index $(x .multi.index)"
  for d in $(x '.multi.index, (.multi.platforms[] | .manifest, .blobs[])'); do
    [ "sha256:$(sha256sum <"$dir/blobs/sha256/${d#sha256:}" | cut -d' ' -f1)" = "$d" ] \
      || fail "$dir lacks or has a bad $d"
  done
  ok "$dir: index $(x .multi.index) and both platforms verified"
}

case_skopeo() {
  local src=docker://$UPSTREAM/library/test:1.0 msrc=docker://$UPSTREAM/library/multi:1.0
  local conf=$WORK/registries-host.conf up mm cold warm got out=$WORK/skopeo
  mkdir -p "$out"
  write_registries_conf "$conf" "$FERRY"
  # skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF; --registries-conf is hidden but works.
  local SK=(env CONTAINERS_REGISTRIES_CONF="$conf" skopeo --registries-conf "$conf" --policy "$WORK/policy.json")

  step "cold: skopeo copy $src dir: (mirror location=$FERRY)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged copy-test-cold "${SK[@]}" copy "$src" "dir:$out/test-cold"
  settle
  sk_verify_dir "$out/test-cold"
  got=$(mirror_lines "$mm")
  grep -qE '^GET /v2/library/test/manifests/1\.0 200$' <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "mirror did not serve GET /v2/library/test/manifests/1.0"; }
  expect_mirror_served "$mm" "skopeo copy" $(x '.test.blobs[]')
  expect_upstream_once "$up" "skopeo copy" $(x '.test.blobs[]')
  cold=$(up_blob_gets "$up")
  step "warm: skopeo copy $src to a fresh dir:"
  up=$(lines "$UPLOG")
  run_logged copy-test-warm "${SK[@]}" copy "$src" "dir:$out/test-warm"
  settle
  sk_verify_dir "$out/test-warm"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "skopeo copy (warm)"
  counts "test:1.0 cold=$cold warm=$warm"

  step "cold: skopeo copy --multi-arch all $msrc oci:"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged copy-multi-cold "${SK[@]}" copy --multi-arch all "$msrc" "oci:$out/multi-cold:1.0"
  settle
  sk_verify_oci_multi "$out/multi-cold"
  # skopeo GETs the index by tag only (no digest re-fetch, unlike docker and containerd).
  grep -qE '^GET /v2/library/multi/manifests/1\.0 200$' <<<"$(mirror_lines "$mm")" \
    || fail "mirror did not serve GET /v2/library/multi/manifests/1.0"
  expect_mirror_served "$mm" "skopeo copy multi" $(x '.multi.platforms[] | .manifest, .blobs[]')
  cold=$(up_blob_gets "$up")
  step "warm: skopeo copy --multi-arch all $msrc to a fresh oci:"
  up=$(lines "$UPLOG")
  run_logged copy-multi-warm "${SK[@]}" copy --multi-arch all "$msrc" "oci:$out/multi-warm:1.0"
  settle
  sk_verify_oci_multi "$out/multi-warm"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "skopeo copy multi (warm)"
  counts "multi:1.0 all cold=$cold warm=$warm"

  # The prefix form "location = $FERRY/$UPSTREAM" is not possible here: a
  # reference path component cannot contain ":" (skopeo: "invalid reference
  # format"). The dockerhub case covers the prefix form with docker.io.
}

case_dockerhub() {
  # Docker Hub names with the node examples from docker/ as shipped (only
  # Ferry's address replaced). Ferry runs with a config whose upstream named
  # docker.io is the local registry (mirror_args). A mirror failure would make
  # the clients fall back to Hub: the proxy safety net stops that.
  local ref=docker.io/library/test:1.0 src=docker://docker.io/library/test:1.0
  local up mm cold warm got conf out=$WORK/skopeo-hub
  HOSTS_DIR=$WORK/certs.d-hub
  mkdir -p "$HOSTS_DIR/docker.io" "$out"
  sed "s#http://ferry.local:5000#http://$FERRY#" "$REPO/docker/containerd/certs.d/docker.io/hosts.toml" \
    >"$HOSTS_DIR/docker.io/hosts.toml"
  grep -q "host.\"http://$FERRY\"" "$HOSTS_DIR/docker.io/hosts.toml" || fail "could not adapt docker.io/hosts.toml"
  ct_clean

  step "cold: ctr images pull $ref (docker/containerd/certs.d/docker.io/hosts.toml)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged ctr-cold "${CT[@]}" images pull --hosts-dir "$HOSTS_DIR" --snapshotter native "$ref"
  settle
  [ "$(ct_image_target "$ref")" = "$(x .test.manifest)" ] || fail "ctr image $ref is not $(x .test.manifest)"
  ok "ctr image $ref = $(x .test.manifest)"
  expect_ns "$mm" docker.io
  got=$(mirror_lines "$mm")
  grep -qE '^HEAD /v2/library/test/manifests/1\.0[?]ns=docker\.io 200$' <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "no HEAD /v2/library/test/manifests/1.0?ns=docker.io answered 200"; }
  expect_mirror_served "$mm" "ctr pull docker.io" $(x '.test.blobs[]')
  expect_upstream_once "$up" "ctr pull docker.io" $(x '.test.blobs[]')
  cold=$(up_blob_gets "$up")
  ct_clean
  step "warm: ctr images pull $ref again"
  up=$(lines "$UPLOG")
  run_logged ctr-warm "${CT[@]}" images pull --hosts-dir "$HOSTS_DIR" --snapshotter native "$ref"
  settle
  [ "$(ct_image_target "$ref")" = "$(x .test.manifest)" ] || fail "ctr image $ref is not $(x .test.manifest)"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "ctr pull docker.io (warm)"
  counts "containerd ns=docker.io cold=$cold warm=$warm"
  ct_clean

  # docker/registries.conf with its docker.io mirror switched to the host form.
  conf=$WORK/registries-hub-host.conf
  sed -e "s#ferry.local:5000/docker.io#$FERRY#" -e "s#ferry.local:5000#$FERRY#g" "$REPO/docker/registries.conf" >"$conf"
  local SK=(skopeo --registries-conf "$conf" --policy "$WORK/policy.json")
  step "skopeo copy $src (docker/registries.conf, host form: mirror $FERRY), cache warm"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged skopeo-host "${SK[@]}" copy "$src" "dir:$out/host"
  settle
  sk_verify_dir "$out/host"
  grep -qE '^GET /v2/library/test/manifests/1\.0 200$' <<<"$(mirror_lines "$mm")" \
    || fail "mirror did not serve GET /v2/library/test/manifests/1.0"
  expect_mirror_served "$mm" "skopeo docker.io host form" $(x '.test.blobs[]')
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "skopeo docker.io host form"

  if [ "$MIRROR" != ferry ]; then
    counts "skopeo host-form warm=$warm"
    note "prefix form (location=$FERRY/docker.io) skipped: the stand-in has no prefix routing"
    return 0
  fi
  conf=$WORK/registries-hub-prefix.conf
  sed -e "s#ferry.local:5000#$FERRY#g" "$REPO/docker/registries.conf" >"$conf"
  SK=(skopeo --registries-conf "$conf" --policy "$WORK/policy.json")
  step "skopeo copy $src (docker/registries.conf as shipped, prefix form: mirror $FERRY/docker.io), cache warm"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged skopeo-prefix "${SK[@]}" copy "$src" "dir:$out/prefix"
  settle
  sk_verify_dir "$out/prefix"
  got=$(mirror_lines "$mm")
  grep -qE '^GET /v2/docker\.io/library/test/manifests/1\.0 200$' <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "mirror did not serve GET /v2/docker.io/library/test/manifests/1.0"; }
  expect_mirror_served "$mm" "skopeo docker.io prefix form" $(x '.test.blobs[]')
  grep -E '/blobs/' <<<"$got" | grep -vq '^GET /v2/docker\.io/library/test/blobs/' \
    && fail "blob requests outside /v2/docker.io/library/test/"
  local warm2; warm2=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "skopeo docker.io prefix form (same blobs as ns=docker.io)"
  counts "skopeo host-form warm=$warm prefix-form warm=$warm2"
}

case_parallel() {
  # One cold image, two clients at once: docker (host form) and containerd (ns).
  local dref=$FERRY/library/test:1.0 cref=$UPSTREAM/library/test:1.0 up mm p1 p2 rc1 rc2 d n bad=() total
  HOSTS_DIR=$(write_hosts_dir)
  dk_clean
  ct_clean
  step "docker pull $dref & ctr images pull $cref, at once, through one cold mirror"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  ( run_logged pull-docker "${DKC[@]}" pull "$dref" ) & p1=$!
  ( ct_pull pull-ctr "$cref" ) & p2=$!
  wait "$p1" && rc1=0 || rc1=$?
  wait "$p2" && rc2=0 || rc2=$?
  settle
  ((rc1 == 0)) || fail "docker pull failed"
  ((rc2 == 0)) || fail "ctr pull failed"
  dk_verify "$dref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  [ "$(ct_image_target "$cref")" = "$(x .test.manifest)" ] \
    || fail "ctr image $cref is not $(x .test.manifest)"
  ok "both clients got $(x .test.manifest)"
  for d in $(x '.test.blobs[]'); do
    n=$(up_blob_gets "$up" "$d")
    echo "  upstream GETs for $d: $n"
    ((n == 1)) || bad+=("${d:7:12}..:$n")
  done
  total=$(up_blob_gets "$up")
  counts "test:1.0 two clients cold=$total (blobs: $(x '.test.blobs | length'))"
  if ((${#bad[@]})); then
    if [ "$MIRROR" = ferry ]; then fail "expected exactly one upstream GET per blob, got ${bad[*]}"; fi
    note "stand-in has no single-flight: ${#bad[@]} of $(x '.test.blobs | length') blobs fetched more than once, $total GETs (not enforced)"
  else
    ok "exactly one upstream GET per blob"
  fi
  dk_clean
  ct_clean
}

case_headherd() {
  # A rollout's nodes HEAD a layer before GETting it, arriving over a few
  # hundred ms: 100 cold-blob HEADs cost one upstream HEAD (the answer is
  # remembered for 10 s after the first lands).
  local d up i pids=() codes size
  d=$(x '.test.blobs[2]')   # the 4 MiB random layer
  size=$(curl -s --max-time 10 -o /dev/null -I -w '%header{content-length}' "http://$UPSTREAM/v2/library/test/blobs/$d")
  [ -n "$size" ] || fail "the upstream does not say the layer's size"
  start_mirror headherd || fail "mirror did not start"
  step "100 x curl -I of a cold blob, one every 3 ms"
  up=$(lines "$UPLOG")
  for i in $(seq 1 100); do
    curl -s --max-time 120 -o /dev/null -I -w '%{http_code} %header{content-length}\n' \
      "http://$FERRY/v2/library/test/blobs/$d" >>"$WORK/headherd.codes" &
    pids+=($!)
    sleep 0.003
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  settle
  codes=$(sort "$WORK/headherd.codes" | uniq -c | awk '{print $1 "x" $2 " " $3}')
  [ "$(grep -c "^200 $size\$" "$WORK/headherd.codes")" = 100 ] || fail "answers (want 100x200 $size): $codes"
  local heads; heads=$(norm_log "$UPLOG" "$up" | grep -cE "^HEAD /v2/.+/blobs/$d" || true)
  counts "100 cold HEADs: upstream HEADs=$heads"
  if [ "$MIRROR" = ferry ]; then
    [ "$heads" = 1 ] || fail "$heads upstream HEADs for 100 cold HEADs"
    ok "100 answered 200 ($codes), 1 upstream HEAD"
  else
    note "stand-in: $heads upstream HEADs for 100 cold HEADs (not enforced)"
  fi
}

case_prefetch() {
  if [ "$MIRROR" != ferry ]; then note "prefetch is Ferry's admin API; skipped"; return 0; fi
  local msrc=docker://$UPSTREAM/library/multi:1.0 conf=$WORK/registries-host.conf
  local out=$WORK/prefetch up report want fetched warm
  mkdir -p "$out"
  step "ferry prefetch --admin http://127.0.0.1:$APORT --upstream $UPSTREAM --repository library/multi --reference 1.0"
  up=$(lines "$UPLOG")
  report=$("$FERRY_BIN" prefetch --admin "http://127.0.0.1:$APORT" --upstream "$UPSTREAM" \
    --repository library/multi --reference 1.0) || fail "prefetch failed: $report"
  echo "    $report"
  settle
  [ "$(jq -r .digest <<<"$report")" = "$(x .multi.index)" ] || fail "prefetch resolved another digest"
  want=$(x '[.multi.platforms[] | .blobs[]] | unique | length')
  fetched=$(jq -r .blobs_fetched <<<"$report")
  [ "$fetched" = "$want" ] || fail "prefetch fetched $fetched blobs, the image has $want"
  expect_upstream_once "$up" "prefetch" $(x '.multi.platforms[] | .blobs[]')
  step "skopeo copy --multi-arch all $msrc oci: after the prefetch"
  write_registries_conf "$conf" "$FERRY"
  up=$(lines "$UPLOG")
  run_logged copy-multi env CONTAINERS_REGISTRIES_CONF="$conf" skopeo --registries-conf "$conf" \
    --policy "$WORK/policy.json" copy --multi-arch all "$msrc" "oci:$out/multi:1.0"
  settle
  sk_verify_oci_multi "$out/multi"
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "skopeo copy after prefetch"
  counts "multi:1.0 prefetched=$fetched pull=$warm"
}

# ct_pull_mirror_only NAME NAMESPACE MIRROR_URL [TOML_LINE...]: ctr pulls
# $UPSTREAM/library/test:1.0 through a hosts.toml whose only live host is MIRROR_URL
# (extra lines appended to its table); server is a dead port, so there is no
# fallback. Ferry must have resolved the tag. The content may be in containerd's
# store already: what matters is that the resolve went through Ferry.
ct_pull_mirror_only() {
  local name=$1 ns=$2 url=$3 hosts=$WORK/certs.d-$1 mm; shift 3
  mkdir -p "$hosts/$UPSTREAM"
  {
    printf 'server = "http://127.0.0.1:%s"\n\n[host."%s"]\n' "$DEADPORT" "$url"
    printf '  capabilities = ["pull", "resolve"]\n'
    printf '%s\n' "$@"
  } >"$hosts/$UPSTREAM/hosts.toml"
  mm=$(lines "$MLOG")
  run_logged "$name" ctr --address "$CTDSOCK" -n "$ns" images pull --hosts-dir "$hosts" \
    --snapshotter native "$UPSTREAM/library/test:1.0"
  settle
  grep -qE "^HEAD /v2/library/test/manifests/1\.0[?]ns=[^ ]+ 200$" <<<"$(mirror_lines "$mm")" \
    || { mirror_lines "$mm" | sed 's/^/    | /' >&2; fail "Ferry did not resolve the tag for containerd ($name)"; }
}

# make_test_ca DIR: a CA (DIR/certs/ca.crt) and a leaf for 127.0.0.1 signed by it.
make_test_ca() {
  local d=$1
  mkdir -p "$d/certs"
  echo "subjectAltName=IP:127.0.0.1" >"$d/leaf.ext"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ferry-e2e-ca \
    -keyout "$d/ca.key" -out "$d/certs/ca.crt" 2>/dev/null &&
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
    -keyout "$d/leaf.key" -out "$d/leaf.csr" 2>/dev/null &&
  openssl x509 -req -days 1 -in "$d/leaf.csr" -CA "$d/certs/ca.crt" -CAkey "$d/ca.key" \
    -CAcreateserial -extfile "$d/leaf.ext" -out "$d/leaf.pem" 2>/dev/null
}

case_tls() {
  if [ "$MIRROR" != ferry ]; then note "TLS listener is Ferry's; skipped"; return 0; fi
  local ref=$FERRY/library/test:1.0 out=$WORK/tls-out up mm
  mkdir -p "$out"
  step "skopeo copy docker://$ref over HTTPS, the test CA in --src-cert-dir"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged copy-tls skopeo --policy "$WORK/policy.json" copy --src-cert-dir "$WORK/tls/certs" \
    "docker://$ref" "dir:$out/test"
  settle
  sk_verify_dir "$out/test"
  expect_mirror_served "$mm" "skopeo over TLS" $(x '.test.blobs[]')
  step "skopeo without the CA is refused"
  if skopeo --policy "$WORK/policy.json" copy "docker://$ref" "dir:$out/untrusted" \
      >"$LOGS/$CASE-untrusted.log" 2>&1; then
    fail "a client without the CA pulled over TLS"
  fi
  grep -qiE 'certificate|x509' "$LOGS/$CASE-untrusted.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-untrusted.log" >&2; fail "no certificate error"; }
  ok "untrusted client refused: $(grep -oiE 'x509[^"]{0,60}' "$LOGS/$CASE-untrusted.log" | head -1)"
  step "ctr images pull --hosts-dir: hosts.toml mirror https://$FERRY with ca = the test CA"
  ct_pull_mirror_only ctr-tls "$CT_NS-tls" "https://$FERRY" "  ca = \"$WORK/tls/certs/ca.crt\""
  ok "skopeo and containerd pulled over HTTPS; an untrusting client was refused"

  local trlog=$LOGS/tls-registry.log tr=$WORK/tls-registry.yml n d
  step "an upstream on HTTPS: docker-registry on https://127.0.0.1:$TRPORT (the test CA), upstream tlsreg with ca_file"
  printf 'version: 0.1\nlog: {level: info}\nstorage:\n  filesystem: {rootdirectory: %s}\nhttp:\n  addr: 127.0.0.1:%s\n  tls: {certificate: %s, key: %s}\n' \
    "$WORK/upstream-data" "$TRPORT" "$WORK/tls/leaf.pem" "$WORK/tls/leaf.key" >"$tr"
  start_bg tlsregistry "$trlog" docker-registry serve "$tr"
  wait_until 20 tlsregistry curl -sf --cacert "$WORK/tls/certs/ca.crt" -o /dev/null "https://127.0.0.1:$TRPORT/v2/" \
    || { tail -5 "$trlog" >&2; fail "the TLS registry did not start"; }
  mm=$(lines "$MLOG")
  run_logged copy-tlsreg skopeo --policy "$WORK/policy.json" copy --src-cert-dir "$WORK/tls/certs" \
    "docker://$FERRY/tlsreg/library/test:1.0" "dir:$out/tlsreg" || fail "skopeo through Ferry from the TLS registry failed"
  settle
  sk_verify_dir "$out/tlsreg"
  # test:1.0's blobs are in Ferry's store already (same content, content-addressed):
  # the manifest comes from the TLS registry, and one blob Ferry has never seen.
  grep -qE '^GET /v2/library/test/manifests/1\.0 200$' <<<"$(norm_log "$trlog" 0)" \
    || { norm_log "$trlog" 0 | sed 's/^/    | tls registry: /' >&2; fail "Ferry did not GET the manifest from the TLS registry"; }
  d=$(x '.multi.platforms["linux/arm64"].blobs[-1]')
  [ "$(curl -s --cacert "$WORK/tls/certs/ca.crt" --max-time 20 "https://$FERRY/v2/tlsreg/library/multi/blobs/$d" \
    | sha256sum | cut -d' ' -f1)" = "${d#sha256:}" ] || fail "blob $d through tlsreg: wrong bytes"
  settle
  n=$(norm_log "$trlog" 0 | grep -cF "GET /v2/library/multi/blobs/$d 200" || true)
  [ "$n" = 1 ] || { norm_log "$trlog" 0 | sed 's/^/    | tls registry: /' >&2; fail "the TLS registry served blob $d $n times, not once"; }
  ok "Ferry fetched from the HTTPS registry, its certificate checked with ca_file: test:1.0's manifest, and blob ${d:0:19}… once (verified)"
  step "the same registry without ca_file (upstream tlsnoca): refused for its certificate"
  mm=$(lines "$MLOG")
  n=$(curl -s -o "$WORK/tlsnoca.json" -w '%{http_code}' --cacert "$WORK/tls/certs/ca.crt" --max-time 20 \
    "https://$FERRY/v2/tlsnoca/library/test/manifests/1.0")
  [ "$n" = 503 ] || fail "tlsnoca: $n, not 503 ($(head -c 300 "$WORK/tlsnoca.json"))"
  jq -e '.errors[0].code == "UNAVAILABLE"' "$WORK/tlsnoca.json" >/dev/null \
    || fail "tlsnoca: not UNAVAILABLE: $(head -c 300 "$WORK/tlsnoca.json")"
  settle
  got=$(tail -n +"$((mm + 1))" "$MLOG" | grep -E 'WARN.*upstream unreachable' | grep -iE 'certificate|UnknownIssuer' | head -1)
  [ -n "$got" ] || { tail -n +"$((mm + 1))" "$MLOG" | sed 's/^/    | /' >&2; fail "tlsnoca: Ferry's log does not name the certificate problem"; }
  ok "tlsnoca: 503 UNAVAILABLE; Ferry's log says why: $(grep -oiE 'invalid peer certificate[^"]{0,40}|UnknownIssuer' <<<"$got" | head -1)"
  stop_bg tlsregistry || true
  counts "test:1.0 over HTTPS (skopeo, containerd); an HTTPS upstream via ca_file, refused without"
}

case_clientauth() {
  if [ "$MIRROR" != ferry ]; then note "client authentication is Ferry's; skipped"; return 0; fi
  local ref=$FERRY/library/test:1.0 up
  dk_clean
  dk logout "$FERRY" >/dev/null 2>&1 || true
  step "docker pull $ref without credentials: refused"
  up=$(lines "$UPLOG")
  if "${DKC[@]}" pull "$ref" >"$LOGS/$CASE-pull-anon.log" 2>&1; then
    fail "an anonymous pull succeeded"
  fi
  grep -qiE 'unauthorized|authentication required|no basic auth' "$LOGS/$CASE-pull-anon.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-pull-anon.log" >&2; fail "docker did not report an auth error"; }
  settle
  [ "$(norm_log "$UPLOG" "$up" | grep -c .)" = 0 ] || fail "an anonymous pull reached upstream"
  ok "anonymous pull refused, nothing asked upstream"
  step "docker login $FERRY, then docker pull $ref"
  echo e2e-secret | run_logged login "${DKC[@]}" login "$FERRY" -u node --password-stdin
  run_logged pull-auth "${DKC[@]}" pull "$ref"
  settle
  dk_verify "$ref" "$(x .test.manifest)" "$(x .test.config)" "$(x -c .test.diff_ids)"
  dk logout "$FERRY" >/dev/null 2>&1 || true
  dk_clean
  step "ctr images pull --user node:… --plain-http $ref"
  run_logged ctr-pull ctr --address "$CTDSOCK" -n "$CT_NS-auth" images pull --plain-http \
    --user node:e2e-secret "$ref"
  step "ctr images pull --hosts-dir: hosts.toml mirror sending an Authorization header"
  ct_pull_mirror_only ctr-hosts "$CT_NS-auth2" "http://$FERRY" \
    "  [host.\"http://$FERRY\".header]" \
    "    authorization = \"Basic $(printf 'node:e2e-secret' | base64)\""
  ok "docker (after login), ctr (--user) and containerd (hosts.toml header) pulled through an authenticated Ferry"
  counts "test:1.0 docker+ctr with credentials, anonymous refused"
}

# A registry whose notifications go to Ferry; a manifest pushed under a tag
# Ferry has cached is seen through Ferry from the event alone.
case_events() {
  if [ "$MIRROR" != ferry ]; then note "push events are Ferry's; skipped"; return 0; fi
  local reg=127.0.0.1:$EVPORT evlog=$LOGS/events-upstream.log d0 d1 t0 t1 ms m up
  cat >"$WORK/events-upstream.yml" <<YML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $WORK/events-data}
  delete: {enabled: true}
http: {addr: $reg}
notifications:
  endpoints:
    - name: ferry
      url: http://$FERRY/events/evreg
      headers: {Authorization: [Bearer e2e-events-secret-0123]}
      timeout: 2s
      threshold: 3
      backoff: 1s
      ignore: {actions: [pull]}
YML
  start_bg evupstream "$evlog" docker-registry serve "$WORK/events-upstream.yml"
  wait_until 20 evupstream http_ok "http://$reg/v2/" || fail "events upstream did not start"
  python3 "$HERE/seed.py" "http://$reg" 1 >"$WORK/events-expected.json" 2>>"$LOGS/seed.log" \
    || fail "seeding the events upstream failed"
  d0=$(jq -r .test.manifest "$WORK/events-expected.json")
  step "HEAD test:1.0 through Ferry caches $d0"
  head_digest() {
    curl -sfI -H "Accept: application/vnd.docker.distribution.manifest.v2+json" \
      "http://$FERRY/v2/library/test/manifests/1.0" | tr -d '\r' \
      | awk 'tolower($1)=="docker-content-digest:"{print $2}'
  }
  [ "$(head_digest)" = "$d0" ] || fail "Ferry did not resolve test:1.0 to $d0"
  step "push a new manifest under test:1.0 (an annotation added)"
  m=$WORK/events-new-manifest.json
  curl -sf -H "Accept: application/vnd.docker.distribution.manifest.v2+json" \
    "http://$reg/v2/library/test/manifests/$d0" | jq -c '.annotations = {"e2e": "moved"}' >"$m"
  d1="sha256:$(sha256sum "$m" | cut -d' ' -f1)"
  up=$(lines "$evlog")
  t0=$(date +%s%N)
  curl -sf -X PUT -H "Content-Type: application/vnd.docker.distribution.manifest.v2+json" \
    --data-binary "@$m" "http://$reg/v2/library/test/manifests/1.0" >/dev/null || fail "push failed"
  for _ in $(seq 1 100); do
    [ "$(head_digest)" = "$d1" ] && break
    sleep 0.02
  done
  t1=$(date +%s%N)
  [ "$(head_digest)" = "$d1" ] || fail "Ferry still answers the old digest 2s after the push"
  ms=$(( (t1 - t0) / 1000000 ))
  settle
  local heads
  heads=$(norm_log "$evlog" "$up" | grep -cE '^HEAD /v2/library/test/manifests/' || true)
  ok "the moved tag was seen through Ferry ${ms} ms after the push; upstream manifest HEADs since: $heads"
  [ "$heads" = 0 ] || fail "Ferry asked upstream ($heads HEADs) although the event said it all"
  ((ms < 1000)) || fail "seen after ${ms} ms, not within a second"
  step "delete the manifest upstream: the tag is gone from Ferry"
  curl -sf -X DELETE "http://$reg/v2/library/test/manifests/$d1" >/dev/null || fail "delete failed"
  local status=
  for _ in $(seq 1 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' -I "http://$FERRY/v2/library/test/manifests/1.0")
    [ "$status" = 404 ] && break
    sleep 0.02
  done
  [ "$status" = 404 ] || fail "after the delete Ferry answered $status, not 404"
  ok "after the delete Ferry answers 404 for test:1.0"
  counts "moved tag seen in ${ms}ms, upstream manifest HEADs=$heads"
  stop_bg evupstream || true
}

# containerd configured by `ferry node-config` alone: no hand-written hosts.toml.
case_nodeconfig() {
  if [ "$MIRROR" != ferry ]; then note "node-config is Ferry's; skipped"; return 0; fi
  local dir=$WORK/nc-certs.d cfg=$WORK/ferry-nc.toml out mm
  mkdir -p "$dir/other.example"
  echo 'server = "https://other.example"' >"$dir/other.example/hosts.toml"   # the operator's own
  printf '[[upstream]]\nname = "local"\nurl = "http://%s"\n' "$UPSTREAM" >"$cfg"
  step "ferry node-config --ferry-url http://$FERRY --containerd-dir $dir"
  out=$("$FERRY_BIN" node-config --ferry-url "http://$FERRY" --config "$cfg" --containerd-dir "$dir") \
    || fail "node-config failed: $out"
  echo "$out" | sed 's/^/    | /'
  [ -f "$dir/$UPSTREAM/hosts.toml" ] || fail "no hosts.toml for $UPSTREAM"
  mm=$(lines "$MLOG")
  run_logged nc-pull ctr --address "$CTDSOCK" -n nodeconfig images pull --hosts-dir "$dir" \
    --snapshotter native "$UPSTREAM/library/test:1.0"
  settle
  grep -qE "^HEAD /v2/library/test/manifests/1\.0[?]ns=[^ ]+ 200$" <<<"$(mirror_lines "$mm")" \
    || fail "containerd did not resolve through Ferry with node-config's hosts.toml"
  ok "containerd pulled test:1.0 through Ferry with the generated hosts.toml"
  out=$("$FERRY_BIN" node-config --ferry-url "http://$FERRY" --config "$cfg" --containerd-dir "$dir")
  grep -q '^wrote' <<<"$out" && fail "a second run rewrote files: $out"
  grep -q '^unchanged' <<<"$out" || fail "a second run reported nothing: $out"
  ok "a second run changes nothing"
  "$FERRY_BIN" node-config --remove --config "$cfg" --containerd-dir "$dir" >/dev/null \
    || fail "node-config --remove failed"
  [ ! -e "$dir/$UPSTREAM" ] || fail "--remove left $dir/$UPSTREAM behind"
  [ "$(cat "$dir/other.example/hosts.toml")" = 'server = "https://other.example"' ] \
    || fail "--remove touched the operator's own hosts.toml"
  ok "--remove restored the directory (the operator's file untouched)"
  counts "pull through generated hosts.toml ok"
}

# A CA and a webhook certificate for ferry-webhook.ferry-system.svc (what the API server checks).
make_webhook_cert() {
  local d=$1
  mkdir -p "$d"
  echo "subjectAltName=DNS:ferry-webhook.ferry-system.svc" >"$d/leaf.ext"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ferry-e2e-webhook-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null &&
  openssl req -newkey rsa:2048 -nodes -subj /CN=ferry-webhook.ferry-system.svc \
    -keyout "$d/leaf.key" -out "$d/leaf.csr" 2>/dev/null &&
  openssl x509 -req -days 1 -in "$d/leaf.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
    -CAcreateserial -extfile "$d/leaf.ext" -out "$d/leaf.pem" 2>/dev/null
}

# The webhook pins a pod's image and warms it; the pull that follows is free.
case_admission() {
  if [ "$MIRROR" != ferry ]; then note "the admission webhook is Ferry's; skipped"; return 0; fi
  local review=$WORK/admission-review.json answer patch pinned up hosts=$WORK/certs.d-admission blobs n
  jq --arg img "$UPSTREAM/library/test:1.0" \
    '.request.object.spec.containers[0].image = $img' \
    "$REPO/tests/fixtures/admission/dry-run.json" | jq '.request.dryRun = false' >"$review"
  up=$(lines "$UPLOG")
  step "POST an AdmissionReview for a pod with $UPSTREAM/library/test:1.0 (HTTPS, SNI ferry-webhook.ferry-system.svc)"
  answer=$(curl -sSf --noproxy "*" --cacert "$WORK/wh/ca.crt" --resolve "ferry-webhook.ferry-system.svc:$WHPORT:127.0.0.1" \
    -H 'Content-Type: application/json' --data-binary "@$review" \
    "https://ferry-webhook.ferry-system.svc:$WHPORT/mutate?timeout=5s") || fail "the webhook did not answer"
  [ "$(jq -r .response.uid <<<"$answer")" = "$(jq -r .request.uid "$review")" ] || fail "uid not echoed"
  patch=$(jq -r .response.patch <<<"$answer" | base64 -d)
  pinned=$(jq -r '.[0].value' <<<"$patch")
  [ "$pinned" = "$UPSTREAM/library/test:1.0@$(x .test.manifest)" ] || fail "pinned to $pinned"
  ok "pinned to $pinned"
  # Warm on admission: wait until every blob of test:1.0 is in Ferry's store.
  blobs=$(x '.test.layers | length + 1')
  for _ in $(seq 1 150); do
    n=$(curl -s "http://$FERRY/metrics" | awk '/^ferry_store_blobs /{print $2}')
    [ "${n:-0}" -ge "$blobs" ] && [ "$(curl -s "http://$FERRY/metrics" | awk '/^ferry_inflight_fetches /{print $2}')" = 0 ] && break
    sleep 0.1
  done
  [ "${n:-0}" -ge "$blobs" ] || fail "warm on admission stored $n of $blobs blobs"
  ok "warmed on admission: $n blobs stored"
  settle
  up=$(lines "$UPLOG")
  mkdir -p "$hosts/$UPSTREAM"
  printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' \
    "$UPSTREAM" "$FERRY" >"$hosts/$UPSTREAM/hosts.toml"
  run_logged adm-pull ctr --address "$CTDSOCK" -n admission images pull --hosts-dir "$hosts" \
    --snapshotter native "$pinned"
  settle
  local manifests gets
  manifests=$(norm_log "$UPLOG" "$up" | grep -cE '/manifests/' || true)
  gets=$(up_blob_gets "$up")
  ok "containerd pulled the pinned reference: upstream manifest requests $manifests, blob GETs $gets"
  [ "$manifests" = 0 ] || fail "the pinned pull asked upstream for manifests ($manifests)"
  [ "$gets" = 0 ] || fail "the pull after warming fetched $gets blobs upstream"
  counts "pinned pull: upstream manifests=$manifests blob GETs=$gets"
}

# ---------------------------------------------------------------- case private
# A private registry: distribution with htpasswd, seeded through a twin process
# on the same storage without auth (as tests/e2e/cri-selftest.sh does). Every
# valid htpasswd user may pull every repository, so two users play the roles:
# ferry (Ferry's own upstream credentials) and alice (the pod's pull secret).
PRIVATE=127.0.0.1:$PRPORT
PRIV_FERRY_PW=ferry-upstream-pw-e2e
PRIV_ALICE_PW=s3cret
private_registry_config() {   # private_registry_config PORT [auth]
  printf 'version: 0.1\nlog: {level: info}\nstorage:\n  filesystem: {rootdirectory: %s}\n' "$WORK/private-data"
  printf 'http: {addr: 127.0.0.1:%s}\n' "$1"
  [ "${2:-}" = auth ] && printf 'auth: {htpasswd: {realm: private-e2e, path: %s}}\n' "$WORK/private.htpasswd"
  return 0
}
# What the private registry was asked after line FROM, digests shortened, counted.
private_summary() {   # private_summary FROM
  local got; got=$(norm_log "$UPLOG" "$1" | sed -E 's#sha256:[0-9a-f]{64}#<digest>#' | sort | uniq -c)
  if [ -n "$got" ]; then sed 's/^ */      /' <<<"$got"; else echo "      (no requests)"; fi
}
# distribution names the user only on its error lines ("response completed with
# error", "error authenticating user"): lines after FROM naming USER for URI.
private_user_lines() {   # private_user_lines FROM USER URI
  tail -n +"$(($1 + 1))" "$UPLOG" | grep -E 'auth\.user\.name="?'"$2"'"? |user \\"'"$2"'\\"' \
    | grep -cF -e "http.request.uri=\"$3\"" -e "http.request.uri=$3 " || true
}
# cri_pull LOGNAME [cri.py pull FLAG...]: PullImage of $PRIV_IMG on the CRI node,
# stdout and stderr in $LOGS/private-LOGNAME.log.
cri_pull() {
  local out=$LOGS/$CASE-$1.log; shift
  echo "\$ cri.py --socket $PRIV_SOCK pull $PRIV_IMG $*" >"$out"
  cri --socket "$PRIV_SOCK" pull "$PRIV_IMG" --timeout "$PULL_TIMEOUT" "$@" >>"$out" 2>&1
}
cri_pull_ok() {   # cri_pull_ok LOGNAME FLAG...: the pull works and prints the config digest
  cri_pull "$@" || { sed 's/^/    | /' "$LOGS/$CASE-$1.log" >&2; fail "PullImage ($1) failed"; }
  [ "$(tail -1 "$LOGS/$CASE-$1.log")" = "$(px .test.config)" ] \
    || { sed 's/^/    | /' "$LOGS/$CASE-$1.log" >&2; fail "PullImage ($1) did not print the config $(px .test.config)"; }
  ok "PullImage ($1) -> $(px .test.config)"
}
# cri_pull_refused LOGNAME FLAG...: the pull fails with Ferry's 401; meanwhile Ferry
# answered nothing but 401s (no manifest, no blob), fetched no blob upstream, and the
# node has neither the image nor any blob.
cri_pull_refused() {
  local name=$1 mm up got; shift
  mm=$(lines "$MLOG"); up=$(lines "$UPLOG")
  if cri_pull "$name" "$@"; then fail "PullImage ($name) succeeded"; fi
  settle
  grep -qF "401 Unauthorized" "$LOGS/$CASE-$name.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-$name.log" >&2; fail "PullImage ($name): no 401 Unauthorized in the error"; }
  grep -qF "$FERRY" "$LOGS/$CASE-$name.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-$name.log" >&2; fail "PullImage ($name): the error does not name Ferry's host"; }
  got=$(mirror_lines "$mm")
  grep -qE "^HEAD /v2/library/test/manifests/1\.0[?]ns=[^ ]+ 401$" <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "PullImage ($name): Ferry did not answer the manifest HEAD with 401"; }
  grep -vqE ' 401$' <<<"$got" \
    && { sed 's/^/    | /' <<<"$got" >&2; fail "PullImage ($name): Ferry answered something else than 401"; }
  expect_zero_upstream "$up" "PullImage ($name)"
  cri --socket "$PRIV_SOCK" status "$PRIV_IMG" >/dev/null 2>&1 && fail "PullImage ($name): the image is on the node"
  [ -z "$(ls "$PRIV_NODE/root/io.containerd.content.v1.content/blobs/sha256" 2>/dev/null)" ] \
    || fail "PullImage ($name): blobs reached the node's content store"
  ok "PullImage ($name) refused; Ferry answered $(grep -c . <<<"$got") requests, all 401; no blob reached the node"
  echo "    $(tail -1 "$LOGS/$CASE-$name.log" | cut -c1-260)"
}
px() { jq -r "$@" "$WORK/private-expected.json"; }
# only_401s FROM WHAT MANIFEST_RE: after line FROM, Ferry answered the manifest
# (path matching MANIFEST_RE) and every other repository request with 401, and
# prints how many there were. GET /v2/ passes any credentials (they are judged
# per repository), so it is left out.
only_401s() {
  local got; got=$(mirror_lines "$1" | grep -vE '^(GET|HEAD) /v2/ ' || true)
  grep -qE "$3 401\$" <<<"$got" \
    || { sed 's/^/    | /' <<<"$got" >&2; fail "$2: Ferry did not answer the manifest with 401"; }
  grep -vqE ' 401$' <<<"$got" \
    && { sed 's/^/    | /' <<<"$got" >&2; fail "$2: Ferry answered a repository request with other than 401"; }
  grep -c . <<<"$got"
}
   # px [JQ_OPTION...] FILTER

# Upstream-checked access: Ferry has everything cached, yet serves a client only
# what the upstream would give that client, and a digest only in its repository.
case_private() {
  if [ "$MIRROR" != ferry ]; then note "upstream-checked access is Ferry's; skipped"; return 0; fi
  local UPLOG=$LOGS/private-upstream.log hosts=$WORK/certs.d-private up mm got cold warm n layer
  local alice=(--username alice --password "$PRIV_ALICE_PW")
  PRIV_IMG=$PRIVATE/library/test:1.0 PRIV_NODE=$WORK/cri PRIV_SOCK=$WORK/cri/sock
  # The case runs in a subshell: stop its CRI node however it ends (cleanup's pid
  # file is the safety net).
  trap 'stop_all_cri_nodes || true; rm -f "$WORK/pids/cri-private.pid"' EXIT

  step "a private registry $PRIVATE (htpasswd: ferry = Ferry's credentials, alice = the pull secret)"
  { htpasswd -Bbn ferry "$PRIV_FERRY_PW" && htpasswd -Bbn alice "$PRIV_ALICE_PW"; } \
    >"$WORK/private.htpasswd" 2>/dev/null || fail "htpasswd failed"
  private_registry_config "$PRPORT" auth >"$WORK/private-up.yml"
  private_registry_config "$PSPORT" >"$WORK/private-seed.yml"
  start_bg privupstream "$UPLOG" docker-registry serve "$WORK/private-up.yml"
  start_bg privseed "$LOGS/private-seed-registry.log" docker-registry serve "$WORK/private-seed.yml"
  wait_until 20 privupstream status_is 401 "http://$PRIVATE/v2/" || fail "the private registry did not start"
  wait_until 20 privseed status_is 200 "http://127.0.0.1:$PSPORT/v2/" || fail "the seeding registry did not start"
  python3 "$HERE/seed.py" "http://127.0.0.1:$PSPORT" 1 >"$WORK/private-expected.json" 2>>"$LOGS/seed.log" \
    || fail "seeding the private registry failed"
  stop_bg privseed || true   # (|| true: its wait returns the SIGTERM status under set -e)
  status_is 401 "http://$PRIVATE/v2/library/test/manifests/1.0" || fail "the private registry serves anonymous pulls"
  status_is 200 "http://$PRIVATE/v2/library/test/manifests/1.0" -u "alice:$PRIV_ALICE_PW" \
    -H "Accept: application/vnd.docker.distribution.manifest.v2+json" || fail "alice cannot pull from the private registry"
  ok "seeded $PRIV_IMG (manifest $(px .test.manifest)); anonymous 401, alice 200"

  step "curl through Ferry without credentials: 401, WWW-Authenticate: Basic realm=\"ferry\""
  up=$(lines "$UPLOG")
  curl -s -o /dev/null -D "$WORK/private-anon.headers" --max-time 10 \
    "http://$FERRY/v2/library/test/manifests/1.0?ns=$PRIVATE" || fail "curl failed"
  head -1 "$WORK/private-anon.headers" | grep -q ' 401' || fail "anonymous: $(head -1 "$WORK/private-anon.headers")"
  grep -qiE '^www-authenticate: Basic realm="ferry"'$'\r''?$' "$WORK/private-anon.headers" \
    || { sed 's/^/    | /' "$WORK/private-anon.headers" >&2; fail "anonymous: no WWW-Authenticate: Basic realm=\"ferry\""; }
  status_is 401 "http://$FERRY/v2/" || fail "anonymous GET /v2/ is not 401"
  # Not the CRI pull's wrong password below: Ferry keeps a "no" for negative_ttl (30 s).
  status_is 401 "http://$FERRY/v2/library/test/manifests/1.0?ns=$PRIVATE" -u alice:not-her-password \
    || fail "a wrong password is not 401"
  settle
  n=$(private_user_lines "$up" alice "/v2/library/test/tags/list?n=1")
  ((n > 0)) || { private_summary "$up" >&2; fail "the registry was not asked with alice's wrong password"; }
  ok "anonymous and wrong-password requests: 401 Basic realm=\"ferry\" (GET /v2/ too); upstream:"
  private_summary "$up"

  step "a CRI node (containerd $(containerd --version | awk '{print $3}')): hosts.toml mirror http://$FERRY for $PRIVATE"
  # server is a closed port: a refusal must be Ferry's, not the registry's after a fallback.
  mkdir -p "$hosts/$PRIVATE"
  cat >"$hosts/$PRIVATE/hosts.toml" <<TOML
server = "http://127.0.0.1:$DEADPORT"

[host."http://$FERRY"]
  capabilities = ["pull", "resolve"]
TOML
  CRI_STREAM_PORT=$CRIPORT start_cri_node private "$PRIV_NODE" "$hosts" || fail "the CRI node did not start"
  cp "$PRIV_NODE/pid" "$WORK/pids/cri-private.pid"

  step "cold: PullImage $PRIV_IMG with alice's credentials (AuthConfig)"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  cri_pull_ok pull-cold "${alice[@]}"
  settle
  expect_ns "$mm" "$PRIVATE"
  expect_mirror_served "$mm" "PullImage (cold)" $(px '.test.blobs[]')
  expect_upstream_once "$up" "PullImage (cold)" $(px '.test.blobs[]')
  cold=$(up_blob_gets "$up")
  got=$(norm_log "$UPLOG" "$up")
  grep -qE "^GET /v2/library/test/tags/list[?]n=1 200$" <<<"$got" \
    || { sed 's/^/    | private registry: /' <<<"$got" >&2; fail "Ferry did not ask the registry about alice's access"; }
  ok "upstream: access asked (GET tags/list?n=1), $cold blob GETs"
  echo "    private registry saw (count, request):"; private_summary "$up"

  step "RemoveImage: the node forgets the image (the next pull must go through Ferry)"
  cri --socket "$PRIV_SOCK" rmi "$PRIV_IMG" || fail "RemoveImage failed"
  cri --socket "$PRIV_SOCK" status "$PRIV_IMG" >/dev/null 2>&1 && fail "the image is still on the node"
  for _ in $(seq 1 50); do
    [ -z "$(ls "$PRIV_NODE/root/io.containerd.content.v1.content/blobs/sha256" 2>/dev/null)" ] && break
    sleep 0.1
  done
  [ -z "$(ls "$PRIV_NODE/root/io.containerd.content.v1.content/blobs/sha256" 2>/dev/null)" ] \
    || fail "blobs left in the node's content store after RemoveImage"
  ok "image and blobs gone from the node"

  step "PullImage with a wrong password: refused by Ferry (everything is cached)"
  up=$(lines "$UPLOG")
  cri_pull_refused pull-wrong-password --username alice --password wrong
  n=$(private_user_lines "$up" alice "/v2/library/test/tags/list?n=1")
  ((n > 0)) || { private_summary "$up" >&2; fail "the registry did not see alice's wrong password asked"; }
  ok "Ferry asked the registry with alice's wrong password (tags/list: $n); upstream:"
  private_summary "$up"
  step "PullImage without credentials: refused by Ferry"
  up=$(lines "$UPLOG")
  cri_pull_refused pull-no-credentials
  echo "    upstream (an anonymous \"no\" is kept for negative_ttl, so likely none):"; private_summary "$up"

  step "warm: PullImage with alice's credentials again"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  cri_pull_ok pull-warm "${alice[@]}"
  settle
  expect_ns "$mm" "$PRIVATE"
  expect_mirror_served "$mm" "PullImage (warm)" $(px '.test.blobs[]')
  warm=$(up_blob_gets "$up")
  expect_zero_upstream "$up" "PullImage (warm)"
  n=$(norm_log "$UPLOG" "$up" | grep -c . || true)
  ok "warm pull: $n upstream requests in all"
  [ "$n" = 0 ] || norm_log "$UPLOG" "$up" | sed 's/^/    | upstream: /'

  # containers/image (skopeo here; podman and CRI-O pull the same way), with a
  # path-prefix mirror and a closed port as the primary: an answer can only be Ferry's.
  # The prefix is the upstream's name: containers/image refuses host:port there.
  # It sends a mirror the credentials an auth file holds for the mirror's host
  # (podman login), not --src-creds (those are the primary's, c/image 5.23).
  local skconf=$WORK/registries-private.conf skout=$WORK/skopeo-private skref d who
  skref=docker://127.0.0.1:$DEADPORT/library/test:1.0
  write_registries_conf "$skconf" "$FERRY/private" "127.0.0.1:$DEADPORT"
  for who in "alice:$PRIV_ALICE_PW" alice:wrong; do
    printf '{"auths":{"%s":{"auth":"%s"}}}\n' "$FERRY" "$(printf %s "$who" | base64 -w0)" >"$WORK/auth-${who#alice:}.json"
  done
  local SKP=(skopeo --registries-conf "$skconf" --policy "$WORK/policy.json")
  step "skopeo $(skopeo --version | awk '{print $3}') copy through Ferry (mirror $FERRY/private, an auth file for $FERRY): alice, then a wrong password"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  run_logged skopeo-alice "${SKP[@]}" copy --src-authfile "$WORK/auth-$PRIV_ALICE_PW.json" "$skref" "dir:$skout" \
    || fail "skopeo copy with alice's credentials failed"
  [ "sha256:$(sha256sum <"$skout/manifest.json" | cut -d' ' -f1)" = "$(px .test.manifest)" ] \
    || fail "skopeo: manifest.json is not $(px .test.manifest)"
  for d in $(px '.test.blobs[]'); do
    [ "sha256:$(sha256sum <"$skout/${d#sha256:}" | cut -d' ' -f1)" = "$d" ] || fail "skopeo: blob $d missing or wrong"
  done
  settle
  expect_mirror_served "$mm" "skopeo copy (alice)" $(px '.test.blobs[]')
  expect_zero_upstream "$up" "skopeo copy (alice)"
  ok "skopeo: manifest $(px .test.manifest) and $(px '.test.blobs | length') blobs verified by content"
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  if run_logged skopeo-wrong "${SKP[@]}" copy --src-authfile "$WORK/auth-wrong.json" "$skref" "dir:$skout-wrong" 2>/dev/null; then
    fail "skopeo copy with a wrong password succeeded"
  fi
  grep -qiE "unauthorized|401" "$LOGS/$CASE-skopeo-wrong.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-skopeo-wrong.log" >&2; fail "skopeo (wrong password): the error is not a 401"; }
  settle
  n=$(only_401s "$mm" "skopeo (wrong password)" '/library/test/manifests/1\.0')
  expect_zero_upstream "$up" "skopeo copy (wrong password)"
  ok "skopeo (wrong password) refused: Ferry answered $n repository requests, all 401"

  # docker sends the credentials `docker login` stored for Ferry's host; the image
  # is named in Ferry's prefix form (<ferry>/<upstream name>/<repo>).
  local dref=$FERRY/private/library/test:1.0
  step "docker $(dk version -f '{{.Server.Version}}'): login $FERRY as alice, pull $dref"
  dk_clean
  dk logout "$FERRY" >/dev/null 2>&1 || true
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  printf %s "$PRIV_ALICE_PW" | run_logged docker-login "${DKC[@]}" login "$FERRY" -u alice --password-stdin \
    || fail "docker login as alice failed"
  run_logged docker-pull "${DKC[@]}" pull "$dref" || fail "docker pull as alice failed"
  [ "$(dk image inspect -f '{{.Id}}' "$dref")" = "$(px .test.config)" ] \
    || fail "docker: the image's id is not the config $(px .test.config)"
  settle
  expect_mirror_served "$mm" "docker pull (alice)" $(px '.test.layers[]')
  expect_zero_upstream "$up" "docker pull (alice)"
  ok "docker pulled $dref as alice: image id $(px .test.config)"
  step "docker: login with a wrong password (GET /v2/ passes it), pull refused"
  dk_clean
  up=$(lines "$UPLOG"); mm=$(lines "$MLOG")
  echo wrong | run_logged docker-login-wrong "${DKC[@]}" login "$FERRY" -u alice --password-stdin \
    || fail "docker login (any credentials pass /v2/) failed"
  if run_logged docker-pull-wrong "${DKC[@]}" pull "$dref" 2>/dev/null; then
    fail "docker pull with a wrong password succeeded"
  fi
  grep -qiE "unauthorized|401|denied|authentication required" "$LOGS/$CASE-docker-pull-wrong.log" \
    || { sed 's/^/    | /' "$LOGS/$CASE-docker-pull-wrong.log" >&2; fail "docker (wrong password): not an authorization error"; }
  settle
  only_401s "$mm" "docker (wrong password)" '/private/library/test/manifests/1\.0' >/dev/null
  expect_zero_upstream "$up" "docker pull (wrong password)"
  [ -z "$(dk images -aq)" ] || fail "docker (wrong password): an image reached dockerd"
  ok "docker (wrong password) refused: $(grep -oiE 'unauthorized[^"]{0,60}|authentication required[^"]{0,40}' "$LOGS/$CASE-docker-pull-wrong.log" | head -1)"
  dk logout "$FERRY" >/dev/null 2>&1 || true

  layer=$(px '.test.layers[1]')
  step "cross-repository: GET library/multi/blobs/${layer:0:19}… (a cached layer of library/test) as alice"
  status_is 200 "http://$PRIVATE/v2/library/multi/tags/list" -u "alice:$PRIV_ALICE_PW" \
    || fail "library/multi does not exist upstream"
  status_is 404 "http://$PRIVATE/v2/library/multi/blobs/$layer" -I -u "alice:$PRIV_ALICE_PW" \
    || fail "upstream has the layer under library/multi: the check proves nothing"
  ok "the registry itself: library/multi exists, without that layer (404)"
  settle
  up=$(lines "$UPLOG")
  [ "$(curl -s --max-time 10 -u "alice:$PRIV_ALICE_PW" "http://$FERRY/v2/library/test/blobs/$layer?ns=$PRIVATE" \
    | sha256sum | cut -d' ' -f1)" = "${layer#sha256:}" ] || fail "the layer under library/test is not served"
  ok "under library/test: 200, the layer's bytes"
  n=$(curl -s -o "$WORK/private-cross.json" -w '%{http_code}' --max-time 10 -u "alice:$PRIV_ALICE_PW" \
    "http://$FERRY/v2/library/multi/blobs/$layer?ns=$PRIVATE")
  [ "$n" = 404 ] || fail "under library/multi: $n, not 404 ($(head -c 300 "$WORK/private-cross.json"))"
  jq -e '.errors[0].code == "BLOB_UNKNOWN"' "$WORK/private-cross.json" >/dev/null \
    || fail "under library/multi: 404 without BLOB_UNKNOWN: $(head -c 300 "$WORK/private-cross.json")"
  ok "under library/multi: 404 $(jq -c '.errors[0] | {code, message}' "$WORK/private-cross.json")"
  settle
  expect_zero_upstream "$up" "cross-repository GETs"
  n=$(private_user_lines "$up" ferry "/v2/library/multi/blobs/$layer")
  ((n > 0)) || { private_summary "$up" >&2; fail "Ferry did not ask the registry (as ferry) whether library/multi has the layer"; }
  ok "Ferry asked the registry as ferry: HEAD library/multi/blobs/… -> 404; upstream (Ferry's requests):"
  private_summary "$up"

  step "a repository the registry does not have: 404 NAME_UNKNOWN"
  up=$(lines "$UPLOG")
  n=$(curl -s -o "$WORK/private-missing.json" -w '%{http_code}' --max-time 10 -u "alice:$PRIV_ALICE_PW" \
    "http://$FERRY/v2/library/nope/manifests/1.0?ns=$PRIVATE")
  if [ "$n" != 404 ] || ! jq -e '.errors[0].code == "NAME_UNKNOWN"' "$WORK/private-missing.json" >/dev/null; then
    fail "library/nope: $n $(head -c 300 "$WORK/private-missing.json")"
  fi
  settle
  n=$(private_user_lines "$up" alice "/v2/library/nope/tags/list?n=1")
  ((n > 0)) || { private_summary "$up" >&2; fail "Ferry did not ask the registry with alice's credentials"; }
  ok "library/nope: 404 NAME_UNKNOWN (the registry was asked with alice's credentials)"

  echo "    $(curl -s "http://$FERRY/metrics" | grep '^ferry_access_decisions_total' | paste -sd ' ')"
  counts "test:1.0 cold=$cold warm=$warm refused(wrong password, none)=0 cross-repo=404"
  stop_cri_node private || true
  rm -f "$WORK/pids/cri-private.pid"
  stop_bg privupstream || true
}

# ================================================================ main
mirror_args() {   # extra `ferry serve` arguments for a case (replacing --upstream)
  [ "$MIRROR" = ferry ] || return 0
  case $1 in
    dockerhub)
      cat >"$WORK/ferry-hub.toml" <<TOML
# The local registry plays Docker Hub: docker.io, index.docker.io and
# registry-1.docker.io (ns= or prefix) all route to it.
default_upstream = "docker.io"

[[upstream]]
name = "docker.io"
url = "http://$UPSTREAM"
TOML
      echo --config "$WORK/ferry-hub.toml" ;;
    prefetch) echo --upstream "http://$UPSTREAM" --admin-listen "127.0.0.1:$APORT" ;;
    tls)
      make_test_ca "$WORK/tls" >&2
      # tlsreg: the same registry content on HTTPS (case_tls starts it), trusted
      # through ca_file; tlsnoca: the same registry without it.
      cat >"$WORK/ferry-tls.toml" <<TOML
default_upstream = "local"
[[upstream]]
name = "local"
url = "http://$UPSTREAM"
[[upstream]]
name = "tlsreg"
url = "https://127.0.0.1:$TRPORT"
ca_file = "$WORK/tls/certs/ca.crt"
[[upstream]]
name = "tlsnoca"
url = "https://localhost:$TRPORT"
TOML
      echo --config "$WORK/ferry-tls.toml" --tls-cert "$WORK/tls/leaf.pem" --tls-key "$WORK/tls/leaf.key" ;;
    admission)
      make_webhook_cert "$WORK/wh" >&2
      cat >"$WORK/ferry-admission.toml" <<TOML
[[upstream]]
name = "local"
url = "http://$UPSTREAM"
[webhook]
listen = "127.0.0.1:$WHPORT"
tls_cert = "$WORK/wh/leaf.pem"
tls_key = "$WORK/wh/leaf.key"
TOML
      echo --config "$WORK/ferry-admission.toml" ;;
    events)
      cat >"$WORK/ferry-events.toml" <<TOML
[[upstream]]
name = "evreg"
url = "http://127.0.0.1:$EVPORT"
[upstream.events]
secret = "e2e-events-secret-0123"
TOML
      echo --config "$WORK/ferry-events.toml" ;;
    private)
      cat >"$WORK/ferry-private.toml" <<TOML
# The private registry (case_private starts it): Ferry fetches as ferry, and each
# client's right to pull is the registry's call, asked with the client's credentials.
[[upstream]]
name = "private"
url = "http://$PRIVATE"
username = "ferry"
password = "$PRIV_FERRY_PW"
[upstream.access]
ttl = "5m"
TOML
      echo --config "$WORK/ferry-private.toml" ;;
    clientauth)
      cat >"$WORK/ferry-auth.toml" <<TOML
[[upstream]]
name = "local"
url = "http://$UPSTREAM"

[[client]]
username = "node"
password = "e2e-secret"
TOML
      echo --config "$WORK/ferry-auth.toml" ;;
  esac
}

log "mirror=$MIRROR${FERRY_SRC:+ ($FERRY_SRC)} upstream=$UPSTREAM mirror-address=$FERRY cases: ${CASES[*]}"
log "work dir $WORK"
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"   # skopeo
start_upstream
log "seeding upstream (test:1.0 with a ${RANDOM_MB} MB random layer, multi:1.0 amd64+arm64)"
python3 "$HERE/seed.py" "http://$UPSTREAM" "$RANDOM_MB" >"$EXP" 2>"$LOGS/seed.log" \
  || { cat "$LOGS/seed.log"; die "seeding failed"; }
log "test:1.0 manifest $(x .test.manifest), layers: $(x '.test.layers | join(" ")')"
log "multi:1.0 index $(x .multi.index), amd64 $(x '.multi.platforms["linux/amd64"].manifest'), arm64 $(x '.multi.platforms["linux/arm64"].manifest')"
if wants_any containerd parallel clientauth tls nodeconfig admission; then start_containerd containerd "$CTD"; fi
if wants_any docker dockermirror parallel clientauth private; then
  start_containerd containerd-docker "$DK/ctd"
  start_dockerd
fi

PASSED=() FAILED=()
for CASE in "${CASES[@]}"; do
  log "=== case $CASE"
  started=$SECONDS
  # shellcheck disable=SC2046
  MIRROR_TLS=; [ "$CASE" = tls ] && MIRROR_TLS=1
  if ! start_mirror "$CASE" $(mirror_args "$CASE"); then
    echo "FAIL $CASE (mirror did not start; log: $MLOG)"; FAILED+=("$CASE"); FAILED_ANY=1; continue
  fi
  ( set -eE; trap 'echo "  FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR; "case_$CASE" )
  rc=$?
  cnt=$(paste -sd ';' "$WORK/results/$CASE.counts" 2>/dev/null | sed 's/;/; /g')
  if ((rc == 0)); then
    PASSED+=("$CASE"); echo "PASS $CASE ($((SECONDS - started))s) upstream blob GETs: ${cnt:-n/a}"
  else
    FAILED+=("$CASE"); FAILED_ANY=1; echo "FAIL $CASE ($((SECONDS - started))s) upstream blob GETs: ${cnt:-n/a}; mirror log: $MLOG"
    if [ "${KEEP:-0}" != 1 ]; then
      echo "  last mirror log lines:"; tail -15 "$MLOG" | sed 's/^/    | /'
    fi
  fi
done
stop_bg mirror

echo
echo "== e2e summary (MIRROR=$MIRROR)"
for c in "${CASES[@]}"; do
  if [[ " ${PASSED[*]} " == *" $c "* ]]; then r=PASS; else r=FAIL; fi
  printf '%-4s %-13s %s\n' "$r" "$c" "$(paste -sd ';' "$WORK/results/$c.counts" 2>/dev/null | sed 's/;/; /g')"
  [ -f "$WORK/results/$c.notes" ] && sed 's/^/     note: /' "$WORK/results/$c.notes"
done
echo "e2e: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
((${#FAILED[@]} == 0))
