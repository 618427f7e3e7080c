"""SQLite, the embedded default store: one database file for a whole server.

A synchronous core (:class:`SQLiteCore`) does the SQL; :class:`SQLiteStore` runs it in a
worker thread, one call at a time, so the event loop never waits on the disk. The
database is in WAL mode with ``synchronous=FULL``: a commit that returned has been
fsynced, so neither a killed process nor a lost machine takes it back.

A database file is served by one server at a time: its core holds an ``flock`` on a
lock file beside it, ``<database>.roomkit.lock``, for as long as it is open (see
``_lockfile``); a second one refuses to open it. ``":memory:"`` takes no lock. A file
that cannot be written is refused when it is opened, not at the first commit.

The worker processes of one server (``roomkit serve --workers N``) share the file: each
opens it with ``lock=False``, since their supervisor holds the lock. WAL lets them all
read while one writes; writers take turns, each ``BEGIN IMMEDIATE`` waiting for the
write lock up to its busy timeout: for a worker, longer than its supervisor takes to
kill a worker stopped while it holds the lock (``WorkerSpec.busy_timeout``).
Ownership keeps them apart: the ``rooms`` table holds each room's epoch and owner; a
claim adds one to the epoch, and a commit reads the epoch of each of its rooms inside
its write transaction (which holds the write lock, so no claim comes in between) and
skips the rooms whose epoch moved on.

``":memory:"`` has no disk to wait on, so its calls run on the event loop itself: a
microsecond of SQL is cheaper than a thread hop, and tests on
``trio.testing.MockClock(autojump_threshold=0)`` stay deterministic (a worker thread
would look idle to the autojumping clock, which would then skip time ahead).
"""

from __future__ import annotations

import builtins
import functools
import itertools
import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import trio

from .._errors import FencedError, StorageError
from .._roomid import RoomId
from ._base import Claim, Store, StoredAlarm
from ._changes import Changes, KeyRange, merge
from ._lockfile import LockFile

__all__ = ["SQLiteCore", "SQLiteStore"]

T = TypeVar("T")

