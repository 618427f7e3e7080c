"""``python -m benchmarks.workers [--quick]``: ``roomkit serve --workers N`` against one.

Real processes: ``roomkit serve benchmarks.workers:ROUTES --workers N`` for N = 1 and
2, and 4 in the full run (on a 2-core machine it shows the overhead, not scaling), all
started at once and measured in turn, round after round, so that a busy machine's
noise falls on every N alike. On each:

* **connect storm**: connections to ``STORM_ROOMS`` rooms, 50 at a time, then closed:
  handshakes a second, and each handshake's p50 and p99 (connect to ``101``). With N
  workers about (N-1)/N of them land on a worker that hands them to the room's owner.
* **echo**: ``ECHO_ROOMS`` rooms (as many in each worker), one client each with 100
  messages in flight: messages a second.
* **fan-out**: 200 clients in one room; the room broadcasts M messages of 100 bytes,
  100 a trigger: deliveries a second.

The cost figure is CPU time per message (a handshake to its ``101``, an echoed message,
a delivery): the user and system time of the supervisor and every worker
(``/proc/PID/stat``) over the measured windows of all rounds, over their messages; the
load's own beside it. Rates are medians of the rounds. Nothing is pinned: the workers
and the load share the cores as the kernel places them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from roomkit._core.placement import owner
from roomkit._roomid import RoomId

from ._common import family, free_port, stop, wait_workers_up, write_results
from ._servers import Echo, Fanout, Idle
from ._wire import Peer

ROOT = Path(__file__).parent.parent
#: What the workers serve: ``/echo/NAME``, ``/fanout/NAME``, ``/idle/NAME``.
ROUTES = {"/echo": Echo, "/fanout": Fanout, "/idle": Idle}
CONCURRENCY = 50
STORM_ROOMS = 64
ECHO_ROOMS = 8
WINDOW = 100
FANOUT_CLIENTS = 200
#: Broadcasts a fan-out trigger asks for; the next trigger leaves once its sender has
#: them all. Not all at once: a worker whose event loop does not run for a second
#: misses its heartbeats and is killed, and 2,000 broadcasts to 200 clients, in one hook
#: or in 20 triggers queued together (a room runs up to 32 queued events in a row),
#: took longer than that here.
BURST = 100
TICK = os.sysconf("SC_CLK_TCK")


@contextmanager
def supervised(workers: int) -> Iterator[tuple[str, int]]:
    """``roomkit serve --workers N``, once it listens: its URL and pid."""
    port = free_port()  # at --log-level warning its URL is not logged
    with tempfile.TemporaryDirectory() as folder:
        storage = f"{folder}/rooms.sqlite3"
        options = ["--port", str(port), "--log-level", "warning", "--metrics", "--storage", storage]
        command = ["roomkit", "serve", "benchmarks.workers:ROUTES", *options]
        argv = [sys.executable, "-m", *command, "--workers", str(workers)]
        process = subprocess.Popen(argv, cwd=ROOT)
        try:
            wait_workers_up(port, workers, process, within=30)
            yield f"ws://127.0.0.1:{port}", process.pid
        finally:
            stop(process, within=30)


def cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and its children (a supervisor and its workers)."""
    total = 0
    for each in family(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def rooms(prefix: str, count: int, workers: int) -> list[str]:
    """``count`` room names, as many owned by each of ``workers`` slots."""
    slots = [str(i) for i in range(workers)]
    names: list[str] = []
    for slot in slots:
        mine = (f"r{i}" for i in range(10_000) if owner(RoomId(prefix, f"r{i}"), slots) == slot)
        names += [next(mine) for _ in range(count // workers)]
    return names


class Meter:
    """Rates, and CPU time summed over the measured windows, of one scenario on one server."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rates: list[float] = []
        self.server = self.load = 0.0
        self.messages = 0

    @contextmanager
    def window(self, messages: int) -> Iterator[None]:
        """Measure ``messages`` sent in the block."""
        server, load, began = cpu_seconds(self.pid), own_cpu_seconds(), time.perf_counter()
        yield
        self.rates.append(messages / (time.perf_counter() - began))
        self.server += cpu_seconds(self.pid) - server
        self.load += own_cpu_seconds() - load
        self.messages += messages

    def figures(self) -> dict[str, float]:
        return {
            "rate": statistics.median(self.rates),
            "server_cpu_us": self.server / self.messages * 1e6,
            "load_cpu_us": self.load / self.messages * 1e6,
        }


async def storm(url: str, meter: Meter, count: int, times: list[float]) -> None:
    """``count`` handshakes, 50 at a time, each one's time added to ``times``."""

    async def open_one(i: int) -> Peer:
        began = time.perf_counter()
        peer = await Peer.open(url, f"/idle/r{i % STORM_ROOMS}")
        times.append(time.perf_counter() - began)
        return peer

    peers: list[Peer] = []
    with meter.window(count):
        for start in range(0, count, CONCURRENCY):
            batch = range(start, min(count, start + CONCURRENCY))
            peers += await asyncio.gather(*map(open_one, batch))
    for peer in peers:
        peer.close()
    await asyncio.sleep(0.5)  # let the server see them go before the next run


async def echo(url: str, meter: Meter, names: list[str], count: int) -> None:
    """``count`` messages through each room, its client with ``WINDOW`` in flight."""
    peers = [await Peer.open(url, f"/echo/{name}") for name in names]

    async def one(peer: Peer) -> None:
        credits = asyncio.Semaphore(WINDOW)

        async def send() -> None:
            for _ in range(count):
                await credits.acquire()
                await peer.send("x" * 100)

        sender = asyncio.create_task(send())
        for _ in range(count):
            await peer.recv()
            credits.release()
        await sender

    with meter.window(len(peers) * count):
        await asyncio.gather(*map(one, peers))
    for peer in peers:
        peer.close()


async def fanout(url: str, meter: Meter, messages: int) -> None:
    """``messages`` broadcasts to ``FANOUT_CLIENTS``, ``BURST`` a trigger, timed from the
    first trigger to the last client's last message."""
    peers: list[Peer] = []
    for _ in range(FANOUT_CLIENTS // 100):  # open in batches, not a storm
        peers += await asyncio.gather(*(Peer.open(url, "/fanout/one") for _ in range(100)))

    async def drain(peer: Peer) -> None:
        for i in range(1, messages + 1):
            await peer.recv()
            if peer is peers[0] and i % BURST == 0 and i < messages:
                peer.send_nowait(f"go {BURST}")

    with meter.window(FANOUT_CLIENTS * messages):
        await peers[0].send(f"go {BURST}")
        await asyncio.gather(*map(drain, peers))
    for peer in peers:
        peer.close()


SCENARIOS = ("storm", "echo", "fanout")


def run(quick: bool) -> dict[str, Any]:
    counts = (1, 2) if quick else (1, 2, 4)
    connections, per_client, messages, runs = (
        (500, 2_500, 1_000, 3) if quick else (2_000, 10_000, 2_000, 5)
    )
    latencies: dict[int, list[float]] = {n: [] for n in counts}
    load_before = os.getloadavg()
    with ExitStack() as stack:
        servers = {n: stack.enter_context(supervised(n)) for n in counts}
        meters = {(n, s): Meter(pid) for n, (_, pid) in servers.items() for s in SCENARIOS}
        for _ in range(runs):  # every server in turn, so that noise falls on each alike
            for n, (url, _) in servers.items():
                asyncio.run(storm(url, meters[n, "storm"], connections, latencies[n]))
                names = rooms("/echo", ECHO_ROOMS, n)
                asyncio.run(echo(url, meters[n, "echo"], names, per_client))
                asyncio.run(fanout(url, meters[n, "fanout"], messages))
    results: dict[str, Any] = {}
    for n in counts:
        by = {s: meters[n, s].figures() for s in SCENARIOS}
        quantiles = statistics.quantiles(latencies[n], n=100)
        by["storm"] |= {"p50_ms": quantiles[49] * 1e3, "p99_ms": quantiles[98] * 1e3}
        results[str(n)] = by
    return {
        "connections": connections,
        "echo_per_client": per_client,
        "fanout_messages": messages,
        "runs": runs,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": results,
    }


def table(report: dict[str, Any]) -> str:
    by_n = report["results"]
    names = list(by_n)
    lines = [
        "| scenario | unit | " + " | ".join(f"--workers {n}" for n in names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for label, scenario, key, unit in (
        ("connect storm", "storm", "rate", "handshakes/s"),
        ("connect storm, handshake p50", "storm", "p50_ms", "ms"),
        ("connect storm, handshake p99", "storm", "p99_ms", "ms"),
        ("connect storm, server CPU", "storm", "server_cpu_us", "µs/handshake"),
        ("connect storm, load CPU", "storm", "load_cpu_us", "µs/handshake"),
        ("echo, pipelined", "echo", "rate", "msg/s"),
        ("echo, server CPU", "echo", "server_cpu_us", "µs/msg"),
        ("echo, load CPU", "echo", "load_cpu_us", "µs/msg"),
        ("fan-out, 200 clients", "fanout", "rate", "deliveries/s"),
        ("fan-out, server CPU", "fanout", "server_cpu_us", "µs/delivery"),
        ("fan-out, load CPU", "fanout", "load_cpu_us", "µs/delivery"),
    ):
        base = by_n[names[0]][scenario][key]
        cells = [_shown(base)]
        for name in names[1:]:
            value = by_n[name][scenario][key]
            cells.append(f"{_shown(value)} ({value / base:.2f}x)")
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shown(value: float) -> str:
    return f"{value:,.3g}" if value < 10 else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    print(table(report))
    for when in ("before", "after"):
        averages = report[f"load_average_{when}"]
        print(f"load average {when}: " + " ".join(f"{x:.2f}" for x in averages))
    write_results("workers", report)


if __name__ == "__main__":
    main()
