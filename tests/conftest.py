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

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import roomkit
from roomkit.storage import Store, open_store

from .helpers import Start
from .pg import PostgresServer, Unavailable, open_server

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The tests' PostgreSQL server (``tests/pg.py``): ``ROOMKIT_TEST_POSTGRES``'s, or a
    throwaway one started for the session. Without either, a test that asks for it
    skips, saying why, or fails where ``ROOMKIT_REQUIRE_POSTGRES=1`` (CI, ``make test``)."""
    try:
        with open_server() as server:
            yield server
    except Unavailable as exc:
        if os.environ.get("ROOMKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"ROOMKIT_REQUIRE_POSTGRES=1, but {exc}")
        pytest.skip(str(exc))


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of an empty database on the tests' PostgreSQL, for this test alone."""
    url = postgres.new_database()
    yield url
    postgres.give_back(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store-level test's stores live: a SQLite file, then (the same test
    again) a PostgreSQL database of its own: both backends keep the same semantics."""
    if request.param == "sqlite":
        return str(tmp_path / "rooms.sqlite3")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def new_store(store_location: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """``await new_store()``: a new store on ``store_location`` (without SQLite's lock,
    as the workers of one server open it), closed after the test."""
    opened: list[Store] = []

    async def new_store() -> Store:
        store = await open_store(store_location, lock=False)
        opened.append(store)
        return store

    yield new_store
    for store in opened:
        await store.aclose()
