"""Proxy mode: a roomkit proxy in front of a roomkit backend, over real sockets.

Misbehaving clients and backends are raw sockets (``trio.open_tcp_stream``, a fake
backend on ``trio.serve_tcp``); the proxy's limits are checked through what it reports
in ``ProxyServer.statistics()``, never through timings. Everything listens on 127.0.0.1,
port 0.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
import trio_websocket
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as serve_websockets
from websockets.typing import Subprotocol
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

import roomkit
import roomkit._proxyclient
from roomkit._accept import MAX_HEAD
from roomkit._cli import _runner, main, parse_args
from roomkit._core.frames import encode_message
from roomkit._core.ratelimit import FLOOD_SECONDS

from .helpers import (
    Start,
    call,
    expect_close,
    http,
    open_client,
    raw_handshake,
    read_close,
    read_until_close,
    roomkit_command,
    roomkit_serve,
)


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
        elif message == "flood":
            conn.send("x" * 100_000)
        else:
            conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Backend.closed.append((code, reason))
        Backend.done.set()


@pytest.fixture(autouse=True)
def _reset() -> None:
    Backend.seen, Backend.closed, Backend.done = [], [], trio.Event()


async def start_proxy(
    nursery: trio.Nursery, backend_url: str, **kwargs: Any
) -> roomkit.ProxyServer:
    server: roomkit.ProxyServer = await nursery.start(
        partial(roomkit.proxy, backend_url, port=0, **kwargs)
    )
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


class HeaderEcho(roomkit.Room):
    """Greets each connection with the headers its handshake came with."""

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(json.dumps(dict(request.headers)))


#: The headers of the backend's handshake with the proxy that are not the client's.
PROXYS_OWN = {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"}
#: The headers the proxy appends its elements to, whatever the client sent.
FORWARDING = ("x-forwarded-for", "forwarded", "x-forwarded-proto")


async def headers_through(front: roomkit.ProxyServer, *headers: tuple[str, str]) -> Any:
    """The headers the backend got when the ``websockets`` client sent ``headers``."""

    def talk() -> Any:
        with connect(f"{front.url}/r", additional_headers=list(headers), open_timeout=5) as ws:
            return json.loads(ws.recv(timeout=5))

    return await trio.to_thread.run_sync(talk)


async def test_every_end_to_end_header_is_forwarded_and_no_hop_by_hop_one(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(HeaderEcho)
    front = await start_proxy(nursery, backend.url)
    got = await headers_through(
        front,
        ("X-Custom", "one"),
        ("Accept-Language", "fr, en;q=0.5"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("Authorization", "Bearer t0k3n"),
        ("X-Custom", "two"),
        ("Origin", "https://app.example"),
        ("Connection", "keep-alive, X-Hop"),  # after the client's own "Upgrade"
        ("X-Hop", "for this connection only"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("Content-Length", "0"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
        ("X_Forwarded_For", "6.6.6.6"),
    )
    assert set(got) - PROXYS_OWN == {
        "user-agent",
        "x-custom",
        "accept-language",
        "cookie",
        "authorization",
        "origin",
        "x-forwarded-for",
        "forwarded",
        "x-forwarded-proto",
    }
    assert got["host"] == f"127.0.0.1:{backend.port}"  # the backend's, not the proxy's
    assert got["connection"] == "Upgrade"  # the proxy's own handshake's
    assert got["user-agent"].startswith("Python/")  # the websockets client's
    assert (got["x-custom"], got["accept-language"]) == ("one, two", "fr, en;q=0.5")
    assert (got["cookie"], got["authorization"]) == ("a=1; b=2", "Bearer t0k3n")
    assert got["origin"] == "https://app.example"
    # The client's chains stay in front; the last element is the proxy's, which the
    # client cannot write: it is the address the proxy's socket sees.
    assert got["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert got["forwarded"] == "for=6.6.6.6, for=127.0.0.1;proto=http"
    assert got["x-forwarded-proto"] == "http"  # the scheme the client reached the proxy by


async def test_a_backend_behind_two_proxies_sees_the_whole_chain(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(HeaderEcho)
    inner = await start_proxy(nursery, backend.url)
    outer = await start_proxy(nursery, inner.url)
    got = await headers_through(outer, ("X-Custom", "through both"))
    assert set(got) - PROXYS_OWN == {"user-agent", "x-custom", *FORWARDING}
    assert got["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
    assert got["forwarded"] == "for=127.0.0.1;proto=http, for=127.0.0.1;proto=http"
    assert got["x-forwarded-proto"] == "http, http"


async def test_forward_headers_passes_on_only_the_headers_it_names(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(HeaderEcho)
    front = await start_proxy(nursery, backend.url, forward_headers=["X-Tenant", "cookie"])
    got = await headers_through(
        front,
        ("X-Tenant", "acme"),
        ("Cookie", "a=1"),
        ("X-Custom", "left out"),
        ("X-Forwarded-For", "6.6.6.6"),
    )
    assert set(got) - PROXYS_OWN == {"x-tenant", "cookie", *FORWARDING}
    assert (got["x-tenant"], got["cookie"]) == ("acme", "a=1")
    assert got["x-forwarded-for"] == "127.0.0.1"  # the client's chain was not named


async def test_drop_headers_passes_on_all_but_the_headers_it_names(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(HeaderEcho)
    drop = ("x-forwarded-for", "Forwarded", "X-Debug")
    front = await start_proxy(nursery, backend.url, drop_headers=drop)
    got = await headers_through(
        front,
        ("X-Debug", "1"),
        ("X-Custom", "kept"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6"),
    )
    assert set(got) - PROXYS_OWN == {"user-agent", "x-custom", *FORWARDING}
    assert (got["x-forwarded-for"], got["forwarded"]) == ("127.0.0.1", "for=127.0.0.1;proto=http")


@contextmanager
def websockets_backend() -> Iterator[str]:
    """A backend of the ``websockets`` package's, in a thread: it chooses the
    subprotocol ``v2`` if offered, and sends the header lines of its handshake."""

    def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        ws.send(json.dumps(list(ws.request.headers.raw_items())))
        ws.recv(timeout=5)

    with serve_websockets(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("v2")]) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        finally:
            server.shutdown()
            thread.join()


async def test_subprotocols_are_negotiated_end_to_end(nursery: trio.Nursery) -> None:
    with websockets_backend() as backend_url:
        front = await start_proxy(nursery, backend_url)

        def talk() -> tuple[str | None, Any]:
            offer = [Subprotocol("chat"), Subprotocol("v2")]
            with connect(f"{front.url}/r", subprotocols=offer, open_timeout=5) as ws:
                lines = json.loads(ws.recv(timeout=5))
                ws.send("done")
                return ws.subprotocol, lines

        chosen, lines = await trio.to_thread.run_sync(talk)
    assert chosen == "v2"  # the backend's choice, passed back
    names = [name.lower() for name, _ in lines]
    # The client's offer went on once, as the proxy's own; its extensions did not.
    assert [v for n, v in lines if n.lower() == "sec-websocket-protocol"] == ["chat, v2"]
    assert "sec-websocket-extensions" not in names
    assert len(names) == len(set(names))  # no header twice


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


async def test_a_client_that_vanishes_reaches_the_backend_as_1006(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    stream, _ = await raw_handshake(front.port, "/r")  # open: the backend took it first
    await trio.aclose_forcefully(stream)  # no close frame: the TCP connection just ends
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(1006, "")]


async def test_refused_handshake_passes_its_status_through(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{front.url}/r?refuse=1"):
            pass
    assert (info.value.status_code, info.value.body) == (401, b"who are you?")
    headers = dict(info.value.headers or ())
    assert headers[b"content-type"] == b"text/plain; charset=utf-8"  # the backend's


async def test_unreachable_backend_is_502(nursery: trio.Nursery) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    front = await start_proxy(nursery, f"ws://127.0.0.1:{port}")
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{front.url}/r"):
            pass
    assert (info.value.status_code, info.value.body) == (
        502,
        b"Bad gateway: the backend cannot be reached",
    )


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
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, max_message_size=1000)
    async with open_client(f"{front.url}/r") as ws:
        await ws.send_message(b"x" * 1001)
        assert (await expect_close(ws)).code == 1009
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(1009, "Message too big")]


# What a misbehaving client or backend gets, and that the proxy goes on serving others.

HANDSHAKE = (
    b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


async def upgrade(port: int, target: bytes = b"/r", headers: bytes = b"") -> tuple[int, bytes]:
    """A raw WebSocket handshake: the status of the answer, and its body (to EOF) if it
    is not a 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET " + target + b" HTTP/1.1\r\n" + HANDSHAKE + headers + b"\r\n")
        data = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some()
            status = int(data.split(b" ", 2)[1])
            while status != 101 and (chunk := await stream.receive_some()):
                data += chunk
    return status, data.partition(b"\r\n\r\n")[2]


