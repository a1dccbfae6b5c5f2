#!/usr/bin/env python3
"""benches/load/overload.py: Ferry under connection floods, cold floods and herds.

Three measurements, each against a fresh Ferry (and, where it applies, the peer,
distribution 2.8.2 in proxy mode), in front of a counting upstream run by this
script (a separate process, so its work does not share the measuring loop):

  idle   N_IDLE idle connections and N_SLOW slowloris connections (one header
         byte a second) held open; a normal client's warm HEAD latency before
         and while they are held; RSS; how many of them the server closed, and
         when.
  cold   N_COLD distinct cold blobs requested at once: upstream GETs per blob
         (must be exactly 1 each), bodies verified, Ferry's peak RSS (VmHWM).
  herd   warm HEAD p50/p99 with no load, then while HERD_CLIENTS clients pull
         HERD_BLOBS distinct cold HERD_MIB MiB blobs (the blocking pool, the
         disk and both cores busy).

Usage:  python3 benches/load/overload.py [idle] [cold] [herd]   (default: all)
Knobs (environment): FERRY_BIN, PEER=0 (skip the peer), N_IDLE=10000, N_SLOW=500,
  N_COLD=500, COLD_MIB=2, HERD_BLOBS=6, HERD_CLIENTS=12, HERD_MIB=256,
  HEADS=2000, PORT_BASE=17500. Markdown table on stdout; logs in $OUT.
"""

import asyncio
import hashlib
import http.server
import json
import os
import random
import resource
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ENV = os.environ
PORT_BASE = int(ENV.get("PORT_BASE", "17500"))
UPORT, FPORT, PPORT = PORT_BASE + 1, PORT_BASE + 2, PORT_BASE + 3
N_IDLE = int(ENV.get("N_IDLE", "10000"))
N_SLOW = int(ENV.get("N_SLOW", "500"))
N_COLD = int(ENV.get("N_COLD", "500"))
COLD_MIB = int(ENV.get("COLD_MIB", "2"))
HERD_BLOBS = int(ENV.get("HERD_BLOBS", "6"))
HERD_CLIENTS = int(ENV.get("HERD_CLIENTS", "12"))
HERD_MIB = int(ENV.get("HERD_MIB", "256"))
HEADS = int(ENV.get("HEADS", "2000"))
PEER = ENV.get("PEER", "1") != "0"
OUT = ENV.get("OUT") or tempfile.mkdtemp(prefix="ferry-overload-")
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json"
)
MIB = 1024 * 1024


# ------------------------------------------------------------------ upstream
# Blob i of a set is its base buffer with the first 8 bytes replaced by i, so
# hundreds of distinct blobs cost one buffer of memory.


class Blobs:
    def __init__(self):
        self.by_digest = {}  # digest -> (base, index)
        self.sets = {}

    def add_set(self, name, count, size, seed):
        rng = random.Random(seed)
        piece = 16 * MIB  # randbytes overflows past 256 MiB at once
        base = b"".join(rng.randbytes(min(piece, size - o)) for o in range(0, size, piece))
        digests = []
        for i in range(count):
            h = hashlib.sha256(i.to_bytes(8, "big"))
            h.update(memoryview(base)[8:])
            d = "sha256:" + h.hexdigest()
            self.by_digest[d] = (base, i)
            digests.append(d)
        self.sets[name] = {"size": size, "digests": digests}


