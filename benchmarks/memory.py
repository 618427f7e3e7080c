"""Memory of idle connections and hibernated rooms (issue 4).

Opens N rooms with one idle connection each (2,000 by default) against:

* roomkit with hibernation off (every Room instance and event loop stays),
* roomkit with hibernation on (``hibernate_after = 1``: instances dropped),
* bare trio-websocket (accept and wait), the transport roomkit stands on,
* roomkit with every connection in one hibernated room, so that the difference from the
  second line is what a hibernated room costs beyond its socket,

and reports the server process's resident memory per connection, measured from
``/proc/PID/status`` before the connections and after they have settled. The load is
the ``websockets`` package's asyncio client in this process. Run with
``python -m benchmarks.memory [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path

import websockets

from .durable_writes import RESULTS, server

#: Connections opened at once: a steady arrival, not a connect storm.
BATCH = 100


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(url: str, rooms: int, pid: int, pause: float, one_room: bool = False) -> float:
    """Open one connection per room, in batches ``pause`` seconds apart; KiB of RSS each.

    The pause lets the rooms of one batch hibernate before the next batch connects, so
    the memory they gave up is reused (a process's RSS does not shrink when Python frees
    objects: what is measured is the peak).
    """
    before = rss_kib(pid)
    connections = []
    for start in range(0, rooms, BATCH):
        names = [0 if one_room else i for i in range(start, start + BATCH)]
        batch = [websockets.connect(f"{url}/room{n}") for n in names]
        connections += await asyncio.gather(*batch)
        await asyncio.sleep(pause)
    after = rss_kib(pid)
    for ws in connections:
        await ws.close()
    return (after - before) / rooms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="500 rooms instead of 2,000")
    args = parser.parse_args()
    rooms = 500 if args.quick else 2_000
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    results: dict[str, float] = {}
    scenarios = {
        "bare trio-websocket": ("trio-websocket", 0.1, False),
        "roomkit, hibernation off": ("idle", 0.1, False),
        "roomkit, hibernated": ("hibernating", 1.5, False),
        "roomkit, all in one room": ("hibernating", 1.5, True),
    }
    for label, (name, pause, one_room) in scenarios.items():
        with server(name) as (url, pid):
            results[label] = asyncio.run(hold(url, rooms, pid, pause, one_room))
    floor = results["bare trio-websocket"]
    print(f"{rooms} rooms, one idle connection each")
    print(f"{'server':<28} {'KiB/conn':>9} {'x bare':>7}")
    for label, kib in results.items():
        print(f"{label:<28} {kib:>9.1f} {kib / floor:>7.2f}")
    room = results["roomkit, hibernated"] - results["roomkit, all in one room"]
    print(f"a hibernated room beyond its socket: {room:.1f} KiB")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "benchmark": "memory",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "rooms": rooms,
        "kib_per_connection": results,
        "kib_per_hibernated_room_beyond_its_socket": room,
    }
    (RESULTS / "memory.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
