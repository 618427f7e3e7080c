"""``serve``: the listening socket, the front door, and the nursery tree of rooms.

The tree::

    serve()
    ├── accept loop, and one front-door task per new TCP connection (reads the request
    │   head, answers plain HTTP, hands WebSocket upgrades to a room)
    └── runtime scope (shielded until shutdown)
        ├── the committer (group commit of every room's writes)
        ├── the scheduler (alarms, idle sweeps, pings, on Trio's clock)
        └── rooms scope: the tasks of every room, each belonging to one room
            ├── a room's event loop (hooks, one at a time; ends on hibernation)
            └── one Connection._run per connection (reader + writer)

Shutdown, when ``serve`` is cancelled or :meth:`Server.shutdown` is called, in order:
stop accepting and drop half-read request heads; close every open connection with 1001
"Going away" (1012 "Service restart" for ``shutdown(restart=True)``) and refuse
handshakes still waiting on ``on_connect`` with 503; wait, at most ``drain_timeout``, for
the connections to finish their closing handshakes and their rooms' ``on_close`` hooks;
cancel whatever is left; flush the committer (at most ``FLUSH_TIMEOUT``); close the store.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final

import attrs
import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from ._accept import accept_loop, read_head, remote_address
from ._actor import RoomActor, TimerKey
from ._alarms import Scheduler
from ._closecodes import CloseCode
from ._committer import Committer
from ._connection import Connection
from ._exposition import metrics_page
from ._frontdoor import Page, Response, Router, handshake_response, parse_head
from ._logs import format_address
from ._metrics import Metrics, RefusalReason
from ._request import Request
from ._room import Room
from ._roomid import RoomId
from ._static import static_files
from .storage import AlarmWrite, Changes, SQLiteStore, Store

__all__ = ["Server", "serve"]

logger = logging.getLogger("roomkit.server")

#: Seconds that shutdown waits for the last commit once the rooms are done: a healthy
#: disk takes milliseconds, and a stuck one must not hold the process for ever.
FLUSH_TIMEOUT: Final = 5.0
#: Seconds a plain-HTTP answer over TLS waits for the client's close_notify.
_TLS_CLOSE_TIMEOUT: Final = 1.0
#: The close frame every connection gets at shutdown, by the code asked for.
_SHUTDOWN_REASONS: Final = {
    CloseCode.GOING_AWAY: "Going away",
    CloseCode.SERVICE_RESTART: "Service restart",
}


@attrs.define(eq=False)
class Server:
    """A running roomkit server, as reported by ``nursery.start(serve, ...)``.

    Attributes:
      host: the address it listens on.
      port: the bound port (useful with ``port=0``).
      tls: whether it speaks TLS (``wss://``).
    """

    host: str
    port: int
    tls: bool = False
    _rooms: dict[RoomId, RoomActor] = attrs.field(factory=dict, alias="rooms")
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False)
    _close_code: CloseCode = attrs.field(default=CloseCode.GOING_AWAY, init=False)
    #: What serves it, for roomkit.testing to reach rooms and alarms; set once serving.
    _runtime: _Runtime | None = attrs.field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The base WebSocket URL, e.g. ``ws://127.0.0.1:8080`` (``wss://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}"

    def shutdown(self, *, restart: bool = False) -> None:
        """Shut the server down gracefully; ``serve`` then returns instead of running on.

        The steps are those of a cancelled ``serve`` (see ``drain_timeout``), and every
        client is closed with 1001 "Going away"; with ``restart=True``, with 1012
        "Service restart" instead, which tells clients to come back at once (roomkit's
        clients reconnect without waiting). Never blocks: wait for ``serve`` to return
        (the end of its nursery) to know the server is done. Later calls change nothing.
        ``proxy`` stops as when cancelled.
        """
        if not self._stop.is_set():
            self._close_code = CloseCode.SERVICE_RESTART if restart else CloseCode.GOING_AWAY
            self._stop.set()

    @property
    def room_count(self) -> int:
        """How many rooms are live right now."""
        return len(self._rooms)


async def serve(
    rooms: type[Room] | Mapping[str, type[Room]],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    storage: str | os.PathLike[str] | Store = ":memory:",
    group_commit: bool = True,
    handshake_timeout: float = 10.0,
    allowed_origins: Iterable[str] | None = None,
    max_connections: int | None = None,
    drain_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    demo_page: bool = False,
    metrics: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve rooms over WebSockets until cancelled or :meth:`Server.shutdown`.

    Args:
      rooms: a Room subclass, served at ``ws://host:port/{name}``; or a mapping from
        prefix to Room subclass, ``{"/chat": ChatRoom}``, served at ``/chat/{name}``.
      host: the address to listen on.
      port: the port; 0 picks a free one (see ``Server.port``).
      storage: the rooms' durable storage: a SQLite database file (created if need be),
        ``":memory:"`` (the default: nothing survives the process), or a
        :class:`roomkit.storage.Store`.
      group_commit: write the changes of many hooks in one transaction (one fsync);
        False commits each hook's changes on its own, for comparison.
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
      ssl_context: serve ``wss://`` (and ``https://``) with this server-side context,
        e.g. ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` with
        ``load_cert_chain(certfile, keyfile)``. None serves plain ``ws://``.
      demo_page: serve the chat demo page at ``GET /`` (for ``examples.chat``).
      metrics: serve the server's metrics at ``GET /metrics``, in the Prometheus text
        format (see docs/observability.md). Off by default: anyone who reaches the port
        could read them (see docs/security.md).
      task_status: for ``nursery.start``, which returns the :class:`Server` once it is
        listening and every stored alarm is scheduled.

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

    async def listen() -> tuple[list[trio.SocketListener], str, int]:
        listeners = await trio.open_tcp_listeners(port, host=host)
        return listeners, host, listeners[0].socket.getsockname()[1]

    await _serve_on(
        listen,
        rooms,
        storage=storage,
        group_commit=group_commit,
        handshake_timeout=handshake_timeout,
        allowed_origins=allowed_origins,
        max_connections=max_connections,
        drain_timeout=drain_timeout,
        ssl_context=ssl_context,
        demo_page=demo_page,
        metrics=metrics,
        task_status=task_status,
    )


#: Opens ``serve``'s listeners, once its options are checked: the listeners, and the
#: host and port that ``Server`` reports.
Listen = Callable[[], Awaitable[tuple[Sequence[trio.abc.Listener[Any]], str, int]]]


async def _serve_on(
    listen: Listen,
    rooms: type[Room] | Mapping[str, type[Room]],
    *,
    storage: str | os.PathLike[str] | Store = ":memory:",
    group_commit: bool = True,
    handshake_timeout: float = 10.0,
    allowed_origins: Iterable[str] | None = None,
    max_connections: int | None = None,
    drain_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    demo_page: bool = False,
    metrics: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``serve`` over whatever listeners ``listen`` opens (TCP, or roomkit.testing's
    in-memory one); the options are ``serve``'s."""
    live: dict[RoomId, RoomActor] = {}
    counters = Metrics()
    files: dict[str, Page] = {**static_files(demo_page=demo_page)}
    if metrics:
        files["/metrics"] = metrics_page(counters, live.values)
    router = Router[type[Room]](rooms, allowed_origins=allowed_origins, files=files)
    if max_connections is not None and (
        isinstance(max_connections, bool)
        or not isinstance(max_connections, int)
        or max_connections < 1
    ):
        raise ValueError(f"max_connections must be positive or None, not {max_connections!r}")
    if not drain_timeout >= 0:
        raise ValueError(f"drain_timeout must be 0 or more seconds, not {drain_timeout!r}")
    for route in rooms.values() if isinstance(rooms, Mapping) else (rooms,):
        if not (isinstance(route, type) and issubclass(route, Room)):
            raise TypeError(f"a route must be a Room subclass, not {route!r}")
        counters.room(route)  # its metrics are listed, at zero, before its first room
    store = storage if isinstance(storage, Store) else await SQLiteStore.open(storage)
    try:
        listeners, bound_host, bound_port = await listen()
        server = Server(bound_host, bound_port, tls=ssl_context is not None, rooms=live)
        handshake = partial(_handshake, ssl_context, handshake_timeout)
        runtime = _Runtime(
            server, router, store, counters, group_commit, handshake, max_connections
        )
        server._runtime = runtime
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            doors = trio.CancelScope()
            nursery.start_soon(_accept, listeners, runtime.front_door, doors)
            task_status.started(server)
            try:
                await server._stop.wait()
            finally:
                doors.cancel()
                with trio.CancelScope(shield=True):
                    await runtime.shutdown(server._close_code, drain_timeout)
    finally:
        if store is not storage:
            with trio.CancelScope(shield=True):
                await store.aclose()


#: Reads a new connection's request head, through TLS if need be: see ``_handshake``.
_Handshake = Callable[
    [trio.abc.Stream],
    Awaitable[tuple[trio.abc.Stream, bytes | Response | None, RefusalReason | None]],
]


async def _accept(
    listeners: Sequence[trio.abc.Listener[Any]],
    handler: Callable[[trio.abc.Stream], Awaitable[None]],
    scope: trio.CancelScope,
) -> None:
    """The accept loops and their front-door tasks, all inside ``scope``."""
    with scope:
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(accept_loop, listener, nursery, handler)


class _Runtime:
    """The parts of a running server that its tasks share: the room host."""

    def __init__(
        self,
        server: Server,
        router: Router[type[Room]],
        store: Store,
        metrics: Metrics,
        group_commit: bool,
        handshake: _Handshake,
        max_connections: int | None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._router = router
        self._handshake = handshake  # the request head, through TLS if need be
        self._max_connections = max_connections
        self.connections = 0  # open or opening WebSocket connections, all rooms
        self._rooms = server._rooms
        self._committer = Committer(store, metrics, group=group_commit)
        self._scheduler = Scheduler[TimerKey](self._fire)
        self._alarms: dict[RoomId, AlarmWrite] = {}
        self._scope = trio.CancelScope(shield=True)
        self._rooms_scope = trio.CancelScope()
        self._rooms_nursery: trio.Nursery | None = None
        self._room_gone = trio.Event()
        self._closing = False

    async def run(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the committer, the scheduler and the rooms; shielded from ``serve``'s
        cancellation, so that shutdown can close sockets and flush storage in order."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._committer.run)
                await nursery.start(self._scheduler.run)
                await nursery.start(self._run_rooms)
                for room, due, retry in await self.store.alarms():
                    self.alarm_changed(room, AlarmWrite(due, retry))
                task_status.started()

    async def _run_rooms(self, task_status: trio.TaskStatus[None]) -> None:
        with self._rooms_scope:
            async with trio.open_nursery() as nursery:
                self._rooms_nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    async def shutdown(self, code: CloseCode, drain_timeout: float) -> None:
        """Close every socket with ``code``, let rooms finish, flush storage, stop."""
        self._closing = True
        with trio.move_on_after(drain_timeout) as drain:
            for actor in list(self._rooms.values()):
                actor.shutdown(code, _SHUTDOWN_REASONS[code])
            while self._rooms:
                self._room_gone = trio.Event()
                await self._room_gone.wait()
        if drain.cancelled_caught:
            logger.warning(
                "drain timed out after %s s: cancelling %d rooms still open",
                drain_timeout,
                len(self._rooms),
            )
        self._rooms_scope.cancel()
        with trio.move_on_after(FLUSH_TIMEOUT) as flush:
            await self._committer.flush()
        if flush.cancelled_caught:
            logger.error(
                "storage flush timed out after %s s: the last commits may be lost",
                FLUSH_TIMEOUT,
            )
        self._scope.cancel()

    # RoomHost: what the rooms call.

    def commit(
        self,
        room: RoomId,
        changes: Changes,
        done: Callable[[bool], None],
        after: Callable[[], None],
    ) -> None:
        self._committer.submit(room, changes, done, after)

    def stored_alarm(self, room: RoomId) -> AlarmWrite | None:
        return self._alarms.get(room)

    def alarm_changed(self, room: RoomId, alarm: AlarmWrite) -> None:
        if alarm.due is None:
            self._alarms.pop(room, None)
            self._scheduler.cancel(("alarm", room))
            return
        self._alarms[room] = alarm
        wait = max(0.0, alarm.due - time.time())  # stored in wall-clock time
        self._scheduler.set(("alarm", room), trio.current_time() + wait)

    def set_timer(self, key: TimerKey, deadline: float) -> None:
        self._scheduler.set(key, deadline)

    def cancel_timer(self, key: TimerKey) -> None:
        self._scheduler.cancel(key)

    def spawn(self, task: Callable[[], Awaitable[None]]) -> None:
        if self._rooms_scope.cancel_called:
            return  # the drain is over and the rooms are being cancelled: nothing new starts
        assert self._rooms_nursery is not None
        self._rooms_nursery.start_soon(task)

    def room_gone(self, actor: RoomActor) -> None:
        del self._rooms[actor.room]
        self._scheduler.cancel(("sweep", actor.room))
        self._room_gone.set()

    def _fire(self, key: TimerKey) -> None:
        kind, subject = key
        if kind == "ping":
            assert isinstance(subject, Connection)
            subject._heartbeat()
            return
        assert isinstance(subject, RoomId)
        if kind == "sweep":
            if (actor := self._rooms.get(subject)) is not None:
                actor.sweep()
        else:
            self._alarm_due(subject)

    def _alarm_due(self, room: RoomId) -> None:
        if self._closing:
            return  # it stays stored, and runs when the server starts again
        alarm = self._alarms.pop(room, None)
        if alarm is None:
            return  # deleted since its timer was set
        route = self._router.route_for(room.namespace)
        if route is None:
            logger.warning("alarm of room %s not run: no route serves %r", room, room.namespace)
            return
        self._room_for(route, room).post_alarm(alarm.retry)

    async def front_door(self, stream: trio.abc.Stream) -> None:
        """Read one request head; answer it, or hand the stream to its room."""
        handed_off = False
        try:
            secured, head, failure = await self._handshake(stream)
            remote = remote_address(stream)
            if head is None:
                if failure is not None:
                    self._refused(failure, None, remote)
                return  # silent, slow, gone, or not speaking TLS: nobody to answer
            if isinstance(head, Response):
                decision: Response | _Upgrade = self._refuse("too_large", head, remote)
            else:
                decision = self._decide(head, remote)
            full = self._max_connections is not None and self.connections >= self._max_connections
            if self._closing and not isinstance(decision, Response):
                # A head read just as shutdown began: no room takes it. (The front door
                # is cancelled by then, so the 503 goes no further than the attempt.)
                decision = self._refuse(
                    "shutting_down", Response(503, "Server shutting down"), remote
                )
            elif full and not isinstance(decision, Response):
                decision = self._refuse("server_full", Response(503, "Server is full"), remote)
            if isinstance(decision, Response):
                await secured.send_all(decision.to_bytes())
                if secured is not stream:  # end TLS properly: close_notify, not a bare EOF
                    with trio.move_on_after(_TLS_CLOSE_TIMEOUT):
                        await secured.aclose()
                return
            actor = self._room_for(decision.room_class, decision.room)
            actor.admit(Connection(actor, secured, decision.ws, decision.accept, decision.request))
            handed_off = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not handed_off:
                await trio.aclose_forcefully(stream)

    def _decide(self, raw: bytes, remote: tuple[str, int] | None) -> Response | _Upgrade:
        end = raw.index(b"\r\n\r\n") + 4
        head = parse_head(raw[:end])
        if isinstance(head, Response):
            return self._refuse("bad_request", head, remote)
        target = self._router.route(head)
        if isinstance(target, Response):
            if not head.is_websocket:  # plain HTTP: not a handshake
                return target
            return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
        accept = handshake_response(head)
        if isinstance(accept, Response):
            return self._refuse("bad_handshake", accept, remote)
        ws = WSConnection(ConnectionType.SERVER, trailing_data=raw[end:])
        request = Request(head.path, target.room.name, head.query, head.headers, remote)
        return _Upgrade(target.route, target.room, ws, accept, request)

    def _refuse(
        self, reason: RefusalReason, response: Response, remote: tuple[str, int] | None
    ) -> Response:
        """Count and log a handshake refused with ``response``; return it."""
        self._refused(reason, response.status, remote)
        return response

    def _refused(
        self, reason: RefusalReason, status: int | None, remote: tuple[str, int] | None
    ) -> None:
        """Count a refused handshake, and log it (at DEBUG: anyone can send these).

        ``status`` is the answer's; None when the client is dropped without one.
        """
        self.metrics.refuse(reason)
        if logger.isEnabledFor(logging.DEBUG):
            address = format_address(remote)
            logger.debug(
                "handshake from %s refused: %s %s",
                address,
                "dropped" if status is None else status,
                reason,
                extra={"remote": address, "status": status, "reason": reason},
            )

    def _room_for(self, room_class: type[Room], room: RoomId) -> RoomActor:
        actor = self._rooms.get(room)
        if actor is None:
            actor = RoomActor(room_class, room, self)
            self._rooms[room] = actor
        return actor

    # For roomkit.testing.

    def room_class(self, namespace: str) -> type[Room] | None:
        """The Room class serving the rooms of ``namespace`` (a route prefix), or None."""
        return self._router.route_for(namespace)

    def live_room(self, room: RoomId) -> Room | None:
        """The live Room instance of ``room``; None if it is not live, or hibernates."""
        actor = self._rooms.get(room)
        return None if actor is None else actor._instance

    async def hibernate(self, room: RoomId) -> bool:
        """Hibernate ``room`` now (see ``RoomActor.hibernate_now``); False if it is not live."""
        actor = self._rooms.get(room)
        if actor is None:
            return False
        await actor.hibernate_now()
        return True

    def run_alarm_now(self, room: RoomId) -> bool:
        """Queue ``room``'s alarm to run now, due or not; False if it has none."""
        if room not in self._alarms:
            return False
        self._scheduler.cancel(("alarm", room))
        self._alarm_due(room)
        return True


async def _handshake(
    ssl_context: ssl.SSLContext | None, seconds: float, stream: trio.abc.Stream
) -> tuple[trio.abc.Stream, bytes | Response | None, RefusalReason | None]:
    """The stream to speak on (TLS-wrapped with a context), its request head, and why
    there is none when the client failed.

    The TLS handshake and the head share one deadline, ``seconds`` away: a client that
    finishes neither in time is dropped (``"timeout"``), and so is one whose TLS
    handshake fails (``"tls"``). A client that leaves gives no head and no reason.
    """
    secured: trio.abc.Stream = stream
    with trio.move_on_after(seconds):
        if ssl_context is not None:
            secured = tls = trio.SSLStream(stream, ssl_context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                return secured, None, "tls"
        return secured, await read_head(secured), None
    return secured, None, "timeout"


#: Why the Router refused a WebSocket upgrade, by the status it answered with.
_ROUTE_REFUSALS: Final[dict[int, RefusalReason]] = {
    404: "not_found",
    400: "bad_room_name",
    403: "origin",
}


@attrs.frozen
class _Upgrade:
    """A valid WebSocket handshake for ``room``, an instance of ``room_class``."""

    room_class: type[Room]
    room: RoomId
    ws: WSConnection
    accept: bytes
    request: Request
