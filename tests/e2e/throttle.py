#!/usr/bin/env python3
"""A TCP relay that slows what the server sends, so a blob is still in flight
when a test kills the process fetching it (stdlib only).

  throttle.py LISTEN_PORT TARGET_HOST:PORT BYTES_PER_SECOND

Each connection is relayed as is; the server-to-client direction is paced to
BYTES_PER_SECOND (per connection), the other direction is not. Ctrl-C stops it.
"""
import asyncio
import sys
import time

CHUNK = 64 * 1024


async def pump(reader, writer, rate):
    start, sent = time.monotonic(), 0
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            sent += len(data)
            if rate:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen_port, target, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    host, port = target.rsplit(":", 1)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, 0),
            pump(server_reader, client_writer, rate),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
