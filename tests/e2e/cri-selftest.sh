#!/usr/bin/env bash
# Self-test of the kubelet pull path harness (cri.py + cri-node.sh), without Ferry:
#
#   1. distribution 2.8.2 (`docker-registry`) with htpasswd auth (alice / s3cret) on
#      127.0.0.1, seeded by seed.py through a second registry process on the same
#      rootdirectory without auth;
#   2. a CRI node whose hosts.toml names that registry (plain HTTP): PullImage with
#      the right credentials works, with a wrong password or none it fails with a
#      gRPC error; ImageStatus, ListImages and RemoveImage work;
#   3. a second CRI node whose hosts.toml puts a mirror in front: the mirror answers
#      401 + `WWW-Authenticate: Basic realm="ferry"` to requests without credentials
#      and proxies the rest to the registry. Checks that containerd retries the
#      mirror with the PullImage AuthConfig credentials (the pod's pull secret), and
#      prints the Authorization values the mirror saw (user names only).
#
# Needs root on Debian 12 (installs missing packages with apt-get). Binds only
# 127.0.0.1 ports in 17000-17999; stops every process and removes its temp dir
# on exit (KEEP=1 keeps the dir). Takes about 10 s once the packages are there.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PORT_RANGE=17000-17999
# shellcheck source=SCRIPTDIR/lib.sh
source "$HERE/lib.sh"
# shellcheck source=SCRIPTDIR/cri-node.sh
source "$HERE/cri-node.sh"
[ "$(id -u)" = 0 ] || die "run as root (containerd and apt-get need it)"

install_missing containerd:containerd docker-registry:docker-registry htpasswd:apache2-utils \
  curl:curl python3:python3 ss:iproute2
/usr/bin/python3 -c 'import grpc' 2>/dev/null || apt_install python3-grpcio   # for cri.py

WORK=$(mktemp -d /tmp/cri-st.XXXXXX)   # short: the nodes' unix sockets live here
cleanup() {
  stop_all_cri_nodes
  stop_all_bg mirror registry
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pick_port UPORT; pick_port SPORT; pick_port MPORT; pick_port DEADPORT
pick_port STREAM1; pick_port STREAM2   # the CRI stream servers (never used, but they bind)
UP=127.0.0.1:$UPORT
# Anything that would leave loopback goes to a closed port instead.
export HTTP_PROXY=http://127.0.0.1:$DEADPORT HTTPS_PROXY=http://127.0.0.1:$DEADPORT
export http_proxy=$HTTP_PROXY https_proxy=$HTTPS_PROXY NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

# ---------------------------------------------------------------- registries
htpasswd -Bbn alice s3cret >"$WORK/htpasswd" 2>/dev/null || die "htpasswd failed"
registry_config() {   # registry_config PORT [auth]
  printf 'version: 0.1\nlog: {level: info}\nstorage:\n  filesystem: {rootdirectory: %s}\n' "$WORK/regdata"
  printf 'http: {addr: 127.0.0.1:%s}\n' "$1"
  [ "${2:-}" = auth ] && printf 'auth: {htpasswd: {realm: priv, path: %s}}\n' "$WORK/htpasswd"
}
registry_config "$UPORT" auth >"$WORK/up.yml"
registry_config "$SPORT" >"$WORK/seed.yml"
start_bg registry "$WORK/up.log" docker-registry serve "$WORK/up.yml"
start_bg seeding "$WORK/seed.log" docker-registry serve "$WORK/seed.yml"
wait_until 10 registry status_is 401 "http://$UP/v2/" \
  || die "registry with auth did not start: $(tail -5 "$WORK/up.log")"
wait_until 10 seeding http_ok "http://127.0.0.1:$SPORT/v2/" || die "seeding registry did not start"
python3 "$HERE/seed.py" "http://127.0.0.1:$SPORT" 1 >"$WORK/expected.json" || die "seed.py failed"
stop_bg seeding
CONFIG=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["test"]["config"])' "$WORK/expected.json")
IMAGE=$UP/library/test:1.0
log "registry $UP (htpasswd), seeded $IMAGE (config $CONFIG)"

