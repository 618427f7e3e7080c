"""The SQL of :class:`~roomkit.storage.PostgresStore`: synchronous, one connection each.

Every function takes a psycopg connection in autocommit mode, which one thread uses at
a time, and runs its own transaction (or none, for a single read). Tables live in the
schema ``roomkit`` of the URL's database (docs/storage.md, "PostgreSQL"). Keys are
``COLLATE "C"``: ordered by their bytes of UTF-8, which is the order of code points,
as in SQLite.

Durability: every transaction that writes is committed with ``synchronous_commit = on``
(the session's setting), claims and heartbeats included. A claim or a heartbeat that
a crash of PostgreSQL could take back, after its member had been told of it, would let
two members serve a room at once: with the lost claim, a member that took a room over
holds an epoch that the next member's claim mints again, and its writes land.

No transaction that takes locks spans two writes to the server, so that a process
stopped (SIGSTOP, a pause) as it sends never leaves one open there, holding its rooms'
rows. A commit is one statement for the whole batch (``_COMMIT_BATCH``), sent outside
any pipeline: libpq writes its Bind, Execute and Sync at once, and PostgreSQL commits
it at the Sync. An acquire and a release are several statements in one message (the
simple query protocol, their values bound by psycopg's ``ClientCursor``:
``_in_one_message``), which PostgreSQL reads whole before it runs any of it, as one
transaction. A pipeline sent its statements one by one and the ``COMMIT`` last, and a
process stopped between them left its transaction open: PostgreSQL's
``idle_in_transaction_session_timeout`` does not end a session in the middle of a
pipeline (its timer starts at a Sync only), so another member's takeover of those
rooms waited for the locks until the process resumed. In the history check's runs
(lease 1 s, stopped 2.5 s), 4 of 24 stops held 15 rooms so, each taken over only 2.54
to 2.63 s after the stop.

Releases alone are not waited for (``synchronous_commit = off``): a release that a crash
takes back leaves the room with the live member that gave it up (which acquires it
again, as its own, when a client comes), or with a dead one (free after its lease),
which is what a release that never came would do; and any later durable commit, an
acquire of the room by another member first, carries it to disk before itself. A room
ends without waiting on a flush of PostgreSQL's log.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Final

import psycopg
from psycopg.rows import TupleRow

from .._errors import FencedError, StorageError
from .._roomid import RoomId
from ._base import Claim, StoredAlarm
from ._changes import AlarmWrite, Changes, KeyRange, merge
from ._ownership import Acquired, Owned, Owner

__all__ = [
    "acquire_room",
    "claim_room",
    "commit_batch",
    "create_schema",
    "locate_room",
    "mark_draining",
    "read_alarms",
    "read_keys",
    "read_orphan_alarms",
    "read_range",
    "register_member",
    "release_rooms",
    "remove_member",
    "renew_lease",
]

Connection = psycopg.Connection[TupleRow]
Params = Sequence[object] | Mapping[str, object]

#: The advisory lock that serialises the schema's creation: ``CREATE ... IF NOT EXISTS``
#: races with itself (two nodes starting together, one fails on a unique index).
_SCHEMA_LOCK: Final = 0x726F6F6D6B6974  # "roomkit"
_SCHEMA: Final = """
CREATE SCHEMA IF NOT EXISTS roomkit;
CREATE TABLE IF NOT EXISTS roomkit.kv (
    namespace text NOT NULL, room text NOT NULL, key text COLLATE "C" NOT NULL,
    value text NOT NULL, PRIMARY KEY (namespace, room, key));
CREATE TABLE IF NOT EXISTS roomkit.alarms (
    namespace text NOT NULL, room text NOT NULL, due double precision NOT NULL,
    retry integer NOT NULL, PRIMARY KEY (namespace, room));
CREATE TABLE IF NOT EXISTS roomkit.rooms (
    namespace text NOT NULL, room text NOT NULL, epoch bigint NOT NULL, owner text,
    PRIMARY KEY (namespace, room));
CREATE TABLE IF NOT EXISTS roomkit.members (
    member text PRIMARY KEY, incarnation bigint NOT NULL, address text NOT NULL,
    expires timestamptz NOT NULL, draining boolean NOT NULL DEFAULT false);