async def still_serving(front: roomkit.ProxyServer) -> None:
    async with open_client(f"{front.url}/r") as ws:
        await ws.send_message("still there?")
        with trio.fail_after(5):
            assert await ws.get_message() == "still there?"


async def test_request_heads_are_read_as_the_server_reads_them(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, handshake_timeout=0.2)
    filler = b"X-Filler: " + b"a" * MAX_HEAD + b"\r\n"
    status, _, body = await http(front.port, b"GET /r HTTP/1.1\r\n" + filler + b"\r\n")
    assert (status, body) == (431, b"Request header fields too large")
    status, _, body = await http(front.port, b"HELLO\r\n\r\n")
    assert status == 400 and body.startswith(b"Bad request: ")
    with trio.fail_after(5):  # a client that never finishes its head is dropped, unanswered
        silent = await trio.open_tcp_stream("127.0.0.1", front.port)
        async with silent:
            await silent.send_all(b"GET /r HTTP/1.1\r\n")
            assert await silent.receive_some() == b""
    assert Backend.seen == []
    await still_serving(front)


async def test_a_subprotocol_that_is_not_a_token_is_400_and_others_are_served(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    status, body = await upgrade(front.port, headers="Sec-WebSocket-Protocol: café\r\n".encode())
    assert status == 400 and b"Sec-WebSocket-Protocol" in body
    assert Backend.seen == []
    await still_serving(front)


@pytest.mark.parametrize(
    "headers",
    [
        b"Cookie: caf\xc3\xa9=1\r\n",  # non-ASCII
        b"User-Agent: a\tb\r\n",  # a control character
        b"X-Forwarded-For: 10.0.0.\xff\r\n",
        b"X-Custom: caf\xc3\xa9\r\n",  # any header passed on
    ],
)
async def test_a_forwarded_header_that_is_not_printable_ascii_is_400(
    start: Start, nursery: trio.Nursery, headers: bytes
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    status, body = await upgrade(front.port, headers=headers)
    assert status == 400 and b"must be printable ASCII" in body
    assert Backend.seen == []
    await still_serving(front)


async def test_a_header_that_is_not_passed_on_is_not_checked(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, drop_headers=["x-custom"])
    hop = b"Keep-Alive: caf\xc3\xa9\r\n"  # hop-by-hop: never passed on either
    status, _ = await upgrade(front.port, headers=b"X-Custom: caf\xc3\xa9\r\n" + hop)
    assert status == 101  # the backend ran on_connect before it accepted
    _, _, headers = Backend.seen[0]
    assert "x-custom" not in headers and "keep-alive" not in headers


@pytest.mark.parametrize(
    "target",
    [
        b"/../admin",
        b"/a/./r",
        b"/a/%2e%2E/r",
        b"/a/.%2e",
        b"/a%2Fb",
        b"/a%5cb",
        b"/a\\b",
        b"http://backend/r",
    ],
)
async def test_a_path_that_could_leave_the_prefix_is_400(
    start: Start, nursery: trio.Nursery, target: bytes
) -> None:
    backend = await start({"/prefix": Backend})
    front = await start_proxy(nursery, f"{backend.url}/prefix")
    status, body = await upgrade(front.port, target)
    assert status == 400 and body.startswith(b"Bad request: ")
    assert Backend.seen == []
    status, _ = await upgrade(front.port, b"/lobby..2?next=../x")  # dots that are no segment
    assert status == 101


async def fake_backend(nursery: trio.Nursery, answer: bytes) -> str:
    """A backend that reads a request head, answers ``answer`` and waits for EOF."""

    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := await stream.receive_some()):
            head += chunk
        await stream.send_all(answer)
        while await stream.receive_some():
            pass

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"the backend failed"),  # no upgrade
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"the backend answered 200"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"the backend failed"),  # not HTTP
    ],
)
async def test_a_backend_that_answers_nonsense_is_502_and_others_are_served(
    start: Start, nursery: trio.Nursery, answer: bytes, body: bytes
) -> None:
    odd = await start_proxy(nursery, await fake_backend(nursery, answer))
    assert await upgrade(odd.port) == (502, b"Bad gateway: " + body)
    assert await upgrade(odd.port) == (502, b"Bad gateway: " + body)  # the same proxy, still there
    backend = await start(Backend)
    await still_serving(await start_proxy(nursery, backend.url))


