"""Crash safety: ``kill -9`` a real ``roomkit serve`` mid-stream, restart it, and check
that every acknowledged write and the overdue alarm survived.

Two real processes and real time: a bounded, sub-second wait lets the alarm come due
while no server runs.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from websockets.sync.client import connect

from .helpers import call, roomkit_serve


def test_acknowledged_writes_and_due_alarms_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    # max_queue=None: the client keeps reading (and so sees the server die) while the
    # test takes its time over the acknowledgements.
    with (
        roomkit_serve("tests.apps:KV", "--storage", str(db)) as (process, url),
        connect(f"{url}/ledger", max_queue=None) as ws,
    ):
        due = call(ws, "set_alarm", delay=0.5)
        for i in range(3000):
            ws.send(json.dumps({"op": "put", "key": f"k{i:05}", "value": i}))
        acked = [json.loads(ws.recv(timeout=10)) for _ in range(500)]
        process.send_signal(signal.SIGKILL)  # mid-stream: thousands of puts still in flight
        process.wait()
    assert [a["op"] for a in acked] == ["put"] * 500
    time.sleep(max(0.0, due - time.time()))  # the alarm comes due while nothing runs

    with (
        roomkit_serve("tests.apps:KV", "--storage", str(db)) as (_, url),
        connect(f"{url}/ledger") as ws,
    ):
        stored = dict(call(ws, "list", prefix="k"))
        assert all(f"k{i:05}" in stored for i in range(500)), "an acknowledged write was lost"
        assert list(stored) == [f"k{i:05}" for i in range(len(stored))]  # a prefix, in order
        deadline = time.monotonic() + 5
        while (fired := call(ws, "get", key="fired")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fired is not None and [run["retry"] for run in fired] == [0]
        assert call(ws, "get_alarm") is None
