"""Hostile peers: floods, slow readers, too many connections, foreign origins, and a
shutdown under load. Each test checks what the bad peer gets and that a well-behaved
client in the same room is still served.

Rate limits are checked on a frozen ``mock_clock`` (time does not move, so exactly the
burst gets through); slow consumers need real socket buffers to fill, so they use the
real clock with small bounded waits. The last tests are plain ones of the limits module
that the server and the proxy share (roomkit._core.limits).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import WSConnection
from wsproto.events import CloseConnection, Pong, TextMessage

import roomkit
from roomkit._core.limits import (
    CLOSE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_MESSAGE_SIZE,
    RATE_LIMIT,
    RATE_LIMITED,
    MessageAssembler,
    MessageTooBig,
    byte_length,
)
from roomkit._core.ratelimit import FLOOD_SECONDS
from roomkit.storage import Changes, Claim, SQLiteStore

from .helpers import Start, expect_close, open_client, raw_handshake, read_until_close, receive_json


class Limited(roomkit.Room):
    rate_limit = roomkit.RateLimit(per_second=10, burst=5)
    auto_response = ("ping", "pong")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def test_rate_limit_drops_with_an_error_then_closes_a_flood(
    start: Start, mock_clock: trio.testing.MockClock
) -> None:
    server = await start(Limited)
    async with open_client(f"{server.url}/r") as flood, open_client(f"{server.url}/r") as calm:
        for i in range(4):
            await flood.send_message(str(i))
        await flood.send_message("ping")  # auto-responses take a token too
        await flood.send_message("dropped")
        assert [await flood.get_message() for _ in range(5)] == ["0", "1", "2", "3", "pong"]
        error = await receive_json(flood)
        assert (error["type"], error["code"]) == ("error", "rate_limited")

        await calm.send_message("hello")  # its own bucket: served at once
        with trio.fail_after(1):
            assert await calm.get_message() == "hello"

        patience = int(10 * FLOOD_SECONDS)
        for _ in range(patience - 1):
            await flood.send_message("more")
        codes = [(await receive_json(flood))["code"] for _ in range(patience - 2)]
        assert codes == ["rate_limited"] * (patience - 2)
        reason = await expect_close(flood)
        assert (reason.code, reason.reason) == (1008, "rate limit exceeded")

        await calm.send_message("still served")
        with trio.fail_after(1):
            assert await calm.get_message() == "still served"


async def test_tokens_refill_on_trios_clock(
    start: Start, mock_clock: trio.testing.MockClock
) -> None:
    server = await start(Limited)
    async with open_client(f"{server.url}/r") as ws:
        for i in range(6):
            await ws.send_message(str(i))
        replies = [await ws.get_message() for _ in range(6)]
        assert replies[:5] == ["0", "1", "2", "3", "4"] and "rate_limited" in replies[5]
        mock_clock.jump(0.1)  # one token back
        await ws.send_message("again")
        assert await ws.get_message() == "again"


class Firehose(roomkit.Room):
    """Broadcasts a big frame each time it is asked: a slow reader falls behind."""

    max_send_queue = 64 * 1024
    rate_limit = None
    payload = "x" * 20_000
    closes: ClassVar[list[tuple[int, str]]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "burst":  # more than max_send_queue inside one hook
            for _ in range(10):
                self.broadcast(self.payload)
        else:
            self.broadcast(self.payload)
        conn.send(f"open: {len(self.connections())}")

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Firehose.closes.append((code, reason))


async def test_a_slow_consumer_is_cut_off_and_nobody_else_notices(start: Start) -> None:
    Firehose.closes = []
    server = await start(Firehose)
    slow_socket = socket.socket()
    slow_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
    slow_socket.connect(("127.0.0.1", server.port))
    slow = trio.SocketStream(trio.socket.from_stdlib_socket(slow_socket))
    async with slow, open_client(f"{server.url}/r") as fast:
        await slow.send_all(
            b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        # The slow peer never reads again. The fast one asks for frame after frame.
        with trio.fail_after(10):
            for _ in range(1000):
                await fast.send_message("more")
                assert await fast.get_message() == Firehose.payload
                report = await fast.get_message()
                if report == "open: 1":
                    break
            else:
                pytest.fail("the slow consumer was never cut off")
        await fast.send_message("more")  # and the fast one goes on as before
        with trio.fail_after(1):
            assert await fast.get_message() == Firehose.payload


async def test_one_hook_cannot_queue_more_than_the_limit_for_a_peer(start: Start) -> None:
    Firehose.closes = []
    server = await start(Firehose)
    async with open_client(f"{server.url}/r") as ws, open_client(f"{server.url}/r") as other:
        await ws.send_message("burst")  # 10 x 20 kB for each peer, held by the gate
        for client in (ws, other):
            reason = await expect_close(client)
            assert (reason.code, reason.reason) == (1008, "slow consumer")


class Plain(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def test_server_max_connections_refuses_with_503(start: Start) -> None:
    server = await start({"/a": Plain, "/b": Plain}, max_connections=2)
    async with open_client(f"{server.url}/a/x"), open_client(f"{server.url}/b/y"):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_client(f"{server.url}/a/z"):
                pass
        assert (info.value.status_code, info.value.body) == (503, b"Server is full")
    await trio.testing.wait_all_tasks_blocked()
    async with open_client(f"{server.url}/a/z") as ws:  # room again once they left
        await ws.send_message("in")
        assert await ws.get_message() == "in"


async def test_allowed_origins(start: Start) -> None:
    server = await start(Plain, allowed_origins=["https://good.example"])

    assert await handshake_status(server.port, "https://good.example") == 101
    assert await handshake_status(server.port, "HTTPS://GOOD.example") == 101
    assert await handshake_status(server.port, None) == 101  # not a browser
    assert await handshake_status(server.port, "https://evil.example") == 403


async def handshake_status(port: int, origin: str | None) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        head = (
            "GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
        if origin is not None:
            head += f"Origin: {origin}\r\n"
        await stream.send_all((head + "\r\n").encode())
        with trio.fail_after(5):
            answer = await stream.receive_some()
    return int(answer.split()[1])


class Ledger(roomkit.Room):
    """Stores each message with a sequence number, then broadcasts it."""

    rate_limit = None

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        seq = await self.storage.get("seq", 0) + 1
        await self.storage.put("seq", seq)
        self.broadcast(json.dumps({"seq": seq}))


async def test_shutdown_under_load_is_graceful(nursery: trio.Nursery, tmp_path: Any) -> None:
    db = tmp_path / "rooms.sqlite3"
    scope = trio.CancelScope()
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        with scope:
            await roomkit.serve(Ledger, port=0, storage=db, task_status=task_status)
        stopped.set()

    server: roomkit.Server = await nursery.start(run)
    seen: dict[int, list[int]] = {}
    busy = trio.Event()

    async def member(n: int) -> None:
        async with open_client(f"{server.url}/busy") as ws:
            numbers = seen[n] = []
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    await ws.send_message("tick")
                    numbers.append(json.loads(await ws.get_message())["seq"])
                    if sum(len(s) for s in seen.values()) >= 200:
                        busy.set()
            try:  # what was already on its way, then the close
                while True:
                    numbers.append(json.loads(await ws.get_message())["seq"])
            except trio_websocket.ConnectionClosed as exc:
                assert exc.reason is not None and exc.reason.code == 1001

    async with trio.open_nursery() as members:
        for n in range(10):
            members.start_soon(member, n)
        with trio.fail_after(10):
            await busy.wait()
        scope.cancel()
    with trio.fail_after(15):
        await stopped.wait()
    # Every client saw an unbroken run of broadcasts, in order, up to its 1001.
    for numbers in seen.values():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    highest = max(max(s) for s in seen.values() if s)
    # Every broadcast that went out had its write committed before the server returned.
    async with trio.open_nursery() as again:
        server = await again.start(partial(roomkit.serve, Ledger, port=0, storage=db))
        async with open_client(f"{server.url}/busy") as ws:
            await ws.send_message("after")
            assert json.loads(await ws.get_message())["seq"] >= highest + 1
        again.cancel_scope.cancel()


class Silent(roomkit.Room):
    """Rate-limited only by its class attribute; says nothing, records what it gets."""

    rate_limit = None
    got: ClassVar[list[Any]] = []
    seen: ClassVar[trio.Event] = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Silent.got.append(message)
        if message == "done":
            Silent.seen.set()


class SilentLimited(Silent):
    rate_limit = roomkit.RateLimit(per_second=10, burst=5)


def _ping(payload: bytes) -> bytes:
    """A masked client ping frame (mask of zeros, so the payload goes as it is)."""
    assert len(payload) <= 125
    return bytes([0x89, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


async def test_a_ping_flood_is_owed_one_pong_at_a_time(start: Start) -> None:
    Silent.got, Silent.seen = [], trio.Event()
    server = await start(Silent)
    # A tiny receive window, never read: the server's socket buffer fills at once.
    stream, ws = await raw_handshake(server.port, "/r", receive_buffer=4096)
    async with stream:
        burst = _ping(b"p" * 125) * 1000
        for _ in range(20):  # 20,000 pings: 2.5 MB of pongs if each were answered
            await stream.send_all(burst)
        await stream.send_all(ws.send(TextMessage(data="done")))
        with trio.fail_after(10):
            await Silent.seen.wait()
        # However many pings came, the server owes this peer at most one pong.
        # However many pings came, the server holds the unwritten tail of one write
        # for this peer, and one pong.
        assert server.statistics().send_queue_bytes <= 512


async def test_pings_take_tokens_and_a_ping_flood_is_cut(
    start: Start, mock_clock: trio.testing.MockClock
) -> None:
    Silent.got, Silent.seen = [], trio.Event()
    server = await start(SilentLimited)
    stream, ws = await raw_handshake(server.port, "/r")
    async with stream:
        patience = int(10 * FLOOD_SECONDS)
        sent = 5 + patience + 50
        await stream.send_all(_ping(b"x") * sent)
        pongs, close = 0, []
        # The clock is frozen: no timeout would fire. Read until the close, or until a
        # pong has come for every ping (what a server that lets pings through does).
        while not close and pongs < sent:
            ws.receive_data(await stream.receive_some() or None)
            events = list(ws.events())
            pongs += sum(isinstance(e, Pong) for e in events)
            close = [e for e in events if isinstance(e, CloseConnection)]
        assert close
        assert (close[0].code, close[0].reason) == (1008, "rate limit exceeded")
        assert pongs <= 5  # the burst's tokens; the rest went unanswered


class Acker(roomkit.Room):
    """Stores each message, then acknowledges it: the ack waits for the commit."""

    max_message_size = 1000
    handled: ClassVar[int] = 0

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Acker.handled += 1
        await self.storage.put(f"m{Acker.handled}", message)
        conn.send(f"ack {message}")


class SlowCommits(SQLiteStore):
    """Takes 50 ms per commit: replies wait at the output gate when a verdict comes."""

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        await trio.sleep(0.05)
        return await super().commit(batch)


async def test_a_flooder_gets_the_reply_to_every_message_handled_before_its_close(
    start: Start,
) -> None:
    Acker.handled = 0
    server = await start(Acker, storage=await SlowCommits.open(":memory:"))
    stream, ws = await raw_handshake(server.port, "/r")
    async with stream:
        # 600 at once: the burst's 200 are handled, their acks held for the commits,
        # the rest dropped until the patience runs out and the reader cuts the peer.
        await stream.send_all(b"".join(ws.send(TextMessage(data=str(i))) for i in range(600)))
        messages, close = await read_all(stream, ws)
    assert (close.code, close.reason) == (1008, "rate limit exceeded")
    acks = [int(m.removeprefix("ack ")) for m in messages if m.startswith("ack ")]
    assert acks[:200] == list(range(200)) and acks == sorted(acks)
    assert len(acks) == Acker.handled


async def read_all(stream: trio.SocketStream, ws: WSConnection) -> tuple[list[str], Any]:
    """Every text message until the close frame, and the close frame."""
    messages: list[str] = []
    with trio.fail_after(10):
        while True:
            ws.receive_data(await stream.receive_some() or None)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    messages.append(event.data)
                elif isinstance(event, CloseConnection):
                    return messages, event


async def test_a_message_too_big_closes_after_the_replies_to_those_before(
    start: Start, tmp_path: Any
) -> None:
    Acker.handled = 0
    server = await start(Acker, storage=tmp_path / "rooms.sqlite3")
    async with open_client(f"{server.url}/r") as ws:
        for i in range(20):
            await ws.send_message(str(i))
        await ws.send_message("x" * 1001)
        await ws.send_message("after")  # read after the cut: never handled
        messages, reason = await read_until_close(ws)
    assert (reason.code, reason.reason) == (1009, "Message too big")
    assert messages == [f"ack {i}" for i in range(20)], messages
    assert Acker.handled == 20


# The limits module itself (roomkit._core.limits): pure, no sockets.


def test_a_message_in_one_frame_comes_back_as_it_is() -> None:
    message = MessageAssembler(10)
    assert message.feed("hello", True) == "hello"
    assert message.feed(bytearray(b"\x00\xff"), True) == b"\x00\xff"
    assert message.buffered == 0


def test_fragments_are_joined_and_counted_while_they_wait() -> None:
    message = MessageAssembler(100)
    assert message.feed("é", False) is None  # 2 bytes of UTF-8, 1 character
    assert message.feed("ab", False) is None
    assert message.buffered == 4
    assert message.feed("c", True) == "éabc"
    assert message.buffered == 0
    assert message.feed(b"12", False) is None
    assert message.feed(b"34", True) == b"1234"


def test_a_message_is_refused_as_soon_as_it_passes_the_limit() -> None:
    message = MessageAssembler(10)
    assert message.feed(b"x" * 6, False) is None
    with pytest.raises(MessageTooBig):
        message.feed(b"x" * 5, False)  # 11 bytes, the last part not yet kept
    assert message.buffered == 0
    assert message.feed(b"x" * 10, True) == b"x" * 10  # exactly the limit passes


def test_text_counts_in_utf8_bytes_not_characters() -> None:
    with pytest.raises(MessageTooBig):
        MessageAssembler(10).feed("é" * 6, True)  # 6 characters, 12 bytes
    assert byte_length("é" * 6) == 12
    assert byte_length(b"\xc3\xa9") == 2


def test_rooms_take_their_defaults_from_the_limits_module() -> None:
    assert roomkit.Room.max_message_size == MAX_MESSAGE_SIZE == 1 << 20
    assert roomkit.Room.max_connections == MAX_CONNECTIONS
    assert roomkit.Room.rate_limit == RATE_LIMIT == roomkit.RateLimit(per_second=100, burst=200)
    assert json.loads(RATE_LIMITED[2:]) == {
        "type": "error",
        "code": "rate_limited",
        "message": "too many messages: this one was dropped",
    }


class Bulky(roomkit.Room):
    """Answers each message with 64 KiB: a peer that does not read soon fills its socket."""

    rate_limit = roomkit.RateLimit(per_second=1, burst=8)
    closed: ClassVar[trio.Event] = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send("x" * 65536)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Bulky.closed.set()


async def test_a_flooder_that_does_not_read_is_dropped_after_the_close_timeout(
    start: Start,
) -> None:
    Bulky.closed = trio.Event()
    server = await start(Bulky)
    stream, ws = await raw_handshake(server.port, "/r", receive_buffer=4096)
    async with stream:
        # 8 replies (512 KiB) the socket cannot take, then a flood: cut with 1008, its
        # close frame stuck behind them. It never reads: it is dropped, not kept.
        await stream.send_all(ws.send(TextMessage(data="m")) * 100)
        with trio.fail_after(CLOSE_TIMEOUT + 5):
            await Bulky.closed.wait()


def test_each_message_is_measured_from_zero() -> None:
    # The limit applies to each message alone: what the last one weighed is forgotten.
    assembler = MessageAssembler(4)
    assert assembler.feed(b"abcd", True) == b"abcd"
    assert assembler.feed(b"ab", False) is None
    assert assembler.feed(b"cd", True) == b"abcd"
    assert assembler.feed("abcd", True) == "abcd"


def test_a_message_past_the_limit_says_the_limit() -> None:
    with pytest.raises(MessageTooBig) as raised:
        MessageAssembler(3).feed(b"abcd", True)
    assert str(raised.value) == "a message is at most 3 bytes"


def test_a_whole_binary_message_is_returned_as_bytes() -> None:
    message = MessageAssembler(10).feed(bytearray(b"ab"), True)
    assert type(message) is bytes and message == b"ab"
