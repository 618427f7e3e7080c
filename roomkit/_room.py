"""The Room base class: subclass it and fill in the hooks you need."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from ._closecodes import CloseCode
from ._core.history import History
from ._core.limits import MAX_CONNECTIONS, MAX_MESSAGE_SIZE, MAX_REQUEST_SIZE, RATE_LIMIT
from ._core.presence import default_key
from ._core.ratelimit import RateLimit
from ._protocol import Protocol as MessageProtocol
from ._stubs import Rooms, check_rpc_methods

if TYPE_CHECKING:
    from ._connection import Connection
    from ._core.alarms import AlarmInfo
    from ._core.frontdoor import Response
    from ._request import Request
    from ._storage import Storage

__all__ = ["Room", "RoomBackend", "instantiate"]

logger = logging.getLogger("roomkit.room")


class RoomBackend(Protocol):
    """What a Room needs of the actor that runs it (``RoomActor``)."""

    @property
    def name(self) -> str: ...

    def connections(self, tag: str | None) -> list[Connection]:
        """The room's open connections, or those carrying ``tag``, in join order."""

    def broadcast(
        self,
        message: Any,
        tag: str | None,
        exclude: Connection | Iterable[Connection] | None,
        volatile: bool,
    ) -> int:
        """Send ``message`` to ``connections(tag)`` but ``exclude``; how many it went to.
        Logged in the room's history unless ``volatile`` (or outside a hook)."""

    def log_fields(self, conn: Connection | None = None) -> dict[str, Any]:
        """The fields of a log line about the room, or about ``conn`` in it."""

    def wall_time(self) -> float:
        """Seconds since the epoch, on the clock the room's alarms keep."""

    @property
    def rooms(self) -> Rooms:
        """The server's rooms, to call from this room's turns (their chain rides along)."""

    def unhandled(self, error: Exception) -> None:
        """A hook's ``error`` reached ``on_error``'s default, which logged it."""

    def resumed(self, conn: Connection) -> bool:
        """Whether ``conn``'s running turn took up a parked session (no on_connect)."""

    def presence(self) -> dict[str, list[dict[str, Any]]]:
        """Every presence key of the room and its metas, in the room's order (copies)."""


