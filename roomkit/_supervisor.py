"""The supervisor of ``roomkit serve --workers N``: what ``roomkit serve`` is then.

The processes::

    roomkit serve APP --workers N      the supervisor: no connection ever reaches it
     ├── worker 0                      python -m roomkit._worker SPEC serve APP ...
     ├── worker 1
     └── ...

The supervisor holds what must outlive any one worker: the listening sockets (bound
here, so that port 0 works and every worker accepts on the same ones, the kernel
spreading the connections), the storage file's lock (one server per file: the workers
open it without the lock), a private run directory (mode 0700, removed at exit) for the
workers' hand-off sockets, and one control socket per worker, on which the worker's
heartbeats arrive and whose end tells a worker that the supervisor is gone.

What to do about the workers is decided by :class:`~roomkit._core.supervision.Supervision`;
this module only carries it out: one task (the pump) feeds it events and does what it
answers, while one task per worker reads its heartbeats and another waits for its exit
(in a thread: ``Popen.wait``), each sending what it learns to the pump. Workers are
started from the event loop's own thread, never from a worker thread, because the
kernel's parent-death signal (``PR_SET_PDEATHSIG``) fires when the *thread* that started
a process ends.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Final

import attrs
import trio

from ._core.supervision import (
    HEARTBEAT_TIMEOUT,
    Action,
    Exit,
    Kill,
    Listening,
    Phase,
    Ready,
    Start,
    Stop,
    Supervision,
)
from ._workerspec import READY, WorkerSpec
from ._wsurl import base_url
from .storage import POSTGRES_SCHEMES, SQLiteStore
from .storage._lockfile import LockFile

__all__ = ["supervise"]

logger = logging.getLogger("roomkit.supervisor")

#: Events the pump has not handled yet, at most: heartbeats, exits, signals. Senders
#: wait beyond it, which only delays a heartbeat.
_EVENT_BUFFER: Final = 64
#: Bytes read from a control socket at a time.
_CONTROL_CHUNK: Final = 256


@attrs.define(eq=False)
class _Worker:
    """One worker process, and the supervisor's end of its control socket."""

    slot: int
    process: subprocess.Popen[bytes]
    control: socket.socket
    started: float


@attrs.frozen
class _Heard:
    worker: _Worker
    ready: bool


@attrs.frozen
class _Exited:
    worker: _Worker
    returncode: int


@attrs.frozen
class _Signalled:
    signum: int


_Event = _Heard | _Exited | _Signalled


