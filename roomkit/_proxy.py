"""``proxy``: forward WebSockets to a backend, frames and closes unchanged.

The first mode of the Durable Objects WebSocket guide: a front that accepts a client's
WebSocket, opens one to the backend with the same path, query and end-to-end headers,
and pumps frames both ways (``_proxyclient``). Each pair lives in its own nursery, so
either side ending ends both.

The client's end-to-end headers go on to the backend, but those the ``forward_headers``
and ``drop_headers`` options leave out; the hop-by-hop ones and the handshake's never
do, and the client's address is appended to ``X-Forwarded-For`` and ``Forwarded``, its
scheme to ``Forwarded`` and ``X-Forwarded-Proto`` (``_core.forwarding`` decides). With
``ssl_context``, the proxy's own listener speaks TLS (``wss://``), as a server's does:
the TLS handshake counts against ``handshake_timeout``, a failed one is counted and
logged (at DEBUG), and a plain HTTP answer ends with a close_notify.

What the client gets when things go wrong: plain HTTP → 426 (``/roomkit.js`` and
``/healthz`` are served); a request the proxy will not pass on (see ``_core.forwarding``)
→ 400; a backend that cannot be reached or answers nonsense → 502; a backend that
refuses the handshake → its status and body, passed through.

Each client gets the limits a server would give it (``_core.limits``): messages of at most
``max_message_size`` bytes (1009 beyond), the same token bucket (a dropped message is
answered with the server's ``rate_limited`` error, a flood closed with 1008), at most
``max_connections`` WebSockets at once (503 beyond), and ``handshake_timeout`` to send
its request head.

Whatever goes wrong while serving one client ends that client's connection only (502
before the 101, a close with 1011 after it), and is logged with the connection's id on
the ``roomkit.proxy`` logger and counted; it never reaches the proxy's own nursery.
"""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import Callable, Collection
from typing import Annotated, Final, TypedDict, Unpack

import attrs
import h11
import trio
import trio_websocket
import wsproto.utilities
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from ._accept import Head, accept_loop, read_request
from ._core.forwarding import (
    HeaderChoice,
    forwarded_headers,
    forwarding_error,
    header_name_error,
    subprotocols,
)
from ._core.frontdoor import RequestHead, Response, handshake_response, plain_response
from ._core.limits import (
    MAX_CONNECTIONS,
    MAX_MESSAGE_SIZE,
    RATE_LIMIT,
)
from ._core.ratelimit import RateLimit
from ._errors import first_leaf
from ._metrics import RefusalReason
from ._options import (
    HANDSHAKE,
    HOST,
    PORT,
    SSL_CONTEXT,
    Option,
    OptionSet,
    check_count,
    positive_int,
    rate_limit,
)
from ._proxyclient import GONE, RECEIVE_BYTES, ProxyClient, pump
from ._static import static_files
from ._statistics import ProxyStatistics
from ._wsurl import WebSocketURL, base_url

__all__ = ["PROXY_OPTIONS", "ProxyOptions", "ProxyServer", "proxy"]

logger = logging.getLogger("roomkit.proxy")

#: Seconds the backend has to answer the handshake before the client gets 502.
BACKEND_TIMEOUT: Final = 10.0
#: Errors of a backend that answers the handshake with something that is not HTTP or
#: not a WebSocket's answer (a bare 101, say), as trio-websocket lets them through.
_BACKEND_NONSENSE: Final = (
    trio_websocket.HandshakeError,
    h11.ProtocolError,
    wsproto.utilities.ProtocolError,
)


def _check_rate_limit(name: str, value: object) -> None:
    if value is not None and not isinstance(value, RateLimit):
        raise TypeError(f"{name} must be a RateLimit or None, not {value!r}")


def _check_header_names(name: str, value: object) -> None:
    """``value`` is a collection of header names (None too, for ``forward_headers``)."""
    to_pass_on = name == "forward_headers"
    if value is None and to_pass_on:
        return
    if isinstance(value, str | bytes) or not isinstance(value, Collection):
        raise TypeError(f"{name} must be a collection of header names, not {value!r}")
    for header in value:
        if not isinstance(header, str):
            raise TypeError(f"{name} must be a collection of header names, not {value!r}")
        problem = header_name_error(header, to_pass_on=to_pass_on)
        if problem is not None:
            raise ValueError(f"{name}: {problem}")


def _header_names(text: str, *, to_pass_on: bool) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(","))
    for name in names:
        problem = header_name_error(name, to_pass_on=to_pass_on)
        if problem is not None:
            raise ValueError(f"expected comma-separated header names: {problem}")
    return names


