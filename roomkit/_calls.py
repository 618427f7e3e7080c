"""The server's side of calls into rooms: :class:`Calls`, what stubs call.

A call is checked and encoded at the caller (``_core/calls.py``), then run as one turn
of the room's actor: a :class:`~roomkit._events.Call` on its channel, in order with its
other events. Its answer comes once the turn's writes are durable; the caller waits for
it until its deadline, and never cancels a turn that has started (see ``RoomActor``).
A room that lives in another process (another worker's, another node's) is not
reachable from here.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, Protocol

import trio

from ._actor import RoomActor
from ._core.calls import Chain, Failed, MethodCodec, encode_error, parse_answer, rpc_function
from ._core.frontdoor import Router, room_name_problem
from ._errors import RoomCallCycle, RoomCallError, RoomCallTimeout
from ._events import Call
from ._room import Room
from ._roomid import RoomId

__all__ = ["CallHost", "Calls"]

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
        if not self._here(room):
            why = "the room lives in another process: calls between processes are not possible yet"
            raise RoomCallError(where, "RoomCallError", why, False)
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        outcome = parse_answer(await self.run_here(room_class, room, codec, body, deadline))
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

    async def run_here(
        self,
        room_class: type[Room],
        room: RoomId,
        codec: MethodCodec,
        body: bytes,
        deadline: float,
    ) -> bytes:
        """Run the call of ``codec``'s method whose encoded arguments are ``body`` on
        ``room``'s actor in this process, by ``deadline`` (Trio's clock); its answer
        body, an error's too (a refusal, a timeout: see ``RoomCallTimeout``).

        The room decodes ``body`` itself (a bad one is an error answer), so that a
        call read from the wire runs as one made here.
        """
        event = Call(codec, body, deadline)
        refused = await self._send(room_class, room, event)
        if refused is not None:
            return refused
        try:
            with trio.move_on_at(deadline):
                await event.answered.wait()
        finally:
            if event.answer is None and not event.started:
                event.abandoned = True  # the room drops it unrun
        if event.answer is not None:
            return event.answer
        if event.started:
            why = "no answer by its deadline: the call is running or committing"
            return encode_error("timeout", "RoomCallTimeout", why, None)
        why = "no answer by its deadline: still queued, it will not run"
        return encode_error("timeout", "RoomCallTimeout", why, False)

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


def _path(chain: Chain, room: RoomId) -> str:
    return " -> ".join(str(each) for each in (*chain, room))
