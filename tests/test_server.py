"""``serve`` as a whole: shutdown, restarts and other clients."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from websockets.sync.client import connect

import roomkit
from roomkit._roomid import RoomId
from roomkit.storage import Changes, Claim, KeyRange, SQLiteStore

from .helpers import Start, expect_close, open_client, read_until_close

ROOMKIT = (sys.executable, "-m", "roomkit")


class Goodbye(roomkit.Room):
    closes: ClassVar[list[tuple[str, int, bool]]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Goodbye.closes.append((self.name, code, clean))


async def test_shutdown_closes_every_socket_with_1001_and_runs_on_close(
    nursery: trio.Nursery,
) -> None:
    Goodbye.closes = []
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        with scope:
            await roomkit.serve(Goodbye, port=0, task_status=task_status)
        done.set()

    server: roomkit.Server = await nursery.start(run)
    async with open_client(f"{server.url}/a") as a, open_client(f"{server.url}/b") as b:
        await a.send_message("queued before shutdown")
        with trio.fail_after(5):
            assert await a.get_message() == "queued before shutdown"
        scope.cancel()
        for ws in (a, b):
            reason = await expect_close(ws)
            assert (reason.code, reason.reason) == (1001, "Going away")
        with trio.fail_after(5):
            await done.wait()
    assert sorted(Goodbye.closes) == [("a", 1001, True), ("b", 1001, True)]
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


@pytest.mark.parametrize(
    ("restart", "code", "reason"), [(False, 1001, "Going away"), (True, 1012, "Service restart")]
)
async def test_server_shutdown_closes_every_socket_then_serve_returns(
    nursery: trio.Nursery, restart: bool, code: int, reason: str
) -> None:
    Goodbye.closes = []
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        await roomkit.serve(Goodbye, port=0, task_status=task_status)
        returned.set()  # returned, not cancelled

    server: roomkit.Server = await nursery.start(run)
    async with open_client(f"{server.url}/a") as a:
        server.shutdown(restart=restart)
        server.shutdown(restart=not restart)  # too late: changes nothing
        close = await expect_close(a)
        assert (close.code, close.reason) == (code, reason)
        with trio.fail_after(5):
            await returned.wait()
    assert Goodbye.closes == [("a", code, True)]
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


class Lingering(roomkit.Room):
    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        await trio.sleep(1000)


async def test_drain_timeout_bounds_a_shutdown_held_up_by_on_close(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        await roomkit.serve(Lingering, port=0, drain_timeout=3, task_status=task_status)
        returned.set()

    server: roomkit.Server = await nursery.start(run)
    async with open_client(f"{server.url}/a") as a:
        began = trio.current_time()
        server.shutdown()
        assert (await expect_close(a)).code == 1001
    with trio.fail_after(10):
        await returned.wait()
    assert trio.current_time() - began == 3


class SlowStore(SQLiteStore):
    """Takes 3 s per commit once ``slow`` is set: a flush that outlives the drain."""

    slow = False

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        if self.slow:
            await trio.sleep(3)
        return await super().commit(batch)


class Alarmed(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.set_alarm(delay=1)
        conn.send("set")

    async def on_alarm(self, info: roomkit.AlarmInfo) -> None:
        raise AssertionError("no alarm runs while the server shuts down")


async def test_an_alarm_due_during_shutdown_waits_in_storage_for_the_next_start(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = await SlowStore.open(":memory:")
    returned = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        await roomkit.serve(
            Alarmed, port=0, storage=store, drain_timeout=0.5, task_status=task_status
        )
        returned.set()  # no exception: serve returns

    server: roomkit.Server = await nursery.start(run)
    async with open_client(f"{server.url}/a") as a:
        await a.send_message("x")
        assert await a.get_message() == "set"
        store.slow = True
        await a.send_message("y")  # its commit flushes past the alarm's due time
        server.shutdown()
        assert (await expect_close(a)).code == 1001
    with trio.fail_after(10):
        await returned.wait()
    assert [room for room, _, _ in await store.alarms()] == [RoomId("", "a")]


def test_serve_refuses_a_negative_drain_timeout() -> None:
    async def main() -> None:
        await roomkit.serve(Goodbye, port=0, drain_timeout=-1)

    with pytest.raises(ValueError, match="drain_timeout"):
        trio.run(main)


async def test_websockets_package_client(start: Start) -> None:
    server = await start(Goodbye)

    def talk() -> list[Any]:
        with connect(f"{server.url}/sync") as ws:
            ws.send("text")
            ws.send(b"\x01\x02")
            return [ws.recv(timeout=5), ws.recv(timeout=5)]

    assert await trio.to_thread.run_sync(talk) == ["text", b"\x01\x02"]


def test_serve_refuses_a_handshake_timeout_that_is_no_time() -> None:
    async def main() -> None:
        await roomkit.serve(Goodbye, port=0, handshake_timeout=0)

    with pytest.raises(ValueError, match="handshake_timeout must be positive seconds, not 0"):
        trio.run(main)


def test_serve_refuses_an_unknown_option_as_python_would() -> None:
    async def main() -> None:
        await roomkit.serve(Goodbye, prot=0)  # type: ignore[call-arg]

    with pytest.raises(TypeError, match="serve\\(\\) got an unexpected keyword argument 'prot'"):
        trio.run(main)


def test_serve_refuses_routes_that_are_not_rooms() -> None:
    async def main() -> None:
        await roomkit.serve({"/x": object})  # type: ignore[dict-item]

    with pytest.raises(TypeError, match="must be a Room subclass"):
        trio.run(main)


def test_url_brackets_ipv6() -> None:
    stats = roomkit.ServerStatistics(0, 0, 0, 0, 0)
    rooms = roomkit.Rooms(None)  # type: ignore[arg-type]  # no call is made: only the url is read
    server = roomkit.Server("::1", 80, statistics=lambda: stats, rooms=rooms)
    assert server.url == "ws://[::1]:80"


async def test_statistics_count_rooms_connections_and_timers(start: Start) -> None:
    server = await start(Goodbye)
    assert server.statistics() == roomkit.ServerStatistics(
        rooms=0, connections=0, send_queue_bytes=0, receive_buffer_bytes=0, timers=0
    )
    async with open_client(f"{server.url}/a") as a, open_client(f"{server.url}/b") as b:
        await a.send_message("x")
        await b.send_message("y")
        assert [await a.get_message(), await b.get_message()] == ["x", "y"]
        stats = server.statistics()
        assert (stats.rooms, stats.connections, stats.send_queue_bytes) == (2, 2, 0)
        assert stats.timers == 4  # a ping timer each, and each room's rest timer


class Ledger(roomkit.Room):
    """Stores every message under its own key, then acknowledges it."""

    rate_limit = None

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        await self.storage.put(message, True)
        conn.send(f"ack {message}")


async def test_a_restart_acknowledges_every_write_it_committed(tmp_path: Any) -> None:
    db = tmp_path / "rooms.sqlite3"
    acked: set[str] = set()
    codes: list[int] = []

    async def writer(server: roomkit.Server, n: int, sent: trio.Event) -> None:
        async with open_client(f"{server.url}/ledger") as ws:
            for i in range(8):
                await ws.send_message(f"{n}:{i}")
            sent.set()
            messages, reason = await read_until_close(ws)
            acked.update(m.removeprefix("ack ") for m in messages if isinstance(m, str))
            codes.append(reason.code)

    async with trio.open_nursery() as nursery:
        server: roomkit.Server = await nursery.start(
            partial(roomkit.serve, Ledger, port=0, storage=db)
        )
        async with trio.open_nursery() as writers:
            all_sent = []
            for n in range(50):
                all_sent.append(sent := trio.Event())
                writers.start_soon(writer, server, n, sent)
            for sent in all_sent:
                await sent.wait()
            server.shutdown(restart=True)  # what SIGTERM does
    assert codes == [1012] * 50
    store = await SQLiteStore.open(db)
    try:
        stored = await store.list(
            RoomId("", "ledger"), KeyRange.of(None, None, None), reverse=False, limit=None
        )
    finally:
        await store.aclose()
    assert acked  # some writes were handled before the restart...
    assert acked == {key for key, _ in stored}  # ...and exactly those were stored