class Room:
    """One live actor per room name: subclass this and override the hooks you need.

    roomkit creates the instance when the first event for its name arrives, and calls
    its hooks one at a time, in the order the events arrived: a hook runs to completion
    (including its awaits) before the next one starts, so a room's state needs no locks.
    Every hook is optional.

    What a hook sends (``send``, ``broadcast``, ``close``) is held back until the hook
    returns and then released to the sockets; if the hook raises, it is dropped and
    :meth:`on_error` runs instead.

    Class attributes configure the room:

    Attributes:
      protocol: the typed messages of the room, or None for raw ``str``/``bytes``.
      max_message_size: bytes; a bigger incoming message closes its connection with 1009.
      max_connections: connections the room accepts at once; more are refused with 503.
      max_send_queue: bytes that may wait for one connection (queued, being written, or
        held by the output gate); a connection that would pass it is closed with 1008
        "slow consumer" and its queue freed. 1 MiB by default.
      rate_limit: a token bucket for each connection's incoming messages
        (auto-responses included); 100 a second with bursts of 200 by default, None for
        no limit. A message with no token is dropped and answered with an error; a peer
        that keeps flooding is closed with 1008.
      idle_timeout: seconds; a connection that sends nothing for that long is closed
        with 1000 "Idle timeout". None (the default) never closes a quiet connection.
      hibernate_after: seconds without an event before the Room instance is dropped
        (its sockets, tags, attachments and alarm stay; the next event makes a new
        instance). None never hibernates.
      auto_response: ``(request, response)``: a message equal to ``request`` (``str`` or
        ``bytes``) is answered with ``response`` by the connection itself, without
        waking the room or calling ``on_message``.
      ping_interval: seconds between WebSocket pings to each connection; None sends none.
      ping_timeout: seconds a peer has to answer a ping before its TCP connection is
        dropped (``on_close`` then gets 1006).
      max_request_size: bytes; the largest body of a plain HTTP request to the room
        (:meth:`on_request`; 413 beyond it), and of a call's encoded arguments.
      history: a :class:`roomkit.History` to number and log the room's broadcasts, so
        that a roomkit client that comes back gets exactly those it missed
        (docs/recovery.md); None (the default) logs nothing.
      session_grace: seconds a roomkit client's session outlives a connection that
        ended abruptly (no close frame: 1006, a ping timeout): parked (``AWAY``, not
        among :meth:`connections`), it resumes as the same Connection if its client
        comes back in time; :meth:`on_close` runs when the grace ends. None: never.
    """

    protocol: ClassVar[MessageProtocol | None] = None
    max_message_size: ClassVar[int] = MAX_MESSAGE_SIZE
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    max_send_queue: ClassVar[int] = 1 << 20
    rate_limit: ClassVar[RateLimit | None] = RATE_LIMIT
    idle_timeout: ClassVar[float | None] = None
    hibernate_after: ClassVar[float | None] = 10.0
    auto_response: ClassVar[tuple[str | bytes, str | bytes] | None] = None
    ping_interval: ClassVar[float | None] = 20.0
    ping_timeout: ClassVar[float] = 20.0
    max_request_size: ClassVar[int] = MAX_REQUEST_SIZE
    history: ClassVar[History | None] = None
    session_grace: ClassVar[float | None] = 15.0

    _roomkit_actor: RoomBackend
    _roomkit_storage: Storage

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.protocol is not None and not isinstance(cls.protocol, MessageProtocol):
            raise TypeError(f"{cls.__name__}.protocol must be a roomkit.Protocol or None")
        if cls.rate_limit is not None and not isinstance(cls.rate_limit, RateLimit):
            raise TypeError(f"{cls.__name__}.rate_limit must be a roomkit.RateLimit or None")
        if cls.history is not None and not isinstance(cls.history, History):
            raise TypeError(f"{cls.__name__}.history must be a roomkit.History or None")
        for attr in ("max_message_size", "max_connections", "max_send_queue", "max_request_size"):
            value = getattr(cls, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{cls.__name__}.{attr} must be a positive int, not {value!r}")
        for attr in (
            "idle_timeout",
            "hibernate_after",
            "ping_interval",
            "ping_timeout",
            "session_grace",
        ):
            seconds = getattr(cls, attr)
            if seconds is None and attr != "ping_timeout":
                continue
            if not _positive_number(seconds):
                also = "" if attr == "ping_timeout" else " or None"
                raise ValueError(f"{cls.__name__}.{attr} must be positive seconds{also}")
        pair = cls.auto_response
        if pair is not None and not (
            isinstance(pair, tuple)
            and len(pair) == 2
            and all(isinstance(part, str | bytes) for part in pair)
        ):
            raise TypeError(
                f"{cls.__name__}.auto_response must be a (request, response) pair "
                "of str or bytes, or None"
            )
        check_rpc_methods(cls, Room)

    @property
    def name(self) -> str:
        """The room's name: the last segment of the URL its clients connected to."""
        return self._roomkit_actor.name

    @property
    def storage(self) -> Storage:
        """The room's durable key-value storage and alarm; see :class:`roomkit.Storage`."""
        return self._roomkit_storage

    @property
    def rooms(self) -> Rooms:
        """The server's rooms, to call other rooms' ``@rpc`` methods from this room's
        hooks: ``await self.rooms.get("b").method(...)``.

        A call from a turn that the callee's own turn waits on (A calls B, which calls
        A; A calls A) raises ``RoomCallCycle`` at once instead of deadlocking. Two calls
        crossing from independent turns (A calls B while B calls A) each wait for the
        other's room: the timeout bounds them.
        """
        return self._roomkit_actor.rooms

    def connections(self, tag: str | None = None) -> list[Connection]:
        """The room's open connections, or only those carrying ``tag``, in join order."""
        return self._roomkit_actor.connections(tag)

    def time(self) -> float:
        """The wall clock, in seconds since the epoch: what ``Date.now() / 1000`` is to a
        Durable Object, the clock the room's alarms keep.

        ``time.time()`` in a server. Under ``roomkit.testing`` it follows Trio's clock
        (from the wall time at which the test server started), so a room that measures
        staleness with it sees the time that ``trio.sleep`` and alarms see, under
        ``autojump_clock`` too; ``time.time()`` there does not move with them.
        """
        return self._roomkit_actor.wall_time()

    def broadcast(
        self,
        message: Any,
        *,
        tag: str | None = None,
        exclude: Connection | Iterable[Connection] | None = None,
        volatile: bool = False,
    ) -> int:
        """Send ``message`` to every open connection (or those carrying ``tag``).

        The message is encoded once for all recipients (once per form: plain, and the
        roomkit.v1 envelope). Never blocks: each recipient's copy is queued on its
        connection. In a room with a :attr:`history`, a broadcast made in a hook gets
        the room's next sequence number and is logged in the hook's transaction, to be
        replayed to clients that missed it (docs/recovery.md).

        Args:
          message: ``str`` (a text frame), ``bytes`` (binary), or a message of
            ``protocol.server``.
          tag: only connections carrying this tag.
          exclude: a connection, or an iterable of them, to leave out.
          volatile: never logged nor replayed (typing indicators, cursors).

        Returns:
          How many connections the message was queued for.
        """
        return self._roomkit_actor.broadcast(message, tag, exclude, volatile)

    def presence(self) -> dict[str, list[dict[str, Any]]]:
        """Who is here: each presence key and its metas, in the room's order (metas in
        the order they joined; keys in the order they appeared: docs/presence.md).

        A meta is a connection's ``conn.presence`` plus ``"ref"``, its ``conn.id``; two
        tabs of one user are one key with two metas. Only connections that set a
        presence are in it; a parked session keeps its own until its grace ends
        (docs/presence.md). The lists are copies.
        """
        return self._roomkit_actor.presence()

    def presence_key(self, conn: Connection) -> str:
        """The key ``conn`` is tracked under when it sets ``conn.presence``.

        By default its user: the first of its tags of the form ``user:<id>`` gives
        ``<id>``; a connection without one is keyed by its ``conn.id``. Override it to
        key connections otherwise (it runs each time a presence is assigned, and each
        time a tracked connection's tags change: a new key moves its meta there).
        """
        return default_key(conn.id, conn.tags)

    async def on_start(self) -> None:
        """Called once after the instance is created, before it handles its first event."""

    async def on_connect(self, conn: Connection, request: Request) -> None:
        """Called during the handshake of a new connection; raise Reject to refuse it.

        ``conn`` is already among :meth:`connections`, and what is sent to it here is
        delivered right after the handshake completes.
        """

    async def on_resync(self, conn: Connection) -> None:
        """Called when a roomkit client asked to recover what it missed and cannot be
        given it whole (too old, too many, another epoch): its welcome said
        ``recovered: false`` and nothing was replayed, so it must be sent the room's
        state afresh.

        The default, for a resumed session (``on_connect`` did not run for it), runs
        ``on_connect(conn, conn.request)`` again, so that the room sends its initial
        state (a :class:`~roomkit.Reject` there closes the connection with 1008 and its
        reason); for a fresh connection it does nothing: ``on_connect`` has just run.
        """
        if self._roomkit_actor.resumed(conn):
            await self.on_connect(conn, conn.request)

    async def on_message(self, conn: Connection, message: Any) -> None:
        """Called for each message: ``str``/``bytes``, or a decoded ``protocol.client`` one."""

    async def on_close(self, conn: Connection, code: int, reason: str, was_clean: bool) -> None:
        """Called once a connection has closed; it is no longer among :meth:`connections`.

        ``was_clean`` is False when the closing handshake did not complete: the TCP
        connection ended first (``code`` 1006), or the peer broke the protocol and was
        dropped (1002, or 1007 for invalid UTF-8).
        """

    async def on_alarm(self, info: AlarmInfo) -> None:
        """Called when the room's alarm (``storage.set_alarm``) comes due.

        The alarm is deleted just before; set a new one here to repeat. If this raises,
        its writes are rolled back and it is retried with exponential backoff (2, 4, 8,
        16, 32, 64 s, plus up to a quarter more), at most 6 times; ``info.retry_count``
        counts the retries. Runs even if nobody is connected.
        """

    async def on_request(self, request: Request) -> Response:
        """Answer a plain HTTP request to the room's path (``curl -X POST .../lobby``),
        as one turn of the room: in order with its other events, a transaction whose
        response goes out once its writes are durable. Any method; ``request.body`` is
        the body, up to ``max_request_size`` bytes (413 beyond it).

        A room whose class does not override this answers plain HTTP with 426, as a
        WebSocket endpoint does; this base version is never called. If it raises, the
        client gets 500, the turn's writes and sends are dropped, and :meth:`on_error`
        runs (with ``conn`` None).
        """
        raise NotImplementedError("a room that answers HTTP overrides on_request")

    async def on_error(self, conn: Connection | None, error: Exception) -> None:
        """Called when a hook raised ``error`` (its sends were dropped).

        ``conn`` is the connection whose event was being handled, or None (``on_start``,
        ``on_alarm``).
        The default logs the error with its traceback and closes ``conn`` with 1011.
        """
        fields = self._roomkit_actor.log_fields(conn)
        logger.error("room %r: unhandled error in a hook", self.name, exc_info=error, extra=fields)
        self._roomkit_actor.unhandled(error)
        if conn is not None:
            conn.close(CloseCode.INTERNAL_ERROR, "Internal error")


def _positive_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value > 0


R = TypeVar("R", bound=Room)


def instantiate(cls: type[R], backend: RoomBackend, storage: Storage) -> R:
    """A new instance of ``cls``, run by ``backend`` with ``storage``.

    Both are bound before ``__init__`` runs, so that ``name``, ``connections()`` and
    ``storage`` work in it. Raises what ``__init__`` raises.
    """
    room = cls.__new__(cls)
    room._roomkit_actor = backend
    room._roomkit_storage = storage
    cls.__init__(room)
    return room
