"""Alarms and idle sweeps: the pure retry policy, then rooms on a virtual clock.

A test on ``autojump_clock`` runs over ``roomkit.testing``'s in-memory transport, whose
alarms keep Trio's time and retry without jitter: the times it asserts are exact.
"""

from __future__ import annotations

import gc
import itertools
import time
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import roomkit
from roomkit._core.alarms import MAX_RETRIES, after_failure, retry_delay
from roomkit._host import Host
from roomkit._roomid import RoomId
from roomkit._transport import Transport
from roomkit.storage import AlarmWrite, Changes
from roomkit.storage._sqlite import SQLiteCore
from roomkit.testing import open_test_server

from .apps import KV
from .helpers import MemoryKV, Start, open_client
from .test_storage import Client


def test_retry_delays_double_from_two_seconds_with_bounded_jitter() -> None:
    assert [retry_delay(n, 0.0) for n in range(1, 7)] == [2, 4, 8, 16, 32, 64]
    assert retry_delay(1, 0.999) < 2.5
    assert retry_delay(6, 0.999) < 80


def test_a_failed_run_is_retried_after_its_back_off_with_its_number() -> None:
    assert after_failure(0, 1000.0, 0.0) == AlarmWrite(1002.0, 1)
    assert after_failure(2, 1000.0, 0.5) == AlarmWrite(1000.0 + 8 * 1.125, 3)
    assert after_failure(MAX_RETRIES - 1, 0.0, 0.0) == AlarmWrite(64.0, MAX_RETRIES)


def test_an_alarm_is_dropped_once_its_last_retry_failed() -> None:
    assert MAX_RETRIES == 6
    assert after_failure(MAX_RETRIES, 1000.0, 0.0) == AlarmWrite(None)


async def test_alarm_fires_on_time_and_get_alarm_reports_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(KV) as server, server.connect("/a") as client:
        kv = MemoryKV(client)
        t0 = trio.current_time()
        due = await kv("set_alarm", delay=30)
        assert due == await kv("get_alarm")
        assert await client.receive() == {"alarm": 0, "is_retry": False}
        assert trio.current_time() - t0 == 30
        assert await kv("get_alarm") is None  # deleted before the handler ran


async def test_a_new_alarm_replaces_the_old_and_delete_cancels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(KV) as server, server.connect("/a") as client:
        kv = MemoryKV(client)
        t0 = trio.current_time()
        await kv("set_alarm", delay=100)
        await kv("set_alarm", delay=10)
        assert await client.receive() == {"alarm": 0, "is_retry": False}
        assert trio.current_time() - t0 == 10
        await kv("set_alarm", delay=5)
        await kv("delete_alarm")
        await trio.sleep(60)  # virtual: nothing fires
        fired = await kv("get", key="fired")
        assert len(fired) == 1


async def test_an_alarm_moved_later_fires_at_its_new_time_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(KV) as server, server.connect("/a") as client:
        kv = MemoryKV(client)
        t0 = trio.current_time()
        await kv("set_alarm", delay=10)
        await kv("set_alarm", delay=100)  # later: its timer entry is moved, not copied
        assert await client.receive() == {"alarm": 0, "is_retry": False}
        assert trio.current_time() - t0 == 100
        assert len(await kv("get", key="fired")) == 1


async def test_failing_alarm_retries_six_times_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(KV) as server, server.connect("/a") as client:
        kv = MemoryKV(client)
        await kv("put", key="fail_alarm", value=True)
        await kv("set_alarm", delay=1)
        runs = [await client.receive() for _ in range(7)]
        error = "RuntimeError: on_alarm failed on purpose"
        assert runs == [{"error": error, "retry": n} for n in range(7)]
        await trio.sleep(1000)  # no eighth run
        await kv("put", key="fail_alarm", value=False)
        # Each failed run's writes were rolled back: the record shows no run at all.
        assert await kv("get", key="fired") is None
        assert await kv("get_alarm") is None


