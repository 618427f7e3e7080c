"""Helpers for talking to a server as a client would."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio
import trio_websocket
from websockets.sync.client import ClientConnection
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request

import roomkit
from roomkit._errors import first_leaf
from roomkit.testing import TestClient, TestServer

#: The ``start`` fixture: ``await start(RoomClass or mapping, **serve_kwargs)``.
Start = Callable[..., Awaitable[roomkit.Server]]


async def receive_json(ws: trio_websocket.WebSocketConnection, within: float = 5) -> Any:
    """The next message, parsed as JSON; fails after ``within`` seconds."""
    with trio.fail_after(within):
        return json.loads(await ws.get_message())


class MemoryKV:
    """``tests.apps:KV``'s operations through a ``roomkit.testing`` client: each one's result."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    async def __call__(self, op: str, **args: Any) -> Any:
        await self.client.send({"op": op, **args})
        reply = await self.client.receive()
        assert reply.get("op") == op, reply
        return reply["result"]


async def memory_stream(server: TestServer) -> trio.abc.Stream:
    """A bare in-memory stream to ``server``, for a peer that must misbehave in ways a
    test client will not (never read, write HTTP)."""
    assert server._listener is not None, "a test server over the in-memory transport"
    return await server._listener.connect()


async def memory_handshake(server: TestServer, target: str) -> tuple[trio.abc.Stream, WSConnection]:
    """:func:`raw_handshake` over the in-memory transport of ``server``."""
    stream = await memory_stream(server)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="roomkit.test", target=target)))
    while True:
        ws.receive_data(await stream.receive_some())
        if any(isinstance(event, AcceptConnection) for event in ws.events()):
            return stream, ws


async def http(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the response to EOF: (status, headers, body)."""
    return await exchange(await trio.open_tcp_stream("127.0.0.1", port), request)


async def memory_http(server: TestServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """:func:`http` over the in-memory transport of ``server``."""
    return await exchange(await memory_stream(server), request)


async def exchange(stream: trio.abc.Stream, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` on ``stream``, read the response to EOF, close the stream."""
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def expect_close(
    ws: trio_websocket.WebSocketConnection, within: float = 10
) -> trio_websocket.CloseReason:
    """Read until the server closes; return its close reason."""
    return (await read_until_close(ws, within))[1]


async def read_until_close(
    ws: trio_websocket.WebSocketConnection, within: float = 10
) -> tuple[list[str | bytes], trio_websocket.CloseReason]:
    """Read until the server closes; return what came before, and its close reason."""
    messages: list[str | bytes] = []
    with trio.fail_after(within):
        try:
            while True:
                messages.append(await ws.get_message())
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            return messages, exc.reason


@asynccontextmanager
async def open_client(
    url: str, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """trio-websocket's client on a TCP stream this helper owns and always closes
    (through TLS with ``ssl_context``).

    ``trio_websocket.open_websocket_url`` (0.12) never closes its socket when the server
    closes first, which the suite's ResourceWarning check would report on every test
    where the server closes; owning the stream and using the public
    ``wrap_client_stream`` avoids that.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname=parts.hostname)
    try:
        async with stream, trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, parts.hostname, resource)
            try:
                yield ws
            finally:
                await ws.aclose()
    except* trio_websocket.ConnectionRejected as group:
        raise first_leaf(group) from None


async def raw_handshake(
    port: int, target: str, *, receive_buffer: int | None = None
) -> tuple[trio.SocketStream, WSConnection]:
    """Open a WebSocket by hand, for tests that must misbehave at the frame level.

    ``receive_buffer`` sets the socket's SO_RCVBUF before it connects (afterwards, the
    window is already agreed, and a tiny one can stall both directions on Linux).
    """
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
    with trio.fail_after(5):
        while True:
            ws.receive_data(await stream.receive_some())
            if any(isinstance(event, AcceptConnection) for event in ws.events()):
                return stream, ws


async def read_close(stream: trio.abc.Stream, ws: WSConnection) -> CloseConnection:
    with trio.fail_after(10):
        while True:
            data = await stream.receive_some()
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, CloseConnection):
                    return event


def call(ws: ClientConnection, op: str, **args: Any) -> Any:
    """Run one operation of ``tests.apps:KV`` with the ``websockets`` client: its result."""
    ws.send(json.dumps({"op": op, **args}))
    while "op" not in (reply := json.loads(ws.recv(timeout=10))):
        pass  # an alarm's broadcast
    return reply["result"]


ROOT = Path(__file__).parent.parent


def roomkit_env() -> dict[str, str]:
    """The environment of a ``roomkit`` subprocess: this one's, without ROOMKIT_* variables.

    The developer's own ROOMKIT_* settings would change what the test runs.
    """
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROOMKIT_")},
        "PYTHONUNBUFFERED": "1",
    }


@contextmanager
def roomkit_serve(target: str, *options: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``roomkit serve TARGET --port 0 OPTIONS`` in a subprocess: (process, its URL).

    The process is killed on the way out, however the block ends.
    """
    with roomkit_command("serve", target, "--port", "0", *options) as started:
        yield started


@contextmanager
def roomkit_command(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``roomkit ARGS`` (``serve`` or ``proxy``, listening on port 0) in a subprocess:
    (process, its URL) once it listens. The process is killed on the way out."""
    process = subprocess.Popen(
        [sys.executable, "-m", "roomkit", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=roomkit_env(),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        match = re.search(r"listening on (wss?://\S+)", line)
        assert match, f"the server did not start: {line!r}"
        yield process, match[1]
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def roomkit_serve_refused(
    target: str, *options: str, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``roomkit serve TARGET --port 0 OPTIONS``, expected to refuse to start: its end.

    ``prefix`` runs it under another command (``setpriv ...``). A server that starts
    instead runs until the timeout, which fails the test.
    """
    command = [*prefix, sys.executable, "-m", "roomkit", "serve", target, "--port", "0"]
    return subprocess.run(
        [*command, *options],
        cwd=ROOT,
        env=roomkit_env(),
        capture_output=True,
        text=True,
        timeout=15,
    )
