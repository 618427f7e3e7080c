"""``serve``: the listening socket, the front door, and the nursery tree of rooms.

The tree::

    serve()
    ├── the gateway: accept loop, and one front-door task per new TCP connection
    │   (reads the request head, answers plain HTTP, hands WebSocket upgrades to a room)
    └── the room host's scope (shielded until shutdown)
        ├── the committer (group commit of every room's writes)
        ├── the scheduler (alarms, idle sweeps, pings, on Trio's clock)
        └── rooms scope: one task per live room, asleep or awake, with its nursery
            ├── the room's event loop (hooks, one at a time; ends on hibernation)
            ├── one Transport.run per connection (reader + writer)
            └── the short tasks that deliver its alarms

Shutdown, when ``serve`` is cancelled or :meth:`Server.shutdown` is called, in order:
stop accepting and drop half-read request heads; close every open connection with 1001
"Going away" (1012 "Service restart" for ``shutdown(restart=True)``) and refuse
handshakes still waiting on ``on_connect`` with 503; wait, at most ``drain_timeout``, for
the connections to finish their closing handshakes and their rooms' ``on_close`` hooks;
cancel whatever is left; flush the committer (at most ``FLUSH_TIMEOUT``); close the store.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Annotated, Any, Final, TypedDict, Unpack

import attrs
import trio

from ._accept import accept_loop, read_request
from ._actor import RoomActor
from ._closecodes import CloseCode
from ._cluster import Member, secret_bytes
from ._core.frontdoor import DEFAULT_ROOM, Page, Response, Router
from ._core.location import Membership, advertised
from ._exposition import CONTENT_TYPE, merged_exposition, metrics_page
from ._forward import Forwards
from ._gateway import Gateway, answers_http
from ._handoff import Peers, open_handoff_listener, serve_handoffs
from ._host import Host
from ._metrics import Metrics
from ._options import (
    HANDSHAKE,
    HOST,
    PORT,
    SSL_CONTEXT,
    Option,
    OptionSet,
    advertised_address,
    check_advertised_address,
    check_callable_or_none,
    check_count_or_none,
    check_positive_seconds,
    check_room_name,
    check_seconds,
    check_secret,
    origins,
    positive_int,
    positive_seconds,
    room_name,
    seconds,
)
from ._request import RouteHook
from ._room import Room
from ._roomid import RoomId
from ._static import static_files
from ._statistics import ServerStatistics
from ._stubs import Rooms
from ._workerspec import WorkerSpec
from ._wsurl import base_url
from .storage import ClusterStore, Store, open_store

__all__ = ["LEASE", "SERVE_OPTIONS", "ServeOptions", "Server", "serve", "serve_on"]

#: A cluster's default lease, in seconds: a dead node's rooms move within it, and a
#: node rides out two failed heartbeats (PostgreSQL restarting, a pause) before it
#: stops serving.
LEASE: Final = 5.0


@attrs.define(eq=False)
class Server:
    """A running roomkit server, as reported by ``nursery.start(serve, ...)``.

    Attributes:
      host: the address it listens on.
      port: the bound port (useful with ``port=0``).
      tls: whether it speaks TLS (``wss://``).
      rooms: the server's rooms by name, to call their ``@rpc`` methods:
        ``await server.rooms.get("lobby").kick("ada")`` (see docs/rpc.md).
    """

    host: str
    port: int
    tls: bool = False
    _rooms: dict[RoomId, RoomActor] = attrs.field(factory=dict, alias="live")
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _close_code: CloseCode = attrs.field(default=CloseCode.GOING_AWAY, init=False)
    #: Counts what it holds: its room host's.
    _statistics: Callable[[], ServerStatistics] = attrs.field(
        kw_only=True, alias="statistics", repr=False
    )
    rooms: Rooms = attrs.field(kw_only=True, repr=False)

    @property
    def url(self) -> str:
        """The base WebSocket URL, e.g. ``ws://127.0.0.1:8080`` (``wss://`` with TLS)."""
        return base_url(self.host, self.port, secure=self.tls)

    def shutdown(self, *, restart: bool = False) -> None:
        """Shut the server down gracefully; ``serve`` then returns instead of running on.

        The steps are those of a cancelled ``serve`` (see ``drain_timeout``), and every
        client is closed with 1001 "Going away"; with ``restart=True``, with 1012
        "Service restart" instead, which tells clients to come back at once (roomkit's
        clients reconnect without waiting). Never blocks: wait for ``serve`` to return
        (the end of its nursery) to know the server is done. Later calls change nothing.
        """
        if not self._stop.is_set():
            self._close_code = CloseCode.SERVICE_RESTART if restart else CloseCode.GOING_AWAY
            self._stop.set()

    @property
    def room_count(self) -> int:
        """How many rooms are live right now."""
        return len(self._rooms)

    def statistics(self) -> ServerStatistics:
        """What the server holds right now: rooms, connections, buffered bytes, timers."""
        return self._statistics()


class ServeOptions(TypedDict, total=False):
    """The options of :func:`serve`, every one a keyword: ``serve(ChatRoom, port=0)``.

    Each is also a flag of ``roomkit serve`` and a ``ROOMKIT_*`` environment variable
    (``drain_timeout``: ``--drain-timeout``, ``ROOMKIT_DRAIN_TIMEOUT``), but
    ``ssl_context``, which the command line makes of ``--certfile`` and ``--keyfile``.

    Keys:
      host: the address to listen on.
      port: the port; 0 picks a free one (see ``Server.port``).
      ssl_context: serve ``wss://`` (and ``https://``) with this server-side context,
        e.g. ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` with
        ``load_cert_chain(certfile, keyfile)``. None serves plain ``ws://``.
      storage: the rooms' durable storage: a SQLite database file (created if need be,
        and locked for this server alone while it runs: see docs/storage.md),
        ``":memory:"`` (the default: nothing survives the process), or a
        :class:`roomkit.storage.Store`. ``roomkit serve``'s default is a file,
        ``roomkit.sqlite3``.
      group_commit: write the changes of many hooks in one transaction (one fsync);
        False commits each hook's changes on its own, for comparison.
      default_room: the room an empty name reaches: ``/`` with a single Room class,
        ``/chat`` and ``/chat/`` with a route ``"/chat"`` (and a route hook's ``""``).
      route: a function of the :class:`Request` (or a coroutine function) that chooses
        its room before any room runs, or refuses it with :class:`Reject`: see
        ``RouteChoice`` for what it returns. It runs in the connection's front-door
        task, for at most ``handshake_timeout`` seconds (then 503); anything it raises
        but a Reject is logged and answered with 500. None routes by path alone.
      handshake_timeout: seconds a client has to finish its TLS handshake (with
        ``ssl_context``) and send its whole request head; a slower one is dropped.
      allowed_origins: the ``Origin`` values (``"https://example.com"``) that browser
        pages may connect from; a handshake from another origin gets 403 (cross-site
        WebSocket hijacking). Requests without an ``Origin`` (not from a browser) are
        allowed. None, the default, allows every origin.
      max_connections: WebSocket connections the whole server holds at once; beyond
        it the handshake gets 503. None: no limit but each room's ``max_connections``.
      drain_timeout: at shutdown, seconds that connections have to finish their closing
        handshakes and rooms their ``on_close`` hooks; what is left then is cancelled,
        and storage is committed (at most ``FLUSH_TIMEOUT`` more).
      demo_page: serve the chat demo page at ``GET /`` (for ``examples.chat``).
      metrics: serve the server's metrics at ``GET /metrics``, in the Prometheus text
        format (see docs/observability.md). Off by default: anyone who reaches the port
        could read them (see docs/security.md).
      advertise: in a cluster, the ``HOST:PORT`` other nodes reach this one at; None
        advertises the listening host and port (a wildcard host, ``0.0.0.0`` or ``::``,
        as this machine's host name).
      lease: in a cluster, seconds a node stays the owner of its rooms after its last
        heartbeat (one every lease/3): a node that dies loses its rooms after at most
        this long, and one that cannot renew it stops serving before it runs out.
      cluster_secret: in a cluster, the secret the nodes share to sign the client's
        address on the connections they forward to each other. None: the owner sees the
        forwarding node's address, and a warning says so at start.
    """

    host: Annotated[str, HOST]
    port: Annotated[int, PORT]
    ssl_context: Annotated[ssl.SSLContext | None, SSL_CONTEXT]
    storage: Annotated[
        str | os.PathLike[str] | Store,
        Option(
            default=":memory:",
            command_default="roomkit.sqlite3",
            group="storage",
            metavar="PATH|URL",
            help="SQLite database file for the rooms' storage (:memory: keeps nothing), or "
            "a postgresql:// URL, which makes this server a cluster member "
            "(see docs/cluster.md)",
        ),
    ]
    group_commit: Annotated[
        bool,
        Option(
            default=True,
            group="storage",
            help="write the changes of many hooks in one transaction (one fsync)",
        ),
    ]
    default_room: Annotated[
        str,
        Option(
            default=DEFAULT_ROOM,
            group="routing",
            parse=room_name,
            check=check_room_name,
            metavar="NAME",
            help="the room that / reaches (and /chat, /chat/ for a route /chat)",
        ),
    ]
    route: Annotated[
        RouteHook | None,
        Option(
            default=None,
            group="routing",
            parse=None,
            check=check_callable_or_none,
            help="made of --route MODULE:ATTR",
        ),
    ]
    handshake_timeout: Annotated[float, HANDSHAKE]
    max_connections: Annotated[
        int | None,
        Option(
            default=None,
            group="connections",
            parse=positive_int,
            check=check_count_or_none,
            metavar="N",
            shown="no limit",
            help="WebSocket connections the server holds at once; beyond, handshakes get 503",
        ),
    ]
    allowed_origins: Annotated[
        Iterable[str] | None,
        Option(
            default=None,
            group="connections",
            parse=origins,
            metavar="ORIGINS",
            shown="any origin",
            help="comma-separated origins browser pages may connect from "
            "(https://example.com); others get 403",
        ),
    ]
    drain_timeout: Annotated[
        float,
        Option(
            default=10.0,
            group="shutdown",
            parse=seconds,
            check=check_seconds,
            metavar="SECONDS",
            help="at SIGTERM or SIGINT, time clients and rooms get to finish before the rest "
            "is cancelled and storage committed",
        ),
    ]
    demo_page: Annotated[
        bool,
        Option(
            default=False, group="demo", help="serve the chat demo page at / (for examples.chat)"
        ),
    ]
    metrics: Annotated[
        bool,
        Option(
            default=False,
            group="operations",
            help="serve Prometheus metrics at GET /metrics (see docs/observability.md)",
        ),
    ]
    advertise: Annotated[
        str | None,
        Option(
            default=None,
            group="cluster",
            parse=advertised_address,
            check=check_advertised_address,
            metavar="HOST:PORT",
            shown="the listening host and port",
            help="in a cluster (--storage postgresql://...), where other nodes reach this one",
        ),
    ]
    lease: Annotated[
        float,
        Option(
            default=LEASE,
            group="cluster",
            parse=positive_seconds,
            check=check_positive_seconds,
            metavar="SECONDS",
            help="in a cluster, how long a node keeps its rooms after its last heartbeat",
        ),
    ]
    cluster_secret: Annotated[
        str | None,
        Option(
            default=None,
            group="cluster",
            check=check_secret,
            metavar="SECRET",
            shown="none: owners see the forwarding node's address",
            help="in a cluster, the secret the nodes sign forwarded clients' addresses with",
        ),
    ]


#: serve's options, read from :class:`ServeOptions`.
SERVE_OPTIONS: Final = OptionSet[ServeOptions](ServeOptions, "serve")


async def serve(
    rooms: type[Room] | Mapping[str, type[Room]],
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **options: Unpack[ServeOptions],
) -> None:
    """Serve rooms over WebSockets until cancelled or :meth:`Server.shutdown`.

    Args:
      rooms: a Room subclass, served at ``ws://host:port/{name}``; or a mapping from
        prefix to Room subclass, ``{"/chat": ChatRoom}``, served at ``/chat/{name}``.
        No name (``/``, ``/chat``, ``/chat/``) is the room ``default_room``.
      task_status: for ``nursery.start``, which returns the :class:`Server` once it is
        listening and every stored alarm is scheduled.
      options: the keywords of :class:`ServeOptions` (``host``, ``port``, ``storage``,
        ``max_connections``, ...), each left out at its default.

    Raises:
      StorageError: before listening, if another server holds the ``storage`` file,
        or this process cannot open or write it.
      TypeError, ValueError: before listening, for a bad route or a bad option.

    Besides WebSockets, the port answers ``GET /healthz`` with 200 ``ok``, serves the
    browser client at ``GET /roomkit.js``, and answers any other plain HTTP request with
    426 ``Expected websocket``.

    Shutdown is graceful, when ``serve`` is cancelled (every client is closed with 1001
    "Going away") as when :meth:`Server.shutdown` is called (``serve`` then returns):
    it stops accepting, closes every connection, waits up to ``drain_timeout`` for the
    rooms to finish, and commits storage.

    In tests, listen on port 0 and let ``nursery.start`` tell you where::

        server = await nursery.start(partial(roomkit.serve, MyRoom, port=0))
        async with trio_websocket.open_websocket_url(f"{server.url}/lobby") as ws: ...
    """
    given = SERVE_OPTIONS.complete(options)
    host, port = given["host"], given["port"]

    async def listen() -> tuple[list[trio.SocketListener], str, int]:
        listeners = await trio.open_tcp_listeners(port, host=host)
        return listeners, host, listeners[0].socket.getsockname()[1]

    await serve_on(listen, rooms, given, task_status=task_status)


#: Opens ``serve``'s listeners, once its options are checked: the listeners, and the
#: host and port that ``Server`` reports.
Listen = Callable[[], Awaitable[tuple[Sequence[trio.abc.Listener[Any]], str, int]]]


async def serve_on(
    listen: Listen,
    rooms: type[Room] | Mapping[str, type[Room]],
    options: ServeOptions,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    wall_time: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
    on_unhandled: Callable[[Exception], None] | None = None,
    on_host: Callable[[Host], None] | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """``serve`` over whatever listeners ``listen`` opens (TCP, or roomkit.testing's
    in-memory one), with ``options`` complete and checked (``SERVE_OPTIONS.complete``);
    their ``host`` and ``port`` are ``listen``'s business. ``wall_time`` and ``jitter``
    are the alarms' clock and their retries' randomness, ``on_unhandled`` hears of hook
    errors left to ``Room.on_error``'s default (see ``RoomHost``), and ``on_host`` is
    given the room host once it exists (its ``TestHooks``): for the test kit.

    With ``worker``, this is one worker of ``roomkit serve --workers N`` (``_worker``): it
    serves the rooms that live in its slot, hands connections for the others' rooms to
    them over their Unix sockets, takes theirs on its own
    (``worker.socket_path(worker.index)``), and its ``/metrics`` covers every worker
    (``_handoff.py``); its storage file is opened without the lock, which the supervisor
    holds for them all, and its host runs the alarms of its own rooms alone."""
    live: dict[RoomId, RoomActor] = {}
    counters = Metrics()
    files: dict[str, Page] = {**static_files(demo_page=options["demo_page"])}
    local_metrics = metrics_page(counters, live.values) if options["metrics"] else None
    peers = None if worker is None else Peers(worker, options["handshake_timeout"], counters)
    pages: dict[str, Callable[[], Awaitable[Response]]] = {}
    if local_metrics is not None and peers is None:
        files["/metrics"] = local_metrics
    elif local_metrics is not None and peers is not None:
        pages["/metrics"] = partial(_merged_metrics, peers, local_metrics)
    router = Router[type[Room]](
        rooms,
        default_room=options["default_room"],
        allowed_origins=options["allowed_origins"],
        files=files,
        answers=answers_http,
    )
    for route in rooms.values() if isinstance(rooms, Mapping) else (rooms,):
        if not (isinstance(route, type) and issubclass(route, Room)):
            raise TypeError(f"a route must be a Room subclass, not {route!r}")
        counters.room(route)  # its metrics are listed, at zero, before its first room
    storage = options["storage"]
    store = (
        storage
        if isinstance(storage, Store)
        else await open_store(
            storage, lock=worker is None, idle_in_transaction_timeout=options["lease"]
        )
    )
    try:
        handoff_listener = None  # first: a worker whose socket fails opens nothing else
        if peers is not None:
            path = peers.spec.socket_path(peers.spec.index)
            handoff_listener = await open_handoff_listener(path)
        try:
            listeners, bound_host, bound_port = await listen()
        except BaseException:
            if handoff_listener is not None:
                await handoff_listener.aclose()
            raise
        ssl_context = options["ssl_context"]
        handshake = partial(read_request, ssl_context, options["handshake_timeout"])
        member = forwards = secret = None
        if isinstance(store, ClusterStore):
            default = advertised(bound_host, bound_port, socket.gethostname())
            advertise = options["advertise"] or default
            membership = Membership(advertise, None if worker is None else worker.placement)
            secret = secret_bytes(options["cluster_secret"])
            member = Member(store, membership, options["lease"])
            # An owner that has not answered within a lease is stopped or dead, and about
            # to lose its rooms: the client is better off retrying at once.
            answer_timeout = min(options["handshake_timeout"], options["lease"])
            forwards = Forwards(secret, answer_timeout, counters)
        host = Host(
            live,
            router,
            store,
            counters,
            options["group_commit"],
            wall_time=wall_time,
            jitter=jitter,
            on_unhandled=on_unhandled,
            owns=None if worker is None else worker.placement.owns,
            acquire=None if member is None else member.acquire,
            release=None if member is None else member.release,
        )
        gateway = Gateway(
            host,
            router,
            counters,
            handshake,
            options["max_connections"],
            route=options["route"],
            route_timeout=options["handshake_timeout"],
            peers=peers,
            pages=pages,
            member=member,
            forwards=forwards,
            cluster_secret=secret,
            handshake_timeout=options["handshake_timeout"],
        )
        server = Server(
            bound_host,
            bound_port,
            tls=ssl_context is not None,
            live=live,
            statistics=host.statistics,
            rooms=Rooms(host.calls),
        )
        if on_host is not None:
            on_host(host)
        async with trio.open_nursery() as nursery:
            if member is not None:
                await member.register(host)
            await nursery.start(host.run)
            # Calls to rooms of other processes go through the gateway as trusted visits.
            await nursery.start(partial(host.calls.run, gateway.internal, secret))
            await nursery.start(gateway.run)  # plain requests in their rooms' hands
            if member is not None and forwards is not None:
                await nursery.start(member.run)
                await nursery.start(forwards.run)
            if peers is not None:
                await nursery.start(peers.run)
            doors = trio.CancelScope()
            handoffs = None
            if handoff_listener is not None:
                exposition = None if local_metrics is None else partial(_body, local_metrics)
                handoffs = partial(serve_handoffs, handoff_listener, gateway, counters, exposition)
            await nursery.start(_accept, listeners, gateway.front_door, doors, handoffs)
            task_status.started(server)
            try:
                await server._stop.wait()
            finally:
                doors.cancel()
                with trio.CancelScope(shield=True):
                    if member is not None:
                        await member.drain()
                    leave = None if member is None else partial(member.leave, host.claims())
                    await _drain(
                        host, peers, forwards, server._close_code, options["drain_timeout"], leave
                    )
                # the relays', the forwards', the calls' and the plain requests' nurseries
                nursery.cancel_scope.cancel()
    finally:
        if store is not storage:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def _drain(
    host: Host,
    peers: Peers | None,
    forwards: Forwards | None,
    code: CloseCode,
    seconds: float,
    leave: Callable[[], Awaitable[None]] | None,
) -> None:
    """Shut the room host down, then ``leave`` the cluster (release the rooms, flushed);
    meanwhile, let the relays and the forwarded connections (if any) carry their owners'
    closes until they end, for ``seconds`` at most.

    The release does not wait for the forwarded connections: their rooms live on other
    nodes, and their clients have no reason to leave, so waiting for them kept this
    node's rooms from moving (503) for the whole drain timeout."""
    async with trio.open_nursery() as nursery:
        if peers is not None:
            nursery.start_soon(peers.drain, seconds)
        if forwards is not None:
            nursery.start_soon(forwards.drain, seconds)
        await host.shutdown(code, seconds)
        if leave is not None:
            await leave()


async def _merged_metrics(peers: Peers, local: Callable[[], Response]) -> Response:
    """A worker's ``/metrics``: its own and every other worker's, by ``worker`` label."""
    pages = await peers.scrape()
    pages[peers.placement.me] = _body(local)
    return Response(200, merged_exposition(pages), content_type=CONTENT_TYPE)


def _body(page: Callable[[], Response]) -> bytes:
    body = page().body
    return body.encode() if isinstance(body, str) else body


async def _accept(
    listeners: Sequence[trio.abc.Listener[Any]],
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    scope: trio.CancelScope,
    handoffs: Callable[[], Awaitable[None]] | None,
    task_status: trio.TaskStatus[None],
) -> None:
    """The accept loops and their front-door tasks, and the hand-offs from other
    workers if any, all inside ``scope``."""
    with scope:
        async with trio.open_nursery() as nursery:
            if handoffs is not None:
                nursery.start_soon(handoffs)
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery, handler)
            task_status.started()
