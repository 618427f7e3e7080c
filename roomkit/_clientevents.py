"""What the Python client tells its ``on_open``, ``on_close``, ``on_reconnect`` and
``on_presence`` callbacks.

Small frozen classes, one per event, named after the browser's events that
``/roomkit.js``'s ``RoomSocket`` (and PartySocket) dispatch.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["CloseEvent", "OpenEvent", "PresenceEvent", "ReconnectEvent"]


@attrs.frozen
class OpenEvent:
    """A WebSocket opened; ``connections`` counts them, this one included (2 and up: a
    reconnection). On a connection that speaks the roomkit.v1 envelope, ``resumed`` and
    ``recovered`` are its welcome's (see ``Session``); on a plain one, False and None."""

    connections: int
    resumed: bool = False
    recovered: bool | None = None


@attrs.frozen
class CloseEvent:
    """An open WebSocket ended with ``code`` and ``reason`` (1006 and ``""`` when it was
    lost without a close frame); ``will_reconnect`` is False when the client stops."""

    code: int
    reason: str
    will_reconnect: bool


@attrs.frozen
class ReconnectEvent:
    """The client will try again after ``delay`` seconds; ``attempt`` counts the tries
    since the last WebSocket ended, this one included (the immediate try after a 1012
    close has attempt 0 and delay 0)."""

    attempt: int
    delay: float


@attrs.frozen
class PresenceEvent:
    """The room's presence changed (docs/presence.md): ``presence`` is the whole of it
    now, each key and its metas in the order they joined; ``joins`` and ``leaves`` the
    metas a ``presence_diff`` added and removed by key (both empty for a
    ``presence_state``, which replaced everything, and for a new welcome, which
    cleared it)."""

    presence: dict[str, list[dict[str, Any]]]
    joins: dict[str, list[dict[str, Any]]]
    leaves: dict[str, list[dict[str, Any]]]
