"""The handshake request a connection was opened with, and what a route hook makes of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import attrs

from ._errors import Reject

__all__ = ["Request", "RouteChoice", "RouteHook"]


@attrs.frozen
class Request:
    """What the client asked for when it opened its WebSocket.

    Attributes:
      path: the request path as sent, without the query (``"/chat/general"``).
      room: the room's name: the percent-decoded last path segment, in Unicode NFC, or
        the room ``serve``'s ``route`` hook chose. A route hook itself is given the name
        the path reaches, or ``""`` when the path reaches no room.
      query: the query parameters; a repeated name keeps its last value.
      headers: the request headers, names in lower case; repeated headers are joined
        with ``", "`` (``"; "`` for ``cookie``).
      remote: the peer's ``(host, port)``, or None when the transport has no address.
      method: the HTTP method: ``"GET"`` for a WebSocket's handshake, any for a plain
        request to :meth:`Room.on_request`.
      body: a plain request's body, whole (``b""`` for a handshake, and for none).
    """

    path: str
    room: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    remote: tuple[str, int] | None = None
    method: str = "GET"
    body: bytes = b""


#: What a route hook returns: None for the room the path reaches; a room name (``""``
#: for the default room) in the route of the path; a ``(prefix, name)`` pair for a room
#: of another route; or a :class:`Reject` (which it may raise instead) to refuse.
RouteChoice = str | tuple[str, str] | Reject | None

#: ``serve``'s ``route`` option: a function of the request that chooses its room before
#: any room runs, or a coroutine function doing so.
RouteHook = Callable[[Request], RouteChoice | Awaitable[RouteChoice]]