CREATE SEQUENCE IF NOT EXISTS roomkit.incarnations;
"""

#: ``r`` (a row of ``rooms``) is free for the member ``me``: see ``_ownership``.
_FREE: Final = """(r.owner IS NULL OR r.owner = %(me)s OR NOT EXISTS (
    SELECT 1 FROM roomkit.members m WHERE m.member = r.owner AND m.expires > now()))"""

#: A batch, its changes merged per room: the ownership checks and every write in one
#: statement (docs/architecture.md, "Ownership and fencing"), so that PostgreSQL plans
#: it once however many rooms the batch holds. The rooms come as arrays, one element
#: each (numbered by ``WITH ORDINALITY``), and the keys put and deleted as arrays with
#: their room's number (``_batch_params``); a cleared room's deletes are all its keys
#: but those put. ``SKIP LOCKED``: a room whose row another
#: session holds right now (a claim in progress, or an idle transaction of a stopped
#: process) counts as fenced, rather than stall the batch. Returns, per room in order,
#: whether its writes landed, and its owner as this statement saw it.
_COMMIT_BATCH: Final = """
WITH batch AS (
    SELECT * FROM unnest(%(ns)s::text[], %(room)s::text[], %(epoch)s::bigint[],
        %(cleared)s::boolean[], %(unset)s::boolean[], %(due)s::float8[], %(retry)s::integer[])
        WITH ORDINALITY AS b(ns, room, epoch, cleared, unset, due, retry, i)
), owned AS MATERIALIZED (
    SELECT b.* FROM batch b
    JOIN roomkit.rooms r ON r.namespace = b.ns AND r.room = b.room AND r.epoch = b.epoch
    FOR SHARE OF r SKIP LOCKED
), puts AS (
    SELECT * FROM unnest(%(put_rooms)s::bigint[], %(keys)s::text[], %(values)s::text[])
        AS p(i, key, value)
), deletes AS (
    SELECT * FROM unnest(%(delete_rooms)s::bigint[], %(deletes)s::text[]) AS d(i, key)
), deleted AS (
    DELETE FROM roomkit.kv k USING owned o, deletes d
    WHERE d.i = o.i AND NOT o.cleared
      AND k.namespace = o.ns AND k.room = o.room AND k.key = d.key
), cleared AS (
    DELETE FROM roomkit.kv k USING owned o
    WHERE o.cleared AND k.namespace = o.ns AND k.room = o.room
      AND k.key NOT IN (SELECT p.key FROM puts p WHERE p.i = o.i)
), put AS (
    INSERT INTO roomkit.kv
    SELECT o.ns, o.room, p.key, p.value FROM owned o JOIN puts p ON p.i = o.i
    ON CONFLICT (namespace, room, key) DO UPDATE SET value = EXCLUDED.value
), alarm_deleted AS (
    DELETE FROM roomkit.alarms a USING owned o
    WHERE a.namespace = o.ns AND a.room = o.room AND o.unset
), alarm_set AS (
    INSERT INTO roomkit.alarms
    SELECT o.ns, o.room, o.due, o.retry FROM owned o WHERE o.due IS NOT NULL
    ON CONFLICT (namespace, room) DO UPDATE SET due = EXCLUDED.due, retry = EXCLUDED.retry
)
SELECT o.i IS NOT NULL, r.owner
FROM batch b LEFT JOIN owned o ON o.i = b.i
    LEFT JOIN roomkit.rooms r ON r.namespace = b.ns AND r.room = b.room
ORDER BY b.i
"""
#: The arrays of ``_COMMIT_BATCH``: per room, then per key put, then per key deleted.
_BATCH_COLUMNS: Final = (
    ("ns", "room", "epoch", "cleared", "unset", "due", "retry"),
    ("put_rooms", "keys", "values"),
    ("delete_rooms", "deletes"),
)

_CLAIM: Final = """
INSERT INTO roomkit.rooms AS r VALUES (%s, %s, 1, %s)
ON CONFLICT (namespace, room) DO UPDATE SET epoch = r.epoch + 1, owner = EXCLUDED.owner
RETURNING epoch
"""

#: An acquire: the room's live holder, if another member's (read without a lock, so
#: that asking for a room another member holds locks nothing: a locked row would fence
#: the holder's commits meanwhile); else the claim, if the room is free for ``me``.
_ACQUIRE: Final = f"""
WITH held AS (
    SELECT r.owner, m.address, m.draining,
        extract(epoch FROM m.expires - now())::float8 AS expires_in
    FROM roomkit.rooms r JOIN roomkit.members m ON m.member = r.owner
    WHERE r.namespace = %(ns)s AND r.room = %(room)s AND r.owner <> %(me)s
      AND m.expires > now()
), taken AS (
    INSERT INTO roomkit.rooms AS r
    SELECT %(ns)s, %(room)s, 1, %(me)s WHERE NOT EXISTS (SELECT 1 FROM held)
    ON CONFLICT (namespace, room) DO UPDATE SET epoch = r.epoch + 1, owner = EXCLUDED.owner
    WHERE {_FREE}
    RETURNING epoch
)
SELECT (SELECT epoch FROM taken), held.owner, held.address, held.draining, held.expires_in
FROM (SELECT 1) AS one LEFT JOIN held ON true
"""
_HOLDER: Final = """
SELECT r.owner, m.address, m.draining, extract(epoch FROM m.expires - now())::float8
FROM roomkit.rooms r JOIN roomkit.members m ON m.member = r.owner
WHERE r.namespace = %s AND r.room = %s
"""
_ALARM: Final = "SELECT due, retry FROM roomkit.alarms WHERE namespace = %s AND room = %s"


def create_schema(conn: Connection) -> None:
    """Create the tables that do not exist yet, under an advisory lock."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(_SCHEMA)