def _only_headers(text: str) -> tuple[str, ...] | None:
    """Comma-separated header names (``x-tenant,cookie``), or ``*`` for every one."""
    return None if text.strip() == "*" else _header_names(text, to_pass_on=True)


def _dropped_headers(text: str) -> tuple[str, ...]:
    """Comma-separated header names (``x-forwarded-for,forwarded``)."""
    return _header_names(text, to_pass_on=False)


class ProxyOptions(TypedDict, total=False):
    """The options of :func:`proxy`, every one a keyword; the limits are a server's
    defaults (``roomkit.Room``'s), so that clients get from the proxy what they would
    get from the server behind it.

    Each is also a flag of ``roomkit proxy`` and a ``ROOMKIT_PROXY_*`` environment
    variable (``max_message_size``: ``--max-message-size``,
    ``ROOMKIT_PROXY_MAX_MESSAGE_SIZE``).

    Keys:
      host, port: where to listen (port 0 picks one; see ``ProxyServer.port``).
      ssl_context: listen for ``wss://`` with this server-side context, as ``serve``'s
        (``roomkit proxy`` makes it of ``--certfile`` and ``--keyfile``). None listens
        for plain ``ws://``.
      handshake_timeout: seconds a client has to finish its TLS handshake (with
        ``ssl_context``) and send its request head.
      forward_headers: the names of the only headers of the client's passed on to the
        backend (any case), or None, the default, for every end-to-end one. A header
        the proxy never passes on (``Connection``, ``Host``...: see docs/proxy.md) is
        refused (ValueError).
      drop_headers: the names of headers of the client's never passed on, on top of
        those the proxy never passes on. ``("x-forwarded-for", "forwarded",
        "x-forwarded-proto")`` starts the chains at the proxy's client.
      max_message_size: bytes; a bigger message from a client closes both sides with
        1009, and one from the backend does too. Nothing past it is buffered.
      max_connections: WebSockets forwarded at once; beyond, handshakes get 503.
      rate_limit: a token bucket for each client's messages and pings, as
        ``Room.rate_limit``: a message with no token is dropped and answered with a
        ``rate_limited`` error, a client that keeps flooding is closed with 1008 (and
        its backend connection too). None for no limit.
    """

    host: Annotated[str, HOST]
    port: Annotated[int, PORT]
    ssl_context: Annotated[ssl.SSLContext | None, SSL_CONTEXT]
    handshake_timeout: Annotated[float, HANDSHAKE]
    forward_headers: Annotated[
        Collection[str] | None,
        Option(
            default=None,
            group="forwarding",
            parse=_only_headers,
            check=_check_header_names,
            metavar="NAMES",
            shown="* (every end-to-end header)",
            help="comma-separated headers of the client's, the only ones passed on to the "
            "backend; * for every end-to-end one",
        ),
    ]
    drop_headers: Annotated[
        Collection[str],
        Option(
            default=(),
            group="forwarding",
            parse=_dropped_headers,
            check=_check_header_names,
            metavar="NAMES",
            shown="none",
            help="comma-separated headers of the client's never passed on to the backend "
            "(x-forwarded-for,forwarded,x-forwarded-proto: the chains start at the proxy)",
        ),
    ]
    max_message_size: Annotated[
        int,
        Option(
            default=MAX_MESSAGE_SIZE,
            group="limits",
            parse=positive_int,
            check=check_count,
            metavar="BYTES",
            help="largest message passed on, either way; a bigger one closes both sides with 1009",
        ),
    ]
    max_connections: Annotated[
        int,
        Option(
            default=MAX_CONNECTIONS,
            group="limits",
            parse=positive_int,
            check=check_count,
            metavar="N",
            help="WebSockets forwarded at once; beyond, handshakes get 503",
        ),
    ]
    rate_limit: Annotated[
        RateLimit | None,
        Option(
            default=RATE_LIMIT,
            group="limits",
            parse=rate_limit,
            check=_check_rate_limit,
            metavar="PER_SECOND,BURST",
            shown=f"{RATE_LIMIT.per_second:g},{RATE_LIMIT.burst}",
            help="each client's messages (and pings) a second, and bursts; beyond, a message "
            "is dropped with an error, and a client that keeps on is closed with 1008; off "
            "for none",
        ),
    ]


#: proxy's options, read from :class:`ProxyOptions`.
PROXY_OPTIONS: Final = OptionSet[ProxyOptions](ProxyOptions, "proxy")


