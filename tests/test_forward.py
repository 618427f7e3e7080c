"""Forwarding to a room's owner node (roomkit._forward), over real sockets.

A tiny forwarding front (a Trio listener whose handler reads the request head with
``_accept.read_request`` and calls ``Forwards.forward``) stands before a roomkit
``serve``, the owner. Clients are ones roomkit did not write (trio-websocket, the
``websockets`` package's sync client in a thread) or raw sockets for the ones that
misbehave. A plain front splices in the kernel (``os.splice``), a TLS front copies
through Python: each test that moves messages runs on both. Everything listens on
127.0.0.1 port 0; waits are ``fail_after`` around an event.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
import trustme
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import roomkit
from roomkit._accept import Head, accept_loop, read_request, remote_address
from roomkit._core.clusterauth import Relayed, verified_remote
from roomkit._core.frontdoor import Response, parse_head
from roomkit._forward import KERNEL_SPLICE, Forwarded, Forwards, splice
from roomkit._metrics import FORWARD_OUTCOMES, Metrics

from .helpers import Start, open_client

SECRET = b"cluster secret"


class Owned(roomkit.Room):
    """Echoes every message; ``close CODE`` closes with that code; ``?refuse`` is
    refused with 503. Remembers what it was told and how each connection closed."""

    rate_limit = None
    seen: ClassVar[list[roomkit.Request]] = []
    closed: ClassVar[list[tuple[int, str]]] = []
    gone = trio.Event()

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if "refuse" in request.query:
            raise roomkit.Reject(503, "not here")
        Owned.seen.append(request)

    async def on_message(self, conn: roomkit.Connection, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith("close "):
            conn.close(int(message.split()[1]), "as asked")
        else:
            conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Owned.closed.append((code, reason))
        Owned.gone.set()


@pytest.fixture(autouse=True)
def fresh() -> None:
    Owned.seen, Owned.closed, Owned.gone = [], [], trio.Event()


@attrs.define
class Front:
    """A forwarding front: its port, what each handshake became, its Forwards and the
    counters they keep."""

    port: int
    forwards: Forwards
    metrics: Metrics
    outcomes: list[Forwarded] = attrs.field(factory=list)

    def counted(self) -> dict[str, int]:
        """The forwards counted by outcome, as they should be: one per handshake."""
        assert self.metrics.forwarded == {
            outcome: self.outcomes.count(Forwarded(outcome)) for outcome in FORWARD_OUTCOMES
        }
        return {outcome: n for outcome, n in self.metrics.forwarded.items() if n}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(params=["plain", "tls"])
def tls(request: pytest.FixtureRequest, ca: trustme.CA) -> ssl.SSLContext | None:
    """The front's TLS context, or None: each test runs spliced both ways."""
    if request.param == "plain":
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def front(address: str, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Front]:
    """A front that forwards every handshake to ``address``: 503 if it cannot, 400 for
    a head it cannot forward."""
    async with trio.open_nursery() as nursery:
        metrics = Metrics()
        forwards = Forwards(SECRET, answer_timeout=5, metrics=metrics)
        await nursery.start(forwards.run)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        state = Front(listeners[0].socket.getsockname()[1], forwards, metrics)

        async def handler(stream: trio.SocketStream) -> None:
            secured, head, _ = await read_request(ssl_context, 5, stream)
            if not isinstance(head, Head):
                await trio.aclose_forcefully(secured)
                return
            outcome = await forwards.forward(secured, head, remote_address(stream), address)
            state.outcomes.append(outcome)
            if outcome in (Forwarded.UNREACHABLE, Forwarded.MALFORMED):
                status = 503 if outcome is Forwarded.UNREACHABLE else 400
                await secured.send_all(Response(status, outcome.value).to_bytes())
                await trio.aclose_forcefully(secured)

        nursery.start_soon(accept_loop, listeners[0], nursery, handler)  # keeps the streams
        yield state
        nursery.cancel_scope.cancel()


def url(port: int, tls: ssl.SSLContext | None, target: str = "/lobby") -> str:
    return f"{'wss' if tls else 'ws'}://127.0.0.1:{port}{target}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_for(condition: Any, seconds: float = 5) -> None:
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (counts and descriptors have no event)
            await trio.sleep(0.01)


