"""Connections through real sockets: closing both ways, errors in hooks, size limits,
tags and attachments, and wire-level garbage.

Loopback only, port 0; trio-websocket's client and the ``websockets`` package's, or a
raw wsproto client where a test must misbehave on purpose. Where seconds must pass,
virtual time (``autojump_clock``) over ``roomkit.testing``'s in-memory transport, so
that the clock never jumps with bytes in flight.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import pytest
import trio
import trio_websocket
from websockets.sync.client import connect
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import BytesMessage, Request, TextMessage

import roomkit
from roomkit._core.limits import CLOSE_TIMEOUT
from roomkit._core.peer import Peer
from roomkit._errors import first_leaf
from roomkit.testing import open_test_server

from .helpers import (
    Start,
    expect_close,
    http,
    memory_handshake,
    open_client,
    raw_handshake,
    read_close,
    read_until_close,
)


class Recorder(roomkit.Room):
    """Keeps what its hooks saw in class attributes, for the test to read."""

    closes: ClassVar[list[tuple[int, str, bool]]] = []
    errors: ClassVar[list[tuple[roomkit.Connection | None, Exception]]] = []
    closed = trio.Event()

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if request.query.get("close_now"):
            conn.send("hello and goodbye")
            conn.close(4002, "not today")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        command, _, arg = message.partition(" ")
        if command == "kick":
            conn.send("before the close")
            conn.close(int(arg), "kicked")
            conn.send("after the close")  # dropped: the connection is closing
        elif command == "raise":
            conn.send("never delivered")
            self.broadcast("never broadcast")
            raise KeyError(arg)
        else:
            self.broadcast(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Recorder.closes.append((code, reason, clean))
        Recorder.closed.set()


@pytest.fixture(autouse=True)
def _reset_recorder() -> None:
    Recorder.closes = []
    Recorder.errors = []
    Recorder.closed = trio.Event()


async def wait_closed() -> tuple[int, str, bool]:
    with trio.fail_after(10):
        await Recorder.closed.wait()
    return Recorder.closes[-1]


async def test_client_close_reaches_on_close_with_its_code(start: Start) -> None:
    server = await start(Recorder)
    async with open_client(f"{server.url}/r") as ws:
        await ws.aclose(4000, "bye")
    assert await wait_closed() == (4000, "bye", True)


async def test_room_close_is_sent_after_what_was_queued(start: Start) -> None:
    server = await start(Recorder)
    async with open_client(f"{server.url}/r") as ws:
        await ws.send_message("kick 4001")
        messages, reason = await read_until_close(ws)
    assert messages == ["before the close"]  # what the hook sent after close() is dropped
    assert (reason.code, reason.reason) == (4001, "kicked")
    assert await wait_closed() == (4001, "kicked", True)


async def test_close_during_on_connect_delivers_what_came_before(start: Start) -> None:
    server = await start(Recorder)
    async with open_client(f"{server.url}/r?close_now=1") as ws:
        with trio.fail_after(5):
            assert await ws.get_message() == "hello and goodbye"
        assert (await expect_close(ws)).code == 4002


async def test_peer_that_vanishes_gives_1006(start: Start) -> None:
    server = await start(Recorder)
    stream, _ = await raw_handshake(server.port, "/r")
    await stream.aclose()
    assert await wait_closed() == (1006, "", False)


async def test_raising_hook_closes_1011_drops_its_sends_and_spares_the_room(start: Start) -> None:
    server = await start(Recorder)
    async with (
        open_client(f"{server.url}/r") as bad,
        open_client(f"{server.url}/r") as good,
    ):
        await bad.send_message("raise oops")
        messages, reason = await read_until_close(bad)
        assert messages == []  # not even its own "never delivered"
        assert (reason.code, reason.reason) == (1011, "Internal error")
        await good.send_message("still here")
        with trio.fail_after(5):
            # Neither "never delivered" nor "never broadcast" came first.
            assert await good.get_message() == "still here"


class Reclose(roomkit.Room):
    """Closes each connection again in on_close, with what it was told: the guide's
    ``webSocketClose`` calls ``ws.close(code, reason)``."""

    seen: ClassVar[list[tuple[str, int, str]]] = []
    errors: ClassVar[list[Exception]] = []
    done = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "kick":
            conn.close(1000, "kicked")
        else:  # delivered after the kick, read before it: the connection is closing
            conn.close(1006, "not sent")
            Reclose.seen.append((conn.state.value, 1006, message))

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        try:
            conn.close(code, reason)
        except Exception as exc:
            Reclose.errors.append(exc)
            raise
        finally:
            Reclose.seen.append((conn.state.value, code, reason))
            Reclose.done.set()

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Reclose.errors.append(error)


@pytest.fixture
def reclose() -> type[Reclose]:
    Reclose.seen, Reclose.errors, Reclose.done = [], [], trio.Event()
    return Reclose


@pytest.mark.parametrize("abrupt", [False, True])
async def test_closing_a_closed_connection_in_on_close_does_nothing(
    start: Start, reclose: type[Reclose], caplog: pytest.LogCaptureFixture, abrupt: bool
) -> None:
    server = await start(reclose)

    def leave() -> None:
        with connect(f"{server.url}/r") as ws:
            if abrupt:
                ws.close_socket()  # the TCP connection ends without a close frame
            else:
                ws.close(1000, "bye")

    caplog.set_level(logging.INFO, logger="roomkit")
    await trio.to_thread.run_sync(leave)
    with trio.fail_after(10):
        await reclose.done.wait()
    expected = ("closed", 1006, "") if abrupt else ("closed", 1000, "bye")
    assert reclose.seen == [expected]
    assert reclose.errors == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_closing_a_closing_connection_does_nothing(reclose: type[Reclose]) -> None:
    async with open_test_server(reclose) as server:
        stream, ws = await memory_handshake(server, "/r")
        async with stream:
            # Both in one write: "late" is read, and delivered, before the kick's close.
            kick, late = ws.send(TextMessage("kick")), ws.send(TextMessage("late"))
            await stream.send_all(kick + late)
            close = await read_close(stream, ws)
            assert (close.code, close.reason) == (1000, "kicked")  # not 1006, not twice
            await stream.send_all(ws.send(close.response()))
            with trio.fail_after(5):
                await reclose.done.wait()
    assert reclose.seen == [("closing", 1006, "late"), ("closed", 1000, "kicked")]
    assert reclose.errors == []


class CustomErrors(roomkit.Room):
    seen: ClassVar[list[str]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        raise ValueError(message)

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        CustomErrors.seen.append(repr(error))
        assert conn is not None
        if str(error) == "twice":
            raise RuntimeError("on_error failed too")
        conn.send(f"sorry: {error}")


async def test_on_error_can_answer_instead_of_closing(start: Start) -> None:
    server = await start(CustomErrors)
    async with open_client(f"{server.url}/r") as ws:
        await ws.send_message("bad input")
        with trio.fail_after(5):
            assert await ws.get_message() == "sorry: bad input"
        await ws.send_message("twice")  # on_error raises: logged, then 1011
        assert (await expect_close(ws)).code == 1011
    assert CustomErrors.seen == ["ValueError('bad input')", "ValueError('twice')"]


class Small(roomkit.Room):
    max_message_size = 1000

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(f"{len(message)}")


async def test_oversize_message_closes_1009_and_others_go_on(start: Start) -> None:
    server = await start(Small)
    async with (
        open_client(f"{server.url}/r") as big,
        open_client(f"{server.url}/r") as ok,
    ):
        await big.send_message("x" * 1000)  # exactly the limit: accepted
        with trio.fail_after(5):
            assert await big.get_message() == "1000"
            assert await ok.get_message() == "1000"
        await big.send_message("é" * 501)  # 1002 bytes of UTF-8 in 501 characters
        reason = await expect_close(big)
        assert reason.code == 1009
        await ok.send_message(b"y" * 10)
        with trio.fail_after(5):
            assert await ok.get_message() == "10"


class Limits(roomkit.Room):
    max_connections = 2

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        try:
            if message == "tags":
                conn.tags = [f"t{i}" for i in range(11)]
            elif message == "long-tag":
                conn.tags = ["x" * 257]
            elif message == "attachment":
                conn.attachment = "x" * (16 * 1024)
            elif message == "object":
                conn.send(object())
            elif message == "code":
                conn.close(1005)
            elif message == "copy":
                conn.attachment = {"n": [1]}
                conn.attachment["n"].append(2)  # changes a copy, not the stored value
                conn.send(repr(conn.attachment))
                return
        except (ValueError, TypeError) as exc:
            conn.send(f"{type(exc).__name__}: {exc}")


async def test_misuse_in_a_hook_raises_errors_that_name_the_limit(start: Start) -> None:
    server = await start(Limits)
    async with open_client(f"{server.url}/r") as ws:

        async def ask(message: str) -> str:
            await ws.send_message(message)
            with trio.fail_after(5):
                reply = await ws.get_message()
            assert isinstance(reply, str)
            return reply

        assert "at most 10 tags" in await ask("tags")
        assert "1 to 256 characters" in await ask("long-tag")
        assert "at most 16384 bytes" in await ask("attachment")
        assert (await ask("object")).startswith("TypeError: a room without a protocol")
        assert "close code 1005 may not be sent" in await ask("code")
        assert await ask("copy") == "{'n': [1]}"


async def test_max_connections_refuses_with_503(start: Start) -> None:
    server = await start(Limits)
    async with open_client(f"{server.url}/r"), open_client(f"{server.url}/r"):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with open_client(f"{server.url}/r"):
                pass
        assert info.value.status_code == 503
        assert info.value.body == b"Room is full"
    async with open_client(f"{server.url}/other"):
        pass  # the limit is per room


async def test_bytes_that_are_not_frames_close_1002(start: Start) -> None:
    server = await start(Recorder)
    async with open_client(f"{server.url}/r") as bystander:
        stream, ws = await raw_handshake(server.port, "/r")
        async with stream:
            await stream.send_all(b"\x8f\x00GARBAGE")  # opcode 0xF does not exist
            assert (await read_close(stream, ws)).code == 1002
        code, _, clean = await wait_closed()
        assert (code, clean) == (1002, False)
        await bystander.send_message("fine")
        with trio.fail_after(5):
            assert await bystander.get_message() == "fine"


async def test_invalid_utf8_text_closes_1007(start: Start) -> None:
    server = await start(Recorder)
    stream, ws = await raw_handshake(server.port, "/r")
    frame = bytearray(ws.send(TextMessage(data="ab")))
    # Unmask, swap in bytes that are never UTF-8, mask again.
    frame[-2:] = bytes(b ^ m for b, m in zip(b"\xff\xfe", frame[-6:-4], strict=True))
    async with stream, open_client(f"{server.url}/r") as bystander:
        await stream.send_all(bytes(frame))
        assert (await read_close(stream, ws)).code == 1007
        await bystander.send_message("unbothered")
        with trio.fail_after(5):
            assert await bystander.get_message() == "unbothered"


class Watchful(roomkit.Room):
    """Records what reaches on_close and on_error (Durable Objects' webSocketError)."""

    seen: ClassVar[list[tuple[str, Any]]] = []
    closed = trio.Event()

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Watchful.seen.append(("on_close", (code, clean)))
        Watchful.closed.set()

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Watchful.seen.append(("on_error", error))


@pytest.mark.parametrize(
    ("failure", "code"),
    [("not a frame", 1002), ("invalid UTF-8", 1007), ("dropped", 1006)],
)
async def test_a_websocket_failure_reaches_on_close_and_never_on_error(
    start: Start, failure: str, code: int
) -> None:
    Watchful.seen, Watchful.closed = [], trio.Event()
    server = await start(Watchful)
    stream, ws = await raw_handshake(server.port, "/r")
    async with stream:
        if failure == "not a frame":
            await stream.send_all(b"\x8f\x00GARBAGE")
        elif failure == "invalid UTF-8":
            frame = bytearray(ws.send(TextMessage(data="ab")))
            frame[-2:] = bytes(b ^ m for b, m in zip(b"\xff\xfe", frame[-6:-4], strict=True))
            await stream.send_all(bytes(frame))
    with trio.fail_after(10):
        await Watchful.closed.wait()
    assert Watchful.seen == [("on_close", (code, False))]


async def test_peer_that_never_answers_our_close_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Recorder) as server, server.connect("/r") as bystander:
        stream, ws = await memory_handshake(server, "/r")
        async with stream:
            await stream.send_all(ws.send(TextMessage(data="kick 1000")))
            before = trio.current_time()
            assert (await read_close(stream, ws)).code == 1000
            await bystander.send("no waiting on the dead")  # served while it waits
            with trio.fail_after(1):
                assert await bystander.receive_text() == "no waiting on the dead"
            # We never answer; the server gives up after CLOSE_TIMEOUT and calls it unclean.
            assert await wait_closed() == (1006, "", False)
            assert trio.current_time() - before == CLOSE_TIMEOUT
            assert await stream.receive_some() == b""


