"""``serve`` as a whole: shutdown, other clients, and the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import roomkit

from .helpers import ROOT, Start, expect_close, open_client, roomkit_serve

ROOMKIT = (sys.executable, "-m", "roomkit")


class Goodbye(roomkit.Room):
    closes: ClassVar[list[tuple[str, int, bool]]] = []

    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        Goodbye.closes.append((self.name, code, clean))


async def test_shutdown_closes_every_socket_with_1001_and_runs_on_close(
    nursery: trio.Nursery,
) -> None:
    Goodbye.closes = []
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[roomkit.Server]) -> None:
        with scope:
            await roomkit.serve(Goodbye, port=0, task_status=task_status)
        done.set()

    server: roomkit.Server = await nursery.start(run)
    async with open_client(f"{server.url}/a") as a, open_client(f"{server.url}/b") as b:
        await a.send_message("queued before shutdown")
        with trio.fail_after(5):
            assert await a.get_message() == "queued before shutdown"
        scope.cancel()
        for ws in (a, b):
            reason = await expect_close(ws)
            assert (reason.code, reason.reason) == (1001, "Going away")
        with trio.fail_after(5):
            await done.wait()
    assert sorted(Goodbye.closes) == [("a", 1001, True), ("b", 1001, True)]
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", server.port)


async def test_websockets_package_client(start: Start) -> None:
    server = await start(Goodbye)

    def talk() -> list[Any]:
        with connect(f"{server.url}/sync") as ws:
            ws.send("text")
            ws.send(b"\x01\x02")
            return [ws.recv(timeout=5), ws.recv(timeout=5)]

    assert await trio.to_thread.run_sync(talk) == ["text", b"\x01\x02"]


def test_serve_refuses_routes_that_are_not_rooms() -> None:
    async def main() -> None:
        await roomkit.serve({"/x": object})  # type: ignore[dict-item]

    with pytest.raises(TypeError, match="must be a Room subclass"):
        trio.run(main)


def test_url_brackets_ipv6() -> None:
    assert roomkit.Server("::1", 80).url == "ws://[::1]:80"


def test_cli_serves_the_chat_example_and_shuts_down_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "chat.sqlite3"
    with roomkit_serve("examples.chat:ChatRoom", "--storage", str(db)) as (process, url):
        with connect(f"{url}/lobby?userId=ann") as ws:
            assert '"type": "welcome"' in str(ws.recv(timeout=5))
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert process.wait(timeout=10) == 0
        assert db.exists()


def test_cli_usage_errors() -> None:
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True, timeout=30)
    result = run([sys.executable, "-m", "roomkit", "serve", "examples.chat"])
    assert result.returncode == 2 and "expected MODULE:ATTR" in result.stderr
    result = run([sys.executable, "-m", "roomkit", "serve", "examples.chat:Chat"])
    assert result.returncode == 2 and "neither a Room subclass nor a mapping" in result.stderr
    result = run([*ROOMKIT, "serve", "no_such_module:Room"])
    assert result.returncode == 2 and "no module named 'no_such_module'" in result.stderr
    result = run([*ROOMKIT, "serve", "examples.chat:Nope"])
    assert result.returncode == 2 and "has no attribute 'Nope'" in result.stderr
