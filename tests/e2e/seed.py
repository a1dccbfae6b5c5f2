#!/usr/bin/env python3
"""Builds the e2e test images and pushes them to a registry with the plain
OCI push API (no internet, no docker needed). Prints the expected digests as
JSON on stdout.

  library/test:1.0   Docker schema2 manifest, linux/amd64, 3 gzip layers
                     (one is RANDOM_MB of random bytes)
  library/multi:1.0  OCI index -> linux/amd64 and linux/arm64 OCI manifests,
                     each with its own config and 2 layers

Usage: seed.py http://127.0.0.1:PORT [RANDOM_MB]
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files):
    """files: {path: bytes}. Returns (gzip bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    info.mtime = 1700000000
                    tar.addfile(info)
            info = tarfile.TarInfo(path)
            info.size = len(files[path])
            info.mode = 0o644
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(files[path]))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


def config(arch, diff_ids, tag):
    cfg = {
        "architecture": arch,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/true"], "Labels": {"ferry.e2e": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "seed.py"} for _ in diff_ids],
    }
    return json.dumps(cfg, sort_keys=True).encode()


class Registry:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def _req(self, method, url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def push_blob(self, repo, data):
        digest = sha256(data)
        status, _, _ = self._req("HEAD", f"{self.base}/v2/{repo}/blobs/{digest}")
        if status == 200:
            return digest
        status, headers, body = self._req("POST", f"{self.base}/v2/{repo}/blobs/uploads/", b"")
        if status != 202:
            raise SystemExit(f"POST upload {repo}: {status} {body[:200]!r}")
        loc = urllib.parse.urljoin(self.base + "/", headers["Location"])
        sep = "&" if "?" in loc else "?"
        status, _, body = self._req(
            "PUT",
            f"{loc}{sep}digest={urllib.parse.quote(digest)}",
            data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )
        if status != 201:
            raise SystemExit(f"PUT blob {repo} {digest}: {status} {body[:200]!r}")
        return digest

    def push_manifest(self, repo, ref, media_type, body):
        status, headers, resp = self._req(
            "PUT", f"{self.base}/v2/{repo}/manifests/{ref}", body, {"Content-Type": media_type}
        )
        if status != 201:
            raise SystemExit(f"PUT manifest {repo}:{ref}: {status} {resp[:300]!r}")
        digest = sha256(body)
        got = headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise SystemExit(f"registry computed {got}, expected {digest}")
        return digest


def image(reg, repo, arch, layers_files, tag, mt_manifest, mt_config, mt_layer):
    """Pushes the blobs and the manifest (by digest); returns its description."""
    layers = [layer(f) for f in layers_files]
    diff_ids = [d for _, d in layers]
    cfg = config(arch, diff_ids, tag)
    cfg_digest = reg.push_blob(repo, cfg)
    descs = []
    for gz, _ in layers:
        descs.append({"mediaType": mt_layer, "size": len(gz), "digest": reg.push_blob(repo, gz)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt_manifest,
        "config": {"mediaType": mt_config, "size": len(cfg), "digest": cfg_digest},
        "layers": descs,
    }
    body = json.dumps(manifest, indent=3).encode()
    return {
        "manifest": sha256(body),
        "manifest_size": len(body),
        "manifest_body": body,
        "media_type": mt_manifest,
        "config": cfg_digest,
        "layers": [d["digest"] for d in descs],
        "diff_ids": diff_ids,
        "blobs": [cfg_digest] + [d["digest"] for d in descs],
    }


def main():
    base = sys.argv[1]
    random_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    reg = Registry(base)
    nonce = f"{time.time_ns()}-{os.getpid()}".encode()
    out = {}

    # library/test:1.0, single arch, Docker schema2.
    repo = "library/test"
    test = image(
        reg, repo, "amd64",
        [
            {"etc/ferry-e2e/hello.txt": b"hello from layer 1\n" + nonce},
            {"data/random.bin": os.urandom(random_mb * 1024 * 1024)},
            {"etc/ferry-e2e/version": b"1.0\n", "bin/.keep": b""},
        ],
        "test", DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER,
    )
    body = test.pop("manifest_body")
    if reg.push_manifest(repo, "1.0", DOCKER_MANIFEST, body) != test["manifest"]:
        raise SystemExit("test:1.0 digest mismatch")
    test["ref"] = f"{repo}:1.0"
    out["test"] = test

    # library/multi:1.0, OCI index over amd64 and arm64.
    repo = "library/multi"
    platforms = {}
    entries = []
    for arch in ("amd64", "arm64"):
        img = image(
            reg, repo, arch,
            [
                {f"etc/ferry-e2e/{arch}.txt": f"multi {arch}\n".encode() + nonce},
                {f"data/{arch}.bin": os.urandom(512 * 1024)},
            ],
            f"multi-{arch}", OCI_MANIFEST, OCI_CONFIG, OCI_LAYER,
        )
        body = img.pop("manifest_body")
        reg.push_manifest(repo, img["manifest"], OCI_MANIFEST, body)
        platforms[f"linux/{arch}"] = img
        entries.append({
            "mediaType": OCI_MANIFEST,
            "size": img["manifest_size"],
            "digest": img["manifest"],
            "platform": {"architecture": arch, "os": "linux"},
        })
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, indent=3).encode()
    out["multi"] = {
        "ref": f"{repo}:1.0",
        "index": reg.push_manifest(repo, "1.0", OCI_INDEX, index),
        "platforms": platforms,
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