async def test_messages_both_ways_text_binary_and_large(
    start: Start, tls: ssl.SSLContext | None, client_tls: ssl.SSLContext
) -> None:
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}", tls) as door:
        async with open_client(url(door.port, tls), client_tls if tls else None) as ws:
            large = os.urandom(900_000)
            for message in ("hello", b"\x00\xff", "é" * 1000, large, "after"):
                await ws.send_message(message)
                with trio.fail_after(5):
                    assert await ws.get_message() == message
        await wait_for(lambda: door.forwards.forwarding == 0)
    assert door.outcomes == [Forwarded.SPLICED]
    assert door.counted() == {"spliced": 1}
    assert Owned.closed == [(1000, "")]


async def test_close_codes_pass_through_both_ways(
    start: Start, tls: ssl.SSLContext | None, client_tls: ssl.SSLContext
) -> None:
    """The websockets package's client, in a thread: it closes with 4000 (the owner's
    on_close hears it), and the owner closes with 4001 (the client hears it)."""
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}", tls) as door:
        context = client_tls if tls else None

        def client_closes() -> None:
            with connect(url(door.port, tls), ssl=context, open_timeout=5) as ws:
                ws.send("ping")
                assert ws.recv(timeout=5) == "ping"
                ws.close(4000, "client bye")

        def owner_closes() -> tuple[int | None, str | None]:
            with connect(url(door.port, tls), ssl=context, open_timeout=5) as ws:
                ws.send("close 4001")
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=5)
                return closed.value.rcvd.code if closed.value.rcvd else None, (
                    closed.value.rcvd.reason if closed.value.rcvd else None
                )

        await trio.to_thread.run_sync(client_closes)
        await wait_for(lambda: len(Owned.closed) == 1)
        assert Owned.closed == [(4000, "client bye")]
        assert await trio.to_thread.run_sync(owner_closes) == (4001, "as asked")
        await wait_for(lambda: door.forwards.forwarding == 0)
    assert door.outcomes == [Forwarded.SPLICED, Forwarded.SPLICED]
    assert door.counted() == {"spliced": 2}


async def test_the_owner_verifies_the_header_and_sees_the_clients_address(start: Start) -> None:
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}") as door:
        stream = await trio.open_tcp_stream("127.0.0.1", door.port)
        async with stream:
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            await stream.send_all(
                b"GET /lobby?u=ada HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Roomkit-Forwarded: for=6.6.6.6:6;t=1;sig=" + b"A" * 43 + b"\r\n"
                b"Sec-WebSocket-Key: " + key.encode() + b"\r\n\r\n"
            )
            with trio.fail_after(5):
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 101 ")
            mine = stream.socket.getsockname()
            (request,) = Owned.seen
    header = request.headers["roomkit-forwarded"]
    assert header.startswith(f"for=127.0.0.1:{mine[1]};t=")  # the client's own is gone
    head = parse_head(
        f"GET {request.path}?u=ada HTTP/1.1\r\n".encode()
        + b"\r\n".join(f"{name}: {value}".encode() for name, value in request.headers.items())
        + b"\r\n\r\n"
    )
    assert not isinstance(head, Response)
    assert verified_remote(head, SECRET, now=time.time()) == Relayed(("127.0.0.1", mine[1]))
    assert verified_remote(head, b"other", now=time.time()) != Relayed(("127.0.0.1", mine[1]))
    assert request.remote != ("127.0.0.1", mine[1])  # roomkit does not check it yet: the front's


async def test_an_owner_that_is_gone_gets_the_client_a_503(start: Start) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused
    async with front(f"127.0.0.1:{port}") as door:
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with open_client(url(door.port, None)):
                pass
    assert rejected.value.status_code == 503
    assert door.outcomes == [Forwarded.UNREACHABLE]
    assert door.counted() == {"unreachable": 1}


async def test_an_owner_that_refuses_is_reported_and_its_answer_passed_on(start: Start) -> None:
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}") as door:
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with open_client(url(door.port, None, "/lobby?refuse")):
                pass
        await wait_for(lambda: door.forwards.forwarding == 0)
    assert rejected.value.status_code == 503
    assert rejected.value.body == b"not here"
    assert door.outcomes == [Forwarded.REFUSED]
    assert door.counted() == {"refused": 1}


