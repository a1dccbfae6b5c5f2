#!/usr/bin/env python3
"""Keep-alive GET load for big bodies, with 1 MiB reads.

wrk reads responses 8 KiB at a time, so on a 2-core machine it, not the server, sets the
ceiling for multi-megabyte bodies. This client keeps CONNS HTTP/1.1 connections busy for
SECS seconds (one thread each; recv_into releases the GIL) and prints one JSON line:
{"bytes": ..., "seconds": ..., "ok": ..., "bad_status": ..., "errors": ..., "mbps": ...}
where mbps counts every body byte received (MB = 10^6 bytes).

usage: blobget.py URL CONNS SECS
"""
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

BUF = 1 << 20


def worker(host, port, path, deadline, stats, lock):
    buf = bytearray(BUF)
    mv = memoryview(buf)
    got_bytes = ok = bad = err = 0
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: ferry-blobget\r\n\r\n".encode()
    sock = None
    try:
        while time.monotonic() < deadline:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=60)
            sock.sendall(req)
            head = b""
            while b"\r\n\r\n" not in head:
                if len(head) > 65536:
                    raise ConnectionError("headers too long")
                n = sock.recv_into(mv, 65536)
                if n == 0:
                    raise ConnectionError("closed before headers")
                head += bytes(mv[:n])
            h, _, rest = head.partition(b"\r\n\r\n")
            lines = h.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = None
            close = False
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v.strip())
                elif k == b"connection" and v.strip().lower() == b"close":
                    close = True
                elif k == b"transfer-encoding":
                    raise ConnectionError("chunked responses are not supported")
            if length is None:
                raise ConnectionError("no Content-Length")
            body = len(rest)
            while body < length:
                n = sock.recv_into(mv, min(BUF, length - body))
                if n == 0:
                    raise ConnectionError("closed mid-body")
                body += n
            got_bytes += body
            if status == 200:
                ok += 1
            else:
                bad += 1
            if close:
                sock.close()
                sock = None
    except (OSError, ValueError, IndexError) as e:
        print(f"blobget: {e!r}", file=sys.stderr)
        err += 1
    finally:
        if sock is not None:
            sock.close()
    with lock:
        stats["bytes"] += got_bytes
        stats["ok"] += ok
        stats["bad_status"] += bad
        stats["errors"] += err


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    url, conns, secs = urlsplit(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    path = url.path + (f"?{url.query}" if url.query else "")
    stats = {"bytes": 0, "ok": 0, "bad_status": 0, "errors": 0}
    lock = threading.Lock()
    t0 = time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(url.hostname, url.port or 80, path, t0 + secs, stats, lock))
        for _ in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    stats["seconds"] = round(elapsed, 3)
    stats["mbps"] = round(stats["bytes"] / elapsed / 1e6, 1)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
