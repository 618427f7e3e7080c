"""A big presence reaches a joining client in frames it accepts (docs/presence.md, "The
wire"): ``state_payloads`` (``roomkit/_core/presence.py``) exactly, then a room of a
small ``max_message_size`` and many present connections, whose new roomkit.v1 clients
(the test kit's, roomkit's Python client, roomkit.js under Node) get the whole presence
without being closed.

The in-memory test runs on the virtual clock; the others on real sockets (127.0.0.1,
port 0), each bounded by ``fail_after``."""

from __future__ import annotations

import json
import random
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import roomkit
from roomkit._clientpresence import ClientPresence
from roomkit._core.presence import Meta, state_payloads
from roomkit.testing import TestClient, open_test_server

from .helpers import Start, open_client
from .test_roomkit_js import node_has_websocket, run_node

STATE = b'["presence_state",{'
JOINS = b'["presence_diff",{"joins":{'
LEAVES = b'},"leaves":{}}]'


def meta(ref: str, pad: int = 0) -> Meta:
    return {"x": "y" * pad, "ref": ref}


def entry(key: str, *metas: Meta) -> bytes:
    """A key's entry in a frame, exactly as the room writes it."""
    return json.dumps({key: {"metas": list(metas)}}, separators=(",", ":")).encode()[1:-1]


def state(*entries: bytes) -> bytes:
    return STATE + b",".join(entries) + b"}]"


def joins(*entries: bytes) -> bytes:
    return JOINS + b",".join(entries) + LEAVES


def applied(payloads: list[bytes]) -> dict[str, list[Meta]]:
    """What roomkit's Python client has after these frames."""
    presence = ClientPresence()
    for payload in payloads:
        assert presence.feed(payload.decode()) is not None
    return presence.state


A, B, C = meta("1", 40), meta("2", 40), meta("3", 40)
ROOM = {"ann": [A], "bob": [B], "cy": [C]}


def test_a_state_that_fits_is_one_frame_as_before() -> None:
    whole = state(entry("ann", A), entry("bob", B), entry("cy", C))
    assert state_payloads(ROOM, len(whole)) == [whole]
    assert (
        whole
        == json.dumps(
            ["presence_state", {k: {"metas": m} for k, m in ROOM.items()}], separators=(",", ":")
        ).encode()
    )


def test_an_empty_presence_is_one_empty_state_whatever_the_bound() -> None:
    assert state_payloads({}, 1 << 20) == [b'["presence_state",{}]']
    assert state_payloads({}, 1) == [b'["presence_state",{}]']


def test_one_byte_less_moves_the_last_key_to_a_diff_of_joins() -> None:
    whole = state(entry("ann", A), entry("bob", B), entry("cy", C))
    expected = [state(entry("ann", A), entry("bob", B)), joins(entry("cy", C))]
    assert state_payloads(ROOM, len(whole) - 1) == expected
    assert applied(expected) == ROOM


def test_each_frame_is_filled_up_to_its_bound_exactly() -> None:
    first = state(entry("ann", A), entry("bob", B))
    assert state_payloads(ROOM, len(first)) == [first, joins(entry("cy", C))]  # at it: fits
    assert state_payloads(ROOM, len(first) - 1) == [
        state(entry("ann", A)),
        joins(entry("bob", B)),
        joins(entry("cy", C)),
    ]
    room = {**ROOM, "dee": [meta("4", 40)]}
    two = joins(entry("cy", C), entry("dee", *room["dee"]))  # a diff at its bound too
    assert state_payloads(room, len(two)) == [first, two]
    assert state_payloads(room, len(two) - 1) == [
        first,
        joins(entry("cy", C)),
        joins(entry("dee", *room["dee"])),
    ]


def test_a_key_that_fits_no_frame_is_split_by_metas_in_its_place() -> None:
    tabs, small = [meta(f"t{i}", 40) for i in range(4)], meta("3")
    room = {"ann": [A], "bob": tabs, "cy": [small]}
    limit = len(joins(entry("bob", *tabs[:2])))  # bob alone is too big: two tabs a frame
    payloads = state_payloads(room, limit)
    assert (
        payloads
        == [
            state(entry("ann", A), entry("bob", tabs[0])),  # what fits of bob after ann
            joins(entry("bob", *tabs[1:3])),
            joins(entry("bob", tabs[3]), entry("cy", small)),  # cy after the rest of bob
        ]
    )
    assert all(len(payload) <= limit for payload in payloads)
    assert list(applied(payloads).items()) == list(room.items())  # bob keeps his place


def test_a_meta_bigger_than_the_bound_goes_alone_over_it() -> None:
    big = meta("2", 500)
    room = {"ann": [A], "bob": [big, B], "cy": [C]}
    payloads = state_payloads(room, 200)
    assert payloads == [
        state(entry("ann", A)),
        joins(entry("bob", big)),  # over 200 bytes: the least a frame can carry
        joins(entry("bob", B), entry("cy", C)),
    ]
    assert [len(p) > 200 for p in payloads] == [False, True, False]
    assert applied(payloads) == room


