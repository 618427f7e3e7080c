"""An in-memory listener: connections made in the same process, with no socket.

The server serves it exactly as it serves a TCP listener (same accept loop, same front
door); each :meth:`MemoryListener.connect` makes a pair of Trio's in-memory streams and
hands one end to the server. Their buffers are unbounded and move bytes without any
clock or kernel involved, so what a test sees depends on nothing but its own steps.
"""

from __future__ import annotations

import trio
import trio.testing

__all__ = ["MemoryListener"]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts the streams that :meth:`connect` opens, one at a time."""

    def __init__(self) -> None:
        # Unbuffered: connect() returns once the server has taken the other end.
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)

    async def accept(self) -> trio.abc.Stream:
        """The server's end of the next connection.

        Raises:
          trio.ClosedResourceError: once the listener is closed.
        """
        return await self._receive.receive()

    async def connect(self) -> trio.abc.Stream:
        """A new connection to the server: its client end.

        Raises:
          trio.ClosedResourceError: if the server no longer listens.
        """
        client, server = trio.testing.memory_stream_pair()
        try:
            await self._send.send(server)
        except trio.BrokenResourceError:
            raise trio.ClosedResourceError("the test server is not listening") from None
        return client

    async def aclose(self) -> None:
        self._receive.close()
        await trio.lowlevel.checkpoint()
