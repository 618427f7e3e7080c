"""The handshake request a connection was opened with."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["Request"]


@attrs.frozen
class Request:
    """What the client asked for when it opened its WebSocket.

    Attributes:
      path: the request path as sent, without the query (``"/chat/general"``).
      room: the room's name: the percent-decoded last path segment, in Unicode NFC.
      query: the query parameters; a repeated name keeps its last value.
      headers: the request headers, names in lower case; repeated headers are joined
        with ``", "`` (``"; "`` for ``cookie``).
      remote: the peer's ``(host, port)``, or None when the transport has no address.
    """

    path: str
    room: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    remote: tuple[str, int] | None = None
