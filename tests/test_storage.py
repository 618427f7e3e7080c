"""Room storage: the layers (pure), the SQLite store, and the whole API through sockets.

The output gate is checked with a store whose commits wait for the test's word: a
client must not see a hook's reply before its writes are durable.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import cattrs
import pytest
import trio
import trio.testing
import trio_websocket
from wsproto import WSConnection
from wsproto.events import TextMessage

import roomkit
from roomkit._roomid import RoomId
from roomkit.storage import AlarmWrite, Changes, Claim, KeyRange, SQLiteStore, Store
from roomkit.storage._changes import lookup, merge, merge_listing
from roomkit.storage._sqlite import SQLiteCore
from roomkit.testing import open_test_server

from .apps import KV
from .helpers import Start, open_client, raw_handshake, receive_json

NewStore = Callable[[], Awaitable[Store]]
ROOM = RoomId("", "r")
#: ``ROOM``'s first claim in a new store: what its writes carry.
CLAIM = Claim(ROOM, 1)


# The layers, pure.


def test_lookup_goes_from_the_newest_layer_down() -> None:
    older = Changes({"a": '"old"', "b": '"b"'})
    newer = Changes({"a": None})
    assert lookup([older, newer], "a") == (True, None)
    assert lookup([older, newer], "b") == (True, '"b"')
    assert lookup([older, newer], "c") == (False, None)
    assert lookup([older, Changes(cleared=True)], "b") == (True, None)


def test_key_range_of_prefix_start_end() -> None:
    assert KeyRange.of("ab", None, None) == KeyRange("ab", "ac")
    assert KeyRange.of("ab", "abc", "ab~") == KeyRange("abc", "ab~")
    assert KeyRange.of("ab", "a", "b") == KeyRange("ab", "ac")
    assert KeyRange.of(None, "b", "a").empty
    assert "ab\U0010ffff" in KeyRange.of("ab", None, None)
    assert KeyRange.of("\U0010ffff", None, None) == KeyRange("\U0010ffff", None)


def test_merge_listing_applies_layers_in_order() -> None:
    stored = [("a", "1"), ("b", "2"), ("c", "3")]
    layers = [Changes({"b": None, "d": "4"}), Changes({"a": "10"})]
    everything = KeyRange()
    assert merge_listing(layers, stored, everything) == [("a", "10"), ("c", "3"), ("d", "4")]
    assert merge_listing(layers, stored, everything, reverse=True, limit=2) == [
        ("d", "4"),
        ("c", "3"),
    ]
    cleared = [Changes({"x": "1"}), Changes({"y": "2"}, cleared=True), Changes({"z": "3"})]
    assert merge_listing(cleared, stored, everything) == [("y", "2"), ("z", "3")]


# The SQLite store.


async def test_a_store_commits_lists_and_survives_reopening(new_store: NewStore) -> None:
    store = await new_store()
    other = RoomId("/x", "r")
    assert await store.claim(ROOM, "test") == CLAIM
    batch = [
        (CLAIM, Changes({"a": "1", "b": "2", "c": "3"}, alarm=AlarmWrite(100.0, 2))),
        (await store.claim(other, "test"), Changes({"a": "other"})),
    ]
    assert await store.commit(batch) == []
    assert await store.commit([(CLAIM, Changes({"b": None}))]) == []
    await store.aclose()
    store = await new_store()
    assert await store.get_many(ROOM, ["a", "b", "zz"]) == {"a": "1"}
    assert await store.list(ROOM, KeyRange(), reverse=True, limit=1) == [("c", "3")]
    assert await store.alarms() == [(ROOM, 100.0, 2)]
    await store.commit([(CLAIM, Changes(cleared=True, alarm=AlarmWrite(None)))])
    assert await store.list(ROOM, KeyRange(), reverse=False, limit=None) == []
    assert await store.alarms() == []
    assert await store.get_many(other, ["a"]) == {"a": "other"}


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    core = SQLiteCore(tmp_path / "rooms.sqlite3")
    assert core._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    core.close()


async def test_keys_are_in_code_point_order(new_store: NewStore) -> None:
    store = await new_store()
    await store.claim(ROOM, "test")
    keys = ["", "A", "a", "z", "\x7f", "é", "\u2603", "\uffff", "\U0001f600", "\U0010ffff"]
    await store.commit([(CLAIM, Changes({key: "1" for key in reversed(keys)}))])
    listed = await store.list(ROOM, KeyRange(), reverse=False, limit=None)
    assert [key for key, _ in listed] == keys == sorted(keys)
    middle = await store.list(ROOM, KeyRange("z", "\uffff"), reverse=True, limit=None)
    assert [key for key, _ in middle] == ["\u2603", "é", "\x7f", "z"]
    prefix = KeyRange.of("\U0010ffff", None, None)
    assert [key for key, _ in await store.list(ROOM, prefix, reverse=False, limit=5)] == keys[-1:]


@pytest.mark.parametrize("count", [1, 7, 64, 65, 200])
async def test_a_store_writes_every_row_of_a_large_commit(new_store: NewStore, count: int) -> None:
    store = await new_store()
    await store.claim(ROOM, "test")
    await store.commit([(CLAIM, Changes({"old": "x", "k0000": "stale"}))])
    writes: dict[str, str | None] = {f"k{i:04}": json.dumps(i) for i in range(count)}
    writes["old"] = None
    # Several hooks' changes to one room, in one group commit: the last write wins.
    await store.commit([(CLAIM, Changes({"k0000": "older"})), (CLAIM, Changes(writes))])
    assert await store.list(ROOM, KeyRange(), reverse=False, limit=None) == [
        (f"k{i:04}", json.dumps(i)) for i in range(count)
    ]


async def test_a_failing_commit_leaves_nothing_behind(new_store: NewStore) -> None:
    store = await new_store()
    await store.claim(ROOM, "test")
    other = await store.claim(RoomId("", "o"), "test")
    bad = Changes({"b": object()})  # type: ignore[dict-item]
    with pytest.raises(Exception, match=r"Error binding parameter|cannot adapt"):
        await store.commit([(CLAIM, Changes({"a": "1"})), (other, bad)])
    assert await store.get_many(ROOM, ["a", "b"]) == {}
    assert await store.commit([(CLAIM, Changes({"a": "2"}))]) == []  # the store goes on
    assert await store.get_many(ROOM, ["a"]) == {"a": "2"}


# The API, through real sockets.


class Client:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def __call__(self, op: str, **args: Any) -> Any:
        await self.ws.send_message(json.dumps({"op": op, **args}))
        reply = await receive_json(self.ws)
        assert reply.get("op") == op, reply
        return reply["result"]


async def test_kv_api(new_store: NewStore) -> None:
    store = await new_store()
    # The server ends within the test, before its store is closed: on PostgreSQL it is a
    # cluster member, which leaves the cluster through its store as it shuts down.
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(roomkit.serve, KV, port=0, storage=store))
        async with open_client(f"{server.url}/kv") as ws:
            kv = Client(ws)
            assert await kv("get", key="nope") is None
            assert await kv("get", key="nope", default=7) == 7
            await kv("put", key="a", value={"nested": [1, 2.5, True, None, "é"]})
            assert await kv("get", key="a") == {"nested": [1, 2.5, True, None, "é"]}
            await kv("put_many", entries={f"item:{i:02}": i for i in range(10)} | {"b": "x"})
            assert await kv("get_many", keys=["a", "b", "zz"]) == {
                "a": {"nested": [1, 2.5, True, None, "é"]},
                "b": "x",
            }
            assert await kv("delete", key="b") is True
            assert await kv("delete", key="b") is False
            assert await kv("delete_many", keys=["item:00", "item:01", "missing"]) == 2

            items = [[f"item:{i:02}", i] for i in range(2, 10)]
            assert await kv("list") == [["a", {"nested": [1, 2.5, True, None, "é"]}], *items]
            assert await kv("list", prefix="item:") == items
            assert await kv("list", prefix="item:", start="item:05", end="item:08") == items[3:6]
            assert await kv("list", prefix="item:", reverse=True) == items[::-1]
            assert await kv("list", prefix="item:", reverse=True, limit=3) == items[::-1][:3]
            assert await kv("list", prefix="item:", limit=2) == items[:2]
            assert await kv("list", start="item:09") == items[-1:]
            assert await kv("list", end="item") == [["a", {"nested": [1, 2.5, True, None, "é"]}]]
            assert await kv("list", limit=0) == []

            await kv("set_alarm", delay=60)
            await kv("delete_all")
            assert await kv("list") == []
            assert await kv("get_alarm") is None
        server.shutdown()


async def test_list_merges_writes_not_yet_committed(start: Start) -> None:
    gate = GatedStore(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=gate)
    async with open_client(f"{server.url}/kv") as ws:
        kv = Client(ws)
        await kv("put_many", entries={"a": 1, "b": 2, "c": 3, "d": 4})
        gate.hold()
        # Sent together: the second and third hooks run while the first's commit waits.
        for command in (
            {"op": "delete_many", "keys": ["a", "b"]},
            {"op": "put", "key": "e", "value": 5},
            {"op": "list", "limit": 2},
        ):
            await ws.send_message(json.dumps(command))
        await trio.testing.wait_all_tasks_blocked()
        gate.release()
        replies = [await receive_json(ws) for _ in range(3)]
        assert replies[-1]["result"] == [["c", 3], ["d", 4]]


async def test_rooms_see_only_their_own_keys(start: Start) -> None:
    server = await start({"/kv": KV, "/other": KV})
    async with (
        open_client(f"{server.url}/kv/a") as a,
        open_client(f"{server.url}/kv/b") as b,
        open_client(f"{server.url}/other/a") as c,
    ):
        await Client(a)("put", key="k", value="a's")
        assert await Client(b)("get", key="k") is None
        assert await Client(c)("get", key="k") is None
        await Client(b)("delete_all")
        assert await Client(a)("get", key="k") == "a's"


async def test_transaction_blocks_are_all_or_nothing(start: Start) -> None:
    server = await start(KV)
    async with open_client(f"{server.url}/kv") as ws:
        kv = Client(ws)
        seen = {"inside": 2}  # the block sees its own writes, and its own delete
        assert await kv("transaction", mode="commit") == {"seen": seen, "after": {"inside": 2}}
        await kv("delete_all")
        undone = {"seen": seen, "after": {"outside": 1}}
        assert await kv("transaction", mode="rollback") == undone
        await kv("delete_all")
        assert await kv("transaction", mode="raise") == undone


async def test_raising_hook_rolls_back_and_its_sends_never_arrive(start: Start) -> None:
    server = await start(KV)
    async with open_client(f"{server.url}/kv") as ws, open_client(f"{server.url}/kv") as other:
        kv = Client(ws)
        await kv("put", key="k", value="kept")
        await ws.send_message(json.dumps({"op": "put_then_fail", "key": "k"}))
        assert await receive_json(ws) == {"error": "RuntimeError: hook failed after writing"}
        assert await kv("get", key="k") == "kept"
        await Client(other)("get", key="k")  # other's first message is this reply, no broadcast


class GatedStore(Store):
    """A store whose commits can be held back, and which records every batch."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self._open = trio.Event()
        self._open.set()

    def hold(self) -> None:
        self._open = trio.Event()

    def release(self) -> None:
        self._open.set()

    async def claim(self, room: RoomId, owner: str) -> Claim:
        return await self.inner.claim(room, owner)

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        return await self.inner.get_many(room, keys)

    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> list[tuple[str, str]]:
        return await self.inner.list(room, keys, reverse=reverse, limit=limit)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        await self._open.wait()
        self.batches.append(len(batch))
        return await self.inner.commit(batch)

    async def alarms(self) -> list[tuple[RoomId, float, int]]:
        return await self.inner.alarms()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_output_gate_holds_replies_until_the_commit_is_durable(start: Start) -> None:
    gate = GatedStore(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=gate)
    stream, ws = await raw_handshake(server.port, "/kv")
    async with stream:

        async def send(**command: Any) -> None:
            await stream.send_all(ws.send(TextMessage(data=json.dumps(command))))

        await send(op="put", key="warm", value=0)
        assert [r["op"] for r in await read_json(stream, ws, 1)] == ["put"]
        gate.hold()
        for i in range(20):
            await send(op="put", key=f"k{i}", value=i)
        await send(op="get", key="k19")  # no write of its own
        await trio.testing.wait_all_tasks_blocked()
        # Everything the server wrote would be in this socket's buffer by now: it is empty.
        with pytest.raises(BlockingIOError):
            os.read(stream.socket.fileno(), 1)
        gate.release()
        replies = await read_json(stream, ws, 21)
        assert [r["op"] for r in replies] == ["put"] * 20 + ["get"]
        assert replies[-1]["result"] == 19  # read its predecessors' uncommitted writes
    # The 20 puts waited behind one held commit: group commit wrote them in a batch or two.
    assert len(gate.batches) <= 3 and sum(gate.batches) == 21


