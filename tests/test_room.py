"""Rooms through real sockets: hooks, ordering, broadcast, tags, errors, closing.

Loopback only, port 0, trio-websocket's client; ``fail_after`` bounds every wait.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
import trio_websocket

import roomkit
from roomkit._hooks import HookRunner
from roomkit._roomid import RoomId
from roomkit.storage import Changes, Claim, SQLiteStore, Store

from .helpers import Start, expect_close, http, open_client, read_until_close
from .test_storage import GatedStore


class Echo(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def test_echo_text_and_binary(start: Start) -> None:
    server = await start(Echo)
    async with open_client(f"{server.url}/lobby") as ws:
        await ws.send_message("hello")
        await ws.send_message(b"\x00\xffbytes")
        with trio.fail_after(5):
            assert await ws.get_message() == "hello"
            assert await ws.get_message() == b"\x00\xffbytes"


async def test_large_message_is_reassembled_and_echoed(start: Start) -> None:
    server = await start(Echo)
    text = "é" * 300_000  # 600 kB of UTF-8: many reads, split characters
    async with open_client(f"{server.url}/big") as ws:
        await ws.send_message(text)
        with trio.fail_after(5):
            assert await ws.get_message() == text


class Registry(roomkit.Room):
    """Records every instance and every hook call, to check the actor model."""

    instances: ClassVar[list[Registry]] = []

    def __init__(self) -> None:
        self.started = 0
        self.seen: list[str] = []
        Registry.instances.append(self)

    async def on_start(self) -> None:
        self.started += 1

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(f"{self.name}:{id(self)}")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.seen.append(message)


async def test_one_instance_per_room_name(start: Start) -> None:
    Registry.instances.clear()
    server = await start(Registry)
    async with (
        open_client(f"{server.url}/a") as a1,
        open_client(f"{server.url}/a") as a2,
        open_client(f"{server.url}/b") as b,
    ):
        with trio.fail_after(5):
            first, second, other = [await ws.get_message() for ws in (a1, a2, b)]
        assert first == second
        assert first.startswith("a:") and other.startswith("b:") and first[2:] != other[2:]
        assert [r.name for r in Registry.instances] == ["a", "b"]
        assert [r.started for r in Registry.instances] == [1, 1]
        assert server.room_count == 2


async def test_room_ends_when_its_last_connection_closes(start: Start) -> None:
    Registry.instances.clear()
    server = await start(Registry)
    async with open_client(f"{server.url}/a") as ws:
        await ws.get_message()
    await trio.testing.wait_all_tasks_blocked()
    assert server.room_count == 0
    async with open_client(f"{server.url}/a") as ws:
        await ws.get_message()
    assert len(Registry.instances) == 2  # a fresh instance for the same name


class Serial(roomkit.Room):
    """Yields to the scheduler many times inside each hook, to tempt interleaving."""

    running = 0
    overlaps = 0
    log: ClassVar[list[tuple[str, str]]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        Serial.running += 1
        Serial.overlaps += Serial.running > 1
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        Serial.log.append((conn.request.query["c"], message))
        Serial.running -= 1
        if message == "19":
            conn.send("done")


async def test_hooks_of_a_room_never_overlap_and_keep_arrival_order(start: Start) -> None:
    server = await start(Serial)

    async def client(name: str) -> None:
        async with open_client(f"{server.url}/r?c={name}") as ws:
            for i in range(20):
                await ws.send_message(str(i))
            with trio.fail_after(10):
                assert await ws.get_message() == "done"

    async with trio.open_nursery() as clients:
        for name in "abcd":
            clients.start_soon(client, name)
    assert Serial.overlaps == 0
    assert len(Serial.log) == 80
    for name in "abcd":
        assert [m for c, m in Serial.log if c == name] == [str(i) for i in range(20)]


class Stuck(roomkit.Room):
    release = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if self.name == "slow":
            await Stuck.release.wait()
        conn.send(message)


async def test_a_slow_room_never_delays_another(start: Start) -> None:
    Stuck.release = trio.Event()
    server = await start(Stuck)
    async with (
        open_client(f"{server.url}/slow") as slow,
        open_client(f"{server.url}/fast") as fast,
    ):
        await slow.send_message("waiting")
        for i in range(10):
            await fast.send_message(str(i))
            with trio.fail_after(5):
                assert await fast.get_message() == str(i)
        Stuck.release.set()
        with trio.fail_after(5):
            assert await slow.get_message() == "waiting"


class Tagged(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.tags = request.query["tags"].split(",")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        command, _, arg = message.partition(" ")
        if command == "all":
            conn.send(str(self.broadcast("to all")))
        elif command == "tag":
            conn.send(str(self.broadcast(f"to {arg}", tag=arg)))
        elif command == "others":
            conn.send(str(self.broadcast("to others", exclude=conn)))
        elif command == "retag":
            conn.tags = arg.split(",")
            conn.send(",".join(conn.tags))
        elif command == "count":
            conn.send(str(len(self.connections(arg or None))))

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        before = ",".join(conn.tags) or "no tags"  # removed before on_close runs
        conn.tags = ["gone"]  # a connection that has left can be retagged; it stays out
        n = len(self.connections("gone"))
        self.broadcast(f"left with {before}, retagged {','.join(conn.tags)}; {n} gone")


async def test_broadcast_with_tag_and_exclude(start: Start) -> None:
    server = await start(Tagged)
    async with (
        open_client(f"{server.url}/t?tags=red,all") as red,
        open_client(f"{server.url}/t?tags=blue,all") as blue,
        open_client(f"{server.url}/t?tags=red,blue") as both,
    ):

        async def get(ws: trio_websocket.WebSocketConnection) -> str:
            with trio.fail_after(5):
                message = await ws.get_message()
            assert isinstance(message, str)
            return message

        await red.send_message("tag red")
        assert await get(red) == "to red"
        assert await get(both) == "to red"
        assert await get(red) == "2"

        await blue.send_message("others")
        assert await get(red) == "to others"
        assert await get(both) == "to others"
        assert await get(blue) == "2"

        await both.send_message("tag blue")
        assert await get(blue) == "to blue"
        assert await get(both) == "to blue"
        assert await get(both) == "2"
        # red got neither tagged broadcast: the next thing it sees is its own reply.
        await red.send_message("count")
        assert await get(red) == "3"


async def test_broadcast_counts_and_connections_by_tag(start: Start) -> None:
    server = await start(Tagged)
    async with (
        open_client(f"{server.url}/t?tags=red,all") as red,
        open_client(f"{server.url}/t?tags=blue,all") as blue,
    ):
        with trio.fail_after(5):
            await red.send_message("count")
            assert await red.get_message() == "2"
            await red.send_message("count blue")
            assert await red.get_message() == "1"
            await red.send_message("all")
            assert await red.get_message() == "to all"
            assert await red.get_message() == "2"
            assert await blue.get_message() == "to all"
            await blue.send_message("retag green,all")
            assert await blue.get_message() == "green,all"
            await blue.send_message("count blue")
            assert await blue.get_message() == "0"
            await red.send_message("tag green")
            assert await blue.get_message() == "to green"
            assert await red.get_message() == "1"
            await blue.aclose()
            assert await red.get_message() == "left with no tags, retagged gone; 0 gone"


class Overlapping(roomkit.Room):
    """Yields inside on_connect, so other handshakes queue up behind it."""

    seen: ClassVar[list[list[Any]]] = []

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        Overlapping.seen.append([c.attachment for c in self.connections()])
        conn.attachment = request.query["n"]


async def test_handshakes_waiting_their_turn_are_not_among_connections(start: Start) -> None:
    Overlapping.seen = []
    server = await start(Overlapping)
    async with trio.open_nursery() as clients:
        for n in range(8):
            clients.start_soon(partial(hold_open, f"{server.url}/r?n={n}"))
        await trio.testing.wait_all_tasks_blocked()
        clients.cancel_scope.cancel()
    # Each on_connect saw the connections accepted before it (attachment set) and itself
    # (attachment not yet set), never a handshake still waiting for its turn.
    assert [len(seen) for seen in Overlapping.seen] == list(range(1, 9))
    assert all(seen.count(None) == 1 for seen in Overlapping.seen), Overlapping.seen


async def hold_open(url: str) -> None:
    async with open_client(url):
        await trio.sleep_forever()


class Slow(roomkit.Room):
    got: ClassVar[list[str]] = []
    done = trio.Event()

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        for _ in range(50):
            await trio.lowlevel.checkpoint()
        Slow.got.append(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Slow.got.append(f"closed {code}")
        Slow.done.set()


async def test_messages_sent_before_a_close_all_reach_the_room_first(start: Start) -> None:
    Slow.got, Slow.done = [], trio.Event()
    server = await start(Slow)
    async with open_client(f"{server.url}/r") as ws:
        for text in ("one", "two", "three"):
            await ws.send_message(text)
        await ws.aclose(1000)
    with trio.fail_after(5):
        await Slow.done.wait()
    assert Slow.got == ["one", "two", "three", "closed 1000"]


class ResetMidHook(GatedStore):
    """Fails the first commit just while a later hook awaits a read: the room is reset
    (its instance dropped) under that hook, which then raises."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.reading = trio.Event()
        self.failed = trio.Event()

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        self.reading.set()
        await self.failed.wait()
        return await super().get_many(room, keys)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        await self.reading.wait()
        self.failed.set()
        raise OSError("disk full")


