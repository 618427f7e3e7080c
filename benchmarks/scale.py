"""``python -m benchmarks.scale [--quick]``: idle connections up to the file limit, and
100,000 of them over ``roomkit serve --workers N`` (issue 19's scale target).

Two phases, each against a real ``roomkit serve`` (a temporary SQLite file, ``--metrics``,
``--log-level warning``), its soft ``RLIMIT_NOFILE`` raised to the hard limit in the
child before it starts (``preexec_fn``), as ``ulimit -n`` in a shell would:

* **one process**: as many idle connections as fit under its file limit, the hard limit
  less the descriptors it holds at start and ``HEADROOM`` more, all in one room; then
  one broadcast to all of them.
* **workers**: ``roomkit serve --workers N``, ``100,000`` idle connections (10,000 in a
  quick run) in rooms of ``ROOM_SIZE``, as many rooms owned by each worker; then every
  room broadcasts once, all rooms at the same moment.

The load is several processes (``multiprocessing``, spawned), each under its own file
limit and holding a share of the rooms whole: plain asyncio protocols that do the
handshake and read frames by hand, one bound to a source address of its own in
127.0.0.0/8 (``127.X.Y.1``, at most ``PER_ADDRESS`` connections each) so that the
connections are not bound by one address's ephemeral port range. A room's broadcast is
triggered by one of its own clients sending ``go``; the room broadcasts it. The time is
from the moment every load process was told to send its triggers (one instant of the
machine's monotonic clock, which all processes share) until the last client has its
message, as the load processes saw it.

Memory is the server's resident memory (``VmRSS``, and ``Pss``, which shares the pages
the processes have in common out among them, from ``/proc/PID/smaps_rollup``), summed
over the supervisor and its workers, with every connection open: per connection, the
whole of it (what the target bounds, 15 KiB) and what the connections added to the
server as it started.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import attrs

import roomkit
from roomkit._core.placement import owner
from roomkit._roomid import RoomId

from ._common import family, free_port, stop, wait_workers_up, write_results

ROOT = Path(__file__).parent.parent
#: Descriptors a server may need beyond its connections and what it holds at start:
#: a metrics scrape, SQLite's journal, a hand-off in flight, connections not yet closed.
HEADROOM = 64
#: Clients in each room of the workers' phase.
ROOM_SIZE = 100
#: Connections the workers' phase holds (issue 19), and in a quick run.
CONNECTIONS, QUICK_CONNECTIONS = 100_000, 10_000
#: Workers for the full run: the fewest whose share of 100,000 connections (16,667) and
#: ``HEADROOM`` fit under a 20,000-descriptor limit, since each worker's own memory counts
#: against every connection (see benchmarking.md); two in a quick run.
WORKERS, QUICK_WORKERS = 6, 2
#: Load processes of the workers' phase: 12,500 connections each, under their own limit.
LOADS, QUICK_LOADS = 8, 2
#: Connections from one source address, well inside its ephemeral port range.
PER_ADDRESS = 10_000
#: Handshakes each load process has in flight: enough to keep the server busy, few
#: enough for the listen backlog (``somaxconn``) with every load process at it.
IN_FLIGHT = 64
#: Seconds a handshake may take, and the broadcasts.
HANDSHAKE_TIMEOUT, BROADCAST_TIMEOUT = 60.0, 60.0
#: Tries of a handshake that the server closed or refused (its own handshake_timeout, 10 s,
#: runs out for some while 100,000 open at once on two cores), a second apart, as a
#: reconnecting client would; the retries are reported.
TRIES, RETRY_PAUSE = 4, 1.0
#: The trigger a room's first client sends: the text frame ``go``, masked with a zero key.
TRIGGER = b"\x81\x82\x00\x00\x00\x00go"
#: Linux's option to choose a bound socket's port at connect(), from the whole 4-tuple.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # any 16 bytes in base64 will do


class Scale(roomkit.Room):
    """An idle chat room, awake (no hibernation, no pings), whose one message is
    broadcast to all its clients; as big as a file limit of 20,000 allows."""

    hibernate_after = None
    ping_interval = None
    max_connections = 20_000

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.tags = ["all"]
        conn.attachment = {"user": request.room}

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(message)


# The server


def _all_files() -> None:
    """In the server's child, before it runs: its soft file limit raised to the hard."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@attrs.frozen
