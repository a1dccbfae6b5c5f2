#!/usr/bin/env bash
# End-to-end test of Ferry's container image (docker/Dockerfile), all on 127.0.0.1:
#
#   tests/e2e/image.sh
#
#  a. a base image debian:bookworm-slim, made offline when the daemon has none:
#     debootstrap --variant=minbase into a tarball cached under /var/cache/ferry/,
#     then `docker import`
#  b. `docker build --target prebuilt --build-arg FERRY_BIN=...` of a binary built
#     outside, with Docker 20.10's legacy builder (the stage order must let it skip
#     the Rust builder); checks the image's user, ports, volume, entrypoint, and that
#     the binary runs in it; reports the image size
#  c. a real upstream (distribution 2.8.2) seeded with multi:1.0 (an OCI index of
#     linux/amd64 and linux/arm64, tests/e2e/seed.py) and big:1.0 (one random layer
#     of E2E_BIG_MB), behind a throttling TCP relay so a cold pull lasts seconds
#  d. the image run as compose and Kubernetes run it: `docker run -d --network host`,
#     read-only root, /tmp tmpfs, no capabilities, no-new-privileges, the config
#     file mounted, data in a named volume; waits for /readyz
#  e. multi:1.0 pulled through it by `docker pull` and by `ctr images pull
#     --all-platforms --plain-http`: every blob fetched from upstream exactly once
#  f. a cold pull of big:1.0 interrupted by `docker stop -t 30` (SIGTERM): the
#     container must exit before the 30 s deadline (the time is logged), not SIGKILLed
#  g. `docker start` again: /readyz answers, multi:1.0 is pulled again with zero
#     upstream blob GETs (the cache survived in the volume), big:1.0 pulls completely;
#     then `ferry fsck` of the stopped volume is clean
#
# Environment:
#   FERRY_BIN=PATH        the binary to put in the image (glibc, built on Debian 12);
#                         default /var/cache/ferry/target/debug/ferry (never built here)
#   READYZ_OPTIONAL=1     accept /healthz when /readyz answers 404 (binaries without it)
#   E2E_BIG_MB=200        size of big:1.0's random layer
#   E2E_THROTTLE_MBPS=20  upstream bandwidth per connection, MiB/s
#   KEEP=1                keep the work dir (logs, build context) afterwards
#
# Needs root on Debian 12; installs missing packages with apt-get. Starts its own
# containerds and dockerd (vfs, no iptables, no bridge) under a temp dir, binds only
# 127.0.0.1 ports in 16000-16999, and removes everything it started on exit.
# About 2 minutes once the base tarball is cached (the first run adds debootstrap).
set -eEuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PORT_RANGE=16000-16999
# log, die, start_bg, stop_bg, wait_until, pick_port, start_containerd...
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"
CACHE=/var/cache/ferry
BASE_TAR=$CACHE/debian-bookworm-minbase.tar
BIG_MB=${E2E_BIG_MB:-200}
THROTTLE_MBPS=${E2E_THROTTLE_MBPS:-20}
STOP_TIMEOUT=30
IMAGE=ferry:e2e
CNAME=ferry-e2e
VOLUME=ferry-e2e-data

ok() { log "ok: $*"; }

[ "$(id -u)" = 0 ] || die "run as root (dockerd, containerd, debootstrap and apt-get need it)"

# ---------------------------------------------------------------- packages
install_missing dockerd:docker.io docker:docker.io containerd:containerd ctr:containerd \
  docker-registry:docker-registry debootstrap:debootstrap curl:curl jq:jq python3:python3 \
  ss:iproute2 strip:binutils

FERRY_BIN=${FERRY_BIN:-$CACHE/target/debug/ferry}
[ -x "$FERRY_BIN" ] || die "no ferry binary at $FERRY_BIN: build it (cargo build) or set FERRY_BIN"

