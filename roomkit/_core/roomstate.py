"""A live room's lifecycle: its states, and the one table of what moves it. Pure.

Theory of operation. A room is live from the first handshake for its name until it
has nobody left. It is ASLEEP while no task runs for it: when it is new, and once it
hibernates (its Room instance dropped, its connections kept). The next event WAKEs it:
its event loop starts, and makes an instance before handling the event. An AWAKE room
that has been idle for ``hibernate_after`` HIBERNATEs, back to ASLEEP, and one whose
connections have all closed ENDs, GONE for good: nothing wakes it again, and a new
handshake for its name makes a new room.

Shutdown is the other way out. The server asks every live room to SHUT DOWN, waking it
first: CLOSING refuses the handshakes still waiting for ``on_connect`` (503) and lets
the events queued before it run. Its DRAIN event queues every connection's close behind
their replies: DRAINING, a room no longer handles the messages it reads (their writes
could never be acknowledged). Neither hibernates; each ENDs once its connections are
gone.

A room CANCELled (its nursery's scope, or the server's at the end of a shutdown) is
GONE from any state: its tasks are cancelled and its connections dropped::

    ASLEEP --WAKE--> AWAKE --END--> GONE
       ^               |  \\
       +--HIBERNATE----+   SHUTDOWN--> CLOSING --DRAIN--> DRAINING
                                          \\--END--> GONE     \\--END--> GONE
    ASLEEP, AWAKE, CLOSING, DRAINING --CANCEL--> GONE
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

__all__ = ["TRANSITIONS", "Change", "LifecycleError", "RoomState", "advance"]


class RoomState(enum.Enum):
    """Where a live room is in its life."""

    ASLEEP = "asleep"  # no task runs for it: new, or hibernated
    AWAKE = "awake"  # its event loop runs, with a Room instance
    CLOSING = "closing"  # shutting down: handshakes refused, queued events still run
    DRAINING = "draining"  # its closes are queued: what it reads goes unhandled
    GONE = "gone"  # ended: out of the server, and nothing wakes it


class Change(enum.Enum):
    """What moves a room from one state to the next."""

    WAKE = "wake"
    HIBERNATE = "hibernate"
    SHUTDOWN = "shut down"
    DRAIN = "drain"
    END = "end"
    CANCEL = "be cancelled"


#: Every transition a room may make: state, then change, then the state it leads to.
TRANSITIONS: Final[Mapping[RoomState, Mapping[Change, RoomState]]] = {
    RoomState.ASLEEP: {Change.WAKE: RoomState.AWAKE, Change.CANCEL: RoomState.GONE},
    RoomState.AWAKE: {
        Change.HIBERNATE: RoomState.ASLEEP,
        Change.SHUTDOWN: RoomState.CLOSING,
        Change.END: RoomState.GONE,
        Change.CANCEL: RoomState.GONE,
    },
    RoomState.CLOSING: {
        Change.DRAIN: RoomState.DRAINING,
        Change.END: RoomState.GONE,
        Change.CANCEL: RoomState.GONE,
    },
    RoomState.DRAINING: {Change.END: RoomState.GONE, Change.CANCEL: RoomState.GONE},
    RoomState.GONE: {},
}


class LifecycleError(Exception):
    """Raised when a room is asked for a change its state does not allow: a bug of
    roomkit's own, never something a room or a peer did."""


def advance(state: RoomState, change: Change) -> RoomState:
    """The state that ``change`` leads to from ``state``.

    Raises:
      LifecycleError: if ``TRANSITIONS`` has no such change from ``state``.
    """
    try:
        return TRANSITIONS[state][change]
    except KeyError:
        raise LifecycleError(f"a room {state.value} cannot {change.value}") from None
