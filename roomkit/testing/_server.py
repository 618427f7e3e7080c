"""``open_test_server``: the real server, on an in-memory transport, with handles for tests.

The server is ``roomkit.serve``'s own code (accept loop, front door, rooms, storage,
scheduler); only the listener differs. The handles do what a test needs and a client
cannot (see a room's live instance, hibernate a room, run its alarm) through the room
host's ``TestHooks``, and nothing else of the server's inside.
"""

from __future__ import annotations

import math
import os
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final
from urllib.parse import urlencode

import h11
import trio
import trio.testing

from .._core.frontdoor import Response, Router
from .._host import Host, TestHooks
from .._room import Room
from .._roomid import RoomId
from .._server import SERVE_OPTIONS, ServeOptions, Server, serve_on
from .._stubs import Rooms
from ..storage import SQLiteStore, Store
from ..storage._sqlite import SQLiteCore
from ._client import RECEIVE_TIMEOUT, RoomErrors, TestClient, opened
from ._memory import MemoryListener

__all__ = ["TestServer", "open_test_server"]

#: The Host header of test clients over the in-memory transport.
MEMORY_HOST: Final = "roomkit.test"
#: The options of serve that open_test_server passes on: not host and port (it picks
#: the listener), nor ssl_context (test clients speak plain ws://); storage is its own.
PASSED_ON: Final = frozenset(SERVE_OPTIONS.options) - {"host", "port", "ssl_context", "storage"}


class TestServer:
    """A running test server, made by :func:`open_test_server`.

    Attributes:
      url: the base WebSocket URL (``ws://127.0.0.1:PORT``) with ``real_sockets=True``,
        for clients other than :meth:`connect`'s; None over the in-memory transport.
    """

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(
        self,
        server: Server,
        hooks: TestHooks,
        router: Router[type[Room]],
        listener: MemoryListener | None,
        nursery: trio.Nursery,
        receive_timeout: float | None,
        errors: RoomErrors,
    ) -> None:
        self._router = router  # for the route, and so the protocol, of a path
        self._receive_timeout = receive_timeout
        self._errors = errors
        self._server = server
        self._hooks = hooks
        self._listener = listener
        self._nursery = nursery
        self.url: str | None = None if listener is not None else server.url

    @asynccontextmanager
    async def connect(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        subprotocols: Iterable[str] = (),
    ) -> AsyncIterator[TestClient]:
        """Open a WebSocket to ``path`` (``"/lobby?userId=ann"``) for the ``async with`` block.

        On the way out the client closes with 1000, if the room has not closed it,
        and waits for the room's answer.

        Args:
          path: the request target: a path, and a query if any, URL-encoded.
          params: query parameters to add, encoded here (``{"userId": "zoë smith"}``).
          headers: extra handshake headers (``Origin``, ``Cookie``, ``Authorization``).
          subprotocols: the subprotocols to offer (``["roomkit.v1"]``: the envelope of
            docs/recovery.md, which the client then receives as it is).

        The client sends typed messages in the protocol of the route of ``path``; when
        a ``route`` hook sends it to another route's room, send that room's JSON.

        Raises:
          ClientClosed: if the handshake is refused; ``status`` is the HTTP status
            (403 for ``Reject(403, ...)``) and ``reason`` the response's body.
          ValueError: if ``path`` does not start with ``/``, or is not URL-encoded.
        """
        _check_target(path)
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        header_list = list(headers.items() if isinstance(headers, Mapping) else headers)
        stream, host = await self._open()
        prefix = self._router.prefix_of(path.partition("?")[0])
        room_class = None if prefix is None else self._hooks.room_class(prefix)
        client = TestClient(
            stream,
            None if room_class is None else room_class.protocol,
            self._receive_timeout,
            self._errors,
        )
        async with opened(client, self._nursery, host, path, header_list, list(subprotocols)):
            yield client

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> Response:
        """Send one plain HTTP request to ``path`` (``"/lobby?x=1"``) through the real
        front door, and return the server's answer, parsed from the wire.

        The request goes with a ``content-length`` of ``body`` (or, given
        ``transfer-encoding: chunked`` in ``headers``, with ``body`` as one chunk),
        over the in-memory transport, or a real socket with ``real_sockets=True``. An
        interim ``100 Continue`` is skipped.

        Returns:
          the answer: its status, its ``content-type`` as ``content_type``, its body as
          bytes (``.text``, ``.json()``), and its other headers.

        Raises:
          ConnectionError: if the server closed without a whole answer.
          trio.TooSlowError: after ``receive_timeout`` seconds without one.
          ValueError: if ``path`` does not start with ``/``, or is not URL-encoded.
        """
        _check_target(path)
        header_list = list(headers.items() if isinstance(headers, Mapping) else headers)
        names = {name.lower() for name, _ in header_list}
        stream, host = await self._open()
        client = h11.Connection(h11.CLIENT)
        framing = [] if "transfer-encoding" in names else [("content-length", str(len(body)))]
        head = h11.Request(
            method=method, target=path, headers=[("host", host), *framing, *header_list]
        )
        data = client.send(head) + (client.send(h11.Data(data=body)) if body else b"")
        data += client.send(h11.EndOfMessage())
        try:
            timeout = self._receive_timeout
            with trio.fail_after(math.inf if timeout is None else timeout):
                await stream.send_all(data)
                return await _answer(stream, client)
        finally:
            await trio.aclose_forcefully(stream)

    async def _open(self) -> tuple[trio.abc.Stream, str]:
        """A new connection to the server, and the Host header it goes with."""
        if self._listener is not None:
            return await self._listener.connect(), MEMORY_HOST
        server = self._server
        return await trio.open_tcp_stream(server.host, server.port), f"{server.host}:{server.port}"

    @property
    def rooms(self) -> Rooms:
        """The server's rooms, to call their ``@rpc`` methods as server code would:
        ``await server.rooms.get("lobby").kick("ada")`` (``Server.rooms``)."""
        return self._server.rooms

    def room(self, name: str, route: str = "") -> Room | None:
        """The live Room instance of room ``name``, to inspect; None if the room is not
        live or hibernates.

        Args:
          name: the room's name (``"lobby"`` for ``/lobby``).
          route: the prefix it is served under (``"/chat"`` for ``/chat/lobby``), with
            a mapping of routes; ``""`` with a single Room class.
        """
        _check_name(name)
        return self._hooks.live_room(_room_id(route, name))

    async def hibernate(self, name: str, route: str = "") -> None:
        """Hibernate room ``name`` now, however recent its last event, and return once
        it has: its instance is dropped, its connections stay, and the next event makes
        a new instance (``on_start``).

        Events already queued for the room are handled first, and its commits finish. A
        room that hibernates already is left as it is. A room with no connection left
        ends instead.

        Raises:
          LookupError: if the room is not live.
        """
        _check_name(name)
        if not await self._hooks.hibernate(_room_id(route, name)):
            raise LookupError(f"room {_describe(route, name)} is not live")

    async def fire_alarm(self, name: str, route: str = "") -> None:
        """Run room ``name``'s alarm now, due or not, as if its time had come: ``on_alarm``
        runs (waking the room if need be), and a failure is retried on the usual schedule.

        What the test sent before is handled first. Returns once the handler has run
        (however long it takes on Trio's clock), its writes are committed and its sends
        are out, and the server is quiet again (``trio.testing.wait_all_tasks_blocked``),
        so they have reached the test clients.

        Raises:
          LookupError: if the room has no alarm set, or no route serves it.
        """
        _check_name(name)
        await trio.testing.wait_all_tasks_blocked()  # what was sent before goes first
        try:
            await self._hooks.run_alarm_now(_room_id(route, name))
        except LookupError as exc:  # name the room as the test did
            raise LookupError(f"room {_describe(route, name)} {exc}") from None
        await trio.testing.wait_all_tasks_blocked()
        self._errors.raise_first()


