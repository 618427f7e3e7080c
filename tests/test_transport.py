"""A connection's tasks (``_transport.py``): its reader is its only task until a write
would block; a writer task, when one is needed, runs in the room's nursery and ends
with the connection.

Real sockets bind 127.0.0.1:0 (the straight writes need a socket's descriptor); the
test server in memory, under ``autojump_clock``, has none, so that every write there
goes through the writer task.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

import roomkit
import roomkit._transport as transport
from roomkit.testing import open_test_server

from .helpers import Start, open_client, raw_handshake, read_close


class _Recorded(roomkit.Room):
    """A room that records how its connections closed (each subclass its own)."""

    hibernate_after = None
    ping_interval = None
    closes: ClassVar[list[tuple[int, bool]]]
    closed: ClassVar[trio.Event]

    @classmethod
    def reset(cls) -> None:
        cls.closes, cls.closed = [], trio.Event()

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        type(self).closes.append((code, clean))
        type(self).closed.set()


class Echo(_Recorded):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


class _Spawned(trio.abc.Instrument):
    """The transport's tasks spawned while it is installed, by function."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if ".Transport." in task.name:
            self.names.append(task.name.rsplit(".", 2)[-2] + "." + task.name.rsplit(".", 1)[-1])


@contextmanager
def spawned() -> Iterator[list[str]]:
    instrument = _Spawned()
    trio.lowlevel.add_instrument(instrument)
    try:
        yield instrument.names
    finally:
        trio.lowlevel.remove_instrument(instrument)


def _tasks_of(name: str) -> list[trio.lowlevel.Task]:
    found, tasks = [], [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        if task.name.endswith(name):
            found.append(task)
        tasks += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return found


async def test_a_connection_that_never_blocks_a_write_is_one_task_through_its_close(
    start: Start,
) -> None:
    Echo.reset()
    server = await start(Echo)
    with spawned() as names:
        async with open_client(f"{server.url}/r") as ws:
            await ws.send_message("hi")
            with trio.fail_after(5):
                assert await ws.get_message() == "hi"
        with trio.fail_after(5):
            await Echo.closed.wait()
    assert ws.closed is not None and ws.closed.code == 1000  # our answer to its close came
    assert Echo.closes == [(1000, True)]
    assert names == ["Transport.run"]  # the reader answered the close itself


async def test_the_writer_runs_in_the_rooms_nursery_and_the_connection_has_none(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(Echo) as server, server.connect("/r") as client:
        await client.send("hi")  # in memory, the echo goes through the writer task
        assert await client.receive() == "hi"
        (reader,) = _tasks_of("Transport.run")
        (writer,) = _tasks_of("Transport._write_task")
        assert reader.child_nurseries == []
        for task in (reader, writer):
            assert task.parent_nursery is not None
            assert task.parent_nursery.parent_task.name.endswith("RoomActor.run")


class Firehose(_Recorded):
    """Sends more than its peer reads: the writer blocks, then the peer is cut off."""

    max_send_queue = 1 << 20  # a turn's 128 KiB pass the gate, and fill the socket

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        for _ in range(8):
            conn.send("x" * 16 * 1024)


async def test_a_blocked_writer_ends_with_its_connection(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that stops reading is cut off as a slow consumer; it does not read the
    close either, so after CLOSE_TIMEOUT the connection is dropped: its writer, stuck
    in a write, ends with it, and the room hears the close."""
    monkeypatch.setattr(transport, "CLOSE_TIMEOUT", 0.5)
    Firehose.reset()
    server = await start(Firehose)
    slow_socket = socket.socket()
    slow_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_socket.connect(("127.0.0.1", server.port))
    slow = trio.SocketStream(trio.socket.from_stdlib_socket(slow_socket))
    with spawned() as names:
        async with slow:
            await slow.send_all(
                b"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                + b"\x81\x84\x00\x00\x00\x00more"
                * 40  # masked text frames, never read back
            )
            with trio.fail_after(5):  # CLOSE_TIMEOUT is 0.5 s here
                await Firehose.closed.wait()  # after the connection's task closed the socket
            await trio.testing.wait_all_tasks_blocked()
            assert _tasks_of("Transport._write_task") == _tasks_of("Transport.run") == []
    assert "Transport._write_task" in names  # a write blocked: the writer took it over
    assert Firehose.closes == [(1006, False)]


class Closer(_Recorded):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.close(1000, "bye")


@pytest.mark.parametrize("taken", ["whole", "none", "part"])
async def test_a_peer_that_never_answers_a_rooms_close_is_dropped_after_close_timeout(
    monkeypatch: pytest.MonkeyPatch, taken: str
) -> None:
    # However much of the close frame the socket takes at once (all of it; none, as
    # when its buffer is full; a part), the peer's answer is awaited CLOSE_TIMEOUT.
    monkeypatch.setattr(transport, "CLOSE_TIMEOUT", 0.5)
    if taken != "whole":
        real = transport.Transport._write_some

        def write_some(self: transport.Transport, fd: int, data: bytes) -> int:
            if data[:1] == b"\x88" and len(data) > 1:  # the close frame's first write
                return 0 if taken == "none" else real(self, fd, data[:1])
            return real(self, fd, data)

        monkeypatch.setattr(transport.Transport, "_write_some", write_some)
    Closer.reset()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(roomkit.serve, Closer, port=0))
        stream, ws = await raw_handshake(server.port, "/r")
        async with stream:
            await stream.send_all(ws.send(TextMessage("x")))
            assert (await read_close(stream, ws)).code == 1000  # and never answered
            closed_at = trio.current_time()
            with trio.fail_after(3):
                await Closer.closed.wait()
            assert trio.current_time() - closed_at >= 0.45  # its answer was awaited
        nursery.cancel_scope.cancel()
    assert Closer.closes == [(1006, False)]