class Fragile(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "write":
            await self.storage.put("a", 1)
        elif message == "read, then raise":
            await self.storage.get("b")
            raise RuntimeError("raised after the reset")
        elif message == "read, then write":
            await self.storage.get("b")
            await self.storage.put("c", 1)
            conn.send("wrote c")
        else:
            conn.send(message)


async def test_a_hook_raising_after_its_room_was_reset_ends_that_room_only(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(Fragile, storage=ResetMidHook(await SQLiteStore.open(":memory:")))
    async with open_client(f"{server.url}/fragile") as ws:
        await ws.send_message("write")
        await ws.send_message("read, then raise")
        close = await expect_close(ws)
        assert (close.code, close.reason) == (1011, "Storage failure")
    [raised] = [r for r in caplog.records if "after the room was reset" in r.getMessage()]
    assert raised.exc_info is not None and str(raised.exc_info[1]) == "raised after the reset"
    async with open_client(f"{server.url}/other") as ws:  # the server is still serving
        await ws.send_message("hello")
        with trio.fail_after(5):
            assert await ws.get_message() == "hello"


async def test_a_hook_returning_after_its_room_was_reset_writes_and_sends_nothing(
    start: Start,
) -> None:
    class ResetOnce(ResetMidHook):
        """Fails the first commit only: the later one would land."""

        async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
            if self.failed.is_set():
                return await self.inner.commit(batch)
            return await super().commit(batch)

    store = ResetOnce(await SQLiteStore.open(":memory:"))
    server = await start(Fragile, storage=store)
    async with open_client(f"{server.url}/fragile") as ws:
        await ws.send_message("write")
        await ws.send_message("read, then write")  # reads across the reset, then writes
        sent, close = await read_until_close(ws)
        assert (sent, close.code, close.reason) == ([], 1011, "Storage failure")
    claim = await store.inner.claim(RoomId("", "fragile"), "test")
    assert await store.inner.get_many(claim.room, ["a", "c"]) == {}


async def test_a_failure_handling_one_event_ends_what_it_was_about_only(
    start: Start, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    finish, run = HookRunner.finish, HookRunner.run

    def broken_finish(hooks: HookRunner, *args: Any) -> None:
        if hooks.room.name == "doomed":
            raise RuntimeError("a bug after on_start")
        finish(hooks, *args)

    async def broken_run(hooks: HookRunner, conn: Any, hook: Any, *args: Any) -> None:
        if "boom" in args:
            raise RuntimeError("a bug before on_message")
        await run(hooks, conn, hook, *args)

    monkeypatch.setattr(HookRunner, "finish", broken_finish)
    monkeypatch.setattr(HookRunner, "run", broken_run)
    server = await start(Echo, metrics=True)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{server.url}/doomed"):
            pass
    assert (info.value.status_code, info.value.body) == (500, b"Internal error")
    async with open_client(f"{server.url}/r") as doomed, open_client(f"{server.url}/r") as other:
        await doomed.send_message("boom")
        close = await expect_close(doomed)
        assert (close.code, close.reason) == (1011, "Internal error")
        await other.send_message("still here")  # the room goes on with its next event
        with trio.fail_after(5):
            assert await other.get_message() == "still here"
    failed = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert failed == ["room /doomed: handling Connect failed", "room /r: handling Message failed"]
    _, _, page = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b'roomkit_internal_errors_total{room_class="Echo"} 2.0' in page
    assert b'roomkit_handshakes_refused_total{reason="internal_error"} 1.0' in page
    assert b'roomkit_connections_cut_total{reason="internal_error",room_class="Echo"} 1.0' in page


class Clock(roomkit.Room):
    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        conn.send(repr(self.time()))


async def test_room_time_is_the_wall_clock_in_a_server(start: Start) -> None:
    server = await start(Clock)
    before = time.time()
    async with open_client(f"{server.url}/lobby") as ws:
        with trio.fail_after(5):
            told = float(await ws.get_message())
    assert before - 1 < told < time.time() + 1