# ---------------------------------------------------------------- work dir, ports
WORK=$(mktemp -d /tmp/ferry-img.XXXXXX)   # short: unix socket paths live here
mkdir -p "$WORK/pids" "$WORK/logs"
LOGS=$WORK/logs

pick_port UPORT; pick_port TPORT; pick_port FPORT; pick_port APORT; pick_port DEADPORT
UPSTREAM=127.0.0.1:$UPORT    # the registry itself (its log counts upstream traffic)
RELAY=127.0.0.1:$TPORT       # the throttling relay in front of it: Ferry's upstream
FERRY=127.0.0.1:$FPORT

# Safety net: nothing may leave loopback (a client falling back to a real registry,
# the builder pulling a base image). Loopback itself is never proxied.
export HTTP_PROXY=http://127.0.0.1:$DEADPORT HTTPS_PROXY=http://127.0.0.1:$DEADPORT
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# ---------------------------------------------------------------- processes
DK=$WORK/dk
DKC=(docker -H "unix://$DK/docker.sock")
dk() { "${DKC[@]}" "$@"; }
CTD=$WORK/ctd
CT=(ctr -a "$CTD/containerd.sock" -n ferry-image-e2e)
export DOCKER_CONFIG=$WORK/docker-cli   # no user credentials, proxies or CLI plugins

