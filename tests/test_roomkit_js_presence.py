"""roomkit.js keeps the room's presence (docs/presence.md): its syncState/syncDiff
agree with the server's tracker over random turns, and a RoomSocket's
``socket.presence`` and "presence" events follow a roomkit server's (examples/chat.py:
keyed by user, two tabs of one user one key). Run by Node, as tests/test_roomkit_js.py
runs roomkit.js; skipped without a Node that has a WebSocket."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from examples.chat import ChatRoom
from roomkit._core.presence import Tracker

from .helpers import Start
from .test_roomkit_js import node_has_websocket, run_node

pytestmark = pytest.mark.skipif(
    not node_has_websocket(), reason="no Node with --experimental-websocket (20.10 or later)"
)

#: Applies each frame of frames.json and prints the presence after each.
SYNC = """
import { readFileSync } from "node:fs";
import { syncState, syncDiff } from "./roomkit.mjs";
let presence = {};
const seen = [];
for (const [kind, body] of JSON.parse(readFileSync("frames.json", "utf8"))) {
  presence = kind === "presence_state" ? syncState(body) : syncDiff(presence, body).presence;
  seen.push(presence);
}
console.log(JSON.stringify(seen));
"""


async def test_sync_state_and_diff_agree_with_the_servers_tracker(tmp_path: Path) -> None:
    """In content and in order: keys (none an array index) and metas as the room's."""
    rng = random.Random(18)
    tracker = Tracker()
    refs, keys = [f"c{i}" for i in range(10)], ["ann", "bob", "cy", "dee", "eve"]
    frames: list[list[object]] = []
    expected = []
    for turn in range(600):
        for _ in range(rng.randint(1, 4)):
            ref = rng.choice(refs)
            if rng.random() < 0.3:
                tracker.track(ref, "", None)
            else:
                tracker.track(ref, rng.choice(keys), json.dumps({"v": rng.randint(0, 2)}))
        diff = tracker.flush()
        if turn % 50 == 49:  # a reconnect: the whole state
            state = {key: {"metas": metas} for key, metas in tracker.state().items()}
            frames.append(["presence_state", state])
        elif diff is not None:
            frames.append(["presence_diff", diff])
        else:
            continue
        expected.append(tracker.state())
    (tmp_path / "frames.json").write_text(json.dumps(frames))
    seen = await run_node(tmp_path, SYNC, "")
    assert [list(state.items()) for state in seen] == [list(state.items()) for state in expected]


#: ann joins, then bob in two tabs; one of bob's tabs closes, then the other. Prints
#: what ann's socket saw of the presence at each step.
TABS = """
import { RoomSocket } from "./roomkit.mjs";
const url = (user) => process.env.ROOM_URL + "?userId=" + user;
const steps = [];
const ann = new RoomSocket(url("ann"));
const tabs = (p) => Object.fromEntries(Object.entries(p).map(([k, m]) => [k, m.length]));
const when = (holds) => new Promise((done) => {
  const check = () => {
    if (!holds(tabs(ann.presence))) return;
    ann.removeEventListener("presence", check);
    done();
  };
  ann.addEventListener("presence", check);
  check();
});
const opened = (socket) => new Promise((done) => socket.addEventListener("open", done));
ann.addEventListener("presence", (e) => {
  const [joins, leaves] = [Object.keys(e.joins), Object.keys(e.leaves)];
  steps.push({ tabs: tabs(e.presence), joins, leaves });
});
await when((t) => t.ann === 1);
const bob1 = new RoomSocket(url("bob"));
await opened(bob1);
await when((t) => t.bob === 1);
const bob2 = new RoomSocket(url("bob"));
await opened(bob2);
await when((t) => t.bob === 2);
const refs = ann.presence.bob.map((meta) => meta.ref);
const ids = [bob1.session.id, bob2.session.id];
bob1.close();
await when((t) => t.bob === 1);
const left = ann.presence.bob.map((meta) => meta.ref);
bob2.close();
await when((t) => t.bob === undefined);
console.log(JSON.stringify({ steps, refs, ids, left, user: ann.presence.ann[0].user }));
ann.close();
"""


async def test_a_room_socket_follows_the_rooms_presence(start: Start, tmp_path: Path) -> None:
    server = await start(ChatRoom)
    seen = await run_node(tmp_path, TABS, f"{server.url}/lobby")
    assert seen["refs"] == seen["ids"]  # bob's two tabs, in join order
    assert seen["left"] == seen["ids"][1:]  # the first closed: the second stays
    assert seen["user"] == "ann"
    assert seen["steps"] == [
        {"tabs": {"ann": 1}, "joins": ["ann"], "leaves": []},
        {"tabs": {"ann": 1, "bob": 1}, "joins": ["bob"], "leaves": []},
        {"tabs": {"ann": 1, "bob": 2}, "joins": ["bob"], "leaves": []},
        {"tabs": {"ann": 1, "bob": 1}, "joins": [], "leaves": ["bob"]},
        {"tabs": {"ann": 1}, "joins": [], "leaves": ["bob"]},
    ]
