"""The browser client, roomkit.js, run by Node (with its WebSocket) against a real server.

Real time and a real subprocess: each run takes well under a second. Without a Node
that has ``--experimental-websocket`` (20.10 or later), these tests are skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar

import pytest
import trio

import roomkit
from roomkit._reconnect import Backoff

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


class ClosesFirst(roomkit.Room):
    """Closes the first connection to each room with the code the room is named after."""

    seen: ClassVar[set[str]] = set()

    async def on_connect(self, conn: roomkit.Connection, request: roomkit.Request) -> None:
        if self.name not in ClosesFirst.seen:
            ClosesFirst.seen.add(self.name)
            conn.close(int(self.name), "bye")


@pytest.mark.parametrize(("code", "attempt", "delay"), [(1012, 0, 0), (1001, 1, 500)])
async def test_after_a_1012_close_roomkit_js_comes_back_at_once(
    start: Start, tmp_path: Path, code: int, attempt: int, delay: int
) -> None:
    assert NODE is not None
    server = await start(ClosesFirst)
    shutil.copy(ROOMKIT_JS, tmp_path / "roomkit.mjs")
    (tmp_path / "main.mjs").write_text(SCRIPT)
    with trio.fail_after(20):
        result = await trio.run_process(
            [NODE, "--experimental-websocket", "--no-warnings", "main.mjs"],
            cwd=tmp_path,
            env={"ROOM_URL": f"{server.url}/{code}"},
            capture_stdout=True,
            capture_stderr=True,
        )
    _, closed, reconnecting, reopened = json.loads(result.stdout)
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
