"""The gateway: the server's front door, one task per new TCP connection.

:class:`Gateway` reads each new connection's request head (through TLS if need be),
answers plain HTTP, refuses what it must (``_core/frontdoor.py`` decides), asks the
user's route hook, if any, for the room, and hands each WebSocket upgrade to its room,
which the room host finds or makes. In a worker of ``--workers N``, an upgrade for a
room that lives in another worker is handed to that worker (``_handoff.py``), whose
gateway carries on with it where this one left off (:meth:`Gateway.adopt`).

In a cluster (``storage="postgresql://..."``), the room is located after the route:
served here if this process holds it or nobody live does (unless another node
forwarded it: its directory was stale, and the room is as free for it; ``_core/location.py``),
handed to the sibling worker that owns it, or forwarded to the node that owns it
(``_forward.py``); 503 while this process's lease has run out, or when the owner cannot
be reached. A handshake another node forwarded carries a signed ``roomkit-forwarded``
header: once verified, the client's address is the header's and the handshake is
never forwarded again; a bad header gets 403 (``_core/clusterauth.py``).

A plain request to a room whose class has ``on_request`` is routed the same way (a
:class:`Plain` beside :class:`Upgrade`): where its room lives, the gateway reads its
body (``BodyReader`` decides framing and limits), sends the room an ``HttpRequest``,
and writes the answer the room gives once its turn is durable.

A request with a ``roomkit-call`` header is a call of an ``@rpc`` method from another
process of this server (``_calls.py``): a POST into the room's path, routed like any
plain request but with no route hook, no origin check, and to a room whether it
answers HTTP or not. It is trusted when it is this process's own (an internal visit:
:meth:`Gateway.internal`) or a sibling worker's own (a hand-off marked ``trusted``);
any other, read from the network, must be signed with the cluster's secret, which the
room's owner checks once it has read the body (``_core/calls.py``'s ``verify_call``,
replays to this process included): 403 otherwise; and 403 at once, before routing,
when there is no secret to check it with or its signature is missing, malformed or
stale (``auth_problem``). Where it runs,
the owner runs it as a local call is run (``Calls.run_here``) and writes its answer
body as JSON; 503 when it cannot (shutting down).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Final

import attrs
import trio

from ._accept import Head, read_head, remote_address
from ._cluster import Member
from ._core.calls import (
    AUTH_HEADER,
    CALL_HEADER,
    TIMEOUT_HEADER,
    MethodCodec,
    SeenCalls,
    auth_problem,
    call_timeout,
    rpc_function,
    verify_call,
)
from ._core.clusterauth import HEADER, Relayed, Untrusted, verified_remote
from ._core.envelope import split_query
from ._core.frontdoor import (
    BodyReader,
    RequestHead,
    Response,
    RoomTarget,
    Router,
    handshake_response,
    parse_head,
)
from ._core.handoff import Handoff, HandoffError, HandTo, Refuse, where
from ._core.limits import TLS_CLOSE_TIMEOUT
from ._core.location import ForwardTo, ServeHere
from ._errors import Reject
from ._forward import Forwarded, Forwards
from ._handoff import Handed, Peers
from ._host import Host
from ._logs import format_address
from ._metrics import Metrics, RefusalReason
from ._request import Request, RouteHook
from ._room import Room
from ._roomid import RoomId
from ._transport import Transport

__all__ = ["Gateway", "Handshake", "Plain", "Upgrade", "answers_http"]

logger = logging.getLogger("roomkit.server")

#: What a request gets when the front door itself fails (a bug of roomkit's)...
_INTERNAL_ERROR: Final = Response(500, "Internal error").to_bytes()
#: ...and the seconds it may take to go out: a peer that does not read is dropped.
_ERROR_ANSWER_TIMEOUT: Final = 1.0
#: What a handshake gets when the route hook raised (anything but Reject)...
_ROUTE_FAILED: Final = Response(500, "Internal error")
#: ...or took longer than the handshake timeout: a slow service it awaits, say.
_ROUTE_TIMED_OUT: Final = Response(503, "Routing timed out")
#: What a handshake gets when its room's worker cannot take it (restarting, say), or
#: when it was handed to a worker that does not hold its room; in a cluster, also when
#: this process's lease has run out, or the room's owner cannot be reached.
_UNAVAILABLE: Final = Response(503, "Service unavailable")
#: What a cluster's handshake gets whose head cannot be forwarded as it was read.
_UNFORWARDABLE: Final = Response(400, "Bad request: bytes after the request head's end")
#: What a plain request gets whose body did not arrive within the handshake timeout.
_BODY_TIMED_OUT: Final = Response(408, "Request timeout: the body came too slowly")
#: What a request with a ``roomkit-call`` header gets from the network when this
#: server has no cluster secret to verify it with: a call is roomkit's own.
_FORGED_CALL: Final = Response(403, f"Forbidden: {CALL_HEADER} is roomkit's own")
#: What a call of this process's own gets when its room lives on another node of a
#: cluster that has no secret to sign it with.
_UNSIGNABLE_CALL: Final = Response(
    403,
    "Forbidden: a call to a room of another node must be signed with the cluster's "
    "secret: serve every node with --cluster-secret (cluster_secret=)",
)
#: The body of a call's answer: the JSON of ``_core/calls.py``.
_JSON: Final = "application/json"
#: Bytes asked of the socket per read while a plain request's body arrives.
_BODY_CHUNK: Final = 64 * 1024

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
      peers: in a worker of ``--workers N``, where rooms live and how to hand a
        connection to its room's worker; None serves every room here.
      pages: plain ``GET`` pages made by awaiting (a worker's merged ``/metrics``),
        served before the router's.
      member: in a cluster, this process's membership: its lease, the directory.
      forwards: in a cluster, the connections forwarded to other nodes.
      cluster_secret: the cluster's secret, which a forwarded handshake's
        ``roomkit-forwarded`` header must be signed with; None trusts no address in it.
      handshake_timeout: the seconds from a connection's start within which a plain
        request's body must have arrived (408 after).

    Plain requests to a room that answers HTTP are routed as upgrades are (route hook,
    origin check, hand-off, forwarding); the body is read where the room lives, then
    the request goes to the room as one turn, and its answer is written back. While it
    waits for the room, it counts toward ``max_connections`` with the WebSockets.
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
        peers: Peers | None = None,
        pages: Mapping[str, Callable[[], Awaitable[Response]]] | None = None,
        member: Member | None = None,
        forwards: Forwards | None = None,
        cluster_secret: bytes | None = None,
        handshake_timeout: float = math.inf,
    ) -> None:
        self._host = host
        self._router = router
        self._metrics = metrics
        self._handshake = handshake  # the request head, through TLS if need be
        self._max_connections = max_connections
        self._route = route
        self._route_timeout = route_timeout
        self._peers = peers
        self._pages = pages or {}
        self._member = member
        self._forwards = forwards
        self._secret = cluster_secret
        self._handshake_timeout = handshake_timeout
        self._requests = 0  # plain requests decided, until their answers are written
        self._turns: trio.Nursery | None = None  # see run
        self._seen_calls = SeenCalls()  # the calls verified here: a replay gets 403

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the plain requests whose bodies are read, until cancelled: from then on
        each is its room's to answer, so it goes on outside the front door's scope.
        At shutdown the front door is cancelled, and these are still answered (by their
        turn, or with 503 by their draining room) instead of cut off with nothing: a
        client must learn whether its POST took effect. The server cancels this once
        the rooms are done."""
        try:
            async with trio.open_nursery() as nursery:
                self._turns = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._turns = None  # a closed nursery takes no task: answer in the visit

    async def front_door(self, stream: trio.abc.Stream) -> None:
        """Read one request head; answer it, or hand the stream to its room (or to the
        worker of its room).

        Whatever goes wrong here ends this connection only: a failure of roomkit's own
        (a bug) is logged with its traceback, counted (refused, ``internal_error``), and
        answered with 500 if nothing was sent yet; the stream is closed unless a room
        (or a relay to its worker) took it.
        """
        visit = _Visit(stream)
        await self._guarded(visit, partial(self._serve_visit, visit))

    async def internal(self, stream: trio.abc.Stream) -> None:
        """Serve a call of this process's own (``Calls``): its request head and body
        come on ``stream`` (one end of a socket pair) as a client's would, and it is
        routed as theirs are, but trusted: no signature, route hook or origin check.
        Its answer goes back on ``stream``, which this closes."""
        visit = _Visit(stream, secured=stream, internal=True)
        await self._guarded(visit, partial(self._serve_internal, visit))

    async def _serve_internal(self, visit: _Visit) -> None:
        with trio.move_on_after(self._handshake_timeout):
            head = await read_head(visit.stream)
        if head is None:
            return  # the caller gave up
        decision = head if isinstance(head, Response) else self._call(head, None, trusted=True)
        await self._conclude(visit, decision, handed=False)

    def prepare(self, handoff: Handoff) -> Upgrade | Plain:
        """The upgrade or plain request another worker handed here, rebuilt as it
        routed it: the same head, first bytes, room and address; the route hook does
        not run again.

        Raises:
          HandoffError: if the head is no valid WebSocket handshake nor a plain request
            to a room that answers HTTP, or no route here serves its room (the workers
            disagree: they run different code).
        """
        head = parse_head(handoff.head)
        if isinstance(head, Response):
            raise HandoffError("a hand-off's request head is no HTTP request")
        room_class = self._router.route_for(handoff.room.namespace)
        if room_class is None:
            raise HandoffError(f"no route here serves the room {handoff.room} handed here")
        headers = self._room_headers(head)
        request = Request(
            head.path, handoff.room.name, head.query, headers, handoff.remote, head.method
        )
        read = Head(head, handoff.rest, handoff.head)
        if CALL_HEADER in head.headers:  # a call reaches any room, on_request or not
            return Plain(room_class, handoff.room, read, request, trusted=handoff.trusted)
        if not head.is_websocket:
            if isinstance(self._router.answering(RoomTarget(room_class, handoff.room)), Response):
                raise HandoffError(
                    f"a plain request handed here for {handoff.room}, which has no on_request"
                )
            return Plain(room_class, handoff.room, read, request)
        accept = handshake_response(head)
        if isinstance(accept, Response):
            raise HandoffError(f"a hand-off's handshake is refused here: {accept.body!r}")
        return Upgrade(room_class, handoff.room, read, accept, request)

    async def adopt(self, stream: trio.abc.Stream, handed: Upgrade | Plain) -> None:
        """Carry on with a connection another worker handed here (its socket, or the
        Unix stream of a relay), as :meth:`prepare` made it: this worker checks again
        that it holds the room (else 503), then its limits, and gives it to the room
        (a plain request's body is read here, within a handshake timeout from now)."""
        visit = _Visit(stream, secured=stream, remote=handed.request.remote)
        visit.bodiless = handed.request.method == "HEAD"
        await self._guarded(visit, partial(self._conclude, visit, handed, handed=True))

    async def _guarded(self, visit: _Visit, serve: Callable[[], Awaitable[None]]) -> None:
        """Run ``serve`` for ``visit``; a failure ends this connection only."""
        try:
            await serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            await self._door_failed(visit)
        finally:
            if not visit.handed_off:
                await trio.aclose_forcefully(visit.stream)

    async def _serve_visit(self, visit: _Visit) -> None:
        stream = visit.stream
        secured, head, failure = await self._handshake(stream)
        remote = visit.remote = remote_address(stream)
        if head is None:
            if failure is not None:
                self._refused(failure, None, remote)
            return  # silent, slow, gone, or not speaking TLS: nobody to answer
        visit.secured = secured
        visit.bodiless = not isinstance(head, Response) and head.request.method == "HEAD"
        if isinstance(head, Response):
            decision: Response | Upgrade | Plain = self._refuse(
                _HEAD_REFUSALS[head.status], head, remote
            )
        elif (forged := self._relayed(visit, head)) is not None:
            decision = self._refuse("forged", forged.response(), remote)
        elif CALL_HEADER in head.request.headers:
            decision = self._call(head, visit.remote, trusted=False)
        else:
            decision = await self._decide(head, visit.remote)
        await self._conclude(visit, decision, handed=False)

    def _relayed(self, visit: _Visit, head: Head) -> Untrusted | None:
        """In a cluster, check a request's ``roomkit-forwarded`` header, if any (a plain
        request's too, signed with an empty key): once verified, the visit is
        ``forwarded`` and its address the client's; or why the header is refused."""
        if self._member is None:
            return None
        relayed = verified_remote(head.request, self._secret, now=time.time())
        if isinstance(relayed, Relayed):
            visit.forwarded = True
            if relayed.client is not None:
                visit.remote = relayed.client
            return None
        return relayed

    async def _conclude(
        self, visit: _Visit, decision: Response | Upgrade | Plain, *, handed: bool
    ) -> None:
        """Answer ``decision``, or take its upgrade or plain request to its room, here
        or in its worker (or node)."""
        remote = visit.remote
        if self._host.closing and not isinstance(decision, Response) and not visit.internal:
            # A head read just as shutdown began: no room takes it. (The front door
            # is cancelled by then, so the 503 goes no further than the attempt.) A
            # draining room's own calls still go out.
            decision = self._refuse("shutting_down", Response(503, "Server shutting down"), remote)
        elif not isinstance(decision, Response) and self._member is not None:
            located = await self._locate(visit, decision, self._member, handed=handed)
            if located is None:
                return  # handed to its worker, or forwarded to its node
            decision = located
        elif not isinstance(decision, Response) and self._peers is not None:
            placed = where(self._peers.placement, decision.room, handed=handed)
            if isinstance(placed, Refuse):
                logger.warning(
                    "room %s: handed here, but it lives in another worker", decision.room
                )
                decision = self._refuse("misplaced", _UNAVAILABLE, remote)
            elif isinstance(placed, HandTo):
                handed_to = await self._hand(visit, decision, self._peers, placed.owner)
                if handed_to is None:
                    return  # handed to its worker
                decision = handed_to
        held = self._host.connections + self._requests
        full = self._max_connections is not None and held >= self._max_connections
        if full and not isinstance(decision, Response):
            decision = self._refuse("server_full", Response(503, "Server is full"), remote)
        secured = visit.secured
        assert secured is not None, "a decision follows a request head"
        if isinstance(decision, Plain):
            await self._serve_plain(visit, secured, decision)
        elif isinstance(decision, Response):
            await self._answer(visit, secured, decision, body=not visit.bodiless)
        else:
            actor = self._host.room_for(decision.room_class, decision.room)
            rest = decision.head.rest
            actor.admit(Transport(actor, secured, rest, decision.accept, decision.request))
            visit.handed_off = True

    async def _answer(
        self, visit: _Visit, secured: trio.abc.Stream, response: Response, *, body: bool = True
    ) -> None:
        """Write ``response`` (without its body: for a HEAD), then end the connection.

        A peer that does not read it within the handshake timeout is dropped: no
        answer holds its task and bytes for ever."""
        visit.answered = True
        with trio.move_on_after(self._handshake_timeout):
            await secured.send_all(response.to_bytes(body=body))
        if secured is not visit.stream:  # end TLS properly: close_notify, not a bare EOF
            with trio.move_on_after(TLS_CLOSE_TIMEOUT):
                await secured.aclose()

    async def _serve_plain(self, visit: _Visit, secured: trio.abc.Stream, plain: Plain) -> None:
        """Read a plain request's body (bounded by its room class's
        ``max_request_size``, within the handshake timeout from the connection's
        start), take it to its room, and write the room's answer.

        The request counts toward ``max_connections`` from its decision (its body
        arriving included) until its answer is written. Once its body is read, its
        turn and answer go on in :meth:`run`'s nursery (unless it is an internal call,
        which runs outside the front door already)."""
        self._requests += 1
        try:
            reader = BodyReader(plain.head.raw, plain.head.rest, plain.room_class.max_request_size)
            with trio.move_on_at(visit.started + self._handshake_timeout):
                if reader.result is None and reader.interim:
                    await secured.send_all(reader.interim)
                while reader.result is None:
                    reader.feed(await secured.receive_some(_BODY_CHUNK))
            body = reader.result
            if isinstance(body, bytes) and self._turns is not None and not visit.internal:
                owner = attrs.evolve(visit, handed_off=False)
                answer = partial(self._answer_outside, owner, secured, plain, body)
                self._turns.start_soon(self._guarded, owner, answer)
                # Only once it is started: else this visit still owns (and closes) it.
                self._requests += 1  # the turn's own, given back when it has answered
                visit.handed_off = True
                return
            await self._answer_plain(visit, secured, plain, body)
        finally:
            self._requests -= 1

    async def _answer_outside(
        self, visit: _Visit, secured: trio.abc.Stream, plain: Plain, body: bytes
    ) -> None:
        try:
            await self._answer_plain(visit, secured, plain, body)
        finally:
            self._requests -= 1

    async def _answer_plain(
        self, visit: _Visit, secured: trio.abc.Stream, plain: Plain, body: bytes | Response | None
    ) -> None:
        """Answer ``plain``, whose body is ``body`` (or the refusal of it; None: it did
        not come in time): its room's answer, or its call's."""
        if body is None:
            response = _BODY_TIMED_OUT
        elif isinstance(body, Response):
            response = body
        elif plain.call is not None:
            response = await self._run_call(visit, plain, body)
        else:
            response = await self._in_room(plain, attrs.evolve(plain.request, body=body))
        if plain.call is None:
            self._metrics.room(plain.room_class).answered(response.status)
        await self._answer(visit, secured, response, body=plain.request.method != "HEAD")

    async def _run_call(self, visit: _Visit, plain: Plain, body: bytes) -> Response:
        """The answer to the call ``plain`` whose body is ``body``, once checked (its
        signature, unless trusted), run on its room here: a JSON answer body.

        While this server shuts down, a call of another process's gets 503 (it is
        tried again where the room goes next); this process's own, from a draining
        room, is refused by ``Calls.run_here``."""
        checked = self._checked_call(plain, body)
        if isinstance(checked, Response):
            forged = checked.status == 403
            return self._refuse("forged", checked, visit.remote) if forged else checked
        codec, seconds = checked
        if self._host.closing and not visit.internal:
            shutting_down = Response(503, "Server shutting down")
            return self._refuse("shutting_down", shutting_down, visit.remote)
        # From the visit's start, not now: the caller's clock ran while this was routed
        # and its body read, and no call may start after its caller gave up on it.
        deadline = visit.started + seconds
        answer = await self._host.calls.run_here(
            plain.room_class, plain.room, codec, body, deadline, elsewhere=not visit.internal
        )
        if answer is None:  # the room moved or ends: tried again where it goes
            return self._refuse("misplaced", _UNAVAILABLE, visit.remote)
        return Response(200, answer, content_type=_JSON)

    def _checked_call(self, plain: Plain, body: bytes) -> Response | tuple[MethodCodec, float]:
        """The codec of the call ``plain`` with ``body``, and the seconds it has; or
        why it is not run: 403 if it is neither trusted nor signed for it with the
        cluster's secret, 404 for a method that is no ``@rpc`` one, 400 for a bad
        timeout."""
        head = plain.head.request
        method = head.headers[CALL_HEADER]
        if not plain.trusted:
            problem: str | None = "no cluster secret to verify it with"
            if self._secret is not None:
                problem = verify_call(
                    head.headers.get(AUTH_HEADER),
                    self._secret,
                    method,
                    head.headers.get(TIMEOUT_HEADER, ""),
                    head.target,
                    body,
                    now=time.time(),
                    seen=self._seen_calls,
                )
            if problem is not None:
                return Response(403, f"Forbidden: {problem}")
        function = rpc_function(plain.room_class, method)
        if function is None:
            return Response(404, f"{plain.room_class.__name__} has no @rpc method {method!r}")
        seconds = call_timeout(head.headers.get(TIMEOUT_HEADER))
        if seconds is None:
            return Response(400, f"Bad request: {TIMEOUT_HEADER} is no number of seconds")
        return MethodCodec.of(function, plain.room_class.protocol), seconds

    async def _in_room(self, plain: Plain, request: Request) -> Response:
        """The answer of ``plain``'s room to ``request``: found, woken or started for
        it; asked again if it ended just as it was found."""
        while not self._host.closing:
            actor = self._host.room_for(plain.room_class, plain.room)
            try:
                return await actor.request(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await trio.lowlevel.checkpoint()  # it ended as it was found: again
        return Response(503, "Server shutting down")

    async def _hand(
        self, visit: _Visit, upgrade: Upgrade | Plain, peers: Peers, slot: str
    ) -> Response | None:
        """Hand ``upgrade`` (or a plain request, its body unread: what was read of it
        goes as the hand-off's ``rest``) to the worker ``slot``: None once it is handed,
        or the refusal it gets (503) if it cannot be."""
        assert visit.secured is not None, "an upgrade follows a request head"
        outcome = await peers.hand(slot, visit.secured, upgrade.handoff())
        if outcome is Handed.NOT_TAKEN:
            return self._refuse("owner_unavailable", _UNAVAILABLE, visit.remote)
        visit.handed_off = outcome is Handed.RELAYED  # else this copy of the socket closes
        return None

    async def _locate(
        self, visit: _Visit, upgrade: Upgrade | Plain, member: Member, *, handed: bool
    ) -> Upgrade | Plain | Response | None:
        """In a cluster: ``upgrade`` if its room is to be served here; else None once it
        is handed to its worker or forwarded to its node, or the refusal it gets."""
        room = upgrade.room
        if not member.valid():
            return self._refuse("lease_expired", _UNAVAILABLE, visit.remote)
        if self._host.serves(room):
            return upgrade  # the common case: no question to the directory
        try:
            # Bounded: a slow PostgreSQL must not park handshakes without limit (the
            # connection limit counts them only once they reach a room).
            with trio.fail_after(self._route_timeout):
                owner = await member.locate(room)
        except Exception as exc:
            logger.warning("room %s: the directory failed: %r", room, exc)
            return self._refuse("owner_unavailable", _UNAVAILABLE, visit.remote)
        decision = member.membership.locate(room, owner, forwarded=visit.forwarded, handed=handed)
        if isinstance(decision, ServeHere):
            return upgrade
        if isinstance(decision, HandTo) and self._peers is not None:
            return await self._hand(visit, upgrade, self._peers, decision.owner)
        if isinstance(decision, ForwardTo) and self._forwards is not None:
            if isinstance(upgrade, Plain) and upgrade.call is not None and self._secret is None:
                return _UNSIGNABLE_CALL  # no client's refusal: the caller's RoomCallError
            return await self._forward(visit, upgrade, self._forwards, decision.address)
        logger.info("room %s: owned elsewhere, and not to be passed on again", room)
        return self._refuse("misplaced", _UNAVAILABLE, visit.remote)

    async def _forward(
        self, visit: _Visit, upgrade: Upgrade | Plain, forwards: Forwards, address: str
    ) -> Response | None:
        """Forward ``upgrade`` (or a plain request, its body unread) to the node at
        ``address``: None once its answer went to the client, or the refusal it gets
        (503: not reachable; the directory's entry is dropped).

        A handshake the owner did not switch was refused there: its room may have
        moved, so the directory's entry is dropped too. A plain request's answer is
        any status: it was passed on, and the entry stands.
        """
        assert visit.secured is not None, "an upgrade follows a request head"
        outcome = await forwards.forward(visit.secured, upgrade.head, visit.remote, address)
        if outcome is Forwarded.MALFORMED:
            return self._refuse("bad_request", _UNFORWARDABLE, visit.remote)
        passed = outcome is Forwarded.SPLICED or (
            isinstance(upgrade, Plain) and outcome is not Forwarded.UNREACHABLE
        )
        if not passed:
            assert self._member is not None, "a cluster forwards"
            self._member.forget(upgrade.room)  # the owner moved, or is gone: ask again
        if outcome is Forwarded.UNREACHABLE:
            return self._refuse("owner_unavailable", _UNAVAILABLE, visit.remote)
        visit.handed_off = True  # the splice owns the stream
        return None

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

    async def _decide(
        self, read: Head, remote: tuple[str, int] | None
    ) -> Response | Upgrade | Plain:
        head = read.request
        if not head.is_websocket:
            return await self._plain(read, remote)
        target: RoomTarget[type[Room]] | Response | None = None  # None: the hook chooses
        if self._route is None:
            target = self._router.route(head)
            if isinstance(target, Response):
                return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
        accept = handshake_response(head)
        if isinstance(accept, Response):
            return self._refuse("bad_handshake", accept, remote)
        if target is None:  # the route hook chooses
            target = await self._hooked(head, remote)
        if isinstance(target, Response):
            return target
        request = Request(head.path, target.room.name, head.query, self._room_headers(head), remote)
        return Upgrade(target.route, target.room, read, accept, request)

    def _call(
        self, read: Head, remote: tuple[str, int] | None, *, trusted: bool
    ) -> Response | Plain:
        """A call's request (``roomkit-call``), for the room of its path whether that
        answers HTTP or not: no route hook, no origin check. One from the network is
        refused at once if this server has no secret to verify it with, or its
        signature is missing, malformed or stale: before any routing (a directory
        lookup, a hand-off, a forward, a body read) is spent on it. Its owner checks
        the rest (``_checked_call``)."""
        head = read.request
        if not trusted and self._secret is None:
            return self._refuse("forged", _FORGED_CALL, remote)
        if not trusted:
            problem = auth_problem(head.headers.get(AUTH_HEADER), now=time.time())
            if problem is not None:
                return self._refuse("forged", Response(403, f"Forbidden: {problem}"), remote)
        target = self._router.path_target(head.path)
        if isinstance(target, Response):
            return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
        headers = self._room_headers(head)
        request = Request(head.path, target.room.name, head.query, headers, remote, head.method)
        return Plain(target.route, target.room, read, request, trusted=trusted)

    async def _plain(self, read: Head, remote: tuple[str, int] | None) -> Response | Plain:
        """What a plain request gets: the server's page (a GET or HEAD), or its room
        if that room answers HTTP, chosen by the route hook if there is one (which
        runs after the pages, with the origin check, and only if some route answers
        HTTP), else 426 (or a refusal)."""
        head = read.request
        made = self._pages.get(head.path) if head.method in ("GET", "HEAD") else None
        if made is not None:
            return await made()
        if self._route is None or not self._router.answers_http:
            target = self._router.route(head)
            if isinstance(target, Response) and target.status == 403:
                return self._refuse("origin", target, remote)
        else:
            target = self._router.page(head) or await self._hooked(head, remote)
            if isinstance(target, RoomTarget):
                target = self._router.answering(target)
        if isinstance(target, Response):
            return target
        headers = self._room_headers(head)
        request = Request(head.path, target.room.name, head.query, headers, remote, head.method)
        return Plain(target.route, target.room, read, request)

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
        by_path = self._router.path_target(head.path)  # once: the hook's choice is often None
        name = "" if isinstance(by_path, Response) else by_path.room.name
        headers = self._room_headers(head)
        query, _ = split_query(head.query)  # roomkit.v1's parameters are roomkit's own
        asked = Request(head.path, name, query, headers, remote, head.method)
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
                target = by_path if choice is None else self._router.choose(head.path, choice)
                if isinstance(target, Response):
                    return self._refuse(_ROUTE_REFUSALS[target.status], target, remote)
                return target
        except Reject as reject:
            choice = reject
        except Exception:
            logger.exception("route hook failed for %s", address, extra={"remote": address})
            return self._refuse("error", _ROUTE_FAILED, remote)
        return self._refuse("rejected", Response(choice.status, choice.reason), remote)

    def _room_headers(self, head: RequestHead) -> Mapping[str, str]:
        """The headers that the route hook and the room see in a :class:`Request`: in a
        cluster, without ``roomkit-forwarded``, the nodes' own, which the front door
        has verified by now (else 403) and which means nothing to a room; its address is
        ``Request.remote``."""
        headers = head.headers
        if self._member is None or HEADER not in headers:
            return headers
        return {name: value for name, value in headers.items() if name != HEADER}

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


def answers_http(room_class: type[Room]) -> bool:
    """Whether ``room_class`` answers plain HTTP: it overrides ``Room.on_request``."""
    return room_class.on_request is not Room.on_request


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
    handed_off: bool = False  # a room took the stream, or a relay to its worker
    forwarded: bool = False  # another node of the cluster forwarded it here
    bodiless: bool = False  # a HEAD: its answer goes without a body
    internal: bool = False  # a call of this process's own (``Gateway.internal``)
    #: When the connection reached this process (its body is due a handshake timeout later).
    started: float = attrs.Factory(trio.current_time)


@attrs.frozen
class Plain:
    """A plain HTTP request for ``room``, an instance of ``room_class``, which answers
    HTTP: its request head as read (and what was read of its body), and its
    :class:`Request` (without the body, which is read where the room lives). Or a call
    (:attr:`call`), to a room that answers HTTP or not; ``trusted`` if it is one of
    this server's own, whose signature is not checked."""

    room_class: type[Room]
    room: RoomId
    head: Head
    request: Request
    trusted: bool = False

    @property
    def call(self) -> str | None:
        """The ``@rpc`` method this request calls; None for a plain request."""
        return self.head.request.headers.get(CALL_HEADER)

    def handoff(self) -> Handoff:
        """This request, for the worker of its room."""
        head = self.head
        return Handoff(self.room, self.request.remote, head.raw, head.rest, self.trusted)


@attrs.frozen
class Upgrade:
    """A valid WebSocket handshake for ``room``, an instance of ``room_class``: its
    request head as read (and the bytes after it), its ``101``, its :class:`Request`."""

    room_class: type[Room]
    room: RoomId
    head: Head
    accept: bytes
    request: Request

    def handoff(self) -> Handoff:
        """This upgrade, for the worker of its room."""
        return Handoff(self.room, self.request.remote, self.head.raw, self.head.rest)