async def read_json(stream: trio.SocketStream, ws: WSConnection, count: int) -> list[Any]:
    """The next ``count`` text messages from a raw client, parsed."""
    messages: list[Any] = []
    with trio.fail_after(5):
        while len(messages) < count:
            ws.receive_data(await stream.receive_some())
            messages += [json.loads(e.data) for e in ws.events() if isinstance(e, TextMessage)]
    return messages


async def test_without_group_commit_every_hook_commits_alone(start: Start) -> None:
    gate = GatedStore(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=gate, group_commit=False)
    async with open_client(f"{server.url}/kv") as ws:
        for i in range(10):
            await ws.send_message(json.dumps({"op": "put", "key": f"k{i}", "value": i}))
        for _ in range(10):
            await receive_json(ws)
    assert gate.batches == [1] * 10


async def test_a_failed_commit_resets_the_room_and_sends_nothing(start: Start) -> None:
    class Failing(GatedStore):
        fail = False

        async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
            if self.fail:
                raise OSError("disk full")
            return await super().commit(batch)

    store = Failing(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=store)
    async with open_client(f"{server.url}/kv") as ws:
        await Client(ws)("put", key="a", value=1)
        store.fail = True
        await ws.send_message(json.dumps({"op": "put", "key": "a", "value": 2}))
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await receive_json(ws)  # never the acknowledgement
        assert info.value.reason.code == 1011
    store.fail = False
    async with open_client(f"{server.url}/kv") as ws:
        assert await Client(ws)("get", key="a") == 1


