"""Crash safety: ``kill -9`` a real ``roomkit serve`` mid-stream, restart it, and check
that every acknowledged write and the overdue alarm survived.

Two real processes and real time: a bounded, sub-second wait lets the alarm come due
while no server runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).parent.parent
SERVE = (sys.executable, "-m", "roomkit", "serve", "tests.apps:KV", "--port", "0")


@contextmanager
def roomkit_serve(db: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [*SERVE, "--storage", str(db)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        match = re.search(r"listening on (ws://\S+)", process.stderr.readline())
        assert match, "the server did not start"
        yield process, match[1]
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def call(ws: ClientConnection, op: str, **args: Any) -> Any:
    ws.send(json.dumps({"op": op, **args}))
    while "op" not in (reply := json.loads(ws.recv(timeout=10))):
        pass  # an alarm's broadcast
    return reply["result"]


def test_acknowledged_writes_and_due_alarms_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    # max_queue=None: the client keeps reading (and so sees the server die) while the
    # test takes its time over the acknowledgements.
    with roomkit_serve(db) as (process, url), connect(f"{url}/ledger", max_queue=None) as ws:
        due = call(ws, "set_alarm", delay=0.5)
        for i in range(3000):
            ws.send(json.dumps({"op": "put", "key": f"k{i:05}", "value": i}))
        acked = [json.loads(ws.recv(timeout=10)) for _ in range(500)]
        process.send_signal(signal.SIGKILL)  # mid-stream: thousands of puts still in flight
        process.wait()
    assert [a["op"] for a in acked] == ["put"] * 500
    time.sleep(max(0.0, due - time.time()))  # the alarm comes due while nothing runs

    with roomkit_serve(db) as (_, url), connect(f"{url}/ledger") as ws:
        stored = dict(call(ws, "list", prefix="k"))
        assert all(f"k{i:05}" in stored for i in range(500)), "an acknowledged write was lost"
        assert list(stored) == [f"k{i:05}" for i in range(len(stored))]  # a prefix, in order
        deadline = time.monotonic() + 5
        while (fired := call(ws, "get", key="fired")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fired is not None and [run["retry"] for run in fired] == [0]
        assert call(ws, "get_alarm") is None
