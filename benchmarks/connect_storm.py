"""Connect storm: handshakes per second to one room, 50 at a time.

``python -m benchmarks.connect_storm [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from functools import partial
from typing import Any

from ._common import median_of, pin_load, server, write_results
from ._wire import Peer

IMPLS = ("roomkit", "trio-websocket", "websockets", "socketio")
CONCURRENCY = 50


async def storm(url: str, count: int, socketio: bool) -> float:
    peers: list[Peer] = []
    began = time.perf_counter()
    for start in range(0, count, CONCURRENCY):
        batch = range(start, min(count, start + CONCURRENCY))
        peers += await asyncio.gather(*(Peer.open(url, "/lobby", socketio=socketio) for _ in batch))
    elapsed = time.perf_counter() - began
    for peer in peers:
        peer.close()
    await asyncio.sleep(0.5)  # let the server see them go before the next run
    return count / elapsed


def _storm(url: str, count: int, socketio: bool) -> float:
    return asyncio.run(storm(url, count, socketio))


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    count, runs = (500, 3) if quick else (2_000, 5)
    results = {}
    for impl in IMPLS:
        with server(impl, "idle") as (url, _):
            results[impl] = median_of(runs, partial(_storm, url, count, impl == "socketio"))
    return {"unit": "handshakes/s", "connections": count, "runs": runs, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    for impl, rate in report["results"].items():
        print(f"{impl:<16} {rate:>10,.0f} handshakes/s")
    write_results("connect_storm", report)


if __name__ == "__main__":
    main()
