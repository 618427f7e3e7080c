"""Hibernation, auto-responses and heartbeats, on a virtual clock (``autojump_clock``).

Time that passes is a MockClock's, over ``roomkit.testing``'s in-memory transport, so
that nothing is in flight when the clock jumps and the times asserted are exact. The
test of a client's own pings uses trio-websocket over a socket, and the one of the
auto-response's timestamp the ``websockets`` package's client, on real time.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import time
import weakref
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from websockets.sync.client import connect
from wsproto.events import CloseConnection

import roomkit
from roomkit.testing import open_test_server

from .helpers import Start, memory_handshake, open_client


class Sleepy(roomkit.Room):
    """Remembers things in memory and in attachments, and reports what it still knows."""

    hibernate_after = 10
    starts = 0
    instances: ClassVar[list[weakref.ref[Sleepy]]] = []
    messages = 0

    async def on_start(self) -> None:
        Sleepy.starts += 1
        Sleepy.instances.append(weakref.ref(self))

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user = request.query["user"]
        conn.tags = [user, "everyone"]
        conn.attachment = {"user": user}

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Sleepy.messages += 1
        if message == "remember":
            self.memory = "in memory"
        known = {
            "starts": Sleepy.starts,
            "memory": getattr(self, "memory", None),
            "connections": [[c.attachment["user"], list(c.tags)] for c in self.connections()],
        }
        self.broadcast(json.dumps(known))


@pytest.fixture(autouse=True)
def _reset() -> None:
    Sleepy.starts = Sleepy.messages = 0
    Sleepy.instances = []


async def test_room_hibernates_and_wakes_with_its_sockets_intact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_test_server(Sleepy) as server,
        server.connect("/r?user=ann") as ann,
        server.connect("/r?user=bob") as bob,
    ):
        await ann.send("remember")
        awake = await ann.receive()
        assert awake["starts"] == 1 and awake["memory"] == "in memory"
        await bob.receive()

        await trio.sleep(11)  # no event for hibernate_after: the instance goes
        gc.collect()
        assert Sleepy.instances[0]() is None  # nothing holds the old Room any more
        assert server._server.room_count == 1  # the room, its sockets and tags remain

        await bob.send("what do you know?")
        woken = await bob.receive()
        assert woken == {
            "starts": 2,  # a fresh instance, started before it got the message
            "memory": None,
            "connections": [["ann", ["ann", "everyone"]], ["bob", ["bob", "everyone"]]],
        }
        assert await ann.receive() == woken  # ann's socket was kept open


async def test_each_event_puts_hibernation_off_by_the_whole_patience(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Sleepy) as server, server.connect("/r?user=ann") as ann:
        for _ in range(4):  # 9 s apart: 36 s awake, past the first hibernate_after
            await ann.send("x")
            await ann.receive()
            await trio.sleep(9)
        assert Sleepy.starts == 1
        await ann.send("x")
        await ann.receive()
        await trio.sleep(9.9)
        gc.collect()
        assert Sleepy.instances[0]() is not None  # 9.9 s since its last event
        await trio.sleep(0.2)
        gc.collect()
        assert Sleepy.instances[0]() is None  # 10.1 s: it has hibernated


async def test_an_event_met_by_the_hibernation_deadline_is_not_followed_by_a_sleep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The message and the room's hibernation come due at the same instant: whichever
    # the room takes first, it never hibernates just after handling the message.
    async with open_test_server(Sleepy) as server, server.connect("/r?user=ann") as ann:
        for _ in range(12):
            await ann.send("x")
            await ann.receive()
            gc.collect()
            assert Sleepy.instances[-1]() is not None  # awake, its last event just handled
            await trio.sleep(10)  # exactly hibernate_after since the last event


class AlarmSoon(roomkit.Room):
    rang = 0

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.set_alarm(delay=5)
        conn.send(message)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        AlarmSoon.rang += 1


async def test_hibernate_as_an_alarm_comes_due_lets_the_alarm_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # hibernate() while the alarm's event is on its way: the loop must let it arrive
    # (a loop that rested without a checkpoint spun for ever). Trio runs a batch in order
    # or reversed, so each try meets the race half the time.
    faulthandler.dump_traceback_later(60, exit=True)  # a spinning loop blocks fail_after
    AlarmSoon.rang = 0
    try:
        async with open_test_server(AlarmSoon) as server, server.connect("/r") as client:
            for _ in range(20):
                await client.send("x")
                assert await client.receive() == "x"
                await trio.sleep(5)  # the alarm is due now
                with trio.fail_after(5):
                    await server.hibernate("r")
            await trio.sleep(5)  # the last alarm is due too
            assert AlarmSoon.rang == 20  # each alarm arrived, before or after the room slept
    finally:
        faulthandler.cancel_dump_traceback_later()


async def test_pings_never_wake_a_hibernating_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Sleepy) as server, server.connect("/r?user=ann") as ann:
        await ann.send("hi")
        await ann.receive()
        await trio.sleep(95)  # four pings answered, room hibernated all along
        assert Sleepy.starts == 1 and Sleepy.instances[0]() is None
        await ann.send("hi")
        assert (await ann.receive())["starts"] == 2


class Auto(Sleepy):
    auto_response = ("ping", "pong")
    idle_timeout = 30


class AutoBinary(Sleepy):
    auto_response = (b"\x00", b"\x01\x02")


async def test_auto_response_answers_without_waking_the_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_test_server({"/text": Auto, "/binary": AutoBinary}) as server,
        server.connect("/text/r?user=ann") as text,
        server.connect("/binary/r?user=bob") as binary,
    ):
        await trio.sleep(15)  # both rooms hibernate
        for _ in range(6):  # 60 s of auto-responses: they keep the connection from idling
            await text.send("ping")
            await binary.send(b"\x00")
            with trio.fail_after(1):
                assert await text.receive_text() == "pong"
                assert await binary.receive_bytes() == b"\x01\x02"
            await trio.sleep(9)
        assert Sleepy.messages == 0 and Sleepy.starts == 2  # one start per room, no wake
        await binary.send("ping")  # not the binary pair: reaches the room
        assert (await binary.receive())["starts"] == 3
        assert Sleepy.messages == 1


class Stamped(Sleepy):
    """Auto-answers "ping"; any other message is answered with when that last happened
    and the room's time now."""

    auto_response = ("ping", "pong")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Sleepy.messages += 1
        conn.send(json.dumps([conn.auto_response_timestamp, self.time()]))