FINISHED=0
cleanup() {
  local rc=$?
  trap - ERR
  set +e
  if [ "$FINISHED" != 1 ] && [ -S "$DK/docker.sock" ]; then
    if dk container inspect "$CNAME" >/dev/null 2>&1; then
      log "last lines of the Ferry container's log:"
      dk logs --tail 40 "$CNAME" 2>&1 | sed 's/^/    | /'
    fi
  fi
  [ -n "${PULL_PID:-}" ] && { kill "$PULL_PID" 2>/dev/null; wait "$PULL_PID" 2>/dev/null; }
  if [ -S "$DK/docker.sock" ]; then
    dk rm -f "$CNAME" >/dev/null 2>&1
    dk volume rm -f "$VOLUME" >/dev/null 2>&1
  fi
  stop_all_bg dockerd containerd-docker containerd relay upstream
  unmount_under "$WORK"
  if [ "${KEEP:-0}" = 1 ]; then
    log "work dir kept: $WORK"
  else
    if [ "$rc" != 0 ]; then
      rm -rf /tmp/ferry-image-failed && cp -r "$LOGS" /tmp/ferry-image-failed 2>/dev/null \
        && log "logs of the failed run: /tmp/ferry-image-failed/"
    fi
    rm -rf "$WORK"
  fi
  if [ "$rc" = 0 ]; then log "image e2e: passed"; else log "image e2e: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "FAIL: line $LINENO: $BASH_COMMAND"' ERR

# ---------------------------------------------------------------- daemons
log "work dir $WORK; upstream $UPSTREAM, relay $RELAY (${THROTTLE_MBPS} MiB/s), Ferry $FERRY"
# Two containerds: one behind dockerd, one for ctr (containerd skips fetching any
# blob its content store has, and dockerd keeps the manifests it pulls in its own).
start_containerd containerd-docker "$DK/ctd"
start_containerd containerd "$CTD"
mkdir -p "$DOCKER_CONFIG"
start_bg dockerd "$LOGS/dockerd.log" dockerd --data-root "$DK/root" --exec-root "$DK/exec" --pidfile "$DK/docker.pid" \
  -H "unix://$DK/docker.sock" --containerd "$DK/ctd/containerd.sock" \
  --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none
wait_until 60 dockerd dk version || { tail -30 "$LOGS/dockerd.log"; die "dockerd did not start"; }
log "dockerd $(dk version -f '{{.Server.Version}}'), docker CLI $(dk version -f '{{.Client.Version}}')"

# ---------------------------------------------------------------- a. base image
if dk image inspect debian:bookworm-slim >/dev/null 2>&1; then
  ok "debian:bookworm-slim is in the daemon already"
else
  if [ ! -s "$BASE_TAR" ]; then
    MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    log "a. debootstrap --variant=minbase bookworm from $MIRROR (once; cached in $BASE_TAR)"
    # debootstrap fetches with its own wget: no proxy for it.
    env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy \
      debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 \
      || { tail -20 "$LOGS/debootstrap.log"; die "debootstrap failed"; }
    chroot "$WORK/rootfs" apt-get clean
    rm -rf "$WORK/rootfs/var/lib/apt/lists/"*
    mkdir -p "$CACHE"
    tar -C "$WORK/rootfs" --numeric-owner -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$WORK/rootfs"
  fi
  dk import "$BASE_TAR" debian:bookworm-slim >/dev/null
  ok "a. debian:bookworm-slim imported from $BASE_TAR ($(du -m "$BASE_TAR" | cut -f1) MB)"
fi

# ---------------------------------------------------------------- b. build the image
CTX=$WORK/ctx
mkdir -p "$CTX/target/release"
cp -r "$REPO/docker" "$CTX/docker"
cp "$REPO/.dockerignore" "$CTX/.dockerignore"
cp "$FERRY_BIN" "$CTX/target/release/ferry"
# As the builder stage does for release images: drop debug info, keep symbols.
strip --strip-debug "$CTX/target/release/ferry"
log "b. binary $FERRY_BIN: $(du -m "$FERRY_BIN" | cut -f1) MB, $(du -m "$CTX/target/release/ferry" | cut -f1) MB without debug info"
# DOCKER_BUILDKIT=0: the legacy builder of Docker 20.10, the strictest case (it builds
# every stage before the target, so `prebuilt` must not need the Rust builder).
t0=$SECONDS
if ! DOCKER_BUILDKIT=0 dk build --network host -f "$CTX/docker/Dockerfile" --target prebuilt \
    --build-arg FERRY_BIN=target/release/ferry -t "$IMAGE" "$CTX" >"$LOGS/build.log" 2>&1; then
  tail -30 "$LOGS/build.log"; die "docker build --target prebuilt failed"
fi
grep -q 'rust:1-bookworm' "$LOGS/build.log" && die "the build touched the builder stage (rust:1-bookworm)"
SIZE=$(dk image inspect -f '{{.Size}}' "$IMAGE")
BASE_SIZE=$(dk image inspect -f '{{.Size}}' debian:bookworm-slim)
ok "b. built $IMAGE in $((SECONDS - t0))s: image size $SIZE bytes ($((SIZE / 1024 / 1024)) MiB; base $((BASE_SIZE / 1024 / 1024)) MiB)"

inspect() { dk image inspect -f "$1" "$IMAGE"; }
[ "$(inspect '{{.Config.User}}')" = 10001:10001 ] || die "image user $(inspect '{{.Config.User}}')"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/local/bin/ferry"]' ] || die "entrypoint $(inspect '{{json .Config.Entrypoint}}')"
[ "$(inspect '{{json .Config.Cmd}}')" = '["serve","--config","/etc/ferry/ferry.toml"]' ] || die "cmd $(inspect '{{json .Config.Cmd}}')"
[ "$(inspect '{{json .Config.ExposedPorts}}')" = '{"5000/tcp":{},"5001/tcp":{}}' ] || die "ports $(inspect '{{json .Config.ExposedPorts}}')"
[ "$(inspect '{{json .Config.Volumes}}')" = '{"/var/lib/ferry":{}}' ] || die "volumes $(inspect '{{json .Config.Volumes}}')"
[ "$(inspect '{{.Config.StopSignal}}')" = SIGTERM ] || die "stop signal $(inspect '{{.Config.StopSignal}}')"
run_in_image() { dk run --rm --network none "$@"; }
[ "$(run_in_image --entrypoint /usr/bin/stat "$IMAGE" -c %u:%g:%a /var/lib/ferry)" = 10001:10001:750 ] \
  || die "/var/lib/ferry is not 10001:10001 0750"
run_in_image "$IMAGE" --version >"$LOGS/version.log" 2>&1 || { cat "$LOGS/version.log"; die "ferry --version in the image"; }
run_in_image "$IMAGE" config check --config /etc/ferry/ferry.toml >"$LOGS/config-check.log" 2>&1 \
  || { cat "$LOGS/config-check.log"; die "the image's /etc/ferry/ferry.toml does not pass config check"; }
ok "b. user 10001:10001, entrypoint, cmd, ports, volume, stop signal; $(head -1 "$LOGS/version.log") runs; the image's ferry.toml checks"

# ---------------------------------------------------------------- c. upstream
cat >"$WORK/upstream.yml" <<YML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $WORK/upstream-data}
  delete: {enabled: true}
