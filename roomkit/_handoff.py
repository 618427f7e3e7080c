"""Connections handed between the workers of ``roomkit serve --workers N``: the Trio side.

Each worker listens on a Unix socket of its own (``WorkerSpec.socket_path``, in the
supervisor's private run directory). A worker that accepts a handshake for a room that
lives in another (``_core/handoff.py``'s ``where``) connects to the owner's socket and
sends it the connection: the TCP socket itself (SCM_RIGHTS) beside a ``HANDOFF`` frame
of the request head, the bytes read after it and the routing result; once the owner
answers ``TAKEN``, the sender closes its copy, and the connection is the owner's alone.
A TLS connection cannot be passed (its session lives in the sender's memory): the
sender keeps it and relays its decrypted bytes over the Unix connection, which the
owner serves as a plain stream (``RELAY``). The relay is the splice of a connection
forwarded to another node (``_forward.splice``): the same bounds, the same ends. A
worker's socket also answers ``METRICS`` with the worker's own metrics page, which the
worker that serves ``/metrics`` merges.

Whatever goes wrong between two workers ends that hand-off only: the sender answers
the client 503 if the owner surely did not take it; the receiver logs a message that is
no hand-off, closes the sockets it carried, and serves on.
"""

from __future__ import annotations

import array
import contextlib
import enum
import functools
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import trio

from ._accept import accept_loop
from ._core.handoff import Frame, FrameReader, Handoff, HandoffError, Kind, encode
from ._core.placement import Placement
from ._forward import splice
from ._metrics import Metrics
from ._workerspec import WorkerSpec

__all__ = [
    "HANDOFF_RETRY",
    "METRICS_TIMEOUT",
    "PEER_TIMEOUT",
    "Handed",
    "Owner",
    "Peers",
    "open_handoff_listener",
    "serve_handoffs",
]

logger = logging.getLogger("roomkit.server")

#: Seconds between attempts to reach an owner whose socket is not there (its worker is
#: restarting, which takes well under 2 s) or whose backlog is full (it is busy): the
#: attempts go on for the handshake timeout.
HANDOFF_RETRY: Final = 0.05
#: Seconds a peer worker has to send a whole frame; a live one takes well under 1 ms.
PEER_TIMEOUT: Final = 2.0
#: Seconds the workers have to send their metrics to the one serving ``/metrics``; a
#: worker that does not answer in time (hung, restarting) is left out of that scrape.
METRICS_TIMEOUT: Final = 1.0
#: Connections waiting on a worker's socket to be accepted.
_BACKLOG: Final = 128
#: Sockets one message may carry that are read (and closed: one is expected, at most).
_MAX_FDS: Final = 4
#: Bytes asked of a Unix socket per read of a frame.
_READ_CHUNK: Final = 64 * 1024
#: recvmsg's flag that makes the sockets received close-on-exec at once (Linux), as
#: Python makes every descriptor it opens itself: a handed client's socket must not
#: live on in a process a room starts. Elsewhere they are made so once received.
_CLOEXEC: Final = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

T = TypeVar("T")


class Owner(Protocol[T]):
    """What the receiving worker's front door does with a connection handed to it."""

    def prepare(self, handoff: Handoff) -> T:
        """What ``handoff`` asks for, checked before the sender is told it was taken.

        Raises:
          HandoffError: if it asks for nothing this worker could serve.
        """

    async def adopt(self, stream: trio.abc.Stream, prepared: T) -> None:
        """Carry on with the connection where the sender left it; own ``stream`` (close
        it, unless a room takes it)."""


class Handed(enum.Enum):
    """What became of a hand-off, as :meth:`Peers.hand` says."""

    #: The owner took the socket: the sender closes its copy.
    PASSED = "passed"
    #: The owner took the connection's bytes, which a relay now carries: the relay owns
    #: the stream.
    RELAYED = "relayed"
    #: The owner surely did not take it (not reachable, or it refused the message): the
    #: sender answers the client.
    NOT_TAKEN = "not taken"
    #: The owner did not answer in time after it was sent everything: it may hold the
    #: connection, so the sender only closes its copy, without a word.
    UNKNOWN = "unknown"


