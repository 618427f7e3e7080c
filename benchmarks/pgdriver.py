"""How to drive PostgreSQL from Trio: the figures behind PostgresStore's driver.

    python -m benchmarks.pgdriver postgresql://postgres@127.0.0.1/roomkit_bench

(a database of its own: the script drops and recreates the schema ``roomkit`` in it.)
Measures, each as p50/p99 wall time and CPU per operation of this process:

- a fenced commit of one room (one hook), through PostgresStore (psycopg's synchronous
  connection in a Trio worker thread), and the same SQL called on the event loop's
  thread (the cost of the thread hop);
- group commit: batches of 100 hooks of 100 rooms, in one statement (one round trip,
  as the store commits) or in a statement per room (one round trip each);
- a read of one key: through PostgresStore; on the event loop's thread; and through
  libpq's non-blocking interface driven by ``trio.lowlevel.wait_readable``, no thread;
- psycopg's own ``AsyncConnection`` with its ``wait`` driven by Trio (a prototype that
  leans on psycopg's internals: it is connected by asyncio in a thread, and its
  asyncio lock is never contended, since one task uses it at a time): a read, and
  fenced commits of 1 and 100 hooks;
- 8 concurrent readers: PostgresStore's four read connections, each with its own
  thread, against one thread shared by four connections;
- an acquire, with ``synchronous_commit`` on (as the store runs it) and off.
"""

from __future__ import annotations

import asyncio
import select
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import psycopg
import trio

from roomkit.storage import Changes, Claim, PostgresStore, RoomId
from roomkit.storage import _pgsql as sql
from roomkit.storage._changes import merge

ROOM = RoomId("/bench", "r")


