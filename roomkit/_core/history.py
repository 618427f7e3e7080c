"""A room's log of broadcasts, for clients that come back: its keys, its entries, its
trimming, and the recovery decision. Pure.

Theory of operation. A room with a :class:`History` numbers each broadcast its hooks
make (1, 2, ...) within an *epoch* (16 random hex characters, made with the room's
first welcome or logged broadcast and kept), and logs it in the room's own storage, in
the hook's transaction: so the output gate guarantees that no client sees a number a
crash could take back. The log lives under keys that begin with U+10FFFF, which sort
after every key an application may use (and which ``Storage`` refuses):

    "\\U0010ffffmeta"                 {"epoch": str, "head": int}
    "\\U0010fffflog:%016x" % seq       {"t": room time, "tag": str|None, "x": [ids],
                                        "text": str}  or  {..., "bin": base64}

:class:`ReplayLog` is the room's index of it while the room is awake (the epoch, the
head, and the ``(seq, time)`` of each retained entry), which says what each logged
broadcast writes and deletes (trimming beyond ``max_count`` and older than
``max_age`` happens in the same transactions), and :func:`decide` says what a client
that asks to recover from ``(epoch, seq)`` gets.
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
    "LOG_END",
    "LOG_PREFIX",
    "META_KEY",
    "RESERVED",
    "History",
    "Mark",
    "ReplayLog",
    "decide",
    "entry",
    "log_key",
    "meets",
    "payload_of",
    "seq_of",
]

#: The first character of every key roomkit reserves in a room's storage.
RESERVED: Final = "\U0010ffff"
#: The log's meta: its epoch and head.
META_KEY: Final = RESERVED + "meta"
#: The prefix of the log's entries, followed by the seq in 16 hex digits.
LOG_PREFIX: Final = RESERVED + "log:"
#: The first key after every entry's (":" + 1).
LOG_END: Final = RESERVED + "log;"

_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: A log's position at the start of a turn (see ReplayLog.mark): its epoch, its head,
#: its list of entries and their count.
Mark = tuple[str | None, int, list[tuple[int, float]], int]


def _positive_int(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"History.{attribute.name} must be a positive int, not {value!r}")


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
      max_count: entries kept at most; older ones are deleted as new ones come.
      max_age: seconds (of ``Room.time()``) an entry is kept.
      max_replay: entries one client may be replayed at most; a client that missed
        more gets ``recovered: false`` and ``on_resync`` runs.
    """

    max_count: int = attrs.field(default=1000, validator=_positive_int)
    max_age: float = attrs.field(default=120.0, validator=_positive_seconds)
    max_replay: int = attrs.field(default=1000, validator=_positive_int)


def log_key(seq: int) -> str:
    """The storage key of the entry numbered ``seq``."""
    return f"{LOG_PREFIX}{seq:016x}"


def seq_of(key: str) -> int:
    """The number of the entry stored at ``key`` (a key of :func:`log_key`)."""
    return int(key[len(LOG_PREFIX) :], 16)


def entry(t: float, tag: str | None, excluded: Iterable[str], payload: str | bytes) -> str:
    """The stored JSON text of a logged broadcast of ``payload``."""
    body: dict[str, Any] = {"t": t, "tag": tag, "x": list(excluded)}
    if isinstance(payload, str):
        body["text"] = payload
    else:
        body["bin"] = base64.b64encode(payload).decode("ascii")
    return _JSON.encode(body)


def payload_of(value: dict[str, Any]) -> str | bytes:
    """The message a stored entry (decoded) carries."""
    if "text" in value:
        text: str = value["text"]
        return text
    return base64.b64decode(value["bin"])


def meets(value: dict[str, Any], conn_id: str, tags: Sequence[str]) -> bool:
    """Whether the entry ``value`` was meant for the connection ``conn_id`` with ``tags``:
    a tagged entry only for a connection carrying the tag now; never for one excluded."""
    tag = value.get("tag")
    return (tag is None or tag in tags) and conn_id not in value.get("x", ())


def decide(
    room: tuple[str, int] | None,
    oldest: int | None,
    max_replay: int,
    asked: tuple[str, int],
) -> tuple[int, int] | None:
    """What a client that last saw ``asked`` (epoch, seq) gets: the range ``(seq, head]``
    to replay (empty when it missed nothing), or None for a resync.

    ``room`` is the room's (epoch, head), None if it has no epoch; ``oldest`` the first
    seq still retained (and not aged out), None if none is. A client level with the
    head has missed nothing, even if the log has aged out meanwhile (socket.io #5282);
    one that saw nothing since its welcome asks with that welcome's head, and gets all
    that was logged since (socket.io #5538). Never partial: a gap that cannot be
    filled whole is a resync.
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


class ReplayLog:
    """A room's log as its awake actor knows it: the epoch, the head, and the ``(seq,
    time)`` of each retained entry, oldest first.

    What it returns to write goes in the running hook's changes, so that the index and
    the store move together; :meth:`mark` and :meth:`restore` undo a turn whose writes
    were dropped (a hook raised).
    """

    __slots__ = ("_first", "_times", "epoch", "head", "history")

    def __init__(
        self,
        history: History,
        meta: dict[str, Any] | None = None,
        entries: Sequence[tuple[int, float]] = (),
    ) -> None:
        self.history: Final = history
        self.epoch: str | None = None if meta is None else meta["epoch"]
        self.head: int = 0 if meta is None else meta["head"]
        # (seq, time) of the retained entries; those before _first are trimmed already.
        self._times = list(entries)
        self._first = 0

    @property
    def position(self) -> tuple[str, int] | None:
        """The room's (epoch, head), None before it has an epoch."""
        return None if self.epoch is None else (self.epoch, self.head)

    def oldest(self, now: float) -> int | None:
        """The first seq retained and not older than ``max_age`` at ``now``."""
        cutoff = now - self.history.max_age
        for seq, t in self._times[self._first :]:
            if t >= cutoff:
                return seq
        return None

    def begin(self) -> dict[str, str | None]:
        """Make the epoch if there is none yet; what that writes (the meta), or nothing."""
        if self.epoch is not None:
            return {}
        self.epoch = secrets.token_hex(8)
        self.head = 0
        return {META_KEY: self._meta()}

    def append(self, now: float, text: str) -> tuple[int, dict[str, str | None]]:
        """Log the entry ``text`` at ``now``: its seq, and what that writes and deletes."""
        writes = self.begin()
        self.head = seq = self.head + 1
        self._times.append((seq, now))
        writes[log_key(seq)] = text
        writes[META_KEY] = self._meta()
        history, times = self.history, self._times
        cutoff = now - history.max_age
        first = self._first
        while len(times) - first > history.max_count or times[first][1] < cutoff:
            writes[log_key(times[first][0])] = None
            first += 1
        self._first = first
        return seq, writes

    def clear(self) -> None:
        """The room's storage was cleared: no epoch, no entry; the next log makes anew."""
        self.epoch, self.head, self._times, self._first = None, 0, [], 0

    def mark(self) -> Mark:
        """Where the log is, for :meth:`restore`; compacts what was trimmed before it."""
        times = self._times
        if self._first:
            del times[: self._first]
            self._first = 0
        return self.epoch, self.head, times, len(times)

    def restore(self, mark: Mark) -> None:
        """Go back to ``mark``: the turn since it is undone (nothing it logged stands)."""
        self.epoch, self.head, times, count = mark
        del times[count:]
        self._times, self._first = times, 0

    def _meta(self) -> str:
        return _JSON.encode({"epoch": self.epoch, "head": self.head})
