"""The rooms the benchmarks measure, served by ``python -m benchmarks._servers``.

Prints the server's URL on its first line of stdout once it listens.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

import trio

import roomkit


class Echo(roomkit.Room):
    """Answers every message with itself: the floor for a round trip through a room."""

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


class Ledger(roomkit.Room):
    """Stores every message under a new key, then acknowledges it: one durable write each."""

    def __init__(self) -> None:
        self.count = 0

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.count += 1
        await self.storage.put(f"entry:{self.count:010}", message)
        conn.send("ok")


ROOMS = {"echo": Echo, "ledger": Ledger}


async def _serve(room: type[roomkit.Room], storage: str, group_commit: bool) -> None:
    async with trio.open_nursery() as nursery:
        server: roomkit.Server = await nursery.start(
            partial(roomkit.serve, room, port=0, storage=storage, group_commit=group_commit)
        )
        print(server.url, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("room", choices=sorted(ROOMS))
    parser.add_argument("--storage", default=":memory:")
    parser.add_argument("--no-group-commit", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        trio.run(_serve, ROOMS[args.room], args.storage, not args.no_group_commit)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