def claim_room(conn: Connection, room: RoomId, owner: str) -> Claim:
    """The unconditional claim of ``Store.claim``: the room's epoch plus one."""
    with conn.transaction():
        (epoch,) = _one(conn.execute(_CLAIM, (room.namespace, room.name, owner)))
    return Claim(room, epoch)


def read_keys(conn: Connection, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT key, value FROM roomkit.kv"
        " WHERE namespace = %s AND room = %s AND key = ANY(%s::text[])",
        (room.namespace, room.name, list(keys)),
    )
    return dict(rows)


def read_range(
    conn: Connection, room: RoomId, keys: KeyRange, reverse: bool, limit: int | None
) -> builtins.list[tuple[str, str]]:
    order = "DESC" if reverse else "ASC"
    rows = conn.execute(
        "SELECT key, value FROM roomkit.kv WHERE namespace = %(ns)s AND room = %(room)s"
        " AND (%(start)s::text IS NULL OR key >= %(start)s::text)"
        " AND (%(end)s::text IS NULL OR key < %(end)s::text)"
        f" ORDER BY key {order} LIMIT %(limit)s",
        {
            "ns": room.namespace,
            "room": room.name,
            "start": keys.start,
            "end": keys.end,
            "limit": limit,
        },
    )
    return [(key, value) for key, value in rows]


def commit_batch(
    conn: Connection, batch: Sequence[tuple[Claim, Changes]]
) -> builtins.list[FencedError]:
    """Apply ``batch`` in one transaction, one statement in one message: one round trip
    for every room."""
    merged = merge(batch)
    if not merged:
        return []
    # One statement, outside any pipeline: its Bind, Execute and Sync leave in one
    # write, and PostgreSQL runs it as a transaction of its own (see the top).
    rows = conn.execute(_COMMIT_BATCH, _batch_params(merged)).fetchall()
    return [
        FencedError(claim.room, claim.epoch, owner)
        for claim, (landed, owner) in zip(merged, rows, strict=True)
        if not landed
    ]


def _batch_params(merged: Mapping[Claim, Changes]) -> dict[str, builtins.list[object]]:
    """``_COMMIT_BATCH``'s arrays for ``merged``: its rooms numbered from 1 in order (as
    ``WITH ORDINALITY`` numbers them), each key put or deleted with its room's number."""
    columns: builtins.list[dict[str, builtins.list[object]]] = [
        {name: [] for name in names} for names in _BATCH_COLUMNS
    ]
    rooms, puts, deletes = columns
    for number, (claim, changes) in enumerate(merged.items(), start=1):
        alarm = changes.alarm
        row = (
            claim.room.namespace,
            claim.room.name,
            claim.epoch,
            changes.cleared,
            alarm is not None and alarm.due is None,
            None if alarm is None else alarm.due,
            0 if alarm is None else alarm.retry,
        )
        for name, value in zip(rooms, row, strict=True):
            rooms[name].append(value)
        for key, text in changes.writes.items():
            if text is None:
                deletes["delete_rooms"].append(number)
                deletes["deletes"].append(key)
            else:
                puts["put_rooms"].append(number)
                puts["keys"].append(key)
                puts["values"].append(text)
    return rooms | puts | deletes


def read_alarms(conn: Connection) -> builtins.list[StoredAlarm]:
    rows = conn.execute("SELECT namespace, room, due, retry FROM roomkit.alarms")
    return [(RoomId(namespace, name), due, retry) for namespace, name, due, retry in rows]


# The cluster: members and the room directory.


def register_member(conn: Connection, member: str, address: str, lease: float) -> int:
    (incarnation,) = _one(
        conn.execute(
            """
            INSERT INTO roomkit.members
            VALUES (%s, nextval('roomkit.incarnations'), %s, now() + make_interval(secs => %s))
            ON CONFLICT (member) DO UPDATE SET incarnation = EXCLUDED.incarnation,
                address = EXCLUDED.address, expires = EXCLUDED.expires, draining = false
            RETURNING incarnation
            """,
            (member, address, lease),
        )
    )
    return int(incarnation)


