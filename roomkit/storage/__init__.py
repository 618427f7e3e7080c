"""Durable room storage: the :class:`Store` interface and its SQLite implementation.

A new backend (PostgreSQL, Redis) subclasses :class:`Store`; pass an instance to
``roomkit.serve(..., storage=store)``.
"""

from .._roomid import RoomId as RoomId
from ._base import Claim as Claim
from ._base import Store as Store
from ._base import StoredAlarm as StoredAlarm
from ._changes import AlarmWrite as AlarmWrite
from ._changes import Changes as Changes
from ._changes import KeyRange as KeyRange
from ._sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "AlarmWrite",
    "Changes",
    "Claim",
    "KeyRange",
    "RoomId",
    "SQLiteStore",
    "Store",
    "StoredAlarm",
]
