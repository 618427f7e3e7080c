"""Chat: 500 clients in 50 rooms, each sending at a fixed rate; every message goes to
every client of its room. Latency from a send to its last delivery (p50, p99) at each
rate, and the highest rate held with p99 under 100 ms.

``python -m benchmarks.chat [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from ._common import pin_load, server, write_results
from ._wire import Peer

IMPLS = ("roomkit", "websockets", "trio-websocket", "socketio")
ROOMS, PER_ROOM = 50, 10
#: Messages a second per client, tried in order until p99 passes the bound.
RATES = (1, 2, 5, 10, 20, 40)
P99_BOUND_MS = 100.0


async def chat(url: str, rate: float, seconds: float, socketio: bool) -> dict[str, float]:
    rooms = [
        await asyncio.gather(
            *(Peer.open(url, f"/room{r}", socketio=socketio) for _ in range(PER_ROOM))
        )
        for r in range(ROOMS)
    ]
    if socketio:
        for r, peers in enumerate(rooms):
            for peer in peers:
                await peer.send(f"/room{r}", event="join")
                assert await peer.recv() == "joined"
    sent: dict[str, float] = {}
    last: dict[str, float] = {}
    stop = time.perf_counter() + seconds

    async def speaker(peer: Peer, name: str) -> None:
        await asyncio.sleep(1 / rate * (hash(name) % 1000) / 1000)  # spread the starts
        n = 0
        while time.perf_counter() < stop:
            key = f"{name}:{n}"
            sent[key] = time.perf_counter()
            await peer.send(key)
            n += 1
            await asyncio.sleep(1 / rate)

    async def listener(peer: Peer) -> None:
        try:
            while True:
                key = await peer.recv()
                last[key] = time.perf_counter()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    listeners = [asyncio.create_task(listener(p)) for peers in rooms for p in peers]
    await asyncio.gather(
        *(speaker(p, f"{r}.{i}") for r, peers in enumerate(rooms) for i, p in enumerate(peers))
    )
    await asyncio.sleep(1)  # the last deliveries
    for task in listeners:
        task.cancel()
    for peers in rooms:
        for peer in peers:
            peer.close()
    latencies = [(last[k] - t) * 1000 for k, t in sent.items() if k in last]
    lost = len(sent) - len(latencies)
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": cuts[49], "p99_ms": cuts[98], "lost": lost}


def measure(impl: str, seconds: float, rates: tuple[int, ...]) -> dict[str, Any]:
    by_rate: dict[str, dict[str, float]] = {}
    held = 0
    with server(impl, "chat") as (url, _):
        for rate in rates:
            result = asyncio.run(chat(url, rate, seconds, impl == "socketio"))
            by_rate[str(rate)] = result
            if result["p99_ms"] >= P99_BOUND_MS or result["lost"]:
                break
            held = rate
    return {"by_rate": by_rate, "highest_rate_held": held}


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    seconds, rates = (2.0, RATES[1:4]) if quick else (10.0, RATES)
    results = {impl: measure(impl, seconds, rates) for impl in IMPLS}
    return {
        "clients": ROOMS * PER_ROOM,
        "rooms": ROOMS,
        "seconds_per_rate": seconds,
        "p99_bound_ms": P99_BOUND_MS,
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    for impl, result in report["results"].items():
        print(f"{impl}: held {result['highest_rate_held']} msg/s per client")
        for rate, r in result["by_rate"].items():
            p50, p99, lost = r["p50_ms"], r["p99_ms"], r["lost"]
            print(f"  {rate:>3}/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  lost {lost}")
    write_results("chat", report)


if __name__ == "__main__":
    main()
