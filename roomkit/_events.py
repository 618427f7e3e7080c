"""The events on a room's channel, which its actor handles one at a time, in order.

Connection tasks and the server put them there; only the actor acts on them.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import trio
from wsproto.events import CloseConnection

from ._core.calls import MethodCodec
from ._core.frontdoor import Response
from ._request import Request
from ._transport import Transport

__all__ = [
    "Alarm",
    "Call",
    "Check",
    "Closed",
    "Connect",
    "Cut",
    "Drain",
    "Event",
    "Expire",
    "HttpRequest",
    "Message",
]


@attrs.define(eq=False)
class Connect:
    """A handshake waiting for ``on_connect``: ``decided`` is set once it is accepted
    (``rejection`` None) or refused (the status and reason to answer with)."""

    conn: Transport
    decided: trio.Event = attrs.Factory(trio.Event)
    rejection: tuple[int, str] | None = None


@attrs.frozen(eq=False)
class Message:
    """A message read from ``conn``, for ``on_message``."""

    conn: Transport
    message: Any


@attrs.frozen(eq=False)
class Closed:
    """``conn`` has closed, for ``on_close``."""

    conn: Transport


@attrs.frozen(eq=False)
class Alarm:
    """The room's alarm is due; ``retry`` is how many runs of it failed before.

    ``done``, if any, is set once the alarm has run and what it sent is out (or once
    it is clear that it never will run): for ``roomkit.testing``'s ``fire_alarm``.
    """

    retry: int
    done: trio.Event | None = None


@attrs.frozen(eq=False)
class Cut:
    """roomkit closes ``conn`` with ``frame``, behind the messages it read before."""

    conn: Transport
    frame: CloseConnection


@attrs.frozen(eq=False)
class Drain:
    """The server shuts down: close every connection with ``frame``, behind what the
    room has already been given to handle; the messages read after are not handled."""

    frame: CloseConnection


@attrs.frozen(eq=False)
class Expire:
    """The grace of ``conn``'s parked session is over, for ``on_close``; or, with
    ``refused`` (the reason ``on_close`` is told, with 1011), its resume was refused
    when its commit failed."""

    conn: Transport
    refused: str | None = None


@attrs.define(eq=False)
class HttpRequest:
    """A plain HTTP request for ``on_request``: ``answered`` is set once ``response`` may
    go out (the turn's writes are durable), or is the refusal the request gets."""

    request: Request
    answered: trio.Event = attrs.Factory(trio.Event)
    response: Response | None = None

    def answer(self, response: Response) -> None:
        """Give the request its ``response``, unless it has one already."""
        if self.response is None:
            self.response = response
            self.answered.set()


@attrs.define(eq=False)
class Call:
    """A call of an ``@rpc`` method, for one turn of the room: ``body`` its encoded
    arguments (``_core/calls.py``: the turns waiting on it among them), ``deadline``
    when its caller stops waiting (Trio's clock; infinite for none).

    ``answer`` is the answer body, set once the turn's writes are durable (or the call
    failed or was refused), and then ``answered`` is set. ``started`` says the turn
    has begun: a timeout then cannot drop it. ``abandoned``: the caller stopped waiting
    before it began, and the room drops it unrun.
    """

    codec: MethodCodec
    body: bytes
    deadline: float
    answered: trio.Event = attrs.Factory(trio.Event)
    answer: bytes | None = None
    started: bool = False
    abandoned: bool = False

    def answer_with(self, body: bytes) -> None:
        """Answer the call with ``body``, unless it is answered already."""
        if self.answer is None:
            self.answer = body
            self.answered.set()


class Check:
    """No event: makes the loop look again whether the room is left empty."""


class Rest:
    """No event: the room's loop has waited its patience (``hibernate_after``) for one,
    and rests, unless it has taken an event since this was sent (``turns`` counts them)."""

    __slots__ = ("turns",)

    def __init__(self, turns: int) -> None:
        self.turns: Final = turns


Event = (
    Connect | Message | Closed | Alarm | Cut | Drain | HttpRequest | Check | Rest | Call | Expire
)