# ---------------------------------------------------------------- checks
PASS=0 FAIL=0
check() {   # check NAME CMD...
  if "${@:2}"; then PASS=$((PASS + 1)); log "ok   $1"; else FAIL=$((FAIL + 1)); log "FAIL $1"; fi
}
# prints / fails_with run cri.py on $SOCK; its stdout+stderr go to $WORK/out.
run_cri() { cri --socket "$SOCK" "$@" >"$WORK/out" 2>&1; }
prints() {   # prints EXPECTED CMD...: exit 0 and stdout's first line is EXPECTED
  local want=$1; shift
  run_cri "$@" || { sed 's/^/    /' "$WORK/out"; return 1; }
  [ "$(head -1 "$WORK/out")" = "$want" ] || { sed 's/^/    /' "$WORK/out"; return 1; }
}
fails_with() {   # fails_with TEXT CMD...: exit 1 and the output contains TEXT
  local want=$1 rc; shift
  run_cri "$@"; rc=$?
  sed 's/^/    /' "$WORK/out"
  [ "$rc" = 1 ] && grep -qF "$want" "$WORK/out"
}
t_pull_wrong_password() { fails_with "401 Unauthorized" pull "$IMAGE" --username alice --password wrong; }
t_pull_no_credentials() { fails_with "401 Unauthorized" pull "$IMAGE"; }
t_status_absent() { fails_with "not present" status "$IMAGE"; }
t_pull() { prints "$CONFIG" pull "$IMAGE" --username alice --password s3cret --timeout 120; }
t_status() { prints "$CONFIG" status "$IMAGE"; }
t_list() { run_cri list && grep -qE "^$CONFIG [0-9]+ $IMAGE " "$WORK/out"; }
t_rmi() { run_cri rmi "$IMAGE"; }

# ---------------------------------------------------------------- node 1: direct
mkdir -p "$WORK/h1/$UP"
cat >"$WORK/h1/$UP/hosts.toml" <<TOML
server = "http://$UP"

# containerd 1.6 rejects a hosts.toml without a [host] table ("invalid host tree")
# and falls back to its defaults; the http:// scheme is what makes it plain HTTP
# (skip_verify is for TLS only).
[host."http://$UP"]
  capabilities = ["pull", "resolve"]
TOML
CRI_STREAM_PORT=$STREAM1 start_cri_node n1 "$WORK/n1" "$WORK/h1" || die "CRI node n1 did not start"
SOCK=$WORK/n1/sock
log "CRI node n1 on $SOCK ($(containerd --version | awk '{print $3}'))"
check "pull with a wrong password fails" t_pull_wrong_password
check "pull without credentials fails" t_pull_no_credentials
check "status before the pull: not present" t_status_absent
check "pull with alice's credentials prints the config digest" t_pull
check "status prints the image id" t_status
check "list shows the image" t_list
check "rmi" t_rmi
check "status after rmi: not present" t_status_absent
check "pull again after rmi" t_pull
grep -q 'failed to decode hosts.toml' "$WORK/n1/log" && { log "containerd could not parse hosts.toml"; FAIL=$((FAIL + 1)); }
stop_cri_node n1

# ---------------------------------------------------------------- node 2: a 401 mirror
cat >"$WORK/mirror.py" <<'PY'
"""401 + Basic challenge without Authorization; otherwise proxies to the registry.
Logs "METHOD PATH auth=<none|Basic:USER|SCHEME> STATUS" (never a password)."""
import base64, sys, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, upstream, logfile = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "a", buffering=1)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def who(value):
    if not value:
        return "none"
    scheme, _, cred = value.partition(" ")
    if scheme.lower() == "basic":
        return "Basic:" + base64.b64decode(cred).decode(errors="replace").partition(":")[0]
    return scheme

