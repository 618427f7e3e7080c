"""Fan-out: N clients in one room; the room sends M messages of 100 bytes to all of them.
Deliveries per second, from the trigger to the last client's last message.

``python -m benchmarks.fanout [--quick] [--load node]``: from the Python client
(``_wire.py``, the default) or from Node's ``ws`` (``_node.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import _node
from ._common import median_of, pin_load, server, write_results
from ._wire import Peer

IMPLS = ("roomkit", "websockets", "trio-websocket", "socketio", "workerd")


async def fanout(url: str, clients: int, messages: int, socketio: bool) -> float:
    peers = []
    for start in range(0, clients, 100):  # open in batches, not a storm
        batch = [Peer.open(url, "/fanout", socketio=socketio) for _ in range(start, start + 100)]
        peers += await asyncio.gather(*batch[: clients - start])
    if socketio:
        for peer in peers:
            await peer.send("/fanout", event="join")
            assert await peer.recv() == "joined"

    async def drain(peer: Peer) -> None:
        if not socketio:
            await peer.receive_many(messages)
            return
        for _ in range(messages):  # Engine.IO pings come as text frames among them
            await peer.recv()

    began = time.perf_counter()
    await peers[0].send(f"go {messages}")
    await asyncio.gather(*(drain(peer) for peer in peers))
    elapsed = time.perf_counter() - began
    for peer in peers:
        peer.close()
    return clients * messages / elapsed


def deliveries(load: str, url: str, clients: int, messages: int, socketio: bool) -> float:
    """Deliveries a second of one fan-out, from the load generator ``load``."""
    if load == "node":
        return _node.fanout(url, clients, messages, socketio)
    return asyncio.run(fanout(url, clients, messages, socketio))


def measure(impl: str, clients: int, messages: int, runs: int, load: str = "python") -> float:
    with server(impl, "fanout") as (url, _):
        socketio = impl == "socketio"
        return median_of(runs, lambda: deliveries(load, url, clients, messages, socketio))


def run(quick: bool, load: str = "python") -> dict[str, Any]:
    pin_load()
    sizes = (200,) if quick else (200, 2000)
    messages, runs = (200, 3) if quick else (500, 5)
    results: dict[str, Any] = {}
    for clients in sizes:
        results[f"{clients} clients"] = {
            impl: measure(impl, clients, messages if clients <= 200 else 100, runs, load)
            for impl in IMPLS
        }
    return {
        "unit": "deliveries/s",
        "messages": messages,
        "runs": runs,
        "load": load,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--load", choices=_node.LOADS, default="python")
    args = parser.parse_args()
    report = run(args.quick, args.load)
    for size, by_impl in report["results"].items():
        print(size)
        for impl, rate in by_impl.items():
            print(f"  {impl:<16} {rate:>12,.0f} {rate / by_impl['roomkit']:>6.2f}x")
    write_results("fanout", report)


if __name__ == "__main__":
    main()
