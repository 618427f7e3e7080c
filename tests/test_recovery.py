"""Sessions that resume and the broadcasts a client missed (docs/recovery.md), over the
test kit's in-memory transport on a virtual clock (``autojump_clock``): the issue's
"Done when" list for recovery, and the cases the peers got wrong (socket.io #5538,
#5282, #4880). tests/test_recovery_sockets.py has the same over real sockets with a
client roomkit did not write.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.lowlevel
import trio.testing

import roomkit
from roomkit.storage import Changes, Claim, KeyRange, RoomId, SQLiteStore, Store
from roomkit.testing import TestClient, TestServer, open_test_server

V1 = ["roomkit.v1"]


class Chat(roomkit.Room):
    """Broadcasts what it is told to, and records its hooks (class-wide: instances come
    and go with hibernation).

    Messages: ``b:<text>`` broadcast, ``t:<tag>:<text>`` to a tag, ``x:<text>`` to all
    but the sender, ``v:<text>`` volatile, ``bin:<text>`` as bytes, ``me`` what the room
    knows of the sender (its id, tags and attachment), ``state`` whose state is what.
    """

    history = roomkit.History()
    rate_limit = None
    auto_response = ("ping", "pong")
    events: ClassVar[list[tuple[Any, ...]]] = []
    known: ClassVar[dict[str, roomkit.Connection]] = {}

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        Chat.events.append(("connect", conn.id, dict(request.query)))
        Chat.known[conn.id] = conn
        if "tag" in request.query:
            conn.tags = [request.query["tag"]]
        conn.attachment = {"name": request.query.get("name", "")}
        if "hello" in request.query:
            conn.send(request.query["hello"])
        if "announce" in request.query:
            self.broadcast(request.query["announce"])
        if "shun" in request.query:  # to all but itself, before its welcome
            self.broadcast(request.query["shun"], exclude=conn)

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if isinstance(message, bytes):
            return
        kind, _, text = message.partition(":")
        if kind == "b":
            self.broadcast(text)
        elif kind == "t":
            tag, _, text = text.partition(":")
            self.broadcast(text, tag=tag)
        elif kind == "x":
            self.broadcast(text, exclude=conn)
        elif kind == "v":
            self.broadcast(text, volatile=True)
        elif kind == "bin":
            self.broadcast(text.encode())
        elif kind == "me":
            conn.send(json.dumps({"id": conn.id, "tags": conn.tags, "att": conn.attachment}))
        elif kind == "state":
            conn.send(Chat.known[text].state.value)
        elif kind == "kick":
            Chat.known[text].close(4003, "banned")
        elif kind == "count":
            conn.send(json.dumps([c.id for c in self.connections()]))
        elif kind == "boom":
            self.broadcast(text)
            raise RuntimeError("boom")
        elif kind == "undo":  # a broadcast inside a block whose writes are rolled back
            async with self.storage.transaction() as block:
                await self.storage.put("undone", text)
                self.broadcast(text)
                block.rollback()

    async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
        Chat.events.append(("error", None if conn is None else conn.id, str(error)))

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Chat.events.append(("close", conn.id, code, clean))

    async def on_resync(self, conn: roomkit.Connection) -> None:
        Chat.events.append(("resync", conn.id))
        await super().on_resync(conn)


@pytest.fixture(autouse=True)
def _fresh_events() -> None:
    Chat.events.clear()
    Chat.known.clear()


def hooks_of(conn_id: str) -> list[str]:
    return [event[0] for event in Chat.events if event[1] == conn_id]


async def welcome(client: TestClient) -> dict[str, Any]:
    frame = await client.receive()
    assert frame[0] == "welcome", frame
    body: dict[str, Any] = frame[1]
    return body


def resume_path(w: dict[str, Any], seq: int | None = None, *, token: bool = True) -> str:
    params = []
    if token:
        params.append(f"roomkit.session={w['session']}")
    params.append(f"roomkit.epoch={w['epoch']}&roomkit.seq={w['seq'] if seq is None else seq}")
    return "/lobby?" + "&".join(params)


async def say(feeder: TestClient, *texts: str) -> None:
    """Have the plain client ``feeder`` broadcast each of ``texts``, and see them out."""
    for text in texts:
        await feeder.send(f"b:{text}")
        assert await feeder.receive() == (int(text) if text.isdigit() else text)


async def parked(server: TestServer) -> dict[str, Any]:
    """The welcome of a roomkit.v1 client of ``/lobby`` whose connection then broke
    (1006): once the room has seen it end, its session is parked."""
    async with server.connect("/lobby", subprotocols=V1) as client:
        first = await welcome(client)
        await client.abort()
        await trio.sleep(1)
    return first


@asynccontextmanager
async def chat(**options: Any) -> AsyncIterator[TestServer]:
    async with open_test_server(Chat, **options) as server:
        yield server


@asynccontextmanager
async def fed_ann() -> AsyncIterator[tuple[TestServer, TestClient, TestClient, dict[str, Any]]]:
    """A ``Chat`` room with a plain ``feeder`` (to broadcast), and ann over roomkit.v1:
    her welcome read."""
    async with (
        chat() as server,
        server.connect("/lobby") as feeder,
        server.connect("/lobby", subprotocols=V1) as ann,
    ):
        yield server, feeder, ann, await welcome(ann)


async def test_exactly_the_missed_messages_after_a_dropped_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby?name=ann&tag=red", subprotocols=V1) as ann:
            assert ann.subprotocol == "roomkit.v1"
            first = await welcome(ann)
            assert first["resumed"] is False and first["recovered"] is None
            assert first["seq"] == 0 and len(first["epoch"]) == 16
            await say(feeder, "1", "2", "3")
            for seq in (1, 2, 3):
                assert await ann.receive() == ["m", seq, str(seq)]
            await ann.abort()
            await trio.sleep(1)  # the room sees the socket end: the session parks
            await say(feeder, *map(str, range(4, 11)))
        async with server.connect(resume_path(first, 3), subprotocols=V1) as back:
            again = await welcome(back)
            assert again["id"] == first["id"]
            assert again["resumed"] is True and again["recovered"] is True
            assert again["seq"] == 10 and again["session"] != first["session"]
            assert [await back.receive() for _ in range(7)] == [
                ["m", seq, str(seq)] for seq in range(4, 11)
            ]
            await say(feeder, "11")
            assert await back.receive() == ["m", 11, "11"]
            await back.send("me")
            me = json.loads((await back.receive())[2])
            assert me == {"id": first["id"], "tags": ["red"], "att": {"name": "ann"}}
            await back.receive_nothing()
            assert hooks_of(first["id"]) == ["connect"]  # on_connect ran once, no close


async def test_a_hook_that_raises_takes_its_numbers_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        chat() as server,
        server.connect("/lobby", subprotocols=V1) as ann,
        server.connect("/lobby", subprotocols=V1) as bob,
    ):
        first = await welcome(ann)
        await welcome(bob)
        await ann.send("b:one")
        await ann.send("boom:never")  # dropped with its log entry: no hole in the numbers
        await ann.send("b:two")
        assert [await bob.receive(), await bob.receive()] == [["m", 1, "one"], ["m", 2, "two"]]
        await bob.abort()
        await trio.sleep(1)
        async with server.connect(resume_path(first, 0, token=False), subprotocols=V1) as late:
            assert (await welcome(late))["recovered"] is True
            assert [await late.receive(), await late.receive()] == [
                ["m", 1, "one"],
                ["m", 2, "two"],
            ]
            await late.receive_nothing()


async def test_a_resume_with_zero_events_seen(autojump_clock: trio.testing.MockClock) -> None:
    """socket.io #5538: a client that saw no event still recovers everything since."""
    async with chat() as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await say(feeder, "1", "2")
        async with server.connect(resume_path(first, 0), subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"], again["seq"]) == (True, True, 2)
            assert [await back.receive() for _ in range(2)] == [["m", 1, "1"], ["m", 2, "2"]]
            await back.receive_nothing()


class SmallLog(Chat):
    history = roomkit.History(max_count=100, max_age=30.0, max_replay=5)
    session_grace = 60.0


@pytest.mark.parametrize("why", ["max_replay", "max_age", "epoch", "ahead"])
async def test_a_gap_too_large_resyncs_with_nothing_replayed(
    autojump_clock: trio.testing.MockClock, why: str
) -> None:
    async with open_test_server(SmallLog) as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await say(feeder, *map(str, range(1, 7 if why == "max_replay" else 3)))
        if why == "max_age":
            await trio.sleep(31)  # the log ages out: a position before it cannot recover
            await say(feeder, "x")
        asked = dict(first)
        if why == "epoch":
            asked["epoch"] = "0" * 16
        if why == "ahead":
            asked["seq"] = 99  # a position the room never reached
        async with server.connect(resume_path(asked), subprotocols=V1) as back:
            again = await welcome(back)
            assert again["resumed"] is True and again["recovered"] is False
            assert again["epoch"] == first["epoch"]
            await back.send("me")  # the default on_resync ran on_connect: it set the name anew
            reply = await back.receive()
            assert reply[0:2] == ["m", None]
            await back.receive_nothing()
        assert hooks_of(first["id"]) == ["connect", "resync", "connect", "close"]


async def test_an_idle_client_whose_position_aged_out_is_recovered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """socket.io #5282: nothing new since, so nothing is missing, however old the log."""
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            await welcome(ann)
            await say(feeder, "1")
            assert await ann.receive() == ["m", 1, "1"]
            await trio.sleep(500)  # past max_age: entry 1 is stale
        async with server.connect("/lobby", subprotocols=V1) as other:
            w = await welcome(other)
        async with server.connect(resume_path(w, 1, token=False), subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"]) == (False, True)
            await back.receive_nothing()
    assert [e[0] for e in Chat.events if e[0] == "resync"] == []


async def test_tags_exclusion_and_volatile_in_a_replay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby?tag=red", subprotocols=V1) as ann:
            first = await welcome(ann)
            await ann.send("x:not for ann")  # excluded: ann never gets it, live or replayed
            await feeder.receive()
            await ann.abort()
            await trio.sleep(1)
            for message in ("t:red:for red", "t:blue:for blue", "v:volatile", "b:for all"):
                await feeder.send(message)
            assert await feeder.receive() == "volatile"  # live, to all
            assert await feeder.receive() == "for all"
            await feeder.send("bin:binary")
            assert await feeder.receive() == b"binary"
        async with server.connect(resume_path(first, 0), subprotocols=V1) as back:
            again = await welcome(back)
            assert again["recovered"] is True and again["seq"] == 5
            assert await back.receive() == ["m", 2, "for red"]
            assert await back.receive() == ["m", 4, "for all"]
            assert await back.receive() == (5).to_bytes(8, "big") + b"binary"
            await back.receive_nothing()


async def test_a_storm_of_broadcasts_during_a_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Another client broadcasts without pause while one resumes: the resumed client's
    seqs run on without a hole or a duplicate."""
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            first = await welcome(ann)
            await ann.abort()
        sent = 0

        async def storm() -> None:
            nonlocal sent
            while sent < 300:
                sent += 1
                await feeder.send(f"b:{sent}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(storm)
            await trio.lowlevel.checkpoint()
            async with server.connect(resume_path(first, 0), subprotocols=V1) as back:
                again = await welcome(back)
                assert again["recovered"] is True
                assert 0 < again["seq"] < 300  # some replayed, the rest live
                seen = []
                while not seen or seen[-1] < 300:
                    frame = await back.receive()
                    seen.append(frame[1])
        assert seen == list(range(1, 301))


async def test_a_late_ping_timeout_of_the_old_connection_does_not_break_the_new_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """socket.io #4880: the old socket, silently dead, ends after the resume."""
    async with fed_ann() as (server, feeder, ann, first):
        ann.freeze()  # its network vanished: the room has not noticed
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            again = await welcome(back)
            assert again["resumed"] is True and again["id"] == first["id"]
            await trio.sleep(120)  # every ping deadline of the old socket passes
            await say(feeder, "1")
            assert await back.receive() == ["m", 1, "1"]
            await feeder.send("count")
            assert (await feeder.receive())[-1] == first["id"]
            assert hooks_of(first["id"]) == ["connect"]


async def test_grace_expiry_runs_on_close_1006_once(autojump_clock: trio.testing.MockClock) -> None:
    async with chat() as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await feeder.send("count")  # parked: not among connections()
        assert len(await feeder.receive()) == 1
        assert hooks_of(first["id"]) == ["connect"]
        await trio.sleep(15)
        assert Chat.events[-1] == ("close", first["id"], 1006, False)
        await trio.sleep(60)
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            again = await welcome(back)  # too late: a fresh connect, recovered by seq
            assert (again["resumed"], again["recovered"]) == (False, True)
            assert again["id"] != first["id"]
        assert hooks_of(first["id"]) == ["connect", "close"]


async def test_a_fresh_connect_replays_by_the_tags_its_on_connect_sets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past its grace, a client comes back as a new connection: on_connect tags it
    before the replay is filtered, and what on_connect sends follows the replay (its
    broadcast live, once: the welcome's head is the one before it)."""
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby?tag=red", subprotocols=V1) as ann:
            first = await welcome(ann)
            await ann.abort()
            await trio.sleep(60)  # past the grace: the session is over
            for message in ("t:red:for red", "t:blue:for blue"):
                await feeder.send(message)
        back_path = resume_path(first, 0).replace("?", "?tag=red&hello=hi&announce=back&", 1)
        async with server.connect(back_path, subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"], again["seq"]) == (False, True, 2)
            assert await back.receive() == ["m", 1, "for red"]
            assert await back.receive() == ["m", None, "hi"]
            assert await back.receive() == ["m", 3, "back"]
            await back.receive_nothing()
            assert await feeder.receive() == "back"
        assert hooks_of(first["id"]) == ["connect", "close"]


async def test_closing_a_parked_session_ends_it(autojump_clock: trio.testing.MockClock) -> None:
    """A kick of a parked session spends its token: its client comes back a stranger."""
    async with chat() as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await feeder.send(f"kick:{first['id']}")
        await feeder.send(f"state:{first['id']}")
        assert await feeder.receive() == "closed"
        assert Chat.events[-1] == ("close", first["id"], 4003, True)
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            again = await welcome(back)
            assert again["resumed"] is False and again["id"] != first["id"]
            assert hooks_of(again["id"]) == ["connect"]
            await trio.sleep(60)  # the grace it had is long over: nothing runs twice
        assert hooks_of(first["id"]) == ["connect", "close"]


class Tiny(Chat):
    max_send_queue = 4096


async def test_a_replay_too_big_for_the_send_queue_resyncs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A replay the send queue could not hold would be cut with 1008, and the client
    would come back for it for ever: past half the queue, it resyncs instead."""
    async with open_test_server(Tiny) as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await say(feeder, *(f"{n}{'x' * 600}" for n in range(3)))
        async with server.connect(resume_path(first, 0), subprotocols=V1) as small:
            assert (await welcome(small))["recovered"] is True  # 3 frames fit in half the queue
            assert [(await small.receive())[1] for _ in range(3)] == [1, 2, 3]
        second = await parked(server)
        await say(feeder, *(f"{n}{'x' * 600}" for n in range(4)))
        async with server.connect(resume_path(second, 0), subprotocols=V1) as big:
            again = await welcome(big)  # 7 would not even fit the queue: none replayed
            assert (again["resumed"], again["recovered"]) == (True, False)
            await big.send("me")
            assert (await big.receive())[0:2] == ["m", None]
            await big.receive_nothing()
        assert hooks_of(second["id"]) == ["connect", "resync", "connect", "close"]


class Small(Chat):
    max_connections = 1
    session_grace = 60.0


async def test_a_resume_into_a_full_room_takes_its_own_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Small) as server:
        first = await parked(server)
        with pytest.raises(roomkit.ClientClosed) as refused:  # its parked session's place
            async with server.connect("/lobby", subprotocols=V1):
                pass  # pragma: no cover
        assert refused.value.status == 503
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            assert (await welcome(back))["resumed"] is True


async def test_a_token_used_twice_is_a_fresh_connect_the_second_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with chat() as server:
        first = await parked(server)
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            assert (await welcome(back))["resumed"] is True
        async with server.connect(resume_path(first), subprotocols=V1) as twice:
            again = await welcome(twice)
            assert again["resumed"] is False and again["id"] != first["id"]


async def test_a_clean_close_does_not_park(autojump_clock: trio.testing.MockClock) -> None:
    async with chat() as server:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            first = await welcome(ann)
        assert Chat.events[-1] == ("close", first["id"], 1000, True)
        async with server.connect(resume_path(first), subprotocols=V1) as back:
            assert (await welcome(back))["resumed"] is False


async def test_resumes_across_hibernation(autojump_clock: trio.testing.MockClock) -> None:
    async with chat() as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            first = await welcome(ann)
            await say(feeder, "1")
            await ann.abort()
            await trio.sleep(1)
            await say(feeder, "2", "3")
            await server.hibernate("lobby")
            assert server.room("lobby") is None
        async with server.connect(resume_path(first, 1), subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"]) == (True, True)
            assert [await back.receive() for _ in range(2)] == [["m", 2, "2"], ["m", 3, "3"]]


async def test_resumes_across_a_restart(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """No parked session survives a restart: a fresh connect (on_connect runs), and the
    log, in the SQLite file, recovers exactly the missed ones by epoch and seq."""
    path = tmp_path / "rooms.sqlite3"
    async with (
        chat(storage=path) as server,
        server.connect("/lobby") as feeder,
        server.connect("/lobby", subprotocols=V1) as ann,
    ):
        first = await welcome(ann)
        await say(feeder, "1")
        await ann.abort()
        await trio.sleep(1)
        await say(feeder, "2", "3")
    Chat.events.clear()
    async with (
        chat(storage=path) as server,
        server.connect(resume_path(first, 1), subprotocols=V1) as back,
    ):
        again = await welcome(back)
        assert (again["resumed"], again["recovered"]) == (False, True)
        assert again["epoch"] == first["epoch"] and again["seq"] == 3
        assert [await back.receive() for _ in range(2)] == [["m", 2, "2"], ["m", 3, "3"]]
        await back.receive_nothing()
    assert [e[0] for e in Chat.events] == ["connect", "close"]


async def test_plain_clients_see_the_frames_they_always_saw(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        chat() as server,
        server.connect("/lobby?hello=hi&roomkit.seq=3&roomkit.epoch=x") as plain,
    ):
        assert plain.subprotocol is None
        assert await plain.receive_text() == "hi"
        await plain.send("b:one")
        assert await plain.receive_text() == "one"
        await plain.send("bin:two")
        assert await plain.receive() == b"two"
        await plain.send("v:three")
        assert await plain.receive_text() == "three"
    # roomkit's parameters never reach the room; the room's own do
    assert Chat.events[0][2] == {"hello": "hi"}


async def test_the_route_hook_never_sees_roomkits_parameters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked: list[dict[str, str]] = []

    def route(request: roomkit.Request) -> None:
        asked.append(dict(request.query))

    target = "/lobby?hello=hi&roomkit.seq=3&roomkit.epoch=0123456789abcdef"
    async with chat(route=route) as server, server.connect(target, subprotocols=V1) as ann:
        await welcome(ann)
    assert asked == [{"hello": "hi"}]


async def test_conn_send_and_roomkit_replies_are_unlogged_in_the_envelope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Limited(Chat):
        rate_limit = roomkit.RateLimit(per_second=1, burst=1)

    async with (
        open_test_server(Limited) as server,
        server.connect("/lobby?hello=hi", subprotocols=V1) as ann,
    ):
        await welcome(ann)
        assert await ann.receive() == ["m", None, "hi"]
        await ann.send("b:one")
        await ann.send("b:two")  # no token: dropped, and answered by roomkit
        # the reply goes out at once, the broadcast once its log entry is durable
        frames = [await ann.receive(), await ann.receive()]
        logged, reply = sorted(frames, key=lambda frame: frame[1] is None)
        assert logged == ["m", 1, "one"]
        assert reply[0:2] == ["m", None]
        assert json.loads(reply[2])["code"] == "rate_limited"


class Keeper(Chat):
    """Stores what it is told, and says what its storage lists."""

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if message == "keys":
            conn.send(json.dumps(list(await self.storage.list())))
        elif message == "wipe":
            await self.storage.delete_all()
            self.broadcast("wiped")
        elif message.startswith("reserved:"):
            try:
                await getattr(self, "_" + message.partition(":")[2])()
            except ValueError as exc:
                conn.send(f"refused: {exc}")
        else:
            await self.storage.put("k", message)
            await super().on_message(conn, message)

    async def _put(self) -> None:
        await self.storage.put("\U0010ffffmeta", 1)

    async def _get(self) -> None:
        await self.storage.get("\U0010fffflog:0000000000000001")

    async def _delete(self) -> None:
        await self.storage.delete("\U0010ffffx")

    async def _list(self) -> None:
        await self.storage.list(start="\U0010ffff")


async def test_the_log_is_out_of_the_rooms_reach(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_test_server(Keeper) as server,
        server.connect("/lobby", subprotocols=V1) as ann,
    ):
        first = await welcome(ann)
        await ann.send("b:one")
        assert await ann.receive() == ["m", 1, "one"]
        await ann.send("keys")  # the log's meta and entry are stored, and never listed
        assert await ann.receive() == ["m", None, '["k"]']
        for what in ("put", "get", "delete", "list"):
            await ann.send(f"reserved:{what}")
            reply = await ann.receive()
            assert reply[0:2] == ["m", None] and "reserved for roomkit" in reply[2], reply
        await ann.send("wipe")  # clears the log too: the next logged broadcast is 1 again
        assert await ann.receive() == ["m", 1, "wiped"]
        async with server.connect(resume_path(first, 1, token=False), subprotocols=V1) as late:
            again = await welcome(late)  # the old epoch is gone: a resync
            assert again["recovered"] is False and again["epoch"] != first["epoch"]
            assert again["seq"] == 1


class Unlogged(roomkit.Room):
    auto_response = ("ping", "pong")

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        self.broadcast(message)


async def test_a_room_without_history_envelopes_without_numbers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        open_test_server(Unlogged) as server,
        server.connect("/lobby", subprotocols=V1) as ann,
    ):
        first = await welcome(ann)
        assert (first["epoch"], first["seq"], first["recovered"]) == (None, None, None)
        await ann.send("hi")
        assert await ann.receive() == ["m", None, "hi"]
        await ann.send(b"bytes")
        assert await ann.receive() == bytes(8) + b"bytes"
        await ann.send("ping")  # answered by the connection itself, enveloped
        assert await ann.receive() == ["m", None, "pong"]
        asked = "/lobby?roomkit.epoch=0123456789abcdef&roomkit.seq=0"
        async with server.connect(asked, subprotocols=V1) as late:
            assert (await welcome(late))["recovered"] is False  # nothing to recover from


class Doorman(SmallLog):
    """Turns everyone away once ``closed`` is set: a resync's on_connect then rejects."""

    closed = False

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if Doorman.closed:
            raise roomkit.Reject(403, "closed for the night")
        await super().on_connect(conn, request)


async def test_a_reject_in_the_default_on_resync_closes_with_1008(
    autojump_clock: trio.testing.MockClock,
) -> None:
    Doorman.closed = False
    async with open_test_server(Doorman) as server, server.connect("/lobby") as feeder:
        first = await parked(server)
        await say(feeder, *map(str, range(1, 7)))  # more than max_replay
        Doorman.closed = True
        async with server.connect(resume_path(first, 0), subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"]) == (True, False)
            assert await back.receive_close() == (1008, "closed for the night")


async def test_a_broadcast_in_a_rolled_back_block_keeps_its_number(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with fed_ann() as (server, feeder, ann, _):
        await feeder.send("undo:X")  # the block's own write is undone, not its broadcast's
        assert await ann.receive() == ["m", 1, "X"]
        assert await feeder.receive() == "X"
        await server.hibernate("lobby")  # the log is read again from storage
        await say(feeder, "Y")
        assert await ann.receive() == ["m", 2, "Y"]  # not 1 again: no client drops it


@pytest.mark.parametrize("how", ["grace", "restart", "resumed_then_restart"])
async def test_an_excluded_broadcast_stays_out_of_its_senders_next_connections(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, how: str
) -> None:
    """``exclude=conn`` leaves out conn's session, not only its id: its client, back
    as a new connection (after its grace, or a restart) with its old token, does not
    get its own message replayed; another client that missed it does."""
    path = tmp_path / "rooms.sqlite3"
    async with chat(storage=path) as server, server.connect("/lobby") as feeder:
        async with (
            server.connect("/lobby", subprotocols=V1) as ann,
            server.connect("/lobby", subprotocols=V1) as bob,
        ):
            mine, other = await welcome(ann), await welcome(bob)
            await bob.abort()
            await ann.send("x:not for ann")
            assert await feeder.receive() == "not for ann"
            await ann.abort()
            await trio.sleep(1)
        if how == "resumed_then_restart":  # the session goes on under a new token
            async with server.connect(resume_path(mine, 0), subprotocols=V1) as back:
                resumed = await welcome(back)
                assert (resumed["resumed"], resumed["recovered"]) == (True, True)
                await back.receive_nothing()
                await back.abort()
                await trio.sleep(1)
            mine = {**resumed, "seq": 0}  # it has seen nothing since
        if how == "grace":
            await trio.sleep(60)
            await back_as_strangers(server, mine, other)
    if how != "grace":
        async with chat(storage=path) as server:
            await back_as_strangers(server, mine, other)


@pytest.mark.parametrize("how", ["resumed", "grace", "restart"])
async def test_a_broadcast_excluding_its_connection_in_on_connect_is_never_replayed_to_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, how: str
) -> None:
    """on_connect broadcasts to all but its connection before the welcome names the
    session: the session is still left out, when it resumes, and when its client comes
    back as a new connection after its grace or a restart; one that missed it gets it."""
    path = tmp_path / "rooms.sqlite3"
    async with chat(storage=path) as server, server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as bob:
            other = await welcome(bob)
            await bob.abort()
        async with server.connect("/lobby?shun=not+for+ann", subprotocols=V1) as ann:
            mine = await welcome(ann)
            assert mine["seq"] == 0  # the position before its on_connect: the rest is live
            assert await feeder.receive() == "not for ann"
            await ann.receive_nothing()
            await ann.abort()
        await trio.sleep(1)
        if how == "resumed":
            async with server.connect(resume_path(mine), subprotocols=V1) as back:
                again = await welcome(back)
                assert (again["resumed"], again["recovered"], again["seq"]) == (True, True, 1)
                await back.receive_nothing()
        if how == "grace":
            await trio.sleep(60)
            await back_as_strangers(server, mine, other)
    if how == "restart":
        async with chat(storage=path) as server:
            await back_as_strangers(server, mine, other)


async def back_as_strangers(
    server: TestServer, mine: dict[str, Any], other: dict[str, Any]
) -> None:
    """Ann and bob come back as new connections with their tokens: only bob gets the
    broadcast that left ann out."""
    async with server.connect(resume_path(mine, 0), subprotocols=V1) as ann:
        again = await welcome(ann)
        assert (again["resumed"], again["recovered"], again["seq"]) == (False, True, 1)
        await ann.receive_nothing()
    async with server.connect(resume_path(other, 0), subprotocols=V1) as bob:
        assert (await welcome(bob))["recovered"] is True
        assert await bob.receive() == ["m", 1, "not for ann"]


LOBBY = RoomId("", "lobby")
META = "\U0010ffffmeta"
ENTRIES = KeyRange("\U0010fffflog:", "\U0010fffflog;")


def entry_key(seq: int) -> str:
    return f"\U0010fffflog:{seq:016x}"


class Watched(Store):
    """A store that records the reserved keys each read asks for."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.read: list[str] = []  # keys read one by one
        self.listed: list[KeyRange] = []  # ranges listed

    async def claim(self, room: RoomId, owner: str) -> Claim:
        return await self.inner.claim(room, owner)

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        self.read += [key for key in keys if key.startswith("\U0010ffff")]
        return await self.inner.get_many(room, keys)

    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> list[tuple[str, str]]:
        self.listed.append(keys)
        return await self.inner.list(room, keys, reverse=reverse, limit=limit)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> list[roomkit.FencedError]:
        return await self.inner.commit(batch)

    async def alarms(self) -> list[tuple[RoomId, float, int]]:
        return await self.inner.alarms()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def stored(self) -> dict[int, dict[str, Any]]:
        """The log's entries as the store holds them, by seq."""
        rows = await self.inner.list(LOBBY, ENTRIES, reverse=False, limit=None)
        return {int(key[-16:], 16): json.loads(text) for key, text in rows}

    async def meta(self) -> dict[str, Any]:
        found = await self.inner.get_many(LOBBY, [META])
        meta: dict[str, Any] = json.loads(found[META])
        return meta


@asynccontextmanager
async def watched(room: type[roomkit.Room]) -> AsyncIterator[tuple[TestServer, Watched]]:
    store = Watched(await SQLiteStore.open(":memory:"))
    async with open_test_server(room, storage=store) as server:
        yield server, store


class Counted(Chat):
    history = roomkit.History(max_count=5, max_age=60.0, max_replay=100)


async def test_a_wake_reads_the_meta_alone_and_a_replay_the_entries_it_needs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with watched(Counted) as (server, store), server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            first = await welcome(ann)
            await say(feeder, "1", "2", "3")
            assert [(await ann.receive())[1] for _ in range(3)] == [1, 2, 3]
            await ann.abort()
            await trio.sleep(1)
            await say(feeder, "4", "5")
        await server.hibernate("lobby")
        store.read.clear()
        store.listed.clear()
        await say(feeder, "6")  # wakes the room
        assert store.read == [META] and store.listed == []
        async with server.connect(resume_path(first, 3), subprotocols=V1) as back:
            assert (await welcome(back))["recovered"] is True
            assert [(await back.receive())[1] for _ in range(3)] == [4, 5, 6]
        assert store.read == [META, entry_key(4), entry_key(5), entry_key(6)]
        assert store.listed == []


async def test_trimming_deletes_the_stored_entries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with watched(Counted) as (server, store), server.connect("/lobby") as feeder:
        await say(feeder, *map(str, range(1, 9)))  # beyond max_count 5
        assert sorted(await store.stored()) == [4, 5, 6, 7, 8]
        await server.hibernate("lobby")  # trimming goes on from the meta alone
        await say(feeder, "9")
        assert sorted(await store.stored()) == [5, 6, 7, 8, 9]
        await trio.sleep(70)  # max_age 60: all of them age out
        await server.hibernate("lobby")
        await say(feeder, "10")
        assert sorted(await store.stored()) == [10]
        meta = await store.meta()
        assert (meta["v"], meta["head"], meta["first"]) == (2, 10, 10)
        assert len(meta["marks"]) == 1


async def test_the_meta_stays_small_however_many_entries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Big(Chat):
        history = roomkit.History(max_count=10_000, max_age=100.0)

    async with watched(Big) as (server, store), server.connect("/lobby") as feeder:
        for n in range(400):
            await say(feeder, str(n))
            await trio.sleep(0.5)  # 200 s of broadcasts: twice max_age
        meta = await store.meta()
        assert meta["head"] == 400 and len(meta["marks"]) <= 17
        stored = await store.stored()
        # every entry is deleted between max_age and max_age * 17/16 after it was logged
        now = stored[400]["t"]
        assert all(now - value["t"] < 100.0 * 17 / 16 for value in stored.values())
        assert len(stored) > 200  # none younger than max_age is deleted
        assert sorted(stored) == list(range(meta["first"], 401))


async def test_a_broadcast_too_big_to_log_goes_out_and_resyncs_who_missed_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with watched(Chat) as (server, store), server.connect("/lobby") as feeder:
        first = await parked(server)
        big = "é" * 40_000  # 80,000 bytes of UTF-8: past the 64 KiB an entry may hold
        await feeder.send(f"b:{big}")
        assert await feeder.receive() == big
        await say(feeder, "after")
        stored = await store.stored()
        assert stored[1] == {"t": stored[1]["t"], "cut": True} and stored[2]["text"] == "after"
        async with server.connect(resume_path(first, 0), subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["resumed"], again["recovered"]) == (True, False)
        async with server.connect(resume_path(first, 1, token=False), subprotocols=V1) as late:
            assert (await welcome(late))["recovered"] is True
            assert await late.receive() == ["m", 2, "after"]


def test_max_count_has_a_bound() -> None:
    assert roomkit.History(max_count=10_000).max_count == 10_000
    with pytest.raises(ValueError, match=r"History\.max_count is at most 10000 entries, not 10001"):
        roomkit.History(max_count=10_001)


async def test_a_log_of_the_first_format_is_read_and_rewritten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A log a roomkit before the meta's index wrote: its meta was the epoch and the
    head, and its entries had no sessions. The room reads it whole once, recovers from
    it, and writes the meta anew with its next broadcast."""
    inner = await SQLiteStore.open(":memory:")
    claim = await inner.claim(LOBBY, "old")
    epoch, t = "0123456789abcdef", time.time()
    old = {
        META: json.dumps({"epoch": epoch, "head": 3}),
        **{
            entry_key(seq): json.dumps({"t": t, "tag": None, "x": [], "text": f"old {seq}"})
            for seq in (2, 3)  # 1 was trimmed
        },
    }
    await inner.commit([(claim, Changes(old))])
    store = Watched(inner)
    async with open_test_server(Chat, storage=store) as server:
        asked = f"/lobby?roomkit.epoch={epoch}&roomkit.seq=1"
        async with server.connect(asked, subprotocols=V1) as back:
            again = await welcome(back)
            assert (again["epoch"], again["seq"], again["recovered"]) == (epoch, 3, True)
            assert [await back.receive() for _ in range(2)] == [
                ["m", 2, "old 2"],
                ["m", 3, "old 3"],
            ]
            assert store.listed == [ENTRIES]  # the old log, read once
            await back.send("b:new")
            assert await back.receive() == ["m", 4, "new"]
        assert await store.meta() == {
            "v": 2,
            "epoch": epoch,
            "head": 4,
            "first": 2,
            "marks": [[2, t]],  # 4 was logged within a step (120 s / 16) of 2
        }
        asked = f"/lobby?roomkit.epoch={epoch}&roomkit.seq=0"
        async with server.connect(asked, subprotocols=V1) as late:
            assert (await welcome(late))["recovered"] is False  # 1 is gone


class Undoer(Chat):
    """``wipe:<before>:<after>``: in a block it rolls back, broadcasts ``before`` (if
    any), deletes everything, then broadcasts ``after`` (if any)."""

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        if not message.startswith("wipe:"):
            await super().on_message(conn, message)
            return
        _, before, after = message.split(":")
        async with self.storage.transaction() as block:
            if before:
                self.broadcast(before)
            await self.storage.delete_all()
            if after:
                self.broadcast(after)
            block.rollback()


async def test_a_rolled_back_delete_all_leaves_the_log_as_the_store_has_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The block's clear is undone for the log too: the epoch stands, and so does a
    broadcast the block made before the clear, in memory and in the store alike."""
    async with watched(Undoer) as (server, store), server.connect("/lobby") as feeder:
        first = await parked(server)
        await say(feeder, "1", "2")
        await feeder.send("wipe::")
        await feeder.send("wipe:three:")  # logged before the clear: it stays, numbered
        assert await feeder.receive() == "three"
        for asleep in (False, True):
            async with server.connect(resume_path(first, 0, token=False), subprotocols=V1) as late:
                again = await welcome(late)
                assert (again["epoch"], again["seq"], again["recovered"]) == (
                    first["epoch"],
                    3,
                    True,
                )
                assert [(await late.receive())[2] for _ in range(3)] == ["1", "2", "three"]
            assert sorted(await store.stored()) == [1, 2, 3]
            assert (await store.meta())["head"] == 3
            if not asleep:
                await server.hibernate("lobby")  # the log is read again from the store


async def test_a_rolled_back_delete_all_that_logged_after_it_starts_the_new_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A broadcast after the block's clear went out in a new epoch: that log stands, and
    the old one is deleted from the store, as from memory."""
    async with watched(Undoer) as (server, store), server.connect("/lobby") as feeder:
        async with server.connect("/lobby", subprotocols=V1) as ann:
            first = await welcome(ann)
            await say(feeder, "1", "2")
            await feeder.send("wipe::new")
            assert await feeder.receive() == "new"
            assert [await ann.receive() for _ in range(3)][2] == ["m", 1, "new"]
        await server.hibernate("lobby")
        assert sorted(await store.stored()) == [1]
        async with server.connect(resume_path(first, 2, token=False), subprotocols=V1) as late:
            again = await welcome(late)  # the old epoch is gone
            assert (again["seq"], again["recovered"]) == (1, False)
            assert again["epoch"] != first["epoch"]
        async with server.connect(resume_path(again, 0, token=False), subprotocols=V1) as late:
            assert (await welcome(late))["recovered"] is True
            assert await late.receive() == ["m", 1, "new"]
