"""Presence (docs/presence.md) over the test kit's in-memory transport on a virtual
clock: the issue's "Done when" list for presence (join, leave, the grace period, two
tabs, hibernation), coalescing per turn, and what plain clients see (nothing of it)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
from roomkit.testing import TestClient, TestServer, open_test_server

V1 = ["roomkit.v1"]


class Here(roomkit.Room):
    """Tracks who asks to be tracked; records what on_close saw of the presence.

    Query: ``user`` (its ``user:`` tag), ``tab`` (its presence, set in on_connect).
    Messages: ``set:<json>`` sets its presence, ``off`` untracks it, ``who`` answers
    the room's presence(), ``all:<n>`` sets every connection's presence in one turn,
    ``flip`` tracks and untracks in one turn, ``tag:<a,b>`` sets its tags, ``big``
    tries an oversized presence; ``raise:<json>`` sets its presence (none if empty) and
    ``retag-raise:<a,b>`` its tags, and each then raises.
    """

    rate_limit = None
    closes: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if "user" in request.query:
            conn.tags = ["all", f"user:{request.query['user']}"]
        if "tab" in request.query:
            conn.presence = {"tab": request.query["tab"]}

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        kind, _, text = message.partition(":")
        if kind == "set":
            conn.presence = json.loads(text)
        elif kind == "off":
            conn.presence = None
        elif kind == "who":
            conn.send(json.dumps({"presence": self.presence(), "mine": conn.presence}))
        elif kind == "all":
            for other in self.connections():
                other.presence = {"n": int(text)}
        elif kind == "flip":
            conn.presence = {"brief": True}
            conn.presence = None
        elif kind == "tag":  # tags of its own, its presence kept
            conn.tags = text.split(",") if text else []
        elif kind == "raise":  # sets its presence, then fails: the turn rolls back
            conn.presence = json.loads(text) if text else None
            raise RuntimeError("after the presence")
        elif kind == "retag-raise":  # re-keys its presence, then fails
            conn.tags = text.split(",")
            raise RuntimeError("after the tags")
        elif kind == "big":
            try:
                conn.presence = {"x": "a" * 2000}
            except ValueError as error:
                conn.send(str(error))

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Here.closes.append((conn.id, self.presence()))


@pytest.fixture(autouse=True)
def _fresh() -> None:
    Here.closes.clear()


@asynccontextmanager
async def here(**options: Any) -> AsyncIterator[TestServer]:
    async with open_test_server(Here, **options) as server:
        yield server


async def welcome(client: TestClient) -> dict[str, Any]:
    frame = await client.receive()
    assert frame[0] == "welcome", frame
    body: dict[str, Any] = frame[1]
    return body


async def who(client: TestClient) -> dict[str, Any]:
    """The room's presence() as a plain client asks for it."""
    await client.send("who")
    answer: dict[str, Any] = await client.receive()
    return answer["presence"]


def joins(diff: list[Any]) -> dict[str, Any]:
    assert diff[0] == "presence_diff", diff
    result: dict[str, Any] = diff[1]["joins"]
    return result


def leaves(diff: list[Any]) -> dict[str, Any]:
    assert diff[0] == "presence_diff", diff
    result: dict[str, Any] = diff[1]["leaves"]
    return result


@asynccontextmanager
async def watched_bob() -> AsyncIterator[tuple[TestServer, TestClient, TestClient]]:
    """A room of ``Here``: a plain ``watcher`` (to ask ``who``), and bob tracked over
    roomkit.v1, his welcome and his own join read."""
    async with (
        here() as server,
        server.connect("/r") as watcher,
        server.connect("/r?user=bob&tab=1", subprotocols=V1) as bob,
    ):
        await welcome(bob)
        await bob.receive()  # his own join
        yield server, watcher, bob


