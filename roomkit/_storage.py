"""``Room.storage``: a room's durable key-value data and its alarm, as hooks see them.

Every hook runs in a transaction. Writes go into the hook's :class:`Changes`; reads
look through it, then through the changes of earlier hooks whose commits are still
in flight, and only then ask the store. When the hook returns its changes are
committed (grouped with others) and its sends wait for that commit; when it raises
they are discarded. So a hook reads its own writes, and a client never hears of a
write that could still be lost.

Keys that begin with U+10FFFF are roomkit's own (a room's log of broadcasts,
``_core/history.py``): they sort after every other key, and this facade refuses them
and never lists them; roomkit reads them with :func:`read_reserved`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Protocol

import attrs

from ._converter import make_converter
from ._core.history import RESERVED, LogMark
from .storage import AlarmWrite, Changes, KeyRange, RoomId, Store
from .storage._changes import deletions_in, lookup, lookup_alarm, merge_listing, store_is_hidden

__all__ = ["Storage", "StorageBackend", "Transaction", "read_reserved"]

#: Longest key, in bytes of UTF-8 (the Durable Objects limit).
MAX_KEY: Final = 2048
#: One encoder for every value: json.dumps with options builds a new one per call.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
#: Storage's own converter, for attrs values; no protocol shares it and nothing registers
#: hooks on it, so what a value is stored as depends on the value alone, never on which
#: rooms a process happens to serve.
_VALUES: Final = make_converter()


class StorageBackend(Protocol):
    """What a room's storage needs of the actor that runs the room (``RoomActor``)."""

    @property
    def room(self) -> RoomId: ...

    @property
    def store(self) -> Store: ...

    def current_changes(self) -> Changes:
        """The running hook's changes, for writes; raises outside a hook."""

    def storage_layers(self) -> list[Changes]:
        """The changes not yet durable, oldest first, then the running hook's."""

    def stored_alarm(self) -> AlarmWrite | None:
        """The room's alarm as the store has it."""

    def wall_time(self) -> float:
        """Seconds since the epoch, on the alarms' clock."""

    def storage_cleared(self) -> None:
        """The running hook is clearing the room's storage (roomkit's own keys with it);
        its changes are not cleared yet."""

    def block_began(self) -> LogMark | None:
        """Where roomkit's own keys are as a transaction block begins."""

    def block_rolled_back(
        self, block: LogMark | None, writes: dict[str, str | None]
    ) -> dict[str, str | None]:
        """The block begun at ``block`` is rolled back, the hook's writes being
        ``writes``: those of roomkit's own keys that stand."""


