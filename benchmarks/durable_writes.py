"""Acknowledged durable writes per second through one room (issue 3).

Each message is stored by the room (``storage.put``) and acknowledged only once the
write is durable (SQLite in WAL mode, ``synchronous=FULL``). Measured with group commit
and without, beside the pipelined echo rate through a room, which is the ceiling: the
target is durable writes >= 0.8x echo. 100 messages in flight. Rooms with recovery
(``Room.history``) log every broadcast, a durable write each: measured apart, a room
broadcasting each message with its log and without, with no bound of their own.

Beside each rate, the server's CPU µs per message (user + system, from /proc), split
into its event loop's thread and the rest (the worker thread that commits): steadier
than a rate on a shared machine, and it says which side a change saved on.

``python -m benchmarks.durable_writes [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from typing import Any

from ._common import pin_load, server, write_results
from .echo import pipelined
from .profile_echo import cpu_seconds


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    count, runs = (5_000, 3) if quick else (20_000, 5)
    results: dict[str, float] = {}
    cpu: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = {
            "echo through a room": ("echo",),
            "durable, group commit": ("ledger", "--storage", f"{tmp}/group.sqlite3"),
            "durable, one commit per write": (
                "ledger",
                "--storage",
                f"{tmp}/single.sqlite3",
                "--no-group-commit",
            ),
            # Rooms with recovery, measured apart (issue 19): a broadcast each message,
            # logged (a durable write each, group commit), beside the same unlogged.
            "broadcast through a room": ("chat",),
            "broadcast, logged for recovery": ("logged", "--storage", f"{tmp}/log.sqlite3"),
        }
        for label, (scenario, *options) in scenarios.items():
            with server("roomkit", scenario, *options) as (url, pid):
                asyncio.run(pipelined(url, count // 10, False))  # warm up
                measured = [_measure(url, pid, count) for _ in range(runs)]
            measured.sort(key=lambda m: m[0])
            results[label], cpu[label] = measured[len(measured) // 2]  # the median rate's
    return {"unit": "msg/s", "messages": count, "runs": runs, "results": results, "cpu_us": cpu}


def _measure(url: str, pid: int, count: int) -> tuple[float, dict[str, float]]:
    """One pipelined run: its rate, and the server's CPU µs per message."""
    total, loop = cpu_seconds(pid), cpu_seconds(pid, pid)
    rate = asyncio.run(pipelined(url, count, False))
    total, loop = cpu_seconds(pid) - total, cpu_seconds(pid, pid) - loop
    return rate, {"loop": loop / count * 1e6, "threads": (total - loop) / count * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    echo = report["results"]["echo through a room"]
    print(f"{'scenario':<32} {'msg/s':>10} {'x echo':>8} {'CPU µs/msg: loop':>18} {'threads':>8}")
    for name, rate in report["results"].items():
        cpu = report["cpu_us"][name]
        print(
            f"{name:<32} {rate:>10,.0f} {rate / echo:>8.2f} {cpu['loop']:>18.1f} "
            f"{cpu['threads']:>8.1f}"
        )
    write_results("durable_writes", report)


if __name__ == "__main__":
    main()