class Mirror(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self, status, headers, body):
        self.send_response(status)
        length = str(len(body))
        for k, v in headers:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # a HEAD has no body: keep the upstream's length
            elif k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        logfile.write(f"{self.command} {self.path} auth={who(self.headers.get('Authorization'))} {status}\n")
    def do_GET(self):
        if not self.headers.get("Authorization"):
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
            return self.answer(401, [("WWW-Authenticate", 'Basic realm="ferry"'),
                                     ("Content-Type", "application/json")], body)
        headers = {k: self.headers[k] for k in ("Authorization", "Accept", "Range") if self.headers.get(k)}
        req = urllib.request.Request(upstream + self.path.split("?")[0], headers=headers, method=self.command)
        try:
            resp = opener.open(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        with resp:
            self.answer(resp.status, resp.headers.items(), resp.read())
    do_HEAD = do_GET

ThreadingHTTPServer(("127.0.0.1", port), Mirror).serve_forever()
PY
start_bg mirror "$WORK/mirror.err" python3 "$WORK/mirror.py" "$MPORT" "http://$UP" "$WORK/mirror.log"
wait_until 10 mirror status_is 401 "http://127.0.0.1:$MPORT/v2/" \
  || die "mirror did not start: $(cat "$WORK/mirror.err")"
mkdir -p "$WORK/h2/$UP"
cat >"$WORK/h2/$UP/hosts.toml" <<TOML
server = "http://$UP"

[host."http://127.0.0.1:$MPORT"]
  capabilities = ["pull", "resolve"]
TOML
CRI_STREAM_PORT=$STREAM2 start_cri_node n2 "$WORK/n2" "$WORK/h2" || die "CRI node n2 did not start"
SOCK=$WORK/n2/sock
log "CRI node n2: hosts.toml mirror http://127.0.0.1:$MPORT in front of $UP"

mirror_saw() {   # mirror_saw FROM_LINE EREGEX: some mirror log line after FROM_LINE matches
  tail -n +"$(($1 + 1))" "$WORK/mirror.log" | grep -qE "$2"
}
# Requests containerd itself sent to the registry (the mirror's have Python's user agent).
direct_to_registry() { grep -c '"containerd/' "$WORK/up.log" || true; }
t_mirror_no_credentials() {
  local from; from=$(wc -l <"$WORK/mirror.log")
  fails_with "401 Unauthorized" pull "$IMAGE" || return 1
  mirror_saw "$from" "^HEAD /v2/library/test/manifests/1.0\?ns=127.0.0.1(%3A|:)$UPORT auth=none 401$" &&
    ! mirror_saw "$from" 'auth=Basic'
}
t_mirror_credentials() {
  local from direct
  from=$(wc -l <"$WORK/mirror.log") direct=$(direct_to_registry)
  t_pull || return 1
  mirror_saw "$from" " auth=none 401$" &&
    mirror_saw "$from" "^HEAD /v2/library/test/manifests/1.0\?ns=[^ ]+ auth=Basic:alice 200$" &&
    mirror_saw "$from" "^GET /v2/library/test/blobs/$CONFIG\?ns=[^ ]+ auth=Basic:alice 200$" &&
    [ "$(direct_to_registry)" = "$direct" ]   # nothing fell back to the registry itself
}
check "mirror: pull without credentials fails (the mirror saw no Authorization)" t_mirror_no_credentials
check "mirror: containerd answers the mirror's 401 with alice's credentials" t_mirror_credentials
log "Authorization values the mirror saw (count, value):"
sed -E 's/.* (auth=[^ ]+) ([0-9]+)$/\1 -> \2/' "$WORK/mirror.log" | sort | uniq -c | sed 's/^/    /'
stop_cri_node n2

log "$PASS passed, $FAIL failed"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
