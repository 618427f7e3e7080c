"""One worker process of ``roomkit serve --workers N``: ``python -m roomkit._worker``.

The supervisor (``_supervisor``) starts it as ``python -m roomkit._worker SPEC serve
MODULE:ATTR [options]``: ``SPEC`` is its :class:`WorkerSpec` as JSON, and the rest is
the supervisor's own command line, parsed again here (with the same environment), so
that a worker serves exactly as ``roomkit serve`` alone would, over the listening
sockets it inherits instead of its own.

Its life: it dies with the supervisor (Linux: the kernel sends it SIGKILL when the
supervisor's process ends, ``PR_SET_PDEATHSIG``); it sends a heartbeat every
``HEARTBEAT_INTERVAL`` seconds on its control socket, from a task of its event loop, so
that a loop that hangs stops them and the supervisor replaces it; it says ``READY`` once
it serves. SIGTERM, or the end of its control socket (the supervisor is gone, wherever
the kernel does not end it first), drains it as SIGTERM drains ``roomkit serve``: 1012
to every client, then exit 0. SIGINT is the supervisor's alone: a Ctrl-C in a terminal
reaches every process of the group, and the supervisor then drains its workers itself.

It opens its SQLite file itself, without the lock (the supervisor holds it) and with
the spec's ``busy_timeout``: its commits wait out a worker stopped inside its own
until the supervisor kills it, rather than give up first and reset their rooms.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final

import trio

from ._cli import parse_args, serve_arguments
from ._core.supervision import HEARTBEAT_INTERVAL
from ._envoptions import UsageError
from ._errors import StorageError, first_leaf
from ._logs import configure_logging
from ._room import Room
from ._server import SERVE_OPTIONS, Listen, ServeOptions, serve_on
from ._workerspec import HEARTBEAT, READY, WorkerSpec
from .storage import POSTGRES_SCHEMES, SQLiteStore, Store

__all__ = ["main"]

logger = logging.getLogger("roomkit.server")

#: prctl(2)'s option that names the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG: Final = 1


def main(argv: Sequence[str] | None = None) -> None:
    """Run one worker: ``argv`` is the spec's JSON, then ``roomkit serve``'s arguments.

    Exits 0 after a drain, 1 if its storage cannot be opened, 2 for a usage error (the
    supervisor checked the command line, so only a file changed since can cause one).
    """
    spec_json, *command = sys.argv[1:] if argv is None else argv
    spec = WorkerSpec.from_json(spec_json)
    _die_with_the_supervisor()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in (*spec.listen_fds, spec.control_fd):
        os.set_inheritable(fd, False)  # kept from the processes the application starts
    args = parse_args(command)
    configure_logging(args.log_level, json_lines=args.log_json, worker=spec.index)
    try:
        rooms, options = serve_arguments(args)
    except UsageError as exc:
        logger.critical("cannot start: %s", exc)
        sys.exit(2)
    try:
        trio.run(partial(run_worker, spec, rooms, SERVE_OPTIONS.complete(options)))
    except* StorageError as group:
        logger.critical("cannot start: %s", first_leaf(group))
        sys.exit(1)


async def run_worker(
    spec: WorkerSpec, rooms: type[Room] | Mapping[str, type[Room]], options: ServeOptions
) -> None:
    """Serve over the inherited listeners until SIGTERM or the supervisor's end, then
    drain; heartbeats go out all along, the drain included."""
    control = trio.socket.from_stdlib_socket(socket.socket(fileno=spec.control_fd))
    ready = trio.Event()
    with control, trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with (
            _opened_storage(options["storage"], spec.busy_timeout) as storage,
            trio.open_nursery() as beating,
        ):
            beating.start_soon(_beat, control, ready)
            served: ServeOptions = {**options, "storage": storage}
            async with trio.open_nursery() as serving:
                listen = inherited_listeners(spec, options["host"])
                server = await serving.start(partial(serve_on, listen, rooms, served, worker=spec))
                ready.set()
                why = await _told_to_stop(control, signals)
                logger.info("%s: draining", why)
                server.shutdown(restart=True)
            beating.cancel_scope.cancel()


@asynccontextmanager
async def _opened_storage(
    storage: str | os.PathLike[str] | Store, busy_timeout: float
) -> AsyncIterator[str | os.PathLike[str] | Store]:
    """``storage`` for ``serve_on``: a SQLite file opened here, without its lock and
    with ``busy_timeout``, and closed on the way out; a store or a PostgreSQL URL (which
    ``serve_on`` opens) as it is.

    Raises:
      StorageError: the file cannot be opened or written.
    """
    if isinstance(storage, Store) or os.fspath(storage).startswith(POSTGRES_SCHEMES):
        yield storage
        return
    store = await SQLiteStore.open(storage, lock=False, busy_timeout=busy_timeout)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


def inherited_listeners(spec: WorkerSpec, host: str) -> Listen:
    """The ``listen`` of ``serve_on``: the listening sockets the supervisor bound."""

    async def listen() -> tuple[list[trio.SocketListener], str, int]:
        listeners = [
            trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
            for fd in spec.listen_fds
        ]
        return listeners, host, listeners[0].socket.getsockname()[1]

    return listen


async def _beat(control: trio.socket.SocketType, ready: trio.Event) -> None:
    """A heartbeat every ``HEARTBEAT_INTERVAL``, and READY as soon as ``ready`` is set.

    Ends quietly if the supervisor is gone: ``_told_to_stop`` sees it too.
    """
    announced = False
    try:
        while True:
            message = HEARTBEAT
            if ready.is_set() and not announced:
                message, announced = READY, True
            await control.send(message)
            if announced:
                await trio.sleep(HEARTBEAT_INTERVAL)
            else:
                with trio.move_on_after(HEARTBEAT_INTERVAL):
                    await ready.wait()
    except OSError:
        return


async def _told_to_stop(control: trio.socket.SocketType, signals: AsyncIterator[int]) -> str:
    """Wait for SIGTERM or the end of the control socket; say which came."""
    why = ""
    async with trio.open_nursery() as nursery:

        async def signalled() -> None:
            nonlocal why
            why = signal.Signals(await anext(signals)).name
            nursery.cancel_scope.cancel()

        async def orphaned() -> None:
            nonlocal why
            try:
                while await control.recv(64):
                    pass  # the supervisor sends nothing; ignore it if it does
            except OSError:
                pass
            why = "the supervisor is gone"
            nursery.cancel_scope.cancel()

        nursery.start_soon(signalled)
        nursery.start_soon(orphaned)
    return why


def _die_with_the_supervisor() -> None:
    """On Linux, have the kernel SIGKILL this process when the supervisor's ends.

    (A supervisor gone before this call leaves the control socket's end of file, which
    ``_told_to_stop`` sees.) Elsewhere, the end of file alone ends a worker.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: errno {errno}")


if __name__ == "__main__":
    main()
