"""Proxy mode: a roomkit proxy in front of a roomkit backend, over real sockets."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
import trio_websocket

import roomkit
import roomkit._proxy

from .helpers import Start, expect_close, http, open_client


class Backend(roomkit.Room):
    seen: ClassVar[list[Any]] = []
    closed: ClassVar[list[tuple[int, str]]] = []
    done = trio.Event()

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if request.query.get("refuse"):
            raise roomkit.Reject(401, "who are you?")
        Backend.seen.append((request.path, dict(request.query), dict(request.headers)))

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "kick me":
            conn.close(4001, "kicked")
        else:
            conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Backend.closed.append((code, reason))
        Backend.done.set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Backend.seen, Backend.closed, Backend.done = [], [], trio.Event()


async def start_proxy(nursery: trio.Nursery, backend_url: str) -> roomkit.Server:
    server: roomkit.Server = await nursery.start(partial(roomkit.proxy, backend_url, port=0))
    return server


async def test_frames_flow_both_ways_unchanged(start: Start, nursery: trio.Nursery) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    async with open_client(f"{front.url}/room?x=1") as ws:
        await ws.send_message("text stays text")
        await ws.send_message(b"\x00binary\xff")
        await ws.send_message("é" * 100_000)
        with trio.fail_after(5):
            assert await ws.get_message() == "text stays text"
            assert await ws.get_message() == b"\x00binary\xff"
            assert await ws.get_message() == "é" * 100_000
    path, query, _ = Backend.seen[0]
    assert (path, query) == ("/room", {"x": "1"})


async def test_headers_that_matter_are_forwarded(start: Start, nursery: trio.Nursery) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    stream = await trio.open_tcp_stream("127.0.0.1", front.port)
    async with stream:
        await stream.send_all(
            b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Origin: https://app.example\r\nCookie: session=abc\r\n"
            b"Authorization: Bearer t0k3n\r\nX-Secret-Internal: no\r\n\r\n"
        )
        with trio.fail_after(5):
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 101")
    _, _, headers = Backend.seen[0]
    assert headers["origin"] == "https://app.example"
    assert headers["cookie"] == "session=abc"
    assert headers["authorization"] == "Bearer t0k3n"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert "x-secret-internal" not in headers


async def test_client_close_reaches_the_backend(start: Start, nursery: trio.Nursery) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    async with open_client(f"{front.url}/r") as ws:
        await ws.aclose(4000, "bye")
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(4000, "bye")]


async def test_backend_close_reaches_the_client(start: Start, nursery: trio.Nursery) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    async with open_client(f"{front.url}/r") as ws:
        await ws.send_message("kick me")
        reason = await expect_close(ws)
        assert (reason.code, reason.reason) == (4001, "kicked")


async def test_refused_handshake_passes_its_status_through(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{front.url}/r?refuse=1"):
            pass
    assert (info.value.status_code, info.value.body) == (401, b"who are you?")


async def test_unreachable_backend_is_502(nursery: trio.Nursery) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    front = await start_proxy(nursery, f"ws://127.0.0.1:{port}")
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{front.url}/r"):
            pass
    assert info.value.status_code == 502


async def test_plain_http_gets_426_and_the_client_script(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    status, _, body = await http(front.port, b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body) == (426, b"Expected websocket")
    status, headers, body = await http(front.port, b"GET /roomkit.js HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"export class RoomSocket" in body


def test_backend_must_be_a_websocket_url() -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        trio.run(partial(roomkit.proxy, "http://example.com", port=0))


async def test_a_message_past_the_limit_closes_both_sides_with_1009(
    start: Start, nursery: trio.Nursery, monkeypatch: Any
) -> None:
    monkeypatch.setattr(roomkit._proxy, "MAX_MESSAGE", 1000)
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    async with open_client(f"{front.url}/r") as ws:
        await ws.send_message(b"x" * 1001)
        assert (await expect_close(ws)).code == 1009
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(1009, "Message too big")]
