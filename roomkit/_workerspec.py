"""What the supervisor tells one worker process of ``roomkit serve --workers N``.

The supervisor binds the listening sockets and starts N workers; each inherits the
listeners and a control socket, and learns its place from a :class:`WorkerSpec`. Rooms
are placed over the N worker slots by :mod:`roomkit._core.placement`; each worker also
listens on a Unix socket in the supervisor's private run directory, through which the
others hand it the connections of its rooms.

On the control socket, the worker sends ``HEARTBEAT`` every
``_core.supervision.HEARTBEAT_INTERVAL`` seconds, and ``READY`` once, when it serves;
the supervisor sends nothing, and its end of file means it is gone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Final

import attrs

from ._core.placement import Placement
from ._core.supervision import HEARTBEAT_TIMEOUT
from .storage._sqlite import BUSY_TIMEOUT

__all__ = ["HEARTBEAT", "READY", "WorkerSpec"]

#: A worker's heartbeat on its control socket.
HEARTBEAT: Final = b"."
#: What a worker sends once on its control socket, when it serves (it is a heartbeat too).
READY: Final = b"!"


def _fds(fds: Iterable[int]) -> tuple[int, ...]:
    return tuple(fds)


@attrs.frozen
class WorkerSpec:
    """One worker's place among the supervisor's workers.

    Attributes:
      index: this worker's slot, 0 to ``count - 1``; a worker restarted in place of a
        dead one takes its slot, and with it its rooms.
      count: how many slots there are (``--workers``).
      rundir: the supervisor's private directory (mode 0700) of the workers' sockets.
      listen_fds: the inherited listening sockets' file descriptors.
      control_fd: this worker's end of its control socket with the supervisor: the
        worker's heartbeats go out on it, and its end of file means the supervisor is
        gone.
      worker_timeout: seconds of silence after which the supervisor kills a worker
        (``--worker-timeout``).
    """

    index: int = attrs.field(validator=attrs.validators.ge(0))
    count: int = attrs.field(validator=attrs.validators.ge(1))
    rundir: str
    listen_fds: tuple[int, ...] = attrs.field(converter=_fds)
    control_fd: int
    worker_timeout: float = attrs.field(default=HEARTBEAT_TIMEOUT, validator=attrs.validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if self.index >= self.count:
            raise ValueError(f"worker index {self.index} is not below the count {self.count}")

    @property
    def placement(self) -> Placement:
        """Where rooms live, seen from this worker."""
        return Placement(str(self.index), tuple(str(i) for i in range(self.count)))

    @property
    def busy_timeout(self) -> float:
        """Seconds this worker's SQLite commits wait for the write lock: the supervisor's
        kill deadline, then a single process's ``BUSY_TIMEOUT``.

        A worker stopped (SIGSTOP, a debugger) inside its commit holds the lock until it
        is killed, ``worker_timeout`` after its last heartbeat; a commit of another that
        gave up first would reset its rooms (1011). One that waits this long sees the
        lock freed, and still has the usual wait for the commits queued before it.
        """
        return self.worker_timeout + BUSY_TIMEOUT

    def socket_path(self, index: int) -> str:
        """The Unix socket on which worker ``index`` takes the connections handed to it."""
        return os.path.join(self.rundir, f"worker-{index}.sock")

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Raises: ValueError, TypeError, KeyError: if ``text`` is no spec."""
        fields = json.loads(text)
        return cls(**fields)
