"""The browser client, roomkit.js, run by Node (with its WebSocket) against a real server
(roomkit's, or the fake roomkit.v1 server of tests/clientservers.py).

Real time and a real subprocess: each run takes well under a second. Without a Node
that has ``--experimental-websocket`` (20.10 or later), these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto.events import CloseConnection

import roomkit
from examples.chat import ChatRoom
from roomkit._reconnect import Backoff

from .clientservers import EnvelopeServer, binary_frame, m_frame, serve_raw, welcome_frame
from .helpers import Start

NODE = shutil.which("node")
ROOMKIT_JS = Path(roomkit.__file__).parent / "static" / "roomkit.js"


def node_has_websocket() -> bool:
    if NODE is None:
        return False
    probe = [
        NODE,
        "--experimental-websocket",
        "-e",
        "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
    ]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(
    not node_has_websocket(), reason="no Node with --experimental-websocket (20.10 or later)"
)

#: Connects, and prints the events up to the second "open" as JSON.
SCRIPT = """
import { RoomSocket } from "./roomkit.mjs";
Math.random = () => 1;  // no jitter: every backoff at its ceiling
const events = [];
const socket = new RoomSocket(process.env.ROOM_URL);
let opens = 0;
socket.addEventListener("open", () => {
  events.push({ open: performance.now() });
  if (++opens === 2) {
    console.log(JSON.stringify(events));
    socket.close();
  }
});
socket.addEventListener("close", (e) => events.push({ close: e.code, at: performance.now() }));
socket.addEventListener("reconnecting", (e) => events.push({ attempt: e.attempt, delay: e.delay }));
"""


async def run_node(tmp_path: Path, script: str, url: str, **env: str) -> Any:
    """Run ``script`` with roomkit.js beside it, ``ROOM_URL`` set to ``url``; what it
    printed, as JSON."""
    assert NODE is not None
    shutil.copy(ROOMKIT_JS, tmp_path / "roomkit.mjs")
    (tmp_path / "main.mjs").write_text(script)
    with trio.fail_after(20):
        result = await trio.run_process(
            [NODE, "--experimental-websocket", "--no-warnings", "main.mjs"],
            cwd=tmp_path,
            env={"ROOM_URL": url, **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@pytest.mark.parametrize(("code", "attempt", "delay"), [(1012, 0, 0), (1001, 1, 500)])
async def test_after_a_1012_close_roomkit_js_comes_back_at_once(
    tmp_path: Path, code: int, attempt: int, delay: int
) -> None:
    server = EnvelopeServer([[welcome_frame(), CloseConnection(code, "bye")], [welcome_frame()]])
    async with serve_raw(server) as url:
        events = await run_node(tmp_path, SCRIPT, f"{url}/r")
    assert isinstance(events, list)
    _, closed, reconnecting, reopened = events
    assert closed["close"] == code
    assert reconnecting == {"attempt": attempt, "delay": delay}
    assert reopened["open"] >= closed["at"]  # it came back, after the delay it reported


#: Prints backoffDelay's waits at their ceilings, early in an outage and after a minute.
SCHEDULE = """
import { backoffDelay } from "./roomkit.mjs";
const options = { minDelay: 500, maxDelay: 10000, growFactor: 2,
                  earlyMaxDelay: 2000, earlyPeriod: 60000 };
