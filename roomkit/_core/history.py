"""A room's log of broadcasts, for clients that come back: its keys, its entries, its
trimming, and the recovery decision. Pure.

Theory of operation. A room with a :class:`History` numbers each broadcast its hooks
make (1, 2, ...) within an *epoch* (16 random hex characters, made with the room's
first welcome or logged broadcast and kept), and logs it in the room's own storage, in
the hook's transaction: so the output gate guarantees that no client sees a number a
crash could take back. The log lives under keys that begin with U+10FFFF, which sort
after every key an application may use (and which ``Storage`` refuses):

    "\\U0010ffffmeta"            {"v": 2, "epoch": str, "head": int, "first": int,
                                  "marks": [[seq, t], ...]}
    "\\U0010fffflog:%016x" % seq  {"t": room time, "tag": str|None, "x": [ids],
                                  "s": [session names], "text": str}  or  {..., "bin":
                                  base64}  or, too big to keep, {"t": ..., "cut": true}

The retained entries are exactly ``first`` to ``head``: trimming deletes from the
front, and a hook that raises takes its numbers back. The meta is all a room reads
when it starts or wakes, and it stays small whatever the log holds: instead of every
entry's time it keeps *marks*, the ``(seq, time)`` of each entry logged at least
``step = max_age / MARKS`` after the previous mark. So every entry from a mark to the
next was logged less than ``step`` after that mark (the next entry later than that is
the next mark), and once a mark is older than ``max_age + step``, its entries are
older than ``max_age``, and are deleted: each at most ``step`` late. A replay checks
each entry's own time. The meta keeps the marks from the one whose entries include
``first``: at most ``MARKS + 1``, as every other mark's entries would have aged out.

:class:`ReplayLog` is the log as the room's awake actor knows it (its meta), which
says what each logged broadcast writes and deletes (trimming beyond ``max_count`` and
older than ``max_age`` happens in the same transactions), and :func:`decide` says what
a client that asks to recover from ``(epoch, seq)`` gets. A log of the first format
(a meta of ``{"epoch", "head"}`` alone, entries without ``"s"``) is read, once, by
:func:`upgrade`; a meta of a version this roomkit does not know starts a new epoch
(its clients resync).
"""

from __future__ import annotations

import base64
import json
import math
import secrets
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs

__all__ = [
    "FORMAT",
    "LOG_END",
    "LOG_PREFIX",
    "MARKS",
    "MAX_COUNT",
    "MAX_ENTRY",
    "META_KEY",
    "RESERVED",
    "History",
    "LogMark",
    "Mark",
    "ReplayLog",
    "decide",
    "entry",
    "log_key",
    "meets",
    "payload_of",
    "seq_of",
    "upgrade",
]

#: The first character of every key roomkit reserves in a room's storage.
RESERVED: Final = "\U0010ffff"
#: The log's meta: its format, epoch, head, first entry and marks.
META_KEY: Final = RESERVED + "meta"
#: The prefix of the log's entries, followed by the seq in 16 hex digits.
LOG_PREFIX: Final = RESERVED + "log:"
#: The first key after every entry's (":" + 1).
LOG_END: Final = RESERVED + "log;"
#: The meta's format ("v"); a meta without one is of the first format.
FORMAT: Final = 2
#: Marks per ``max_age``: the time index's resolution. An entry is deleted between
#: ``max_age`` and ``max_age * (1 + 1 / MARKS)`` after it was logged, and the meta
#: holds at most ``MARKS + 1`` of them (some 40 bytes each).
MARKS: Final = 16
#: The most entries ``History.max_count`` may keep: a trim by age deletes up to this
#: many keys in one commit, and the log may hold this many times MAX_ENTRY.
MAX_COUNT: Final = 10_000
#: Bytes (UTF-8) of an entry's stored text at most. A broadcast whose entry would be
#: bigger keeps its number but not its message (``"cut"``): a client that missed it
#: resyncs (as it would for a replay past half its send queue).
MAX_ENTRY: Final = 64 * 1024

_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: A log's state: its epoch, head, first retained seq, and marks.
Mark = tuple[str | None, int, int, tuple[tuple[int, float], ...]]
#: A log's state and how many times it was cleared, at the start of a transaction
#: block (see ReplayLog.rolled_back).
LogMark = tuple[int, Mark]

_EMPTY: Final[Mark] = (None, 0, 1, ())


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"History.{attribute.name} must be a positive int, not {value!r}")


def _count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    _positive_int(instance, attribute, value)
    if value > MAX_COUNT:
        raise ValueError(
            f"History.{attribute.name} is at most {MAX_COUNT} entries, not {value!r}; "
            "a client that misses more is better sent its state anew (on_resync)"
        )


def _positive_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"History.{attribute.name} must be positive seconds, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"History.{attribute.name} must be finite seconds, not {value!r}")


