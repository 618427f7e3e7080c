"""The test client: a WebSocket client (wsproto) over any stream, made for assertions.

One reader task per client, started in the test server's nursery, feeds what arrives
to wsproto: messages go to an inbox the test reads at its own pace, pings are answered
at once (so a client idle in a long test is never dropped for a missing pong), and the
room's close frame is answered and recorded. Nothing here sleeps or times out: under
``autojump_clock`` a wait is as long as the room makes it, and the test bounds it with
``trio.fail_after`` if it wants to.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import attrs
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from .._closecodes import CloseCode
from .._errors import ClientClosed
from .._protocol import Protocol

__all__ = ["TestClient", "opened"]

#: Bytes asked of the stream per read.
RECEIVE_BYTES: Final = 64 * 1024
#: Seconds of Trio's clock a receive waits by default: longer than the timers rooms
#: usually test (idle sweeps, alarms), and under ``autojump_clock`` a missing message
#: fails the test at once instead of hanging it.
RECEIVE_TIMEOUT: Final = 300.0
#: Seconds a client leaving its ``async with`` block waits for the room to answer its
#: close; the room answers at once, so only a stuck room makes this matter.
CLOSE_WAIT: Final = 5.0


class TestClient:
    """A WebSocket connection to a room of a test server; made by ``TestServer.connect``.

    Attributes:
      close_code, close_reason: how the connection ended (1006 and ``""`` when the
        stream ended without a close frame); None while it is open.
      subprotocol: the subprotocol the server selected (``"roomkit.v1"``), or None.
      receive_timeout: the seconds of Trio's clock a receive waits before it fails the
        test (``open_test_server``'s); set it to change it for this client.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: Protocol | None,
        receive_timeout: float | None,
        errors: RoomErrors,
    ) -> None:
        self._errors = errors
        #: Seconds of Trio's clock a receive waits (``open_test_server``'s); None: no bound.
        self.receive_timeout = receive_timeout
        self._stream = stream
        self._protocol = protocol
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._send_lock = trio.Lock()  # the test's sends and the reader's pongs
        self._inbox: deque[str | bytes] = deque()
        self._parts: list[Any] = []  # the fragments of the message arriving
        self._arrived = trio.Event()  # set, and replaced, when anything arrives
        self._accepted = False
        self._ended = False  # the stream has ended: nothing more will arrive
        self._reader = trio.CancelScope()
        self._rejection: _Rejection | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.subprotocol: str | None = None

    async def send(self, message: Any) -> None:
        """Send ``message`` to the room.

        Args:
          message: a ``dict`` or ``list`` (sent as JSON text), a ``str`` (text), ``bytes``
            (binary), or a message of the room's protocol (``protocol.client``).

        Raises:
          ClientClosed: if the connection is closing or closed.
          TypeError: if ``message`` is none of those.
        """
        if isinstance(message, dict | list):
            message = json.dumps(message)
        elif isinstance(message, bytearray):
            message = bytes(message)
        elif not isinstance(message, str | bytes):
            if self._protocol is None or not attrs.has(type(message)):
                raise TypeError(
                    f"a test client sends a dict, list, str, bytes or a message of the "
                    f"room's protocol, not {type(message).__name__}"
                )
            message = self._protocol.client.encode(message)
        if self._ws.state is not WSState.OPEN:
            raise self._closed_error()
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        if not await self._write(event):
            raise ClientClosed(
                "the connection is closed: the stream ended",
                code=CloseCode.ABNORMAL_CLOSURE,
                reason="",
            )

    async def receive(self) -> Any:
        """The next message: a text message's JSON value (a ``dict`` for a typed room's
        messages), or its text when it is not JSON; a binary message's ``bytes``.

        Waits at most ``receive_timeout`` seconds of Trio's clock (under
        ``autojump_clock``, no real time at all).

        Raises:
          AssertionError: if nothing arrives within ``receive_timeout``.
          ClientClosed: if the connection closed and every message was received.
        """
        message = await self._next()
        if isinstance(message, bytes):
            return message
        try:
            return json.loads(message)
        except ValueError:
            return message

    async def receive_text(self) -> str:
        """The next message, which must be a text message, as it was sent.

        Raises:
          AssertionError: if it is a binary message (which is consumed), or if nothing
            arrives within ``receive_timeout``.
          ClientClosed: if the connection closed and every message was received.
        """
        message = await self._next()
        if not isinstance(message, str):
            raise AssertionError(f"expected a text message, received binary {message!r}")
        return message

    async def receive_json(self) -> Any:
        """The next message, which must be a text message holding JSON, parsed: unlike
        ``receive``, text that is not JSON is an error, not a ``str``.

        Raises:
          AssertionError: if it is binary or not JSON (it is consumed), or if nothing
            arrives within ``receive_timeout``.
          ClientClosed: if the connection closed and every message was received.
        """
        message = await self.receive_text()
        try:
            return json.loads(message)
        except ValueError:
            raise AssertionError(f"expected JSON, received text {message!r}") from None

    async def receive_bytes(self) -> bytes:
        """The next message, which must be a binary message.

        Raises:
          AssertionError: if it is a text message (which is consumed), or if nothing
            arrives within ``receive_timeout``.
          ClientClosed: if the connection closed and every message was received.
        """
        message = await self._next()
        if not isinstance(message, bytes):
            raise AssertionError(f"expected a binary message, received text {message!r}")
        return message

    async def receive_nothing(self) -> None:
        """Assert that the room has sent nothing more, and has not closed the connection.

        It does not sleep: it waits until every task is blocked
        (``trio.testing.wait_all_tasks_blocked``), so that whatever the room had to send
        has arrived, then looks. Over the in-memory transport that is exact.

        Raises:
          AssertionError: naming the first message that arrived (it stays queued), or
            the close.
        """
        await trio.testing.wait_all_tasks_blocked()
        self._errors.raise_first()
        if self._inbox:
            more = f" (and {len(self._inbox) - 1} more)" if len(self._inbox) > 1 else ""
            raise AssertionError(f"expected nothing, received {self._inbox[0]!r}{more}")
        if self._ended or self.close_code is not None:
            raise AssertionError(f"expected nothing, but {self._closed_error()}")

    async def receive_close(self) -> tuple[int, str]:
        """Wait until the room closes the connection; return its close code and reason.

        Raises:
          AssertionError: if a message arrives first (it stays queued), or if the
            connection is still open after ``receive_timeout``.
        """
        await trio.lowlevel.checkpoint()
        self._errors.raise_first()
        with _within(self.receive_timeout, "the close"):
            while not (self._inbox or self._ended):
                await self._wait_arrival()
                self._errors.raise_first()
        if self._inbox:
            raise AssertionError(f"expected the close, received {self._inbox[0]!r}")
        assert self.close_code is not None and self.close_reason is not None
        return self.close_code, self.close_reason

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason`` (any code: a test may send
        one the room must refuse); return once the room has answered and dropped the
        stream. If the connection is closing already, only wait for that."""
        if self._ws.state is WSState.OPEN:
            await self._write(CloseConnection(code, reason))
        while not self._ended:
            await self._wait_arrival()

    async def abort(self) -> None:
        """Drop the connection without a close frame, as a client whose TCP connection
        broke does: the room sees 1006."""
        self.freeze()
        self._ended = True
        await trio.aclose_forcefully(self._stream)

    def freeze(self) -> None:
        """Stop reading, and so answering pings, with the connection left open: a client
        whose network vanished without a trace (the room finds out by its ping timeout)."""
        self._reader.cancel()

    # The test server's side.

    async def _open(
        self, host: str, target: str, headers: list[tuple[str, str]], subprotocols: list[str]
    ) -> None:
        """Send the handshake; raise ClientClosed with its status if the room refuses it."""
        extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        await self._write(
            Request(host=host, target=target, extra_headers=extra, subprotocols=subprotocols)
        )
        while not (self._accepted or self._ended):
            await self._wait_arrival()
        if self._accepted:
            return
        rejection = self._rejection
        if rejection is None:
            raise ClientClosed("the server dropped the connection during the handshake")
        body = bytes(rejection.body).decode("utf-8", "replace")
        raise ClientClosed(
            f"handshake refused: {rejection.status} {body}", status=rejection.status, reason=body
        )

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader: until the stream ends, or ``_stop``."""
        with self._reader:
            task_status.started()
            try:
                while not self._ended:
                    try:
                        data = await self._stream.receive_some(RECEIVE_BYTES)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = b""
                    self._ended = not data
                    if self._ws.state is WSState.CLOSED:
                        continue  # what follows the closing handshake is not read
                    self._ws.receive_data(bytes(data) or None)
                    for event in self._ws.events():
                        await self._on_event(event)
            finally:
                self._end()

    async def _stop(self) -> None:
        """Leave: close politely if still open (bounded), then drop the stream."""
        with trio.move_on_after(CLOSE_WAIT, shield=True):
            if self._accepted and not self._ended:
                await self.close()
        self._reader.cancel()
        await trio.aclose_forcefully(self._stream)

    async def _on_event(self, event: object) -> None:
        if isinstance(event, TextMessage | BytesMessage):
            self._parts.append(event.data)
            if event.message_finished:
                parts, self._parts = self._parts, []
                message = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                self._inbox.append(message)
                self._signal()
        elif isinstance(event, Ping):
            if self._ws.state is WSState.OPEN:
                await self._write(event.response())
        elif isinstance(event, CloseConnection):
            if self.close_code is None:  # not the 1006 wsproto adds when the stream ends
                self.close_code, self.close_reason = int(event.code), event.reason or ""
            if self._ws.state is WSState.REMOTE_CLOSING:
                await self._write(event.response())
        elif isinstance(event, AcceptConnection):
            self.subprotocol = event.subprotocol
            self._accepted = True
            self._signal()
        elif isinstance(event, RejectConnection):
            self._rejection = _Rejection(event.status_code)
            self._ended = not event.has_body
        elif isinstance(event, RejectData):
            assert self._rejection is not None
            self._rejection.body += event.data
            self._ended = event.body_finished

    async def _write(self, event: Any) -> bool:
        """Send ``event``; False if the stream is gone (the reader finds out too)."""
        async with self._send_lock:
            try:
                await self._stream.send_all(self._ws.send(event))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True

    def _end(self) -> None:
        self._ended = True
        self._signal()

    def _signal(self) -> None:
        """Wake whoever waits for something to arrive."""
        self._arrived.set()
        self._arrived = trio.Event()

    async def _next(self) -> str | bytes:
        await trio.lowlevel.checkpoint()
        self._errors.raise_first()
        with _within(self.receive_timeout, "a message"):
            while not self._inbox:
                self._errors.raise_first()
                if self._ended:
                    raise self._closed_error()
                await self._wait_arrival()
        return self._inbox.popleft()

    async def _wait_arrival(self) -> None:
        await self._arrived.wait()

    def _closed_error(self) -> ClientClosed:
        code, reason = self.close_code, self.close_reason
        if code is None:
            return ClientClosed("the connection is closing")
        return ClientClosed(
            f"the connection is closed: {code} {reason!r}", code=code, reason=reason
        )


