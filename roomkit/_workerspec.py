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
    """

    index: int = attrs.field(validator=attrs.validators.ge(0))
    count: int = attrs.field(validator=attrs.validators.ge(1))
    rundir: str
    listen_fds: tuple[int, ...] = attrs.field(converter=_fds)
    control_fd: int

    def __attrs_post_init__(self) -> None:
        if self.index >= self.count:
            raise ValueError(f"worker index {self.index} is not below the count {self.count}")

    @property
    def placement(self) -> Placement:
        """Where rooms live, seen from this worker."""
        return Placement(str(self.index), tuple(str(i) for i in range(self.count)))

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
