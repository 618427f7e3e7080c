"""A soak test of hostile and well-behaved clients together (issue 5); not part of
``make test``. Run with ``python -m benchmarks.soak [--seconds 60]``.

The server runs here, on Trio; the load runs in a child process (the ``websockets``
package's asyncio client, plus raw sockets for peers that misbehave at the TCP level).
Every room gets:

* well-behaved members, each sending a couple of messages a second and recording every
  broadcast it receives;
* a flooder, sending as fast as it can (rate limited, then closed with 1008);
* a staller, which completes the handshake and never reads again (cut off as a slow
  consumer);
* vanishers, which drop their TCP connection without a close;
* churners, which connect and leave over and over.

At the end it reports, and exits non-zero unless all of these hold: every
well-behaved member got every message the others sent; every flooder was closed and
every staller cut off; every room and connection of
the server is gone and its task tree is back to its size before the load; the
server's memory in the last third of the run did not grow past the middle third's by
more than a small margin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

import roomkit

ROOMS = 8
MEMBERS = 20
VANISHERS = 3
CHURNERS = 2
#: Memory in the last third may exceed the middle third's by this much (KiB) before
#: it counts as growth: allocator noise, not a leak.
MEMORY_SLACK_KIB = 4096


class SoakRoom(roomkit.Room):
    max_send_queue = 256 * 1024

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.attachment = request.query.get("who", "?")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(json.dumps({"from": conn.attachment, "body": message}))


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def serve_and_watch(seconds: float) -> bool:
    async with trio.open_nursery() as nursery:
        server: roomkit.Server = await nursery.start(partial(roomkit.serve, SoakRoom, port=0))
        baseline = count_tasks()
        samples: list[int] = []
        load = await trio.lowlevel.open_process(
            [sys.executable, "-m", "benchmarks.soak", "--load", server.url, str(seconds)],
            stdout=subprocess.PIPE,
        )
        output = b""
        assert load.stdout is not None
        async with load.stdout:
            while chunk := await load.stdout.receive_some():
                output += chunk
                samples.append(rss_kib())
        await load.wait()
        for _ in range(150):  # up to 15 s for closing handshakes and CLOSE_TIMEOUTs
            if not server.room_count:
                break
            await trio.sleep(0.1)
        await trio.sleep(0.5)
        report = json.loads(output.decode().strip().splitlines()[-1])
        third = max(1, len(samples) // 3)
        middle, last = samples[third : 2 * third], samples[2 * third :]
        growth = (max(last) - max(middle)) if middle and last else 0
        checks = {
            "every member got every message": report["missing"] == 0,
            "every flooder was closed with 1008": report["flood_closed"] == report["flooders"],
            "every staller was cut off": report["stall_cut"] == report["stallers"],
            "every room is gone": server.room_count == 0,
            "every task ended": count_tasks() == baseline,
            "memory did not keep growing": growth <= MEMORY_SLACK_KIB,
        }
        print(f"clients: {report['clients']}, messages delivered to members: {report['got']}")
        print(f"flooders closed with 1008: {report['flood_closed']} of {report['flooders']}")
        print(f"stallers cut off: {report['stall_cut']} of {report['stallers']}")
        print(
            f"server memory: middle third peak {max(middle, default=0)} KiB, "
            f"last third peak {max(last, default=0)} KiB"
        )
        for check, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}: {check}")
        nursery.cancel_scope.cancel()
        return all(checks.values())


# The load, in its own process.

HANDSHAKE = (
    "GET /{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def load(url: str, seconds: float) -> dict[str, Any]:
    import websockets

    host, port = url.removeprefix("ws://").split(":")
    stop = asyncio.Event()
    everyone_in = asyncio.Event()
    joined = 0
    sent: dict[int, set[str]] = {r: set() for r in range(ROOMS)}
    received: dict[tuple[int, int], set[str]] = {}
    result: dict[str, Any] = {"flood_closed": 0, "stall_cut": 0}

    async def member(room: int, n: int) -> None:
        nonlocal joined
        got = received[room, n] = set()
        async with websockets.connect(f"{url}/soak{room}?who=m{n}", max_queue=None) as ws:
            joined += 1
            if joined == ROOMS * MEMBERS:
                everyone_in.set()
            await everyone_in.wait()

            async def reader() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    if message["from"].startswith("m"):
                        got.add(message["body"])

            reading = asyncio.create_task(reader())
            i = 0
            while not stop.is_set():
                body = f"{room}:{n}:{i}"
                sent[room].add(body)
                await ws.send(body)
                i += 1
                await asyncio.sleep(0.5 + random.random() * 0.1)
            await asyncio.sleep(2)  # let the last broadcasts arrive
            reading.cancel()

    async def flooder(room: int) -> None:
        async with websockets.connect(f"{url}/soak{room}?who=flood", max_queue=None) as ws:
            try:
                while not stop.is_set():
                    await ws.send("x" * 50)
                    await asyncio.sleep(0)
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1008:
                    result["flood_closed"] += 1

    async def staller(room: int) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(sock, HANDSHAKE.format(room=f"soak{room}?who=stall").encode())
        await stop.wait()
        ended = False
        try:  # read now: the server has closed (1008), or dropped us, long ago
            async with asyncio.timeout(10):
                while await loop.sock_recv(sock, 1 << 16):
                    pass
            ended = True
        except ConnectionResetError:
            ended = True
        except TimeoutError:  # still open after 10 s: never cut off
            pass
        result["stall_cut"] += ended
        sock.close()

    async def vanisher(room: int) -> None:
        while not stop.is_set():
            ws = await websockets.connect(f"{url}/soak{room}?who=gone")
            await ws.send("here and gone")
            ws.transport.abort()  # no close frame, no FIN handshake: just gone
            await asyncio.sleep(random.random())

    async def churner(room: int) -> None:
        while not stop.is_set():
            async with websockets.connect(f"{url}/soak{room}?who=churn") as ws:
                await ws.send("hello")
            await asyncio.sleep(random.random() * 0.2)

    async def timer() -> None:
        await everyone_in.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            print("tick", flush=True)  # the server samples its memory on each line
            await asyncio.sleep(1)
        stop.set()

    tasks = [timer()]
    for room in range(ROOMS):
        tasks += [member(room, n) for n in range(MEMBERS)]
        tasks += [flooder(room), staller(room)]
        tasks += [vanisher(room) for _ in range(VANISHERS)]
        tasks += [churner(room) for _ in range(CHURNERS)]
    await asyncio.gather(*tasks)
    missing = sum(len(sent[room] - got) for (room, _), got in received.items())
    result |= {
        "clients": ROOMS * (MEMBERS + 2 + VANISHERS + CHURNERS),
        "flooders": ROOMS,
        "stallers": ROOMS,
        "missing": missing,
        "got": sum(len(got) for got in received.values()),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--load", nargs=2, metavar=("URL", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})  # not the server's core (a child inherits it)
        report = asyncio.run(load(args.load[0], float(args.load[1])))
        print(json.dumps(report), flush=True)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    sys.exit(0 if trio.run(serve_and_watch, args.seconds) else 1)


if __name__ == "__main__":
    main()
