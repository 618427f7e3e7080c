"""Echo: one client and a room that sends every message back.

Round-trip time (p50, p99) one message at a time, and messages per second pipelined
with 100 in flight. ``python -m benchmarks.echo [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

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


def measure(impl: str, trips: int, count: int, runs: int) -> dict[str, float]:
    with server(impl, "echo") as (url, _):
        socketio = impl == "socketio"
        asyncio.run(round_trips(url, trips // 10, socketio))  # warm up
        times = [t for _ in range(runs) for t in asyncio.run(round_trips(url, trips, socketio))]
        rates = [asyncio.run(pipelined(url, count, socketio)) for _ in range(runs)]
    return {
        "rtt_p50_ms": percentile(times, 50) * 1000,
        "rtt_p99_ms": percentile(times, 99) * 1000,
        "pipelined_msg_per_s": statistics.median(rates),
    }


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    trips, count, runs = (500, 5_000, 3) if quick else (2_000, 20_000, 5)
    results = {impl: measure(impl, trips, count, runs) for impl in IMPLS}
    return {"round_trips": trips, "pipelined": count, "window": WINDOW, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    print(f"{'server':<16} {'p50 ms':>8} {'p99 ms':>8} {'pipelined/s':>12}")
    for impl, r in report["results"].items():
        print(
            f"{impl:<16} {r['rtt_p50_ms']:>8.3f} {r['rtt_p99_ms']:>8.3f} "
            f"{r['pipelined_msg_per_s']:>12,.0f}"
        )
    write_results("echo", report)


if __name__ == "__main__":
    main()