async def test_after_a_failed_commit_no_later_write_of_its_room_lands(start: Start) -> None:
    """The writes of the hooks after the failed one, queued behind its commit, are
    dropped with their outboxes: each wrote on top of what never landed."""

    class FailsHeld(GatedStore):
        fail = False

        async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
            await self._open.wait()
            if self.fail:
                self.fail = False
                raise OSError("disk full")
            return await super().commit(batch)

    store = FailsHeld(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=store)
    async with open_client(f"{server.url}/kv") as ws:
        await Client(ws)("put", key="a", value=0)
        store.hold()
        store.fail = True
        await ws.send_message(json.dumps({"op": "put", "key": "a", "value": 1}))
        await trio.testing.wait_all_tasks_blocked()  # its commit waits in the store
        await ws.send_message(json.dumps({"op": "put", "key": "b", "value": 2}))
        await trio.testing.wait_all_tasks_blocked()  # queued behind it
        store.release()
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await receive_json(ws)
        assert info.value.reason.code == 1011
    async with open_client(f"{server.url}/kv") as ws:
        assert await Client(ws)("get_many", keys=["a", "b"]) == {"a": 0}
    assert len(store.batches) == 2  # the put of b was committed, as nothing


async def test_a_full_disk_is_logged_as_such_and_resets_the_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await SQLiteStore.open(tmp_path / "rooms.sqlite3")
    db = store._core._db
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(roomkit.serve, KV, port=0, storage=store))
        async with open_client(f"{server.url}/kv") as ws:
            await Client(ws)("put", key="a", value=1)
            # The file may not grow by one more page: SQLITE_FULL, as on a full disk, after
            # which SQLite has rolled the transaction back by itself.
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
            await ws.send_message(json.dumps({"op": "put", "key": "b", "value": "x" * 100_000}))
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await receive_json(ws)  # never the acknowledgement
            assert (info.value.reason.code, info.value.reason.reason) == (1011, "Storage failure")
        [failed] = [r for r in caplog.records if r.name == "roomkit.storage"]
        assert failed.exc_info is not None
        cause = failed.exc_info[1]
        assert isinstance(cause, sqlite3.OperationalError)
        assert str(cause) == "database or disk is full"  # not the ROLLBACK that found nothing
        assert "database or disk is full" in failed.getMessage()
        assert "cannot rollback" not in caplog.text
        db.execute("PRAGMA max_page_count = 1000000")  # space again: no restart needed
        async with open_client(f"{server.url}/kv") as ws:
            assert await Client(ws)("get_many", keys=["a", "b"]) == {"a": 1}
            await Client(ws)("put", key="b", value=2)
        server.shutdown()
    await store.aclose()


