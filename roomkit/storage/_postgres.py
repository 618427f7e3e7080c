"""PostgreSQL, the store of a cluster: rooms' data, alarms, members and the room directory.

:class:`PostgresStore` runs the SQL of ``_pgsql`` over psycopg 3's synchronous
connections, each used by one Trio worker thread at a time (a ``CapacityLimiter`` of one
per connection), so the event loop never waits on the network: one connection for the
group commits, one for the membership's heartbeats (never queued behind a commit), and a
few for reads and claims, opened as they are needed. docs/storage.md ("PostgreSQL") has
the figures that chose this driver over the alternatives.

A connection that breaks (PostgreSQL restarted, the network failed) fails the call that
found it broken, with a :class:`~roomkit.StorageError` whose ``__cause__`` is psycopg's
error, and is opened again by the next call: one failure never poisons the store. An
idle connection that the server ended is noticed before its next call and opened
again, so that a restart fails only the calls in flight.

This module imports psycopg, which is an optional dependency (``roomkit[postgresql]``):
``roomkit.storage`` imports it only when a PostgreSQL store is opened.
"""

from __future__ import annotations

import builtins
import math
import select
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final, TypeVar

import psycopg
import trio

from .._errors import FencedError, StorageError
from .._roomid import RoomId
from ._base import Claim, StoredAlarm
from ._changes import Changes, KeyRange
from ._ownership import Acquired, ClusterStore, Owned, Owner
from ._pgsql import (
    Connection,
    acquire_room,
    claim_room,
    commit_batch,
    create_schema,
    locate_room,
    mark_draining,
    read_alarms,
    read_keys,
    read_orphan_alarms,
    read_range,
    register_member,
    release_rooms,
    remove_member,
    renew_lease,
)

__all__ = ["PostgresStore"]

T = TypeVar("T")

#: Connections for reads and claims (each opened at its first use): a few reads of
#: different rooms run at once, and a claim waiting out its ``lock_timeout`` holds one.
READ_CONNECTIONS: Final = 4
#: Seconds to open a connection before the call fails: a server that does not answer
#: must not hold a handshake for TCP's minutes.
CONNECT_TIMEOUT: Final = 5
#: Milliseconds a connection waits for the server to acknowledge what it sent before
#: the kernel gives up on it (``tcp_user_timeout``): a server gone from the network
#: fails the call in seconds, as a restarted one does.
TCP_USER_TIMEOUT: Final = 10_000
#: The default ``idle_in_transaction_session_timeout``, in seconds: a stopped process's
#: open transaction ends after this, and with it the row locks that would hold up
#: whoever takes its rooms over. A cluster passes its lease.
IDLE_IN_TRANSACTION_TIMEOUT: Final = 5.0


class _Breaks:
    """When a connection of the store was last found broken (``time.monotonic()``).

    A PostgreSQL restart breaks every connection at once: once one call has found
    that out, the other sessions reopen theirs before their next call, instead of each
    failing one call of its own to learn it.
    """

    def __init__(self) -> None:
        self.last = -math.inf