const at = (outage) => [0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, options, outage, () => 1));
console.log(JSON.stringify({ early: at(0), late: at(60000) }));
"""


def test_roomkit_js_keeps_the_python_clients_schedule(tmp_path: Path) -> None:
    assert NODE is not None
    shutil.copy(ROOMKIT_JS, tmp_path / "roomkit.mjs")
    (tmp_path / "main.mjs").write_text(SCHEDULE)
    result = subprocess.run(
        [NODE, "main.mjs"], cwd=tmp_path, capture_output=True, timeout=30, check=True
    )
    waits = json.loads(result.stdout)
    # Within the first minute a wait is at most 2 s, as roomkit.connect's (clients.md).
    assert waits == {
        "early": [500, 1000, 2000, 2000, 2000, 2000],
        "late": [500, 1000, 2000, 4000, 8000, 10000],
    }
    python = Backoff()  # roomkit.connect's defaults: the same waits, in seconds
    assert waits == {
        "early": [python.ceiling(n, 0) * 1000 for n in range(6)],
        "late": [python.ceiling(n, 60) * 1000 for n in range(6)],
    }


#: Connects (offering a subprotocol of its own too), and prints the open events and the
#: messages up to "eight", and the last welcome, as JSON.
ENVELOPE_SCRIPT = """
import { RoomSocket } from "./roomkit.mjs";
const protocols = process.env.PROTOCOLS ? process.env.PROTOCOLS.split(",") : [];
const maxDelay = Number(process.env.MAX_DELAY || 10000);
const options = { minDelay: 10, maxDelay, binaryType: "arraybuffer", protocols };
const socket = new RoomSocket(process.env.ROOM_URL, options);
const events = [];
socket.addEventListener("open", (e) => events.push({ open: [e.resumed, e.recovered] }));
socket.addEventListener("message", (e) => {
  const data = typeof e.data === "string" ? e.data : { bin: [...new Uint8Array(e.data)] };
  events.push({ data, seq: e.seq });
  if (data === "eight") {
    console.log(JSON.stringify({ events, session: socket.session }));
    socket.close();
  }
});
"""


async def test_roomkit_js_delivers_each_payload_once_and_comes_back_to_its_session(
    tmp_path: Path,
) -> None:
    """As the Python client's test: seen up to 5, dropped; back: the replay (5 again,
    6, 7), then 8 live."""
    server = EnvelopeServer(
        [
            [
                welcome_frame(),
                m_frame(4, "four"),
                binary_frame(5, b"\x00\xff"),
                m_frame(None, "unlogged"),
                '["presence_state", {}]',  # a kind it does not know: dropped
            ],
            [
                welcome_frame(session="tok2", seq=7, resumed=True, recovered=True),
                m_frame(5, "five again"),
                m_frame(6, "six"),
                binary_frame(7, b"\x07"),
                binary_frame(0, b""),
                m_frame(8, "eight"),
            ],
        ]
    )
    async with serve_raw(server) as url:
        target = f"{url}/r?userId=ada&roomkit.seq=1"
        result = await run_node(tmp_path, ENVELOPE_SCRIPT, target, PROTOCOLS="mine")
    assert result == {
        "events": [
            {"open": [False, None]},
            {"data": "four", "seq": 4},
            {"data": {"bin": [0, 255]}, "seq": 5},
            {"data": "unlogged", "seq": None},
            {"open": [True, True]},
            {"data": "six", "seq": 6},
            {"data": {"bin": [7]}, "seq": 7},
            {"data": {"bin": []}, "seq": None},
            {"data": "eight", "seq": 8},
        ],
        "session": {"id": "c1", "epoch": "e1", "seq": 7, "resumed": True, "recovered": True},
    }
    first, second = server.requests
    assert first.subprotocols == second.subprotocols == ["mine", "roomkit.v1"]
    assert first.target == "/r?userId=ada"
    assert second.target == "/r?userId=ada&roomkit.session=tok1&roomkit.epoch=e1&roomkit.seq=5"


async def test_roomkit_js_reaches_a_server_without_the_envelope_then_goes_plain_at_once(
    tmp_path: Path,
) -> None:
    """Node, as browsers, fails a connection whose offered subprotocol the server did not
    select: the tries that offer it fail (their frames are never seen), the third retry
    does not, and is then spoken to as before. That plain worked is remembered: the next
    outage's first try is plain, and opens (no join and leave in the room for nothing)."""
    frames = [m_frame(4, "x"), binary_frame(5, b"")]
    failing: list[str] = []
    scripts = [failing, failing, failing, frames, ["eight"]]
    server = EnvelopeServer(scripts, select=False)
    async with serve_raw(server) as url:
        result = await run_node(tmp_path, ENVELOPE_SCRIPT, f"{url}/r?a=1")
    assert result == {
        "events": [
            {"open": [False, None]},
            {"data": frames[0], "seq": None},
            {"data": {"bin": list(frames[1])}, "seq": None},
            {"open": [False, None]},
            {"data": "eight", "seq": None},
        ],
        "session": None,
    }
    assert [r.target for r in server.requests] == ["/r?a=1"] * 5  # no session: no welcome
    offers = [r.subprotocols for r in server.requests]
    assert offers == [["roomkit.v1"]] * 3 + [[]] * 2


@pytest.mark.parametrize("upgraded", [False, True])
async def test_roomkit_js_offers_the_envelope_again_every_fifth_outage_of_a_plain_server(
    tmp_path: Path, upgraded: bool
) -> None:
    """After five plain connections, the next outage's first try offers roomkit.v1: an
    older server fails it (one try, then plain again), an upgraded one welcomes it."""
    failing: list[str] = []
    plain: list[str] = []  # opens, and drops: an outage
    # The recheck: welcomed (and stays open), or failed, and then a plain try.
    rest = [[welcome_frame(), m_frame(4, "eight")]] if upgraded else [failing, ["eight"]]
    scripts = [failing] * 3 + [plain] * 5 + rest
    select = [False] * 8 + [upgraded, False]
    server = EnvelopeServer(scripts, select=select)
    async with serve_raw(server) as url:
        result = await run_node(tmp_path, ENVELOPE_SCRIPT, f"{url}/r")
    offers = [r.subprotocols for r in server.requests]
    if upgraded:
        assert offers == [["roomkit.v1"]] * 3 + [[]] * 5 + [["roomkit.v1"]]
        assert result["session"] is not None
    else:
        assert offers == [["roomkit.v1"]] * 3 + [[]] * 5 + [["roomkit.v1"], []]
        assert result["session"] is None
    assert result["events"][-1]["data"] == "eight"