http: {addr: $UPSTREAM}
YML
UPLOG=$LOGS/upstream.log
start_bg upstream "$UPLOG" docker-registry serve "$WORK/upstream.yml"
wait_until 20 upstream http_ok "http://$UPSTREAM/v2/" || die "upstream did not start"

# A TCP relay that paces upstream-to-Ferry bytes per connection, so a cold pull of
# big:1.0 lasts long enough to be interrupted.
cat >"$WORK/relay.py" <<'PY'
import asyncio, sys
listen, target, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) * 1024 * 1024

async def pipe(reader, writer, paced):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            if paced:
                await asyncio.sleep(len(data) / rate)
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass

async def handle(creader, cwriter):
    try:
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        cwriter.close()
        return
    await asyncio.gather(pipe(creader, uwriter, False), pipe(ureader, cwriter, True))
    for w in (uwriter, cwriter):
        w.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
start_bg relay "$LOGS/relay.log" python3 "$WORK/relay.py" "$TPORT" "$UPORT" "$THROTTLE_MBPS"
wait_until 10 relay http_ok "http://$RELAY/v2/" || die "relay did not start"

EXP=$WORK/expected.json
python3 "$HERE/seed.py" "http://$UPSTREAM" 1 >"$EXP" 2>"$LOGS/seed.log" || { cat "$LOGS/seed.log"; die "seed.py failed"; }
# big:1.0: one layer of BIG_MB random bytes (gzip level 1: it does not compress anyway).
python3 - "$HERE" "http://$UPSTREAM" "$BIG_MB" >"$WORK/big.json" 2>>"$LOGS/seed.log" <<'PY' || { cat "$LOGS/seed.log"; die "seeding big:1.0 failed"; }
import gzip, hashlib, io, json, os, sys, tarfile
sys.path.insert(0, sys.argv[1])
import seed
reg, mb = seed.Registry(sys.argv[2]), int(sys.argv[3])
payload = os.urandom(mb * 1024 * 1024)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    info = tarfile.TarInfo("big.bin")
    info.size, info.mode, info.mtime = len(payload), 0o644, 1700000000
    tar.addfile(info, io.BytesIO(payload))
tar_bytes = raw.getvalue()
gz = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
diff_id = seed.sha256(tar_bytes)
repo = "library/big"
cfg = seed.config("amd64", [diff_id], "big")
manifest = {
    "schemaVersion": 2, "mediaType": seed.DOCKER_MANIFEST,
    "config": {"mediaType": seed.DOCKER_CONFIG, "size": len(cfg), "digest": reg.push_blob(repo, cfg)},
    "layers": [{"mediaType": seed.DOCKER_LAYER, "size": len(gz), "digest": reg.push_blob(repo, gz)}],
}
body = json.dumps(manifest, indent=3).encode()
json.dump({"manifest": reg.push_manifest(repo, "1.0", seed.DOCKER_MANIFEST, body),
           "config": manifest["config"]["digest"], "layer": manifest["layers"][0]["digest"],
           "layer_size": len(gz)}, sys.stdout)
