"""Memory of idle connections and hibernated rooms (issues 4, 7 and 13).

Reads the server process's resident memory (``/proc/PID/status``) before and after
opening connections, and reports KiB per connection:

* idle connections, all in one room (5,000), against bare trio-websocket, the
  ``websockets`` package and workerd (the guide's ChatRoom, each socket tagged and
  given an attachment, as roomkit's are; the RSS is the workerd process's);
* one idle connection in each of 2,000 rooms, with hibernation off and on, so that the
  difference from the one-room figure is what a room costs beyond its socket.

Connections arrive in batches. With hibernation on, batches are small (25; 50 in a
quick run) and 0.3 s apart, and rooms hibernate after 0.2 s, so that rooms hibernate
as they go: a process's RSS
does not shrink when Python frees objects, so what is measured is the peak, and the
rooms still awake at the end (one batch) count in it. ``python -m benchmarks.memory
[--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ._common import pin_load, rss_kib, server, write_results
from ._wire import Peer

#: Connections opened at once: a steady arrival, not a connect storm.
BATCH = 100
#: The pause after each batch when rooms hibernate as they go (they sleep after 0.2 s).
HIBERNATING_PAUSE = 0.3
#: Rooms always number 2,000, as the target says: fewer would spread the server's own
#: fixed costs over fewer rooms. A quick run takes them 50 at a time instead of 25.
ROOMS = 2_000


async def hold(url: str, count: int, pid: int, batch: int, pause: float, one_room: bool) -> float:
    """KiB of the server's RSS per connection, once ``count`` are open."""
    before = rss_kib(pid)
    peers = []
    for start in range(0, count, batch):
        names = ["lobby" if one_room else f"room{i}" for i in range(start, start + batch)]
        peers += await asyncio.gather(*(Peer.open(url, f"/{name}") for name in names))
        await asyncio.sleep(pause)
    after = rss_kib(pid)
    for peer in peers:
        peer.close()
    return (after - before) / count


def run(quick: bool) -> dict[str, Any]:
    pin_load()
    idle, rooms = (1_000 if quick else 5_000), ROOMS
    sleepy = (50 if quick else 25), HIBERNATING_PAUSE  # batch and pause
    steady = BATCH, 0.05
    scenarios = {
        "bare trio-websocket": ("trio-websocket", "idle", idle, steady, True),
        "websockets": ("websockets", "idle", idle, steady, True),
        "workerd": ("workerd", "idle", idle, steady, True),
        "roomkit": ("roomkit", "idle", idle, steady, True),
        "roomkit, a room each, hibernation off": ("roomkit", "idle", rooms, steady, False),
        "roomkit, a room each, hibernated": ("roomkit", "hibernating", rooms, sleepy, False),
        "roomkit, one room, hibernated": ("roomkit", "hibernating", rooms, sleepy, True),
    }
    results: dict[str, float] = {}
    for label, (impl, scenario, count, (batch, pause), one_room) in scenarios.items():
        with server(impl, scenario) as (url, pid):
            results[label] = asyncio.run(hold(url, count, pid, batch, pause, one_room))
    room = results["roomkit, a room each, hibernated"] - results["roomkit, one room, hibernated"]
    return {
        "unit": "KiB per connection",
        "idle_connections": idle,
        "rooms": rooms,
        "results": results,
        "hibernated_room_beyond_its_socket_kib": room,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    report = run(parser.parse_args().quick)
    floor = report["results"]["bare trio-websocket"]
    print(f"{'server':<40} {'KiB/conn':>9} {'x bare':>7}")
    for label, kib in report["results"].items():
        print(f"{label:<40} {kib:>9.1f} {kib / floor:>7.2f}")
    room = report["hibernated_room_beyond_its_socket_kib"]
    print(f"a hibernated room beyond its socket: {room:.1f} KiB")
    write_results("memory", report)


if __name__ == "__main__":
    main()
