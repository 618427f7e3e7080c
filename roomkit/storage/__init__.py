"""Durable room storage: the :class:`Store` interface, SQLite's and PostgreSQL's stores.

:func:`open_store` opens the one a location names. A new backend subclasses
:class:`Store` (or :class:`ClusterStore`, to carry a cluster); pass an instance to
``roomkit.serve(..., storage=store)``.

``PostgresStore`` needs psycopg (``pip install 'roomkit[postgresql]'``), which is
imported only when the name is first used, or a ``postgresql://`` URL opened.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._errors import StorageError
from .._roomid import RoomId as RoomId
from ._base import Claim as Claim
from ._base import Store as Store
from ._base import StoredAlarm as StoredAlarm
from ._changes import AlarmWrite as AlarmWrite
from ._changes import Changes as Changes
from ._changes import KeyRange as KeyRange
from ._ownership import Acquired as Acquired
from ._ownership import ClusterStore as ClusterStore
from ._ownership import Owned as Owned
from ._ownership import Owner as Owner
from ._sqlite import SQLiteStore as SQLiteStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore as PostgresStore

__all__ = [
    "Acquired",
    "AlarmWrite",
    "Changes",
    "Claim",
    "ClusterStore",
    "KeyRange",
    "Owned",
    "Owner",
    "PostgresStore",
    "RoomId",
    "SQLiteStore",
    "Store",
    "StoredAlarm",
    "open_store",
]

#: The URL schemes that name a PostgreSQL database (libpq's two).
POSTGRES_SCHEMES: tuple[str, ...] = ("postgresql://", "postgres://")


async def open_store(
    location: str | os.PathLike[str],
    *,
    lock: bool,
    member: str | None = None,
    idle_in_transaction_timeout: float | None = None,
) -> Store:
    """Open the store that ``location`` names, as ``roomkit serve --storage`` does.

    Args:
      location: a ``postgresql://`` (or ``postgres://``) URL opens a
        :class:`PostgresStore` on that database, which makes the server a cluster
        member (docs/storage.md, "PostgreSQL"); anything else is a SQLite database
        file, or ``":memory:"``.
      lock: for SQLite, take the file's lock (one server per file; the workers of
        ``--workers`` pass False, since their supervisor holds it). PostgreSQL is
        shared by design, and takes none.

    Raises:
      StorageError: the store cannot be opened (the message says why); for a
        PostgreSQL URL without psycopg installed, the message says which extra to
        install.

    ``member`` and ``idle_in_transaction_timeout`` are passed to
    :meth:`PostgresStore.open` (a cluster passes its member id and its lease); SQLite
    takes neither.
    """
    if isinstance(location, str) and location.startswith(POSTGRES_SCHEMES):
        options = (
            {}
            if idle_in_transaction_timeout is None
            else {"idle_in_transaction_timeout": idle_in_transaction_timeout}
        )
        return await _postgres_store().open(location, member=member, **options)
    return await SQLiteStore.open(location, lock=lock)


def _postgres_store() -> type[PostgresStore]:
    try:
        from ._postgres import PostgresStore
    except ImportError as exc:
        raise StorageError(
            f"PostgreSQL storage needs psycopg: pip install 'roomkit[postgresql]' ({exc})"
        ) from exc
    return PostgresStore


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        return _postgres_store()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