PY
x() { jq -r "$@" "$EXP"; }
b() { jq -r "$@" "$WORK/big.json"; }
ok "c. upstream seeded: multi:1.0 index $(x .multi.index) (amd64 + arm64), big:1.0 with a $(($(b .layer_size) / 1024 / 1024)) MiB layer"

# Upstream access-log lines since line FROM as "METHOD URI STATUS".
up_lines() { tail -n +"$(($1 + 1))" "$UPLOG" | sed -nE 's/.*"([A-Z]+) ([^ ]+) HTTP\/[0-9.]+" ([0-9]{3}) .*/\1 \2 \3/p'; }
up_blob_gets() { up_lines "$1" | grep -E "^GET /v2/.+/blobs/${2:-sha256:}" | grep -c . || true; }

# ---------------------------------------------------------------- d. run Ferry
cat >"$WORK/ferry.toml" <<TOML
listen = "$FERRY"
admin_listen = "127.0.0.1:$APORT"
data_dir = "/var/lib/ferry"
access_log = true

[[upstream]]
name = "local"
url = "http://$RELAY"
TOML
# The shipped configs' shutdown_grace, once the binary knows the key.
printf 'shutdown_grace = "25s"\n' | cat - "$WORK/ferry.toml" >"$WORK/ferry-grace.toml"
if run_in_image -v "$WORK/ferry-grace.toml:/etc/ferry/ferry.toml:ro" "$IMAGE" config check \
    --config /etc/ferry/ferry.toml >/dev/null 2>&1; then
  mv "$WORK/ferry-grace.toml" "$WORK/ferry.toml"; GRACE_NOTE="shutdown_grace = 25s"
else
  GRACE_NOTE="shutdown_grace unknown to this binary: its default"
fi
chmod 0644 "$WORK/ferry.toml"

READY_PATH=
wait_ready() {   # wait_ready SECONDS: /readyz 200 (or /healthz with READYZ_OPTIONAL=1)
  local code hcode
  for _ in $(seq 1 $(($1 * 10))); do
    [ "$(dk inspect -f '{{.State.Running}}' "$CNAME" 2>/dev/null)" = true ] \
      || { log "the container is not running"; return 1; }
    code=$(http_code "http://$FERRY/readyz")
    [ "$code" = 200 ] && { READY_PATH=/readyz; return 0; }
    if [ "$code" = 404 ]; then
      [ "${READYZ_OPTIONAL:-0}" = 1 ] || { log "GET /readyz: 404, this binary has none (READYZ_OPTIONAL=1 accepts /healthz)"; return 1; }
      hcode=$(http_code "http://$FERRY/healthz")
      [ "$hcode" = 200 ] && { READY_PATH="/healthz (/readyz: 404, READYZ_OPTIONAL=1)"; return 0; }
    fi
    sleep 0.1
  done
  log "no 200 from /readyz after $1 s (last: ${code:-none})"; return 1
}

dk volume create "$VOLUME" >/dev/null
# As docker/compose.yaml runs it (host network here: dockerd has no bridge).
dk run -d --name "$CNAME" --network host --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges:true --stop-timeout "$STOP_TIMEOUT" \
  -v "$WORK/ferry.toml:/etc/ferry/ferry.toml:ro" -v "$VOLUME:/var/lib/ferry" \
  -e RUST_LOG=info "$IMAGE" >/dev/null
t0=$SECONDS
wait_ready 60 || die "Ferry's container did not become ready"
ok "d. container up in $((SECONDS - t0))s, ready on $READY_PATH ($GRACE_NOTE)"