@asynccontextmanager
async def bob_and_ann() -> AsyncIterator[
    tuple[TestServer, TestClient, TestClient, TestClient, dict[str, Any]]
]:
    """``watched_bob``, then ann tracked too: with her welcome, her join read by bob."""
    async with (
        watched_bob() as (server, watcher, bob),
        server.connect("/r?user=ann&tab=1", subprotocols=V1) as ann,
    ):
        first = await welcome(ann)
        await bob.receive()  # her join
        yield server, watcher, bob, ann, first


async def test_join_the_joiner_sees_itself_and_then_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        here() as server,
        server.connect("/r?user=ann&tab=1", subprotocols=V1) as ann,
    ):
        first = await welcome(ann)
        # The first presence of the room: no state before it, its own join after.
        ann_meta = {"tab": "1", "ref": first["id"]}
        assert await ann.receive() == [
            "presence_diff",
            {"joins": {"ann": {"metas": [ann_meta]}}, "leaves": {}},
        ]
        async with server.connect("/r?user=bob&tab=1", subprotocols=V1) as bob:
            second = await welcome(bob)
            assert await bob.receive() == ["presence_state", {"ann": {"metas": [ann_meta]}}]
            bob_meta = {"tab": "1", "ref": second["id"]}
            assert joins(await bob.receive()) == {"bob": {"metas": [bob_meta]}}
            assert joins(await ann.receive()) == {"bob": {"metas": [bob_meta]}}
            await bob.send("who")
            assert await bob.receive() == [
                "m",
                None,  # not logged: the room keeps no history
                json.dumps(
                    {"presence": {"ann": [ann_meta], "bob": [bob_meta]}, "mine": {"tab": "1"}}
                ),
            ]
            await ann.receive_nothing()


async def test_two_tabs_are_one_key_with_two_metas(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        here() as server,
        server.connect("/r") as watcher,
        server.connect("/r?user=ann&tab=1", subprotocols=V1) as tab1,
        server.connect("/r?user=ann&tab=2", subprotocols=V1) as tab2,
    ):
        one, two = (await welcome(tab1))["id"], (await welcome(tab2))["id"]
        assert await who(watcher) == {"ann": [{"tab": "1", "ref": one}, {"tab": "2", "ref": two}]}
        assert (await tab2.receive())[0] == "presence_state"
        assert joins(await tab2.receive()) == {"ann": {"metas": [{"tab": "2", "ref": two}]}}
        assert joins(await tab1.receive()) == {"ann": {"metas": [{"tab": "1", "ref": one}]}}
        assert joins(await tab1.receive()) == {"ann": {"metas": [{"tab": "2", "ref": two}]}}
        await tab2.close()
        assert leaves(await tab1.receive()) == {"ann": {"metas": [{"tab": "2", "ref": two}]}}
        assert await who(watcher) == {"ann": [{"tab": "1", "ref": one}]}  # the key stays


async def test_leave_at_once_on_a_clean_close_and_on_untrack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with here() as server, server.connect("/r?user=bob&tab=1", subprotocols=V1) as bob:
        await welcome(bob)
        await bob.receive()  # its own join
        async with server.connect("/r?user=ann&tab=1", subprotocols=V1) as ann:
            ann_id = (await welcome(ann))["id"]
            await bob.receive()  # ann's join
        assert leaves(await bob.receive()) == {"ann": {"metas": [{"tab": "1", "ref": ann_id}]}}
        assert Here.closes[-1][0] == ann_id and "ann" not in Here.closes[-1][1]  # gone already
        async with server.connect("/r?user=cid", subprotocols=V1) as cid:
            cid_id = (await welcome(cid))["id"]
            await cid.receive()  # the state
            await cid.send('set:{"s": "here"}')
            cid_meta = {"s": "here", "ref": cid_id}
            assert joins(await bob.receive()) == {"cid": {"metas": [cid_meta]}}
            await cid.send('set:{"s": "away"}')  # an update: a leave and a join
            assert await bob.receive() == [
                "presence_diff",
                {
                    "joins": {"cid": {"metas": [{"s": "away", "ref": cid_id}]}},
                    "leaves": {"cid": {"metas": [cid_meta]}},
                },
            ]
            await cid.send("off")
            assert joins(await bob.receive()) == {}
            await cid.send("off")  # untracked already: nothing to tell
            await cid.send("who")
            assert (await cid.receive())[0] == "presence_diff"  # its own join
            assert (await cid.receive())[0] == "presence_diff"  # its update
            assert (await cid.receive())[0] == "presence_diff"  # its leave
            assert json.loads((await cid.receive())[2])["mine"] is None
            await bob.receive_nothing()