def test_any_state_in_any_bound_gives_the_clients_the_same_presence_in_order() -> None:
    """Random states and bounds: each frame under the bound unless it holds one meta, a
    key split only when it fits no frame of joins of its own, and the client's copy
    the state, in order."""
    rng = random.Random(7)
    for _ in range(2000):
        room: dict[str, list[Meta]] = {}
        for k in range(rng.randint(0, 12)):
            key = rng.choice(["a", "é", f"k{k}", "q" * rng.randint(1, 60)])
            room.setdefault(key, []).extend(
                meta(f"{k}-{i}", rng.randint(0, 80)) for i in range(rng.randint(1, 5))
            )
        limit = rng.randint(20, 900)
        payloads = state_payloads(room, limit)
        assert list(applied(payloads).items()) == list(room.items())
        assert payloads[0].startswith(STATE)
        assert all(p.startswith(JOINS) and p.endswith(LEAVES) for p in payloads[1:])
        bodies = [json.loads(payloads[0])[1]] + [json.loads(p)[1]["joins"] for p in payloads[1:]]
        for payload, body in zip(payloads, bodies, strict=True):
            assert len(payload) <= limit or sum(len(e["metas"]) for e in body.values()) == 1
        for key, metas in room.items():
            parts = sum(key in body for body in bodies)
            assert parts == 1 or len(joins(entry(key, *metas))) > limit, (key, limit)


class Crowd(roomkit.Room):
    """A room whose state outgrows its frames: ``?user=`` tracks a connection with a
    presence of some 200 bytes; a connection without one is a watcher, and ``seen``
    the presence it was welcomed with."""

    max_message_size = 1024
    rate_limit = None
    seen: ClassVar[dict[str, list[dict[str, Any]]]] = {}

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        user = request.query.get("user")
        if user is None:
            Crowd.seen = self.presence()
        else:
            conn.tags = [f"user:{user}"]
            conn.presence = {"name": user, "pad": "x" * 200}


#: 40 connections of 30 users (the first ten with two tabs): a state of some 10 KB,
#: past the 6,175 bytes a client of a 1,024-byte max_message_size takes in a frame.
USERS = [f"u{i % 30:02d}" for i in range(40)]


async def presence_frames(watcher: TestClient) -> tuple[dict[str, Any], list[bytes]]:
    """A roomkit.v1 watcher's welcome, and the frames it gets after its welcome, up to
    the whole crowd (none after them); each checked to be a state, then joins alone."""
    welcome = await watcher.receive()
    assert welcome[0] == "welcome"
    frames: list[bytes] = []
    presence = ClientPresence()
    while len(presence.state) < len(set(USERS)):
        frames.append((await watcher.receive_text()).encode())
        presence.feed(frames[-1].decode())
    await watcher.receive_nothing()
    assert len(frames) > 1
    assert all(len(frame) <= Crowd.max_message_size for frame in frames)
    assert frames[0].startswith(STATE)
    assert all(frame.startswith(JOINS) and frame.endswith(LEAVES) for frame in frames[1:])
    assert list(presence.state.items()) == list(Crowd.seen.items())
    assert sum(map(len, presence.state.values())) == len(USERS)
    return welcome[1], frames


async def test_a_new_client_gets_a_big_state_in_frames_under_the_bound_and_on_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(Crowd) as server, AsyncExitStack() as crowd:
        for user in USERS:
            await crowd.enter_async_context(server.connect(f"/r?user={user}"))
        async with server.connect("/r", subprotocols=["roomkit.v1"]) as watcher:
            first, frames = await presence_frames(watcher)
            await watcher.abort()
        path = f"/r?roomkit.session={first['session']}"
        async with server.connect(path, subprotocols=["roomkit.v1"]) as back:
            again, frames_again = await presence_frames(back)
            assert again["resumed"] is True and frames_again == frames


async def test_roomkits_python_client_gets_a_big_state_and_stays(start: Start) -> None:
    server = await start(Crowd)
    closes: list[roomkit.CloseEvent] = []
    changed = trio.Event()
    async with AsyncExitStack() as crowd:
        for user in USERS:
            await crowd.enter_async_context(open_client(f"{server.url}/r?user={user}"))
        async with roomkit.connect(
            f"{server.url}/r",
            max_message_size=Crowd.max_message_size,  # as the room's: what it sends fits
            on_presence=lambda _: changed.set(),
            on_close=closes.append,
        ) as client:
            with trio.fail_after(5):
                while len(client.presence) < 30:
                    await changed.wait()
                    changed = trio.Event()
            assert list(client.presence.items()) == list(Crowd.seen.items())
            assert client.connected and closes == []


#: Prints the socket's presence once it holds 30 keys, and the closes it saw.
WATCH = """
import { RoomSocket } from "./roomkit.mjs";
const socket = new RoomSocket(process.env.ROOM_URL);
const closes = [];
socket.addEventListener("close", (e) => closes.push(e.code));
socket.addEventListener("presence", (e) => {
  if (Object.keys(e.presence).length < 30) return;
  console.log(JSON.stringify({ presence: e.presence, closes }));
  socket.close();
});
"""


@pytest.mark.skipif(not node_has_websocket(), reason="no Node with --experimental-websocket")
async def test_roomkit_js_gets_a_big_state_in_its_order(start: Start, tmp_path: Path) -> None:
    server = await start(Crowd)
    async with AsyncExitStack() as crowd:
        for user in USERS:
            await crowd.enter_async_context(open_client(f"{server.url}/r?user={user}"))
        seen = await run_node(tmp_path, WATCH, f"{server.url}/r")
    assert seen["closes"] == []
    assert list(seen["presence"].items()) == list(Crowd.seen.items())