class _Session:
    """One PostgreSQL connection, used by one worker thread at a time, reopened after
    it (or another of the store's) breaks."""

    def __init__(self, connect: Callable[[], Connection], breaks: _Breaks) -> None:
        self._connect = connect
        self._breaks = breaks
        self._conn: Connection | None = None
        self._opened = -math.inf
        self._limiter = trio.CapacityLimiter(1)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` in a worker thread, once the calls before it are done.

        Cancellable: a call cancelled (a heartbeat that hangs past the lease, a drain's
        bound) is abandoned to its thread, which keeps the connection until it is done,
        so the session's next call waits for it; its outcome is unknown, as that of any
        write whose answer never came.

        Raises:
          StorageError: PostgreSQL refused the call or could not be reached; the
            psycopg error is its ``__cause__``.
        """
        return await trio.to_thread.run_sync(
            self._call, fn, limiter=self._limiter, abandon_on_cancel=True
        )

    def _call(self, fn: Callable[[Connection], T]) -> T:
        if self._conn is not None and (self._opened < self._breaks.last or _ended(self._conn)):
            self.close()
        if self._conn is None or self._conn.closed:
            self._opened = time.monotonic()
            self._conn = self._connect()
        conn = self._conn
        try:
            return fn(conn)
        except psycopg.Error as exc:
            if not conn.broken and not conn.closed and _rolled_back(conn):
                raise StorageError(f"PostgreSQL refused a call: {exc}") from exc
            if conn.broken or conn.closed:
                self._breaks.last = time.monotonic()
            self.close()
            raise StorageError(f"the connection to PostgreSQL failed: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Pool:
    """A few sessions; a call takes whichever is idle."""

    def __init__(self, connect: Callable[[], Connection], breaks: _Breaks, size: int) -> None:
        self._idle = [_Session(connect, breaks) for _ in range(size)]
        self._all = list(self._idle)
        self._limiter = trio.CapacityLimiter(size)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        async with self._limiter:
            session = self._idle.pop()
            try:
                return await session.run(fn)
            finally:
                self._idle.append(session)

    def close(self) -> None:
        for session in self._all:
            session.close()


class PostgresStore(ClusterStore):
    """The PostgreSQL store, for Trio, and the cluster's membership and room directory.

    Create it with :meth:`open`. Its semantics are SQLite's (see
    :class:`~roomkit.storage.Store`): a commit is one transaction, all or nothing,
    durable once it returns (``synchronous_commit = on``), each room's writes fenced
    by its claim; a read never sees half a commit.
    """

    def __init__(self, connect: Callable[[str], Connection]) -> None:
        breaks = _Breaks()
        self._writer = _Session(partial(connect, "commits"), breaks)
        self._beats = _Session(partial(connect, "heartbeats"), breaks)
        self._pool = _Pool(partial(connect, "reads"), breaks, READ_CONNECTIONS)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        member: str | None = None,
        idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
    ) -> PostgresStore:
        """Connect to the database at ``url`` (a ``postgresql://`` URL, or any libpq
        connection string), creating roomkit's tables if they are missing.

        Args:
          url: the database; its tables go in the schema ``roomkit``.
          member: this process's member id, shown in ``pg_stat_activity`` as the
            connections' ``application_name`` (``roomkit <member> <role>``).
          idle_in_transaction_timeout: seconds after which PostgreSQL ends a transaction
            of this store's left open by a stopped process, releasing its locks (a
            cluster passes its lease).

        Raises:
          StorageError: the database cannot be reached or used; psycopg's error is its
            ``__cause__``.
        """
        connect = partial(_connect, url, member or "", idle_in_transaction_timeout)
        store = cls(connect)
        try:
            await store._writer.run(create_schema)
        except BaseException:
            await store.aclose()
            raise
        return store

    async def claim(self, room: RoomId, owner: str) -> Claim:
        return await self._pool.run(partial(claim_room, room=room, owner=owner))

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        return await self._pool.run(partial(read_keys, room=room, keys=keys))

    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> builtins.list[tuple[str, str]]:
        read = partial(read_range, room=room, keys=keys, reverse=reverse, limit=limit)
        return await self._pool.run(read)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> builtins.list[FencedError]:
        return await self._writer.run(partial(commit_batch, batch=batch))

    async def alarms(self) -> builtins.list[StoredAlarm]:
        return await self._pool.run(read_alarms)

    async def register(self, member: str, address: str, lease: float) -> int:
        call = partial(register_member, member=member, address=address, lease=lease)
        return await self._beats.run(call)

    async def heartbeat(self, member: str, incarnation: int, lease: float) -> bool:
        call = partial(renew_lease, member=member, incarnation=incarnation, lease=lease)
        return await self._beats.run(call)

    async def set_draining(self, member: str, incarnation: int) -> None:
        call = partial(mark_draining, member=member, incarnation=incarnation)
        await self._beats.run(call)

    async def leave(self, member: str, incarnation: int) -> None:
        await self._beats.run(partial(remove_member, member=member, incarnation=incarnation))

    async def acquire(self, room: RoomId, member: str, *, lock_timeout: float) -> Acquired | Owned:
        call = partial(acquire_room, room=room, member=member, lock_timeout=lock_timeout)
        return await self._pool.run(call)

    async def release(self, claims: Sequence[Claim], member: str) -> None:
        if claims:
            await self._pool.run(partial(release_rooms, claims=claims, member=member))

    async def locate(self, room: RoomId) -> Owner | None:
        return await self._pool.run(partial(locate_room, room=room))

    async def orphan_alarms(
        self, horizon: float, *, member: str | None = None
    ) -> builtins.list[StoredAlarm]:
        call = partial(read_orphan_alarms, horizon=horizon, member=member)
        return await self._pool.run(call)

    async def aclose(self) -> None:
        for session in (self._writer, self._beats, self._pool):
            await trio.to_thread.run_sync(session.close)


def _ended(conn: Connection) -> bool:
    """Whether the server has ended this idle connection (a restart, an administrator's
    ``pg_terminate_backend``): nothing is owed to an idle session, so anything to read
    is its goodbye or its end of file. One ``poll`` with no wait, so that the first call
    after a PostgreSQL restart reconnects instead of failing (a failed commit resets
    its rooms); a server gone without a word is still caught by ``tcp_user_timeout``."""
    if conn.closed:
        return True
    poller = select.poll()  # not select.select: descriptors above 1024
    poller.register(conn.pgconn.socket, select.POLLIN)
    return bool(poller.poll(0))


def _rolled_back(conn: Connection) -> bool:
    """Roll back what a failed call left of its transaction; whether the connection is
    then fit for the next call (idle, and out of pipeline mode). A rollback that fails
    too means it is not."""
    idle = psycopg.pq.TransactionStatus.IDLE
    try:
        if conn.info.transaction_status != idle:
            conn.rollback()
    except psycopg.Error:
        return False
    return (
        conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
        and conn.info.transaction_status == idle
    )


def _connect(url: str, member: str, idle_timeout: float, role: str) -> Connection:
    """A new autocommit connection with the store's session settings.

    Raises:
      StorageError: it could not be opened.
    """
    name = " ".join(part for part in ("roomkit", member, role) if part)
    options = (
        f"-c idle_in_transaction_session_timeout={round(idle_timeout * 1000)}"
        " -c synchronous_commit=on"
    )
    try:
        return psycopg.connect(
            url,
            autocommit=True,
            application_name=name[:63],
            options=options,
            connect_timeout=CONNECT_TIMEOUT,
            tcp_user_timeout=TCP_USER_TIMEOUT,
        )
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
