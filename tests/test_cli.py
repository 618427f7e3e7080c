"""The ``roomkit`` command: signals and graceful restarts, configuration, usage errors.

Signals go to real ``roomkit serve`` subprocesses that the tests start themselves; each
waits for the process with a bounded timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import roomkit

from .helpers import ROOT, call, roomkit_serve

ROOMKIT = (sys.executable, "-m", "roomkit")


def stored(db: Path, room: str, keys: list[str]) -> dict[str, Any]:
    """What ``room`` (served by a single Room class) has stored in the SQLite file ``db``."""

    async def read() -> dict[str, str]:
        store = await roomkit.storage.SQLiteStore.open(db)
        try:
            return await store.get_many(roomkit.storage.RoomId("", room), keys)
        finally:
            await store.aclose()

    return {key: json.loads(value) for key, value in trio.run(read).items()}


def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes: its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


def test_sigterm_closes_with_1012_commits_storage_and_exits_0(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    with roomkit_serve("tests.apps:Farewell", "--storage", str(db)) as (process, url):
        with connect(f"{url}/ledger") as ws:
            assert call(ws, "put", key="a", value=1) is None
            process.send_signal(signal.SIGTERM)
            assert closed_with(ws) == (1012, "Service restart")
        assert process.wait(timeout=10) == 0
    # "goodbye" was written by on_close, during the drain: committed before the exit.
    assert stored(db, "ledger", ["a", "goodbye"]) == {"a": 1, "goodbye": [1012, "Service restart"]}


def test_a_second_signal_during_a_held_up_drain_exits_at_once(tmp_path: Path) -> None:
    db = tmp_path / "rooms.sqlite3"
    options = ("--storage", str(db), "--drain-timeout", "60")
    with roomkit_serve("tests.apps:Farewell", *options) as (process, url):
        with connect(f"{url}/ledger") as ws:
            call(ws, "put", key="linger", value=True)  # on_close will hold the drain up
            process.send_signal(signal.SIGTERM)
            assert closed_with(ws)[0] == 1012
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)  # draining, for up to a minute
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 128 + signal.SIGINT
        assert time.monotonic() - began < 2


def test_cli_usage_errors() -> None:
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=30)
    result = run([*ROOMKIT, "serve", "examples.chat"])
    assert result.returncode == 2 and "expected MODULE:ATTR" in result.stderr
    result = run([*ROOMKIT, "serve", "examples.chat:Chat"])
    assert result.returncode == 2 and "neither a Room subclass nor a mapping" in result.stderr
    result = run([*ROOMKIT, "serve", "no_such_module:Room"])
    assert result.returncode == 2 and "no module named 'no_such_module'" in result.stderr
    result = run([*ROOMKIT, "serve", "examples.chat:Nope"])
    assert result.returncode == 2 and "has no attribute 'Nope'" in result.stderr
