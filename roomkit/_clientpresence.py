"""The Python client's copy of its room's presence, kept in sync from the room's
``presence_state`` and ``presence_diff`` frames. Pure: no I/O.

The wire contract is docs/presence.md's "The wire": a state replaces the whole
mapping; a diff removes its leaves' metas (by ``ref``) and then appends its joins'
(a new key last; a key its leaves empty and its joins fill again keeps its place), so
that the mapping keeps the room's order ("Order").
Leaves come first because a meta's ``ref`` is its connection's id across updates (an
update is the old meta in ``leaves``, the new one in ``joins``); Phoenix's clients,
whose refs change with each update, apply joins first.
"""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["ClientPresence", "Metas"]

#: Each key and its metas, in the order they joined.
Metas = dict[str, list[dict[str, Any]]]


class ClientPresence:
    """The room's presence as its frames told it, since the connection's welcome."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Metas = {}

    def clear(self) -> bool:
        """A new welcome: nothing is known until the room's state comes (a room that
        tracks nobody sends none). Whether there was something to forget."""
        had = bool(self.state)
        self.state = {}
        return had

    def feed(self, frame: str) -> tuple[Metas, Metas] | None:
        """Take in a text frame after the welcome; for a presence frame, its joins and
        leaves (both empty for a state), else None (another kind, or a broken frame:
        ignored, as kinds a client does not know are)."""
        try:
            value = json.loads(frame)
        except ValueError:
            return None
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], dict)):
            return None
        kind, body = value
        if kind == "presence_state":
            self.state = _metas(body)
            return {}, {}
        if kind == "presence_diff":
            joins, leaves = _metas(body.get("joins")), _metas(body.get("leaves"))
            self._apply(joins, leaves)
            return joins, leaves
        return None

    def _apply(self, joins: Metas, leaves: Metas) -> None:
        state = self.state
        for key, metas in leaves.items():
            refs = {meta.get("ref") for meta in metas}
            kept = [meta for meta in state.get(key, ()) if meta.get("ref") not in refs]
            if kept or (key in joins and key in state):
                state[key] = kept  # in its place: emptied and filled again, it stays
            else:
                state.pop(key, None)
        for key, metas in joins.items():
            state[key] = state.get(key, []) + copy.deepcopy(metas)


def _metas(entries: object) -> Metas:
    """``{key: {"metas": [...]}}`` as ``{key: [...]}``, leaving out what is not that
    shape (a key without metas, a meta that is not an object)."""
    if not isinstance(entries, dict):
        return {}
    result: Metas = {}
    for key, entry in entries.items():
        metas = entry.get("metas") if isinstance(entry, dict) else None
        if isinstance(metas, list):
            kept = [meta for meta in metas if isinstance(meta, dict)]
            if kept:
                result[key] = kept
    return result
