"""The gateway: the server's front door, one task per new TCP connection.

:class:`Gateway` reads each new connection's request head (through TLS if need be),
answers plain HTTP, refuses what it must (``_core/frontdoor.py`` decides), asks the
user's route hook, if any, for the room, and hands each WebSocket upgrade to its room,
which the room host finds or makes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType

from ._accept import Head, remote_address
from ._core.frontdoor import RequestHead, Response, RoomTarget, Router, handshake_response
from ._errors import Reject
from ._host import Host
from ._logs import format_address
from ._metrics import Metrics, RefusalReason
from ._request import Request, RouteHook
from ._room import Room
from ._roomid import RoomId
from ._transport import Transport

__all__ = ["Gateway", "Handshake"]

logger = logging.getLogger("roomkit.server")

#: Seconds a plain-HTTP answer over TLS waits for the client's close_notify.
_TLS_CLOSE_TIMEOUT: Final = 1.0
#: What a request gets when the front door itself fails (a bug of roomkit's)...
_INTERNAL_ERROR: Final = Response(500, "Internal error").to_bytes()
#: ...and the seconds it may take to go out: a peer that does not read is dropped.
_ERROR_ANSWER_TIMEOUT: Final = 1.0
#: What a handshake gets when the route hook raised (anything but Reject)...
_ROUTE_FAILED: Final = Response(500, "Internal error")
#: ...or took longer than the handshake timeout: a slow service it awaits, say.
_ROUTE_TIMED_OUT: Final = Response(503, "Routing timed out")

#: Reads a new connection's request head, through TLS if need be: see ``_accept.read_request``.
Handshake = Callable[
    [trio.abc.Stream],
    Awaitable[tuple[trio.abc.Stream, Head | Response | None, RefusalReason | None]],
]


class Gateway:
    """The front door: what each new connection gets, and the hand-off to its room.

    Args:
      host: the room host, which finds or makes the room of a handshake.
      router: decides what each request head gets.
      metrics: the server's counters (refusals).
      handshake: reads a new connection's request head.
      max_connections: WebSocket connections the server holds at once, or None.
      route: the user's route hook (``serve``'s ``route``), or None to route by path.
      route_timeout: the seconds the route hook has to choose.
    """

    def __init__(
        self,
        host: Host,
        router: Router[type[Room]],
        metrics: Metrics,
        handshake: Handshake,
        max_connections: int | None,
        *,
        route: RouteHook | None = None,
        route_timeout: float = math.inf,
    ) -> None:
        self._host = host
        self._router = router
        self._metrics = metrics
        self._handshake = handshake  # the request head, through TLS if need be
        self._max_connections = max_connections
        self._route = route
        self._route_timeout = route_timeout

    async def front_door(self, stream: trio.abc.Stream) -> None:
        """Read one request head; answer it, or hand the stream to its room.

        Whatever goes wrong here ends this connection only: a failure of roomkit's own
        (a bug) is logged with its traceback, counted (refused, ``internal_error``), and
        answered with 500 if nothing was sent yet; the stream is closed unless a room
        took it.
        """
        visit = _Visit(stream)
        try:
            await self._serve_visit(visit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            await self._door_failed(visit)
        finally:
            if not visit.handed_off:
                await trio.aclose_forcefully(stream)

    async def _serve_visit(self, visit: _Visit) -> None:
        stream = visit.stream
        secured, head, failure = await self._handshake(stream)
        remote = visit.remote = remote_address(stream)
        if head is None:
            if failure is not None:
                self._refused(failure, None, remote)
            return  # silent, slow, gone, or not speaking TLS: nobody to answer
        visit.secured = secured
        if isinstance(head, Response):
            decision: Response | Upgrade = self._refuse(_HEAD_REFUSALS[head.status], head, remote)
        else:
            decision = await self._decide(head, remote)
        full = self._max_connections is not None and self._host.connections >= self._max_connections
        if self._host.closing and not isinstance(decision, Response):
            # A head read just as shutdown began: no room takes it. (The front door
            # is cancelled by then, so the 503 goes no further than the attempt.)
            decision = self._refuse("shutting_down", Response(503, "Server shutting down"), remote)
        elif full and not isinstance(decision, Response):
            decision = self._refuse("server_full", Response(503, "Server is full"), remote)
        if isinstance(decision, Response):
            visit.answered = True
            await secured.send_all(decision.to_bytes())
            if secured is not stream:  # end TLS properly: close_notify, not a bare EOF
                with trio.move_on_after(_TLS_CLOSE_TIMEOUT):
                    await secured.aclose()
            return
        actor = self._host.room_for(decision.room_class, decision.room)
        actor.admit(Transport(actor, secured, decision.ws, decision.accept, decision.request))
        visit.handed_off = True

    async def _door_failed(self, visit: _Visit) -> None:
        """Log and count a failure of the front door's own; answer 500 if it still can.

        Called from an ``except`` block, whose exception is logged.
        """
        address = format_address(visit.remote)
        logger.exception("front door: serving %s failed", address, extra={"remote": address})
        self._metrics.refuse("internal_error")
        if visit.secured is None or visit.answered:
            return  # no request read (or, with TLS, no handshake done), or half answered
        gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)
        with trio.move_on_after(_ERROR_ANSWER_TIMEOUT), gone:
            await visit.secured.send_all(_INTERNAL_ERROR)

    async def _decide(self, read: Head, remote: tuple[str, int] | None) -> Response | Upgrade:
        head = read.request
        target: RoomTarget[type[Room]] | Response | None = None  # None: the hook chooses
        if self._route is None or not head.is_websocket:
            target = self._router.route(head)
            if isinstance(target, Response):
                if not head.is_websocket:  # plain HTTP: not a handshake
                    return target
                return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
        accept = handshake_response(head)
        if isinstance(accept, Response):
            return self._refuse("bad_handshake", accept, remote)
        if target is None:  # the route hook chooses
            target = await self._hooked(head, remote)
        if isinstance(target, Response):
            return target
        ws = WSConnection(ConnectionType.SERVER, trailing_data=read.rest)
        request = Request(head.path, target.room.name, head.query, head.headers, remote)
        return Upgrade(target.route, target.room, ws, accept, request)

    async def _hooked(
        self, head: RequestHead, remote: tuple[str, int] | None
    ) -> RoomTarget[type[Room]] | Response:
        """The room the route hook chooses for ``head``, or the refusal it leads to.

        The hook has ``route_timeout`` seconds; a failure of its own (anything it
        raises but Reject, or a choice that is no choice) is logged, and ends this
        handshake only.
        """
        refusal = self._router.check_origin(head)
        if refusal is not None:
            return self._refuse("origin", refusal, remote)
        asked = Request(
            head.path, self._router.path_room(head.path), head.query, head.headers, remote
        )
        address = format_address(remote)
        try:
            with trio.move_on_after(self._route_timeout) as deadline:
                choice = await _called(self._route, asked)
            if deadline.cancelled_caught:
                logger.warning(
                    "route hook: no room for %s in time", address, extra={"remote": address}
                )
                return self._refuse("error", _ROUTE_TIMED_OUT, remote)
            if not isinstance(choice, Reject):
                target = self._router.choose(head.path, choice)
                if isinstance(target, Response):
                    return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
                return target
        except Reject as reject:
            choice = reject
        except Exception:
            logger.exception("route hook failed for %s", address, extra={"remote": address})
            return self._refuse("error", _ROUTE_FAILED, remote)
        return self._refuse("rejected", Response(choice.status, choice.reason), remote)

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
        self._metrics.refuse(reason)
        if logger.isEnabledFor(logging.DEBUG):
            address = format_address(remote)
            logger.debug(
                "handshake from %s refused: %s %s",
                address,
                "dropped" if status is None else status,
                reason,
                extra={"remote": address, "status": status, "reason": reason},
            )


#: Why a request head was refused as it was read, by the status it got.
_HEAD_REFUSALS: Final[dict[int, RefusalReason]] = {431: "too_large", 400: "bad_request"}
#: Why the Router refused a WebSocket upgrade, by the status it answered with.
_ROUTE_REFUSALS: Final[dict[int, RefusalReason]] = {
    404: "not_found",
    400: "bad_room_name",
    403: "origin",
}


async def _called(hook: RouteHook | None, request: Request) -> object:
    """What ``hook`` returns for ``request``, awaited if it is awaitable."""
    assert hook is not None  # asked only of a gateway that has one
    choice = hook(request)
    return await choice if inspect.isawaitable(choice) else choice


@attrs.define
class _Visit:
    """One connection at the front door: how far it got, for when something fails."""

    stream: trio.abc.Stream
    #: The stream to answer on (through TLS if need be), once a request head was read.
    secured: trio.abc.Stream | None = None
    remote: tuple[str, int] | None = None
    answered: bool = False  # an answer began to go out
    handed_off: bool = False  # a room took the stream


@attrs.frozen
class Upgrade:
    """A valid WebSocket handshake for ``room``, an instance of ``room_class``."""

    room_class: type[Room]
    room: RoomId
    ws: WSConnection
    accept: bytes
    request: Request