class Storage:
    """A room's durable storage; use it from inside hooks.

    Keys are strings, ordered by code point; values are anything JSON can hold (dicts,
    lists, str, numbers, bool, None), and attrs instances, which are stored as cattrs
    unstructures them by default, as dicts of their fields (read them back with
    ``cattrs.structure(value, cls)``, or a protocol's ``converter``). Values are copied
    in and out: change a value by putting it again. Keys that begin with U+10FFFF are
    roomkit's (``ValueError``), and ``list()`` never returns them.
    """

    __slots__ = ("_actor",)

    def __init__(self, actor: StorageBackend) -> None:
        self._actor = actor

    async def get(self, key: str, default: Any = None) -> Any:
        """The value stored at ``key``, or ``default``."""
        found = await self._get([_check_key(key)])
        return json.loads(found[key]) if key in found else default

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those ``keys`` that exist (missing keys are left out)."""
        found = await self._get([_check_key(k) for k in keys])
        return {key: json.loads(text) for key, text in found.items()}

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` at ``key``."""
        self._changes().writes[_check_key(key)] = _encode(value)

    async def put_many(self, entries: Mapping[str, Any]) -> None:
        """Store every value of ``entries`` at its key; all or nothing."""
        encoded = {_check_key(key): _encode(value) for key, value in entries.items()}
        self._changes().writes.update(encoded)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        return await self.delete_many([key]) == 1

    async def delete_many(self, keys: Iterable[str]) -> int:
        """Delete ``keys``; return how many of them existed."""
        keys = list(dict.fromkeys(_check_key(k) for k in keys))
        existing = await self._get(keys)
        changes = self._changes()
        for key in keys:
            changes.writes[key] = None
        return len(existing)

    async def list(
        self,
        *,
        prefix: str | None = None,
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """The room's entries in key order, as a dict.

        Args:
          prefix: only keys that start with it.
          start: only keys at or after it (inclusive).
          end: only keys before it (exclusive).
          reverse: descending key order; ``limit`` then keeps the last keys.
          limit: at most this many entries.
        """
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int, not {limit!r}")
        for bound in (prefix, start, end):
            if bound is not None and bound.startswith(RESERVED):
                raise ValueError("list bounds that begin with U+10FFFF are reserved for roomkit")
        keys = KeyRange.of(prefix, start, RESERVED if end is None else end)
        layers = self._actor.storage_layers()
        stored: Sequence[tuple[str, str]] = ()
        if not keys.empty and not store_is_hidden(layers) and limit != 0:
            fetch = None if limit is None else limit + deletions_in(layers, keys)
            stored = await self._actor.store.list(
                self._actor.room, keys, reverse=reverse, limit=fetch
            )
        # The layers as they were before the fetch: a commit that completed during it may
        # or may not be in ``stored``, and applying its layer again changes nothing.
        rows = merge_listing(layers, stored, keys, reverse=reverse, limit=limit)
        return {key: json.loads(text) for key, text in rows}

    async def delete_all(self) -> None:
        """Delete every key of this room, and its alarm (and the room's log of
        broadcasts: its next one starts a new epoch)."""
        changes = self._changes()
        self._actor.storage_cleared()
        changes.clear()

    def transaction(self) -> Transaction:
        """A block whose writes happen all or not at all, within the hook's own.

        ``async with room.storage.transaction() as txn:`` — if the block raises, its
        writes are undone and the exception propagates as usual; if it calls
        ``txn.rollback()``, its writes are undone and the hook goes on.
        """
        return Transaction(self)

    async def set_alarm(self, *, delay: float | None = None, at: datetime | None = None) -> None:
        """Have ``on_alarm`` called after ``delay`` seconds, or at ``at`` (an aware datetime).

        A room has one alarm: a new one replaces the old. A time in the past fires at once.
        """
        if (delay is None) == (at is None):
            raise TypeError("set_alarm takes exactly one of delay= and at=")
        if at is not None:
            if at.tzinfo is None:
                raise ValueError("set_alarm(at=...) needs an aware datetime (with a tzinfo)")
            due = at.timestamp()
        else:
            assert delay is not None
            if not math.isfinite(delay):
                raise ValueError(f"set_alarm(delay=...) must be a finite number, not {delay!r}")
            due = self._actor.wall_time() + delay
        self._changes().alarm = AlarmWrite(due)

    async def get_alarm(self) -> datetime | None:
        """When the alarm is due, or None if the room has none."""
        alarm = lookup_alarm(self._actor.storage_layers()) or self._actor.stored_alarm()
        if alarm is None or alarm.due is None:
            return None
        return datetime.fromtimestamp(alarm.due, UTC)

    async def delete_alarm(self) -> None:
        """Cancel the room's alarm, if it has one."""
        self._changes().alarm = AlarmWrite(None)

    def _changes(self) -> Changes:
        return self._actor.current_changes()

    async def _get(self, keys: Sequence[str]) -> dict[str, str]:
        return await _read(self._actor, keys)


async def read_reserved(actor: StorageBackend, keys: Sequence[str]) -> dict[str, Any]:
    """The values of those of roomkit's own ``keys`` that exist, decoded, read as a
    hook's reads are (through the writes not yet durable); inside a hook only."""
    found = await _read(actor, keys)
    return {key: json.loads(text) for key, text in found.items()}


async def _read(actor: StorageBackend, keys: Sequence[str]) -> dict[str, str]:
    layers = actor.storage_layers()
    found: dict[str, str] = {}
    missing: list[str] = []
    for key in keys:
        known, text = lookup(layers, key)
        if not known:
            missing.append(key)
        elif text is not None:
            found[key] = text
    if missing:
        found.update(await actor.store.get_many(actor.room, missing))
    return found


@attrs.define
class Transaction:
    """The block of :meth:`Storage.transaction`."""

    _storage: Storage
    _saved: Changes | None = None
    _log: LogMark | None = None
    _rolled_back: bool = False

    async def __aenter__(self) -> Transaction:
        self._saved = self._storage._changes().copy()
        self._log = self._storage._actor.block_began()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._rolled_back:
            assert self._saved is not None
            changes = self._storage._changes()
            # roomkit's own writes stay: a broadcast made in the block went out with its
            # number (sends are not the block's to undo), so its log entry and the
            # room's head must land with the hook, or a later broadcast would reuse it;
            # a delete_all() of the block is undone for the log too (if it logged
            # nothing since), in memory as in the store.
            kept = self._storage._actor.block_rolled_back(self._log, changes.writes)
            changes.writes, changes.cleared, changes.alarm = (
                {**self._saved.writes, **kept},
                self._saved.cleared,
                self._saved.alarm,
            )

    def rollback(self) -> None:
        """Undo the block's writes when it ends, without raising."""
        self._rolled_back = True


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a storage key must be a str, not {type(key).__name__}")
    if len(key) * 4 > MAX_KEY and len(key.encode("utf-8")) > MAX_KEY:
        raise ValueError(f"a storage key is at most {MAX_KEY} bytes of UTF-8")
    if "\x00" in key:  # PostgreSQL's text cannot hold it: one such key would fail a batch
        raise ValueError("a storage key may not contain NUL (U+0000)")
    if key.startswith(RESERVED):
        raise ValueError("storage keys that begin with U+10FFFF are reserved for roomkit")
    return key


#: Types JSON encodes as they are: no attrs instance to unstructure (checked first, as
#: ``attrs.has`` costs about as much as encoding a short string).
_JSON_TYPES: Final = frozenset({str, int, float, bool, dict, list, type(None)})


def _encode(value: Any) -> str:
    if type(value) not in _JSON_TYPES and attrs.has(type(value)):
        value = _VALUES.unstructure(value)
    try:
        return _JSON.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a stored value must be JSON-able: {exc}") from None
