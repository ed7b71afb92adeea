#!/usr/bin/env python3
"""An emulated network link in front of a TCP server on 127.0.0.1.

    linkemu.py LISTEN_PORT TARGET_PORT [--delay-ms 10] [--rate-mbit 200]
               [--queue-kb N] [--stats FILE] [--cut-after BYTES]

Accepts connections on 127.0.0.1:LISTEN_PORT and forwards each to
127.0.0.1:TARGET_PORT. Every byte is held back by the one-way delay, and
each direction of the link (shared by all connections through it, like one
host's network interface) carries at most the given rate. With a one-way
delay of 10 ms a round trip takes 20 ms.

Each direction of a connection queues at most --queue-kb KiB that have
not yet come out of the link (default: twice what the link carries in one
delay, at least 1 MiB); a sender that is further ahead waits, as it would
for TCP's window, so that what it has written is close to what has
arrived.

--stats FILE: the bytes that came out of the link in each direction, "up"
(client to server) and "down" (server to client), summed over all
connections since the start, are written to FILE as JSON:

    {"up": N, "down": M, "open": K, "connections": C, "cut": X,
     "cut_up": U, "cut_down": D}

with the connections open now (K), accepted so far (C) and cut (X), and
the totals up and down at the moment of the cut (0 before one). The
file is replaced (never half written) when a connection opens or closes,
every half second while bytes flow, on SIGUSR1, and on SIGTERM, SIGINT or
exit. To measure one case, read it before and after, once "open" is 0.

--cut-after BYTES: the first connection whose upstream (client to server)
bytes passing the link reach BYTES is cut: both its sides are reset (TCP
RST) at once, whatever is still queued is dropped. Only one connection is
ever cut; later ones pass.

For benchmarks on machines whose kernel lacks `tc netem`. Prints "ready"
once it listens.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time

CHUNK = 64 * 1024


class Direction:
    """One direction of the link: a serialisation clock shared by every
    connection, so that together they get at most `rate` bytes/s, and the
    count of the bytes that came out of it."""

    def __init__(self, rate_bytes: float):
        self.rate = rate_bytes
        self.free_at = 0.0
        self.bytes = 0

    def finish_time(self, size: int, arrived: float) -> float:
        start = max(arrived, self.free_at)
        self.free_at = start + size / self.rate
        return self.free_at


class Stats:
    def __init__(self, path):
        self.path = path
        self.up = Direction(1)
        self.down = Direction(1)
        self.open = 0
        self.connections = 0
        self.cut = 0
        self.cut_up = 0
        self.cut_down = 0
        self.written = None

    def write(self, force=False):
        if not self.path:
            return
        data = {
            "up": self.up.bytes,
            "down": self.down.bytes,
            "open": self.open,
            "connections": self.connections,
            "cut": self.cut,
            "cut_up": self.cut_up,
            "cut_down": self.cut_down,
        }
        if data == self.written and not force:
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.write("\n")
        os.replace(tmp, self.path)
        self.written = data


def reset(writer):
    """Closes a connection at once with a TCP RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
    writer.transport.abort()


class Connection:
    def __init__(self, link, client_writer, server_writer):
        self.link = link
        self.writers = (client_writer, server_writer)
        self.up_bytes = 0
        self.tasks = []
        self.aborted = False

    def abort(self):
        if self.aborted:
            return
        self.aborted = True
        for w in self.writers:
            reset(w)
        for t in self.tasks:
            t.cancel()

    def delivered_up(self, n: int):
        self.up_bytes += n
        link = self.link
        if (
            link.cut_after is not None
            and not link.cut_done
            and self.up_bytes >= link.cut_after
        ):
            link.cut_done = True
            stats = link.stats
            stats.cut += 1
            stats.cut_up, stats.cut_down = stats.up.bytes, stats.down.bytes
            print(
                f"linkemu: cut a connection after {self.up_bytes} bytes up",
                file=sys.stderr,
                flush=True,
            )
            self.abort()


class Link:
    def __init__(self, args):
        self.target = args.target
        self.delay = args.delay_ms / 1000
        rate = args.rate_mbit * 1e6 / 8
        self.stats = Stats(args.stats)
        self.stats.up.rate = rate
        self.stats.down.rate = rate
        if args.queue_kb is not None:
            self.queue_limit = int(args.queue_kb * 1024)
        else:
            self.queue_limit = max(1 << 20, int(2 * rate * self.delay))
        self.cut_after = args.cut_after
        self.cut_done = False

    async def pump(self, conn, reader, writer, direction, upstream):
        """Carries one direction of a connection; True once the sender's
        end of stream has been passed on, False if either side failed."""
        queue: asyncio.Queue = asyncio.Queue()
        queued = 0
        room = asyncio.Event()
        room.set()
        delay = self.delay

        async def receive():
            nonlocal queued
            while True:
                await room.wait()
                data = await reader.read(CHUNK)
                now = time.monotonic()
                if not data:
                    await queue.put((now + delay, b""))
                    return
                queued += len(data)
                if queued >= self.queue_limit:
                    room.clear()
                done = direction.finish_time(len(data), now)
                await queue.put((done + delay, data))

        async def deliver():
            nonlocal queued
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
                direction.bytes += len(data)
                queued -= len(data)
                if queued < self.queue_limit:
                    room.set()
                if upstream:
                    conn.delivered_up(len(data))
                await writer.drain()

        tasks = [asyncio.ensure_future(receive()), asyncio.ensure_future(deliver())]
        try:
            await asyncio.gather(*tasks)
            return True
        except (ConnectionError, OSError):
            return False
        finally:
            for t in tasks:
                t.cancel()

    async def handle(self, client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            client_writer.close()
            return
        stats = self.stats
        stats.open += 1
        stats.connections += 1
        stats.write()
        conn = Connection(self, client_writer, server_writer)
        conn.tasks = [
            asyncio.ensure_future(
                self.pump(conn, client_reader, server_writer, stats.up, True)
            ),
            asyncio.ensure_future(
                self.pump(conn, server_reader, client_writer, stats.down, False)
            ),
        ]
        try:
            for t in asyncio.as_completed(conn.tasks):
                try:
                    ok = await t
                except asyncio.CancelledError:
                    ok = False
                if not ok:
                    # One side failed: the other is not waited for.
                    conn.abort()
        finally:
            for w in conn.writers:
                w.close()
            stats.open -= 1
            stats.write()

    async def report(self):
        while True:
            await asyncio.sleep(0.5)
            self.stats.write()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("listen", type=int)
    parser.add_argument("target", type=int)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--rate-mbit", type=float, default=200.0)
    parser.add_argument("--queue-kb", type=float, default=None)
    parser.add_argument("--stats", default=None)
    parser.add_argument("--cut-after", type=int, default=None)
    args = parser.parse_args()
    link = Link(args)
    link.stats.write(force=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: link.stats.write(force=True))

    server = await asyncio.start_server(link.handle, "127.0.0.1", args.listen)
    reporter = asyncio.ensure_future(link.report())
    print("ready", flush=True)
    try:
        async with server:
            await stop.wait()
    finally:
        reporter.cancel()
        link.stats.write(force=True)


if __name__ == "__main__":
    asyncio.run(main())