@attrs.frozen
class History:
    """``Room.history``: the room numbers and logs its broadcasts, so that a roomkit
    client that comes back gets exactly those it missed (docs/recovery.md).

    Attributes:
      max_count: entries kept at most (up to :data:`MAX_COUNT`); older ones are
        deleted as new ones come.
      max_age: seconds (of ``Room.time()``) an entry is kept.
      max_replay: entries one client may be replayed at most; a client that missed
        more gets ``recovered: false`` and ``on_resync`` runs.
    """

    max_count: int = attrs.field(default=1000, validator=_count)
    max_age: float = attrs.field(default=120.0, validator=_positive_seconds)
    max_replay: int = attrs.field(default=1000, validator=_positive_int)


def log_key(seq: int) -> str:
    """The storage key of the entry numbered ``seq``."""
    return f"{LOG_PREFIX}{seq:016x}"


def seq_of(key: str) -> int:
    """The number of the entry stored at ``key`` (a key of :func:`log_key`)."""
    return int(key[len(LOG_PREFIX) :], 16)


def entry(
    t: float,
    tag: str | None,
    excluded: Iterable[str],
    sessions: Iterable[str],
    payload: str | bytes,
) -> str:
    """The stored JSON text of a logged broadcast of ``payload``, left out for the
    connections ``excluded`` and the sessions (by name) ``sessions``; only its time if
    that would be more than :data:`MAX_ENTRY` bytes."""
    body: dict[str, Any] = {"t": t, "tag": tag, "x": list(excluded), "s": list(sessions)}
    if isinstance(payload, str):
        body["text"] = payload
    else:
        body["bin"] = base64.b64encode(payload).decode("ascii")
    text = _JSON.encode(body)
    if len(text) * 4 > MAX_ENTRY and len(text.encode("utf-8")) > MAX_ENTRY:
        return _JSON.encode({"t": t, "cut": True})
    return text


def payload_of(value: dict[str, Any]) -> str | bytes | None:
    """The message a stored entry (decoded) carries; None if it was too big to keep."""
    if "text" in value:
        text: str = value["text"]
        return text
    if "bin" in value:
        return base64.b64decode(value["bin"])
    return None


def meets(value: dict[str, Any], conn_id: str, session: str | None, tags: Sequence[str]) -> bool:
    """Whether the entry ``value`` was meant for the connection ``conn_id`` of the
    session named ``session`` with ``tags``: a tagged entry only for a connection
    carrying the tag now; never for one excluded, nor for its session's next
    connection (its client, back after its grace or a restart)."""
    tag = value.get("tag")
    if tag is not None and tag not in tags:
        return False
    return conn_id not in value.get("x", ()) and (
        session is None or session not in value.get("s", ())
    )


def decide(
    room: tuple[str, int] | None,
    oldest: int | None,
    max_replay: int,
    asked: tuple[str, int],
) -> tuple[int, int] | None:
    """What a client that last saw ``asked`` (epoch, seq) gets: the range ``(seq, head]``
    to replay (empty when it missed nothing), or None for a resync.

    ``room`` is the room's (epoch, head), None if it has no epoch; ``oldest`` the first
    seq still retained (and not known to be aged out), None if none is. A client level
    with the head has missed nothing, even if the log has aged out meanwhile
    (socket.io #5282); one that saw nothing since its welcome asks with that welcome's
    head, and gets all that was logged since (socket.io #5538). Never partial: a gap
    that cannot be filled whole is a resync.
    """
    if room is None or asked[0] != room[0]:
        return None
    seq, head = asked[1], room[1]
    if seq > head:
        return None
    if seq == head:
        return (seq, head)
    if oldest is not None and oldest <= seq + 1 and head - seq <= max_replay:
        return (seq, head)
    return None


def upgrade(
    history: History, meta: dict[str, Any], times: Sequence[tuple[int, float]]
) -> dict[str, Any]:
    """The meta, in this format, of a log of the first format whose meta is ``meta``
    and whose entries are ``(seq, time)`` in seq order: read once, when its room
    starts or wakes, and written with the next meta."""
    step = history.max_age / MARKS
    marks: list[tuple[int, float]] = []
    for seq, t in times:
        if not marks or t >= marks[-1][1] + step:
            marks.append((seq, t))
    first = times[0][0] if times else meta["head"] + 1
    return {
        "v": FORMAT,
        "epoch": meta["epoch"],
        "head": meta["head"],
        "first": first,
        "marks": marks,
    }