async def supervise(
    command: Sequence[str],
    count: int,
    *,
    host: str,
    port: int,
    tls: bool,
    storage: str,
    worker_timeout: float = HEARTBEAT_TIMEOUT,
) -> int:
    """Serve with ``count`` worker processes, each running ``roomkit`` with ``command``,
    until SIGTERM or SIGINT; returns the exit status.

    Args:
      command: ``roomkit``'s arguments (``serve MODULE:ATTR ...``), given to every worker.
      count: how many workers.
      host, port: where to listen (port 0 picks one; the log line says which).
      tls: whether the workers serve TLS (for the URL logged).
      storage: the SQLite file, locked here for every worker; ``":memory:"`` or a
        PostgreSQL URL (each worker a member of its cluster): none.
      worker_timeout: seconds a worker's heartbeats may stop before it counts as hung
        and is killed (``--worker-timeout``); each worker is told it, so that its SQLite
        commits wait longer for the write lock (``WorkerSpec.busy_timeout``).

    Raises:
      StorageError: another server holds ``storage``, its lock file cannot be opened, or
        the file cannot be opened or written.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        shared = storage == ":memory:" or storage.startswith(POSTGRES_SCHEMES)
        lock = None if shared else LockFile.acquire(storage)
        try:
            if not shared:
                # The file is made ready (WAL, the schema, a write that works) here, once,
                # before any worker opens it: N workers making a new file WAL at once
                # raced for its lock, and one could fail "database is locked" at start.
                await (await SQLiteStore.open(storage, lock=False)).aclose()
            listeners = await trio.open_tcp_listeners(port, host=host)
            try:
                bound = listeners[0].socket.getsockname()[1]
                with tempfile.TemporaryDirectory(prefix="roomkit-") as rundir:
                    url = base_url(host, bound, secure=tls)
                    supervisor = _Supervisor(
                        list(command), count, rundir, listeners, url, worker_timeout
                    )
                    return await supervisor.run(signals)
            finally:
                for listener in listeners:
                    listener.socket.close()
        finally:
            if lock is not None:
                lock.release()


class _Supervisor:
    def __init__(
        self,
        command: list[str],
        count: int,
        rundir: str,
        listeners: Sequence[trio.SocketListener],
        url: str,
        worker_timeout: float,
    ) -> None:
        self._command = command
        self._count = count
        self._rundir = rundir
        self._listeners = listeners
        self._url = url
        self._worker_timeout = worker_timeout
        self._workers: dict[int, _Worker] = {}
        self._supervision = Supervision(count, trio.current_time(), silence_limit=worker_timeout)
        self._events, self._inbox = trio.open_memory_channel[_Event](_EVENT_BUFFER)
        # One waiting thread per slot at most; Trio's default limiter (40) could leave
        # an exit unseen behind the others.
        self._waiters = trio.CapacityLimiter(count)
        self._failure_logged = False

    async def run(self, signals: AsyncIterator[int]) -> int:
        """Start the workers and watch them until the supervision says to exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._forward, signals)
                status = await self._pump()
                nursery.cancel_scope.cancel()
            return status
        finally:
            for worker in self._workers.values():
                worker.process.kill()  # whatever ended the pump: no worker outlives it

    async def _pump(self) -> int:
        """Feed the supervision every event and deadline, and carry out its actions."""
        while True:
            event: _Event | None = None
            with trio.move_on_at(self._supervision.next_deadline()):
                event = await self._inbox.receive()
            now = trio.current_time()
            actions = self._hear_unread(now) if event is None else self._on(event, now)
            status = self._carry_out(deque([*actions, *self._supervision.tick(now)]), now)
            if status is not None:
                return status

    def _on(self, event: _Event, now: float) -> list[Action]:
        if isinstance(event, _Signalled):
            return self._on_signal(event.signum)
        worker = event.worker
        if self._workers.get(worker.slot) is not worker:
            return []  # from a worker already gone
        if isinstance(event, _Heard):
            return self._supervision.heard(worker.slot, now, ready=event.ready)
        del self._workers[worker.slot]
        actions = self._supervision.exited(worker.slot, now)
        self._log_exit(worker, event.returncode, now)
        self._close_listeners_if_stopping()
        return actions

    def _on_signal(self, signum: int) -> list[Action]:
        name = signal.Signals(signum).name
        if self._supervision.phase in (Phase.DRAINING, Phase.FAILED):
            logger.warning("%s: killing the workers and exiting at once", name)
        else:
            logger.info("%s: draining the workers (a second signal exits at once)", name)
        actions = self._supervision.signalled(signum)
        self._close_listeners_if_stopping()
        return actions

    def _hear_unread(self, now: float) -> list[Action]:
        """At a deadline, count as heard a worker whose heartbeat waits unread: this
        process may have been slow (stopped, swapped out), not the worker."""
        actions: list[Action] = []
        for slot, worker in list(self._workers.items()):
            try:
                waiting = worker.control.recv(1, socket.MSG_PEEK)
            except OSError:  # nothing waits (or the socket is closed: the worker is gone)
                continue
            if waiting:
                actions += self._supervision.heard(slot, now)
        return actions

    def _carry_out(self, actions: deque[Action], now: float) -> int | None:
        """Do ``actions`` in order; the exit status, if one says to exit."""
        while actions:
            action = actions.popleft()
            if isinstance(action, Exit):
                return action.status
            if isinstance(action, Start):
                try:
                    self._start(action.slot, now)
                except OSError:
                    logger.exception("cannot start worker %d", action.slot)
                    actions.extend(self._supervision.exited(action.slot, now))
            elif isinstance(action, Listening):
                logger.info("roomkit listening on %s (%d workers)", self._url, self._count)
            else:
                self._act_on_worker(action, now)
        return None

    def _act_on_worker(self, action: Kill | Stop | Ready, now: float) -> None:
        worker = self._workers[action.slot]
        fields = {"worker": worker.slot, "pid": worker.process.pid}
        if isinstance(action, Kill):
            if action.silent_for is not None:
                logger.warning(
                    "pid %d silent for %.1f s (hung, or stopped): killing it",
                    worker.process.pid,
                    action.silent_for,
                    extra=fields,
                )
            elif action.unready_for is not None:
                logger.warning(
                    "pid %d not serving %.1f s after its start (stuck starting): killing it",
                    worker.process.pid,
                    action.unready_for,
                    extra=fields,
                )
            worker.process.kill()
        elif isinstance(action, Stop):
            worker.process.send_signal(signal.SIGTERM)
        else:
            logger.info(
                "pid %d serves, %.2f s after its start",
                worker.process.pid,
                now - worker.started,
                extra=fields,
            )

    def _start(self, slot: int, now: float) -> None:
        """Start a worker in ``slot``, from this thread (see the module's docstring)."""
        mine, theirs = socket.socketpair()
        listen_fds = tuple(listener.socket.fileno() for listener in self._listeners)
        try:
            spec = WorkerSpec(
                slot,
                self._count,
                self._rundir,
                listen_fds,
                theirs.fileno(),
                worker_timeout=self._worker_timeout,
            )
            process = subprocess.Popen(
                [sys.executable, "-m", "roomkit._worker", spec.to_json(), *self._command],
                pass_fds=(*listen_fds, theirs.fileno()),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        worker = _Worker(slot, process, mine, now)
        self._workers[slot] = worker
        logger.debug("started pid %d", process.pid, extra={"worker": slot, "pid": process.pid})
        self._nursery.start_soon(self._listen_to, worker)
        self._nursery.start_soon(self._wait_for, worker)

    async def _listen_to(self, worker: _Worker) -> None:
        """Pass on the worker's heartbeats until its control socket ends."""
        with trio.socket.from_stdlib_socket(worker.control) as control:
            try:
                while data := await control.recv(_CONTROL_CHUNK):
                    await self._events.send(_Heard(worker, READY in data))
            except OSError:
                pass  # its end, reset: the process is gone, as its exit will say

    async def _wait_for(self, worker: _Worker) -> None:
        returncode = await trio.to_thread.run_sync(
            worker.process.wait, abandon_on_cancel=True, limiter=self._waiters
        )
        await self._events.send(_Exited(worker, returncode))

    async def _forward(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            await self._events.send(_Signalled(signum))

    def _close_listeners_if_stopping(self) -> None:
        """Once no worker will start again, stop listening: a client that reconnects
        at its 1012 must be refused at once, not wait in a backlog nobody accepts."""
        if self._supervision.phase in (Phase.DRAINING, Phase.FAILED):
            for listener in self._listeners:
                listener.socket.close()

    def _log_exit(self, worker: _Worker, returncode: int, now: float) -> None:
        pid, lived = worker.process.pid, now - worker.started
        fields = {"worker": worker.slot, "pid": pid, "status": returncode}
        ended = _ended(returncode)
        phase = self._supervision.phase
        if phase is Phase.FAILED and not self._failure_logged:
            self._failure_logged = True
            logger.critical(
                "cannot start: pid %d %s before it served; stopping", pid, ended, extra=fields
            )
        elif phase in (Phase.DRAINING, Phase.FAILED):
            logger.info("pid %d %s", pid, ended, extra=fields)
        else:
            restart = self._supervision.restart_at(worker.slot)
            assert restart is not None
            when = "at once" if restart <= now else f"in {restart - now:.1f} s"
            logger.warning(
                "pid %d %s after %.1f s; starting another %s", pid, ended, lived, when, extra=fields
            )


def _ended(returncode: int) -> str:
    """How a process ended, from ``Popen.returncode``: ``"was killed by SIGKILL"``."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"