class Peers:
    """This worker's side of hand-offs: where rooms live, and reaching their owners.

    Args:
      spec: this worker's place among the workers.
      timeout: seconds a hand-off may take, retries included (the handshake timeout).
      metrics: the server's counters (``handoffs``).

    Relayed connections (TLS) run in :meth:`run`'s nursery, outside the front door's
    scope: at shutdown they go on carrying the owner's close frames until they end, or
    :meth:`drain`'s time is up.
    """

    def __init__(self, spec: WorkerSpec, timeout: float, metrics: Metrics) -> None:
        self.spec: Final = spec
        self.placement: Final[Placement] = spec.placement
        self._timeout = timeout
        self._metrics = metrics
        self._relays: trio.Nursery | None = None
        self._relaying = 0
        self._relay_gone = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the relays' nursery until cancelled."""
        async with trio.open_nursery() as nursery:
            self._relays = nursery
            task_status.started()
            await trio.sleep_forever()

    async def drain(self, seconds: float) -> None:
        """Wait, at most ``seconds``, for the relays to end (their owners close them)."""
        with trio.move_on_after(seconds):
            while self._relaying:
                self._relay_gone = trio.Event()
                await self._relay_gone.wait()

    async def hand(self, owner: str, stream: trio.abc.Stream, handoff: Handoff) -> Handed:
        """Hand ``stream`` to the worker ``owner``: its socket, if it is a plain TCP
        stream; else (TLS) a relay of its bytes, which then owns ``stream``.

        Tries for ``timeout`` seconds, again every ``HANDOFF_RETRY`` while the owner's
        socket is missing or refuses (its worker is restarting), or resets the hand-off
        unread (its worker, stopped, was killed).

        Returns:
          what became of it (:class:`Handed`). Unless ``RELAYED``, the caller still
          holds ``stream``: it closes it (after a 503 if ``NOT_TAKEN``).
        """
        passing = isinstance(stream, trio.SocketStream)
        try:
            message = encode(handoff.frame(relay=not passing))
        except HandoffError:
            logger.warning("hand-off of %s: too large to send", handoff.room, exc_info=True)
            return Handed.NOT_TAKEN
        sent = False
        with trio.move_on_after(self._timeout):
            while True:
                unix = await _connect(self.spec.socket_path(int(owner)))
                try:
                    if isinstance(stream, trio.SocketStream):
                        await _send_with_socket(unix, message, stream.socket.fileno())
                    else:
                        await unix.send_all(message)
                    sent = True
                    frame, first = await _receive(unix)
                    if frame.kind is not Kind.TAKEN:
                        raise HandoffError(f"expected TAKEN, got {frame.kind.name}")
                    break
                except (OSError, trio.BrokenResourceError, HandoffError) as exc:
                    await trio.aclose_forcefully(unix)
                    if _lost(exc):
                        sent = False
                        await trio.sleep(HANDOFF_RETRY)
                        continue
                    logger.warning(
                        "hand-off of %s to worker %s failed: %s", handoff.room, owner, exc
                    )
                    return Handed.NOT_TAKEN
                except BaseException:
                    await trio.aclose_forcefully(unix)
                    raise
            if isinstance(stream, trio.SocketStream):
                self._metrics.handoffs["sent"] += 1
                await trio.aclose_forcefully(unix)
                return Handed.PASSED
            self._metrics.handoffs["relayed"] += 1
            self.relay(stream, unix, first)
            return Handed.RELAYED
        return Handed.UNKNOWN if sent else Handed.NOT_TAKEN

    def relay(self, client: trio.abc.Stream, owner: trio.SocketStream, first: bytes) -> None:
        """Relay ``client``'s bytes to and from ``owner``'s worker, in the relays'
        nursery, until the owner is done; ``first`` is what the owner already sent. The
        relay owns both streams; whatever ends it (either side gone) ends it alone."""
        assert self._relays is not None, "Peers.run holds the relays"
        self._relaying += 1
        self._relays.start_soon(self._relay, client, owner, first)

    async def _relay(self, client: trio.abc.Stream, owner: trio.SocketStream, first: bytes) -> None:
        try:
            await splice(client, owner, first)
        finally:
            self._relaying -= 1
            self._relay_gone.set()

    async def scrape(self) -> dict[str, bytes | None]:
        """Every other worker's own metrics page, by worker id; None for a worker that
        did not answer within ``METRICS_TIMEOUT``."""
        pages: dict[str, bytes | None] = {}

        async def ask(member: str) -> None:
            pages[member] = None
            with trio.move_on_after(METRICS_TIMEOUT):
                pages[member] = await _ask_metrics(self.spec.socket_path(int(member)))

        async with trio.open_nursery() as nursery:
            for member in self.placement.members:
                if member != self.placement.me:
                    nursery.start_soon(ask, member)
        return pages


def _lost(error: BaseException) -> bool:
    """Whether ``error`` says that the owner went away with the hand-off unread: the
    kernel resets the connections waiting on the socket of a process that ends (a
    stopped worker's, killed). It surely took nothing; its replacement may."""
    if isinstance(error, trio.BrokenResourceError):
        error = error.__cause__ or error
    return isinstance(error, ConnectionResetError | BrokenPipeError)


