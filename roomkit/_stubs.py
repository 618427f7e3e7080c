"""Reaching a room from outside it: ``@roomkit.rpc``, ``Rooms`` and ``RoomStub``.

``server.rooms.get("lobby")`` is a stub of the room ``lobby``; ``await stub.kick("ada")``
runs the room's ``@rpc`` method ``kick`` as one turn of the room, wherever it lives, and
returns its result once its writes are durable. The stubs check what they can before
anything is sent (the method is an ``@rpc`` one, the name is a room's); the server's
side (``_calls.py``), a :class:`CallBackend`, does the rest.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, Protocol, TypeVar

from ._core.calls import RPC_MARKER, Chain, rpc_function
from ._roomid import RoomId

__all__ = ["DEFAULT_CALL_TIMEOUT", "CallBackend", "RoomStub", "Rooms", "check_rpc_methods", "rpc"]

#: Seconds a call waits for its answer by default: long past any healthy turn and
#: commit, short enough that a stuck room (or a crossed pair of calls) frees its caller.
DEFAULT_CALL_TIMEOUT: Final = 30.0

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


def rpc(function: F) -> F:
    """Mark ``function``, an ``async def`` method of a Room subclass, as callable from
    outside the room: ``await server.rooms.get(name).function(...)``.

    Only methods so marked can be called. Each call runs as one turn of the room (see
    docs/rpc.md); its arguments and result are copied by serialisation, by their
    annotations with the room's protocol converter (or roomkit's strict one).

    Raises:
      TypeError: if ``function`` is not a coroutine function; when its class is made,
        if its name is private (``_x``) or one of ``Room``'s own (``broadcast``).
    """
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"@roomkit.rpc marks an async def method, not {function!r}")
    setattr(function, RPC_MARKER, True)
    return function


def check_rpc_methods(cls: type, base: type) -> None:
    """Raise TypeError if an ``@rpc`` method that ``cls`` defines is private, or has the
    name of an attribute of ``base`` (the Room class)."""
    for name, value in vars(cls).items():
        if getattr(value, RPC_MARKER, False) is not True:
            continue
        if name.startswith("_"):
            raise TypeError(f"{cls.__name__}.{name}: an @rpc method cannot be private")
        if hasattr(base, name):
            raise TypeError(
                f"{cls.__name__}.{name}: an @rpc method cannot have the name of Room.{name}"
            )


class CallBackend(Protocol):
    """What stubs need of the server that runs the rooms (``_calls.Calls``)."""

    def target(self, name: str, prefix: str) -> tuple[RoomId, type]:
        """The room ``name`` under ``prefix`` and the Room class serving it.

        Raises:
          ValueError: if ``name`` is no room name, or no route has ``prefix``.
        """

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
        """Run ``room``'s ``@rpc`` method ``method`` with ``args`` and ``kwargs``, from
        the turns in ``chain``, within ``timeout`` seconds (None: no bound); its result.

        Raises:
          TypeError: if the arguments do not bind to the method, or cannot be encoded.
          RoomCallError: as :meth:`RoomStub.call` says.
        """


def _outside() -> Chain:
    return ()


class Rooms:
    """The rooms of a server, by name: ``Server.rooms``, ``Room.rooms`` (inside a room,
    for room-to-room calls), ``TestServer.rooms``."""

    __slots__ = ("_backend", "_chain")

    def __init__(self, backend: CallBackend, chain: Callable[[], Chain] = _outside) -> None:
        self._backend = backend
        self._chain = chain  # the turns a call made now waits on: none outside a room

    def get(self, name: str, prefix: str = "") -> RoomStub:
        """A stub of the room ``name`` served under ``prefix`` (``"/chat"``; ``""``
        with a single Room class). The room need not be live: a call starts it.

        Raises:
          ValueError: if ``name`` is no room name, or no route has ``prefix`` (the
            message says which).
        """
        room, room_class = self._backend.target(name, prefix)
        return RoomStub(self._backend, room, room_class, self._chain)


class RoomStub:
    """One room, to call its ``@rpc`` methods: ``await stub.kick("ada")`` is
    ``await stub.call("kick", "ada")`` with the default timeout.

    Attributes:
      name: the room's name (in Unicode NFC).
      prefix: the route prefix it is served under.
    """

    __slots__ = ("_backend", "_chain", "_class", "name", "prefix")

    def __init__(
        self, backend: CallBackend, room: RoomId, room_class: type, chain: Callable[[], Chain]
    ) -> None:
        self._backend = backend
        self._class = room_class
        self._chain = chain
        self.name: Final = room.name
        self.prefix: Final = room.namespace

    def __repr__(self) -> str:
        return f"<RoomStub {self.prefix}/{self.name} of {self._class.__name__}>"

    def __getattr__(self, method: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if rpc_function(self._class, method) is None:
            raise AttributeError(f"{self._class.__name__} has no @rpc method {method!r}")
        return functools.partial(self.call, method)

    async def call(
        self,
        method: str,
        /,
        *args: Any,
        timeout: float | None = DEFAULT_CALL_TIMEOUT,  # noqa: ASYNC109 (the call's own option)
        **kwargs: Any,
    ) -> Any:
        """Run the room's ``@rpc`` method ``method`` with ``args`` and ``kwargs`` as one
        turn of the room, and return its result once the turn's writes are durable.

        The call wakes the room, or starts it; it is handled in order with the room's
        other events. A timeout never cancels a turn that has started.

        Args:
          timeout: seconds to wait for the answer; None waits for ever.

        Raises:
          AttributeError: if ``method`` is no ``@rpc`` method of the room's class.
          TypeError: if the arguments do not bind to the method, or cannot be encoded.
          ValueError: if ``timeout`` is not positive seconds or None, or the encoded
            arguments are over the room's ``max_request_size``.
          RoomCallError: if the method raised (``type`` and ``message`` are its
            exception's; its writes and sends were dropped), or the call was refused
            or could not be answered; ``ran`` says whether it took effect.
          RoomCallTimeout: if it had no answer within ``timeout``.
          RoomCallCycle: if the room is one whose turn waits on this call.
        """
        if rpc_function(self._class, method) is None:
            raise AttributeError(f"{self._class.__name__} has no @rpc method {method!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ValueError(f"timeout must be positive seconds or None, not {timeout!r}")
        if timeout is not None and math.isinf(timeout):
            timeout = None
        room = RoomId(self.prefix, self.name)
        return await self._backend.call(
            room, self._class, method, args, kwargs, timeout, self._chain()
        )
