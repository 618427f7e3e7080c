"""The rooms of the workers' tests, and one worker of theirs in a process of its own.

``Chat`` is tests/test_handoff.py's room, ``Where`` tests/test_workers.py's (served by
``roomkit serve tests.workerapp:Where --workers N``).

``python -m tests.workerapp SPEC_JSON [OPTIONS_JSON]`` runs ``serve_on`` as worker
``spec.index`` over the inherited listening socket ``spec.listen_fds[0]``, prints
``ready`` once it serves, and shuts down when its standard input ends.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from functools import partial
from typing import Any

import trio

import roomkit
from roomkit._server import SERVE_OPTIONS, serve_on
from roomkit._workerspec import WorkerSpec

from .apps import Farewell


class Chat(roomkit.Room):
    """Tells each new connection its room's size; broadcasts every message."""

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(json.dumps({"room": request.room, "remote": request.remote}))

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(message)


class Where(Farewell):
    """Farewell, with a few more operations: ``pid``, the process that serves the room;
    ``say``, a broadcast of ``{"said": text}`` to everyone in it; ``put_key``, a put that
    answers with its key (so that a client that resends knows which put was stored);
    and ``hang``, which blocks the event loop for ``seconds`` (a hook stuck in a loop).
    An alarm also stores the wall time it fired at, as ``fired_at``."""

    async def _pid(self, conn: roomkit.Connection) -> int:
        return os.getpid()

    async def _say(self, conn: roomkit.Connection, text: str) -> None:
        self.broadcast(json.dumps({"said": text}))

    async def _put_key(self, conn: roomkit.Connection, key: str, value: object) -> str:
        await self.storage.put(key, value)
        return key

    async def _hang(self, conn: roomkit.Connection, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        await self.storage.put("fired_at", time.time())
        await super().on_alarm(info)


def listen_on(fd: int) -> Any:
    """``serve_on``'s ``listen``: a listener on (a duplicate of) the listening socket ``fd``."""

    async def listen() -> tuple[list[trio.SocketListener], str, int]:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=socket.dup(fd)))
        host, port = sock.getsockname()[:2]
        return [trio.SocketListener(sock)], host, port

    return listen


async def main(spec: WorkerSpec, options: dict[str, Any]) -> None:
    async with trio.open_nursery() as nursery:
        run = partial(serve_on, listen_on(spec.listen_fds[0]), Chat, worker=spec)
        server: roomkit.Server = await nursery.start(run, SERVE_OPTIONS.complete(options))
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
        server.shutdown(restart=True)


if __name__ == "__main__":
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    trio.run(main, WorkerSpec.from_json(sys.argv[1]), options)
