"""Forwarding to a room's owner node (roomkit._forward), over real sockets.

A tiny forwarding front (a Trio listener whose handler reads the request head with
``_accept.read_request`` and calls ``Forwards.forward``) stands before a roomkit
``serve``, the owner. Clients are ones roomkit did not write (trio-websocket, the
``websockets`` package's sync client in a thread) or raw sockets for the ones that
misbehave. A plain front splices in the kernel (``os.splice``, in the splicing thread
of ``_splicer.py``), a TLS front copies through Python: each test that moves messages
runs on both. ``splice`` itself is also driven between socket pairs, both ways.
Everything listens on 127.0.0.1 port 0; waits are ``fail_after`` around an event.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
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
from roomkit._forward import KERNEL_SPLICE, SPLICE_CHUNK, Forwarded, Forwards, splice
from roomkit._metrics import FORWARD_OUTCOMES, Metrics
from roomkit._splicer import Splicer, open_splicer

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
async def front(
    address: str, ssl_context: ssl.SSLContext | None = None, answer_timeout: float = 5
) -> AsyncIterator[Front]:
    """A front that forwards every request to ``address``: 503 if it cannot, 400 for
    a head it cannot forward."""
    async with trio.open_nursery() as nursery:
        metrics = Metrics()
        forwards = Forwards(SECRET, answer_timeout=answer_timeout, metrics=metrics)
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


def splicers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "roomkit-splicer"]


async def test_plain_clients_are_spliced_by_one_thread_that_ends_with_the_forwards(
    start: Start, tls: ssl.SSLContext | None, client_tls: ssl.SSLContext
) -> None:
    """The thread starts with the first plain client (never for TLS ones), serves
    every pair, and ends with ``Forwards.run``."""
    server = await start(Owned)
    async with front(f"127.0.0.1:{server.port}", tls) as door:
        assert splicers() == []
        context = client_tls if tls else None
        async with (
            open_client(url(door.port, tls), context) as one,
            open_client(url(door.port, tls), context) as two,
        ):
            for ws in (one, two):
                await ws.send_message("hi")
                with trio.fail_after(5):
                    assert await ws.get_message() == "hi"
            assert len(splicers()) == (0 if tls else 1)
        threads = splicers()
    for thread in threads:  # it reported its end, then returns
        await trio.to_thread.run_sync(thread.join, 5)
        assert not thread.is_alive()


async def test_many_pairs_at_once(
    start: Start, tls: ssl.SSLContext | None, client_tls: ssl.SSLContext
) -> None:
    server = await start(Owned)
    before = open_fds()

    async def talk(i: int) -> None:
        async with open_client(url(door.port, tls), client_tls if tls else None) as ws:
            for n in range(10):
                await ws.send_message(f"{i}.{n}")
                with trio.fail_after(5):
                    assert await ws.get_message() == f"{i}.{n}"

    async with front(f"127.0.0.1:{server.port}", tls) as door:
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(talk, i)
        await wait_for(lambda: door.forwards.forwarding == 0)
    assert door.counted() == {"spliced": 30}
    await wait_for(lambda: open_fds() <= before)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of a loopback TCP connection, with small fixed buffers (64 KiB asked)."""
    with socket.socket() as listener:
        for sock in (listener, near := socket.socket()):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        near.connect(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def buffered(*socks: socket.socket) -> int:
    """What the kernel may hold in these sockets' buffers, both ways."""
    return sum(
        sock.getsockopt(socket.SOL_SOCKET, option)
        for sock in socks
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF)
    )


@attrs.define
class Spliced:
    """A pair being spliced: the client's and the owner's own sockets (blocking, 5 s),
    the sockets of the front's side, and an event set once ``splice`` returned."""

    client: socket.socket
    owner: socket.socket
    front: tuple[socket.socket, socket.socket]
    done: trio.Event
    #: The splice's own scope, to cancel it alone.
    scope: trio.CancelScope
    #: What the kernel may hold in the four sockets' buffers, both ways.
    buffers: int

    async def flowing(self) -> None:
        """Once a byte went up: the pair has been taken up."""
        self.client.sendall(b".")
        with trio.fail_after(5):
            assert await self.receive(self.owner, 1) == b"."

    async def receive(self, sock: socket.socket, size: int) -> bytes:
        """Exactly ``size`` bytes from ``sock``, or fewer at its end."""
        data = b""
        while len(data) < size and (chunk := await trio.to_thread.run_sync(sock.recv, size)):
            data += chunk
        return data