# ---------------------------------------------------------------- e. pulls
MULTI=$FERRY/library/multi:1.0
ALL_BLOBS=$(x '.multi.platforms[].blobs[]' | sort -u)
dk_verify_multi() {
  local p=".multi.platforms[\"linux/amd64\"]" j
  j=$(dk image inspect "$MULTI")
  jq -e --arg d "$(x .multi.index)" '.[0].RepoDigests | any(endswith("@" + $d))' <<<"$j" >/dev/null \
    || die "docker: $MULTI RepoDigests $(jq -c '.[0].RepoDigests' <<<"$j") lack the index digest"
  [ "$(jq -r '.[0].Id' <<<"$j")" = "$(x "$p.config")" ] || die "docker: $MULTI image ID is not the amd64 config"
}
up0=$(lines "$UPLOG")
timeout 180 "${DKC[@]}" pull "$MULTI" >"$LOGS/pull-multi-docker.log" 2>&1 \
  || { cat "$LOGS/pull-multi-docker.log"; die "docker pull $MULTI"; }
dk_verify_multi
ok "e. docker pull $MULTI: index and linux/amd64 image as pushed"
timeout 180 "${CT[@]}" images pull --plain-http --all-platforms --snapshotter native "$MULTI" \
  >"$LOGS/pull-multi-ctr.log" 2>&1 || { tail -20 "$LOGS/pull-multi-ctr.log"; die "ctr images pull $MULTI"; }
have=$("${CT[@]}" content ls -q)
for d in $(x '.multi.index, (.multi.platforms[] | .manifest, .blobs[])'); do
  grep -qx "$d" <<<"$have" || die "ctr: $d missing after --all-platforms pull"
done
ok "e. ctr images pull --all-platforms $MULTI: index, both manifests, configs and layers"
sleep 0.5   # the registry writes its access line after the response
bad=()
for d in $ALL_BLOBS; do
  n=$(up_blob_gets "$up0" "$d")
  ((n == 1)) || bad+=("${d:7:12}:$n")
