"""The kernel splices of a process's plain-TCP pairs, pumped by one thread of their own.

Splicing a pair from Trio's tasks cost each message two wake-ups of the scheduler (the
reading task's, then the writing task's): most of what a forwarded round trip added.
So a pair's two sockets are handed, descriptors and all, to one thread per process,
started with the first pair, whose plain ``select.epoll`` loop does the splicing: an
event is one dict lookup and two ``os.splice`` calls, and Trio hears only of a pair's
end, through its token (``run_sync_soon``). The loop touches nothing else of Trio's.

Theory of operation. A pair is two sockets, the client's and the owner's, and two
flows, up (client to owner) and down (owner to client), each through a pipe of its
own. A flow is in one of three states (:class:`Flow`):

========  ==========================================================================
READING   its pipe is empty and its source is watched (``EPOLLIN``). Readable: up to
          ``SPLICE_CHUNK`` bytes go into the pipe and on to the sink at once; if the
          sink takes them all it stays READING, else it becomes HELD. At its source's
          end of file, up becomes DONE and down ends the pair.
HELD      its pipe holds bytes, its source is not watched (nothing more is read: a
          slow reader slows its writer) and its sink is (``EPOLLOUT``); once the pipe
          is empty, READING again.
DONE      up only: the client's end of file was passed on to the owner
          (``shutdown(SHUT_WR)``); down goes on until the owner's end.
========  ==========================================================================

The watches are level-triggered: a source with more than a chunk is read again at the
next turn of the loop, after every other ready flow had its turn. A socket is watched
for what its two flows need, and not at all when they need nothing, so that a
hang-up it keeps reporting cannot spin the loop. A pair ends at the owner's end of
file, at an error of either socket, at any other failure of its own (logged), or when
Trio cuts it: the thread owns both sockets and both pipes from the hand-over, and
closes them all, once. Should the loop itself fail, it is logged, every pair is cut,
and the next pair starts a thread anew.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import os
import select
import socket
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Final

import attrs
import trio

__all__ = ["KERNEL_SPLICE", "SPLICE_CHUNK", "Splicer", "open_splicer"]

logger = logging.getLogger("roomkit.server")

#: Bytes each direction moves at a time, and so holds at most (a pipe's capacity).
SPLICE_CHUNK: Final = 64 * 1024
#: Whether plain TCP pairs can be spliced in the kernel (``os.splice``, epoll: Linux).
KERNEL_SPLICE: Final = hasattr(os, "splice") and hasattr(select, "epoll")
#: ``os.splice``'s flags: never wait on a pipe (the sockets do not wait either).
_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
#: The events that let a HELD flow's sink take more, or tell that it cannot.
_WRITABLE: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP if KERNEL_SPLICE else 0
#: The events that let a READING flow's source give more, its end, or its error.
_READABLE: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP if KERNEL_SPLICE else 0


class Flow(enum.Enum):
    """Where one direction of a pair is (the module's table says when it moves)."""

    READING = "reading"
    HELD = "held"
    DONE = "done"


READING, HELD, DONE = Flow.READING, Flow.HELD, Flow.DONE


@attrs.define(eq=False)
class _Direction:
    """One flow of a pair: from ``source`` through a pipe to ``sink`` (descriptors)."""

    pair: _Pair
    source: int
    sink: int
    pipe_out: int
    pipe_in: int
    up: bool
    state: Flow = READING
    held: int = 0  # bytes in the pipe


@attrs.define(eq=False)
class _End:
    """One socket of a pair: the flow it feeds, the flow it drains, what is watched."""

    fd: int
    pair: _Pair
    reads: _Direction
    writes: _Direction
    mask: int = 0


@attrs.define(eq=False)
class _Pair:
    """Two sockets spliced both ways; ``report`` tells Trio that the pair ended."""

    client: socket.socket
    owner: socket.socket
    report: Callable[[], None]
    ends: tuple[_End, _End] | None = None  # once the thread has taken it up
    pipes: tuple[int, ...] = ()
    ended: bool = False


_Command = tuple[Callable[["_Loop", _Pair | None], bool], _Pair | None]
"""What Trio asks of the loop: take a pair up, cut it, or stop."""


class _Loop:
    """The thread's side: its epoll, the pairs' sockets by descriptor, the pumping.

    Only the thread calls these methods; Trio reaches it through :class:`Splicer`'s
    commands."""

    def __init__(self, wake: int, commands: collections.deque[_Command]) -> None:
        self._epoll = select.epoll()
        self._wake = wake
        self._commands = commands
        self._ends: dict[int, _End] = {}
        self._pairs: set[_Pair] = set()
        self._epoll.register(wake, select.EPOLLIN)

    def run(self, exited: Callable[[], None]) -> None:
        """Pump until told to stop; then end every pair left, and call ``exited``."""
        try:
            self._pump_until_stopped()
        except Exception:
            logger.exception("the splicing thread failed: its pairs are cut")
            with contextlib.suppress(Exception):  # logged already
                self._obey()  # the pairs handed over meanwhile are cut too, not forgotten
        finally:
            for pair in list(self._pairs):
                self.cut(pair)
            self._epoll.close()
            exited()

    def _pump_until_stopped(self) -> None:
        poll, ends, wake, event = self._epoll.poll, self._ends, self._wake, self._event
        while True:
            for fd, events in poll():
                end = ends.get(fd)
                if end is not None:
                    event(end, events)
                elif fd == wake and self._obey():
                    return

    def _obey(self) -> bool:
        """Carry out Trio's commands; True once told to stop."""
        with contextlib.suppress(BlockingIOError):  # none since the last time
            os.eventfd_read(self._wake)
        stop = False
        while self._commands:
            command, pair = self._commands.popleft()
            try:
                stop = command(self, pair) or stop
            except Exception:  # a pair's own failure: it is ended, the loop goes on
                logger.exception("the splicer failed to carry out %s", command.__name__)
        return stop

    def _event(self, end: _End, events: int) -> None:
        try:
            if end.writes.state is HELD and events & _WRITABLE:
                self._flush(end.writes)
            if end.reads.state is READING and events & _READABLE:
                self._read(end.reads)
        except OSError:  # a side broke: reset, or gone
            self._end(end.pair)
        except Exception:
            logger.exception("splicing a forwarded connection failed: it is cut")
            self._end(end.pair)

    def _read(self, flow: _Direction) -> None:
        try:
            moved = os.splice(flow.source, flow.pipe_in, SPLICE_CHUNK, flags=_FLAGS)
        except BlockingIOError:
            return
        if moved:
            flow.held = moved
            self._flush(flow)
            return
        if not flow.up:
            self._end(flow.pair)  # the owner is done
            return
        flow.state = DONE
        flow.pair.owner.shutdown(socket.SHUT_WR)
        self._watch(self._ends[flow.source])

    def _flush(self, flow: _Direction) -> None:
        try:
            written = os.splice(flow.pipe_out, flow.sink, flow.held, flags=_FLAGS)
        except BlockingIOError:
            written = 0
        flow.held -= written
        if flow.held and flow.state is READING:
            flow.state = HELD
        elif not flow.held and flow.state is HELD:
            flow.state = READING
        else:
            return
        self._watch(self._ends[flow.source])
        self._watch(self._ends[flow.sink])

    def _watch(self, end: _End) -> None:
        """Watch ``end``'s socket for what its flows need now (or not at all)."""
        mask = (select.EPOLLIN if end.reads.state is READING else 0) | (
            select.EPOLLOUT if end.writes.state is HELD else 0
        )
        if mask == end.mask:
            return
        if not end.mask:
            self._epoll.register(end.fd, mask)
        elif mask:
            self._epoll.modify(end.fd, mask)
        else:
            self._epoll.unregister(end.fd)
        end.mask = mask

    def add(self, pair: _Pair | None) -> bool:
        """Take ``pair`` up: its pipes, its two ends, watched for reading."""
        assert pair is not None
        self._pairs.add(pair)
        try:
            up_out, up_in = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            pair.pipes = (up_out, up_in)
            down_out, down_in = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            pair.pipes += (down_out, down_in)
            client, owner = pair.client.fileno(), pair.owner.fileno()
            up = _Direction(pair, client, owner, up_out, up_in, up=True)
            down = _Direction(pair, owner, client, down_out, down_in, up=False)
            pair.ends = (_End(client, pair, up, down), _End(owner, pair, down, up))
            for end in pair.ends:
                self._ends[end.fd] = end
                self._watch(end)
        except OSError as exc:  # out of descriptors, say: this pair only
            logger.warning("splicing a forwarded connection failed: %s", exc)
            self._end(pair)
        except BaseException:
            self._end(pair)
            raise
        return False

    def cut(self, pair: _Pair | None) -> bool:
        """End ``pair`` now, if it has not ended yet."""
        assert pair is not None
        self._end(pair)
        return False

    def stop(self, pair: _Pair | None) -> bool:
        """Stop the loop (the pairs left are cut on the way out)."""
        return True

    def _end(self, pair: _Pair) -> None:
        """Close ``pair``'s sockets and pipes, once, and report its end."""
        if pair.ended:
            return
        pair.ended = True
        self._pairs.discard(pair)
        try:
            for end in pair.ends or ():
                self._ends.pop(end.fd, None)
                if end.mask:
                    self._epoll.unregister(end.fd)
            pair.client.close()
            pair.owner.close()
            for fd in pair.pipes:
                os.close(fd)
        finally:
            pair.report()


class Splicer:
    """Trio's side of the splicing thread: hands pairs over, hears of their ends.

    Made by :func:`open_splicer`. The thread starts with the first pair; each command
    (a pair to take up, one to cut, the stop) is queued and the thread woken through
    an eventfd, so that nothing here waits for the thread.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._commands: collections.deque[_Command] = collections.deque()
        self._wake = -1
        self._loop: _Loop | None = None
        self._exited = trio.Event()

    async def splice(self, client: trio.SocketStream, owner: trio.SocketStream) -> None:
        """Splice ``client`` and ``owner`` both ways until the pair ends (see the
        module's table); cancelled, cut it.

        Both streams' descriptors pass to the thread, which closes them: from the call
        on, the streams themselves are closed.
        """
        self._start()
        ended = trio.Event()
        pair = _Pair(_detach(client), _detach(owner), partial(self._report, ended.set))
        self._post(_Loop.add, pair)
        try:
            await ended.wait()
        finally:
            if not ended.is_set():
                self._post(_Loop.cut, pair)

    def _start(self) -> None:
        """Start the loop's thread with the first pair, or again if it failed."""
        if self._loop is None or self._exited.is_set():
            if self._wake >= 0:
                os.close(self._wake)
            self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._exited = trio.Event()
            self._loop = _Loop(self._wake, self._commands)
            exited = partial(self._report, self._exited.set)
            thread = threading.Thread(
                target=self._loop.run, args=(exited,), name="roomkit-splicer", daemon=True
            )
            thread.start()

    def _post(self, command: Callable[[_Loop, _Pair | None], bool], pair: _Pair | None) -> None:
        """Queue ``command`` for whichever loop runs (a new one takes up what a failed
        one left), and wake it."""
        self._commands.append((command, pair))
        os.eventfd_write(self._wake, 1)

    def _report(self, callback: Callable[[], None]) -> None:
        """``callback`` run in Trio's thread (from the splicing thread)."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(callback)

    async def aclose(self) -> None:
        """Stop the thread, if it started: the pairs left are cut, then it ends."""
        if self._loop is None:
            return
        self._post(_Loop.stop, None)
        await self._exited.wait()
        os.close(self._wake)


@contextlib.asynccontextmanager
async def open_splicer() -> AsyncIterator[Splicer]:
    """A :class:`Splicer` for this Trio run; at the end of the block its thread (if
    any) cuts the pairs left and ends, before this returns."""
    splicer = Splicer(trio.lowlevel.current_trio_token())
    try:
        yield splicer
    finally:
        with trio.CancelScope(shield=True):
            await splicer.aclose()


def _detach(stream: trio.SocketStream) -> socket.socket:
    """``stream``'s socket as a plain one, which Trio's no longer closes."""
    return socket.socket(fileno=stream.socket.detach())
