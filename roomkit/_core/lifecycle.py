"""A connection's life, as one table of phases and what moves it between them. Pure.

Theory of operation (h11's ``_state.py`` is the model). A connection is in one
:class:`Phase` at a time, and only a :class:`Trigger` moves it, through
:data:`TRANSITIONS`; a trigger a phase does not list there is a bug of roomkit's, and
:func:`advance` raises for it rather than guess. Each phase shows to rooms as one of
the four values of the public :class:`ConnectionState` (:data:`PUBLIC`)::

    phase        public      delivers  answers pings  takes sends
    CONNECTING   CONNECTING  -         -              yes (sent after the 101)
    OPEN         OPEN        yes       yes            yes
    DEAF         OPEN        no        no             yes
    CLOSING      CLOSING     no        yes            no
    CLOSED       CLOSED      -         -              no
    REJECTED     CLOSED      -         -              no
    AWAY         AWAY        -         -              no

    CONNECTING --ADMIT--> OPEN --DEAFEN--> DEAF
         |                  |                |
         +------CLOSE-------+------CLOSE-----+--> CLOSING --GONE--> CLOSED
         +------REJECT------+-----REJECT-----+------+-----> REJECTED

    CLOSED --PARK--> AWAY --GONE--> CLOSED

DEAF is the reader's cut (an oversized message, a flood, a protocol error) and the
server's drain: frames are still read, for the peer's close, but nothing it sends
reaches the room. CLOSING starts when a close frame is owed to the peer (the room's,
roomkit's, or the answer to the peer's own). GONE is the socket closing, from any
phase; a rejected connection stays REJECTED. AWAY is a ``roomkit.v1`` session whose
socket ended abruptly and that may still resume (its ``session_grace``): parked, not
among the room's connections; GONE ends it, when it resumes on a new socket (that
transport carries the session on) or when its grace ends.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "PUBLIC",
    "TRANSITIONS",
    "BadTransition",
    "ConnectionState",
    "Phase",
    "Trigger",
    "advance",
]


class ConnectionState(enum.Enum):
    """Where a connection is in its life; see ``Connection.state``."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    #: A session whose socket ended abruptly, kept for ``Room.session_grace`` seconds
    #: in case its client comes back (docs/recovery.md).
    AWAY = "away"


class Phase(enum.Enum):
    """Where a connection is in its life, as roomkit needs to know it."""

    # Members are singletons: identity hashing is right, and much cheaper than Enum's
    # own __hash__ (a Python call) on the table lookups made per connection.
    __hash__ = object.__hash__

    CONNECTING = "connecting"  # the handshake waits for its room's on_connect
    OPEN = "open"  # on_connect has started; what the peer sends is delivered
    DEAF = "deaf"  # still open, but what the peer sends is not delivered
    CLOSING = "closing"  # a close frame is owed to the peer
    CLOSED = "closed"  # the socket is gone
    REJECTED = "rejected"  # the room refused the handshake
    AWAY = "away"  # the socket is gone, the session parked: it may resume


class Trigger(enum.Enum):
    """What moves a connection from one phase to another."""

    __hash__ = object.__hash__  # as Phase's

    ADMIT = "admit"  # its on_connect starts
    REJECT = "reject"  # its handshake is refused (or could not be decided)
    DEAFEN = "deafen"  # the reader cuts the peer off, or the server drains
    CLOSE = "close"  # a close frame is owed to the peer
    GONE = "gone"  # the socket is closed (or a parked session ends)
    PARK = "park"  # the socket ended abruptly; the session waits for its client


_C, _O, _D, _CG, _CD, _R, _A = (
    Phase.CONNECTING,
    Phase.OPEN,
    Phase.DEAF,
    Phase.CLOSING,
    Phase.CLOSED,
    Phase.REJECTED,
    Phase.AWAY,
)
_ADMIT, _REJECT, _DEAFEN, _CLOSE, _GONE, _PARK = Trigger

#: Every move a connection can make. A handshake drained before its on_connect stays
#: CONNECTING (the room refuses it: it is shutting down); a connection already closed
#: or refused ignores the drain.
TRANSITIONS: Final[dict[Phase, dict[Trigger, Phase]]] = {
    _C: {_ADMIT: _O, _REJECT: _R, _DEAFEN: _C, _CLOSE: _CG, _GONE: _CD},
    _O: {_REJECT: _R, _DEAFEN: _D, _CLOSE: _CG, _GONE: _CD},
    _D: {_REJECT: _R, _DEAFEN: _D, _CLOSE: _CG, _GONE: _CD},
    _CG: {_REJECT: _R, _DEAFEN: _CG, _CLOSE: _CG, _GONE: _CD},
    _CD: {_DEAFEN: _CD, _PARK: _A},
    _R: {_DEAFEN: _R, _GONE: _R},
    _A: {_DEAFEN: _A, _GONE: _CD},
}

#: How each phase shows to rooms.
PUBLIC: Final[dict[Phase, ConnectionState]] = {
    _C: ConnectionState.CONNECTING,
    _O: ConnectionState.OPEN,
    _D: ConnectionState.OPEN,
    _CG: ConnectionState.CLOSING,
    _CD: ConnectionState.CLOSED,
    _R: ConnectionState.CLOSED,
    _A: ConnectionState.AWAY,
}


class BadTransition(Exception):
    """Raised when a trigger comes in a phase that has no move for it (a bug)."""


def advance(phase: Phase, trigger: Trigger) -> Phase:
    """The phase ``trigger`` moves a connection in ``phase`` to.

    Raises:
      BadTransition: if ``phase`` has no move for ``trigger``.
    """
    try:
        return TRANSITIONS[phase][trigger]
    except KeyError:
        raise BadTransition(f"a {phase.value} connection cannot {trigger.value}") from None
