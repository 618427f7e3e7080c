"""Forwarding a request to its room's owner node, then its bytes both ways.

A node of a cluster that receives a WebSocket handshake (or a plain HTTP request) for
a room another live node owns opens TCP to the owner's advertise address and writes
the client's request head as read, with one header added (``roomkit-forwarded``: see
``_core/clusterauth.py``), and the bytes the client sent after it. From then on it
only moves bytes, both ways, including the owner's ``101`` or refusal: no frame is
parsed here, and the owner's limits (its send queues, its rate limits) hold for the
client as if it were direct.

Two ways of moving them, one rule: a client on plain TCP is spliced in the kernel
(``os.splice`` through a pipe per direction, Linux) by the process's splicing thread
(``_splicer.py``), which never copies a byte into Python nor wakes Trio per message; a
client through TLS (a ``trio.SSLStream``), or a system without ``os.splice``, is copied
by ``receive_some``/``send_all``. Either way each direction holds at most
``SPLICE_CHUNK`` bytes, written before the next are read: a slow reader slows its
writer. The client's end of file is passed on as the owner's (``shutdown(SHUT_WR)``);
the owner's end, or a side that breaks, ends the connection, and both sockets close.

A plain HTTP request (no WebSocket upgrade) is forwarded the same way, but its outcome
is known once the owner has been sent the head: the owner answers when its turn comes,
which may take longer than the answer timeout.

:class:`Forwards` holds the spliced connections in a nursery of their own, outside
the front door's scope: at shutdown they go on for :meth:`Forwards.drain`'s time,
since they carry other nodes' rooms, and are then cut.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from typing import Final

import trio

from ._accept import Head
from ._core.clusterauth import Malformed, forwarded_head, forwarded_value, split_address
from ._core.limits import TLS_CLOSE_TIMEOUT
from ._metrics import Metrics
from ._splicer import KERNEL_SPLICE, SPLICE_CHUNK, Splicer, open_splicer

__all__ = ["KERNEL_SPLICE", "SPLICE_CHUNK", "Forwarded", "Forwards", "forward", "splice"]

logger = logging.getLogger("roomkit.server")

#: How an owner's answer begins when it accepts the handshake.
_SWITCHING: Final = b"HTTP/1.1 101 "


class Forwarded(enum.Enum):
    """What became of a forwarded request, as :func:`forward` says."""

    #: The owner could not be reached (refused, timed out, or it ended the connection
    #: without a word): nothing was sent to the client, which the caller still holds.
    #: The caller answers 503 and drops its directory entry for the room.
    UNREACHABLE = "unreachable"
    #: The owner answered, but not ``101``: its answer went to the client, and both
    #: connections are closed. The caller drops its directory entry for the room.
    REFUSED = "refused"
    #: The owner answered ``101``, and the connection was spliced until it ended.
    SPLICED = "spliced"
    #: A plain HTTP request (no WebSocket upgrade): its head and the bytes after it
    #: were written to the owner, and the connection was spliced until it ended. Its
    #: answer, whenever the owner sends it, goes to the client.
    PASSED = "passed"
    #: The head cannot be forwarded as it is (bytes after its first blank line, which
    #: an owner would read as the end of the head): nothing was sent to anyone, and the
    #: caller, which still holds the client, answers 400.
    MALFORMED = "malformed"


async def forward(
    client: trio.abc.Stream,
    head: Head,
    remote: tuple[str, int] | None,
    address: str,
    secret: bytes | None,
    *,
    answer_timeout: float,
    now: float,
    splicer: Splicer | None = None,
    task_status: trio.TaskStatus[Forwarded] = trio.TASK_STATUS_IGNORED,
) -> Forwarded:
    """Forward the request ``head`` of ``client`` to the owner at ``address``, and
    splice the two connections until they end.

    Args:
      client: the client's stream, past the request head (``SSLStream`` with TLS).
      head: the request head as read and parsed, and the bytes after it.
      remote: the client's address, which the ``roomkit-forwarded`` header carries.
      address: the owner's advertise address, ``HOST:PORT`` (IPv6 in brackets).
      secret: the cluster's secret, which signs the header; None sends it unsigned.
      answer_timeout: seconds to connect to the owner, send it the head and, for a
        WebSocket handshake, receive the first bytes of its answer (the caller's
        handshake timeout); the owner's own hooks (``on_connect``) run in that time.
        A plain HTTP request's answer has no such bound.
      now: the wall clock (Unix seconds), for the header's ``t``.
      splicer: the thread that splices a plain TCP client in the kernel; None copies
        every client through Python.

    Returns:
      what became of it (:class:`Forwarded`), once the splice has ended. With
      ``nursery.start``, the same outcome is reported as soon as it is known (after
      the owner's first bytes, or for plain HTTP once the owner has the head), and the
      splice goes on in the nursery. Unless ``UNREACHABLE`` or ``MALFORMED``, this owns
      ``client`` and closes it.
    """
    request = head.request
    value = forwarded_value(
        remote,
        secret,
        key=request.headers.get("sec-websocket-key", ""),
        target=request.target,
        now=now,
    )
    rewritten = forwarded_head(head.raw, value)
    if isinstance(rewritten, Malformed):
        task_status.started(Forwarded.MALFORMED)
        return Forwarded.MALFORMED
    upgrade = request.is_websocket
    asked = await _ask(address, rewritten + head.rest, answer_timeout, answered=upgrade)
    if asked is None:
        task_status.started(Forwarded.UNREACHABLE)
        return Forwarded.UNREACHABLE
    owner, first = asked
    outcome = Forwarded.PASSED
    if upgrade:
        outcome = Forwarded.SPLICED if first.startswith(_SWITCHING) else Forwarded.REFUSED
    task_status.started(outcome)
    await splice(client, owner, first, splicer)
    return outcome


async def _ask(
    address: str, data: bytes, seconds: float, *, answered: bool
) -> tuple[trio.SocketStream, bytes] | None:
    """A connection to the owner at ``address``, sent ``data``, and (if ``answered``)
    the first bytes of its answer (at least enough to tell a ``101``, unless it ended
    first); None if that takes longer than ``seconds``."""
    where = split_address(address)
    if isinstance(where, Malformed):
        logger.warning("forward to %s: %s", address, where.reason)
        return None
    owner: trio.SocketStream | None = None
    try:
        with trio.move_on_after(seconds) as deadline:
            owner = await trio.open_tcp_stream(*where)
            await owner.send_all(data)
            first = b""
            while answered and len(first) < len(_SWITCHING):
                chunk = await owner.receive_some(SPLICE_CHUNK)
                if not chunk:
                    break
                first += chunk
            if first or not answered:
                return owner, first
            logger.warning("forward to %s: the owner closed without an answer", address)
        if deadline.cancelled_caught:
            logger.warning("forward to %s: no answer within %s s", address, seconds)
    except (OSError, trio.BrokenResourceError) as exc:
        logger.warning("forward to %s failed: %s", address, exc)
    except BaseException:
        if owner is not None:
            await trio.aclose_forcefully(owner)
        raise
    if owner is not None:
        await trio.aclose_forcefully(owner)
    return None


async def splice(
    client: trio.abc.Stream,
    owner: trio.SocketStream,
    first: bytes,
    splicer: Splicer | None = None,
) -> None:
    """Move bytes between ``client`` and ``owner`` until the owner is done; close both.

    ``first`` is what the owner already sent. A plain TCP client is spliced in the
    kernel by ``splicer``'s thread, if given; any other is copied through Python. The
    client's end of file (or, copied, its breaking) is passed on as the owner's; the
    owner's end, or a failed write to the client, ends both. Each direction holds at
    most ``SPLICE_CHUNK`` bytes.
    """
    gone = contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError)
    try:
        if splicer is not None and isinstance(client, trio.SocketStream):
            with gone:
                if first:
                    await client.send_all(first)
                await splicer.splice(client, owner)  # the thread closes both sockets
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_upstream, client, owner)
            with gone:
                if first:  # a relay's owner (another worker) may have sent nothing yet
                    await client.send_all(first)
                await _copy(owner, client)
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(TLS_CLOSE_TIMEOUT) as closing:
            closing.shield = True
            await client.aclose()  # with TLS, its close_notify
        await trio.aclose_forcefully(owner)


async def _upstream(client: trio.abc.Stream, owner: trio.SocketStream) -> None:
    """The client's bytes to the owner, then its end of file (or its breaking) too."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await _copy(client, owner)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await owner.send_eof()


async def _copy(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    """``source``'s bytes to ``sink`` through Python, until ``source``'s end of file."""
    while data := await source.receive_some(SPLICE_CHUNK):
        await sink.send_all(data)


class Forwards:
    """This node's forwarded connections, in a nursery of their own.

    Args:
      secret: the cluster's secret, which signs each ``roomkit-forwarded`` header.
      answer_timeout: seconds an owner has to answer (see :func:`forward`).
      metrics: the server's counters: each forward's outcome, and the connections
        being forwarded (``Metrics.forwarding``, which this keeps).

    Spliced connections run in :meth:`run`'s nursery, outside the caller's scope: at
    shutdown the front door is cancelled, and they go on (they carry the rooms of
    other nodes, which do not shut down) until they end or :meth:`drain`'s time is up;
    the end of :meth:`run` then cuts them. :meth:`run` also holds the splicing thread
    of plain TCP clients (``_splicer.py``), started with the first, ended with it.
    """

    def __init__(self, secret: bytes | None, answer_timeout: float, metrics: Metrics) -> None:
        self._secret = secret
        self._timeout = answer_timeout
        self._metrics = metrics
        self._nursery: trio.Nursery | None = None
        self._splicer: Splicer | None = None
        self._ended = trio.Event()

    @property
    def forwarding(self) -> int:
        """Connections being forwarded: connecting to their owners, or spliced."""
        return self._metrics.forwarding

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the spliced connections' nursery and thread until cancelled."""
        async with open_splicer() as splicer, trio.open_nursery() as nursery:
            self._splicer = splicer
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def drain(self, seconds: float) -> None:
        """Wait, at most ``seconds``, for the spliced connections to end."""
        with trio.move_on_after(seconds):
            while self._metrics.forwarding:
                self._ended = trio.Event()
                await self._ended.wait()

    async def forward(
        self, client: trio.abc.Stream, head: Head, remote: tuple[str, int] | None, address: str
    ) -> Forwarded:
        """Forward ``client``'s request to the owner at ``address`` (:func:`forward`,
        with the wall clock), and leave the splice running in this nursery.

        Returns:
          as soon as it is known, what became of it; unless ``UNREACHABLE`` or
          ``MALFORMED``, the splice owns ``client``.
        """
        assert self._nursery is not None, "Forwards.run holds the splices"
        outcome: Forwarded = await self._nursery.start(self._forward, client, head, remote, address)
        self._metrics.forwarded[outcome.value] += 1
        return outcome

    async def _forward(
        self,
        client: trio.abc.Stream,
        head: Head,
        remote: tuple[str, int] | None,
        address: str,
        task_status: trio.TaskStatus[Forwarded],
    ) -> None:
        self._metrics.forwarding += 1
        try:
            await forward(
                client,
                head,
                remote,
                address,
                self._secret,
                answer_timeout=self._timeout,
                now=time.time(),
                splicer=self._splicer if KERNEL_SPLICE else None,
                task_status=task_status,
            )
        finally:
            self._metrics.forwarding -= 1
            self._ended.set()