#: Keys per ``IN (...)`` query; stays under SQLite's host-parameter limit.
_KEYS_PER_QUERY: Final = 500
#: Most rows one ``INSERT`` statement writes. A statement binding many rows costs about
#: 0.5 µs a row less than ``executemany`` (measured at 40 rows a commit). Each row count
#: up to it has its statement text, 64 in all: sqlite3's cache of 128 statements keeps
#: them beside the store's fixed statements.
_ROWS_PER_INSERT: Final = 64
#: Seconds a write transaction waits for another process's to end before it fails
#: ("database is locked"), by default. Commits take milliseconds, so this is a queue of
#: many. The workers of ``--workers`` wait longer (``WorkerSpec.busy_timeout``): one
#: stopped mid-commit (SIGSTOP) holds the lock until its supervisor kills it.
BUSY_TIMEOUT: Final = 5.0

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, room, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms (
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    due REAL NOT NULL,
    retry INTEGER NOT NULL,
    PRIMARY KEY (namespace, room)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms (
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (namespace, room)
) WITHOUT ROWID;
"""
#: A claim: the room's epoch plus one, or 1 for a room never claimed.
_CLAIM: Final = """
INSERT INTO rooms VALUES (?, ?, 1, ?)
ON CONFLICT (namespace, room) DO UPDATE SET epoch = epoch + 1, owner = excluded.owner
RETURNING epoch
"""


class SQLiteCore:
    """The SQL of :class:`SQLiteStore`, synchronous; one thread at a time may use it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lock: bool = True,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        """Open (creating if need be) the database at ``path``, or ``":memory:"``.

        With ``lock``, a file is locked for as long as the core is open (see
        ``_lockfile``); without, whoever shares the file holds the lock for it (the
        supervisor of ``--workers``). A file of an older roomkit gets the tables it
        lacks (``rooms``). A write waits up to ``busy_timeout`` seconds for another
        process's to end.

        Raises:
          StorageError: another server holds the file's lock, or the file cannot be
            opened or written.
        """
        memory = os.fspath(path) == ":memory:"
        self._lock = LockFile.acquire(path) if lock and not memory else None
        try:
            self._db = _connect(path, busy_timeout)
        except BaseException:
            self._release()
            raise

    def claim(self, room: RoomId, owner: str) -> Claim:
        """Make ``owner`` the room's owner under a new epoch (see ``Store.claim``).

        Committed with ``synchronous=NORMAL``, without an fsync of its own: the next
        durable commit of any room fsyncs the write-ahead log, this claim's frames with
        it, and every write made under the claim is such a commit. A machine that loses
        the claim loses every process that could have written under it too.
        """
        db = self._db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                (epoch,) = db.execute(_CLAIM, (room.namespace, room.name, owner)).fetchall()[0]
                db.execute("COMMIT")
            except BaseException as error:
                _roll_back(db, error)
                raise
        finally:
            db.execute("PRAGMA synchronous=FULL")
        return Claim(room, epoch)

    def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), _KEYS_PER_QUERY):
            chunk = keys[i : i + _KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value FROM kv WHERE namespace = ? AND room = ? AND key IN ({marks})",
                (room.namespace, room.name, *chunk),
            )
            found.update(rows)
        return found

    def list(
        self, room: RoomId, keys: KeyRange, reverse: bool, limit: int | None
    ) -> list[tuple[str, str]]:
        sql = "SELECT key, value FROM kv WHERE namespace = ? AND room = ?"
        args: list[object] = [room.namespace, room.name]
        if keys.start is not None:
            sql += " AND key >= ?"
            args.append(keys.start)
        if keys.end is not None:
            sql += " AND key < ?"
            args.append(keys.end)
        sql += " ORDER BY key DESC" if reverse else " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return list(self._db.execute(sql, args))

    def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> builtins.list[FencedError]:
        db = self._db
        refused: list[FencedError] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for claim, changes in merge(batch).items():
                room = claim.room
                where = (room.namespace, room.name)
                stored = db.execute(
                    "SELECT epoch, owner FROM rooms WHERE namespace = ? AND room = ?", where
                ).fetchone()
                if stored is None or stored[0] != claim.epoch:
                    refused.append(
                        FencedError(room, claim.epoch, None if stored is None else stored[1])
                    )
                    continue
                if changes.cleared:
                    db.execute("DELETE FROM kv WHERE namespace = ? AND room = ?", where)
                puts = [(k, v) for k, v in changes.writes.items() if v is not None]
                deletes = [(*where, k) for k, v in changes.writes.items() if v is None]
                if deletes:
                    db.executemany(
                        "DELETE FROM kv WHERE namespace = ? AND room = ? AND key = ?", deletes
                    )
                _insert(db, where, puts)
                alarm = changes.alarm
                if alarm is not None and alarm.due is None:
                    db.execute("DELETE FROM alarms WHERE namespace = ? AND room = ?", where)
                elif alarm is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO alarms VALUES (?, ?, ?, ?)",
                        (*where, alarm.due, alarm.retry),
                    )
            db.execute("COMMIT")
        except BaseException as error:
            _roll_back(db, error)
            raise
        return refused

    def alarms(self) -> builtins.list[StoredAlarm]:
        rows = self._db.execute("SELECT namespace, room, due, retry FROM alarms")
        return [(RoomId(namespace, name), due, retry) for namespace, name, due, retry in rows]

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _connect(path: str | os.PathLike[str], busy_timeout: float) -> sqlite3.Connection:
    """The database at ``path``, in WAL mode with ``synchronous=FULL``, with the schema,
    once a write to it has worked; its writes wait ``busy_timeout`` for the lock.

    Raises:
      StorageError: SQLite cannot open the file, or this process cannot write it.
    """
    try:
        db = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc
    try:
        db.execute("PRAGMA journal_mode=WAL")  # no-op for :memory:
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        _check_writable(db)
    except sqlite3.Error as exc:
        db.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        db.close()
        raise
    return db


