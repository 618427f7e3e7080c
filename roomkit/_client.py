"""``roomkit.connect``: a Python client that comes back by itself when its room drops.

It runs under asyncio and Trio alike (through anyio), on its own WebSocket layer
(``_wsclient``: wsproto over anyio's streams). It keeps one WebSocket open to a room and
opens a new one whenever it drops, after a backoff with full jitter whose schedule
``_reconnect`` decides: a random wait up to ``min(initial_delay * growth ** n,
max_delay)``, and no more than ``early_max_delay`` in the first ``early_period``
seconds of an outage, so that a server back within a minute has its clients back within
about two seconds. After a 1012 "Service restart" close the server's successor is
expected any moment: the first try is made at once. What you send while it is
disconnected waits in a bounded queue and goes out, in order, once it is back. A close
with a code that means "don't come back" (1008, or 4000-4999 chosen by the room; but
not 1008 "slow consumer"), or a handshake refused with a 4xx status, stops it for good.

It offers the roomkit.v1 envelope (``_clientsession``): with a server that selects it,
a connection counts as open once its welcome has come, the client comes back to the
same session and its room's log position, and the application still sees only the
payloads, each once. A server that does not select it is spoken to as a plain client.

It never imports the server's modules: only the message codec, the errors, and (in its
WebSocket) the sans-IO centre's MessageAssembler, so that a message's size is counted
as the server counts it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import anyio
import attrs

from ._clientevents import CloseEvent, OpenEvent, PresenceEvent, ReconnectEvent
from ._clientheaders import checked_headers
from ._clientpresence import ClientPresence
from ._clientsession import ENVELOPE, EnvelopeError, Position, Session, frame_limits
from ._closecodes import CloseCode
from ._core.limits import MAX_MESSAGE_SIZE, byte_length
from ._errors import ClientClosed, DecodeError
from ._protocol import Protocol
from ._reconnect import Backoff, GiveUp, Reconnection
from ._wsclient import (
    ConnectionClosed,
    HandshakeFailed,
    HandshakeRefused,
    MessageRefused,
    WebSocket,
    open_websocket,
)
from ._wsurl import WebSocketURL

__all__ = ["Client", "ErrorMessage", "connect", "is_final_close"]

logger = logging.getLogger("roomkit.client")

#: Seconds the closing handshake may take once the application leaves the block.
CLOSE_WAIT: Final = 5.0
#: HTTP statuses of a refused handshake that are worth trying again.
_RETRY_STATUSES: Final = frozenset({408, 429})

_Event = TypeVar("_Event", OpenEvent, CloseEvent, ReconnectEvent, PresenceEvent)


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
    headers: Mapping[str, str]
    backoff: Backoff
    max_retries: int | None
    connect_timeout: float
    ping_interval: float | None
    ping_timeout: float
    max_message_size: int
    ssl_context: ssl.SSLContext | None
    on_open: Callable[[OpenEvent], object] | None
    on_close: Callable[[CloseEvent], object] | None
    on_reconnect: Callable[[ReconnectEvent], object] | None
    on_presence: Callable[[PresenceEvent], object] | None

    def __attrs_post_init__(self) -> None:
        positive = {"connect_timeout": self.connect_timeout, "ping_timeout": self.ping_timeout}
        if self.ping_interval is not None:
            positive["ping_interval"] = self.ping_interval
        for name, value in positive.items():
            if not value > 0:  # NaN too
                raise ValueError(f"{name} must be more than 0 seconds, not {value!r}")
        if self.max_retries is not None and not _is_count(self.max_retries, 0):
            raise ValueError(
                f"max_retries must be None or an int, 0 or more, not {self.max_retries!r}"
            )
        if not _is_count(self.max_message_size, 1):
            raise ValueError(
                f"max_message_size must be an int, 1 or more, not {self.max_message_size!r}"
            )


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


class Client:
    """A connection to a room that reconnects; made by :func:`connect`.

    Attributes:
      connected: whether a WebSocket is open right now.
      close_code, close_reason: how the last WebSocket ended (None before any did).
      connections: how many WebSockets it has opened so far.
      session: the last welcome of a room that speaks the roomkit.v1 envelope, or None
        (before the first, and while connected to a server that does not speak it).
      presence: who is in the room (docs/presence.md), as its frames said since the
        last welcome: each key and its metas in the room's order (a copy; empty on a plain
        connection).
    """

    def __init__(self, url: str, options: _Options, max_queue: int) -> None:
        if not _is_count(max_queue, 0):
            raise ValueError(f"max_queue must be an int, 0 or more, not {max_queue!r}")
        self._url = WebSocketURL.parse(url)
        if options.ssl_context is not None and not self._url.secure:
            raise ValueError(f"an ssl_context is for wss:// URLs, not {url!r}")
        self._options = options
        self._outbox_send, self._outbox = anyio.create_memory_object_stream[str | bytes](max_queue)
        self._inbox_send, self._inbox = anyio.create_memory_object_stream[Any](max_queue)
        self._queues = contextlib.ExitStack()  # closes all four ends, once the client is done
        for end in (self._outbox_send, self._outbox, self._inbox_send, self._inbox):
            self._queues.callback(end.close)
        self._unsent: str | bytes | None = None  # taken from the queue, not yet sent
        self._up = anyio.Event()
        self._ws: WebSocket | None = None
        self._ended = anyio.Event()  # set once the open WebSocket's end is handled
        self._delivery: anyio.CancelScope | None = None  # a message being put in the inbox
        self._stopped: ClientClosed | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connections = 0
        self.session: Session | None = None
        self._position = Position()  # kept across connections: where to come back to
        self._presence = ClientPresence()  # the room's, since the last welcome

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def presence(self) -> dict[str, list[dict[str, Any]]]:
        return copy.deepcopy(self._presence.state)

    async def wait_connected(self) -> None:
        """Wait until a WebSocket is open (at once if one is).

        Raises:
          ClientClosed: if the client has stopped for good, or stops while waiting.
        """
        self._check_running()
        await self._up.wait()
        self._check_running()

    async def send(self, message: Any) -> None:
        """Send ``message``: ``str``, ``bytes``, or a ``protocol.client`` message.

        While disconnected it waits in the queue and goes out once reconnected, in
        order. When the queue is full, this waits for room.

        Raises:
          ClientClosed: if the client has stopped for good.
          TypeError: if ``message`` is not something the protocol sends.
        """
        self._check_running()
        await self._outbox_send.send(self._encode(message))

    def send_nowait(self, message: Any) -> None:
        """:meth:`send`, but never waits: for callbacks, and code that must not block.

        Raises:
          anyio.WouldBlock: if the queue is full (``max_queue`` messages wait).
          ClientClosed, TypeError: as :meth:`send`.
        """
        self._check_running()
        self._outbox_send.send_nowait(self._encode(message))

    async def receive(self) -> Any:
        """The next message from the room, decoded when the client has a protocol.

        Raises:
          ClientClosed: once the client has stopped for good and every message that
            arrived before has been received.
          DecodeError: for a message the protocol does not know (the next call goes on).
        """
        try:
            item = await self._inbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
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

    def _encode(self, message: Any) -> str | bytes:
        if isinstance(message, str | bytes):
            return message
        protocol = self._options.protocol
        if protocol is None:
            raise TypeError("a client without a protocol sends str or bytes")
        return protocol.client.encode(message)

    # The connection loop.

    async def _run(self) -> None:
        o = self._options
        reconnection = Reconnection(o.backoff, o.max_retries, outage_began=anyio.current_time())
        async with self._inbox_send:
            while True:
                opened = await self._session()
                if self._stopped is not None:
                    return
                now = anyio.current_time()
                step = reconnection.after(opened=opened, close_code=self.close_code, now=now)
                if isinstance(step, GiveUp):
                    self._stop(f"gave up after {step.failures} failed tries")
                    return
                delay = random.uniform(0, step.ceiling)
                self._emit(o.on_reconnect, ReconnectEvent(step.attempt, delay))
                await anyio.sleep(delay)

    async def _session(self) -> bool:
        """One WebSocket, from connecting to its end; whether it opened at all (its
        handshake was accepted)."""
        o = self._options
        url = attrs.evolve(self._url, query=self._position.query(self._url.query))
        try:
            ws = await open_websocket(
                url,
                headers=o.headers,
                ssl_context=o.ssl_context,
                max_message_size=o.max_message_size,
                connect_timeout=o.connect_timeout,
                subprotocols=[ENVELOPE],
            )
        except HandshakeRefused as refusal:
            status = refusal.status
            logger.info("%s refused the handshake with %d", self._url.host_header, status)
            if 400 <= status < 500 and status not in _RETRY_STATUSES:
                body = refusal.body.decode("utf-8", "replace")
                self._stop(f"handshake refused with {status}", status=status, reason=body)
            return False
        except HandshakeFailed as exc:
            logger.info("%s", exc)
            return False
        async with ws:
            self.session = None
            if ws.subprotocol == ENVELOPE:
                ws.limit(*frame_limits(o.max_message_size))  # text's payload checked unwrapped
                try:
                    with anyio.fail_after(o.connect_timeout):
                        self.session = self._position.welcome(await ws.receive())
                except ConnectionClosed as closed:
                    # Closed before its welcome: no open event nor close event, but its
                    # code counts as any close's (1012: back at once; 4001: stop).
                    self._closed(closed)
                    return True
                except (TimeoutError, EnvelopeError) as exc:
                    logger.info("no welcome from %s: %r", self._url.host_header, exc)
                    return False
            if self._presence.clear():  # a new welcome, or a plain server: known no more
                self._emit(self._options.on_presence, PresenceEvent({}, {}, {}))
            await self._serve(ws)
        return True

    async def _serve(self, ws: WebSocket) -> None:
        """Run one open WebSocket until it ends."""
        self._ws, self._ended = ws, anyio.Event()
        self.connections += 1
        self._up.set()
        welcome = self.session
        if welcome is None:  # plain: after a session, what was missed is lost
            opened = OpenEvent(self.connections, recovered=False if self._position.token else None)
        else:
            opened = OpenEvent(self.connections, welcome.resumed, welcome.recovered)
        self._emit(self._options.on_open, opened)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._write, ws)
                if self._options.ping_interval is not None:
                    tasks.start_soon(self._heartbeat, ws, tasks.cancel_scope)
                await self._read(ws)
                tasks.cancel_scope.cancel()
        finally:
            self._ws, self._up = None, anyio.Event()
            self._ended.set()
        assert self.close_code is not None and self.close_reason is not None
        will_reconnect = self._stopped is None
        self._emit(
            self._options.on_close, CloseEvent(self.close_code, self.close_reason, will_reconnect)
        )

    async def _read(self, ws: WebSocket) -> None:
        try:
            while True:
                message = await self._unwrap(ws, await ws.receive())
                if message is not None and self._stopped is None:  # else: dropped
                    with anyio.CancelScope() as self._delivery:
                        await self._inbox_send.send(self._decode(message))
                    self._delivery = None
        except ConnectionClosed as closed:
            if isinstance(closed, MessageRefused) and self.session is not None:
                self._position.skip(closed.head, binary=closed.binary)  # see _unwrap
            self._closed(closed)

    def _closed(self, closed: ConnectionClosed) -> None:
        """Record how a WebSocket ended; stop, if that means "don't come back"."""
        self.close_code, self.close_reason = closed.code, closed.reason
        if is_final_close(closed.code, closed.reason):
            self._stop(f"the room closed with {closed.code} {closed.reason}")

    async def _unwrap(self, ws: WebSocket, message: str | bytes) -> str | bytes | None:
        """The payload of a frame (the frame itself on a plain connection), or None for
        one to drop: seen already, of a kind the client does not know, or broken. A
        payload over ``max_message_size`` closes the connection with 1009, as a plain
        message over it does (and, its number seen, it is not replayed: it would only
        close the next connection too)."""
        if self.session is None:
            return message
        try:
            payload = self._position.unwrap(message)
        except EnvelopeError as exc:
            logger.warning("dropped a frame from %s: %s", self._url.host_header, exc)
            return None
        if payload is None and isinstance(message, str):  # not a message: presence?
            change = self._presence.feed(message)
            if change is not None:
                event = PresenceEvent(self.presence, *change)
                self._emit(self._options.on_presence, event)
            return None
        limit = self._options.max_message_size
        if payload is not None and byte_length(payload) > limit:
            await ws.fail(CloseCode.MESSAGE_TOO_BIG, f"a message is at most {limit} bytes")
            return None
        return payload

    def _decode(self, message: str | bytes) -> Any:
        protocol = self._options.protocol
        if protocol is None:
            return message
        try:
            return protocol.server.decode(message)
        except DecodeError as exc:
            error = _error_reply(message)
            return exc if error is None else error

    async def _write(self, ws: WebSocket) -> None:
        hello = self._options.hello
        try:
            if hello is not None:
                await ws.send(hello)  # first on every connection
            while True:
                if self._unsent is None:
                    self._unsent = await self._outbox.receive()
                await ws.send(self._unsent)  # if cut off, kept and sent first next time
                self._unsent = None
        except ConnectionClosed:
            return

    async def _heartbeat(self, ws: WebSocket, session: anyio.CancelScope) -> None:
        assert self._options.ping_interval is not None
        while True:
            await anyio.sleep(self._options.ping_interval)
            try:
                with anyio.fail_after(self._options.ping_timeout):
                    await ws.ping()
            except TimeoutError:
                logger.info("no pong from %s: reconnecting", self._url.host_header)
                self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, "no pong"
                session.cancel()  # the stream is closed on the way out
                return
            except ConnectionClosed:
                return

    def _emit(self, callback: Callable[[_Event], object] | None, event: _Event) -> None:
        """Call an ``on_*`` callback; what it raises is logged, and the client goes on."""
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            logger.exception("the %s callback raised", type(event).__name__)

    def _stop(self, why: str, *, status: int | None = None, reason: str | None = None) -> None:
        self._stopped = ClientClosed(
            why,
            code=self.close_code,
            reason=self.close_reason if reason is None else reason,
            status=status,
        )
        if self._delivery is not None:
            self._delivery.cancel()
        self._up.set()  # wakes wait_connected, to raise

    async def _close(self, tasks: anyio.CancelScope, *, handshake: bool) -> None:
        """Stop, as the application leaves its block: close the open WebSocket (1000)
        and wait, up to CLOSE_WAIT, for its end, if ``handshake``; then end the
        client's tasks (which drops the TCP connection, if it is still open)."""
        if self._stopped is None:
            self._stop("closed by the application")
        ws = self._ws
        if ws is not None and handshake:
            with anyio.move_on_after(CLOSE_WAIT):
                with contextlib.suppress(ConnectionClosed):
                    await ws.close(CloseCode.NORMAL_CLOSURE)
                await self._ended.wait()
        tasks.cancel()


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
    early_max_delay: float = 2.0,
    early_period: float = 60.0,
    max_retries: int | None = None,
    connect_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    ping_timeout: float = 20.0,
    max_queue: int = 1000,
    max_message_size: int = MAX_MESSAGE_SIZE,
    ssl_context: ssl.SSLContext | None = None,
    on_open: Callable[[OpenEvent], object] | None = None,
    on_close: Callable[[CloseEvent], object] | None = None,
    on_reconnect: Callable[[ReconnectEvent], object] | None = None,
    on_presence: Callable[[PresenceEvent], object] | None = None,
) -> AsyncIterator[Client]:
    """Connect to a room and stay connected; yields a :class:`Client`.

    Runs under asyncio and Trio alike.

    Args:
      url: ``ws://host:port/room`` (or ``wss://``), query included.
      protocol: the room's Protocol: sends encode ``client`` messages, receives decode
        ``server`` ones.
      hello: a message sent first on every connection, before anything queued: a join,
        a resubscription, an auth token.
      headers: extra handshake headers (``Authorization``, ``Cookie``, ``Origin``).
      initial_delay, max_delay, growth, early_max_delay, early_period: the backoff: the
        wait before the next try is random, up to ``min(initial_delay * growth ** n,
        max_delay)`` seconds after ``n`` failed tries in a row, and up to
        ``early_max_delay`` in the first ``early_period`` seconds of an outage. After a
        1012 "Service restart" close, the first try is made at once (and does not count).
      max_retries: failed tries in a row before giving up; None never gives up.
      connect_timeout: seconds for the TCP connection and for the handshake.
      ping_interval, ping_timeout: a ping every so often; no pong in time means the
        connection is dead, and the client reconnects. None sends no pings.
      max_queue: messages that may wait to be sent (``send`` then waits), and messages
        that may wait to be received (reading then stops; a room that keeps sending
        cuts the client off as a slow consumer, and it reconnects).
      max_message_size: the longest message received, in bytes on the wire (UTF-8 for
        text), as the server counts it; a longer one closes the connection with 1009,
        and the client reconnects.
      ssl_context: for ``wss://``, the client-side context that decides which servers
        to trust (``ssl.create_default_context(cafile=...)``); None trusts the system's
        certificate authorities.
      on_open, on_close, on_reconnect: plain functions called with an
        :class:`OpenEvent` when a WebSocket opens, a :class:`CloseEvent` when an open
        one ends, a :class:`ReconnectEvent` before each wait for a new try. They run in
        the client's task and must not block; what they raise is logged and ignored.
      on_presence: the same, called with a :class:`PresenceEvent` each time the room's
        presence changes (``client.presence``; docs/presence.md).

    Raises:
      ValueError: for a URL that is not ``ws://`` or ``wss://``, an ``ssl_context``
        with a ``ws://`` URL, a negative delay, a timeout or ``ping_interval`` that is
        not more than 0, a count out of its range, or a header that cannot be sent.
      TypeError: for a header name or value that is not a ``str``.

    The client starts connecting at once; sends made before it is connected wait.
    Leaving the block closes the connection (1000) and stops the client; an exception
    raised in the block comes out of it as raised. A cancellation or a
    ``KeyboardInterrupt`` leaves at once, dropping the connection without a closing
    handshake.
    """
    if hello is not None:
        hello = _encode_hello(protocol, hello)
    options = _Options(
        protocol,
        hello,
        checked_headers(headers),
        Backoff(initial_delay, growth, max_delay, early_max_delay, early_period),
        max_retries,
        connect_timeout,
        ping_interval,
        ping_timeout,
        max_message_size,
        ssl_context,
        on_open,
        on_close,
        on_reconnect,
        on_presence,
    )
    client = Client(url, options, max_queue)
    raised: BaseException | None = None  # by the application's block
    # Left by a cancellation or a KeyboardInterrupt: no waiting for the closing
    # handshake. (asyncio delivers a cancellation once, so a wait here would not be
    # cut short: an asyncio.timeout around the block would overrun by CLOSE_WAIT.)
    hurried = False
    with client._queues:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(client._run)
            try:
                yield client
            except BaseException as exc:
                hurried = not isinstance(exc, Exception)
                # Out of the task group unwrapped, but cancellation goes through it: the
                # task group, and the scopes around it, take their own cancellation back.
                if isinstance(exc, anyio.get_cancelled_exc_class() | GeneratorExit):
                    raise
                raised = exc
            finally:
                await client._close(tasks.cancel_scope, handshake=not hurried)
    if raised is not None:
        raise raised


def _encode_hello(protocol: Protocol | None, hello: Any) -> str | bytes:
    if isinstance(hello, str | bytes):
        return hello
    if protocol is None:
        raise TypeError("a client without a protocol sends str or bytes")
    return protocol.client.encode(hello)