#: Socket a, until its first message; then socket b (another room, the same server).
TWO_SOCKETS = """
import { RoomSocket } from "./roomkit.mjs";
const options = { minDelay: 10 };
const a = new RoomSocket(`${process.env.ROOM_URL}/a`, options);
a.addEventListener("message", () => {
  a.close();
  const b = new RoomSocket(`${process.env.ROOM_URL}/b`, options);
  b.addEventListener("message", (e) => {
    console.log(JSON.stringify(e.data));
    b.close();
  });
});
"""


async def test_roomkit_js_remembers_a_plain_server_for_the_pages_other_sockets(
    tmp_path: Path,
) -> None:
    failing: list[str] = []
    server = EnvelopeServer([failing, failing, failing, ["one"], ["two"]], select=False)
    async with serve_raw(server) as url:
        assert await run_node(tmp_path, TWO_SOCKETS, url) == "two"
    assert [r.target for r in server.requests] == ["/a"] * 4 + ["/b"]
    assert [r.subprotocols for r in server.requests] == [["roomkit.v1"]] * 3 + [[]] * 2


async def test_roomkit_js_does_not_take_a_welcoming_server_for_plain_after_one_plain_try(
    tmp_path: Path,
) -> None:
    """A server that welcomed the socket, back (after nine failed tries) just on its
    tenth, plain: the next outage offers roomkit.v1 from its first try, as before."""
    failing: list[str] = []
    plain: list[str] = []
    resumed = [welcome_frame(resumed=True), m_frame(4, "eight")]
    scripts = [[welcome_frame()], *[failing] * 9, plain, resumed]
    server = EnvelopeServer(scripts, select=[True] + [False] * 10 + [True])
    async with serve_raw(server) as url:
        result = await run_node(tmp_path, ENVELOPE_SCRIPT, f"{url}/r", MAX_DELAY="5")
    offers = [r.subprotocols for r in server.requests]
    assert offers == [["roomkit.v1"]] * 10 + [[]] + [["roomkit.v1"]]
    assert result["events"][-2:] == [{"open": [True, None]}, {"data": "eight", "seq": 4}]


async def test_roomkit_js_once_welcomed_offers_the_envelope_for_nine_tries_of_ten(
    tmp_path: Path,
) -> None:
    """A server that welcomed the socket speaks roomkit.v1: a restart's tries resume the
    session; only the tenth is plain, for a server rolled back to an older roomkit."""
    failing: list[str] = []
    scripts = [[welcome_frame()], *[failing] * 9, ["eight"]]
    server = EnvelopeServer(scripts, select=[True] + [False] * 10)
    async with serve_raw(server) as url:
        result = await run_node(tmp_path, ENVELOPE_SCRIPT, f"{url}/r", MAX_DELAY="5")
    # A plain connection after a session: recovered false, so that the page refetches.
    assert result["events"][-2:] == [{"open": [False, False]}, {"data": "eight", "seq": None}]
    offers = [r.subprotocols for r in server.requests]
    assert offers == [["roomkit.v1"]] * 10 + [[]]
    assert server.requests[-1].target == "/r?roomkit.session=tok1&roomkit.epoch=e1&roomkit.seq=3"


#: With the default binaryType: prints each message as its type and content, until "end".
BLOBS = """
import { RoomSocket } from "./roomkit.mjs";
const socket = new RoomSocket(process.env.ROOM_URL);
const got = [];
socket.addEventListener("message", (e) => {
  got.push(typeof e.data === "string" ? e.data : e.data.arrayBuffer().then((buffer) => ({
    blob: e.data instanceof Blob, bytes: [...new Uint8Array(buffer)] })));
  if (e.data === "end") Promise.all(got).then((all) => {
    console.log(JSON.stringify(all));
    socket.close();
  });
});
"""


async def test_roomkit_js_gives_binary_payloads_as_blobs_by_default(tmp_path: Path) -> None:
    """As a plain WebSocket does: the envelope's binary frames are read as ArrayBuffers,
    their payloads handed over as Blobs unless binaryType says "arraybuffer"."""
    server = EnvelopeServer([[welcome_frame(), binary_frame(4, b"\x01\x02"), m_frame(5, "end")]])
    async with serve_raw(server) as url:
        result = await run_node(tmp_path, BLOBS, f"{url}/r")
    assert result == [{"blob": True, "bytes": [1, 2]}, "end"]


#: Prints the first message's payload once its socket is open.
FIRST_MESSAGE = """
import { RoomSocket } from "./roomkit.mjs";
const socket = new RoomSocket(process.env.ROOM_URL, { minDelay: 10 });
socket.addEventListener("message", (e) => {
  console.log(e.data);
  socket.close();
});
"""


async def test_roomkit_js_talks_to_a_roomkit_server(start: Start, tmp_path: Path) -> None:
    """Whether or not the server selects roomkit.v1, the page sees the room's payloads."""
    server = await start(ChatRoom)
    message = await run_node(tmp_path, FIRST_MESSAGE, f"{server.url}/lobby?userId=ada")
    assert message == {"type": "welcome", "user": "ada", "users": ["ada"]}