def run_upstream():
    blobs = Blobs()
    blobs.add_set("cold", N_COLD, COLD_MIB * MIB, 1)
    blobs.add_set("herd", HERD_BLOBS, HERD_MIB * MIB, 2)
    blobs.add_set("app", 1, 1024, 3)
    config = blobs.sets["app"]["digests"][0]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 1024,
            },
            "layers": [],
        }
    ).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    counts = {}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def count(self):
            with lock:
                k = f"{self.command} {self.path}"
                counts[k] = counts.get(k, 0) + 1

        def send(self, status, body=b"", ctype="application/json", extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            self.count()
            p = self.path
            if p == "/v2/":
                return self.send(200, b"{}")
            if p == "/bench/sets":
                with lock:
                    body = {"sets": blobs.sets, "manifest": manifest_digest, "counts": counts}
                    return self.send(200, json.dumps(body).encode())
            if p == "/v2/bench/app/manifests/1.0":
                return self.send(
                    200,
                    manifest,
                    "application/vnd.oci.image.manifest.v1+json",
                    [("Docker-Content-Digest", manifest_digest)],
                )
            if "/blobs/" in p:
                d = p.rsplit("/", 1)[1]
                if d not in blobs.by_digest:
                    return self.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
                base, i = blobs.by_digest[d]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(base)))
                self.send_header("Docker-Content-Digest", d)
                self.end_headers()
                if self.command == "HEAD":
                    return
                view = memoryview(base)
                self.wfile.write(i.to_bytes(8, "big"))
                for off in range(8, len(base), MIB):
                    self.wfile.write(view[off : off + MIB])
                return
            self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    Server(("127.0.0.1", UPORT), Handler).serve_forever()


def upstream_state():
    with urllib.request.urlopen(f"http://127.0.0.1:{UPORT}/bench/sets") as r:
        return json.load(r)


# ------------------------------------------------------------------ servers


def ferry_bin():
    if ENV.get("FERRY_BIN"):
        return ENV["FERRY_BIN"]
    for d in (ENV.get("CARGO_TARGET_DIR"), "/var/cache/ferry/target", "target"):
        if d and os.path.exists(f"{d}/release/ferry"):
            return f"{d}/release/ferry"
    sys.exit("no release ferry binary: cargo build --release, or set FERRY_BIN")


def wait_ready(url, proc, what):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}; see {OUT}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not become ready at {url}")


def start_ferry(tag, header_timeout="30s", max_connections=20000):
    data = tempfile.mkdtemp(prefix=f"ferry-{tag}-", dir=OUT)
    conf = f"{data}.toml"
    with open(conf, "w") as f:
        f.write(
            f'listen = "127.0.0.1:{FPORT}"\ndata_dir = "{data}"\n'
            f'default_upstream = "up"\n'
            f'[[upstream]]\nname = "up"\nurl = "http://127.0.0.1:{UPORT}"\n'
            f'[freshness]\ntag_ttl = "1h"\n'
            f'[limits]\nmax_connections = {max_connections}\nheader_timeout = "{header_timeout}"\n'
        )
    log = open(f"{OUT}/ferry-{tag}.log", "w")
    proc = subprocess.Popen([ferry_bin(), "serve", "--config", conf], stdout=log, stderr=log)
    wait_ready(f"http://127.0.0.1:{FPORT}/readyz", proc, "ferry")
    return proc


def start_peer(tag):
    if not shutil.which("docker-registry"):
        print("# docker-registry not installed: the peer is skipped", file=sys.stderr)
        return None
    data = tempfile.mkdtemp(prefix=f"peer-{tag}-", dir=OUT)
    conf = f"{data}.yml"
    with open(conf, "w") as f:
        f.write(
            "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
            f"storage: {{filesystem: {{rootdirectory: {data}}}}}\n"
            f'http: {{addr: "127.0.0.1:{PPORT}"}}\n'
            f'proxy: {{remoteurl: "http://127.0.0.1:{UPORT}"}}\n'
        )
    log = open(f"{OUT}/peer-{tag}.log", "w")
    proc = subprocess.Popen(["docker-registry", "serve", conf], stdout=log, stderr=log)
    wait_ready(f"http://127.0.0.1:{PPORT}/v2/", proc, "peer")
    return proc


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ clients


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    return status, length


