"""``roomkit.connect``: a Python client that comes back by itself when its room drops.

The client keeps one WebSocket open to a room (with trio-websocket) and opens a new one
whenever it drops, after a backoff with full jitter: the wait before try ``n`` is a
random time up to ``min(max_delay, initial_delay * growth ** n)`` (the PartySocket
defaults are the same order: half a second growing to ten). After a 1012 "Service
restart" close the server's successor is expected any moment: the first try is made at
once, and if it fails, the backoff goes on as after any other close. What you send
while it is disconnected waits in a bounded queue and goes out, in order, once it is
back. A close
with a code that means "don't come back" (1008, or 4000-4999 chosen by the room; but
not 1008 "slow consumer"), or a handshake refused with a 4xx status, stops it for good.

It never imports the server's modules: only the message codec and the errors.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio
import trio_websocket

from ._closecodes import CloseCode
from ._errors import ClientClosed, DecodeError, first_leaf
from ._protocol import Protocol
from ._wsurl import WebSocketURL

__all__ = ["Client", "ErrorMessage", "connect", "is_final_close"]

logger = logging.getLogger("roomkit.client")

#: Seconds the closing handshake may take once a connection is over.
CLOSE_WAIT: Final = 5.0
#: HTTP statuses of a refused handshake that are worth trying again.
_RETRY_STATUSES: Final = frozenset({408, 429})


def is_final_close(code: int, reason: str = "") -> bool:
    """Whether a close means "don't come back": 1008 or 4000-4999.

    A 1008 "slow consumer" is not: the peer was only slow to read (a tab in the
    background, a stalled network), and may well keep up next time.
    """
    if code == CloseCode.POLICY_VIOLATION:
        return reason != "slow consumer"
    return 4000 <= code <= 4999


@attrs.frozen
class ErrorMessage:
    """A room's ``{"type": "error"}`` reply (to bad input, or a rate limit), received by a
    client with a protocol."""

    message: str
    code: str | None = None


@attrs.frozen
class _Options:
    protocol: Protocol | None
    hello: str | bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    initial_delay: float
    max_delay: float
    growth: float
    max_retries: int | None
    connect_timeout: float
    ping_interval: float | None
    ping_timeout: float
    ssl_context: ssl.SSLContext | None


class Client:
    """A connection to a room that reconnects; made by :func:`connect`.

    Attributes:
      connected: whether a WebSocket is open right now.
      close_code, close_reason: how the last WebSocket ended (None before any did).
      connections: how many WebSockets it has opened so far.
    """

    def __init__(self, url: str, options: _Options, max_queue: int) -> None:
        self._url = WebSocketURL.parse(url)
        if options.ssl_context is not None and not self._url.secure:
            raise ValueError(f"an ssl_context is for wss:// URLs, not {url!r}")
        self._options = options
        self._outbox_send, self._outbox = trio.open_memory_channel[str | bytes](max_queue)
        self._inbox_send, self._inbox = trio.open_memory_channel[Any](max_queue)
        self._unsent: str | bytes | None = None  # taken from the queue, not yet sent
        self._up = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._stopped: ClientClosed | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connections = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def wait_connected(self) -> None:
        """Wait until a WebSocket is open (at once if one is)."""
        self._check_running()
        await self._up.wait()

    async def send(self, message: Any) -> None:
        """Send ``message``: ``str``, ``bytes``, or a ``protocol.client`` message.

        While disconnected it waits in the queue and goes out once reconnected, in
        order. When the queue is full, this waits for room.

        Raises:
          ClientClosed: if the client has stopped for good.
          TypeError: if ``message`` is not something the protocol sends.
        """
        self._check_running()
        if not isinstance(message, str | bytes):
            protocol = self._options.protocol
            if protocol is None:
                raise TypeError("a client without a protocol sends str or bytes")
            message = protocol.client.encode(message)
        await self._outbox_send.send(message)

    async def receive(self) -> Any:
        """The next message from the room, decoded when the client has a protocol.

        Raises:
          ClientClosed: once the client has stopped for good and every message that
            arrived before has been received.
          DecodeError: for a message the protocol does not know (the next call goes on).
        """
        try:
            item = await self._inbox.receive()
        except trio.EndOfChannel:
            assert self._stopped is not None
            raise self._stopped from None
        if isinstance(item, DecodeError):
            raise item
        return item

    def __aiter__(self) -> Client:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except ClientClosed:
            raise StopAsyncIteration from None

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise self._stopped

    # The connection loop.

    async def _run(self) -> None:
        failures = 0
        at_once = False  # the try after a 1012 close: made without waiting, and free
        async with self._inbox_send:
            while True:
                opened = await self._session()
                if opened:
                    failures = 0
                elif not at_once:
                    failures += 1
                at_once = opened and self.close_code == CloseCode.SERVICE_RESTART
                if self._stopped is not None:
                    return
                retries = self._options.max_retries
                if retries is not None and failures > retries:
                    self._stop(f"gave up after {failures} failed tries")
                    return
                if not at_once:
                    await trio.sleep(self._delay(failures))

    def _delay(self, failures: int) -> float:
        o = self._options
        return random.uniform(0, min(o.max_delay, o.initial_delay * o.growth**failures))

    async def _session(self) -> bool:
        """One WebSocket, from connecting to its end; whether it opened at all."""
        try:
            with trio.fail_after(self._options.connect_timeout):
                stream = await self._url.open_stream(self._options.ssl_context)
        except (OSError, trio.TooSlowError) as exc:
            logger.info("connecting to %s failed: %s", self._url.host_header, exc)
            return False
        try:
            async with stream, trio.open_nursery() as nursery:
                with trio.fail_after(self._options.connect_timeout):
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        self._url.host_header,
                        self._url.resource,
                        extra_headers=list(self._options.headers),
                    )
                await self._serve(ws, nursery)
                return True
        except* trio_websocket.ConnectionRejected as group:
            refusal = first_leaf(group)
            assert isinstance(refusal, trio_websocket.ConnectionRejected)
            status = refusal.status_code
            if 400 <= status < 500 and status not in _RETRY_STATUSES:
                self._stop(f"handshake refused with {status}", status=status)
        except* (
            trio_websocket.HandshakeError,
            trio.TooSlowError,
            trio.BrokenResourceError,  # TLS failed: say, a certificate not trusted
            OSError,
        ) as group:
            logger.info("handshake with %s failed: %r", self._url.host, first_leaf(group))
        return False

    async def _serve(self, ws: trio_websocket.WebSocketConnection, session: trio.Nursery) -> None:
        """Run one open WebSocket; ``session`` also holds trio-websocket's reader task."""
        self._ws = ws
        self.connections += 1
        self._up.set()
        try:
            async with trio.open_nursery() as ours:
                ours.start_soon(self._write, ws)
                if self._options.ping_interval is not None:
                    ours.start_soon(self._heartbeat, ws, session.cancel_scope)
                await self._read(ws)
                ours.cancel_scope.cancel()
        finally:
            self._ws = None
            self._up = trio.Event()
            # Let trio-websocket's reader finish the closing handshake, but not for ever.
            session.cancel_scope.deadline = trio.current_time() + CLOSE_WAIT

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        try:
            while True:
                await self._inbox_send.send(self._decode(await ws.get_message()))
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            self.close_code = reason.code if reason else CloseCode.ABNORMAL_CLOSURE
            self.close_reason = (reason.reason or "") if reason else ""
            if is_final_close(self.close_code, self.close_reason):
                self._stop(f"the room closed with {self.close_code} {self.close_reason}")

    def _decode(self, message: str | bytes) -> Any:
        protocol = self._options.protocol
        if protocol is None:
            return message
        try:
            return protocol.server.decode(message)
        except DecodeError as exc:
            error = _error_reply(message)
            return exc if error is None else error

    async def _write(self, ws: trio_websocket.WebSocketConnection) -> None:
        hello = self._options.hello
        if hello is not None:
            try:
                await ws.send_message(hello)  # first on every connection
            except trio_websocket.ConnectionClosed:
                return
        while True:
            if self._unsent is None:
                self._unsent = await self._outbox.receive()
            try:
                await ws.send_message(self._unsent)
            except trio_websocket.ConnectionClosed:
                return  # kept, and sent first on the next connection
            self._unsent = None

    async def _heartbeat(
        self, ws: trio_websocket.WebSocketConnection, session: trio.CancelScope
    ) -> None:
        assert self._options.ping_interval is not None
        while True:
            await trio.sleep(self._options.ping_interval)
            try:
                with trio.fail_after(self._options.ping_timeout):
                    await ws.ping()
            except trio.TooSlowError:
                logger.info("no pong from %s: reconnecting", self._url.host)
                self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "no pong"
                session.cancel()  # the stream is closed on the way out
                return
            except trio_websocket.ConnectionClosed:
                return

    def _stop(self, why: str, *, status: int | None = None) -> None:
        self._stopped = ClientClosed(
            why, code=self.close_code, reason=self.close_reason, status=status
        )
        self._inbox_send.close()