async def _connect(path: str) -> trio.SocketStream:
    """A Unix connection to ``path``, tried until it succeeds (or the caller's deadline).

    The connect is the standard library's, non-blocking: a Unix socket connects at once
    or fails, and fails with ``EAGAIN`` when its backlog is full (its worker is busy, or
    stopped). Trio's ``connect`` takes ``EAGAIN`` for a TCP connect under way and reports
    the socket connected, which it never was: the hand-off then failed with ``ENOTCONN``
    instead of trying again.
    """
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError):
            sock.close()
            await trio.sleep(HANDOFF_RETRY)
            continue
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def _send_with_socket(unix: trio.SocketStream, message: bytes, fd: int) -> None:
    """Send ``message``, and the socket ``fd`` beside its first byte (SCM_RIGHTS)."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sent = await unix.socket.sendmsg([message], rights)
    if sent < len(message):
        await unix.send_all(message[sent:])


async def _receive(unix: trio.SocketStream, fds: list[int] | None = None) -> tuple[Frame, bytes]:
    """One frame from ``unix``, and whatever came after it in the same reads.

    With ``fds``, the sockets that came with it are appended there (the caller closes
    what it does not keep).

    Raises:
      HandoffError: if the bytes are no frame, or the peer left before a whole one.
    """
    reader = FrameReader()
    while (frame := reader.next_frame()) is None:
        if fds is None:
            data = await unix.receive_some(_READ_CHUNK)
        else:
            space = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)
            data, ancillary, _flags, _address = await unix.socket.recvmsg(
                _READ_CHUNK, space, _CLOEXEC
            )
            fds += _sockets_in(ancillary)
        if not data:
            raise HandoffError(f"the peer left after {reader.pending} bytes of a frame")
        reader.feed(data)
    return frame, reader.take_pending()


def _sockets_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            numbers = array.array("i")
            numbers.frombytes(data[: len(data) - len(data) % numbers.itemsize])
            fds += numbers
    if not _CLOEXEC:
        for fd in fds:
            os.set_inheritable(fd, False)
    return fds


async def _ask_metrics(path: str) -> bytes | None:
    """The metrics page of the worker at ``path``; None if it is not there or says no."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(path)
    except OSError:
        sock.close()
        return None
    async with trio.SocketStream(sock) as unix:
        try:
            await unix.send_all(encode(Frame(Kind.METRICS)))
            frame, _ = await _receive(unix)
        except (trio.BrokenResourceError, OSError, HandoffError):
            return None
    return frame.payload if frame.kind is Kind.EXPOSITION else None


async def open_handoff_listener(path: str) -> trio.SocketListener:
    """Listen on the Unix socket ``path`` (mode 0600), replacing a stale one.

    Raises:
      OSError: if ``path`` exists and is not a socket, or cannot be bound.
    """
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)  # left by a worker that died in this slot
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def serve_handoffs(
    listener: trio.SocketListener,
    owner: Owner[T],
    metrics: Metrics,
    exposition: Callable[[], bytes] | None,
) -> None:
    """Take the connections other workers hand here, and answer their metrics requests,
    until cancelled; then close ``listener`` and remove its socket file.

    Args:
      listener: this worker's Unix socket, from :func:`open_handoff_listener`.
      owner: what carries on with each connection.
      metrics: the server's counters (``handoffs``).
      exposition: this worker's own metrics page, or None if it serves none.
    """
    path = listener.socket.getsockname()
    try:
        async with trio.open_nursery() as nursery:  # out of descriptors: a pause, not an end
            serve = functools.partial(
                _serve_peer, owner=owner, metrics=metrics, exposition=exposition
            )
            await accept_loop(listener, nursery, serve)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def _serve_peer(
    conn: trio.SocketStream,
    owner: Owner[T],
    metrics: Metrics,
    exposition: Callable[[], bytes] | None,
) -> None:
    """One message from a peer worker, and what it asks for."""
    fds: list[int] = []
    keep: trio.abc.Stream | None = None  # a socket handed here, until adopt owns it
    relayed = False  # conn itself carries the connection, and adopt owns it
    try:
        with trio.move_on_after(PEER_TIMEOUT) as deadline:
            frame, after = await _receive(conn, fds)
        if deadline.cancelled_caught:
            raise HandoffError("no whole frame in time")
        if after:
            raise HandoffError("bytes after a frame that awaits its answer")
        if frame.kind is Kind.METRICS and not fds and exposition is not None:
            await conn.send_all(encode(Frame(Kind.EXPOSITION, payload=exposition())))
            return
        handoff = Handoff.from_frame(frame)
        if len(fds) != (1 if frame.kind is Kind.HANDOFF else 0):
            raise HandoffError(f"a {frame.kind.name} came with {len(fds)} sockets")
        prepared = owner.prepare(handoff)
        stream = _adopted(fds.pop()) if fds else conn
        keep = stream
        await conn.send_all(encode(Frame(Kind.TAKEN)))
        metrics.handoffs["adopted"] += 1
        if stream is not conn:
            await trio.aclose_forcefully(conn)
        keep, relayed = None, stream is conn
        await owner.adopt(stream, prepared)
    except HandoffError as exc:
        metrics.handoffs["malformed"] += 1
        logger.warning("hand-off refused: %s", exc)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer left: its hand-off failed there, and it answers for it
    except Exception:  # a bug of roomkit's own: it ends this hand-off only
        metrics.refuse("internal_error")
        logger.exception("serving a hand-off failed")
    finally:
        for fd in fds:
            os.close(fd)
        if keep is not None:
            await trio.aclose_forcefully(keep)
        if not relayed:
            await trio.aclose_forcefully(conn)


def _adopted(fd: int) -> trio.SocketStream:
    """The stream of a socket handed here.

    Raises:
      HandoffError: if ``fd`` is no stream socket (the descriptor is closed).
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        os.close(fd)
        raise HandoffError(f"a hand-off carried no socket: {exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        raise HandoffError("a hand-off carried a socket that is not a stream")
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
