"""The servers the benchmarks measure: roomkit and its peers, each written the way its
users would write it. ``python -m benchmarks._servers IMPL SCENARIO`` prints the URL on
its first line of stdout once it listens.

Scenarios, the same for every implementation:

* ``echo``: every message is sent back to its sender.
* ``fanout``: a message ``go M`` makes the server send M messages of 100 bytes to
  every client of the room.
* ``chat``: every message goes to every client of the sender's room (path ``/NAME``;
  Socket.IO clients join with a ``join`` event).
* ``idle``: clients connect and wait (roomkit tags and attaches each, as a chat would).
* ``ledger`` (roomkit only): each message is stored, then acknowledged.

``workerd`` is Cloudflare's runtime serving the guide's ChatRoom Durable Object
(``benchmarks/js/worker.js``, on the hibernation API): this process picks a port,
prints the URL and becomes workerd (``exec``), so that its process id, and so its
memory, is workerd's. It serves every scenario but ``ledger`` and ``hibernating``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections import defaultdict
from functools import partial
from typing import Any

import trio

import roomkit

from ._common import JS

PAYLOAD = "x" * 100


# roomkit


class Echo(roomkit.Room):
    rate_limit = None  # a benchmark floods on purpose
    hibernate_after = None

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


class Fanout(roomkit.Room):
    rate_limit = None
    hibernate_after = None
    max_send_queue = 16 << 20

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        for _ in range(int(message.split()[1])):
            self.broadcast(PAYLOAD)


class Chat(roomkit.Room):
    rate_limit = None
    hibernate_after = None

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(message)


class Logged(Chat):
    """A chat room with recovery (issue 15): each broadcast is numbered and logged in
    its storage (a durable write each), so that a client that comes back gets what it
    missed."""

    history = roomkit.History()


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
    """The same, hibernating after 0.2 s without events."""

    hibernate_after = 0.2


ROOMS: dict[str, type[roomkit.Room]] = {
    "echo": Echo,
    "fanout": Fanout,
    "chat": Chat,
    "logged": Logged,
    "ledger": Ledger,
    "idle": Idle,
    "hibernating": Hibernating,
}


async def serve_roomkit(scenario: str, storage: str, group_commit: bool) -> None:
    async with trio.open_nursery() as nursery:
        serve = partial(
            roomkit.serve, ROOMS[scenario], port=0, storage=storage, group_commit=group_commit
        )
        server: roomkit.Server = await nursery.start(serve)
        print(server.url, flush=True)


# Bare trio-websocket: the transport roomkit's client side stands on, and its floor.


async def serve_trio_websocket(scenario: str) -> None:
    import trio_websocket

    rooms: dict[str, set[trio_websocket.WebSocketConnection]] = defaultdict(set)

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        room = rooms[request.path]
        room.add(ws)
        try:
            while True:
                message = await ws.get_message()
                if scenario == "echo":
                    await ws.send_message(message)
                elif scenario == "fanout":  # the naive loop: one awaited send at a time
                    for _ in range(int(str(message).split()[1])):
                        for peer in list(room):
                            await peer.send_message(PAYLOAD)
                elif scenario == "chat":
                    for peer in list(room):
                        await peer.send_message(message)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            room.discard(ws)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        print(f"ws://127.0.0.1:{server.port}", flush=True)


# The websockets package's asyncio server, with its broadcast().


async def serve_websockets(scenario: str) -> None:
    import websockets
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        room = rooms[ws.request.path]
        room.add(ws)
        try:
            async for message in ws:
                if scenario == "echo":
                    await ws.send(message)
                elif scenario == "fanout":
                    for _ in range(int(str(message).split()[1])):
                        broadcast(room, PAYLOAD)
                elif scenario == "chat":
                    broadcast(room, message)
        except websockets.ConnectionClosed:
            pass
        finally:
            room.discard(ws)

    async with serve(handler, "127.0.0.1", 0, max_queue=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"ws://127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().create_future()


# python-socketio with rooms, on uvicorn (ASGI).


async def serve_socketio(scenario: str) -> None:
    import socketio
    import uvicorn

    sio = socketio.AsyncServer(async_mode="asgi", logger=False, engineio_logger=False)

    @sio.on("join")  # type: ignore[misc]
    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)
        await sio.emit("message", "joined", to=sid)

    @sio.on("message")  # type: ignore[misc]
    async def message(sid: str, data: Any) -> None:
        if scenario == "echo":
            await sio.emit("message", data, to=sid)
        elif scenario == "fanout":
            for _ in range(int(str(data).split()[1])):
                await sio.emit("message", PAYLOAD, room="/fanout")
        elif scenario == "chat":
            for room in sio.rooms(sid):
                if room != sid:
                    await sio.emit("message", data, room=room)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(socketio.ASGIApp(sio), log_level="error", ws="websockets-sansio")
    print(f"ws://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


# workerd: the guide's ChatRoom, a Durable Object with the hibernation API.

WORKERD_SCENARIOS = ("echo", "fanout", "chat", "idle")


def serve_workerd(scenario: str) -> None:
    """Become workerd serving ``scenario`` on a free port, once its URL is printed."""
    if scenario not in WORKERD_SCENARIOS:
        sys.exit(f"workerd serves {', '.join(WORKERD_SCENARIOS)}, not {scenario}")
    # The platform's own package holds the binary (npm installs only the one that fits):
    # the `workerd` package's bin is a Node launcher until its install script runs, and
    # its process would be the one measured.
    binaries = sorted(JS.glob("node_modules/@cloudflare/workerd-*/bin/workerd"))
    if not binaries:
        sys.exit(f"no workerd binary: run `npm ci` in {JS} (make bench does)")
    with socket.socket() as probe:  # a free port: workerd prints none it chose
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    print(f"ws://127.0.0.1:{port}", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nobody reads past the first line
    env = {**os.environ, "ROOMKIT_BENCH_SCENARIO": scenario}
    config, address = str(JS / "workerd.capnp"), f"http=127.0.0.1:{port}"
    binary = str(binaries[0])
    os.execve(binary, [binary, "serve", config, "--socket-addr", address], env)


IMPLEMENTATIONS = ("roomkit", "trio-websocket", "websockets", "socketio", "workerd")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("impl", choices=IMPLEMENTATIONS)
    parser.add_argument("scenario", choices=sorted(ROOMS))
    parser.add_argument("--storage", default=":memory:")
    parser.add_argument("--no-group-commit", action="store_true")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    try:
        if args.impl == "roomkit":
            trio.run(serve_roomkit, args.scenario, args.storage, not args.no_group_commit)
        elif args.impl == "trio-websocket":
            trio.run(serve_trio_websocket, args.scenario)
        elif args.impl == "websockets":
            asyncio.run(serve_websockets(args.scenario))
        elif args.impl == "workerd":
            serve_workerd(args.scenario)
        else:
            asyncio.run(serve_socketio(args.scenario))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
