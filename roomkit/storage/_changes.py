"""Writes not yet durable, layered over what the store holds. Pure, no I/O.

A room's storage, as its hooks see it, is the store's committed data with layers of
:class:`Changes` on top, oldest first: one per hook whose commit is still in flight,
and the running hook's own on top. A read looks through the layers from the newest
down and asks the store only for what no layer knows; a listing merges the store's rows
with every layer. When a commit completes, its layer is dropped: the store has it now.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

import attrs

__all__ = [
    "AlarmWrite",
    "Changes",
    "KeyRange",
    "lookup",
    "lookup_alarm",
    "merge",
    "merge_listing",
]

K = TypeVar("K", bound=Hashable)


@attrs.frozen
class AlarmWrite:
    """A room's alarm as a write sets it: due at ``due`` (Unix seconds), or deleted (None)."""

    due: float | None
    retry: int = 0


@attrs.define
class Changes:
    """One transaction's writes to one room.

    Attributes:
      writes: key → JSON text, or None where the key was deleted.
      cleared: every key not in ``writes`` was deleted (``delete_all``).
      alarm: the alarm as this transaction left it, or None if it did not touch it.
    """

    writes: dict[str, str | None] = attrs.Factory(dict)
    cleared: bool = False
    alarm: AlarmWrite | None = None

    def __bool__(self) -> bool:
        return bool(self.writes) or self.cleared or self.alarm is not None

    def copy(self) -> Changes:
        return Changes(dict(self.writes), self.cleared, self.alarm)

    def clear(self) -> None:
        self.writes.clear()
        self.cleared = True
        self.alarm = AlarmWrite(None)


@attrs.frozen
class KeyRange:
    """Keys from ``start`` (inclusive) to ``end`` (exclusive); None is unbounded."""

    start: str | None = None
    end: str | None = None

    @classmethod
    def of(cls, prefix: str | None, start: str | None, end: str | None) -> KeyRange:
        """The keys that have ``prefix`` and lie between ``start`` and ``end``."""
        if prefix:
            start = prefix if start is None else max(start, prefix)
            after = _after_prefix(prefix)
            if after is not None:
                end = after if end is None else min(end, after)
        return cls(start, end)

    def __contains__(self, key: str) -> bool:
        return (self.start is None or key >= self.start) and (self.end is None or key < self.end)

    @property
    def empty(self) -> bool:
        return self.start is not None and self.end is not None and self.start >= self.end


def _after_prefix(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    stripped = prefix.rstrip(chr(0x10FFFF))
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def lookup(layers: Sequence[Changes], key: str) -> tuple[bool, str | None]:
    """``(True, text or None)`` if a layer decides ``key``; ``(False, None)``: ask the store."""
    for layer in reversed(layers):
        if key in layer.writes:
            return True, layer.writes[key]
        if layer.cleared:
            return True, None
    return False, None


def lookup_alarm(layers: Sequence[Changes]) -> AlarmWrite | None:
    """The alarm as the newest layer that touched it left it, or None if none did."""
    for layer in reversed(layers):
        if layer.alarm is not None:
            return layer.alarm
    return None


def store_is_hidden(layers: Sequence[Changes]) -> bool:
    """Whether a layer cleared the room, so the store's rows no longer count."""
    return any(layer.cleared for layer in layers)


def deletions_in(layers: Sequence[Changes], keys: KeyRange) -> int:
    """How many stored rows in ``keys`` the layers may hide (to over-fetch by)."""
    return sum(1 for layer in layers for k, v in layer.writes.items() if v is None and k in keys)


def merge_listing(
    layers: Sequence[Changes],
    stored: Iterable[tuple[str, str]],
    keys: KeyRange,
    *,
    reverse: bool = False,
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """The rows in ``keys`` once every layer is applied over the store's ``stored`` rows.

    ``stored`` must hold every stored row in ``keys`` that could make the cut: with a
    limit, at least ``limit + deletions_in(layers, keys)`` rows from the right end.
    """
    first = max((i for i, layer in enumerate(layers) if layer.cleared), default=None)
    rows: dict[str, str] = {} if first is not None else dict(stored)
    for layer in layers[first or 0 :]:
        for key, text in layer.writes.items():
            if key not in keys:
                continue
            if text is None:
                rows.pop(key, None)
            else:
                rows[key] = text
    ordered = sorted(rows.items(), reverse=reverse)
    return ordered if limit is None else ordered[:limit]


def merge(batch: Iterable[tuple[K, Changes]]) -> dict[K, Changes]:
    """The net effect of a batch of transactions, per room, in the order they ran.

    What a later transaction writes wins over an earlier one, and a clear forgets
    every earlier write: a store can apply the result with one statement per kind.
    """
    merged: dict[K, Changes] = {}
    for room, changes in batch:
        into = merged.get(room)
        if into is None:
            merged[room] = changes.copy()
            continue
        if changes.cleared:
            into.writes.clear()
            into.cleared = True
        into.writes.update(changes.writes)
        if changes.alarm is not None:
            into.alarm = changes.alarm
    return merged