async def proxy(
    backend_url: str,
    *,
    task_status: trio.TaskStatus[ProxyServer] = trio.TASK_STATUS_IGNORED,
    **options: Unpack[ProxyOptions],
) -> None:
    """Forward each WebSocket to ``backend_url`` until cancelled or :meth:`ProxyServer.shutdown`.

    Args:
      backend_url: ``ws://host:port`` (or ``wss://``) of the backend; a client's path
        and query are appended to it.
      task_status: for ``nursery.start``, which returns a :class:`ProxyServer` once
        listening.
      options: the keywords of :class:`ProxyOptions` (``host``, ``port``,
        ``ssl_context``, the headers passed on, the limits), each left out at its
        default.

    What it holds is bounded by the options, and counted by
    :meth:`ProxyServer.statistics` (see :class:`ProxyStatistics`).

    Raises:
      ValueError: for a ``backend_url`` that is not a WebSocket URL, a bad limit or a
        bad header name (TypeError for an option of the wrong type: a ``rate_limit``
        that is not a ``RateLimit``, a header list that is a string).
    """
    backend = WebSocketURL.parse(backend_url)
    limits = PROXY_OPTIONS.complete(options)
    front = _Proxy(backend, limits)
    host = limits["host"]
    listeners = await trio.open_tcp_listeners(limits["port"], host=host)
    port = listeners[0].socket.getsockname()[1]
    tls = limits["ssl_context"] is not None
    running = ProxyServer(host, port, front.statistics, tls=tls)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, nursery, front.serve_client)
        task_status.started(running)
        await running._stop.wait()
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class ProxyServer:
    """A running proxy, as reported by ``nursery.start(proxy, ...)``.

    Attributes:
      host: the address it listens on.
      port: the bound port (useful with ``port=0``); with several listeners (a
        ``host`` of several addresses), the first one's.
      tls: whether it speaks TLS (``wss://``): whether it was given an ``ssl_context``.
    """

    host: str
    port: int
    _statistics: Callable[[], ProxyStatistics] = attrs.field(alias="statistics", repr=False)
    tls: bool = attrs.field(default=False, kw_only=True)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)

    @property
    def url(self) -> str:
        """The base WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:8080``
        (``wss://`` with TLS)."""
        return base_url(self.host, self.port, secure=self.tls)

    def shutdown(self) -> None:
        """Stop the proxy as if it were cancelled; ``proxy`` then returns.

        It stops accepting and drops every connection, forwarded or not: a proxy holds
        nothing worth a drain (the backend's rooms hold the state, and clients
        reconnect). Never blocks; later calls change nothing.
        """
        self._stop.set()

    def statistics(self) -> ProxyStatistics:
        """What the proxy holds right now: connections and their buffered bytes."""
        return self._statistics()


