"""A shutdown whose drain runs out still ends cleanly, however its rooms are ending."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import roomkit
from roomkit.testing import open_test_server

#: Rooms, each with one client.
ROOMS = 20
#: Seconds the drain has.
DRAIN = 1.0


class EndsWithTheDrain(roomkit.Room):
    """Its ``on_close`` returns once the drain has run out."""

    ran_out = trio.Event()

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        await EndsWithTheDrain.ran_out.wait()


class _RanOut(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("drain timed out"):
            EndsWithTheDrain.ran_out.set()


@contextlib.contextmanager
def on_close_returns_as_the_drain_runs_out() -> Iterator[None]:
    """Have every ``on_close`` waiting return the instant the drain runs out: the
    server logs it there, just before it cancels the rooms still open."""
    EndsWithTheDrain.ran_out = trio.Event()
    handler = _RanOut()
    server_log = logging.getLogger("roomkit.server")
    server_log.addHandler(handler)
    try:
        yield
    finally:
        server_log.removeHandler(handler)


async def test_rooms_ending_as_the_drain_runs_out_end_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Each room, its last client gone, is back from on_close with its end due, its
    # event loop not yet run, as the server cancels every room still there. A room
    # must end once (it ended twice: "a room gone cannot end", or its task
    # rescheduled again), and the server stop without an error.
    with on_close_returns_as_the_drain_runs_out():
        async with contextlib.AsyncExitStack() as clients:
            async with open_test_server(EndsWithTheDrain, drain_timeout=DRAIN) as server:
                for index in range(ROOMS):
                    await clients.enter_async_context(server.connect(f"/r{index}"))
                began = trio.current_time()
            assert trio.current_time() - began == DRAIN
    assert EndsWithTheDrain.ran_out.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # not logged either