class TrioConnection(psycopg.AsyncConnection[Any]):
    """psycopg's asynchronous connection, its generators driven by Trio's waits."""

    async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (psycopg's signature)
        fd = self.pgconn.socket
        try:
            wanted = next(gen)
            while True:
                ready = _poll(fd, wanted)
                if not ready:
                    if wanted & psycopg.waiting.Wait.R:
                        await trio.lowlevel.wait_readable(fd)
                    else:
                        await trio.lowlevel.wait_writable(fd)
                    ready = _poll(fd, wanted)
                wanted = gen.send(psycopg.waiting.Ready(ready))
        except StopIteration as done:
            return done.value


def _poll(fd: int, wanted: int) -> int:
    readable = [fd] if wanted & psycopg.waiting.Wait.R else []
    writable = [fd] if wanted & psycopg.waiting.Wait.W else []
    r, w, _ = select.select(readable, writable, [], 0)
    return (psycopg.waiting.Ready.R if r else 0) | (psycopg.waiting.Ready.W if w else 0)


async def trio_commit(conn: TrioConnection, batch: list[tuple[Claim, Changes]]) -> None:
    cursor = await conn.execute(sql._COMMIT_BATCH, sql._batch_params(merge(batch)))
    await cursor.fetchall()


async def trio_read(conn: TrioConnection) -> None:
    cursor = await conn.execute(
        "SELECT key, value FROM roomkit.kv"
        " WHERE namespace = %s AND room = %s AND key = ANY(%s::text[])",
        (ROOM.namespace, ROOM.name, ["k"]),
    )
    await cursor.fetchall()


async def timed(label: str, op: Callable[[], Awaitable[object]], count: int, per: int = 1) -> None:
    for _ in range(min(50, count)):
        await op()
    walls = []
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        await op()
        walls.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    walls.sort()
    p50, p99 = statistics.median(walls), walls[int(len(walls) * 0.99)]
    print(
        f"{label:58} p50 {p50 * 1e6:7.0f} us  p99 {p99 * 1e6:7.0f} us  "
        f"CPU {cpu / count / per * 1e6:6.1f} us/op  {count * per / total:8.0f} ops/s"
    )


def commit_per_room(conn: sql.Connection, batch: list[tuple[Claim, Changes]]) -> None:
    with conn.transaction():
        for claim, changes in batch:
            conn.execute(sql._COMMIT_BATCH, sql._batch_params({claim: changes})).fetchall()


async def nonblocking_read(pgconn: Any) -> None:
    """One get_many through libpq's non-blocking calls, waiting in Trio: no thread."""
    pgconn.send_query_params(
        b"SELECT key, value FROM roomkit.kv WHERE namespace = $1 AND room = $2"
        b" AND key = ANY($3::text[])",
        [ROOM.namespace.encode(), ROOM.name.encode(), b"{k}"],
    )
    fd = pgconn.socket
    while pgconn.flush():
        await trio.lowlevel.wait_writable(fd)
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        await trio.lowlevel.wait_readable(fd)
    while (result := pgconn.get_result()) is not None:
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message


async def concurrent_reads(store: PostgresStore, tasks: int, per_task: int) -> None:
    async def reader() -> None:
        for _ in range(per_task):
            await store.get_many(ROOM, ["k"])

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(reader)


async def main(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("DROP SCHEMA IF EXISTS roomkit CASCADE")
    store = await PostgresStore.open(url, member="bench")
    claim = await store.claim(ROOM, "bench")
    await store.register("bench", "bench:1", 60)
    one = [(claim, Changes({"k": '"v"'}))]
    print(
        f"PostgreSQL {psycopg.pq.version()}, psycopg {psycopg.__version__}, Trio {trio.__version__}"
    )
    await timed("fenced commit, 1 hook (PostgresStore, thread)", partial(store.commit, one), 1000)
    direct = psycopg.connect(url, autocommit=True)

    async def on_loop(fn: Callable[[sql.Connection], object]) -> None:
        await trio.lowlevel.checkpoint()
        fn(direct)

    await timed(
        "fenced commit, 1 hook (same SQL, on the loop)",
        partial(on_loop, partial(sql.commit_batch, batch=one)),
        1000,
    )
    rooms = [await store.claim(RoomId("/bench", f"r{i}"), "bench") for i in range(100)]
    batch = [(c, Changes({"k": '"v"', "n": "1"})) for c in rooms]
    await timed(
        "group commit, 100 hooks, one statement (per hook)",
        partial(store.commit, batch),
        200,
        per=100,
    )
    await timed(
        "group commit, 100 hooks, a statement per room (per hook)",
        partial(on_loop, partial(commit_per_room, batch=batch)),
        100,
        per=100,
    )
    await timed(
        "group commit, 100 hooks, one statement, on the loop",
        partial(on_loop, partial(sql.commit_batch, batch=batch)),
        200,
        per=100,
    )
    await timed("read 1 key (PostgresStore, thread)", partial(store.get_many, ROOM, ["k"]), 2000)
    await timed(
        "read 1 key (on the loop)",
        partial(on_loop, partial(sql.read_keys, room=ROOM, keys=["k"])),
        2000,
    )
    raw = psycopg.pq.PGconn.connect(url.encode())
    raw.nonblocking = 1
    await timed(
        "read 1 key (libpq non-blocking + wait_readable)", partial(nonblocking_read, raw), 2000
    )
    trio_conn = await trio.to_thread.run_sync(
        lambda: asyncio.run(TrioConnection.connect(url, autocommit=True))
    )
    await timed("read 1 key (AsyncConnection on Trio)", partial(trio_read, trio_conn), 2000)
    await timed(
        "fenced commit, 1 hook (AsyncConnection on Trio)",
        partial(trio_commit, trio_conn, one),
        1000,
    )
    await timed(
        "group commit, 100 hooks (AsyncConnection on Trio)",
        partial(trio_commit, trio_conn, batch),
        200,
        per=100,
    )
    await timed(
        "8 readers, 4 connections, a thread each",
        partial(concurrent_reads, store, 8, 50),
        20,
        per=400,
    )
    shared = await PostgresStore.open(url, member="bench-shared")
    one_thread = trio.CapacityLimiter(1)
    for session in shared._pool._all:
        session._limiter = one_thread
    await timed(
        "8 readers, 4 connections, one shared thread",
        partial(concurrent_reads, shared, 8, 50),
        20,
        per=400,
    )
    for sync in ("on", "off"):

        def acquire(conn: sql.Connection, sync: str = sync) -> None:
            conn.execute(f"SET synchronous_commit = {sync}")
            sql.acquire_room(conn, ROOM, "bench", 1.0)

        await timed(
            f"acquire, synchronous_commit {sync} (on the loop)", partial(on_loop, acquire), 500
        )
    await store.aclose()
    await shared.aclose()
    direct.close()
    await trio_conn.close()
    raw.finish()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