class _Proxy:
    """The clients of one ``proxy``: serving each, and counting what they hold."""

    def __init__(self, backend: WebSocketURL, limits: ProxyOptions) -> None:
        self._backend = backend
        self._limits = limits
        self._choice = HeaderChoice.of(limits["forward_headers"], limits["drop_headers"])
        self._secure = limits["ssl_context"] is not None  # the scheme clients reach it by
        self._files = static_files()
        self._clients: set[ProxyClient] = set()  # every TCP connection being served
        self._forwarding = 0  # of which WebSockets, counted against max_connections
        self.failures = 0  # connections ended by an unexpected error
        #: Clients dropped before their request head: a failed TLS handshake, a timeout.
        self.dropped: Counter[RefusalReason] = Counter()

    def statistics(self) -> ProxyStatistics:
        clients = self._clients
        return ProxyStatistics(
            connections=len(clients),
            forwarded=self._forwarding,
            send_queue_bytes=sum(client.owed for client in clients),
            receive_buffer_bytes=sum(client.message.buffered for client in clients),
        )

    async def serve_client(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; whatever goes wrong with it ends it, and only it."""
        limits = self._limits
        client = ProxyClient(stream, limits["max_message_size"], limits["rate_limit"])
        self._clients.add(client)
        try:
            async with stream:
                try:
                    await self._answer(client)
                    await client.end()
                except* GONE:
                    pass  # the client left; nothing to tell it
                except* Exception:
                    self.failures += 1
                    fields = client.fields() | {"failures": self.failures}
                    logger.exception("proxy: %s failed", client.id, extra=fields)
                    await client.fail()
                    await client.end()
        finally:
            self._clients.discard(client)

    async def _answer(self, client: ProxyClient) -> None:
        limits = self._limits
        secured, read, failure = await read_request(
            limits["ssl_context"], limits["handshake_timeout"], client.stream
        )
        client.stream = secured
        if read is None:
            if failure is not None:
                self._dropped(client, failure)
            return  # silent, slow, gone, or not speaking TLS: nobody to answer
        if isinstance(read, Response):
            answer: Response | bytes = read
        else:
            answer = _door(read.request, self._files, self._choice)
        if isinstance(answer, Response):
            await client.respond(answer)
            return
        assert isinstance(read, Head)
        head = read.request
        client.target = head.target
        if self._forwarding >= self._limits["max_connections"]:
            await client.respond(Response(503, "Server is full"))
            return
        self._forwarding += 1
        try:
            client.ws = WSConnection(ConnectionType.SERVER, trailing_data=read.rest)
            await self._forward(client, head, answer)
        finally:
            self._forwarding -= 1

    def _dropped(self, client: ProxyClient, reason: RefusalReason) -> None:
        """Count a client dropped before its request head, and log it (at DEBUG, as a
        server does: anyone can send these)."""
        self.dropped[reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            fields = client.fields() | {"reason": reason, "dropped": self.dropped[reason]}
            address = fields["remote"]
            logger.debug(
                "proxy: handshake from %s refused: dropped %s", address, reason, extra=fields
            )

    async def _forward(self, client: ProxyClient, head: RequestHead, accept: bytes) -> None:
        """Open the backend's side, then answer the client: 101, or the backend's refusal."""
        backend = self._backend
        try:
            with trio.fail_after(BACKEND_TIMEOUT):
                upstream_stream = await backend.open_stream()
        except (OSError, trio.TooSlowError) as exc:
            logger.warning(
                "proxy: backend %s unreachable: %s", backend.host_header, exc, extra=client.fields()
            )
            await client.respond(Response(502, "Bad gateway: the backend cannot be reached"))
            return
        try:
            async with upstream_stream, trio.open_nursery() as pair:
                with trio.fail_after(BACKEND_TIMEOUT):
                    upstream = await trio_websocket.wrap_client_stream(
                        pair,
                        upstream_stream,
                        backend.host_header,
                        backend.path.rstrip("/") + head.target,
                        subprotocols=subprotocols(head),
                        extra_headers=forwarded_headers(
                            head, client.remote_host, self._choice, secure=self._secure
                        ),
                        max_message_size=self._limits["max_message_size"],
                        message_queue_size=0,  # a message is held by the pump, not queued
                        receive_buffer_size=RECEIVE_BYTES,
                    )
                chosen = upstream.subprotocol
                if chosen:
                    accept = accept[:-2] + f"Sec-WebSocket-Protocol: {chosen}\r\n\r\n".encode()
                await client.respond(accept)
                await pump(client, upstream)
                pair.cancel_scope.cancel()
        except* trio_websocket.ConnectionRejected as group:
            refusal = first_leaf(group)
            assert isinstance(refusal, trio_websocket.ConnectionRejected)
            await client.respond(_passed_on(refusal))
        except* (*_BACKEND_NONSENSE, trio.TooSlowError, OSError) as group:
            if not client.answered:  # after the 101, the pump has already told the client
                logger.warning(
                    "proxy: backend %s failed the handshake: %r",
                    backend.host_header,
                    first_leaf(group),
                    extra=client.fields(),
                )
                await client.respond(Response(502, "Bad gateway: the backend failed"))


def _door(head: RequestHead, files: dict[str, Response], choice: HeaderChoice) -> Response | bytes:
    """What a client's request head gets at the proxy: a response, or the 101 to send
    once the backend has accepted; ``choice`` says which of its headers go on."""
    if not head.is_websocket:
        return plain_response(head, files)
    answer = handshake_response(head)
    if isinstance(answer, Response):
        return answer
    problem = forwarding_error(head, choice)
    return answer if problem is None else Response(400, f"Bad request: {problem}")


def _passed_on(refusal: trio_websocket.ConnectionRejected) -> Response:
    """The response that passes the backend's refusal on to the client.

    Every HTTP error status passes, those ``http.HTTPStatus`` does not name (499) with
    their class's phrase; a status that is not an HTTP error becomes 502. The body
    keeps the backend's content type, text if it gave none (as roomkit's refusals are).
    """
    status = refusal.status_code
    if not 400 <= status <= 599:
        return Response(502, f"Bad gateway: the backend answered {status}")
    given = dict(refusal.headers or ()).get(b"content-type", b"").decode("latin-1")
    printable = given.isascii() and given.isprintable()
    content_type = given if given and printable else "text/plain; charset=utf-8"
    return Response(status, refusal.body or b"", content_type=content_type)
