"""Turns run in the reader (``RoomActor.messages``): the guarantees of the actor's own.

When a room's loop waits with nothing queued, a reader runs its read's messages' turns
itself. Over roomkit's test server (in memory), under ``autojump_clock``, so that the
virtual times asserted are exact; the raw socket read over a real socket.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from wsproto.events import TextMessage

import roomkit
from roomkit._roomid import RoomId
from roomkit.testing import open_test_server

from .helpers import Start, memory_handshake, raw_handshake
from .test_actor import host_of


def in_reader() -> bool:
    """Whether the running turn runs in a connection's reader, not the room's loop."""
    return trio.lowlevel.current_task().name.endswith("Transport.run")


class Ordered(roomkit.Room):
    """Logs each turn; "slow" awaits storage and the clock halfway through."""

    hibernate_after = None
    ping_interval = None
    log: ClassVar[list[str]] = []
    inline: ClassVar[list[bool]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Ordered.inline.append(in_reader())
        Ordered.log.append(f"{message}:start")
        if message.startswith("slow"):
            await self.storage.put("n", 1 + (await self.storage.get("n") or 0))
            await trio.sleep(5)
        Ordered.log.append(f"{message}:end")
        self.broadcast(f"{message} {await self.storage.get('n')}")


async def test_other_connections_queue_behind_an_inline_turn_and_run_after_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    Ordered.log, Ordered.inline = [], []
    server_ = open_test_server(Ordered)
    async with server_ as server, server.connect("/r") as a, server.connect("/r") as b:
        await a.send("slow-a1")
        await trio.testing.wait_all_tasks_blocked()  # its turn awaits the clock
        await b.send("b1")
        await trio.testing.wait_all_tasks_blocked()
        await a.send("a2")  # read once a's stretch has ended: behind b1
        for client in (a, b):
            assert [await client.receive() for _ in range(3)] == ["slow-a1 1", "b1 1", "a2 1"]
    turns = ["slow-a1", "b1", "a2"]
    assert Ordered.log == [f"{turn}:{at}" for turn in turns for at in ("start", "end")]
    assert Ordered.inline[0]  # the first ran in a's reader, its storage and gate with it


class Stuck(roomkit.Room):
    """Its turn awaits the clock for 1000 s: what ends it early?"""

    hibernate_after = None
    ping_interval = None
    log: ClassVar[list[str]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Stuck.log.append(f"start {in_reader()}")
        await trio.sleep(1000)
        Stuck.log.append("end")

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Stuck.log.append("closed")


async def test_cancelling_the_room_cancels_an_inline_turn(autojump_clock: trio.abc.Clock) -> None:
    Stuck.log = []
    async with open_test_server(Stuck) as server, server.connect("/doomed") as client:
        await client.send("wait")
        await trio.testing.wait_all_tasks_blocked()
        assert host_of(server).cancel_room(RoomId("", "doomed"))
        assert await client.receive_close() == (1006, "")
        await trio.sleep(2000)
    assert Stuck.log == ["start True"]  # cancelled mid-turn, and no on_close


async def test_a_shutdown_past_its_drain_timeout_cancels_an_inline_turn(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The rooms' scope is cancelled from above: only the loop's wait sees it.
    Stuck.log = []
    async with open_test_server(Stuck, drain_timeout=3) as server:
        stream, ws = await memory_handshake(server, "/r")
        await stream.send_all(ws.send(TextMessage("wait")))
        await trio.testing.wait_all_tasks_blocked()
        began = trio.current_time()
    assert trio.current_time() - began < 10  # not the turn's 1000 s
    assert Stuck.log == ["start True"]
    await stream.aclose()


class Cut(roomkit.Room):
    """Pings every second, which the raw client never answers; "slow" outlasts that."""

    hibernate_after = None
    ping_interval = 1
    ping_timeout = 1
    log: ClassVar[list[tuple[str, float]]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Cut.log.append((f"{message} {in_reader()}", trio.current_time()))
        await trio.sleep(10)
        await self.storage.put("done", message)
        self.broadcast(f"done {message}")

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Cut.log.append((f"closed {code}", trio.current_time()))


async def test_a_ping_timeout_does_not_cut_its_connections_inline_turn_midway(
    autojump_clock: trio.abc.Clock,
) -> None:
    Cut.log = []
    async with open_test_server(Cut) as server, server.connect("/r") as watcher:
        stream, ws = await memory_handshake(server, "/r")
        start = trio.current_time()
        await stream.send_all(ws.send(TextMessage("slow")))
        assert await watcher.receive() == "done slow"  # the turn ran to its end, and
        assert trio.current_time() - start == 10  # committed (its send waited for that)
        await trio.testing.wait_all_tasks_blocked()
        # ...while its connection was dropped at 2 s (no pong): on_close after the turn
        assert [what for what, _ in Cut.log] == ["slow True", "closed 1006"]
        assert Cut.log[1][1] - start == 10
        await stream.aclose()


class Sleepy(roomkit.Room):
    hibernate_after = 10
    ping_interval = None
    idle_timeout = 30
    starts = 0

    async def on_start(self) -> None:
        Sleepy.starts += 1

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(f"{message} {in_reader()}")


async def test_inline_turns_put_hibernation_off_and_the_idle_sweep_sees_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    Sleepy.starts = 0
    server_ = open_test_server(Sleepy)
    async with server_ as server, server.connect("/r") as talker, server.connect("/r") as silent:
        start = trio.current_time()
        for at in (6, 12, 18, 24, 30, 36):  # the loop itself last ran at 0
            await trio.sleep_until(start + at)
            await talker.send("hi")
            assert await talker.receive() == "hi True"
        assert Sleepy.starts == 1  # never hibernated in between
        # The silent one, last seen at 0, was swept at 30 (idle_timeout)...
        assert await silent.receive_close() == (1000, "Idle timeout")
        await trio.sleep_until(start + 36 + 9.5)
        assert server.room("r") is not None
        await trio.sleep_until(start + 36 + 10.5)  # ...and the room sleeps 10 s after
        assert server.room("r") is None  # the last inline turn
        await talker.send("again")
        assert await talker.receive() == "again False"  # woke: the loop's turn
        assert Sleepy.starts == 2


class Failing(roomkit.Room):
    hibernate_after = None
    ping_interval = None
    errors: ClassVar[list[str]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "boom":
            await self.storage.put("lost", 1)
            conn.send("never")
            raise ValueError(f"boom {in_reader()}")
        if message == "double":
            raise KeyError("double")
        conn.send(f"ok {await self.storage.get('lost')}")

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Failing.errors.append(str(error))
        if isinstance(error, KeyError):
            raise error
        assert conn is not None
        conn.send(f"error {error}")


async def test_an_inline_hook_that_raises_goes_to_on_error_and_its_turn_is_undone(
    autojump_clock: trio.abc.Clock,
) -> None:
    Failing.errors = []
    async with open_test_server(Failing) as server, server.connect("/r") as client:
        await client.send("boom")
        assert await client.receive() == "error boom True"  # not "never"
        await client.send("fine")
        assert await client.receive() == "ok None"  # its write was rolled back
        await client.send("double")  # on_error raises too: 1011
        assert await client.receive_close() == (1011, "Internal error")
    assert Failing.errors == ["boom True", "'double'"]


class Echo(roomkit.Room):
    ping_interval = None
    closed: ClassVar[list[tuple[int, bool]]] = []
    done: ClassVar[trio.Event]

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Echo.closed.append((code, clean))
        Echo.done.set()


async def test_a_socket_read_straight_ends_as_receive_some_on_a_reset(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    Echo.closed, Echo.done = [], trio.Event()
    server = await start(Echo)
    stream, ws = await raw_handshake(server.port, "/r")
    for i in range(100):  # more reads than READS_PER_CHECKPOINT, each echoed
        await stream.send_all(ws.send(TextMessage(f"m{i}")))
        got = b""
        with trio.fail_after(5):
            while not got.endswith(f"m{i}".encode()):
                got += await stream.receive_some()
    linger = struct.pack("ii", 1, 0)  # close with a reset (RST), not a FIN
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    await stream.aclose()
    with trio.fail_after(5):
        await Echo.done.wait()
    assert Echo.closed == [(1006, False)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no failure of ours
