"""Shared fixtures.

Rules for the whole suite: servers listen on 127.0.0.1 port 0 and are started with
``nursery.start``; clients are ones roomkit did not write (trio-websocket's, the
``websockets`` package's); nothing sleeps for real: waiting is ``fail_after`` around an
event, and time that must pass is a MockClock's.

``autojump_clock`` jumps whenever every task waits, even for bytes still in flight
(Trio's MockClock documentation warns of it). So a test that needs it runs over
``roomkit.testing``'s in-memory transport, where nothing is ever in flight, and asserts
exact times. Where the socket is the point (TLS, the front door, ``serve`` itself, the
clients), a test keeps autojump only if the clock can jump to nothing but the deadline
it measures, and otherwise uses real time with short bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import pytest
import trio

import roomkit

from .helpers import Start

pytest_plugins = ["pytester"]  # for the tests of roomkit.testing's pytest plugin


@pytest.fixture
def start(nursery: trio.Nursery) -> Start:
    """``await start(RoomClass or mapping, **serve_kwargs)`` → a running Server."""

    async def start(
        rooms: type[roomkit.Room] | Mapping[str, type[roomkit.Room]], **kwargs: Any
    ) -> roomkit.Server:
        server: roomkit.Server = await nursery.start(
            partial(roomkit.serve, rooms, port=0, **kwargs)
        )
        return server

    return start