async def test_a_head_with_bytes_after_its_first_blank_line_is_not_forwarded(
    start: Start,
) -> None:
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}") as door:
        stream = await trio.open_tcp_stream("127.0.0.1", door.port)
        async with stream:
            await stream.send_all(
                b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n"
                b"roomkit-forwarded: for=6.6.6.6:6;t=1\r\n\r\n"
            )
            with trio.fail_after(5):
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 400 ")
    assert door.outcomes == [Forwarded.MALFORMED]
    assert door.counted() == {"malformed": 1}
    assert Owned.seen == []


HANDSHAKE = (
    b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def raw_client(port: int) -> socket.socket:
    """A blocking socket through the handshake, its room told of it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(HANDSHAKE)
    assert (await trio.to_thread.run_sync(sock.recv, 4096)).startswith(b"HTTP/1.1 101 ")
    await wait_for(lambda: Owned.seen != [])
    return sock


@pytest.mark.parametrize("how", ["reset", "end of file"])
async def test_a_client_that_vanishes_mid_splice_ends_both_sides(start: Start, how: str) -> None:
    server = await start(Owned)
    before = open_fds()
    async with front(f"127.0.0.1:{server.port}") as door:
        sock = await raw_client(door.port)
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        else:
            sock.shutdown(socket.SHUT_WR)
        with trio.fail_after(5):
            await Owned.gone.wait()
        assert Owned.closed == [(1006, "")]
        await wait_for(lambda: door.forwards.forwarding == 0)
        if how != "reset":
            assert await trio.to_thread.run_sync(sock.recv, 4096) == b""  # the front closed
            sock.close()
    await wait_for(lambda: open_fds() <= before)
    assert door.outcomes == [Forwarded.SPLICED]
    assert door.counted() == {"spliced": 1}


async def test_drain_lets_splices_run_on_then_run_ends_cut_them(start: Start) -> None:
    server = await start(Owned)
    before = open_fds()
    async with front(f"127.0.0.1:{server.port}") as door:
        sock = await raw_client(door.port)
        began = trio.current_time()
        await door.forwards.drain(0.3)  # nothing ends it: it runs on for 0.3 s
        assert trio.current_time() - began >= 0.3
        sock.sendall(b"\x81\x84\x00\x00\x00\x00ping")  # a masked text frame, zero key
        assert await trio.to_thread.run_sync(sock.recv, 4096) == b"\x81\x04ping"
        assert door.forwards.forwarding == door.metrics.forwarding == 1
    # the end of the front (Forwards.run) cut it
    with trio.fail_after(5):
        await Owned.gone.wait()
    assert Owned.closed == [(1006, "")]
    assert await trio.to_thread.run_sync(sock.recv, 4096) == b""
    sock.close()
    assert door.forwards.forwarding == 0
    await wait_for(lambda: open_fds() <= before)


async def test_drain_returns_once_the_splices_end(start: Start) -> None:
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}") as door:
        with trio.fail_after(5):  # the drain itself returns, well before its 30 s
            async with trio.open_nursery() as nursery:
                async with open_client(url(door.port, None)) as ws:
                    nursery.start_soon(door.forwards.drain, 30)
                    await ws.send_message("close 1000")
                    with pytest.raises(trio_websocket.ConnectionClosed):
                        await ws.get_message()
                await wait_for(lambda: door.forwards.forwarding == 0)
        assert door.forwards.forwarding == 0


def test_plain_tcp_clients_are_spliced_in_the_kernel_here() -> None:
    assert KERNEL_SPLICE  # Linux: the plain front's tests exercise os.splice


@pytest.mark.parametrize("way", ["kernel", "userspace"])
async def test_a_client_gone_while_the_owner_sends_ends_the_splice_quietly(way: str) -> None:
    """Writes to the client fail as the owner sends: the splice ends, raises nothing,
    and closes both sides."""
    client_end, client_peer = socket.socketpair()
    owner_end, owner_peer = socket.socketpair()
    owner = trio.SocketStream(trio.socket.from_stdlib_socket(owner_end))
    client: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(client_end))
    if way == "userspace":
        client_end.close()  # through Python: a stream that is no socket's
        client, peer = trio.testing.memory_stream_pair()
        await peer.aclose()
    client_peer.close()
    owner_peer.setblocking(False)
    owner_peer.send(b"x" * 60_000)
    with trio.fail_after(5):
        await splice(client, owner, b"first")
    assert owner.socket.fileno() == -1
    owner_peer.close()
