"""Recovery over real sockets, with a client roomkit did not write: the ``websockets``
package's, offering ``roomkit.v1`` and reading the envelope as docs/recovery.md says,
its TCP connection reset without a close frame (SO_LINGER 0, then close: an RST)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import trio
from websockets.sync.client import ClientConnection, connect

from roomkit.testing import open_test_server

from .test_recovery import Chat

V1: Any = ["roomkit.v1"]
WAIT = 10  # seconds a receive may take before the test fails


def reset(ws: ClientConnection) -> None:
    """Drop ``ws``'s TCP connection at once, without a close frame: an RST."""
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()


def frame(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=WAIT))


def say(feeder: ClientConnection, *numbers: int) -> None:
    for n in numbers:
        feeder.send(f"b:{n}")
        assert feeder.recv(timeout=WAIT) == str(n)


def resume_url(url: str, w: dict[str, Any], seq: int) -> str:
    return (
        f"{url}/lobby?roomkit.session={w['session']}&roomkit.epoch={w['epoch']}&roomkit.seq={seq}"
    )


def dropped_and_resumed(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with connect(f"{url}/lobby") as feeder:
        with connect(f"{url}/lobby?name=ann&tag=red", subprotocols=V1) as ann:
            assert ann.subprotocol == "roomkit.v1"
            kind, first = frame(ann)
            assert kind == "welcome" and first["recovered"] is None
            say(feeder, 1, 2, 3)
            assert [frame(ann) for _ in range(3)] == [["m", n, str(n)] for n in (1, 2, 3)]
            reset(ann)
        say(feeder, *range(4, 11))
        with connect(resume_url(url, first, 3), subprotocols=V1) as back:
            kind, again = frame(back)
            assert kind == "welcome"
            assert [frame(back) for _ in range(7)] == [["m", n, str(n)] for n in range(4, 11)]
            say(feeder, 11)
            assert frame(back) == ["m", 11, "11"]
            back.send("me")
            me = frame(back)
            assert me[0:2] == ["m", None]
            assert json.loads(me[2]) == {"id": first["id"], "tags": ["red"], "att": {"name": "ann"}}
        return first, again


async def test_exactly_the_missed_messages_after_a_reset_connection() -> None:
    Chat.events.clear()
    async with open_test_server(Chat, real_sockets=True) as server:
        assert server.url is not None
        first, again = await trio.to_thread.run_sync(dropped_and_resumed, server.url)
    assert again["id"] == first["id"] and again["resumed"] is True
    assert again["recovered"] is True and again["seq"] == 10
    assert [e[0] for e in Chat.events if e[1] == first["id"]] == ["connect", "close"]


def before_the_restart(url: str) -> dict[str, Any]:
    with connect(f"{url}/lobby") as feeder:
        with connect(f"{url}/lobby", subprotocols=V1) as ann:
            _, first = frame(ann)
            say(feeder, 1)
            assert frame(ann) == ["m", 1, "1"]
            reset(ann)
        say(feeder, 2, 3)
    return first


def after_the_restart(url: str, first: dict[str, Any]) -> dict[str, Any]:
    with connect(resume_url(url, first, 1), subprotocols=V1) as back:
        _, again = frame(back)
        assert [frame(back) for _ in range(2)] == [["m", 2, "2"], ["m", 3, "3"]]
        back.send("b:4")
        assert frame(back) == ["m", 4, "4"]
        return dict(again)


async def test_a_resume_across_a_restart_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "rooms.sqlite3"
    async with open_test_server(Chat, real_sockets=True, storage=path) as server:
        assert server.url is not None
        first = await trio.to_thread.run_sync(before_the_restart, server.url)
    Chat.events.clear()
    async with open_test_server(Chat, real_sockets=True, storage=path) as server:
        assert server.url is not None
        again = await trio.to_thread.run_sync(after_the_restart, server.url, first)
    assert again["resumed"] is False and again["recovered"] is True
    assert again["epoch"] == first["epoch"] and again["id"] != first["id"]
    assert [e[0] for e in Chat.events] == ["connect", "close"]  # a fresh connect