async def test_retry_times_follow_the_schedule(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    class Flaky(roomkit.Room):
        async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
            await self.storage.set_alarm(delay=0)

        async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
            times.append(trio.current_time())
            if info.retry_count < 3:
                raise RuntimeError("not yet")

        async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
            pass

    async with open_test_server(Flaky) as server:
        async with server.connect("/f"):
            pass  # on_connect set the alarm; it runs with nobody connected
        await trio.sleep(100)  # virtual time: the four runs are over by then
    # The test server retries without jitter (test_retry_delays_... bounds the jitter).
    assert [b - a for a, b in itertools.pairwise(times)] == [2, 4, 8]


async def test_an_alarm_wakes_a_room_nobody_is_in(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(KV) as server:
        async with server.connect("/a") as client:
            kv = MemoryKV(client)
            await kv("put", key="repeat_alarm", value=60)
            await kv("set_alarm", delay=60)
        await trio.testing.wait_all_tasks_blocked()
        assert server._server.room_count == 0
        await trio.sleep(200)  # three runs, each setting the next, with nobody connected
        async with server.connect("/a") as client:
            fired = await MemoryKV(client)("get", key="fired")
    assert [run["at"] - fired[0]["at"] for run in fired] == [0, 60, 120]


async def test_overdue_alarms_fire_when_the_server_starts(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    # As a server that was killed would have left it: an alarm that came due since.
    core = SQLiteCore(db)
    claim = core.claim(RoomId("", "a"), "an earlier server")
    core.commit([(claim, Changes({"x": "1"}, alarm=AlarmWrite(time.time() - 60)))])
    core.close()
    ran = trio.Event()

    class Watched(KV):
        async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
            await super().on_alarm(info)
            ran.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(roomkit.serve, Watched, port=0, storage=db))
        with trio.fail_after(5):
            await ran.wait()  # with nobody connected
        async with open_client(f"{server.url}/a") as ws:
            fired = await Client(ws)("get", key="fired")
            assert [run["retry"] for run in fired] == [0]
            assert await Client(ws)("get_alarm") is None
        nursery.cancel_scope.cancel()
    assert SQLiteCore(db).alarms() == []


class Quiet(roomkit.Room):
    idle_timeout = 30

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        conn.send("ok")


async def test_idle_sweep_closes_only_the_quiet_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_test_server(Quiet) as server,
        server.connect("/r") as quiet,
        server.connect("/r") as chatty,
    ):
        t0 = trio.current_time()

        async def chat_at(*seconds: float) -> None:
            for second in seconds:
                await trio.sleep_until(t0 + second)
                await chatty.send("still here")
                assert await chatty.receive() == "ok"

        await chat_at(10, 20)
        assert await quiet.receive_close() == (1000, "Idle timeout")
        assert trio.current_time() - t0 == pytest.approx(30)
        await chat_at(40, 50)
        assert await chatty.receive_close() == (1000, "Idle timeout")  # quiet since 50
        assert trio.current_time() - t0 == pytest.approx(80)


def test_idle_timeout_must_be_positive() -> None:
    for wrong in (0, -1, True, "10"):
        with pytest.raises(ValueError, match="idle_timeout must be positive"):
            type("Bad", (roomkit.Room,), {"idle_timeout": wrong})


class Reminder(roomkit.Room):
    """docs/storage.md's Reminder, acknowledging each message so the test knows it ran."""

    rate_limit = None

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        await self.storage.put("note", message)
        await self.storage.set_alarm(delay=3600)
        conn.send("noted")


async def test_rearming_an_alarm_per_message_holds_no_more_timers(start: Start) -> None:
    server = await start(Reminder)
    async with open_client(f"{server.url}/r") as ws:
        for _ in range(20):  # 2,000 messages in all
            for i in range(100):
                await ws.send_message(f"note {i}")
            with trio.fail_after(5):
                for _ in range(100):
                    assert await ws.get_message() == "noted"
            # Live: the room's alarm and the connection's ping; at most as many stale.
            assert server.statistics().timers <= 4
    assert server.statistics().timers <= 2


class Churn(roomkit.Room):
    closed = 0
    all_closed = trio.Event()

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Churn.closed += 1
        if Churn.closed == 50:
            Churn.all_closed.set()


async def test_connections_that_close_leave_no_timers_behind(start: Start) -> None:
    Churn.closed, Churn.all_closed = 0, trio.Event()
    server = await start(Churn)
    for i in range(50):
        async with open_client(f"{server.url}/churn-{i % 5}"):
            pass  # each armed its ping timer on opening
    with trio.fail_after(5):
        await Churn.all_closed.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert (server.statistics().timers, server.room_count) == (0, 0)
    gc.collect()
    left = [
        o
        for o in gc.get_objects()
        if isinstance(o, roomkit.Connection) and o.request.room.startswith("churn-")
    ]
    assert left == []  # nothing keeps a closed connection alive


class Pinged(roomkit.Room):
    ping_interval = 20

    async def on_message(self, conn: roomkit.Connection, message: object) -> None:
        conn.send(f"{self.name}: {message}")


async def test_a_failing_timer_ends_what_it_was_about_only(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat = Transport.heartbeat

    def broken(conn: Transport) -> None:
        if conn.handle.request.room == "doomed":
            raise RuntimeError("a bug in the ping")
        heartbeat(conn)

    monkeypatch.setattr(Transport, "heartbeat", broken)
    async with (
        open_test_server(Pinged) as server,
        server.connect("/doomed") as doomed,
        server.connect("/r") as client,
    ):
        t0 = trio.current_time()
        assert await doomed.receive_close() == (1011, "Internal error")
        assert trio.current_time() - t0 == 20
        await trio.sleep(60)  # virtual: three more pings, each answered by the client
        await client.send("still here")
        assert await client.receive() == "r: still here"
        host = server._hooks
        assert isinstance(host, Host)
        assert host.metrics.rooms["Pinged"].internal_errors == 1
    [failed] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert (failed.name, failed.getMessage()) == (
        "roomkit.server",
        "room /doomed: ping timer failed",
    )
    assert failed.exc_info is not None and str(failed.exc_info[1]) == "a bug in the ping"