async def test_a_refusal_with_a_status_http_does_not_name_is_passed_on(
    nursery: trio.Nursery,
) -> None:
    answer = b"HTTP/1.1 499 Client Closed Request\r\nContent-Length: 2\r\n\r\nno"
    front = await start_proxy(nursery, await fake_backend(nursery, answer))
    assert await upgrade(front.port) == (499, b"no")


async def test_an_error_in_one_connection_ends_only_that_one(
    start: Start, nursery: trio.Nursery, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    real = roomkit._proxyclient.encode_message

    def encode(message: str | bytes) -> bytes:
        if message == "boom":
            raise RuntimeError("a bug in the proxy")
        return real(message)

    monkeypatch.setattr(roomkit._proxyclient, "encode_message", encode)
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    async with open_client(f"{front.url}/r") as bystander:
        async with open_client(f"{front.url}/r") as ws:
            await ws.send_message("boom")  # echoed by the backend, then fails in the proxy
            reason = await expect_close(ws)
            assert (reason.code, reason.reason) == (1011, "Internal error")
        await bystander.send_message("fine")
        with trio.fail_after(5):
            assert await bystander.get_message() == "fine"
    [record] = [r for r in caplog.records if r.name == "roomkit.proxy"]
    assert record.levelname == "ERROR" and record.exc_info is not None
    assert record.__dict__["connection"] in record.getMessage()
    assert record.__dict__["target"] == "/r" and record.__dict__["failures"] == 1


def test_a_proxy_survives_a_handshake_it_cannot_pass_on_and_serves_on() -> None:
    with (
        roomkit_serve("tests.apps:KV", "--storage", ":memory:") as (_, backend),
        roomkit_command("proxy", backend, "--port", "0") as (process, url),
    ):
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                + "Sec-WebSocket-Protocol: café\r\n\r\n".encode()
            )
            assert raw.recv(1024).startswith(b"HTTP/1.1 400 ")
        with connect(f"{url}/r", open_timeout=10) as ws:
            assert call(ws, "put", key="a", value=1) is None
            assert call(ws, "get", key="a") == 1
        assert process.poll() is None


