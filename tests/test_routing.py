"""Routing: the default room and ``serve``'s ``route`` hook, through real sockets.

The clients are the ``websockets`` package's (in a worker thread) and trio-websocket's;
servers listen on 127.0.0.1, port 0. The in-memory test kit gets the same options at the
end. The pure decisions are unit-tested in test_frontdoor.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import attrs
import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import roomkit
from roomkit.testing import open_test_server

from .helpers import Start, http, open_client


class Where(roomkit.Room):
    """Tells each connection the room it reached; counts the rooms that ever ran."""

    made: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        Where.made += 1

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(f"{type(self).__name__} {self.name!r} {request.room!r} {request.path}")


class Elsewhere(Where):
    pass


@pytest.fixture(autouse=True)
def no_room_yet() -> None:
    Where.made = 0


async def reached(url: str, headers: Mapping[str, str] | None = None) -> str:
    """The first message a ``websockets`` client to ``url`` receives."""

    def talk() -> str:
        with connect(url, additional_headers=headers, open_timeout=5) as ws:
            message = ws.recv(timeout=5)
            assert isinstance(message, str)
            return message

    return await trio.to_thread.run_sync(talk)


async def refused(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """The status and body with which the handshake of a ``websockets`` client is refused."""

    def talk() -> tuple[int, bytes]:
        with pytest.raises(InvalidStatus) as info, connect(url, additional_headers=headers):
            pass  # pragma: no cover
        response = info.value.response
        return response.status_code, response.body or b""

    return await trio.to_thread.run_sync(talk)


async def test_slash_reaches_the_default_room(start: Start) -> None:
    server = await start(Where)
    assert await reached(f"{server.url}/") == "Where 'default' 'default' /"
    assert await reached(f"{server.url}/?x=y") == "Where 'default' 'default' /"
    assert await reached(f"{server.url}/general") == "Where 'general' 'general' /general"
    assert await refused(f"{server.url}/a/") == (404, b"No room route for /a/")


async def test_a_route_prefix_reaches_its_default_room(start: Start) -> None:
    server = await start({"/chat": Where, "/game": Elsewhere})
    assert await reached(f"{server.url}/chat") == "Where 'default' 'default' /chat"
    assert await reached(f"{server.url}/chat/") == "Where 'default' 'default' /chat/"
    assert await reached(f"{server.url}/game") == "Elsewhere 'default' 'default' /game"
    assert await refused(f"{server.url}/") == (404, b"No room route for /")
    assert await refused(f"{server.url}/chat/a/") == (404, b"No room route for /chat/a/")


async def test_the_default_room_is_configurable(start: Start) -> None:
    server = await start({"/chat": Where}, default_room="lobby")
    assert await reached(f"{server.url}/chat/") == "Where 'lobby' 'lobby' /chat/"
    assert await reached(f"{server.url}/chat/lobby") == "Where 'lobby' 'lobby' /chat/lobby"


def test_serve_refuses_a_default_room_that_is_no_room_name() -> None:
    async def main(default_room: Any) -> None:
        await roomkit.serve(Where, port=0, default_room=default_room)

    with pytest.raises(ValueError) as raised:
        trio.run(main, "a/b")
    assert str(raised.value) == (
        "default_room must be a room name, not 'a/b': a room name cannot contain '/'"
    )
    with pytest.raises(ValueError, match="default_room must be a room name, not ''"):
        trio.run(main, "")
    with pytest.raises(TypeError, match="default_room must be a room name \\(a str\\), not 1"):
        trio.run(main, 1)


def by_header(request: roomkit.Request) -> str | None:
    return request.headers.get("x-room")


async def test_a_route_hook_chooses_the_room_by_header(start: Start) -> None:
    server = await start(Where, route=by_header)
    assert await reached(f"{server.url}/", {"X-Room": "team"}) == "Where 'team' 'team' /"
    assert await reached(f"{server.url}/a", {"X-Room": ""}) == "Where 'default' 'default' /a"
    assert await reached(f"{server.url}/a") == "Where 'a' 'a' /a"  # None: the path's room
    assert await refused(f"{server.url}/a/b") == (404, b"No room route for /a/b")  # None too
    assert await refused(f"{server.url}/", {"X-Room": "a/b"}) == (
        400,
        b"Bad room name: a room name cannot contain '/'",
    )


#: The users of the tokens that ``by_token`` accepts.
TOKENS: Final = {"s3cret": "ann", "t0ken": "bob"}


class Seen:
    """What a route hook was asked."""

    def __init__(self) -> None:
        self.requests: list[roomkit.Request] = []


async def test_an_async_route_hook_authenticates_by_token_before_any_room_runs(
    start: Start,
) -> None:
    seen = Seen()

    async def by_token(request: roomkit.Request) -> tuple[str, str] | roomkit.Reject:
        seen.requests.append(request)
        await trio.sleep(0.01)  # as if asking a token service
        user = TOKENS.get(request.query.get("token", ""))
        if user == "bob":
            return roomkit.Reject(429, "slow down, bob")
        if user is None:
            raise roomkit.Reject(401, "bad token")
        return ("/private", user)

    server = await start({"/chat": Where, "/private": Elsewhere}, route=by_token)
    assert await refused(f"{server.url}/ws?token=nope") == (401, b"bad token")
    assert await refused(f"{server.url}/chat/x?token=t0ken") == (429, b"slow down, bob")
    assert (Where.made, server.room_count) == (0, 0)  # no room ran, not even __init__
    assert await reached(f"{server.url}/ws?token=s3cret") == "Elsewhere 'ann' 'ann' /ws"
    [nope, bob, ann] = seen.requests
    assert (nope.path, nope.room, dict(nope.query)) == ("/ws", "", {"token": "nope"})
    assert (bob.path, bob.room) == ("/chat/x", "x")  # the room the path reaches
    assert ann.remote is not None and ann.remote[0] == "127.0.0.1"


async def test_a_route_hook_that_fails_ends_that_handshake_only(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: roomkit.Request) -> Any:
        if request.path == "/raises":
            raise KeyError("a bug in the hook")
        return {"/returns-a-number": 42, "/unknown-prefix": ("/game", "x")}.get(request.path)

    server = await start(Where, route=broken, metrics=True)
    for path in ("/raises", "/returns-a-number", "/unknown-prefix"):
        assert await refused(f"{server.url}{path}") == (500, b"Internal error")
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() == f"route hook failed for {r.remote}" for r in failures] == [True] * 3
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == [
        "'a bug in the hook'",
        "a route hook returns a room name, a (prefix, name) pair, a Reject or None, not 42",
        "a route hook chose the prefix '/game', which no route has",
    ]
    assert Where.made == 0
    async with open_client(f"{server.url}/fine") as ws:  # the server is still serving
        with trio.fail_after(5):
            assert await ws.get_message() == "Where 'fine' 'fine' /fine"
    _, _, page = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'roomkit_handshakes_refused_total{reason="error"} 3.0' in page


async def test_a_route_hook_has_the_handshake_timeout(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    async def stuck(request: roomkit.Request) -> str | None:
        if request.path == "/stuck":
            await trio.sleep_forever()
        return None

    server = await start(Where, route=stuck, handshake_timeout=0.2)
    with trio.fail_after(5):
        assert await refused(f"{server.url}/stuck") == (503, b"Routing timed out")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == f"route hook: no room for {warning.remote} in time"
    assert await reached(f"{server.url}/free") == "Where 'free' 'free' /free"


async def test_plain_http_and_foreign_origins_never_reach_the_hook(start: Start) -> None:
    seen = Seen()

    def record(request: roomkit.Request) -> None:
        seen.requests.append(request)

    server = await start(Where, route=record, metrics=True, allowed_origins=["https://app.example"])
    for path in (b"/healthz", b"/metrics", b"/roomkit.js"):
        status, _, _ = await http(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200, path
    assert (await http(server.port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 426
    foreign = {"Origin": "https://evil.example"}
    assert await refused(f"{server.url}/x", foreign) == (403, b"Origin not allowed")
    assert seen.requests == []
    assert await reached(f"{server.url}/x", {"Origin": "https://app.example"}) == (
        "Where 'x' 'x' /x"
    )
    assert [r.path for r in seen.requests] == ["/x"]


@attrs.frozen
class Hello:
    text: str


class Typed(roomkit.Room):
    protocol = roomkit.Protocol(client=Hello, server=Hello)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(Hello(f"{self.name}: {message.text}"))


async def test_the_test_kit_takes_both_options() -> None:
    def by_query(request: roomkit.Request) -> str | None:
        return request.query.get("room")

    rooms = {"/chat": Typed, "/where": Where}
    async with open_test_server(rooms, default_room="hall", route=by_query) as server:
        async with server.connect("/chat") as client:  # typed: the protocol of /chat
            await client.send(Hello("hi"))
            assert await client.receive() == {"type": "hello", "text": "hall: hi"}
        async with server.connect("/where/x", params={"room": "y"}) as client:
            assert await client.receive() == "Where 'y' 'y' /where/x"
            assert server.room("y", "/where") is not None