done
((${#bad[@]} == 0)) || { up_lines "$up0" | sed 's/^/    | upstream: /'; die "blobs not fetched from upstream exactly once: ${bad[*]}"; }
ok "e. upstream served each of the $(wc -w <<<"$ALL_BLOBS") blobs exactly once for both clients"

# ---------------------------------------------------------------- f. SIGTERM mid-pull
# awk reads the whole page: quitting at the match would cut curl's write short
# (curl exits 23, and pipefail would end the script).
metric() { { curl -s --max-time 2 "http://$FERRY/metrics" || true; } | awk -v m="$1" '$1 == m && v == "" {v = $2} END {print v}'; }
BIG=$FERRY/library/big:1.0
"${DKC[@]}" pull "$BIG" >"$LOGS/pull-big-1.log" 2>&1 &
PULL_PID=$!
fetching=0
for _ in $(seq 1 300); do
  v=$(metric ferry_inflight_fetches); [ "${v:-0}" != 0 ] && { fetching=1; break; }
  sleep 0.1
done
((fetching)) || die "no blob fetch in flight 30 s after docker pull $BIG started"
sleep 2   # well inside the transfer: ~$((BIG_MB / THROTTLE_MBPS)) s at the relay's pace
log "f. big:1.0 layer fetch in flight ($(metric ferry_bytes_fetched_total) bytes fetched so far): docker stop -t $STOP_TIMEOUT"
t0=$(date +%s.%N)
dk stop -t "$STOP_TIMEOUT" "$CNAME" >/dev/null
t1=$(date +%s.%N)
STOP_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
EXIT_CODE=$(dk inspect -f '{{.State.ExitCode}}' "$CNAME")
# The client's pull: did Ferry finish its response before exiting?
PULL_NOTE="still running after the stop (dockerd retries): killed"
for _ in $(seq 1 50); do
  alive "$PULL_PID" || { if wait "$PULL_PID"; then PULL_NOTE="completed"; else PULL_NOTE="failed (exit $?)"; fi; break; }
  sleep 0.1
done
kill "$PULL_PID" 2>/dev/null || true; wait "$PULL_PID" 2>/dev/null || true; PULL_PID=
dk logs "$CNAME" >"$LOGS/ferry-1.log" 2>&1 || true
log "f. SIGTERM to exit: ${STOP_SECS} s (deadline ${STOP_TIMEOUT} s), exit code $EXIT_CODE; the client's pull meanwhile: $PULL_NOTE"
awk -v s="$STOP_SECS" -v d="$STOP_TIMEOUT" 'BEGIN {exit !(s < d - 0.5)}' \
  || die "the container took ${STOP_SECS} s: it was killed at the deadline, not stopped by SIGTERM"
[ "$EXIT_CODE" != 137 ] || die "exit code 137: SIGKILLed"
[ "$EXIT_CODE" = 0 ] || log "note: exit code $EXIT_CODE after SIGTERM (0 expected from a clean shutdown)"
ok "f. stopped by SIGTERM in ${STOP_SECS} s"

# ---------------------------------------------------------------- g. restart
dk start "$CNAME" >/dev/null
t0=$SECONDS
wait_ready 60 || die "Ferry did not become ready after docker start"
ok "g. restarted, ready on $READY_PATH in $((SECONDS - t0))s"
dk rmi -f "$MULTI" >/dev/null
up0=$(lines "$UPLOG")
timeout 180 "${DKC[@]}" pull "$MULTI" >"$LOGS/pull-multi-2.log" 2>&1 \
  || { cat "$LOGS/pull-multi-2.log"; die "docker pull $MULTI after the restart"; }
dk_verify_multi
sleep 0.5
n=$(up_blob_gets "$up0")
((n == 0)) || { up_lines "$up0" | sed 's/^/    | upstream: /'; die "$n upstream blob GETs for $MULTI after the restart (the cache should have it)"; }
ok "g. docker pull $MULTI again: from the volume's cache, 0 upstream blob GETs"
t0=$SECONDS
dk rmi -f "$BIG" >/dev/null 2>&1 || true   # in case the interrupted pull completed
up0=$(lines "$UPLOG")
timeout 300 "${DKC[@]}" pull "$BIG" >"$LOGS/pull-big-2.log" 2>&1 \
  || { tail -20 "$LOGS/pull-big-2.log"; die "docker pull $BIG after the restart"; }
j=$(dk image inspect "$BIG")
jq -e --arg d "$(b .manifest)" '.[0].RepoDigests | any(endswith("@" + $d))' <<<"$j" >/dev/null \
  || die "docker: $BIG RepoDigests lack $(b .manifest)"
[ "$(jq -r '.[0].Id' <<<"$j")" = "$(b .config)" ] || die "docker: $BIG image ID is not its config"
sleep 0.5
n=$(up_blob_gets "$up0" "$(b .layer)")
if ((n == 0)); then BIG_NOTE="the layer was already cached (its fetch landed during the shutdown)"; else BIG_NOTE="the layer was fetched again ($n upstream GETs)"; fi
ok "g. docker rmi + docker pull $BIG again completes in $((SECONDS - t0))s with the pushed digests; $BIG_NOTE"

dk stop -t "$STOP_TIMEOUT" "$CNAME" >/dev/null
dk logs "$CNAME" >"$LOGS/ferry-2.log" 2>&1 || true
if run_in_image -v "$VOLUME:/var/lib/ferry" "$IMAGE" fsck --data-dir /var/lib/ferry --verify \
    >"$LOGS/fsck.log" 2>&1; then
  ok "g. ferry fsck --verify of the volume: clean"
else
  cat "$LOGS/fsck.log"; die "ferry fsck of the volume found problems"
fi

FINISHED=1
echo
echo "== image e2e summary"
echo "image $IMAGE (--target prebuilt, legacy builder): $SIZE bytes ($((SIZE / 1024 / 1024)) MiB; base image $((BASE_SIZE / 1024 / 1024)) MiB)"
echo "readiness: $READY_PATH"
echo "SIGTERM mid-pull to exit: ${STOP_SECS} s (deadline ${STOP_TIMEOUT} s), exit code $EXIT_CODE; $GRACE_NOTE"
echo "client pull during the shutdown: $PULL_NOTE; after the restart: $BIG_NOTE"
echo "image: 1 passed, 0 failed"