async def test_the_auto_response_timestamp_survives_hibernation_without_a_wake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Stamped) as server, server.connect("/r?user=ann") as ann:
        await ann.send("when?")
        never, start = await ann.receive_json()
        assert never is None  # no auto-response yet
        await trio.sleep(15)
        assert server.room("r") is None  # hibernated
        await ann.send("ping")
        assert await ann.receive_text() == "pong"
        await trio.sleep(20)
        assert Sleepy.starts == 1  # the auto-response did not wake the room
        await ann.send("when?")
        stamp, now = await ann.receive_json()
        assert Sleepy.starts == 2  # a new instance reads it
        assert stamp - start == pytest.approx(15, abs=1e-6)
        assert now - stamp == pytest.approx(20, abs=1e-6)
        await ann.send("ping")
        assert await ann.receive_text() == "pong"
        await ann.send("when?")
        assert (await ann.receive_json())[0] == pytest.approx(now, abs=1e-6)  # the latest


async def test_the_auto_response_timestamp_is_the_wall_time_it_was_sent(start: Start) -> None:
    server = await start(Stamped)

    def talk() -> tuple[float, float, list[float]]:
        with connect(f"{server.url}/r?user=ann") as ws:
            before = time.time()
            ws.send("ping")
            assert ws.recv(timeout=5) == "pong"
            after = time.time()
            ws.send("when?")
            return before, after, json.loads(ws.recv(timeout=5))

    before, after, (stamp, _) = await trio.to_thread.run_sync(talk)
    assert before <= stamp <= after


class Alarmed(Sleepy):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        await super().on_connect(conn, request)
        await self.storage.set_alarm(delay=60)

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        self.broadcast(f"alarm, start {Sleepy.starts}", tag="everyone")


async def test_an_alarm_wakes_a_hibernating_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Alarmed) as server, server.connect("/r?user=ann") as ann:
        await trio.sleep(30)
        assert Sleepy.starts == 1 and Sleepy.instances[0]() is None
        with trio.fail_after(40):
            assert await ann.receive_text() == "alarm, start 2"


class Heartbeat(roomkit.Room):
    ping_interval = 20
    ping_timeout = 10
    closes: ClassVar[list[tuple[int, bool, float]]] = []
    closed = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Heartbeat.closes.append((code, clean, trio.current_time()))
        Heartbeat.closed.set()


async def test_a_peer_that_never_answers_pings_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Heartbeat.closes, Heartbeat.closed = [], trio.Event()
    async with open_test_server(Heartbeat) as server, server.connect("/r") as alive:
        stream, ws = await memory_handshake(server, "/r")
        t0 = trio.current_time()
        async with stream:
            # This peer never reads, so never answers a ping.
            with trio.fail_after(100):
                await Heartbeat.closed.wait()
            code, clean, at = Heartbeat.closes[0]
            assert (code, clean) == (1006, False)
            assert at - t0 == 30  # ping at 20 s, no pong by 30 s
            data = b""
            while chunk := await stream.receive_some():
                data += chunk  # the ping, then the end: no close frame was waited for
            ws.receive_data(data)
            assert not any(isinstance(e, CloseConnection) for e in ws.events())
        await trio.sleep(47)  # the test client answers every ping
        await alive.send("still here")
        with trio.fail_after(1):
            assert await alive.receive_text() == "still here"
    assert len(Heartbeat.closes) == 2


async def test_pong_for_an_unsolicited_ping_and_a_client_ping_answered(start: Start) -> None:
    server = await start(Heartbeat)
    async with open_client(f"{server.url}/r") as ws:
        await ws.pong(b"unsolicited")  # RFC 6455 5.5.3: a pong nobody asked for is ignored
        with trio.fail_after(5):
            await ws.ping(b"client ping")  # answered by the connection, not the room
        await ws.send_message("x")
        assert await ws.get_message() == "x"


@pytest.mark.parametrize(
    ("attr", "value", "error"),
    [
        ("hibernate_after", 0, ValueError),
        ("ping_interval", -1, ValueError),
        ("ping_timeout", None, ValueError),
        ("auto_response", ("ping",), TypeError),
        ("auto_response", ("ping", 5), TypeError),
    ],
)
def test_bad_configuration_is_refused(attr: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=attr):
        type("Bad", (roomkit.Room,), {attr: value})
