"""Echo: one client and a room that sends every message back.

Round-trip time (p50, p99) one message at a time, and messages per second pipelined
with 100 in flight. ``python -m benchmarks.echo [--quick] [--load node]``: from the
Python client (``_wire.py``, the default) or from Node's ``ws`` (``_node.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from . import _node
from ._common import pin_load, server, write_results
from ._wire import Peer

IMPLS = ("roomkit", "trio-websocket", "websockets", "socketio", "workerd")
WINDOW = 100


async def round_trips(url: str, count: int, socketio: bool) -> list[float]:
    peer = await Peer.open(url, "/echo", socketio=socketio)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        await peer.send("x" * 100)
        await peer.recv()
        times.append(time.perf_counter() - began)
    peer.close()
    return times


async def pipelined(url: str, count: int, socketio: bool) -> float:
    peer = await Peer.open(url, "/echo", socketio=socketio)
    credits = asyncio.Semaphore(WINDOW)

    async def send() -> None:
        for _ in range(count):
            await credits.acquire()
            await peer.send("x" * 100)

    began = time.perf_counter()
    sender = asyncio.create_task(send())
    for _ in range(count):
        await peer.recv()
        credits.release()
    await sender
    peer.close()
    return count / (time.perf_counter() - began)


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


def trip_times(load: str, url: str, count: int, socketio: bool) -> list[float]:
    """``count`` round trips' seconds, from the load generator ``load``."""
    if load == "node":
        return _node.round_trips(url, count, socketio)
    return asyncio.run(round_trips(url, count, socketio))


def pipelined_rate(load: str, url: str, count: int, socketio: bool) -> float:
    """Messages a second, ``WINDOW`` in flight, from the load generator ``load``."""
    if load == "node":
        return _node.pipelined(url, count, WINDOW, socketio)
    return asyncio.run(pipelined(url, count, socketio))


def measure(impl: str, trips: int, count: int, runs: int, load: str = "python") -> dict[str, float]:
    with server(impl, "echo") as (url, _):
        socketio = impl == "socketio"
        trip_times(load, url, trips // 10, socketio)  # warm up
        times = [t for _ in range(runs) for t in trip_times(load, url, trips, socketio)]
        rates = [pipelined_rate(load, url, count, socketio) for _ in range(runs)]
    return {
        "rtt_p50_ms": percentile(times, 50) * 1000,
        "rtt_p99_ms": percentile(times, 99) * 1000,
        "pipelined_msg_per_s": statistics.median(rates),
    }


def run(quick: bool, load: str = "python") -> dict[str, Any]:
    pin_load()
    trips, count, runs = (500, 5_000, 3) if quick else (2_000, 20_000, 5)
    results = {impl: measure(impl, trips, count, runs, load) for impl in IMPLS}
    return {
        "round_trips": trips,
        "pipelined": count,
        "window": WINDOW,
        "load": load,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--load", choices=_node.LOADS, default="python")
    args = parser.parse_args()
    report = run(args.quick, args.load)
    print(f"{'server':<16} {'p50 ms':>8} {'p99 ms':>8} {'pipelined/s':>12}")
    for impl, r in report["results"].items():
        print(
            f"{impl:<16} {r['rtt_p50_ms']:>8.3f} {r['rtt_p99_ms']:>8.3f} "
            f"{r['pipelined_msg_per_s']:>12,.0f}"
        )
    write_results("echo", report)


if __name__ == "__main__":
    main()
