"""The Connection handle alone (pure): its checks, against a stand-in for its transport."""

from __future__ import annotations

import gc
import json
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import roomkit
from roomkit._connection import Connection, detach
from roomkit._core.lifecycle import ConnectionState
from roomkit._request import Request
from roomkit.testing import open_test_server


@attrs.define
class FakeLink:
    """Records what the handle asks of its transport."""

    state: ConnectionState = ConnectionState.OPEN
    last_seen: float = 1.5
    auto_response_timestamp: float | None = None
    tags: tuple[str, ...] = ()
    calls: list[tuple[Any, ...]] = attrs.Factory(list)

    def retag(self, tags: tuple[str, ...]) -> None:
        self.calls.append(("retag", tags))

    def send(self, message: Any) -> None:
        self.calls.append(("send", message))

    def close(self, code: int, reason: str) -> None:
        self.calls.append(("close", code, reason))


def handle() -> tuple[Connection, FakeLink]:
    link = FakeLink()
    return Connection(link, Request("/r", "r", {}, {}, None)), link


def test_it_passes_sends_closes_and_tags_on() -> None:
    conn, link = handle()
    conn.send("hi")
    conn.close(4000, "bye")
    conn.tags = ["a", "b", "a"]
    assert link.calls == [("send", "hi"), ("close", 4000, "bye"), ("retag", ("a", "b"))]
    assert (conn.state, conn.last_seen, conn.tags) == (ConnectionState.OPEN, 1.5, ())


def test_the_attachment_limit_is_16_kib_of_utf8() -> None:
    conn, _ = handle()
    conn.attachment = "a" * (16384 - 2)  # with its quotes, exactly 16384 bytes
    with pytest.raises(ValueError, match="at most 16384 bytes serialised, this one is 16385"):
        conn.attachment = "a" * (16384 - 1)
    with pytest.raises(ValueError, match="this one is 16386"):
        conn.attachment = "é" * 8192  # 8,194 characters, 16,386 bytes
    assert conn.attachment == "a" * (16384 - 2)


def test_the_attachment_is_kept_serialised() -> None:
    conn, _ = handle()
    value = {"n": [1, 2]}
    conn.attachment = value
    value["n"].append(3)
    assert conn.attachment == {"n": [1, 2]}
    assert json.loads(json.dumps(conn.attachment)) == {"n": [1, 2]}


def test_a_close_reason_is_at_most_123_bytes_of_utf8() -> None:
    conn, link = handle()
    conn.close(1000, "a" * 123)
    with pytest.raises(ValueError, match="at most 123 bytes of UTF-8"):
        conn.close(1000, "a" * 124)
    with pytest.raises(ValueError, match="at most 123 bytes of UTF-8"):
        conn.close(1000, "é" * 62)  # 62 characters, 124 bytes
    conn.close(1000, "é" * 61)
    assert link.calls == [("close", 1000, "a" * 123), ("close", 1000, "é" * 61)]


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_codes_that_may_not_be_sent_are_refused(code: int) -> None:
    conn, link = handle()
    with pytest.raises(ValueError, match=f"close code {code} may not be sent"):
        conn.close(code)
    assert link.calls == []


@pytest.mark.parametrize("state", [ConnectionState.CLOSING, ConnectionState.CLOSED])
def test_closing_a_connection_already_closing_does_nothing_whatever_the_code(
    state: ConnectionState,
) -> None:
    conn, link = handle()
    link.state = state
    conn.close(1006)  # what on_close is told of a dropped connection
    conn.close(1000, "x" * 124)
    conn.close()
    assert link.calls == []


@pytest.mark.parametrize("state", [ConnectionState.CONNECTING, ConnectionState.OPEN])
def test_closing_a_connection_not_closing_yet_is_checked(state: ConnectionState) -> None:
    conn, link = handle()
    link.state = state
    with pytest.raises(ValueError, match="close code 1006 may not be sent"):
        conn.close(1006)
    conn.close(4000)
    assert link.calls == [("close", 4000, "")]


def test_its_state_is_read_only() -> None:
    conn, _ = handle()
    with pytest.raises(AttributeError):
        conn.state = ConnectionState.CLOSED  # type: ignore[misc]


def test_a_detached_handle_keeps_what_hooks_read_and_drops_sends() -> None:
    conn, link = handle()
    link.auto_response_timestamp = 1_700_000_000.25
    detach(conn)
    assert (conn.state, conn.last_seen, conn.tags) == (ConnectionState.CLOSED, 1.5, ())
    assert conn.auto_response_timestamp == 1_700_000_000.25
    conn.tags = ["gone"]  # a connection that has left may be retagged; it stays out
    conn.send("late")
    conn.close()
    assert conn.tags == ("gone",) and link.calls == []


class Echo(roomkit.Room):
    async def on_message(self, conn: roomkit.Connection, message: Any) -> None:
        conn.send(message)


async def test_a_closed_connection_is_freed_without_the_garbage_collector() -> None:
    # Each cycle through a connection left a collection for every handshake to pay.
    async with open_test_server(Echo) as server:
        gc.collect()
        gc.disable()
        try:
            for _ in range(5):
                async with server.connect("/r") as client:
                    await client.send("hi")
                    assert await client.receive() == "hi"
            await trio.testing.wait_all_tasks_blocked()  # every close handled
            left = [o for o in gc.get_objects() if type(o) is roomkit.Connection]
        finally:
            gc.enable()
    assert left == []