@asynccontextmanager
async def spliced(
    way: str, first: bytes = b"", splicer: Splicer | None = None
) -> AsyncIterator[Spliced]:
    """``splice`` between two loopback connections: through the splicing thread
    (``kernel``: ``splicer``'s, or one of its own), or copied through Python
    (``userspace``)."""
    client_end, client = tcp_pair()
    owner_end, owner = tcp_pair()
    for sock in (client, owner):
        sock.settimeout(5)
    front = (client_end, owner_end)
    pair = Spliced(
        client, owner, front, trio.Event(), trio.CancelScope(), buffered(client, owner, *front)
    )

    async def run(splicer: Splicer | None) -> None:
        with pair.scope:
            await splice(
                trio.SocketStream(trio.socket.from_stdlib_socket(client_end)),
                trio.SocketStream(trio.socket.from_stdlib_socket(owner_end)),
                first,
                splicer,
            )
        pair.done.set()

    try:
        async with open_splicer() as own, trio.open_nursery() as nursery:
            nursery.start_soon(run, (splicer or own) if way == "kernel" else None)
            yield pair
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        owner.close()


ways = pytest.mark.parametrize("way", ["kernel", "userspace"])


@ways
async def test_splice_moves_bytes_both_ways_at_once_in_order(way: str) -> None:
    up, down = os.urandom(3_000_000), os.urandom(2_000_000)
    async with spliced(way, first=b"101") as pair:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(trio.to_thread.run_sync, pair.client.sendall, up))
                nursery.start_soon(partial(trio.to_thread.run_sync, pair.owner.sendall, down))
                assert await pair.receive(pair.owner, len(up)) == up
                assert await pair.receive(pair.client, 3 + len(down)) == b"101" + down
        assert not pair.done.is_set()


@ways
async def test_the_clients_end_of_file_reaches_the_owner_which_may_still_answer(
    way: str,
) -> None:
    async with spliced(way) as pair:
        pair.client.sendall(b"last words")
        pair.client.shutdown(socket.SHUT_WR)
        with trio.fail_after(5):
            assert await pair.receive(pair.owner, 100) == b"last words"  # then its end
            pair.owner.sendall(b"an answer after the end of file")
            assert await pair.receive(pair.client, 31) == b"an answer after the end of file"
            assert not pair.done.is_set()
            pair.owner.close()
            assert await pair.receive(pair.client, 1) == b""
            await pair.done.wait()


@ways
async def test_the_owners_end_closes_the_client(way: str) -> None:
    async with spliced(way) as pair:
        pair.owner.sendall(b"goodbye")
        pair.owner.close()
        with trio.fail_after(5):
            assert await pair.receive(pair.client, 100) == b"goodbye"
            await pair.done.wait()
        assert all(sock.fileno() == -1 for sock in pair.front)  # the front's own closed


@ways
@pytest.mark.parametrize("side", ["client", "owner"])
async def test_a_side_that_resets_ends_the_pair(way: str, side: str) -> None:
    """The owner hears of a client's reset as its end of file (spliced, the pair ends
    at once; copied, at the owner's end); the client of an owner's reset, as its end."""
    before = open_fds()
    async with spliced(way) as pair:
        pair.client.sendall(b"x")
        with trio.fail_after(5):
            assert await pair.receive(pair.owner, 1) == b"x"
        gone, other = (pair.client, pair.owner) if side == "client" else (pair.owner, pair.client)
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        with trio.fail_after(5):
            assert await pair.receive(other, 1) == b""
            other.close()
            await pair.done.wait()
    await wait_for(lambda: open_fds() <= before)


@ways
async def test_a_splice_cancelled_is_cut_at_once(way: str) -> None:
    """Both connections end, while the splicer (its thread) goes on for others."""
    async with (
        open_splicer() as splicer,
        spliced(way, splicer=splicer) as pair,
        spliced(way, splicer=splicer) as other,
    ):
        pair.scope.cancel()
        with trio.fail_after(5):
            await pair.done.wait()
            assert await pair.receive(pair.client, 1) == b""
            assert await pair.receive(pair.owner, 1) == b""
            other.client.sendall(b"on")
            assert await other.receive(other.owner, 2) == b"on"