@asynccontextmanager
async def open_test_server(
    rooms: type[Room] | Mapping[str, type[Room]],
    *,
    storage: str | os.PathLike[str] | Store = ":memory:",
    real_sockets: bool = False,
    receive_timeout: float | None = RECEIVE_TIMEOUT,
    raise_room_errors: bool = True,
    **serve_options: Any,
) -> AsyncIterator[TestServer]:
    """Run ``rooms`` as ``roomkit.serve`` would, for the ``async with`` block.

    Over the in-memory transport (the default) no socket is opened and nothing depends
    on the kernel or the wall clock: under pytest-trio's ``autojump_clock``, a test of
    a 60-second idle sweep runs in milliseconds, the same way every time. On the way
    out the server shuts down as ``serve`` does (1001 to every client still open).

    Args:
      rooms: what ``serve`` takes: a Room subclass, or a mapping of prefixes to them.
      storage: a SQLite file, ``":memory:"`` (the default), or a Store (which stays
        open). A file is used from Trio's thread, not a worker thread, so that the
        clock cannot jump while a commit is in flight.
      real_sockets: listen on 127.0.0.1 on a free port instead, and set ``url``; test
        clients then connect over TCP.
      receive_timeout: the seconds of Trio's clock a test client's ``receive`` (and
        ``receive_close``) waits before it fails the test with AssertionError: five
        minutes by default, which under ``autojump_clock`` takes no real time. None: no
        bound.
      raise_room_errors: raise in the test what a hook raised and left to
        ``Room.on_error``'s default (which logs it, and closes the connection with
        1011): from the next ``receive``, ``receive_nothing`` or ``receive_close`` of
        any client, ``fire_alarm``, or at the end of the block. A room with its own
        ``on_error`` has handled its errors. False: only the logs and the 1011 tell.
      serve_options: ``serve``'s other options (``group_commit``, ``default_room``,
        ``route``, ``handshake_timeout``, ``allowed_origins``, ``max_connections``,
        ``drain_timeout``, ``demo_page``, ``metrics``); not ``host``, ``port`` or
        ``ssl_context``.
    """
    unknown = sorted(serve_options.keys() - PASSED_ON)
    if unknown:
        raise TypeError(
            f"open_test_server() got {', '.join(unknown)}; "
            f"it takes serve's {', '.join(sorted(PASSED_ON))}"
        )
    store = (
        storage if isinstance(storage, Store) else SQLiteStore(SQLiteCore(storage), in_thread=False)
    )
    try:
        async with _open_nursery() as nursery:
            listener = None if real_sockets else MemoryListener()
            serving, stopped = trio.CancelScope(), trio.Event()
            errors = RoomErrors(raise_room_errors)
            options = SERVE_OPTIONS.complete({**serve_options, "storage": store})
            hosts: list[Host] = []
            serve = partial(_serve, listener, rooms, options, errors, hosts.append)
            server = await nursery.start(serve, serving, stopped)
            router = Router[type[Room]](rooms)  # serve has checked the routes
            try:
                yield TestServer(
                    server, hosts[0], router, listener, nursery, receive_timeout, errors
                )
            finally:
                serving.cancel()  # shut down while the clients' readers still answer
                with trio.CancelScope(shield=True):
                    await stopped.wait()
                nursery.cancel_scope.cancel()
            errors.raise_first()  # the block ended well: what the rooms raised is left
    finally:
        if store is not storage:
            with trio.CancelScope(shield=True):
                await store.aclose()


