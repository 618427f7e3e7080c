"""``statistics()``: what a running server, or a proxy, holds right now."""

from __future__ import annotations

import attrs

__all__ = ["ProxyStatistics", "ServerStatistics"]


@attrs.frozen
class ServerStatistics:
    """A snapshot of what a server holds, as :meth:`Server.statistics` returns it.

    Every buffer roomkit keeps for a peer has a bound (docs/security.md lists them);
    these are the totals, for checking those bounds from outside and for dashboards.
    Counting walks every connection: call it from a monitor, not per message.

    Attributes:
      rooms: rooms live in the server, awake or hibernating.
      connections: WebSocket connections open or being opened.
      send_queue_bytes: bytes owed to peers, over all connections: frames queued, being
        written, and held at rooms' output gates. Each connection's share stays within
        its room's ``max_send_queue`` (control frames included).
      receive_buffer_bytes: bytes of messages received in part (fragments waiting for
        the rest), over all connections; each within ``max_message_size``.
      timers: entries in the server's timer heap (alarms, idle sweeps, pings, rooms'
        hibernation), live or not yet discarded: never more than twice the live timers,
        however often they are re-armed or cancelled.
    """

    rooms: int
    connections: int
    send_queue_bytes: int
    receive_buffer_bytes: int
    timers: int


@attrs.frozen
class ProxyStatistics:
    """A snapshot of what a proxy holds, as :meth:`ProxyServer.statistics` returns it.

    What it holds for each client is bounded (docs/proxy.md); these are the totals.
    Counting walks every client: call it from a monitor, not per message.

    Attributes:
      connections: client TCP connections being served, from their accept to their end
        (reading a request head, being refused, or forwarded).
      forwarded: of those, WebSockets being forwarded to the backend: what
        ``max_connections`` bounds.
      send_queue_bytes: bytes being written, over all clients: a message on its way to
        the backend, a frame on its way to the client (a pong or an error reply may
        wait behind it).
      receive_buffer_bytes: bytes of client messages received in part (fragments
        waiting for the rest); each client's within ``max_message_size``.

    Not counted: what trio-websocket holds of the backend's side, at most one message
    read and one being read per client, each within ``max_message_size``.
    """

    connections: int
    forwarded: int
    send_queue_bytes: int
    receive_buffer_bytes: int