async def test_the_grace_period_an_abrupt_end_leaves_only_when_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with watched_bob() as (server, watcher, bob):
        async with server.connect("/r?user=ann&tab=1", subprotocols=V1) as ann:
            first = await welcome(ann)
            ann_meta = {"tab": "1", "ref": first["id"]}
            await bob.receive()  # ann's join
            await ann.abort()
        await trio.sleep(10)  # parked: its presence stays
        assert (await who(watcher))["ann"] == [ann_meta]
        await bob.receive_nothing()
        path = f"/r?roomkit.session={first['session']}"
        async with server.connect(path, subprotocols=V1) as back:  # a resume in the grace
            again = await welcome(back)
            assert again["resumed"] is True and again["id"] == first["id"]
            state = await back.receive()
            assert state[0] == "presence_state" and state[1]["ann"] == {"metas": [ann_meta]}
            await bob.receive_nothing()  # no leave, no join
            await back.abort()
            await trio.sleep(14)
            await bob.receive_nothing()
            assert (await who(watcher))["ann"] == [ann_meta]
            await trio.sleep(2)  # the grace ends: the leave
            assert leaves(await bob.receive()) == {"ann": {"metas": [ann_meta]}}
            assert "ann" not in await who(watcher)
            assert Here.closes == [(first["id"], await who(watcher))]


async def test_presence_survives_hibernation_and_a_grace_that_ends_asleep_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with bob_and_ann() as (server, watcher, bob, ann, first):
        before = await who(watcher)
        await server.hibernate("r")
        assert server.room("r") is None
        assert await who(watcher) == before  # woken by the message: the same presence
        await bob.receive_nothing()  # and no diff for it
        await ann.abort()
        await trio.sleep(1)
        await server.hibernate("r")
        assert server.room("r") is None
        await trio.sleep(15)  # the grace ends while the room sleeps: it wakes, and ann leaves
        assert leaves(await bob.receive()) == {"ann": {"metas": [{"tab": "1", "ref": first["id"]}]}}
        assert list(await who(watcher)) == ["bob"]


async def test_a_turn_sends_one_diff_and_nothing_when_it_cancels_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with here() as server, server.connect("/r", subprotocols=V1) as ann:
        await welcome(ann)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(49):
                await stack.enter_async_context(server.connect("/r"))
            await ann.send("all:7")
            diff = await ann.receive()  # fifty joins, one frame
            assert len(joins(diff)) == 50 and leaves(diff) == {}
            assert {m["n"] for entry in joins(diff).values() for m in entry["metas"]} == {7}
            late = await stack.enter_async_context(server.connect("/r"))
            await late.send("flip")  # a join and a leave in one turn: nothing to tell
            await late.send("who")
            assert (await late.receive())["mine"] is None
            await ann.receive_nothing()
            await stack.enter_async_context(server.connect("/r"))  # joins untracked
            await ann.receive_nothing()
        diff = await ann.receive()  # the tracked close one by one: a diff each
        assert len(leaves(diff)) == 1 and joins(diff) == {}