class Served:
    host: str
    port: int
    pid: int
    #: Where the server's log goes (warnings and up).
    log: Path

    def warnings(self) -> dict[str, int]:
        """How many workers the supervisor killed as silent, and hand-offs that failed."""
        text = self.log.read_text()
        return {
            "workers_killed_silent": len(re.findall(r"silent for .* killing it", text)),
            "handoffs_failed": len(re.findall(r"hand-off of .* failed", text)),
            "log_lines": text.count("\n"),
        }

    def pids(self) -> list[int]:
        """The server's process and its children (a supervisor's workers)."""
        return family(self.pid)


@contextmanager
def served(workers: int | None) -> Iterator[Served]:
    """``roomkit serve benchmarks.scale:Scale``, with ``--workers`` if given, once it
    serves (every worker up)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        argv = [sys.executable, "-m", "roomkit", "serve", "benchmarks.scale:Scale"]
        argv += ["--port", str(port), "--storage", f"{folder}/rooms.sqlite3"]
        argv += ["--log-level", "warning", "--metrics"]
        argv += ["--workers", str(workers)] if workers else []
        log = Path(folder) / "server.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(argv, cwd=ROOT, preexec_fn=_all_files, stderr=stderr)
        try:
            wait_workers_up(port, workers or 0, process, within=60)
            yield Served("127.0.0.1", port, process.pid, log)
        finally:
            stop(process, within=60)


def memory_kib(pids: list[int]) -> dict[str, int]:
    """``Rss`` and ``Pss`` summed over ``pids``, in KiB."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                total[name.lower()] += int(rest.split()[0])
    return total


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def balanced_rooms(count: int, workers: int) -> list[str]:
    """``count`` room names, as many owned by each of ``workers`` slots (one more for
    the first ``count % workers``), in the order their names come."""
    slots = [str(i) for i in range(workers)]
    room = {slot: count // workers + (i < count % workers) for i, slot in enumerate(slots)}
    names: list[str] = []
    for i in range(1 << 30):
        slot = owner(RoomId("", f"r{i}"), slots)
        if room[slot]:
            room[slot] -= 1
            names.append(f"r{i}")
            if len(names) == count:
                break
    return names


# The load: one process holds its rooms' clients.


@attrs.frozen
class Plan:
    """What one load process opens: ``members`` clients in each of ``rooms``, from
    127.``block``.Y.1."""

    host: str
    port: int
    rooms: tuple[str, ...]
    members: int
    block: int
    #: Whether each room's first client sends the trigger.
    trigger: bool = True


class _Tally:
    """What a load process counts: its clients' first messages, and those it lost."""

    def __init__(self, expected: int) -> None:
        self.arrivals: list[float] = []
        self.expected = expected
        self.lost = 0
        #: How the connections lost after their 101 were closed: the close code, or None.
        self.lost_codes: dict[int | None, int] = {}
        self.all_in = asyncio.Event()

    def arrived(self) -> None:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) == self.expected:
            self.all_in.set()


class _Client(asyncio.Protocol):
    """One WebSocket client: sends its handshake, then reads frames; answers pings, and
    counts its first message."""

    def __init__(self, request: bytes, tally: _Tally, opened: asyncio.Future[None]) -> None:
        self.request, self.tally, self.opened = request, tally, opened
        self.buffer = b""
        self.got = False
        self.code: int | None = None  # of the server's close frame, if one came
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.opened.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer.split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                assert self.transport is not None
                self.transport.close()
                return
            self.buffer = self.buffer[end + 4 :]
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buffer = self.buffer
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length >= 126:
                start = 4 if length == 126 else 10
                if len(buffer) < start:
                    break
                length = int.from_bytes(buffer[2:start], "big")
            if len(buffer) < start + length:
                break
            payload, buffer = buffer[start : start + length], buffer[start + length :]
            if opcode in (0x1, 0x2) and not self.got:
                self.got = True
                self.tally.arrived()
            elif opcode == 0x8 and length >= 2:
                self.code = int.from_bytes(payload[:2], "big")
            elif opcode == 0x9 and self.transport is not None:  # ping: pong
                self.transport.write(bytes((0x8A, 0x80 | length)) + b"\0\0\0\0" + payload)
        self.buffer = buffer

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before its 101: {exc}"))
        else:
            self.tally.lost += 1
            codes = self.tally.lost_codes
            codes[self.code] = codes.get(self.code, 0) + 1

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)


