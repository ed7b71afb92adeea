#!/usr/bin/env python3
"""An emulated network link in front of a TCP server on 127.0.0.1.

    linkemu.py LISTEN_PORT TARGET_PORT [--delay-ms 10] [--rate-mbit 200]

Accepts connections on 127.0.0.1:LISTEN_PORT and forwards each to
127.0.0.1:TARGET_PORT. Every byte is held back by the one-way delay, and
each direction of the link (shared by all connections through it, like one
host's network interface) carries at most the given rate. With a one-way
delay of 10 ms a round trip takes 20 ms.

For benchmarks on machines whose kernel lacks `tc netem`. Prints "ready"
once it listens.
"""

import argparse
import asyncio
import time

CHUNK = 64 * 1024


class Direction:
    """One direction of the link: a serialisation clock shared by every
    connection, so that together they get at most `rate` bytes/s."""

    def __init__(self, rate_bytes: float):
        self.rate = rate_bytes
        self.free_at = 0.0

    def finish_time(self, size: int, arrived: float) -> float:
        start = max(arrived, self.free_at)
        self.free_at = start + size / self.rate
        return self.free_at


async def pump(reader, writer, direction: Direction, delay: float):
    queue: asyncio.Queue = asyncio.Queue()

    async def receive():
        while True:
            data = await reader.read(CHUNK)
            now = time.monotonic()
            if not data:
                await queue.put((now + delay, b""))
                return
            done = direction.finish_time(len(data), now)
            await queue.put((done + delay, data))

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), deliver())
    except (ConnectionError, OSError):
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    args = parser.parse_args()
    delay = args.delay_ms / 1000
    rate = args.rate_mbit * 1e6 / 8
    up, down = Direction(rate), Direction(rate)

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", args.target
            )
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, up, delay),
            pump(server_reader, client_writer, down, delay),
        )
        for w in (client_writer, server_writer):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", args.listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
