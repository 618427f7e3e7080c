"""The servers the Python client's tests talk to: rooms, a roomkit server in a thread,
raw TCP servers of a test's own, and a fake server of the roomkit.v1 envelope.

The client's tests run under asyncio and Trio (``anyio.run`` with either backend), so
the roomkit server they talk to runs in its own thread, under its own ``trio.run``:
real sockets on 127.0.0.1, port 0, and a server that can be stopped and started again
on the same port, as a deploy does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Request,
    TextMessage,
)

import roomkit
from examples.chat import ChatRoom


class Echo(roomkit.Room):
    """``close CODE`` closes with CODE "go away"; ``big N`` sends N characters; ``header
    NAME`` answers that handshake header; anything else comes back as ``echo ...``."""

    headers: dict[roomkit.Connection, dict[str, str]]

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if not hasattr(self, "headers"):
            self.headers = {}
        self.headers[conn] = dict(request.headers)

    async def on_close(
        self, conn: roomkit.Connection, code: int, reason: str, was_clean: bool
    ) -> None:
        self.headers.pop(conn, None)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        verb, _, argument = message.partition(" ")
        if verb == "close":
            conn.close(int(argument), "go away")
        elif verb == "big":
            conn.send("x" * int(argument))
        elif verb == "header":
            conn.send(str(self.headers[conn].get(argument)))
        else:
            conn.send(f"echo {message}")


class Refusing(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        raise roomkit.Reject(int(request.query["status"]), "not you")


class Numbered(roomkit.Room):
    """Keeps a history: ``b N`` broadcasts the room's next N numbers (``n7``...)."""

    history = roomkit.History()
    count = 0

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        for _ in range(int(message.removeprefix("b "))):
            self.count += 1
            self.broadcast(f"n{self.count}")


ROOMS: Mapping[str, type[roomkit.Room]] = {
    "/echo": Echo,
    "/chat": ChatRoom,
    "/refuse": Refusing,
    "/numbered": Numbered,
}


class ThreadServer:
    """``roomkit.serve(ROOMS)`` in a thread of its own, until :meth:`stop`.

    ``ThreadServer(port)`` listens on that port (0: any free one); ``url`` is its base
    URL. :meth:`stop` shuts it down (1001, or 1012 with ``restart=True``) and waits;
    from async code, ``await astop()`` or ``async with``, which leave the loop running.
    """

    def __init__(self, port: int = 0, **options: Any) -> None:
        self._started = threading.Event()
        self._server: roomkit.Server | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, port, options))
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("the server did not start")
        assert self._server is not None, "the server failed to start"

    async def _main(self, port: int, options: dict[str, Any]) -> None:
        try:
            self._token = trio.lowlevel.current_trio_token()
            serve = partial(roomkit.serve, ROOMS, host="127.0.0.1", port=port, **options)
            async with trio.open_nursery() as nursery:
                self._server = await nursery.start(serve)
                self._started.set()
        finally:
            self._started.set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def stop(self, *, restart: bool = False) -> None:
        """Shut the server down, its connections closed with 1001 (1012 with ``restart``)."""
        assert self._server is not None and self._token is not None
        # The token's own thread-safe entry: from_thread refuses a thread that is a
        # worker of another Trio run (the client's test, through anyio.to_thread).
        self._token.run_sync_soon(partial(self._server.shutdown, restart=restart))
        self._thread.join(10)
        assert not self._thread.is_alive(), "the server did not stop"

    async def astop(self, *, restart: bool = False) -> None:
        """:meth:`stop` from async code, whose loop must go on meanwhile: the server
        waits for its clients' answers to its close."""
        await anyio.to_thread.run_sync(partial(self.stop, restart=restart))

    def __enter__(self) -> ThreadServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self.stop()

    async def __aenter__(self) -> ThreadServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            await self.astop()


@asynccontextmanager
async def serve_raw(
    handler: Callable[[anyio.abc.SocketStream], Awaitable[None]],
) -> AsyncIterator[str]:
    """A TCP server of the test's own on 127.0.0.1, for the block; its ``ws://`` URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tasks:
        tasks.start_soon(listener.serve, handler)
        yield f"ws://127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
        tasks.cancel_scope.cancel()


_Event = TypeVar("_Event")


def welcome_frame(**fields: Any) -> str:
    """A roomkit.v1 welcome: session ``tok1`` of connection ``c1`` in epoch ``e1`` at
    seq 3, a fresh connect, unless ``fields`` say otherwise."""
    base = {"id": "c1", "session": "tok1", "epoch": "e1", "seq": 3, "resumed": False}
    return json.dumps(["welcome", {**base, "recovered": None, **fields}])


def m_frame(seq: int | None, text: str) -> str:
    """A roomkit.v1 text message."""
    return json.dumps(["m", seq, text])


def binary_frame(seq: int, payload: bytes) -> bytes:
    """A roomkit.v1 binary message (``seq`` 0: not logged)."""
    return seq.to_bytes(8, "big") + payload


class EnvelopeServer:
    """A fake roomkit.v1 server for :func:`serve_raw`, speaking wsproto over the stream.

    Its ``n``th connection gets the frames of ``scripts[n]`` (``str``: text, ``bytes``:
    binary, or a wsproto event such as a ``CloseConnection``), then its TCP connection
    is dropped without a close frame (unless it sent one), as a network does; the last
    script's connection stays open, and answers the client's close. It selects
    ``roomkit.v1`` when the client offers it, unless ``select`` is False (an older
    server, a proxy that drops the header), or False for that connection (a list).
    ``requests`` are the handshakes it took, in order (``target``, ``subprotocols``).
    """

    def __init__(
        self,
        scripts: Sequence[Sequence[str | bytes | Event]],
        *,
        select: bool | Sequence[bool] = True,
    ) -> None:
        self.scripts = scripts
        self.select = select
        self.requests: list[Request] = []

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            ws = WSConnection(ConnectionType.SERVER)
            request = await _next_event(stream, ws, Request)
            n = len(self.requests)
            self.requests.append(request)
            select = self.select if isinstance(self.select, bool) else self.select[n]
            offered = select and "roomkit.v1" in request.subprotocols
            await stream.send(ws.send(AcceptConnection("roomkit.v1" if offered else None)))
            for frame in self.scripts[n]:
                if isinstance(frame, str):
                    frame = TextMessage(frame)
                elif isinstance(frame, bytes):
                    frame = BytesMessage(frame)
                await stream.send(ws.send(frame))
            if len(self.requests) == len(self.scripts):
                close = await _next_event(stream, ws, CloseConnection)
                if ws.state is ConnectionState.REMOTE_CLOSING:  # else it answered ours
                    await stream.send(ws.send(close.response()))


async def _next_event(
    stream: anyio.abc.SocketStream, ws: WSConnection, kind: type[_Event]
) -> _Event:
    """Read until wsproto gives an event of ``kind``, dropping the others."""
    while True:
        for event in ws.events():
            if isinstance(event, kind):
                return event
        ws.receive_data(await stream.receive())