async def _open(plan: Plan, room: str, source: str, tally: _Tally) -> _Client:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (plan.host, plan.port))
    except BaseException:
        sock.close()
        raise
    request = (
        f"GET /{room} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    opened = loop.create_future()
    _, client = await loop.create_connection(lambda: _Client(request, tally, opened), sock=sock)
    await opened
    return client


async def _load(plan: Plan, pipe: Connection) -> None:
    """Open the plan's clients, say so; at the time the parent sends, trigger each room's
    broadcast; say when each client had it; close when told."""
    tally = _Tally(len(plan.rooms) * plan.members)
    gate = asyncio.Semaphore(IN_FLIGHT)
    errors: list[str] = []
    retries = 0
    firsts: dict[str, _Client] = {}  # each room's first client held: it triggers
    clients: list[_Client] = []

    async def one(i: int, room: str) -> None:
        nonlocal retries
        source = f"127.{plan.block}.{i // PER_ADDRESS}.1"
        for attempt in range(TRIES):
            if attempt:
                retries += 1
                await asyncio.sleep(RETRY_PAUSE)
            async with gate:
                try:
                    opening = _open(plan, room, source, tally)
                    client = await asyncio.wait_for(opening, HANDSHAKE_TIMEOUT)
                    break
                except (TimeoutError, OSError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
        else:
            errors.append(error)
            return
        clients.append(client)
        if plan.trigger:
            firsts.setdefault(room, client)

    began = time.monotonic()
    order = [(i, plan.rooms[i // plan.members]) for i in range(len(plan.rooms) * plan.members)]
    await asyncio.gather(*(one(i, room) for i, room in order))
    tally.expected = len(clients)
    loop = asyncio.get_running_loop()
    opened = ("open", len(clients), errors[:5], len(errors), time.monotonic() - began, retries)
    pipe.send(opened)
    _, at = await loop.run_in_executor(None, pipe.recv)
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    sent = time.monotonic()
    for client in firsts.values():
        client.send(TRIGGER)
    with suppress(TimeoutError):  # what arrived by then is what is reported
        await asyncio.wait_for(tally.all_in.wait(), BROADCAST_TIMEOUT)
    pipe.send(("done", sent, tally.arrivals, tally.lost, tally.lost_codes))
    await loop.run_in_executor(None, pipe.recv)
    for client in clients:
        assert client.transport is not None
        client.transport.close()


def load_process(plan: Plan, pipe: Connection) -> None:
    _all_files()
    asyncio.run(_load(plan, pipe))


def hold(served: Served, plans: list[Plan], baseline: dict[str, int]) -> dict[str, Any]:
    """Open every plan's clients in a process of its own, read the server's memory, then
    trigger every room's broadcast at one instant and time it."""
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    for plan in plans:
        mine, theirs = context.Pipe()
        process = context.Process(target=load_process, args=(plan, theirs), daemon=True)
        process.start()
        pipes.append(mine)
        processes.append(process)
    try:
        opened = [pipe.recv() for pipe in pipes]
        held = sum(o[1] for o in opened)
        pids = served.pids()
        memory = memory_kib(pids)
        fds = [descriptors(pid) for pid in pids]
        at = time.monotonic() + 0.5
        for pipe in pipes:
            pipe.send(("go", at))
        done = [pipe.recv() for pipe in pipes]
        after = memory_kib(served.pids())
        for pipe in pipes:
            pipe.send(("close",))
    finally:
        for process in processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    arrivals = sorted(a - at for d in done for a in d[2])
    quantiles = statistics.quantiles(arrivals, n=100) if len(arrivals) > 1 else [0.0] * 99
    return {
        **served.warnings(),
        "connections": held,
        "failed": sum(o[3] for o in opened),
        "retries": sum(o[5] for o in opened),
        "errors": [e for o in opened for e in o[2]][:5],
        "open_seconds": max(o[4] for o in opened),
        "server_processes": len(pids),
        "descriptors": fds,
        "kib_per_connection": memory["rss"] / held,
        "pss_kib_per_connection": memory["pss"] / held,
        "added_kib_per_connection": (memory["rss"] - baseline["rss"]) / held,
        "server_rss_mib": memory["rss"] / 1024,
        "server_pss_mib": memory["pss"] / 1024,
        "server_rss_mib_at_start": baseline["rss"] / 1024,
        "server_rss_mib_after_broadcast": after["rss"] / 1024,
        "rooms": sum(len(plan.rooms) for plan in plans),
        "delivered": len(arrivals),
        "lost": sum(d[3] for d in done),
        "lost_codes": {
            str(code): sum(d[4].get(code, 0) for d in done)
            for code in {code for d in done for code in d[4]}
        },
        "trigger_skew_ms": (max(d[1] for d in done) - at) * 1e3,
        "broadcast_p50_s": quantiles[49],
        "broadcast_p99_s": quantiles[98],
        "broadcast_all_s": arrivals[-1] if arrivals else float("nan"),
    }


def one_process(quick: bool) -> dict[str, Any]:
    """As many connections as one process's file limit allows, in one room, and one
    broadcast to them all."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with served(None) as server:
        count = 5_000 if quick else hard - descriptors(server.pid) - HEADROOM
        loads = -(-count // (hard - HEADROOM))
        shares = [count // loads + (i < count % loads) for i in range(loads)]
        # One room, several load processes: each holds a part of it; one triggers.
        plans = [
            Plan(server.host, server.port, ("all",), share, 101 + i, trigger=i == 0)
            for i, share in enumerate(shares)
        ]
        result = hold(server, plans, memory_kib(server.pids()))
    return {"file_limit": hard, "headroom": HEADROOM, **result}


def workers(quick: bool) -> dict[str, Any]:
    """``CONNECTIONS`` in rooms of ``ROOM_SIZE`` over ``--workers N``, every room
    broadcasting once."""
    count, n, loads = (
        (QUICK_CONNECTIONS, QUICK_WORKERS, QUICK_LOADS) if quick else (CONNECTIONS, WORKERS, LOADS)
    )
    names = balanced_rooms(count // ROOM_SIZE, n)
    with served(n) as server:
        plans = [
            Plan(server.host, server.port, tuple(names[i::loads]), ROOM_SIZE, 1 + i)
            for i in range(loads)
        ]
        result = hold(server, plans, memory_kib(server.pids()))
    return {"workers": n, "load_processes": loads, "room_size": ROOM_SIZE, **result}


def run(quick: bool) -> dict[str, Any]:
    load_before = os.getloadavg()
    report = {"one_process": one_process(quick), "workers": workers(quick)}
    return {**report, "load_average_before": load_before, "load_average_after": os.getloadavg()}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| | connections | rooms | KiB per connection (RSS, PSS) "
        "| broadcast to all: p50, p99, last |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, r in (
        ("one process", report["one_process"]),
        (f"--workers {report['workers']['workers']}", report["workers"]),
    ):
        lines.append(
            f"| {label} | {r['connections']:,} of {r['connections'] + r['failed']:,} "
            f"({r.get('retries', 0):,} retried, {r['lost']:,} lost) "
            f"| {r['rooms']:,} | {r['kib_per_connection']:.1f}, {r['pss_kib_per_connection']:.1f} "
            f"| {r['broadcast_p50_s']:.2f} s, {r['broadcast_p99_s']:.2f} s, "
            f"{r['broadcast_all_s']:.2f} s ({r['delivered']:,} delivered) |"
        )
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[tuple[str, float, str]]:
    """Issue 19's: every connection held and delivered, at most 15 KiB each with workers."""
    held = report["workers"]
    asked = held["connections"] + held["failed"]
    return [
        (
            f"connections over --workers {held['workers']} held and delivered, of {asked:,}",
            min(held["connections"], held["delivered"]) / asked,
            ">= 1.0",
        ),
        ("server memory per connection over --workers (KiB)", held["kib_per_connection"], "<= 15"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    print(table(report))
    for phase in ("one_process", "workers"):
        print(phase, {k: v for k, v in report[phase].items()})
    write_results("scale", report)


if __name__ == "__main__":
    main()