async def test_plain_clients_see_no_presence_frame_but_are_tracked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with (
        here() as server,
        server.connect("/r?user=ann&tab=1") as plain,
        server.connect("/r", subprotocols=V1) as wrapped,
    ):
        await welcome(wrapped)
        assert await wrapped.receive() == [
            "presence_state",
            {"ann": {"metas": [{"tab": "1", "ref": (await who(plain))["ann"][0]["ref"]}]}},
        ]
        await plain.send('set:{"tab": "2"}')
        assert (await wrapped.receive())[0] == "presence_diff"
        await plain.send("who")
        assert (await plain.receive())["mine"] == {"tab": "2"}  # the answer, no diff before it
        await plain.close()
        assert leaves(await wrapped.receive())["ann"]["metas"][0]["tab"] == "2"


async def test_an_oversized_presence_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    async with here() as server, server.connect("/r") as plain:
        await plain.send("big")
        assert await plain.receive() == (
            "a presence is at most 1024 bytes serialised, this one is 2009"
        )
        assert await who(plain) == {}


class Keyed(Here):
    def presence_key(self, conn: roomkit.Connection) -> str:
        return conn.request.query.get("name", "?")


async def test_presence_key_may_be_overridden(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_server(Keyed) as server, server.connect("/r?name=zoe&tab=1") as zoe:
        assert list(await who(zoe)) == ["zoe"]


async def test_the_late_end_of_the_old_socket_leaves_the_resumed_presence_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """socket.io #4880's case for presence: the old socket, silently dead, ends after
    the session moved to a new one."""
    async with bob_and_ann() as (server, watcher, bob, ann, first):
        ann.freeze()  # its network vanished: the room has not noticed
        path = f"/r?roomkit.session={first['session']}"
        async with server.connect(path, subprotocols=V1) as back:
            assert (await welcome(back))["resumed"] is True
            await trio.sleep(120)  # every ping deadline of the old socket passes
            await bob.receive_nothing()
            assert (await who(watcher))["ann"] == [{"tab": "1", "ref": first["id"]}]


async def test_the_chat_examples_presence_is_keyed_by_user(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """examples/chat.py: its tags are [user, "all"], its presence_key its user."""
    from examples.chat import ChatRoom

    async with (
        open_test_server(ChatRoom) as server,
        server.connect("/lobby?userId=bob", subprotocols=V1) as bob_1,
        server.connect("/lobby?userId=bob", subprotocols=V1) as bob_2,
        server.connect("/lobby?userId=ann", subprotocols=V1) as ann,
    ):
        ids = [(await welcome(c))["id"] for c in (bob_1, bob_2, ann)]
        assert (await ann.receive())[0] == "presence_state"
        hello = await ann.receive()  # the room's own welcome, for plain clients too
        assert json.loads(hello[2]) == {"type": "welcome", "user": "ann", "users": ["bob", "ann"]}
        state = server.room("lobby")
        assert state is not None
        assert state.presence() == {
            "bob": [{"user": "bob", "ref": ids[0]}, {"user": "bob", "ref": ids[1]}],
            "ann": [{"user": "ann", "ref": ids[2]}],
        }


class Broken(Here):
    def presence_key(self, conn: roomkit.Connection) -> str:
        if "bad" in conn.request.query:
            return 5  # type: ignore[return-value]  # a key that is no str, on purpose
        raise KeyError("no key for this one")


async def test_a_presence_key_that_fails_leaves_the_presence_as_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Catching(Broken):
        async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
            try:
                conn.presence = {"s": 1}
            except (TypeError, KeyError) as error:
                conn.send(type(error).__name__)
            conn.send(json.dumps(conn.presence))

    async with (
        open_test_server(Catching) as server,
        server.connect("/r?bad") as bad,
        server.connect("/r") as other,
    ):
        for client, error in ((bad, "TypeError"), (other, "KeyError")):
            await client.send("set")
            assert await client.receive() == error
            assert await client.receive() is None
        room = server.room("r")
        assert room is not None and room.presence() == {}
        async with server.connect("/r", subprotocols=V1) as wrapped:
            await welcome(wrapped)
            await wrapped.send("who")  # no presence_state: the room never tracked anyone
            assert (await wrapped.receive())[0] == "m"


async def test_a_tag_change_that_changes_the_key_moves_the_meta(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The default key comes from the tags: the room that tags its user after setting
    the presence moves it, a leave under the old key and a join under the new in one
    diff, where presence() and the clients see it too."""
    async with (
        here() as server,
        server.connect("/r") as watcher,
        server.connect("/r?user=bob&tab=1", subprotocols=V1) as bob,
        server.connect("/r?tab=1", subprotocols=V1) as ann,
    ):
        await welcome(bob)
        ann_id = (await welcome(ann))["id"]
        for _ in range(2):
            await bob.receive()  # the joins
        meta = {"tab": "1", "ref": ann_id}
        assert list(await who(watcher)) == ["bob", ann_id]  # untagged: keyed by its id
        await ann.send("tag:all,user:ann")
        assert await bob.receive() == [
            "presence_diff",
            {"joins": {"ann": {"metas": [meta]}}, "leaves": {ann_id: {"metas": [meta]}}},
        ]
        assert list(await who(watcher)) == ["bob", "ann"]
        await ann.send("tag:user:ann,vip")  # the same key: nothing to tell
        await ann.send("tag:")  # no user tag: its id again
        assert await bob.receive() == [
            "presence_diff",
            {"joins": {ann_id: {"metas": [meta]}}, "leaves": {"ann": {"metas": [meta]}}},
        ]
        await bob.receive_nothing()


async def test_a_presence_key_that_fails_on_a_tag_change_keeps_the_tags(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Picky(Here):
        def presence_key(self, conn: roomkit.Connection) -> str:
            if "user:eve" in conn.tags:
                raise KeyError("no eve here")
            return super().presence_key(conn)

        async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
            try:
                conn.tags = ["user:eve"]
            except KeyError as error:
                conn.send(f"{error}; tags {list(conn.tags)}")
            conn.send(json.dumps(self.presence()))

    async with open_test_server(Picky) as server, server.connect("/r?user=ann&tab=1") as ann:
        await ann.send("go")
        assert await ann.receive() == "'no eve here'; tags ['all', 'user:ann']"
        assert list(await ann.receive()) == ["ann"]


async def test_a_hook_that_raises_takes_its_presence_changes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hook is a transaction: what it did to the presence is undone with its sends and
    writes, no diff goes out, and presence() and conn.presence are as before the turn."""

    class Forgiving(Here):
        async def on_error(self, conn: roomkit.Connection | None, error: Exception) -> None:
            pass  # the raise is what the test is for

    async with (
        open_test_server(Forgiving) as server,
        server.connect("/r") as watcher,
        server.connect("/r?user=bob&tab=1", subprotocols=V1) as bob,
        server.connect("/r", subprotocols=V1) as ann,
    ):
        bob_id = (await welcome(bob))["id"]
        ann_id = (await welcome(ann))["id"]
        assert joins(await bob.receive()) == {"bob": {"metas": [{"tab": "1", "ref": bob_id}]}}
        await ann.receive()  # the presence_state
        await ann.send('raise:{"first": true}')  # its first presence: no join
        await ann.send("who")
        assert json.loads((await ann.receive())[2])["mine"] is None
        await ann.send('set:{"tab": "2"}')
        meta = {"tab": "2", "ref": ann_id}
        assert joins(await bob.receive()) == {ann_id: {"metas": [meta]}}
        await ann.receive()  # its own join
        before = await who(watcher)
        for change in ['raise:{"tab": "3"}', "raise:", "retag-raise:user:zed"]:
            await ann.send(change)
            assert await who(watcher) == before, change
        await ann.send("who")
        assert json.loads((await ann.receive())[2])["mine"] == {"tab": "2"}
        await bob.receive_nothing()
        await ann.receive_nothing()
        await ann.send("off")  # the tracker goes on from the state it was put back to
        assert leaves(await bob.receive()) == {ann_id: {"metas": [meta]}}
