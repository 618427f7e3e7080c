"""``python -m benchmarks.forward [--quick]``: what forwarding to the owner node costs.

A roomkit echo room (``benchmarks._servers``, pinned to core 0) is reached directly,
and through a forwarding front (``Forwards.forward``, as a node that is not the room's
owner forwards a handshake), once splicing in the kernel (``os.splice``, in the
front's splicing thread) and once copying through Python (``receive_some``/``send_all``,
what a TLS client gets). The fronts are processes of their own, pinned to core 0 with
the owner: on this 2-core machine core 1 is the load's (``_wire.Peer``, the same light
asyncio client as the echo benchmark's). For each path: the round trip of a 100-byte
message, one at a time (p50, p99 over every round), and messages a second with
``WINDOW`` in flight (the median of the rounds); the paths in turn, round after round,
so that noise falls on all alike. For each front, the CPU it spent per round trip (all
its threads, from ``/proc``). The ratios are to direct; the target is a p50 through a
front within 1.5x of direct.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import trio

from roomkit import _forward
from roomkit._accept import Head, accept_loop, read_request, remote_address
from roomkit._metrics import Metrics

from ._common import pin_load, server, write_results
from .echo import percentile, pipelined, round_trips

#: The fronts measured: each splices the same way for every connection.
FRONTS = ("os.splice", "userspace")
#: The target: a round trip's p50 through a front, over direct's.
TARGET: float = 1.5


async def serve_front(owner: str, kernel: bool) -> None:
    """A forwarding front to ``owner`` (``HOST:PORT``) until killed; prints its URL."""
    # Plain TCP clients are spliced in the kernel wherever os.splice exists: the front
    # that measures the other way turns that off in its own process.
    _forward.KERNEL_SPLICE = kernel
    forwards = _forward.Forwards(b"benchmark secret", answer_timeout=10, metrics=Metrics())

    async def handler(stream: trio.SocketStream) -> None:
        _, head, _ = await read_request(None, 10, stream)
        if isinstance(head, Head):
            outcome = await forwards.forward(stream, head, remote_address(stream), owner)
            if outcome in (_forward.Forwarded.SPLICED, _forward.Forwarded.REFUSED):
                return
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(forwards.run)
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        print(f"ws://127.0.0.1:{listener.socket.getsockname()[1]}", flush=True)
        await accept_loop(listener, nursery, handler)


@contextmanager
def front(owner_url: str, way: str) -> Iterator[tuple[str, int]]:
    """A front process forwarding to ``owner_url`` on core 0: its URL and process id."""
    owner = owner_url.removeprefix("ws://")
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.forward", "--front", way, "--owner", owner],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError(f"the {way} front did not start")
        yield url, process.pid
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def cpu_seconds(pid: int) -> float:
    """The CPU time that process ``pid`` has run, all its threads (``schedstat``: ns)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    trips, count, rounds = (500, 5_000, 3) if quick else (2_000, 20_000, 5)
    with ExitStack() as stack:
        owner, _ = stack.enter_context(server("roomkit", "echo"))
        fronts = {way: stack.enter_context(front(owner, way)) for way in FRONTS}
        urls = {"direct": owner} | {way: url for way, (url, _) in fronts.items()}
        times: dict[str, list[float]] = {path: [] for path in urls}
        rates: dict[str, list[float]] = {path: [] for path in urls}
        cpu = dict.fromkeys(FRONTS, 0.0)
        for url in urls.values():
            asyncio.run(round_trips(url, trips // 10, False))  # warm up
        for _ in range(rounds):
            for path, url in urls.items():
                pid = fronts[path][1] if path in fronts else None
                began = cpu_seconds(pid) if pid else 0.0
                times[path] += asyncio.run(round_trips(url, trips, False))
                if pid:
                    cpu[path] += cpu_seconds(pid) - began
                rates[path].append(asyncio.run(pipelined(url, count, False)))
    results = {
        path: {
            "rtt_p50_ms": percentile(times[path], 50) * 1000,
            "rtt_p99_ms": percentile(times[path], 99) * 1000,
            "pipelined_msg_per_s": statistics.median(rates[path]),
        }
        for path in urls
    }
    direct = results["direct"]
    for path in FRONTS:
        figures = results[path]
        figures["front_cpu_us_per_rtt"] = cpu[path] / len(times[path]) * 1e6
        figures["p50_vs_direct"] = figures["rtt_p50_ms"] / direct["rtt_p50_ms"]
        figures["p99_vs_direct"] = figures["rtt_p99_ms"] / direct["rtt_p99_ms"]
        figures["rate_vs_direct"] = figures["pipelined_msg_per_s"] / direct["pipelined_msg_per_s"]
    return {"round_trips": trips, "pipelined": count, "rounds": rounds, "results": results}


def table(report: dict[str, Any]) -> str:
    lines = [
        "| path | p50 ms | p99 ms | pipelined msg/s | p50 vs direct | msg/s vs direct "
        "| front CPU µs/round trip |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path, r in report["results"].items():
        ratios = (
            f"{r['p50_vs_direct']:.2f}x | {r['rate_vs_direct']:.2f}x | "
            f"{r['front_cpu_us_per_rtt']:.0f}"
            if "p50_vs_direct" in r
            else "1.00x | 1.00x | -"
        )
        lines.append(
            f"| {path} | {r['rtt_p50_ms']:.3f} | {r['rtt_p99_ms']:.3f} | "
            f"{r['pipelined_msg_per_s']:,.0f} | {ratios} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--front", choices=FRONTS, help="run one front (for run)")
    parser.add_argument("--owner", help="the owner's HOST:PORT (with --front)")
    parser.add_argument("--cpu", default="0", help="the front's core, or none (with --front)")
    args = parser.parse_args()
    if args.front:
        if args.cpu != "none" and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {int(args.cpu)})
        trio.run(serve_front, args.owner, args.front == "os.splice")
        return
    began = time.monotonic()
    report = run(args.quick)
    print(table(report))
    for way in FRONTS:
        ratio = report["results"][way]["p50_vs_direct"]
        met = "met" if ratio <= TARGET else "NOT met"
        print(f"p50 through a front ({way}) vs direct: {ratio:.2f} (<= {TARGET}: {met})")
    print(f"{time.monotonic() - began:.0f} s; results: {write_results('forward', report)}")


if __name__ == "__main__":
    main()
