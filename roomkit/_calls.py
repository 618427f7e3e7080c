"""The server's side of calls into rooms: :class:`Calls`, what stubs call.

A call is checked and encoded at the caller (``_core/calls.py``), then run as one turn
of the room's actor: a :class:`~roomkit._events.Call` on its channel, in order with its
other events. Its answer comes once the turn's writes are durable; the caller waits for
it until its deadline, and never cancels a turn that has started (see ``RoomActor``).

A room that lives in another process (another worker's, another node's) is called
through this process's own gateway: the call becomes a POST into the room's path
(``_core/calls.py``'s wire), written into one end of a socket pair whose other end the
gateway serves as a trusted visit (``Gateway.internal``); it is then routed as any
client's request (handed to the room's worker, forwarded to its node), and its answer
read back by h11. A 503 (nobody could take it: a room moving, a worker restarting) is
tried again with backoff until the deadline; a connection that ends before a whole
answer leaves the call's fate unknown (``ran`` None). In a cluster with a secret each
such call is signed, so that the owner can tell it from a forgery.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NoReturn, Protocol

import trio

from ._actor import RoomActor
from ._core.calls import (
    Answer,
    AnswerReader,
    Chain,
    Failed,
    MethodCodec,
    call_auth,
    call_head,
    call_path,
    encode_error,
    parse_answer,
    refused_unrun,
    rpc_function,
    timeout_value,
)
from ._core.frontdoor import Router, room_name_problem
from ._errors import RoomCallCycle, RoomCallError, RoomCallTimeout
from ._events import Call
from ._room import Room
from ._roomid import RoomId

__all__ = ["RETRY_FIRST", "RETRY_MOST", "CallHost", "Calls"]

#: Seconds before a call that got 503 from another process is tried again, doubled
#: each time up to ``RETRY_MOST``: a room moving or a worker restarting takes a few
#: tenths of a second, a lease at most.
RETRY_FIRST: Final = 0.05
RETRY_MOST: Final = 1.0
#: Bytes asked of the socket pair per read of an answer.
_ANSWER_CHUNK: Final = 64 * 1024

#: Serves a call's socket pair end as a trusted visit: ``Gateway.internal``.
Visit = Callable[[trio.abc.Stream], Awaitable[None]]

#: The error classes of an error answer, by its kind.
_ERRORS: dict[str, type[RoomCallError]] = {
    "error": RoomCallError,
    "timeout": RoomCallTimeout,
    "cycle": RoomCallCycle,
}


class CallHost(Protocol):
    """What calls need of the room host (``Host``)."""

    @property
    def closing(self) -> bool: ...

    def room_for(self, room_class: type[Room], room: RoomId) -> RoomActor:
        """The live room ``room``, made if need be."""

    def serves(self, room: RoomId) -> bool:
        """Whether ``room`` is live here and not fenced."""


class Calls:
    """The calls into the rooms of one server: the stubs' ``CallBackend``.

    Args:
      host: the room host, whose actors run the calls.
      router: the server's routes, for the Room class of a prefix.
      owns: with ``--workers``, whether a room lives in this worker
        (``Placement.owns``); None: every room does.
      clustered: whether this server is a cluster member: a room not live here may
        be another node's.
    """

    def __init__(
        self,
        host: CallHost,
        router: Router[type[Room]],
        *,
        owns: Callable[[RoomId], bool] | None = None,
        clustered: bool = False,
    ) -> None:
        self._host = host
        self._router = router
        self._owns = owns
        self._clustered = clustered
        self._visits: trio.Nursery | None = None  # the internal visits, while run runs
        self._visit: Visit | None = None
        self._secret: bytes | None = None

    async def run(
        self,
        visit: Visit,
        secret: bytes | None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take calls to rooms of other processes, through ``visit`` (the gateway's
        ``internal``), signed with the cluster's ``secret`` if any, until cancelled.

        The visits run in this task's nursery, outside the front door's scope: at
        shutdown a draining room's calls still go out, until the server cancels this
        once the rooms are done (a call then in flight ends with RoomCallError)."""
        self._visit, self._secret = visit, secret
        try:
            async with trio.open_nursery() as nursery:
                self._visits = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._visits = None

    def target(self, name: str, prefix: str) -> tuple[RoomId, type]:
        problem = room_name_problem(name) if isinstance(name, str) else "it is no str"
        if problem is not None:
            raise ValueError(f"{name!r} is no room name: {problem}")
        room_class = self._router.route_for(prefix)
        if room_class is None:
            raise ValueError(f"no route serves the prefix {prefix!r}")
        return RoomId(prefix, unicodedata.normalize("NFC", name)), room_class

    async def call(
        self,
        room: RoomId,
        room_class: type,
        method: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        timeout: float | None,  # noqa: ASYNC109 (the caller's deadline, not ours to take)
        chain: Chain,
    ) -> Any:
        assert issubclass(room_class, Room)
        function = rpc_function(room_class, method)
        if function is None:
            raise AttributeError(f"{room_class.__name__} has no @rpc method {method!r}")
        codec = MethodCodec.of(function, room_class.protocol)
        body = codec.encode_arguments(args, kwargs, chain)
        limit = room_class.max_request_size
        if len(body) > limit:
            raise ValueError(
                f"{method}(): the arguments are {len(body)} bytes encoded, over "
                f"{room_class.__name__}.max_request_size ({limit})"
            )
        where = str(room)
        if room in chain:
            why = f"the call would wait on a turn that waits on it: {_path(chain, room)}"
            raise RoomCallCycle(where, "RoomCallCycle", why, False)
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        if self._here(room):
            answer = await self.run_here(room_class, room, codec, body, deadline)
            assert answer is not None, "only a call from elsewhere is left unanswered"
        else:
            answer = await self._remote(room_class, room, method, body, deadline)
        try:
            outcome = parse_answer(answer)
        except ValueError as exc:
            raise RoomCallError(where, "RoomCallError", str(exc), None) from None
        if isinstance(outcome, Failed):
            _raise(where, outcome)
        try:
            return codec.decode_result(outcome.value)
        except TypeError as exc:
            raise RoomCallError(where, "TypeError", str(exc), True) from None

    def _here(self, room: RoomId) -> bool:
        """Whether ``room`` lives in this process."""
        if self._owns is not None and not self._owns(room):
            return False
        return not self._clustered or self._host.serves(room)

    async def _remote(
        self, room_class: type[Room], room: RoomId, method: str, body: bytes, deadline: float
    ) -> bytes:
        """The answer body of a call to ``room`` in another process, through the
        gateway, tried again after each 503 until ``deadline``.

        Raises:
          RoomCallError: if it was refused (a 4xx: ``ran`` False), or failed (a 5xx
            but 503), or the connection ended before a whole answer (``ran`` None).
          RoomCallTimeout: at the deadline: ``ran`` False if every try got 503,
            else None.
        """
        where = str(room)
        wait = RETRY_FIRST
        while (
            answer := await self._attempt(room_class, room, method, body, deadline)
        ).status == 503:
            if trio.current_time() + wait >= deadline:
                why = "no process could take it by its deadline: 503, " + _text(answer)
                raise RoomCallTimeout(where, "RoomCallTimeout", why, False)
            await trio.sleep(wait)
            wait = min(wait * 2, RETRY_MOST)
        if answer.status != 200:
            # A 4xx is a refusal before the call ran (400, 403, 404, 408, 413); any 5xx
            # but 503 is a failure whose point is unknown: the call may have run.
            ran = None if answer.status >= 500 else False
            why = f"{'refused' if ran is False else 'failed'} with {answer.status}: {_text(answer)}"
            raise RoomCallError(where, "RoomCallError", why, ran)
        return answer.body

    async def _attempt(
        self, room_class: type[Room], room: RoomId, method: str, body: bytes, deadline: float
    ) -> Answer:
        """One try of a call to ``room`` through the gateway: its answer, read by
        ``deadline``, bounded by ``room_class.max_request_size``."""
        where = str(room)
        if self._visits is None or self._visit is None:
            raise RoomCallError(where, "RoomCallError", "the server is not running", False)
        left = deadline - trio.current_time()
        auth = None
        if self._secret is not None:
            nonce = secrets.token_urlsafe(16)  # each try signed anew: no replay of another
            target = call_path(room)
            timeout = timeout_value(left)
            auth = call_auth(
                self._secret, method, timeout, target, body, now=time.time(), nonce=nonce
            )
        head = call_head(room, method, left, body, auth)
        try:
            ours, theirs = trio.socket.socketpair()
        except OSError as exc:  # out of file descriptors (EMFILE), say: nothing was sent
            why = f"no socket pair to call through: {exc}"
            raise RoomCallError(where, "RoomCallError", why, False) from None
        self._visits.start_soon(self._visit, trio.SocketStream(theirs))
        reader = AnswerReader(room_class.max_request_size)
        answer: Answer | None = None
        ended: str | None = None  # why the connection ended before a whole answer
        async with trio.SocketStream(ours) as stream:
            with trio.move_on_at(deadline):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_send, stream, head + body)
                    try:
                        while answer is None:
                            answer = reader.feed(await stream.receive_some(_ANSWER_CHUNK))
                    except (ValueError, trio.BrokenResourceError) as exc:
                        ended = str(exc) or type(exc).__name__
                    nursery.cancel_scope.cancel()
        if answer is not None:
            return answer
        if ended is not None:
            why = f"the connection to the room's owner ended: {ended}"
            raise RoomCallError(where, "RoomCallError", why, None)
        why = "no answer by its deadline: it may be running, or have run"
        raise RoomCallTimeout(where, "RoomCallTimeout", why, None)

    async def run_here(
        self,
        room_class: type[Room],
        room: RoomId,
        codec: MethodCodec,
        body: bytes,
        deadline: float,
        *,
        elsewhere: bool = False,
    ) -> bytes | None:
        """Run the call of ``codec``'s method whose encoded arguments are ``body`` on
        ``room``'s actor in this process, by ``deadline`` (Trio's clock); its answer
        body, an error's too (a refusal, a timeout: see ``RoomCallTimeout``).

        The room decodes ``body`` itself (a bad one is an error answer), so that a
        call read from the wire runs as one made here. With ``elsewhere`` (a call from
        another process): None if it was refused unrun because the room is no longer
        this process's (fenced, gone, shutting down), so that its caller tries again
        where the room went (503) instead of raising at once.
        """
        event = Call(codec, body, deadline)
        refused = await self._send(room_class, room, event)
        if refused is not None:
            return None if elsewhere and self._moved(room, refused) else refused
        try:
            with trio.move_on_at(deadline):
                await event.answered.wait()
        finally:
            if event.answer is None and not event.started:
                event.abandoned = True  # the room drops it unrun
        if event.answer is not None:
            moved = elsewhere and not event.started and self._moved(room, event.answer)
            return None if moved else event.answer
        if event.started:
            why = "no answer by its deadline: the call is running or committing"
            return encode_error("timeout", "RoomCallTimeout", why, None)
        why = "no answer by its deadline: still queued, it will not run"
        return encode_error("timeout", "RoomCallTimeout", why, False)

    def _moved(self, room: RoomId, answer: bytes) -> bool:
        """Whether ``answer``, of a call that did not start, is a refusal because
        ``room`` is no longer this process's to run: the server or the room shuts
        down, or the room was fenced or ended."""
        gone = self._host.closing or not self._host.serves(room)
        return gone and refused_unrun(answer)

    async def _send(self, room_class: type[Room], room: RoomId, event: Call) -> bytes | None:
        """Queue ``event`` on ``room``'s actor, looking it up again once if it ended
        between the lookup and the send, by the call's deadline; None once queued,
        else the answer of a call refused."""
        with trio.move_on_at(event.deadline):
            for _ in range(2):
                if self._host.closing:
                    return encode_error(
                        "error", "RoomCallError", "the server is shutting down", False
                    )
                try:
                    await self._host.room_for(room_class, room).call(event)
                    return None
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    continue
            return encode_error("error", "RoomCallError", "the room ended as it was called", False)
        why = "no answer by its deadline: the room's queue stayed full"
        return encode_error("timeout", "RoomCallTimeout", why, False)


def _raise(where: str, failed: Failed) -> NoReturn:
    raise _ERRORS[failed.kind](where, failed.type, failed.message, failed.ran)


async def _send(stream: trio.abc.Stream, data: bytes) -> None:
    """Write a call's request; a peer that answered and left first is heard by the
    reader."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


def _text(answer: Answer) -> str:
    return answer.body.decode("utf-8", "replace")


def _path(chain: Chain, room: RoomId) -> str:
    return " -> ".join(str(each) for each in (*chain, room))