async def test_a_pair_the_thread_cannot_take_up_ends_alone_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_pipes(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    async with open_splicer() as splicer, spliced("kernel", splicer=splicer) as other:
        await other.flowing()
        with monkeypatch.context() as patched:
            patched.setattr(os, "pipe2", no_pipes)
            async with spliced("kernel", splicer=splicer) as failed:
                with trio.fail_after(5):
                    await failed.done.wait()
                    assert await failed.receive(failed.client, 1) == b""
        other.client.sendall(b"on")
        with trio.fail_after(5):
            assert await other.receive(other.owner, 2) == b"on"
    assert "splicing a forwarded connection failed: [Errno 24]" in caplog.text


async def test_a_failed_thread_cuts_its_pairs_and_the_next_pair_starts_another(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(fd: int) -> int:
        monkeypatch.undo()  # once
        raise RuntimeError("broken")

    async with open_splicer() as splicer:
        async with spliced("kernel", splicer=splicer) as first:
            await first.flowing()
            (failed,) = splicers()
            monkeypatch.setattr(os, "eventfd_read", broken)
            async with spliced("kernel", splicer=splicer) as second:  # wakes it: it fails
                with trio.fail_after(5):
                    await first.done.wait()
                    await second.done.wait()
                    await trio.to_thread.run_sync(failed.join, 5)
        assert "the splicing thread failed" in caplog.text
        async with spliced("kernel", splicer=splicer) as third:
            third.client.sendall(b"anew")
            with trio.fail_after(5):
                assert await third.receive(third.owner, 4) == b"anew"
            assert len(splicers()) == 1


@ways
async def test_a_slow_reader_holds_its_writer_back(way: str) -> None:
    """The client reads nothing: the owner's writes stall once the buffers on the way
    and one chunk are full, while the client's own bytes still reach the owner; then
    the client reads it all, in order."""
    block = os.urandom(1 << 20)
    async with spliced(way) as pair:
        pair.owner.setblocking(False)
        sent, blocked = 0, 0
        while blocked < 20 and sent < 64 << 20:  # 20 tries in a row in 0.2 s: stalled
            try:
                sent += pair.owner.send(block[sent % len(block) :])
                blocked = 0
            except BlockingIOError:
                blocked += 1
                await trio.sleep(0.01)
        assert sent <= pair.buffers + 3 * SPLICE_CHUNK  # a segment past each full buffer at most
        pair.owner.settimeout(5)
        pair.client.sendall(b"still here")
        with trio.fail_after(5):
            assert await pair.receive(pair.owner, 10) == b"still here"
        with trio.fail_after(10):
            received = await pair.receive(pair.client, sent)
        assert received == (block * (sent // len(block) + 1))[:sent]


@ways
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
    async with open_splicer() as splicer:
        with trio.fail_after(5):
            await splice(client, owner, b"first", splicer)
    owner_peer.settimeout(5)
    with contextlib.suppress(ConnectionResetError):  # its bytes unread: reset
        assert owner_peer.recv(1) == b""  # the front closed it (no timeout)
    owner_peer.close()


class SlowOwner:
    """An owner that reads a plain HTTP request whole, and answers it ``delay`` seconds
    later: longer than the front's answer timeout."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.headed = trio.Event()

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some()
            head, body = data.split(b"\r\n\r\n", 1)
            self.heads.append(head)
            self.headed.set()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += await stream.receive_some()
            self.bodies.append(body)
            await trio.sleep(self.delay)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")


async def test_a_plain_request_is_passed_on_and_answered_after_the_answer_timeout(
    nursery: trio.Nursery,
) -> None:
    owner = SlowOwner(delay=0.5)
    (listener,) = await nursery.start(partial(trio.serve_tcp, owner.serve, 0, host="127.0.0.1"))
    port = listener.socket.getsockname()[1]
    async with front(f"127.0.0.1:{port}", answer_timeout=0.1) as door:
        stream = await trio.open_tcp_stream("127.0.0.1", door.port)
        async with stream:
            await stream.send_all(
                b"POST /room HTTP/1.1\r\nHost: x\r\ncontent-length: 9\r\n\r\nbody"
            )
            with trio.fail_after(5):
                await owner.headed.wait()
                await stream.send_all(b" rest")  # spliced, after the outcome was known
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
    assert answer == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"
    assert owner.bodies == [b"body rest"]
    assert b"\r\nroomkit-forwarded: for=127.0.0.1:" in owner.heads[0]
    assert door.outcomes == [Forwarded.PASSED]
    assert door.counted() == {"passed": 1}


async def test_a_plain_request_to_an_owner_that_is_gone_is_unreachable() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    async with front(f"127.0.0.1:{port}", answer_timeout=0.1) as door:
        stream = await trio.open_tcp_stream("127.0.0.1", door.port)
        async with stream:
            await stream.send_all(b"POST /room HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n")
            with trio.fail_after(5):
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 503 ")
    assert door.counted() == {"unreachable": 1}