def _check_writable(db: sqlite3.Connection) -> None:
    """Write to the database, and roll the write back.

    SQLite opens a file it may not write (its mode, its owner, a read-only mount) for
    reading only, without an error: without this probe, the server would start and
    report itself healthy, and then fail every commit.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        db.execute(f"PRAGMA user_version = {int(version)}")  # a write to page 1's header
    except BaseException as error:
        _roll_back(db, error)
        raise
    db.execute("ROLLBACK")


def _unusable(path: str | os.PathLike[str], error: sqlite3.Error) -> StorageError:
    shown = os.path.abspath(path)
    if error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY:
        return StorageError(
            f"the storage file {shown} cannot be written by this process ({error}): "
            "check the permissions of the file, of its directory and of its -wal and "
            "-shm files, and that its file system is not mounted read-only"
        )
    return StorageError(f"cannot use the storage file {shown}: {error}")


def _roll_back(db: sqlite3.Connection, error: BaseException) -> None:
    """Roll back what ``error`` left of a transaction, keeping ``error`` the one raised.

    On some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has rolled the transaction back
    itself, and a ROLLBACK would fail with "no transaction is active", hiding the cause.
    """
    if not db.in_transaction:
        return
    try:
        db.execute("ROLLBACK")
    except sqlite3.Error as failed:
        error.add_note(f"and the rollback failed too: {failed}")


def _insert(
    db: sqlite3.Connection, where: tuple[str, str], puts: Sequence[tuple[str, str]]
) -> None:
    """Insert or replace ``puts`` (key, JSON text) in the room ``where`` of ``kv``.

    One statement per ``_ROWS_PER_INSERT`` rows, binding the room once: a group commit's
    rows mostly take one statement. Each statement is one more time the committing
    thread gives up the GIL and must win it back from the event loop's, on a core they
    share: a commit of 50 rows in three statements (32 + 16 + 2) cost 17 µs more than
    in one (204 against 187 µs), measured against a busy event loop.
    """
    for start in range(0, len(puts), _ROWS_PER_INSERT):
        chunk = puts[start : start + _ROWS_PER_INSERT]
        db.execute(_insert_sql(len(chunk)), [*where, *itertools.chain.from_iterable(chunk)])


@functools.cache
def _insert_sql(rows: int) -> str:
    """``INSERT`` of ``rows`` rows, the room's two columns bound once (``?1``, ``?2``)."""
    return "INSERT OR REPLACE INTO kv VALUES " + ",".join(["(?1, ?2, ?, ?)"] * rows)


class SQLiteStore(Store):
    """The SQLite store, for Trio: every call runs in a worker thread, one at a time.

    Create it with :meth:`open`; ``":memory:"`` keeps everything in memory (for tests).
    """

    def __init__(self, core: SQLiteCore, *, in_thread: bool = True) -> None:
        self._core = core
        self._in_thread = in_thread
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, lock: bool = True, busy_timeout: float = BUSY_TIMEOUT
    ) -> SQLiteStore:
        """Open (creating if need be) the database at ``path``, or ``":memory:"``.

        Args:
          path: the database file.
          lock: take the file's lock (one server per file). Without it, several
            processes share the file, and whoever started them holds its lock.
          busy_timeout: seconds a commit waits for another process's to end before it
            fails ("database is locked").

        Raises:
          StorageError: another server holds the file's lock, or the file cannot be
            opened or written (see :class:`SQLiteCore`).
        """
        if os.fspath(path) == ":memory:":
            return cls(SQLiteCore(path), in_thread=False)
        opening = functools.partial(SQLiteCore, path, lock=lock, busy_timeout=busy_timeout)
        core = await trio.to_thread.run_sync(opening)
        return cls(core)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if not self._in_thread:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def claim(self, room: RoomId, owner: str) -> Claim:
        return await self._run(self._core.claim, room, owner)

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        return await self._run(self._core.get_many, room, keys)

    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> list[tuple[str, str]]:
        return await self._run(self._core.list, room, keys, reverse, limit)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> builtins.list[FencedError]:
        return await self._run(self._core.commit, batch)

    async def alarms(self) -> builtins.list[StoredAlarm]:
        return await self._run(self._core.alarms)

    async def aclose(self) -> None:
        await self._run(self._core.close)