async def test_frames_sent_with_the_handshake_are_not_lost(start: Start) -> None:
    class Echo(roomkit.Room):
        async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
            conn.send(message)

    server = await start(Echo)
    early = WSConnection(ConnectionType.CLIENT)
    handshake = early.send(Request(host="127.0.0.1", target="/r"))
    frames = Connection(ConnectionType.CLIENT).send(TextMessage(data="early bird"))
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(handshake + frames)  # without waiting for the 101
        with trio.fail_after(5):
            while True:
                early.receive_data(await stream.receive_some())
                texts = [e.data for e in early.events() if isinstance(e, TextMessage)]
                if texts:
                    assert texts == ["early bird"]
                    return


class Named(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(conn.id)


async def test_connection_ids_are_short_and_unique(start: Start) -> None:
    server = await start(Named)
    async with open_client(f"{server.url}/r") as a, open_client(f"{server.url}/s") as b:
        first, second = str(await a.get_message()), str(await b.get_message())
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", first) and first != second
    assert first.split("-")[0] == second.split("-")[0]  # one prefix per process


class Nicknames(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.nickname = request.query["as"]  # type: ignore[attr-defined]

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(f"{conn.nickname}: {message}")  # type: ignore[attr-defined]


async def test_an_application_can_keep_its_own_attributes_on_a_connection(start: Start) -> None:
    server = await start(Nicknames)
    async with open_client(f"{server.url}/r?as=ann") as ann:
        await ann.send_message("hi")
        with trio.fail_after(5):
            assert await ann.get_message() == "ann: hi"


class StateWriter(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        try:
            conn.state = roomkit.ConnectionState.CLOSED  # type: ignore[misc]
        except AttributeError:
            conn.send(f"read-only, still {conn.state.value}")


async def test_a_connections_state_is_read_only(start: Start) -> None:
    server = await start(StateWriter)
    async with open_client(f"{server.url}/r") as ws:
        with trio.fail_after(5):
            assert await ws.get_message() == "read-only, still open"


class Echo(roomkit.Room):
    max_message_size = 10

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def _next_message(stream: trio.SocketStream, ws: WSConnection) -> str | bytes:
    with trio.fail_after(5):
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    assert event.message_finished
                    return event.data
            ws.receive_data(await stream.receive_some())


async def test_a_message_in_fragments_arrives_whole_and_counts_whole(start: Start) -> None:
    server = await start(Echo)
    stream, ws = await raw_handshake(server.port, "/r")
    async with stream:
        for part in ("he", "ll", "o"):
            await stream.send_all(ws.send(TextMessage(part, message_finished=part == "o")))
        assert await _next_message(stream, ws) == "hello"
        for part in (b"\x00", b"\x01"):
            await stream.send_all(ws.send(BytesMessage(part, message_finished=part == b"\x01")))
        assert await _next_message(stream, ws) == b"\x00\x01"
        for part in ("123456", "789012"):  # 12 bytes in all: over max_message_size
            await stream.send_all(ws.send(TextMessage(part, message_finished=part == "789012")))
        assert (await read_close(stream, ws)).code == 1009


class Chatty(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(f"{self.name}: {message}")


async def test_a_failure_serving_one_connection_ends_that_connection_only(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    receive = Peer.receive

    def broken(peer: Peer, data: bytes | None, now: float) -> tuple[list[Any], int]:
        messages, todo = receive(peer, data, now)
        if "boom" in messages:
            raise RuntimeError("a bug in the reader")
        return messages, todo

    monkeypatch.setattr(Peer, "receive", broken)
    server = await start(Chatty, metrics=True)
    async with open_client(f"{server.url}/r") as doomed, open_client(f"{server.url}/r") as other:
        await doomed.send_message("boom")
        close = await expect_close(doomed)
        assert (close.code, close.reason) == (1011, "Internal error")
        await other.send_message("still here")  # the same room goes on serving the others
        with trio.fail_after(5):
            assert await other.get_message() == "r: still here"
    [failed] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert (failed.name, failed.getMessage()) == (
        "roomkit.connection",
        f"/r: {failed.connection} failed; the connection is ended",
    )
    assert failed.exc_info is not None
    assert str(first_leaf(failed.exc_info[1])) == "a bug in the reader"
    _, _, page = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'roomkit_internal_errors_total{room_class="Chatty"} 1.0' in page
    assert b'roomkit_connections_cut_total{reason="internal_error",room_class="Chatty"} 1.0' in page