def renew_lease(conn: Connection, member: str, incarnation: int, lease: float) -> bool:
    cursor = conn.execute(
        "UPDATE roomkit.members SET expires = now() + make_interval(secs => %s)"
        " WHERE member = %s AND incarnation = %s",
        (lease, member, incarnation),
    )
    return cursor.rowcount == 1


def mark_draining(conn: Connection, member: str, incarnation: int) -> None:
    conn.execute(
        "UPDATE roomkit.members SET draining = true WHERE member = %s AND incarnation = %s",
        (member, incarnation),
    )


def remove_member(conn: Connection, member: str, incarnation: int) -> None:
    conn.execute(
        "DELETE FROM roomkit.members WHERE member = %s AND incarnation = %s",
        (member, incarnation),
    )


def acquire_room(
    conn: Connection, room: RoomId, member: str, lock_timeout: float
) -> Acquired | Owned:
    """The room for ``member``, if it is free for it; in one transaction, one round trip
    (another after it, to name the winner, when a race was lost)."""
    where = (room.namespace, room.name)
    cursor = _in_one_message(
        conn,
        [
            ("SELECT set_config('lock_timeout', %s, true)", (_ms(lock_timeout),)),
            (_ACQUIRE, {"ns": room.namespace, "room": room.name, "me": member}),
            # A statement of its own, after the claim's lock: it sees the last commit
            # of the room's previous owner, whose lock the claim waited for.
            (_ALARM, where),
        ],
    )
    cursor.nextset()  # past set_config's
    epoch, owner, address, draining, expires_in = _one(cursor)
    cursor.nextset()
    if epoch is not None:
        stored = cursor.fetchone()
        return Acquired(Claim(room, epoch), None if stored is None else AlarmWrite(*stored))
    if owner is None:  # lost a race: the winner committed after this statement began
        row = conn.execute(_HOLDER, where).fetchone()
        if row is None:
            raise StorageError(f"room {room}: acquired by nobody, and released since")
        owner, address, draining, expires_in = row
    return Owned(owner, address, draining, expires_in)


def release_rooms(conn: Connection, claims: Sequence[Claim], member: str) -> None:
    if not claims:
        return
    release = (
        "UPDATE roomkit.rooms SET owner = NULL"
        " WHERE namespace = %s AND room = %s AND epoch = %s AND owner = %s"
    )
    _in_one_message(
        conn,
        [
            ("SELECT set_config('synchronous_commit', 'off', true)", None),  # see the top
            *[(release, (c.room.namespace, c.room.name, c.epoch, member)) for c in claims],
        ],
    )


def locate_room(conn: Connection, room: RoomId) -> Owner | None:
    row = conn.execute(
        """
        SELECT r.owner, m.address, coalesce(m.expires > now() AND NOT m.draining, false),
            coalesce(extract(epoch FROM m.expires - now())::float8, 0)
        FROM roomkit.rooms r LEFT JOIN roomkit.members m ON m.member = r.owner
        WHERE r.namespace = %s AND r.room = %s AND r.owner IS NOT NULL
        """,
        (room.namespace, room.name),
    ).fetchone()
    return None if row is None else Owner(*row)


def read_orphan_alarms(
    conn: Connection, horizon: float, member: str | None
) -> builtins.list[StoredAlarm]:
    rows = conn.execute(
        f"""
        SELECT a.namespace, a.room, a.due, a.retry
        FROM roomkit.alarms a LEFT JOIN roomkit.rooms r USING (namespace, room)
        WHERE a.due < extract(epoch FROM now()) + %(horizon)s
          AND (r.owner IS NULL OR {_FREE})
        ORDER BY a.due
        """,
        {"horizon": horizon, "me": member},
    )
    return [(RoomId(namespace, name), due, retry) for namespace, name, due, retry in rows]


def _in_one_message(
    conn: Connection, statements: Sequence[tuple[str, Params | None]]
) -> psycopg.ClientCursor[TupleRow]:
    """Run ``statements`` as one transaction, sent as one message (see the module's
    docstring); the cursor is at the first statement's result, ``nextset`` moves on.

    Raises:
      psycopg.Error: a statement failed, and none of them took effect.
    """
    cursor = psycopg.ClientCursor(conn)
    text = ";\n".join(cursor.mogrify(query, params) for query, params in statements)
    cursor.execute(text)  # no parameters: psycopg sends it as it is (a simple Query)
    return cursor


def _one(cursor: psycopg.Cursor[TupleRow]) -> TupleRow:
    row = cursor.fetchone()
    assert row is not None, "a statement that always returns a row returned none"
    return row


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