async def _serve(
    listener: MemoryListener | None,
    rooms: type[Room] | Mapping[str, type[Room]],
    options: ServeOptions,
    errors: RoomErrors,
    on_host: Callable[[Host], None],
    scope: trio.CancelScope,
    stopped: trio.Event,
    task_status: trio.TaskStatus[Server],
) -> None:
    async def listen() -> tuple[list[trio.abc.Listener[Any]], str, int]:
        if listener is not None:
            return [listener], MEMORY_HOST, 0
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        return list(listeners), "127.0.0.1", listeners[0].socket.getsockname()[1]

    try:
        with scope:
            # Alarms keep Trio's time, from today, and retry without jitter: exactly.
            epoch = time.time() - trio.current_time()
            await serve_on(
                listen,
                rooms,
                options,
                task_status=task_status,
                wall_time=lambda: epoch + trio.current_time(),
                jitter=lambda: 0.0,
                on_unhandled=errors.add,
                on_host=on_host,
            )
    finally:
        stopped.set()


@asynccontextmanager
async def _open_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for an ``async with`` block's background tasks, out of which the
    block's own exception comes as itself, not in an ExceptionGroup: ``pytest.raises``
    and ``except`` in a test work as if there were no nursery."""
    raised: list[BaseException] = []
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                raised.append(exc)
                raise
    except BaseExceptionGroup as group:
        if not (raised and len(group.exceptions) == 1 and group.exceptions[0] is raised[0]):
            raise
        error = raised[0]
    if error is not None:
        raise error  # outside the except: not chained to the group


def _describe(route: str, name: str) -> str:
    return repr(f"{route}/{name}")


async def run_test_server(
    rooms: type[Room] | Mapping[str, type[Room]],
    *,
    task_status: trio.TaskStatus[TestServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """:func:`open_test_server` as a task, for ``nursery.start``: runs until cancelled."""
    async with open_test_server(rooms, **options) as server:
        task_status.started(server)
        await trio.sleep_forever()


def _check_target(path: str) -> None:
    if not path.startswith("/"):
        raise ValueError(f"a path starts with '/': {path!r}")
    if not path.isascii() or any(c.isspace() for c in path):
        raise ValueError(
            f"{path!r} is not URL-encoded: encode it (urllib.parse.quote), "
            "or give the query as params={...}"
        )


#: Headers of an answer that roomkit.Response sets itself, and so does not keep.
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})


async def _answer(stream: trio.abc.Stream, client: h11.Connection) -> Response:
    """The answer read from ``stream`` by ``client`` (past any interim one)."""
    answer: h11.Response | None = None
    parts: list[bytes] = []
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            raise ConnectionError(f"the server's answer was cut short: {exc}") from None
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(64 * 1024)))
        elif isinstance(event, h11.Response):
            answer = event
        elif isinstance(event, h11.Data):
            parts.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the server closed without a whole answer")
    assert answer is not None, "h11 gives the answer's head before its end"
    content_type = None
    kept = []
    for raw_name, raw_value in answer.headers:
        value = raw_value.decode("latin-1")
        if raw_name == b"content-type":
            content_type = value
        elif raw_name not in _FRAMING:
            kept.append((raw_name.decode("latin-1"), value))
    body = b"".join(parts)
    return Response(answer.status_code, body, kept, content_type=content_type)


def _check_name(name: str) -> None:
    if "/" in name:
        raise ValueError(
            f'{name!r} is a path: give the room\'s name ("lobby"), and its route prefix '
            'as route= ("/chat") when rooms are served under prefixes'
        )


def _room_id(route: str, name: str) -> RoomId:
    """The room ``name`` under ``route``, its name in NFC as the router puts it."""
    return RoomId(route, unicodedata.normalize("NFC", name))
