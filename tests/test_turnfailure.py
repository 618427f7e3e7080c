"""A connection's own turn that fails once the room has counted it in (the actor's
``_on_connect``): a resumed session whose ``on_resync`` raises, whose replay cannot be
read, or whose commit fails, and a fresh connection whose turn fails after its
``on_connect`` returned. Each ends as every connection the room had does: its handshake
is refused (500), its presence leaves in one diff, and ``on_close`` runs once, with
1011. Over the test kit's in-memory transport on a virtual clock (``autojump_clock``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
from roomkit._core.history import LOG_PREFIX
from roomkit._core.room import RoomCore
from roomkit.storage import Changes, Claim, RoomId, SQLiteStore
from roomkit.storage._sqlite import SQLiteCore
from roomkit.testing import TestClient, TestServer, open_test_server

from .test_storage import GatedStore

V1 = ["roomkit.v1"]
OTHER_EPOCH = "roomkit.epoch=0123456789abcdef&roomkit.seq=0"  # never recovered: on_resync


class Tracked(roomkit.Room):
    """Tracks each connection under its ``user``; records its hooks, and what the room's
    presence held when each on_close ran. ``on_resync`` writes, and raises while
    ``failing`` is set."""

    history = roomkit.History()
    rate_limit = None
    failing: ClassVar[bool] = False
    events: ClassVar[list[tuple[Any, ...]]] = []

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        Tracked.events.append(("connect", conn.id))
        conn.tags = [f"user:{request.query.get('user', 'anon')}"]
        conn.presence = {"here": True}

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(message)

    async def on_resync(self, conn: roomkit.Connection) -> None:
        Tracked.events.append(("resync", conn.id))
        await self.storage.put("resynced", conn.id)
        if Tracked.failing:
            raise RuntimeError("resync failed")

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Tracked.events.append(("error", None if conn is None else conn.id, str(error)))

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Tracked.events.append(("close", conn.id, code, reason, clean, sorted(self.presence())))


class FailingStore(GatedStore):
    """test_storage's GatedStore over SQLite in memory, which fails reads of the room's
    log while ``reads_fail`` is set, and commits while ``commits_fail`` is."""

    def __init__(self) -> None:
        super().__init__(SQLiteStore(SQLiteCore(":memory:"), in_thread=False))
        self.reads_fail = False
        self.commits_fail = False

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        if self.reads_fail and any(key.startswith(LOG_PREFIX) for key in keys):
            raise OSError("disk gone")
        return await super().get_many(room, keys)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        if self.commits_fail:
            raise OSError("disk gone")
        return await super().commit(batch)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Tracked.events.clear()
    Tracked.failing = False


def hooks_of(conn_id: str) -> list[tuple[Any, ...]]:
    return [event for event in Tracked.events if event[1] == conn_id]


async def welcome(client: TestClient) -> dict[str, Any]:
    frame = await client.receive()
    assert frame[0] == "welcome", frame
    body: dict[str, Any] = frame[1]
    return body


@asynccontextmanager
async def with_bob(
    store: FailingStore | None = None,
) -> AsyncIterator[tuple[TestServer, TestClient, str]]:
    """A Tracked room's test server with bob in it (tracked, his own join seen): the
    server, bob's client and his id."""
    async with (
        open_test_server(Tracked, storage=store or FailingStore()) as server,
        server.connect("/r?user=bob", subprotocols=V1) as bob,
    ):
        bob_id = (await welcome(bob))["id"]
        await bob.receive()  # his own join
        yield server, bob, bob_id


async def parked(server: TestServer, watcher: TestClient) -> dict[str, Any]:
    """Connect ann (tracked), see the watcher get her join, and drop her socket."""
    async with server.connect("/r?user=ann", subprotocols=V1) as ann:
        first = await welcome(ann)
        assert (await watcher.receive())[1]["joins"] == {
            "ann": {"metas": [{"here": True, "ref": first["id"]}]}
        }
        await ann.abort()
    await trio.sleep(1)
    return first


async def refused(server: TestServer, path: str) -> int | None:
    """The status a handshake on ``path`` is refused with."""
    with pytest.raises(roomkit.ClientClosed) as refusal:
        async with server.connect(path, subprotocols=V1):
            pass  # pragma: no cover
    return refusal.value.status