class ReplayLog:
    """A room's log as its awake actor knows it: its meta (the epoch, the head, the
    first entry retained, and the marks of the entries' times).

    What it returns to write goes in the running hook's changes, so that the meta and
    the store move together; :meth:`mark` and :meth:`restore` undo a turn whose writes
    were dropped (a hook raised), and :meth:`rolled_back` a transaction block's clear
    that was rolled back.
    """

    __slots__ = (
        "_cleared",
        "_encoded",
        "_step",
        "clears",
        "epoch",
        "first",
        "head",
        "history",
        "marks",
    )

    def __init__(self, history: History, meta: dict[str, Any] | None = None) -> None:
        self.history: Final = history
        self._step: Final = history.max_age / MARKS
        # The marks and their JSON, encoded again only when they change.
        self._encoded: tuple[tuple[tuple[int, float], ...], str] = ((), "[]")
        self.epoch: str | None
        self.head: int
        self.first: int
        self.marks: tuple[tuple[int, float], ...]
        if meta is None or meta.get("v") != FORMAT:  # none yet, or a format unknown here
            self._set(_EMPTY)
        else:
            marks = tuple((seq, t) for seq, t in meta["marks"])
            self._set((meta["epoch"], meta["head"], meta["first"], marks))
        #: How many times the log was cleared (``delete_all``), and its state and
        #: writes before the last clear of a log that had an epoch.
        self.clears = 0
        self._cleared: tuple[int, Mark, dict[str, str | None]] | None = None

    @property
    def position(self) -> tuple[str, int] | None:
        """The room's (epoch, head), None before it has an epoch."""
        return None if self.epoch is None else (self.epoch, self.head)

    def oldest(self, now: float) -> int | None:
        """The first seq retained and not known to be older than ``max_age`` at
        ``now`` (see :meth:`fresh` for each entry's own time); None if none is."""
        first = self._first_after(now - self.history.max_age)
        return first if first <= self.head else None

    def fresh(self, t: float, now: float) -> bool:
        """Whether an entry logged at ``t`` may be replayed at ``now`` (not aged out)."""
        return t >= now - self.history.max_age

    def begin(self) -> dict[str, str | None]:
        """Make the epoch if there is none yet; what that writes (the meta), or nothing."""
        if self.epoch is not None:
            return {}
        self._set((secrets.token_hex(8), 0, 1, ()))
        return {META_KEY: self._meta()}

    def append(self, now: float, text: str) -> tuple[int, dict[str, str | None]]:
        """Log the entry ``text`` at ``now``: its seq, and what that writes and deletes."""
        writes = self.begin()
        self.head = seq = self.head + 1
        writes[log_key(seq)] = text
        if not self.marks or now >= self.marks[-1][1] + self._step:
            self.marks += ((seq, now),)
        by_count = seq - self.history.max_count + 1
        first = max(self.first, by_count, self._first_after(now - self.history.max_age))
        if first > self.first:
            for old in range(self.first, first):
                writes[log_key(old)] = None
            self.first = first
            kept = sum(1 for mark in self.marks[1:] if mark[0] <= first)
            self.marks = self.marks[kept:]  # from the mark whose entries include first
        writes[META_KEY] = self._meta()
        return seq, writes

    def clear(self, writes: dict[str, str | None]) -> None:
        """The room's storage is being cleared, its ``writes`` with it: no epoch, no
        entry; the next log makes anew."""
        self.clears += 1
        if self.epoch is not None:
            kept = {key: value for key, value in writes.items() if key.startswith(RESERVED)}
            self._cleared = (self.clears, self.mark(), kept)
        self._set(_EMPTY)

    def mark(self) -> Mark:
        """Where the log is, for :meth:`restore`."""
        return self.epoch, self.head, self.first, self.marks

    def restore(self, mark: Mark) -> None:
        """Go back to ``mark``: the turn since it is undone (nothing it logged stands)."""
        self._set(mark)

    def block(self) -> LogMark:
        """Where the log is as a transaction block begins, for :meth:`rolled_back`."""
        return self.clears, self.mark()

    def rolled_back(self, block: LogMark, writes: dict[str, str | None]) -> dict[str, str | None]:
        """The block begun at ``block`` is rolled back, its running hook's ``writes``
        now being these: the log's writes that stand (the block's logged broadcasts
        went out with their numbers, so their entries stay, as sends are not the
        block's to undo).

        A clear in the block is undone, unless the block logged since: the log is then
        what it was before that clear, and what the hook had written to it before the
        clear stands. If the log that stands is not the one the block began with, that
        one's entries are deleted, so that the store holds the log this one is.
        """
        kept = {key: value for key, value in writes.items() if key.startswith(RESERVED)}
        clears, (epoch, head, first, _) = block
        if self.clears == clears:  # the block cleared nothing
            return kept
        cleared = self._cleared
        if self.epoch is None and cleared is not None and cleared[0] > clears:
            _, before, kept = cleared
            self._set(before)
            kept = dict(kept)
        if epoch is not None and epoch != self.epoch:
            for seq in range(first, head + 1):
                kept.setdefault(log_key(seq), None)
        return kept

    def _set(self, state: Mark) -> None:
        self.epoch, self.head, self.first, self.marks = state

    def _first_after(self, cutoff: float) -> int:
        """The first seq retained that may be logged at ``cutoff`` or later: those from
        a mark to the next were logged less than a step after it."""
        first, marks = self.first, self.marks
        for i, (_, t) in enumerate(marks):
            if t + self._step > cutoff:
                break
            first = max(first, marks[i + 1][0] if i + 1 < len(marks) else self.head + 1)
        return first

    def _meta(self) -> str:
        marks = self.marks
        if marks is not self._encoded[0]:  # a new mark, or a trim: at most once a step
            self._encoded = (marks, _JSON.encode(marks))
        return (
            f'{{"v":{FORMAT},"epoch":"{self.epoch}","head":{self.head},'
            f'"first":{self.first},"marks":{self._encoded[1]}}}'
        )
