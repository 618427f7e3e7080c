"""Fenced storage: a room's writes land only under its latest claim.

Two stores on one database, as two processes have them, over SQLite (one real file)
and PostgreSQL; then SQLite's own cases; two real server processes sharing a file;
then the host's alarm filter.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio_websocket
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import ClientConnection, connect

import roomkit
from roomkit._closecodes import CloseCode
from roomkit._core.frontdoor import Router
from roomkit._host import Host
from roomkit._metrics import Metrics
from roomkit.storage import AlarmWrite, Changes, Claim, KeyRange, SQLiteStore, Store
from roomkit.storage._sqlite import SQLiteCore

from .apps import KV
from .helpers import ROOT, Start, call, expect_close, open_client, roomkit_env

NewStore = Callable[[], Awaitable[Store]]
ROOM = roomkit.storage.RoomId("", "r")
OTHER = roomkit.storage.RoomId("", "o")


# Claims and fenced commits, on one database shared by two stores (SQLite, PostgreSQL).


async def test_each_claim_moves_the_epoch_on_and_records_its_owner(new_store: NewStore) -> None:
    first, second = await new_store(), await new_store()
    assert await first.claim(ROOM, "a:1") == Claim(ROOM, 1)
    assert await second.claim(ROOM, "b:2") == Claim(ROOM, 2)
    assert await first.claim(OTHER, "a:1") == Claim(OTHER, 1)  # each room its own epoch
    assert await first.claim(ROOM, "a:1") == Claim(ROOM, 3)
    refused = await second.commit([(Claim(ROOM, 2), Changes()), (Claim(OTHER, 0), Changes())])
    assert [(e.room, e.epoch, e.owner) for e in refused] == [(ROOM, 2, "a:1"), (OTHER, 0, "a:1")]


async def test_a_stale_claims_writes_are_refused_and_the_rest_of_the_commit_lands(
    new_store: NewStore,
) -> None:
    old, new = await new_store(), await new_store()
    stale, other = await old.claim(ROOM, "old"), await old.claim(OTHER, "old")
    assert await old.commit([(stale, Changes({"k": '"old"'}))]) == []
    current = await new.claim(ROOM, "new")
    refused = await old.commit(
        [
            (stale, Changes({"k": '"lost"', "x": '"lost"'}, alarm=AlarmWrite(100.0))),
            (other, Changes({"o": '"kept"'}, alarm=AlarmWrite(200.0))),
            (stale, Changes(cleared=True)),
        ]
    )
    assert [(e.room, e.epoch, e.owner) for e in refused] == [(ROOM, 1, "new")]
    assert isinstance(refused[0], roomkit.StorageError)
    assert str(refused[0]) == (
        "room /r: writes under epoch 1 refused: 'new' has claimed the room since"
    )
    assert await new.list(ROOM, KeyRange(), reverse=False, limit=None) == [("k", '"old"')]
    assert await new.get_many(OTHER, ["o"]) == {"o": '"kept"'}
    assert await new.alarms() == [(OTHER, 200.0, 0)]
    assert await new.commit([(current, Changes({"k": '"new"'}))]) == []
    assert await old.get_many(ROOM, ["k"]) == {"k": '"new"'}


async def test_writes_to_a_room_never_claimed_are_refused(new_store: NewStore) -> None:
    store = await new_store()
    [refused] = await store.commit([(Claim(ROOM, 1), Changes({"k": "1"}))])
    assert (refused.room, refused.epoch, refused.owner) == (ROOM, 1, None)
    assert await store.get_many(ROOM, ["k"]) == {}


#: The tables as roomkit wrote them before rooms were claimed (issue 14's schema).
PREVIOUS_SCHEMA = """
CREATE TABLE kv (
    namespace TEXT NOT NULL, room TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (namespace, room, key)
) WITHOUT ROWID;
CREATE TABLE alarms (
    namespace TEXT NOT NULL, room TEXT NOT NULL, due REAL NOT NULL, retry INTEGER NOT NULL,
    PRIMARY KEY (namespace, room)
) WITHOUT ROWID;
INSERT INTO kv VALUES ('', 'r', 'k', '"before"');
INSERT INTO alarms VALUES ('', 'r', 123.5, 2);
"""


def test_a_file_of_the_previous_schema_keeps_its_data_and_gets_claims(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(PREVIOUS_SCHEMA)
    db.close()
    core = SQLiteCore(path)
    assert core.get_many(ROOM, ["k"]) == {"k": '"before"'}
    assert core.alarms() == [(ROOM, 123.5, 2)]
    claim = core.claim(ROOM, "me")
    assert claim == Claim(ROOM, 1)
    assert core.commit([(claim, Changes({"k2": '"after"'}))]) == []
    core.close()
    core = SQLiteCore(path)
    assert core.list(ROOM, KeyRange(), False, None) == [("k", '"before"'), ("k2", '"after"')]
    core.close()


def test_without_the_lock_a_core_opens_a_file_whose_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "db"
    holder = SQLiteCore(path)  # the supervisor of --workers, say
    worker = SQLiteCore(path, lock=False)
    with pytest.raises(roomkit.StorageError, match="in use by another server"):
        SQLiteCore(path)
    worker.close()
    with pytest.raises(roomkit.StorageError, match="in use by another server"):
        SQLiteCore(path)  # a worker closing leaves the holder's lock alone
    holder.close()


def test_a_commit_waits_for_another_processs_write_to_end(tmp_path: Path) -> None:
    path = tmp_path / "db"
    core = SQLiteCore(path, lock=False)
    claim = core.claim(ROOM, "me")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock for 0.3 s
    releasing = threading.Event()

    def release() -> None:
        releasing.set()
        other.execute("COMMIT")

    ended = threading.Timer(0.3, release)
    ended.start()
    assert core.commit([(claim, Changes({"k": "1"}))]) == []
    assert releasing.is_set()  # the commit ended only once the other's began to
    ended.join()
    other.close()
    core.close()


# One server on a file that another process claims rooms of.


class Diary(roomkit.Room):
    """Stores a visit per handshake and each message (acknowledging it); notes its hooks."""

    hooks: ClassVar[list[str]] = []

    async def on_start(self) -> None:
        self.hooks.append("on_start")

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        self.hooks.append("on_connect")
        await self.storage.put(f"visit {len(self.hooks)}", True)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.hooks.append(f"on_message {message}")
        await self.storage.put(message, True)
        conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        self.hooks.append("on_close")


async def test_a_fenced_room_sends_nothing_it_held_runs_no_hook_and_ends(
    start: Start, tmp_path: Path
) -> None:
    ours = await SQLiteStore.open(tmp_path / "db", lock=False)
    theirs = await SQLiteStore.open(tmp_path / "db", lock=False)  # another process's
    Diary.hooks = []
    server = await start(Diary, storage=ours)
    async with open_client(f"{server.url}/r") as first:  # claims /r: epoch 1
        await first.send_message("one")
        assert await first.get_message() == "one"
        assert await theirs.claim(ROOM, "another process") == Claim(ROOM, 2)
        # A handshake whose on_connect writes waits for that write, which is refused.
        with pytest.raises(trio_websocket.ConnectionRejected) as refused:
            async with open_client(f"{server.url}/r"):
                pass
        assert refused.value.status_code == 503  # come back: to the room's new owner
        close = await expect_close(first)
        assert (close.code, close.reason) == (CloseCode.SERVICE_RESTART, "Room moved")
    with trio.fail_after(5):  # the room ends once its connections are gone
        while server.room_count:  # noqa: ASYNC110 (no event says a room ended)
            await trio.sleep(0.01)
    assert Diary.hooks == ["on_start", "on_connect", "on_message one", "on_connect"]
    assert await theirs.list(ROOM, KeyRange(), reverse=False, limit=None) == [
        ("one", "true"),
        ("visit 2", "true"),
    ]
    async with open_client(f"{server.url}/r") as again:  # a new actor claims /r again
        await again.send_message("two")
        assert await again.get_message() == "two"
    assert await theirs.get_many(ROOM, ["two"]) == {"two": "true"}
    await theirs.aclose()
    await ours.aclose()


# Two server processes on one file.


@contextmanager
def fenced_serve(database: Path, directory: Path) -> Iterator[str]:
    """``tests.fenced_serve`` in a subprocess (see there): its URL once it listens."""
    directory.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fenced_serve", str(database), str(directory)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=roomkit_env(),
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert line.startswith("listening on "), f"the server did not start: {line!r}"
        yield line.split()[-1]
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes ``ws`` (failing on any message): its code and reason."""
    with pytest.raises(ConnectionClosedError) as info:
        message = ws.recv(timeout=10)
        pytest.fail(f"a message came instead of the close: {message!r}")
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def send(ws: ClientConnection, op: str, **args: object) -> None:
    ws.send(json.dumps({"op": op, **args}))


