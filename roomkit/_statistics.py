"""``Server.statistics()``: what a running server (or proxy) holds right now."""

from __future__ import annotations

import attrs

__all__ = ["ServerStatistics"]


@attrs.frozen
class ServerStatistics:
    """A snapshot of what a server holds, as :meth:`Server.statistics` returns it.

    Every buffer roomkit keeps for a peer has a bound (docs/security.md lists them);
    these are the totals, for checking those bounds from outside and for dashboards.
    Counting walks every connection: call it from a monitor, not per message.

    Attributes:
      rooms: rooms live in the server, awake or hibernating (0 for a proxy).
      connections: WebSocket connections open or being opened (for a proxy, the
        client connections it is serving).
      send_queue_bytes: bytes owed to peers, over all connections: frames queued, being
        written, and held at rooms' output gates. Each connection's share stays within
        its room's ``max_send_queue`` (control frames included).
      receive_buffer_bytes: bytes of messages received in part (fragments waiting for
        the rest), over all connections; each within ``max_message_size``.
      timers: entries in the server's timer heap (alarms, idle sweeps, pings), live or
        not yet discarded: never more than twice the live timers, however often they
        are re-armed or cancelled (0 for a proxy).
    """

    rooms: int
    connections: int
    send_queue_bytes: int
    receive_buffer_bytes: int
    timers: int
