"""Acknowledged durable writes per second through one room (issue 3).

Each message is stored by the room (``storage.put``) and acknowledged only once the
write is durable (SQLite in WAL mode, ``synchronous=FULL``). Measured with group commit
and without, beside the pipelined echo rate through a room, which is the ceiling: the
target is durable writes >= 0.8x echo. 100 messages in flight.

``python -m benchmarks.durable_writes [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from typing import Any

from ._common import median_of, pin_load, server, write_results
from .echo import pipelined


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    count, runs = (5_000, 3) if quick else (20_000, 5)
    results: dict[str, float] = {}
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
        }
        for label, (scenario, *options) in scenarios.items():
            with server("roomkit", scenario, *options) as (url, _):
                asyncio.run(pipelined(url, count // 10, False))  # warm up
                results[label] = median_of(runs, lambda: asyncio.run(pipelined(url, count, False)))
    return {"unit": "msg/s", "messages": count, "runs": runs, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    echo = report["results"]["echo through a room"]
    print(f"{'scenario':<32} {'msg/s':>10} {'x echo':>8}")
    for name, rate in report["results"].items():
        print(f"{name:<32} {rate:>10,.0f} {rate / echo:>8.2f}")
    write_results("durable_writes", report)


if __name__ == "__main__":
    main()
