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

    rate_limit = None  # a benchmark floods on purpose

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


class Ledger(roomkit.Room):
    """Stores every message under a new key, then acknowledges it: one durable write each."""

    rate_limit = None

    def __init__(self) -> None:
        self.count = 0

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.count += 1
        await self.storage.put(f"entry:{self.count:010}", message)
        conn.send("ok")


class Idle(roomkit.Room):
    """Tags and attaches each connection, then waits: what an idle chat member costs."""

    hibernate_after = None
    ping_interval = None

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.tags = ["all"]
        conn.attachment = {"user": request.room}


class Hibernating(Idle):
    """The same, hibernating after a second without events."""

    hibernate_after = 1.0


ROOMS = {"echo": Echo, "ledger": Ledger, "idle": Idle, "hibernating": Hibernating}
PEERS = ("trio-websocket",)


async def _serve_trio_websocket() -> None:
    """Bare trio-websocket: accept, then read until the peer leaves. roomkit's floor."""
    import trio_websocket

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        print(f"ws://127.0.0.1:{server.port}", flush=True)


async def _serve(room: type[roomkit.Room], storage: str, group_commit: bool) -> None:
    async with trio.open_nursery() as nursery:
        server: roomkit.Server = await nursery.start(
            partial(roomkit.serve, room, port=0, storage=storage, group_commit=group_commit)
        )
        print(server.url, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("room", choices=sorted(ROOMS) + list(PEERS))
    parser.add_argument("--storage", default=":memory:")
    parser.add_argument("--no-group-commit", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        if args.room == "trio-websocket":
            trio.run(_serve_trio_websocket)
        else:
            trio.run(_serve, ROOMS[args.room], args.storage, not args.no_group_commit)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
