"""A room's presence: who is here, under which key, and what changed in a turn. Pure.

Phoenix.Presence's model (docs/presence.md): each connection that sets
``conn.presence`` is tracked under a key (by default its user) with one *meta*, its
value plus ``"ref"`` (the connection's id); a key holds the metas of all its
connections (two tabs of one user: one key, two metas), in the order they joined.

The order is the wire's too, so that a client applying the diffs keeps the room's
(docs/presence.md, "Order"): metas in each key in join order, an update last; keys in
the order they appeared, a key keeping its place for as long as it ends each turn with
a meta (one that ends a turn empty is gone, and comes back last); the keys new in a
turn after the others, in the order of their first metas. A diff lists its joins in
that order, and a client keeps the place of a key that its leaves empty and its joins
fill again.

The :class:`Tracker` keeps that state and, between two :meth:`Tracker.flush` calls
(one turn of the room), the value each changed connection had before the turn: the
turn's diff is what differs at its end, so a join and a leave of one meta in the same
turn cancel, and fifty joins make one diff. An update is a leave of the old meta and a
join of the new one, which goes last in its key (as a client applying the leaves, then
the joins, places it); assigning the value a connection already has changes nothing.

A hook is a transaction, and its presence changes are part of it: :meth:`Tracker.begin`
marks the start of one, :meth:`Tracker.rollback` puts every connection the hook changed
back as it was (its place too), and :meth:`Tracker.end` forgets the mark. Changes made
during the hook but not by it (``turn=False``: roomkit's own, a task of the room's) are
kept through a rollback.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any, Final

from .frames import OPCODE_TEXT, encode_frame

__all__ = [
    "MAX_META",
    "USER_TAG",
    "Diff",
    "Meta",
    "Tracker",
    "check_meta",
    "default_key",
    "diff_frame",
    "state_frames",
    "state_payloads",
]

#: Largest presence value, serialised, in bytes: what Pusher allows a member's info;
#: every meta goes to every roomkit.v1 client of the room with each diff and state.
MAX_META: Final = 1024
#: The tag prefix that names a connection's user, the default presence key.
USER_TAG: Final = "user:"
#: The field roomkit adds to each meta: the connection's id.
REF: Final = "ref"

#: A meta as clients see it: the connection's value plus its "ref".
Meta = dict[str, Any]
#: A diff as the wire carries it: {"joins": {key: {"metas": [...]}}, "leaves": {...}}.
Diff = dict[str, dict[str, dict[str, list[Meta]]]]

#: One encoder for presence frames, as the envelope's: compact, text as it is.
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def check_meta(value: Any) -> str:
    """``value``'s JSON text, once it is known to be a valid presence value.

    Raises:
      TypeError: if ``value`` is not a dict (a JSON object), or holds what JSON cannot.
      ValueError: if it is over :data:`MAX_META` bytes serialised, holds a ``"ref"``
        (roomkit's), or a float that JSON cannot carry (NaN, infinities).
    """
    if not isinstance(value, dict):
        raise TypeError(f"a presence is a dict (a JSON object), not {type(value).__name__}")
    if REF in value:
        raise ValueError(f'a presence may not hold "{REF}": roomkit sets it to the connection id')
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    size = len(text.encode("utf-8"))
    if size > MAX_META:
        raise ValueError(f"a presence is at most {MAX_META} bytes serialised, this one is {size}")
    return text


def default_key(conn_id: str, tags: Iterable[str]) -> str:
    """The key a connection is tracked under by default: its first ``user:<id>`` tag's
    ``<id>``, else its connection id."""
    for tag in tags:
        if tag.startswith(USER_TAG):
            return tag[len(USER_TAG) :]
    return conn_id


class Tracker:
    """The presence of one room's connections, and what changed since the last flush."""

    __slots__ = ("_before", "_keys", "_marked", "_saved", "_tracked")

    def __init__(self) -> None:
        #: ref -> (key, meta), in join order (an update moves its ref last).
        self._tracked: dict[str, tuple[str, Meta]] = {}
        #: The keys that held a meta at the last flush, in the state's order.
        self._keys: dict[str, None] = {}
        #: ref -> what it was at the last flush (None: not tracked), for the refs
        #: changed since: empty when nothing is pending.
        self._before: dict[str, tuple[str, Meta] | None] = {}
        #: Whether a hook's transaction runs (begin() to end()), and ``_tracked`` as it
        #: was before its first change (None until then: nothing to roll back).
        self._marked = False
        self._saved: dict[str, tuple[str, Meta]] | None = None

    @property
    def pending(self) -> bool:
        """Whether something changed since the last flush (its diff may still be empty)."""
        return bool(self._before)

    def track(self, ref: str, key: str, text: str | None, *, turn: bool = True) -> None:
        """Track connection ``ref`` under ``key`` with the value whose JSON is ``text``
        (a :func:`check_meta` one), or untrack it (None); ``turn``: a change of the
        running hook's, which its rollback undoes (else kept through one)."""
        meta: Meta | None = None
        if text is not None:
            meta = json.loads(text)
            meta[REF] = ref
        now = self._tracked.get(ref)
        if self._marked and turn and self._saved is None:
            self._saved = dict(self._tracked)  # before its first change, in its order
        if not _put(self._tracked, ref, key, meta):
            return
        if not turn and self._saved is not None:
            _put(self._saved, ref, key, meta)
        if ref not in self._before:
            self._before[ref] = now

    def begin(self) -> None:
        """A hook's transaction starts: what it changes from now may be rolled back."""
        self._marked, self._saved = True, None

    def end(self) -> None:
        """The hook's transaction ended (returned, or rolled back)."""
        self._marked, self._saved = False, None

    def rollback(self) -> dict[str, str | None]:
        """Put back what the running hook changed, and end its transaction: the refs it
        changed, each with the JSON of its value now (None: untracked).

        The next flush tells the clients what differs from the state they were last
        sent: nothing, unless a flush during the hook sent its changes."""
        saved, tracked = self._saved, self._tracked
        self.end()
        if saved is None:
            return {}
        restored: dict[str, str | None] = {}
        for ref in tracked.keys() | saved.keys():
            now, was = tracked.get(ref), saved.get(ref)
            if now == was:
                continue
            if ref not in self._before:
                self._before[ref] = now
            if self._before[ref] == was:
                del self._before[ref]  # as the clients have it
            restored[ref] = None if was is None else _JSON.encode(_value(was[1]))
        self._tracked = saved
        return restored

    def state(self) -> dict[str, list[Meta]]:
        """Every key and its metas, in the order of the module's docstring (copies: the
        caller may change them)."""
        state: dict[str, list[Meta]] = {key: [] for key in self._keys}
        for key, meta in self._tracked.values():
            state.setdefault(key, []).append(copy.deepcopy(meta))
        return {key: metas for key, metas in state.items() if metas}

    def flush(self) -> Diff | None:
        """The diff since the last flush, which it ends; None if nothing differs."""
        before, self._before = self._before, {}
        joins: dict[str, dict[str, list[Meta]]] = {}
        leaves: dict[str, dict[str, list[Meta]]] = {}
        for ref, was in before.items():  # one that joined and left in it: in neither
            now = self._tracked.get(ref)
            if was is not None:
                leaves.setdefault(was[0], {"metas": []})["metas"].append(copy.deepcopy(was[1]))
            if now is not None:
                joins.setdefault(now[0], {"metas": []})["metas"].append(copy.deepcopy(now[1]))
        if not joins and not leaves:
            return None
        # The keys the turn ends with, in the state's order; the joins in that order,
        # each key's in join order, whatever order they changed in.
        held = dict.fromkeys(key for key, _ in self._tracked.values())  # by first meta
        self._keys = {key: None for key in self._keys if key in held} | held
        rank = {key: i for i, key in enumerate(self._keys)}
        order = {ref: i for i, ref in enumerate(self._tracked)}
        for entry in joins.values():
            entry["metas"].sort(key=lambda meta: order[meta[REF]])
        ranked = {key: joins[key] for key in sorted(joins, key=rank.__getitem__)}
        return {"joins": ranked, "leaves": leaves}


def _put(tracked: dict[str, tuple[str, Meta]], ref: str, key: str, meta: Meta | None) -> bool:
    """Set ``ref`` in ``tracked`` (None: remove it), an update last; whether it changed."""
    now = tracked.get(ref)
    if meta is None:
        if now is None:
            return False
        del tracked[ref]
        return True
    if now is not None:
        if now == (key, meta):
            return False  # the value it has: no update
        del tracked[ref]  # an update: last in its key, as a leave and a join
    tracked[ref] = (key, meta)
    return True


def _value(meta: Meta) -> dict[str, Any]:
    """A meta's presence value: without its "ref"."""
    return {name: item for name, item in meta.items() if name != REF}


def state_payloads(state: dict[str, list[Meta]], limit: int) -> list[bytes]:
    """The payloads (UTF-8 JSON) of the frames that give a client ``state``, each of at
    most ``limit`` bytes: one ``presence_state`` when it fits (the usual case), else a
    ``presence_state`` of the keys that fit, then ``presence_diff`` frames of joins alone
    for the rest, in the state's order, so that a client applying them (docs/presence.md,
    "The wire") ends with ``state``, in its order.

    A key goes whole in the next frame when it does not fit in the rest of one; a key
    too big for a frame of its own is split by metas: the joins of its next part append
    to it, in its place. A meta too big for a frame of its own goes alone in its frame,
    over ``limit`` (a ``limit`` under a meta's 1 KiB and its key's JSON).
    """
    body = {key: {"metas": metas} for key, metas in state.items()}
    whole = _JSON.encode(["presence_state", body]).encode("utf-8")
    if len(whole) <= limit:
        return [whole]
    frames = _Frames(limit)
    for key, metas in state.items():
        name = _JSON.encode(key).encode("utf-8") + b':{"metas":['
        parts = [_JSON.encode(meta).encode("utf-8") for meta in metas]
        entry = name + b",".join(parts) + b"]}"
        if len(entry) > frames.room() and frames.entries and len(entry) <= frames.fresh:
            frames.close()  # whole in the next frame
        if len(entry) <= frames.room():
            frames.add(entry)
        else:
            frames.split(name, parts)
    frames.close()
    return frames.done


class _Frames:
    """The frames :func:`state_payloads` fills: those done, and the entries (a key and
    its metas, as JSON) of the one being filled, a ``presence_state`` first, then
    ``presence_diff`` frames of joins alone."""

    __slots__ = ("_used", "done", "entries", "fresh", "head", "limit", "tail")

    _STATE: Final = (b'["presence_state",{', b"}]")
    _JOINS: Final = (b'["presence_diff",{"joins":{', b'},"leaves":{}}]')

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: The bytes an entry may have in a frame of joins of its own.
        self.fresh = limit - sum(map(len, self._JOINS))
        self.done: list[bytes] = []
        self.head, self.tail = self._STATE
        self.entries: list[bytes] = []
        self._used = len(self.head) + len(self.tail)

    def room(self) -> int:
        """The bytes one more entry may have in the frame (its comma counted)."""
        return self.limit - self._used - (1 if self.entries else 0)

    def add(self, entry: bytes) -> None:
        self._used += len(entry) + (1 if self.entries else 0)
        self.entries.append(entry)

    def split(self, name: bytes, parts: list[bytes]) -> None:
        """Add a key too big for a frame (``name``: its JSON up to its metas), as many
        of its metas as fit in each frame; a meta too big for one goes alone."""
        taken: list[bytes] = []
        size = len(name) + 2  # with "]}"
        for part in parts:
            grown = size + len(part) + (1 if taken else 0)
            if grown > self.room() and (taken or self.entries):
                if taken:
                    self.add(name + b",".join(taken) + b"]}")
                self.close()
                taken, grown = [], len(name) + 2 + len(part)
            taken.append(part)
            size = grown
        self.add(name + b",".join(taken) + b"]}")

    def close(self) -> None:
        """The frame is done; the next is one of joins."""
        self.done.append(self.head + b",".join(self.entries) + self.tail)
        self.head, self.tail = self._JOINS
        self.entries = []
        self._used = len(self.head) + len(self.tail)


def state_frames(tracker: Tracker, limit: int) -> list[bytes]:
    """The text frames of :func:`state_payloads` for ``tracker``'s state."""
    return [
        encode_frame(OPCODE_TEXT, payload) for payload in state_payloads(tracker.state(), limit)
    ]


def diff_frame(diff: Diff) -> bytes:
    """The ``["presence_diff", {"joins": ..., "leaves": ...}]`` frame of ``diff``."""
    return encode_frame(OPCODE_TEXT, _JSON.encode(["presence_diff", diff]).encode("utf-8"))