def _error_reply(message: str | bytes) -> ErrorMessage | None:
    """roomkit's ``{"type": "error", ...}`` reply, which no protocol lists."""
    try:
        body = json.loads(message)
    except ValueError:
        return None
    if not (isinstance(body, dict) and body.get("type") == "error"):
        return None
    text, code = body.get("message"), body.get("code")
    if not isinstance(text, str):
        return None
    return ErrorMessage(text, code if isinstance(code, str) else None)


@asynccontextmanager
async def connect(
    url: str,
    *,
    protocol: Protocol | None = None,
    hello: Any = None,
    headers: Mapping[str, str] | None = None,
    initial_delay: float = 0.5,
    max_delay: float = 10.0,
    growth: float = 2.0,
    max_retries: int | None = None,
    connect_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    max_queue: int = 1000,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """Connect to a room and stay connected; yields a :class:`Client`.

    Args:
      url: ``ws://host:port/room`` (or ``wss://``), query included.
      protocol: the room's Protocol: sends encode ``client`` messages, receives decode
        ``server`` ones.
      hello: a message sent first on every connection, before anything queued: a join,
        a resubscription, an auth token.
      headers: extra handshake headers (``Authorization``, ``Cookie``, ``Origin``).
      initial_delay, max_delay, growth: the backoff: the wait before try ``n`` is random,
        up to ``min(max_delay, initial_delay * growth ** n)`` seconds. After a 1012
        "Service restart" close, the first try is made at once (and does not count).
      max_retries: failed tries in a row before giving up; None never gives up.
      connect_timeout: seconds for the TCP connection and for the handshake.
      ping_interval, ping_timeout: a ping every so often; no pong in time means the
        connection is dead, and the client reconnects. None sends no pings.
      max_queue: messages that may wait to be sent (``send`` then waits), and messages
        that may wait to be received (reading then stops; a room that keeps sending
        cuts the client off as a slow consumer, and it reconnects).
      ssl_context: for ``wss://``, the client-side context that decides which servers
        to trust (``ssl.create_default_context(cafile=...)``); None trusts the system's
        certificate authorities.

    Raises:
      ValueError: for a URL that is not ``ws://`` or ``wss://``, or an ``ssl_context``
        with a ``ws://`` URL.

    The client starts connecting at once; sends made before it is connected wait.
    Leaving the block closes the connection (1000) and stops the client.
    """
    if hello is not None and not isinstance(hello, str | bytes):
        if protocol is None:
            raise TypeError("a client without a protocol sends str or bytes")
        hello = protocol.client.encode(hello)
    options = _Options(
        protocol,
        hello,
        tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
        initial_delay,
        max_delay,
        growth,
        max_retries,
        connect_timeout,
        ping_interval,
        ping_timeout,
        ssl_context,
    )
    client = Client(url, options, max_queue)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._run)
        try:
            yield client
        finally:
            if client._stopped is None:
                client._stop("closed by the application")
            ws = client._ws
            if ws is not None:
                with trio.move_on_after(CLOSE_WAIT):
                    await ws.aclose()
            nursery.cancel_scope.cancel()