@attrs.define
class _Rejection:
    status: int
    body: bytearray = attrs.Factory(bytearray)


class RoomErrors:
    """Errors of the rooms' hooks that reached ``Room.on_error``'s default, waiting to
    be raised in the test (``open_test_server(raise_room_errors=True)``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._pending: list[Exception] = []

    def add(self, error: Exception) -> None:
        if self.enabled:
            self._pending.append(error)

    def raise_first(self) -> None:
        """Raise the oldest error not raised yet, if there is one."""
        if self._pending:
            raise self._pending.pop(0)


@contextlib.contextmanager
def _within(timeout: float | None, what: str) -> Iterator[None]:
    """Bound a wait by ``timeout`` seconds of Trio's clock; AssertionError past it."""
    with trio.move_on_after(math.inf if timeout is None else timeout) as waited:
        yield
    if waited.cancelled_caught:
        raise AssertionError(f"expected {what} within {timeout} s (of Trio's clock)")


@contextlib.asynccontextmanager
async def opened(
    client: TestClient,
    nursery: trio.Nursery,
    host: str,
    target: str,
    headers: list[tuple[str, str]],
    subprotocols: list[str],
) -> AsyncIterator[TestClient]:
    """``client``, its reader started in ``nursery`` and its handshake for ``target``
    answered; it leaves (politely, within bounds) when the block ends.

    Raises:
      ClientClosed: if the room refuses the handshake.
    """
    try:
        await nursery.start(client._run)
        await client._open(host, target, headers, subprotocols)
        yield client
    finally:
        await client._stop()