async def until(condition: Callable[[], bool]) -> None:
    """Wait, for at most 5 s, until ``condition()`` holds."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 (statistics have no event to wait on)
            await trio.sleep(0.001)


# The proxy's handle.


async def test_the_handle_counts_what_the_proxy_holds_and_has_nothing_of_a_servers(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url)
    assert front.url == f"ws://127.0.0.1:{front.port}"
    assert front.statistics() == roomkit.ProxyStatistics(
        connections=0, forwarded=0, send_queue_bytes=0, receive_buffer_bytes=0
    )
    with trio.fail_after(5):
        idle = await trio.open_tcp_stream("127.0.0.1", front.port)  # no request head yet
    async with idle, open_client(f"{front.url}/r") as ws:
        await ws.send_message("x")
        with trio.fail_after(5):
            assert await ws.get_message() == "x"
        await until(lambda: front.statistics().connections == 2)
        assert front.statistics().forwarded == 1
    await until(lambda: front.statistics() == roomkit.ProxyStatistics(0, 0, 0, 0))
    assert not hasattr(front, "room_count")


async def test_shutdown_drops_every_connection_and_the_proxy_returns(start: Start) -> None:
    backend = await start(Backend)
    with trio.fail_after(5):
        async with trio.open_nursery() as own:
            front: roomkit.ProxyServer = await own.start(
                partial(roomkit.proxy, backend.url, port=0)
            )
            async with open_client(f"{front.url}/r") as ws:
                front.shutdown()
                front.shutdown()  # a second call changes nothing
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await ws.get_message()
        # the nursery is done: proxy() returned
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", front.port)


# The proxy's limits: a server's by default, each with what the peer past it gets.


async def test_fragments_past_the_limit_close_with_1009_and_are_never_held_whole(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, max_message_size=10_000)
    stream, ws = await raw_handshake(front.port, "/r")
    async with stream:
        for held in (3000, 6000, 9000):
            await stream.send_all(ws.send(BytesMessage(b"x" * 3000, message_finished=False)))
            await until(lambda: front.statistics().receive_buffer_bytes == held)  # noqa: B023
        await stream.send_all(ws.send(BytesMessage(b"x" * 3000, message_finished=False)))
        close = await read_close(stream, ws)  # at 12,000 bytes
        assert (close.code, close.reason) == (1009, "Message too big")
        assert front.statistics().receive_buffer_bytes == 0
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(1009, "Message too big")]


async def test_text_counts_against_the_limit_in_utf8_bytes(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, max_message_size=1000)
    async with open_client(f"{front.url}/r") as ws:
        await ws.send_message("é" * 500)  # 500 characters, 1000 bytes: passes
        with trio.fail_after(5):
            assert await ws.get_message() == "é" * 500
        await ws.send_message("é" * 501)
        assert (await expect_close(ws)).code == 1009


async def test_the_rate_limit_drops_with_the_servers_error_then_closes_a_flood(
    start: Start, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    backend = await start(Backend)
    limit = roomkit.RateLimit(per_second=10, burst=5)
    front = await start_proxy(nursery, backend.url, rate_limit=limit)
    async with open_client(f"{front.url}/r") as ws:
        for i in range(5):
            await ws.send_message(str(i))
        assert [await ws.get_message() for _ in range(5)] == ["0", "1", "2", "3", "4"]
        patience = int(10 * FLOOD_SECONDS)  # drops before the flood is cut
        for _ in range(patience):
            await ws.send_message("more")
        replies, reason = await read_until_close(ws)
    assert [json.loads(reply) for reply in replies] == [
        {
            "type": "error",
            "code": "rate_limited",
            "message": "too many messages: this one was dropped",
        }
    ] * (patience - 1)
    assert (reason.code, reason.reason) == (1008, "rate limit exceeded")
    with trio.fail_after(5):
        await Backend.done.wait()
    assert Backend.closed == [(1008, "rate limit exceeded")]


async def test_a_flooder_cut_by_the_proxy_gets_its_close_not_a_reset(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, rate_limit=roomkit.RateLimit(10, 20))
    async with open_client(f"{front.url}/r") as ws:
        try:
            for i in range(200):  # sent faster than the proxy reads them: some are unread
                await ws.send_message(str(i))
            _, reason = await read_until_close(ws)
        except trio_websocket.ConnectionClosed as closed:  # closed while still sending
            assert closed.reason is not None
            reason = closed.reason
    assert (reason.code, reason.reason) == (1008, "rate limit exceeded")


async def test_pings_take_tokens_and_one_without_a_token_is_not_answered(
    start: Start, nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    backend = await start(Backend)
    limit = roomkit.RateLimit(per_second=1, burst=2)
    front = await start_proxy(nursery, backend.url, rate_limit=limit)
    stream, ws = await raw_handshake(front.port, "/r")
    async with stream:
        for payload in (b"1", b"2", b"3", b"4", b"5"):  # 2 answered, 3 flood the bucket
            await stream.send_all(ws.send(Ping(payload)))
        pongs: list[bytes] = []
        with trio.fail_after(5):
            while True:
                ws.receive_data(await stream.receive_some() or None)
                events = list(ws.events())
                pongs += [bytes(e.payload) for e in events if isinstance(e, Pong)]
                closes = [e for e in events if isinstance(e, CloseConnection)]
                if closes:
                    break
    assert pongs == [b"1", b"2"]
    assert (closes[0].code, closes[0].reason) == (1008, "rate limit exceeded")


async def test_max_connections_refuses_the_next_websocket_with_503(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Backend)
    front = await start_proxy(nursery, backend.url, max_connections=1)
    async with open_client(f"{front.url}/r"):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_client(f"{front.url}/r"):
                pass
        assert (info.value.status_code, info.value.body) == (503, b"Server is full")
    await until(lambda: front.statistics().connections == 0)
    await still_serving(front)
    assert len(Backend.seen) == 2  # the refused one never reached the backend


class Firehose(Backend):
    max_send_queue = 64 << 20  # the backend holds all it is asked for: the proxy must not


async def test_what_a_client_that_does_not_read_costs_is_one_frame(
    start: Start, nursery: trio.Nursery
) -> None:
    backend = await start(Firehose)
    front = await start_proxy(nursery, backend.url)
    stream, ws = await raw_handshake(front.port, "/r")
    async with stream:
        for _ in range(40):  # 40 x 100 kB back, more than the sockets' buffers take
            await stream.send_all(ws.send(TextMessage("flood")))
        frame = len(encode_message("x" * 100_000))
        await until(lambda: front.statistics().send_queue_bytes >= frame)
        stuck = front.statistics()  # the proxy is stuck writing one frame to the client
        assert frame <= stuck.send_queue_bytes <= frame + len("flood")
        assert stuck.receive_buffer_bytes == 0
    await until(lambda: front.statistics().connections == 0)
    assert front.statistics().send_queue_bytes == 0


@pytest.mark.parametrize(
    ("limits", "error"),
    [
        ({"max_message_size": 0}, ValueError),
        ({"max_connections": True}, ValueError),
        ({"handshake_timeout": 0}, ValueError),
        ({"rate_limit": 100}, TypeError),
        ({"forward_headers": "cookie"}, TypeError),  # a string, not a list of names
        ({"drop_headers": None}, TypeError),
        ({"drop_headers": [b"cookie"]}, TypeError),
        ({"forward_headers": ["Host"]}, ValueError),  # never passed on as it is
        ({"forward_headers": ["connection"]}, ValueError),
        ({"drop_headers": ["x header"]}, ValueError),
        ({"ssl_context": "cert.pem"}, TypeError),
    ],
)
async def test_a_bad_limit_is_refused_before_listening(
    limits: dict[str, Any], error: type[Exception]
) -> None:
    with trio.fail_after(5), pytest.raises(error):
        await roomkit.proxy("ws://127.0.0.1:9", port=0, **limits)


# The command line: roomkit proxy's flags and variables for the headers.


def proxy_args(*argv: str, **environ: str) -> argparse.Namespace:
    return parse_args(["proxy", "ws://127.0.0.1:9000", *argv], environ)


def test_the_header_options_have_flags_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        proxy_args("--help")
    shown = " ".join(capsys.readouterr().out.split())
    assert "--forward-headers NAMES" in shown and "env: ROOMKIT_PROXY_FORWARD_HEADERS" in shown
    assert "--drop-headers NAMES" in shown and "env: ROOMKIT_PROXY_DROP_HEADERS" in shown
    assert "--certfile PATH" in shown and "env: ROOMKIT_PROXY_CERTFILE" in shown
    assert "--keyfile PATH" in shown and "env: ROOMKIT_PROXY_KEYFILE" in shown
    run = _runner(proxy_args("--forward-headers", "X-Tenant, Cookie"))
    assert run.keywords["forward_headers"] == ("x-tenant", "cookie")
    run = _runner(proxy_args(ROOMKIT_PROXY_DROP_HEADERS="x-forwarded-for,Forwarded"))
    assert run.keywords["drop_headers"] == ("x-forwarded-for", "forwarded")
    everything = proxy_args("--forward-headers=*", ROOMKIT_PROXY_FORWARD_HEADERS="cookie")
    assert _runner(everything).keywords["forward_headers"] is None  # the flag wins


@pytest.mark.parametrize(
    ("argv", "environ", "error"),
    [
        (
            ["--forward-headers", "cookie,host"],
            {},
            "argument --forward-headers: expected comma-separated header names: "
            "'host' is never passed on as it is",
        ),
        (
            [],
            {"ROOMKIT_PROXY_DROP_HEADERS": "x-a,,x-b"},
            "environment variable ROOMKIT_PROXY_DROP_HEADERS: expected comma-separated "
            "header names: '' is not a header name",
        ),
    ],
)
def test_a_bad_header_name_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], argv: list[str], environ: dict[str, str], error: str
) -> None:
    with pytest.raises(SystemExit) as info:
        proxy_args(*argv, **environ)
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"roomkit proxy: error: {error}"


def test_a_certfile_without_a_keyfile_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["proxy", "ws://127.0.0.1:9000", "--certfile", "cert.pem"])
    assert info.value.code == 2
    together = "--certfile and --keyfile (ROOMKIT_PROXY_CERTFILE, ROOMKIT_PROXY_KEYFILE)"
    assert f"{together} go together; only --certfile was given" in capsys.readouterr().err