async def head_latencies(port, n, until=None):
    """Sequential warm manifest HEADs on one keep-alive connection (ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    req = (
        f"HEAD /v2/bench/app/manifests/1.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Accept: {MANIFEST_ACCEPT}\r\n\r\n"
    ).encode()
    out = []
    while len(out) < n or (until is not None and not until.done()):
        t = time.perf_counter()
        writer.write(req)
        status, _ = await read_head(reader)
        out.append((time.perf_counter() - t) * 1000)
        if status != 200:
            raise RuntimeError(f"warm HEAD answered {status}")
        if until is not None and until.done() and len(out) >= n:
            break
        if until is not None and len(out) > 200_000:
            break
    writer.close()
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def lat(xs):
    return f"{statistics.median(xs):.2f} / {pct(xs, 0.99):.2f} ms (n={len(xs)})"


async def hold(conn, closed, slow):
    """Holds a connection open; records when the server closes it."""
    reader, writer = conn
    start = time.monotonic()
    try:
        if slow:
            writer.write(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while True:
                await asyncio.sleep(1)
                writer.write(b"a")
                await writer.drain()
                if reader.at_eof():
                    break
                try:
                    data = await asyncio.wait_for(reader.read(1), 0.001)
                    if not data:
                        break
                except asyncio.TimeoutError:
                    pass
        else:
            await reader.read()  # returns b"" when the server closes
    except (ConnectionError, OSError):
        pass
    closed.append(time.monotonic() - start)


async def idle(server, pid, tag, hold_secs):
    rows = {}
    await head_latencies(server, 50)  # warm the tag
    rows["warm HEAD p50 / p99, nothing held"] = lat(await head_latencies(server, HEADS))
    rss0 = status_kib(pid, "VmRSS")
    closed_idle, closed_slow, tasks = [], [], []
    t0 = time.monotonic()
    refused = 0
    for i in range(N_IDLE + N_SLOW):
        try:
            conn = await asyncio.open_connection("127.0.0.1", server)
        except OSError:
            refused += 1
            continue
        slow = i >= N_IDLE
        tasks.append(asyncio.create_task(hold(conn, closed_slow if slow else closed_idle, slow)))
        if i % 500 == 0:
            await asyncio.sleep(0)
    opened = time.monotonic() - t0
    await asyncio.sleep(2)
    held = lat(await head_latencies(server, HEADS))
    rss1 = status_kib(pid, "VmRSS")
    deadline = time.monotonic() + hold_secs
    while time.monotonic() < deadline and len(closed_idle) + len(closed_slow) < len(tasks):
        await asyncio.sleep(0.5)
    rss2 = status_kib(pid, "VmRSS")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rows[f"warm HEAD p50 / p99, {N_IDLE} idle + {N_SLOW} slowloris held"] = held
    rows["connections opened (refused)"] = f"{len(tasks)} in {opened:.1f} s ({refused})"
    rows["RSS before → held → after"] = f"{rss0 // 1024} → {rss1 // 1024} → {rss2 // 1024} MiB"
    rows[f"idle closed by the server within {hold_secs} s"] = closed(closed_idle, N_IDLE)
    rows[f"slowloris closed by the server within {hold_secs} s"] = closed(closed_slow, N_SLOW)
    return rows


def closed(times, of):
    if not times:
        return f"0 of {of}"
    return f"{len(times)} of {of}, median after {statistics.median(times):.1f} s"


async def get_blob(port, repo, digest, size, verify=True):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
    writer.write(f"GET /v2/{repo}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, length = await read_head(reader)
    h = hashlib.sha256() if verify else None
    got = 0
    while got < length:
        chunk = await reader.read(min(MIB, length - got))
        if not chunk:
            break
        got += len(chunk)
        if h:
            h.update(chunk)
    writer.close()
    ok = status == 200 and got == size and (h is None or "sha256:" + h.hexdigest() == digest)
    return ok


async def cold(server, pid, which):
    state = upstream_state()
    digests = state["sets"]["cold"]["digests"]
    size = state["sets"]["cold"]["size"]
    before = state["counts"]
    rss0 = status_kib(pid, "VmRSS")
    t = time.monotonic()
    oks = await asyncio.gather(*(get_blob(server, "bench/cold", d, size) for d in digests))
    took = time.monotonic() - t
    after = upstream_state()["counts"]
    gets = [
        after.get(f"GET /v2/bench/cold/blobs/{d}", 0) - before.get(f"GET /v2/bench/cold/blobs/{d}", 0)
        for d in digests
    ]
    return {
        f"{N_COLD} distinct cold {COLD_MIB} MiB blobs at once: all bytes right": f"{sum(oks)} of {len(oks)} in {took:.1f} s",
        "upstream GETs per blob (min / max)": f"{min(gets)} / {max(gets)}",
        "RSS before → peak (VmHWM)": f"{rss0 // 1024} → {status_kib(pid, 'VmHWM') // 1024} MiB",
    }


async def herd(server):
    state = upstream_state()
    digests = state["sets"]["herd"]["digests"]
    size = state["sets"]["herd"]["size"]
    await head_latencies(server, 50)
    calm = await head_latencies(server, HEADS)
    # The herd runs in its own process so its reads do not share this loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "_herd", str(server), json.dumps(digests), str(size)
    )
    waiting = asyncio.ensure_future(proc.wait())
    await asyncio.sleep(0.2)
    t = time.monotonic()
    busy = await head_latencies(server, 200, until=waiting)
    took = time.monotonic() - t
    await waiting
    return {
        "warm HEAD p50 / p99, no herd": lat(calm),
        f"warm HEAD p50 / p99, {HERD_CLIENTS} clients on {HERD_BLOBS} cold {HERD_MIB} MiB blobs": lat(busy),
        "herd duration (while measured)": f"{took:.1f} s, exit {proc.returncode}",
    }


async def herd_clients(port, digests, size):
    jobs = [get_blob(port, "bench/herd", digests[i % len(digests)], size, verify=False) for i in range(HERD_CLIENTS)]
    oks = await asyncio.gather(*jobs)
    sys.exit(0 if all(oks) else 1)


# ------------------------------------------------------------------ main


def table(title, columns, rows_by_column):
    keys = []
    for rows in rows_by_column:
        for k in rows:
            if k not in keys:
                keys.append(k)
    print(f"\n### {title}\n")
    print("| | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for k in keys:
        print(f"| {k} | " + " | ".join(r.get(k, "–") for r in rows_by_column) + " |")


def side_by_side(tag, title, servers, measure):
    """Runs `measure(port, pid)` against a fresh Ferry, then a fresh peer; one table."""
    cols, results = [], []
    for name, start, port in (("Ferry", start_ferry, FPORT), ("peer", start_peer, PPORT)):
        if name == "peer" and not PEER:
            continue
        proc = start(tag)
        if proc is None:
            continue
        servers.append(proc)
        cols.append(name)
        results.append(asyncio.run(measure(port, proc.pid)))
        stop(proc)
    table(title, cols, results)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_upstream":
        return run_upstream()
    if len(sys.argv) > 1 and sys.argv[1] == "_herd":
        return asyncio.run(herd_clients(int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])))
    which = sys.argv[1:] or ["idle", "cold", "herd"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ulog = open(f"{OUT}/upstream.log", "w")
    up = subprocess.Popen([sys.executable, __file__, "_upstream"], stdout=ulog, stderr=ulog)
    servers = []
    try:
        wait_ready(f"http://127.0.0.1:{UPORT}/v2/", up, "upstream")
        print(f"# Ferry: {ferry_bin()}; logs in {OUT}; {os.cpu_count()} cores")
        if "idle" in which:
            side_by_side("idle", "Connection flood (header_timeout 30 s)", servers,
                         lambda port, pid: idle(port, pid, "", 40))
        if "cold" in which:
            side_by_side("cold", "Cold flood", servers, lambda port, pid: cold(port, pid, ""))
        if "herd" in which:
            proc = start_ferry("herd")
            servers.append(proc)
            results = [asyncio.run(herd(FPORT))]
            stop(proc)
            table("Warm HEADs during a cold herd", ["Ferry"], results)
    finally:
        for p in servers:
            stop(p)
        stop(up)


if __name__ == "__main__":
    main()
