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
* churners, which connect and leave over and over;
* a ping flooder, sending pings as fast as it can and never reading (owed one pong at
  a time, then closed with 1008 for the flood).

Beside them, in rooms of their own:

* reminders: clients whose every message re-arms their room's alarm an hour away (the
  Reminder of docs/storage.md), which must not grow the timer heap;
* members that talk through ``roomkit proxy``, a process of its own in front of the
  server (on the server's core), and a proxy abuser: a handshake whose
  ``Sec-WebSocket-Protocol`` is not ASCII (400, the proxy lives on) and a message
  streamed in fragments past the size limit (1009, never buffered whole).

At the end it reports memory (the server's and the proxy's resident size, and what
``Server.statistics()`` counts), and exits non-zero unless all of these hold: every
well-behaved member got every message the others sent, through the proxy too; every
flooder was closed and every staller and ping flooder cut off; every proxy abuse was
refused, and the proxy still runs; every room and connection of the server is gone and
its task tree is back to its size before the load; the timer heap never held more than
twice the live timers; the server's memory in the last third of the run did not grow
past the middle third's by more than a small margin.
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
REMINDERS = 8  # rooms, one client each
PROXIED_ROOMS = 2
#: Memory in the last third may exceed the middle third's by this much (KiB) before
#: it counts as growth: allocator noise, not a leak.
MEMORY_SLACK_KIB = 4096


class SoakRoom(roomkit.Room):
    max_send_queue = 256 * 1024

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.attachment = request.query.get("who", "?")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(json.dumps({"from": conn.attachment, "body": message}))


class Reminder(roomkit.Room):
    """docs/storage.md's Reminder: each message re-arms the alarm, an hour away."""

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.put("note", message)
        await self.storage.set_alarm(delay=3600)


ROUTES = {"/soak": SoakRoom, "/remind": Reminder}


def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def serve_and_watch(seconds: float) -> bool:
    async with trio.open_nursery() as nursery:
        server: roomkit.Server = await nursery.start(partial(roomkit.serve, ROUTES, port=0))
        front = await trio.lowlevel.open_process(
            [sys.executable, "-m", "roomkit", "proxy", server.url, "--port", "0"],
            stderr=subprocess.PIPE,
        )
        assert front.stderr is not None
        front_url = (await front.stderr.receive_some()).decode().split("listening on ")[1]
        front_url = front_url.split()[0]
        nursery.start_soon(drain, front.stderr)  # its log: a full pipe would stop it
        baseline = count_tasks()
        samples: list[int] = []
        timer_ratio = 0.0  # the most timer entries held per live timer
        proxy_peak = 0  # the proxy's largest resident size, KiB
        command = ["-m", "benchmarks.soak", "--load", server.url, front_url, str(seconds)]
        load = await trio.lowlevel.open_process(
            [sys.executable, *command],
            stdout=subprocess.PIPE,
        )
        output = b""
        assert load.stdout is not None
        async with load.stdout:
            while chunk := await load.stdout.receive_some():
                output += chunk
                samples.append(rss_kib())
                proxy_peak = max(proxy_peak, rss_kib(front.pid))
                stats = server.statistics()
                live = stats.connections + stats.rooms + REMINDERS  # pings, sweeps, alarms
                timer_ratio = max(timer_ratio, stats.timers / live)
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
            "every ping flooder was cut off": report["ping_cut"] == report["ping_flooders"],
            "every proxy abuse was refused": report["abuse_refused"] == report["abuses"],
            "the timer heap stayed within twice the live timers": timer_ratio <= 2,
            "every room is gone": server.room_count == 0,
            "the proxy still runs": front.returncode is None,
            "every task ended": count_tasks() == baseline,
            "memory did not keep growing": growth <= MEMORY_SLACK_KIB,
        }
        print(f"clients: {report['clients']}, messages delivered to members: {report['got']}")
        print(f"flooders closed with 1008: {report['flood_closed']} of {report['flooders']}")
        print(f"stallers cut off: {report['stall_cut']} of {report['stallers']}")
        print(f"ping flooders cut off: {report['ping_cut']} of {report['ping_flooders']}")
        print(f"proxy abuses refused: {report['abuse_refused']} of {report['abuses']}")
        print(f"timer heap: at most {timer_ratio:.2f} entries per live timer")
        print(
            f"server memory: middle third peak {max(middle, default=0)} KiB, "
            f"last third peak {max(last, default=0)} KiB, at the end {rss_kib()} KiB"
        )
        print(f"at the end: {server.statistics()}")
        print(f"proxy memory: peak {proxy_peak} KiB, at the end {rss_kib(front.pid)} KiB")
        front.kill()
        await front.wait()
        for check, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}: {check}")
        nursery.cancel_scope.cancel()
        return all(checks.values())


# The load, in its own process.

HANDSHAKE = (
    "GET /{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
)
#: A masked client ping with a 125-byte payload (a mask of zeros leaves it as it is).
PING = bytes([0x89, 0x80 | 125]) + b"\0" * 4 + b"p" * 125