async def test_serve_refuses_a_storage_file_that_another_server_holds(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "rooms.sqlite3"
    async with trio.open_nursery() as first:
        await first.start(partial(roomkit.serve, KV, port=0, storage=db))
        with pytest.raises(roomkit.StorageError) as info:
            await nursery.start(partial(roomkit.serve, KV, port=0, storage=db))
        assert str(info.value) == (
            f"the storage file {db} is in use by another server (pid {os.getpid()}, this "
            f"process), which holds {db}.roomkit.lock; one server per storage file"
        )
        link = tmp_path / "link.sqlite3"  # the same database, by another path
        link.symlink_to(db)
        with pytest.raises(roomkit.StorageError, match="in use by another server"):
            await nursery.start(partial(roomkit.serve, KV, port=0, storage=link))
        # Only the server's user may open it: whoever can open it can flock it.
        assert os.stat(f"{db}.roomkit.lock").st_mode & 0o777 == 0o600
        for _ in range(2):  # ":memory:" takes no lock
            await nursery.start(partial(roomkit.serve, KV, port=0, storage=":memory:"))
        first.cancel_scope.cancel()
    # Once the first server is done, its file is free again.
    server = await nursery.start(partial(roomkit.serve, KV, port=0, storage=db))
    async with open_client(f"{server.url}/kv") as ws:
        await Client(ws)("put", key="a", value=1)


async def test_a_file_that_is_not_a_database_is_refused_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    db.write_bytes(b"not SQLite " * 1000)
    with pytest.raises(roomkit.StorageError) as info:
        await SQLiteStore.open(db)
    assert str(info.value) == f"cannot use the storage file {db}: file is not a database"
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    db.unlink()  # the failed open released its lock: the file opens once it is right
    await (await SQLiteStore.open(db)).aclose()


@attrs.frozen
class Point:
    x: float
    y: float


@attrs.frozen
class Score:
    player: str
    points: int
    at: Point
    history: list[float]
    tags: tuple[str, ...]
    note: str | None = None


async def test_attrs_values_are_stored_as_cattrs_unstructures_them_whatever_the_hooks() -> None:
    class Scored(roomkit.Room):
        protocol = roomkit.Protocol(client=Point, server=Score)

        async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
            score = Score("adá", 3, message, [1.5, 2], ("a", "b"))
            await self.storage.put("score", score)
            conn.send(score)

    # A hook of the room's protocol changes its messages, not what storage writes.
    Scored.protocol.converter.register_unstructure_hook(Score, lambda s: {"who": s.player})
    store = await SQLiteStore.open(":memory:")
    async with open_test_server(Scored, storage=store) as server, server.connect("/r") as client:
        await client.send(Point(1, 2.5))
        assert await client.receive() == {"type": "score", "who": "adá"}
    stored = await store.get_many(RoomId("", "r"), ["score"])
    await store.aclose()
    # The exact text stored before each protocol had a converter of its own.
    text = (
        '{"player":"adá","points":3,"at":{"x":1.0,"y":2.5},'
        '"history":[1.5,2],"tags":["a","b"],"note":null}'
    )
    assert stored == {"score": text}
    score = cattrs.structure(json.loads(text), Score)
    assert score == Score("adá", 3, Point(1, 2.5), [1.5, 2], ("a", "b"))


async def test_storage_outside_a_hook_is_an_error(start: Start) -> None:
    rooms: list[roomkit.Room] = []

    class Remembered(roomkit.Room):
        async def on_start(self) -> None:
            rooms.append(self)

    server = await start(Remembered)
    async with open_client(f"{server.url}/x"):
        with pytest.raises(roomkit.OutsideHookError, match="only be used inside a hook"):
            await rooms[0].storage.put("k", 1)


async def test_bad_keys_and_values_raise_in_the_hook(start: Start) -> None:
    server = await start(KV)
    async with open_client(f"{server.url}/kv") as ws:
        await ws.send_message(json.dumps({"op": "put", "key": "k" * 2049, "value": 1}))
        assert await receive_json(ws) == {
            "error": "ValueError: a storage key is at most 2048 bytes of UTF-8"
        }
        await ws.send_message(json.dumps({"op": "put", "key": "a\u0000b", "value": 1}))
        assert await receive_json(ws) == {
            "error": "ValueError: a storage key may not contain NUL (U+0000)"
        }
        await ws.send_message(json.dumps({"op": "set_alarm", "at": None, "delay": None}))
        error = (await receive_json(ws))["error"]
        assert error == "TypeError: set_alarm takes exactly one of delay= and at="


async def test_list_is_right_when_a_commit_lands_during_its_read(start: Start) -> None:
    class SlowList(GatedStore):
        def __init__(self, inner: Store) -> None:
            super().__init__(inner)
            self.listed = trio.Event()
            self.answer = trio.Event()

        async def list(
            self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
        ) -> list[tuple[str, str]]:
            rows = await self.inner.list(room, keys, reverse=reverse, limit=limit)
            self.listed.set()
            await self.answer.wait()  # the rows are read; they reach the room late
            return rows

    store = SlowList(await SQLiteStore.open(":memory:"))
    server = await start(KV, storage=store)
    async with open_client(f"{server.url}/kv") as ws:
        store.hold()
        await ws.send_message(json.dumps({"op": "put", "key": "late", "value": 1}))
        await ws.send_message(json.dumps({"op": "list"}))
        with trio.fail_after(5):
            await store.listed.wait()
        store.release()  # the put's commit lands while the list's rows are in transit
        await trio.testing.wait_all_tasks_blocked()
        store.answer.set()
        replies = [await receive_json(ws) for _ in range(2)]
        assert replies[1]["result"] == [["late", 1]]


async def test_a_failed_commit_of_on_connect_refuses_the_handshake(start: Start) -> None:
    class Failing(GatedStore):
        async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
            raise OSError("disk full")

    class Greeter(roomkit.Room):
        async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
            await self.storage.put("visits", 1)
            conn.send("welcome")  # must never arrive: the write it reports was lost

    server = await start(Greeter, storage=Failing(await SQLiteStore.open(":memory:")))
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(f"{server.url}/r"):
            pass
    assert info.value.status_code == 500
    await trio.testing.wait_all_tasks_blocked()
    assert server.room_count == 0  # the refused connection is not left behind


def test_merge_keeps_the_net_effect_in_order() -> None:
    other = RoomId("", "other")
    batch = [
        (ROOM, Changes({"a": "1", "b": "1"})),
        (other, Changes({"a": "x"})),
        (ROOM, Changes({"a": None, "c": "3"}, alarm=AlarmWrite(5.0))),
        (ROOM, Changes({"b": "2"})),
    ]
    assert merge(batch) == {
        ROOM: Changes({"a": None, "b": "2", "c": "3"}, alarm=AlarmWrite(5.0)),
        other: Changes({"a": "x"}),
    }
    cleared = merge([(ROOM, Changes({"a": "1"})), (ROOM, Changes({"b": "2"}, cleared=True))])
    assert cleared == {ROOM: Changes({"b": "2"}, cleared=True)}
    assert batch[0][1] == Changes({"a": "1", "b": "1"})  # the inputs are left alone


async def test_a_merged_batch_applies_like_its_parts(new_store: NewStore) -> None:
    store = await new_store()
    await store.claim(ROOM, "test")
    await store.commit(
        [
            (CLAIM, Changes({"a": "1"})),
            (CLAIM, Changes({"a": None})),  # put then delete: gone
            (CLAIM, Changes({"b": "1"})),
            (CLAIM, Changes({}, cleared=True)),  # then everything: gone
            (CLAIM, Changes({"c": "1"})),
        ]
    )
    assert await store.list(ROOM, KeyRange(), reverse=False, limit=None) == [("c", "1")]


class Counter(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        count = await self.storage.get("count", 0) + 1
        await self.storage.put("count", count)
        conn.send(str(count))


@pytest.mark.parametrize(
    ("method", "what"), [("committed", "recording a commit"), ("release", "releasing a commit")]
)
async def test_a_bug_releasing_one_rooms_commit_resets_that_room_only(
    start: Start,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    what: str,
) -> None:
    from roomkit._core.gate import OutputGate

    original = getattr(OutputGate, method)  # what the committer's report of a commit reaches
    broken = {"once": True}

    def once_broken(self: OutputGate[Any], *args: Any) -> Any:
        if broken.pop("once", False):
            raise RuntimeError("a bug in roomkit")
        return original(self, *args)

    monkeypatch.setattr(OutputGate, method, once_broken)
    server = await start(Counter)
    async with open_client(f"{server.url}/first") as first:
        await first.send_message("x")  # the first commit's report raises
        # ...and that room resets, rather than hold its connection for ever.
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await first.get_message()
        assert closed.value.reason.code == 1011
        async with open_client(f"{server.url}/second") as second:
            for expected in ("1", "2"):
                await second.send_message("x")
                with trio.fail_after(5):
                    assert await second.get_message() == expected
    assert f"{what} failed; resetting the room" in caplog.text
