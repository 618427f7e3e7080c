"""The PostgreSQL store's cluster SQL, and its connections, against a real PostgreSQL.

Each test has a database of its own (the ``postgres_url`` fixture, ``tests/pg.py``);
"members" are stores of their own, as the processes of a cluster would have them, and
a "stopped process" is a connection left idle inside its transaction. Leases run out
by PostgreSQL's clock, so the tests that wait for one use leases of a fraction of a
second. The storage semantics shared with SQLite are tested over both backends in
tests/test_storage.py and tests/test_fencing.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import pq

import roomkit
from roomkit.storage import (
    Acquired,
    AlarmWrite,
    Changes,
    Claim,
    KeyRange,
    Owned,
    Owner,
    PostgresStore,
    RoomId,
)

from . import pg
from .pg import PostgresServer

ROOM = RoomId("/chat", "general")
OTHER = RoomId("/chat", "other")
#: Long enough for no test to see it run out; the lock waits of acquire, short.
LEASE = 60.0
WAIT = 2.0

Open = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def open_store(postgres_url: str) -> AsyncIterator[Open]:
    """``await open_store(**options)``: a new store (a member's) on the test's database."""
    opened: list[PostgresStore] = []

    async def open_store(**options: object) -> PostgresStore:
        store = await PostgresStore.open(postgres_url, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.aclose()


async def registered(open_store: Open, member: str, lease: float = LEASE) -> PostgresStore:
    store = await open_store(member=member)
    await store.register(member, f"{member}.example:80", lease)
    return store


def test_psycopg_is_imported_only_when_a_postgresql_store_is_opened() -> None:
    script = (
        "import sys, roomkit, roomkit.storage\n"
        "assert 'psycopg' not in sys.modules, 'imported with roomkit'\n"
        "roomkit.storage.PostgresStore\n"
        "assert 'psycopg' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


async def test_of_two_members_acquiring_a_room_at_once_one_wins(open_store: Open) -> None:
    a, b = await registered(open_store, "a"), await registered(open_store, "b")
    results: dict[str, Acquired | Owned] = {}

    async def acquire(store: PostgresStore, member: str) -> None:
        results[member] = await store.acquire(ROOM, member, lock_timeout=WAIT)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(acquire, a, "a")
        nursery.start_soon(acquire, b, "b")
    [winner] = [m for m, r in results.items() if isinstance(r, Acquired)]
    loser = "b" if winner == "a" else "a"
    assert results[winner] == Acquired(Claim(ROOM, 1), None)
    assert results[loser] == Owned(winner, f"{winner}.example:80", draining=False)
    assert await a.locate(ROOM) == Owner(winner, f"{winner}.example:80", live=True)


async def test_a_race_lost_while_waiting_for_the_winners_lock_names_the_winner(
    open_store: Open, postgres_url: str
) -> None:
    b = await registered(open_store, "b")
    await registered(open_store, "a")
    with psycopg.connect(postgres_url, autocommit=True) as winner:
        winner.execute("BEGIN")  # a's acquire, not committed yet
        winner.execute(
            "INSERT INTO roomkit.rooms VALUES (%s, %s, 1, 'a')", (ROOM.namespace, ROOM.name)
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _commit_after, winner, 0.2)
            result = await b.acquire(ROOM, "b", lock_timeout=WAIT)
    assert result == Owned("a", "a.example:80", draining=False)


@asynccontextmanager
async def ended_after(conn: psycopg.Connection[Any], seconds: float) -> AsyncIterator[list[bool]]:
    """Roll back ``conn``'s transaction if the block lasts ``seconds``, so that a call
    waiting on its locks (from a worker thread, which no cancellation reaches) fails
    the test instead of hanging it; the list says whether it came to that."""
    ended: list[bool] = []

    async def end() -> None:
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(conn.execute, "ROLLBACK")
        ended.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end)
        yield ended
        nursery.cancel_scope.cancel()


def _commit_after(conn: psycopg.Connection[Any], seconds: float) -> None:
    time.sleep(seconds)
    conn.execute("COMMIT")


async def test_a_member_whose_lease_ran_out_loses_its_rooms_and_its_writes(
    open_store: Open,
) -> None:
    a = await registered(open_store, "a", lease=0.5)
    b = await registered(open_store, "b")
    acquired = await a.acquire(ROOM, "a", lock_timeout=WAIT)
    assert isinstance(acquired, Acquired)
    assert await a.commit([(acquired.claim, Changes({"k": '"a"'}, alarm=AlarmWrite(7.0)))]) == []
    owned = await b.acquire(ROOM, "b", lock_timeout=WAIT)
    assert owned == Owned("a", "a.example:80", False)
    assert isinstance(owned, Owned) and 0 < owned.expires_in <= 0.5  # what a's lease has left
    live = await b.locate(ROOM)
    assert live is not None and 0 < live.expires_in <= owned.expires_in
    await trio.sleep(0.6)  # a's lease runs out, by PostgreSQL's clock
    expired = await b.locate(ROOM)
    assert expired == Owner("a", "a.example:80", live=False)
    assert expired.expires_in <= -0.1
    taken = await b.acquire(ROOM, "b", lock_timeout=WAIT)
    assert taken == Acquired(Claim(ROOM, 2), AlarmWrite(7.0, 0))  # with a's alarm
    [refused] = await a.commit([(acquired.claim, Changes({"k": '"lost"'}))])
    assert (refused.room, refused.epoch, refused.owner) == (ROOM, 1, "b")
    assert await b.get_many(ROOM, ["k"]) == {"k": '"a"'}
    assert await a.heartbeat("a", 1, LEASE) is True  # late, but it was not replaced


async def test_a_draining_owner_keeps_its_rooms_until_it_releases_them(open_store: Open) -> None:
    a, b = await registered(open_store, "a"), await registered(open_store, "b")
    incarnation = await a.register("a", "a.example:80", LEASE)
    acquired = await a.acquire(ROOM, "a", lock_timeout=WAIT)
    assert isinstance(acquired, Acquired)
    await a.set_draining("a", incarnation)
    assert await b.locate(ROOM) == Owner("a", "a.example:80", live=False)
    # Its drain's last commit must land: the room is not taken from under it.
    assert await b.acquire(ROOM, "b", lock_timeout=WAIT) == Owned("a", "a.example:80", True)
    assert await a.commit([(acquired.claim, Changes({"last": "1"}))]) == []
    await a.release([acquired.claim, Claim(OTHER, 1)], "a")  # OTHER: never a's, untouched
    assert await b.locate(ROOM) is None
    assert await b.acquire(ROOM, "b", lock_timeout=WAIT) == Acquired(Claim(ROOM, 2), None)
    await a.leave("a", incarnation)
    assert await a.heartbeat("a", incarnation, LEASE) is False


async def test_an_owner_that_left_without_releasing_has_no_lease_left(open_store: Open) -> None:
    a, b = await open_store(member="a"), await registered(open_store, "b")
    incarnation = await a.register("a", "a.example:80", LEASE)
    assert isinstance(await a.acquire(ROOM, "a", lock_timeout=WAIT), Acquired)
    await a.leave("a", incarnation)
    gone = await b.locate(ROOM)
    assert gone == Owner("a", None, live=False)
    assert gone.expires_in == 0


async def test_release_gives_up_only_what_the_member_still_holds(open_store: Open) -> None:
    a, b = await registered(open_store, "a"), await registered(open_store, "b")
    first = await a.acquire(ROOM, "a", lock_timeout=WAIT)
    assert isinstance(first, Acquired)
    await a.release([first.claim], "b")  # not b's
    assert await a.locate(ROOM) == Owner("a", "a.example:80", live=True)
    second = await a.acquire(ROOM, "a", lock_timeout=WAIT)  # a's again: a new epoch
    assert second == Acquired(Claim(ROOM, 2), None)
    await a.release([first.claim], "a")  # an old claim releases nothing
    assert await b.locate(ROOM) == Owner("a", "a.example:80", live=True)
    await a.release([second.claim], "a")
    assert await b.locate(ROOM) is None


async def test_a_restarted_member_takes_its_rooms_back_at_once(open_store: Open) -> None:
    old = await open_store(member="a")
    first = await old.register("a", "a.example:80", LEASE)
    assert isinstance(await old.acquire(ROOM, "a", lock_timeout=WAIT), Acquired)
    new = await open_store(member="a")  # the same member id, restarted
    second = await new.register("a", "a.example:81", LEASE)
    assert second > first
    assert await new.acquire(ROOM, "a", lock_timeout=WAIT) == Acquired(Claim(ROOM, 2), None)
    assert await old.heartbeat("a", first, LEASE) is False  # replaced: self-fence
    assert await new.heartbeat("a", second, LEASE) is True
    assert await old.locate(ROOM) == Owner("a", "a.example:81", live=True)


async def test_orphan_alarms_are_those_of_free_rooms_due_within_the_horizon(
    open_store: Open,
) -> None:
    a = await registered(open_store, "a")
    dead = await registered(open_store, "dead", lease=0.3)
    now = time.time()
    alarms = {
        RoomId("", "free"): (None, now + 5),
        RoomId("", "late"): (None, now + 500),  # beyond the horizon
        RoomId("", "overdue"): (None, now - 50),
        RoomId("", "live"): (a, now + 1),
        RoomId("", "dead"): (dead, now + 2),
    }
    for room, (owner, at) in alarms.items():
        if owner is None:
            claim = await a.claim(room, "whoever")
            await a.commit([(claim, Changes(alarm=AlarmWrite(at, 1)))])
            await a.release([claim], "whoever")
        else:
            acquired = await owner.acquire(room, "a" if owner is a else "dead", lock_timeout=WAIT)
            assert isinstance(acquired, Acquired)
            await owner.commit([(acquired.claim, Changes(alarm=AlarmWrite(at)))])
    await trio.sleep(0.4)  # dead's lease runs out
    orphans = await a.orphan_alarms(60)
    assert [(room.name, retry) for room, _, retry in orphans] == [
        ("overdue", 1),
        ("dead", 0),
        ("free", 1),
    ]
    assert [due for _, due, _ in orphans] == [alarms[room][1] for room, _, _ in orphans]
    mine = await a.orphan_alarms(60, member="a")  # a restarted a's too
    assert [room.name for room, _, _ in mine] == ["overdue", "live", "dead", "free"]


async def test_a_commit_skips_a_room_another_session_holds_and_lands_the_rest(
    open_store: Open, postgres_url: str
) -> None:
    store = await open_store()
    held, free = await store.claim(ROOM, "me"), await store.claim(OTHER, "me")
    with psycopg.connect(postgres_url, autocommit=True) as other:
        other.execute("BEGIN")  # a claim in progress, or a stopped process's transaction
        other.execute("SELECT 1 FROM roomkit.rooms WHERE room = %s FOR UPDATE", (ROOM.name,))
        async with ended_after(other, WAIT) as ended:  # the commit is not blocked
            batch = [(held, Changes({"k": "1"})), (free, Changes({"k": "2"}))]
            refused = await store.commit(batch)
        assert not ended
        other.execute("ROLLBACK")
    assert [(e.room, e.epoch) for e in refused] == [(ROOM, 1)]
    assert await store.get_many(ROOM, ["k"]) == {}
    assert await store.get_many(OTHER, ["k"]) == {"k": "2"}


async def test_a_stopped_processs_open_transaction_ends_and_the_takeover_proceeds(
    open_store: Open,
) -> None:
    stopped = await open_store(member="a", idle_in_transaction_timeout=0.3)
    await stopped.register("a", "a.example:80", 0.1)
    b = await registered(open_store, "b")
    acquired = await stopped.acquire(ROOM, "a", lock_timeout=WAIT)
    assert isinstance(acquired, Acquired)
    assert await stopped.commit([(acquired.claim, Changes({"k": "1"}))]) == []
    # The process stops inside a transaction of its commit connection, holding the
    # room's row, idle (roomkit's own calls send a transaction as one message, which
    # a stop cannot split; this stands for any session left so).
    conn = stopped._writer._conn
    assert conn is not None
    conn.execute("BEGIN")
    conn.execute("SELECT 1 FROM roomkit.rooms WHERE room = %s FOR UPDATE", (ROOM.name,))
    await trio.sleep(0.2)  # its lease runs out; its transaction is still open
    with trio.fail_after(WAIT):
        taken = await b.acquire(ROOM, "b", lock_timeout=WAIT)
    assert taken == Acquired(Claim(ROOM, 2), None)
    # Resumed, it finds its connection ended by the server: it reconnects, and is fenced.
    [refused] = await stopped.commit([(acquired.claim, Changes({"k": "2"}))])
    assert refused.owner == "b"


@pytest.mark.parametrize("call", ["commit", "acquire", "release"])
async def test_a_call_that_locks_rows_is_sent_whole_before_any_answer(
    open_store: Open, tmp_path: Path, call: str
) -> None:
    # A transaction sent whole is run whole: a process stopped after sending it leaves
    # no transaction open. (A pipeline sent BEGIN, then each statement, then COMMIT,
    # and idle_in_transaction_session_timeout does not end a session waiting in the
    # middle of one: a stop between them held the rooms' rows until SIGCONT.)
    store = await registered(open_store, "a")
    first = await store.acquire(ROOM, "a", lock_timeout=WAIT)
    second = await store.acquire(OTHER, "a", lock_timeout=WAIT)
    assert isinstance(first, Acquired) and isinstance(second, Acquired)
    claims = [first.claim, second.claim]
    assert await store.commit([(claim, Changes({"k": "1"})) for claim in claims]) == []
    conn = store._writer._conn if call == "commit" else store._pool._idle[-1]._conn
    assert conn is not None
    path = tmp_path / "trace"
    with path.open("w") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        if call == "commit":  # its second: psycopg prepares a statement at its fifth
            changes = [(claim, Changes({"k": "2", "gone": None})) for claim in claims]
            assert await store.commit(changes) == []
        elif call == "acquire":
            assert isinstance(await store.acquire(ROOM, "a", lock_timeout=WAIT), Acquired)
        else:
            await store.release(claims, "a")
        conn.pgconn.untrace()
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    sides = "".join(fields[0] for fields in lines if len(fields) > 2)  # F: sent, B: back
    sent = [fields[2] for fields in lines if len(fields) > 2 and fields[0] == "F"]
    assert sides.rstrip("B") == "F" * len(sent), path.read_text()  # all sent, then answers
    assert [name for name in sent if name in ("Sync", "Query")] == sent[-1:]  # one


async def test_keys_and_values_bound_by_the_client_land_as_they_were(open_store: Open) -> None:
    # The batch's values are bound into the message's text (ClientCursor), arrays too:
    # PostgreSQL's quoting and array syntax must not show through.
    store = await open_store()
    claim = await store.claim(ROOM, "me")
    texts = ["'", "''", '"', "\\", "{a,b}", "NULL", "%s", "%(ns)s", "a;b", "line\nbreak", " "]
    writes: dict[str, str | None] = {key: f'"{key}"' for key in texts}
    assert await store.commit([(claim, Changes(writes))]) == []
    assert await store.get_many(ROOM, texts) == writes
    assert await store.commit([(claim, Changes({"'": None, "NULL": None}))]) == []
    assert await store.get_many(ROOM, ["'", "NULL", "%s"]) == {"%s": '"%s"'}


async def test_a_batch_with_a_stale_and_a_current_claim_of_a_room_lands_the_current(
    open_store: Open,
) -> None:
    # One statement for the batch: the stale claim's writes to the same keys are fenced,
    # not written twice over (which one INSERT ... ON CONFLICT could not do).
    store = await open_store()
    stale, current = await store.claim(ROOM, "me"), await store.claim(ROOM, "me")
    batch = [
        (current, Changes({"k": '"current"', "gone": None}, cleared=True, alarm=AlarmWrite(9.0))),
        (stale, Changes({"k": '"stale"'}, alarm=AlarmWrite(None))),
    ]
    [refused] = await store.commit(batch)
    assert (refused.room, refused.epoch, refused.owner) == (ROOM, 1, "me")
    assert await store.get_many(ROOM, ["k", "gone"]) == {"k": '"current"'}
    assert await store.alarms() == [(ROOM, 9.0, 0)]


async def test_an_acquire_waits_no_longer_than_its_lock_timeout(
    open_store: Open, postgres_url: str
) -> None:
    b = await registered(open_store, "b")
    await b.claim(ROOM, "gone")
    with psycopg.connect(postgres_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("SELECT 1 FROM roomkit.rooms WHERE room = %s FOR SHARE", (ROOM.name,))
        with pytest.raises(roomkit.StorageError, match="lock timeout"):
            await b.acquire(ROOM, "b", lock_timeout=0.1)
        other.execute("ROLLBACK")
    assert await b.acquire(ROOM, "b", lock_timeout=WAIT) == Acquired(Claim(ROOM, 2), None)


async def test_a_heartbeat_is_never_queued_behind_a_commit(
    open_store: Open, postgres_url: str
) -> None:
    store = await open_store(member="a")
    incarnation = await store.register("a", "a.example:80", LEASE)
    claim = await store.claim(ROOM, "a")
    with psycopg.connect(postgres_url, autocommit=True) as other:
        other.execute("BEGIN")
        other.execute("LOCK TABLE roomkit.kv IN EXCLUSIVE MODE")  # commits wait, not reads
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.commit, [(claim, Changes({"k": "1"}))])
            await trio.sleep(0.1)  # the commit waits on the lock
            async with ended_after(other, WAIT) as ended:
                assert await store.heartbeat("a", incarnation, LEASE) is True
                assert await store.get_many(ROOM, ["k"]) == {}  # nor is a read
            assert not ended
            other.execute("COMMIT")
    assert await store.get_many(ROOM, ["k"]) == {"k": "1"}


async def test_after_a_postgresql_restart_no_call_fails_on_an_idle_connection(
    open_store: Open, postgres: PostgresServer
) -> None:
    if not postgres.restartable:
        pytest.skip("ROOMKIT_TEST_POSTGRES's server is never restarted")
    store = await registered(open_store, "a")
    claim = await store.claim(ROOM, "a")
    writer = store._writer._conn
    for n in range(20):  # a healthy idle connection is kept: nothing to read on it
        assert await store.commit([(claim, Changes({"k": str(n)}))]) == []
        assert await store.get_many(ROOM, ["k"]) == {"k": str(n)}
    assert store._writer._conn is writer
    await trio.to_thread.run_sync(postgres.restart)
    # The server ended every connection: each is opened again before its next call.
    assert await store.commit([(claim, Changes({"k": "2"}))]) == []
    assert store._writer._conn is not writer
    assert await store.get_many(ROOM, ["k"]) == {"k": "2"}
    assert await store.heartbeat("a", 1, LEASE) is True
    assert await store.commit([(claim, Changes({"k": "3"}))]) == []
    assert await store.list(ROOM, KeyRange(), reverse=False, limit=None) == [("k", "3")]


async def test_open_store_opens_either_scheme_of_a_url_as_postgresql(postgres_url: str) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        store = await roomkit.storage.open_store(url, lock=True)
        assert isinstance(store, PostgresStore)
        await store.aclose()


async def test_a_database_that_cannot_be_reached_is_a_clear_error(postgres_url: str) -> None:
    unreachable = postgres_url.rsplit("/", 1)[0] + "/roomkit_no_such_database"
    with pytest.raises(roomkit.StorageError, match="cannot connect to PostgreSQL") as info:
        await roomkit.storage.open_store(unreachable, lock=True)
    assert "roomkit_no_such_database" in str(info.value)


def test_without_a_server_or_binaries_the_reason_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROOMKIT_TEST_POSTGRES", raising=False)
    monkeypatch.setattr(pg.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg.shutil, "which", lambda name: None)
    missing = pytest.raises(pg.Unavailable, match="no PostgreSQL: set ROOMKIT_TEST_POSTGRES")
    with missing, pg.open_server():
        pass