async def load(url: str, proxy_url: str, seconds: float) -> dict[str, Any]:
    import websockets

    host, port = url.removeprefix("ws://").split(":")
    stop = asyncio.Event()
    everyone_in = asyncio.Event()
    joined = 0
    rooms = ROOMS + PROXIED_ROOMS
    sent: dict[int, set[str]] = {r: set() for r in range(rooms)}
    received: dict[tuple[int, int], set[str]] = {}
    result: dict[str, Any] = {"flood_closed": 0, "stall_cut": 0, "ping_cut": 0}
    result |= {"abuse_refused": 0, "abuses": 0}

    async def member(room: int, n: int) -> None:
        nonlocal joined
        got = received[room, n] = set()
        base = url if room < ROOMS else proxy_url  # the last rooms, through the proxy
        async with websockets.connect(f"{base}/soak/r{room}?who=m{n}", max_queue=None) as ws:
            joined += 1
            if joined == rooms * MEMBERS:
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
        async with websockets.connect(f"{url}/soak/r{room}?who=flood", max_queue=None) as ws:
            try:
                while not stop.is_set():
                    await ws.send("x" * 50)
                    await asyncio.sleep(0)
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == 1008:
                    result["flood_closed"] += 1

    async def raw(
        room: str, extra: str = "", address: tuple[str, int] | None = None
    ) -> socket.socket:
        """A socket that has sent a handshake for ``room``, with a tiny receive window."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, address or (host, int(port)))
        await loop.sock_sendall(sock, HANDSHAKE.format(room=room, extra=extra).encode())
        return sock

    async def ended(sock: socket.socket) -> bool:
        """Whether the server has closed ``sock``: read what it sent, for up to 20 s (its
        close waits CLOSE_TIMEOUT for an answer this peer never sends)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(20):
                while await loop.sock_recv(sock, 1 << 16):
                    pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:  # still open after 20 s: never cut off
            return False
        finally:
            sock.close()

    async def staller(room: int) -> None:
        sock = await raw(f"soak/r{room}?who=stall")
        await stop.wait()
        cut = await ended(sock)  # not `+= await`: that reads the count before waiting
        result["stall_cut"] += cut

    async def ping_flooder(room: int) -> None:
        sock = await raw(f"soak/r{room}?who=pings")
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                await loop.sock_sendall(sock, PING * 100)
                await asyncio.sleep(0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off, as it should be
        cut = await ended(sock)
        result["ping_cut"] += cut

    async def reminder(room: int) -> None:
        async with websockets.connect(f"{url}/remind/r{room}") as ws:
            i = 0
            while not stop.is_set():
                await ws.send(f"note {i}")
                i += 1
                await asyncio.sleep(0.05)

    async def proxy_abuser() -> None:
        proxy_host, proxy_port = proxy_url.removeprefix("ws://").split(":")
        address = (proxy_host, int(proxy_port))
        loop = asyncio.get_running_loop()
        await everyone_in.wait()
        while not stop.is_set():
            sock = await raw("soak/abuse", "Sec-WebSocket-Protocol: café\r\n", address)
            answer = await loop.sock_recv(sock, 1 << 16)
            result["abuse_refused"] += answer.startswith(b"HTTP/1.1 400")
            sock.close()
            async with websockets.connect(f"{proxy_url}/soak/abuse") as ws:
                chunks = ("x" * 65536 for _ in range(64))  # 4 MiB, in fragments
                try:
                    await ws.send(chunks)
                    await ws.recv()
                except websockets.ConnectionClosed as exc:
                    result["abuse_refused"] += exc.rcvd is not None and exc.rcvd.code == 1009
            result["abuses"] += 2
            await asyncio.sleep(1)

    async def vanisher(room: int) -> None:
        while not stop.is_set():
            ws = await websockets.connect(f"{url}/soak/r{room}?who=gone")
            await ws.send("here and gone")
            ws.transport.abort()  # no close frame, no FIN handshake: just gone
            await asyncio.sleep(random.random())

    async def churner(room: int) -> None:
        while not stop.is_set():
            async with websockets.connect(f"{url}/soak/r{room}?who=churn") as ws:
                await ws.send("hello")
            await asyncio.sleep(random.random() * 0.2)

    async def timer() -> None:
        await everyone_in.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            print("tick", flush=True)  # the server samples its memory on each line
            await asyncio.sleep(1)
        stop.set()

    tasks = [timer(), proxy_abuser()]
    for room in range(ROOMS):
        tasks += [member(room, n) for n in range(MEMBERS)]
        tasks += [flooder(room), staller(room), ping_flooder(room)]
        tasks += [vanisher(room) for _ in range(VANISHERS)]
        tasks += [churner(room) for _ in range(CHURNERS)]
    for room in range(ROOMS, rooms):
        tasks += [member(room, n) for n in range(MEMBERS)]
    tasks += [reminder(room) for room in range(REMINDERS)]
    await asyncio.gather(*tasks)
    missing = sum(len(sent[room] - got) for (room, _), got in received.items())
    result |= {
        "clients": ROOMS * (MEMBERS + 3 + VANISHERS + CHURNERS)
        + PROXIED_ROOMS * MEMBERS
        + REMINDERS,
        "flooders": ROOMS,
        "ping_flooders": ROOMS,
        "stallers": ROOMS,
        "missing": missing,
        "got": sum(len(got) for got in received.values()),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--load", nargs=3, metavar=("URL", "PROXY_URL", "SECONDS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.load:
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})  # not the server's core (a child inherits it)
        report = asyncio.run(load(args.load[0], args.load[1], float(args.load[2])))
        print(json.dumps(report), flush=True)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    sys.exit(0 if trio.run(serve_and_watch, args.seconds) else 1)


if __name__ == "__main__":
    main()