async def assert_left_once(watcher: TestClient, first: dict[str, Any], reason: str) -> None:
    """ann's presence left in one diff, and on_close ran once for her, with 1011."""
    assert await watcher.receive() == [
        "presence_diff",
        {"joins": {}, "leaves": {"ann": {"metas": [{"here": True, "ref": first["id"]}]}}},
    ]
    closes = [event for event in hooks_of(first["id"]) if event[0] == "close"]
    assert closes == [("close", first["id"], 1011, reason, False, ["bob"])]
    await trio.sleep(60)  # past the grace it had: nothing runs twice
    assert [event for event in hooks_of(first["id"]) if event[0] == "close"] == closes
    await watcher.receive_nothing()


async def test_a_resume_whose_on_resync_raises_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with with_bob() as (server, bob, _):
        first = await parked(server, bob)
        Tracked.failing = True
        path = f"/r?roomkit.session={first['session']}&{OTHER_EPOCH}"
        assert await refused(server, path) == 500
        assert hooks_of(first["id"])[:3] == [
            ("connect", first["id"]),
            ("resync", first["id"]),
            ("error", first["id"], "resync failed"),
        ]
        await assert_left_once(bob, first, "Internal error")


async def test_a_resume_whose_replay_cannot_be_read_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FailingStore()
    async with with_bob(store) as (server, bob, _):
        first = await parked(server, bob)
        await bob.send("missed")  # logged: ann's resume has it to replay
        assert await bob.receive() == ["m", 1, "missed"]
        store.reads_fail = True
        path = f"/r?roomkit.session={first['session']}&roomkit.epoch={first['epoch']}"
        assert await refused(server, f"{path}&roomkit.seq=0") == 500
        assert hooks_of(first["id"])[1] == ("error", first["id"], "disk gone")
        await assert_left_once(bob, first, "Internal error")


async def test_a_resume_whose_commit_fails_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The room resets (every connection closed with 1011 "Storage failure"), and its
    next instance hears the refused session leave, as it hears the others."""
    store = FailingStore()
    async with with_bob(store) as (server, bob, bob_id):
        first = await parked(server, bob)
        store.commits_fail = True  # on_resync's write will not land
        path = f"/r?roomkit.session={first['session']}&{OTHER_EPOCH}"
        assert await refused(server, path) == 500
        assert await bob.receive_close() == (1011, "Storage failure")
        store.commits_fail = False
        await trio.sleep(1)
        closes = {event[1]: event[2:5] for event in Tracked.events if event[0] == "close"}
        assert closes == {
            first["id"]: (1011, "Storage failure", False),
            bob_id: (1011, "Storage failure", True),  # closed by the reset, and answered
        }
        await trio.sleep(60)  # past ann's grace: nothing more
        assert len([event for event in Tracked.events if event[0] == "close"]) == 2


async def test_a_resume_that_roomkit_fails_after_its_turn_ends_the_session(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """roomkit's own code fails once the resume has taken the session over (nothing
    public provokes that: the test makes the idle sweep's newcomer check raise, which
    runs after the turn, while on_resync's write holds the handshake): refused with
    500, and the session ends as a failed turn's."""
    async with with_bob() as (server, bob, _):
        first = await parked(server, bob)

        def fails(self: object, member: object) -> float | None:
            raise RuntimeError("a bug of roomkit's")

        monkeypatch.setattr(RoomCore, "joined", fails)
        path = f"/r?roomkit.session={first['session']}&{OTHER_EPOCH}"
        assert await refused(server, path) == 500
        monkeypatch.undo()
        await assert_left_once(bob, first, "Internal error")
        assert "handling Connect failed" in caplog.text


async def test_a_fresh_connect_whose_turn_fails_after_on_connect_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_connect returned (the room counted it in), then on_resync raised: refused,
    and on_close undoes what on_connect counted."""
    async with with_bob() as (server, bob, _):
        Tracked.failing = True
        assert await refused(server, f"/r?user=ann&{OTHER_EPOCH}") == 500
        (connect, resync, error, close) = Tracked.events[-4:]
        ann_id = connect[1]
        assert (resync, error[:2]) == (("resync", ann_id), ("error", ann_id))
        assert close == ("close", ann_id, 1011, "Internal error", False, ["bob"])
        await bob.receive_nothing()  # its join and leave in one turn: nothing to tell


async def test_a_fresh_connect_whose_on_connect_raises_is_not_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """on_connect did not return: the room never counted it in, so no on_close."""

    class Raising(Tracked):
        async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
            Tracked.events.append(("connect", conn.id))
            raise RuntimeError("no")

    async with open_test_server(Raising) as server:
        assert await refused(server, "/r") == 500
        assert [event[0] for event in Tracked.events] == ["connect", "error"]