def test_a_process_that_lost_a_room_has_its_writes_refused_and_its_clients_closed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "rooms.sqlite3"
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with fenced_serve(db, a_dir) as a, fenced_serve(db, b_dir) as b:
        with connect(f"{a}/r") as a1, connect(f"{a}/r") as a2, connect(f"{a}/o") as ao:
            assert call(a1, "put", key="k1", value="A") is None  # A claims /r: epoch 1
            assert call(ao, "put", key="o1", value="A") is None
            with connect(f"{b}/r") as b1:  # B claims /r: epoch 2
                assert call(b1, "put", key="k2", value="B") is None
                # One group commit of A's with both rooms: A's committer is held inside a
                # commit of /o while /r's and /o's next writes queue behind it.
                (a_dir / "hold").touch()
                send(ao, "put", key="o2", value="A")
                time.sleep(0.2)
                send(a1, "put", key="k3", value="A")  # under A's stale epoch
                send(ao, "put", key="o3", value="A")
                time.sleep(0.3)
                (a_dir / "hold").unlink()
                assert closed_with(a1) == (CloseCode.SERVICE_RESTART, "Room moved")
                assert closed_with(a2) == (CloseCode.SERVICE_RESTART, "Room moved")
                assert [json.loads(ao.recv(timeout=10))["op"] for _ in range(2)] == ["put"] * 2
                assert call(b1, "put", key="k4", value="B") is None  # B's writes land
                stored = dict(call(b1, "list"))
        commits = [json.loads(line) for line in (a_dir / "commits.jsonl").read_text().splitlines()]
        assert {"rooms": ["/o", "/r"], "refused": ["/r"]} in commits
        assert stored == {"k1": "A", "k2": "B", "k4": "B"}  # never A's k3
        # The room ended in A: a new client there claims it again, after B's (whichever
        # epoch B's room has now), and B is refused in turn.
        with connect(f"{b}/r") as b2, connect(f"{a}/r") as a3:
            assert call(a3, "put", key="k5", value="A") is None
            send(b2, "put", key="k6", value="B")
            assert closed_with(b2) == (CloseCode.SERVICE_RESTART, "Room moved")
            assert dict(call(a3, "list")) == {"k1": "A", "k2": "B", "k4": "B", "k5": "A"}
            with connect(f"{a}/o") as ao2:
                assert dict(call(ao2, "list")) == {"o1": "A", "o2": "A", "o3": "A"}


# The host: only the alarms of its own rooms.


async def test_a_host_schedules_only_the_stored_alarms_of_the_rooms_it_owns() -> None:
    store = await SQLiteStore.open(":memory:")
    due = time.time() + 3600
    for room in (ROOM, OTHER):
        claim = await store.claim(room, "an earlier server")
        assert await store.commit([(claim, Changes(alarm=AlarmWrite(due)))]) == []
    host = Host({}, Router[type[roomkit.Room]](KV), store, Metrics(), True, owns=ROOM.__eq__)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        scheduled = [host.stored_alarm(ROOM), host.stored_alarm(OTHER)]
        timers = host.statistics().timers
        await host.shutdown(CloseCode.GOING_AWAY, 1.0)  # the host's run ends only so
    await store.aclose()
    assert scheduled == [AlarmWrite(due), None]
    assert timers == 1
