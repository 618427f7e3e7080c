"""Acknowledged durable writes per second through one room (issue 3).

Each message is stored by the room (``storage.put``) and acknowledged only once the
write is durable (SQLite in WAL mode, ``synchronous=FULL``). Measured with group
commit and without, beside the pipelined echo rate through a room, which is the
ceiling: the issue-7 target is durable writes >= 0.8x echo.

The server runs in its own process, pinned to core 0; the load (the ``websockets``
package's asyncio client) runs here, pinned to core 1. Each figure is the median of
several runs. Run with ``python -m benchmarks.durable_writes [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import websockets

RESULTS = Path(__file__).parent / "results"


@contextmanager
def server(room: str, *options: str) -> Iterator[tuple[str, int]]:
    """A server of ``benchmarks._servers`` on core 0: its URL and process id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._servers", room, "--cpu", "0", *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip(), process.pid
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def pipelined(url: str, count: int, window: int) -> float:
    """Messages per second, with up to ``window`` unacknowledged at a time."""
    async with websockets.connect(url, max_queue=None) as ws:
        payload = "x" * 100
        credits = asyncio.Semaphore(window)

        async def send() -> None:
            for _ in range(count):
                await credits.acquire()
                await ws.send(payload)

        start = time.perf_counter()
        sender = asyncio.create_task(send())
        for _ in range(count):
            await ws.recv()
            credits.release()
        await sender
        return count / (time.perf_counter() - start)


def measure(url: str, count: int, window: int, runs: int) -> float:
    asyncio.run(pipelined(f"{url}/warmup", count // 10, window))
    return statistics.median(
        asyncio.run(pipelined(f"{url}/run{i}", count, window)) for i in range(runs)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = parser.parse_args()
    count, runs, window = (2_000, 3, 100) if args.quick else (20_000, 5, 100)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with server("echo") as (url, _):
            results["echo"] = measure(url, count, window, runs)
        with server("ledger", "--storage", f"{tmp}/group.sqlite3") as (url, _):
            results["durable, group commit"] = measure(url, count, window, runs)
        single = (f"{tmp}/single.sqlite3", "--no-group-commit")
        with server("ledger", "--storage", *single) as (url, _):
            results["durable, one commit per write"] = measure(url, count, window, runs)
    echo = results["echo"]
    print(f"{'scenario':<32} {'msg/s':>10} {'x echo':>8}")
    for name, rate in results.items():
        print(f"{name:<32} {rate:>10,.0f} {rate / echo:>8.2f}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "durable_writes",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "messages": count,
        "window": window,
        "runs": runs,
        "msg_per_s": results,
    }
    (RESULTS / "durable_writes.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
