"""The room actor: a room's own nursery, and what keeps a room up.

Over roomkit's test server (in memory), under ``autojump_clock``; the room host is
reached through the test server's hooks, as roomkit.testing itself does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
from roomkit._actor import RoomActor
from roomkit._events import Check, Closed
from roomkit._host import Host
from roomkit._roomid import RoomId
from roomkit.testing import TestServer, open_test_server


def host_of(server: TestServer) -> Host:
    host = server._hooks
    assert isinstance(host, Host)
    return host


#: The functions a room's tasks run.
ROOM_TASKS = ("RoomActor.run", "RoomActor._event_loop", "Transport.run")


def room_tasks() -> Counter[tuple[str, str]]:
    """How many tasks run each of a room's functions, by the function of the task that
    owns their nursery."""

    def short(task: trio.lowlevel.Task) -> str:
        return ".".join(task.name.split(".")[-2:])

    counts: Counter[tuple[str, str]] = Counter()
    tasks = [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        if short(task) in ROOM_TASKS and task.parent_nursery is not None:
            counts[short(task), short(task.parent_nursery.parent_task)] += 1
        tasks += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return counts


class Watched(roomkit.Room):
    hibernate_after = None
    closed: ClassVar[list[str]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(f"{self.name}: {message}")

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Watched.closed.append(self.name)


async def test_cancelling_a_room_cancels_its_tasks_and_no_other_rooms(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with open_test_server(Watched) as server:
        host = host_of(server)
        async with server.connect("/doomed") as doomed, server.connect("/spared") as spared:
            for client, name in ((doomed, "doomed"), (spared, "spared")):
                await client.send("hi")
                assert await client.receive() == f"{name}: hi"
            per_room = Counter(  # each room's own task, and the two in its nursery
                {
                    ("RoomActor.run", "Host._run_rooms"): 1,
                    ("RoomActor._event_loop", "RoomActor.run"): 1,
                    ("Transport.run", "RoomActor.run"): 1,
                }
            )
            assert room_tasks() == per_room + per_room
            assert host.cancel_room(RoomId("", "doomed"))
            assert await doomed.receive_close() == (1006, "")  # dropped, without a close
            await trio.testing.wait_all_tasks_blocked()
            assert room_tasks() == per_room  # the other room's, untouched
            statistics = server._server.statistics()
            assert (statistics.rooms, statistics.connections) == (1, 1)
            assert server.room("doomed") is None
            await spared.send("still here")
            assert await spared.receive() == "spared: still here"
            async with server.connect("/doomed") as again:  # a new room of that name
                await again.send("back")
                assert await again.receive() == "doomed: back"
            assert Watched.closed == ["doomed"]  # the new room's on_close, not the old one's
            assert not host.cancel_room(RoomId("", "nowhere"))


class Lingering(roomkit.Room):
    """Its last connection's on_close waits for the test, so that an alarm can be
    posted to the room while it has no connection left."""

    hibernate_after = None
    release: ClassVar[trio.Event]
    ran: ClassVar[list[str]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.set_alarm(delay=3600)
        conn.send("set")

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        await Lingering.release.wait()

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        Lingering.ran.append(self.name)


async def test_an_alarm_on_its_way_keeps_a_room_with_nobody_left_up(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The alarm's delivery and the room's loop become runnable together, in an order
    # Trio picks at random; sixteen rooms make sure the loop goes first in some.
    async with open_test_server(Lingering) as server:
        host = host_of(server)
        for i in range(16):
            name = f"r{i}"
            Lingering.release = trio.Event()
            async with server.connect(f"/{name}") as client:
                await client.send("set")
                assert await client.receive() == "set"
            await trio.testing.wait_all_tasks_blocked()  # on_close of the last one waits
            Lingering.release.set()  # the room would end once on_close returns...
            await host.run_alarm_now(RoomId("", name))  # ...but an alarm is on its way
            assert Lingering.ran == [f"r{n}" for n in range(i + 1)]


class Drowsy(roomkit.Room):
    hibernate_after = 10

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def test_a_rest_timer_that_meets_an_event_on_its_way_does_not_put_the_room_to_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The event reaches the waiting loop first (it is rescheduled, not yet run), then
    # the rest timer comes due in the same batch: the loop takes the event, and the
    # Rest sent behind it is stale, so the room stays awake.
    async with open_test_server(Drowsy) as server, server.connect("/r") as client:
        await client.send("hi")
        assert await client.receive() == "hi"
        await trio.testing.wait_all_tasks_blocked()  # the loop waits for its next event
        actor = host_of(server)._rooms[RoomId("", "r")]
        assert actor._send is not None
        actor._send.send_nowait(Check())
        autojump_clock.jump(10)
        actor.rest_due()  # what the server's timer calls, due now
        await trio.testing.wait_all_tasks_blocked()
        assert actor.awake
        await trio.sleep(9.9)
        assert actor.awake  # 9.9 s after the event it took
        await trio.sleep(0.2)
        assert not actor.awake  # hibernated 10 s after it


async def test_a_stale_rest_behind_the_last_close_does_not_keep_an_empty_room_up(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def closed(self: RoomActor, conn: Any) -> None:
        # Closed is handed to the waiting loop (rescheduled, not yet run), and the rest
        # timer runs, due, before the loop does: the Rest queued behind it is stale.
        self._wake().send_nowait(Closed(conn))
        autojump_clock.jump(10)
        self.rest_due()
        await trio.lowlevel.checkpoint()

    async with open_test_server(Drowsy) as server:
        host = host_of(server)
        async with server.connect("/r") as client:
            await client.send("hi")
            assert await client.receive() == "hi"
            await trio.testing.wait_all_tasks_blocked()  # the loop waits
            monkeypatch.setattr(RoomActor, "closed", closed)
        await trio.sleep(0.5)
        assert RoomId("", "r") not in host._rooms  # it ended once its last close was handled
