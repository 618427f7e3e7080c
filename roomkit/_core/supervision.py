"""What the supervisor of ``roomkit serve --workers N`` decides about its workers. Pure.

Theory of operation. The supervisor keeps N slots, each holding at most one worker
process at a time; a room lives in a slot, not in a process, so a worker restarted in
its slot gets its rooms back. :class:`Supervision` is told what happens, each time with
``now`` (monotonic seconds), and answers with the :data:`Action` list the supervisor's
I/O layer carries out, in order: start a worker, kill one, tell one to drain, log that
the server listens, exit. It never waits; :meth:`Supervision.next_deadline` says when
:meth:`Supervision.tick` next has something to do.

A slot's :class:`SlotState` moves only through :data:`TRANSITIONS`::

    DOWN      --start-->  STARTING  --ready-->  RUNNING
    STARTING, RUNNING     --drain-->   STOPPING   (SIGTERM: 1012 to clients, then exit)
    STARTING, RUNNING, STOPPING  --silent-->  KILLED   (SIGKILL)
    any but DOWN          --exited-->  DOWN       (and, unless draining, a restart due)

A worker sends a heartbeat every ``HEARTBEAT_INTERVAL`` from a task of its event loop,
so a hung loop stops them as surely as SIGSTOP does. One silent for the
supervision's ``silence_limit`` (``HEARTBEAT_TIMEOUT`` by default) is killed (SIGKILL,
which also ends a stopped process and with it the SQLite write lock it may hold); a new
worker has ``BOOT_TIMEOUT`` to be ready, and one that sends heartbeats but is not ready
by then (stuck as it starts) is killed too. A worker that exits is started again at
once; one that keeps exiting soon after its start waits longer each time
(:func:`restart_delay`), so a crash loop costs little.

The supervisor's :class:`Phase`: STARTING until every slot's worker is ready at once (then
it reports that it listens); RUNNING; DRAINING after SIGTERM or SIGINT (each worker is told
to drain, none is started again, and the supervisor exits 0 once all have exited; a
second signal kills them and exits at once, with 128 + the signal's number); FAILED if
a worker exits before its first ready while the server starts (the application cannot
start: the others drain, and the supervisor exits 1).
"""

from __future__ import annotations

import enum
import math
from typing import Final

import attrs

__all__ = [
    "BOOT_TIMEOUT",
    "FIRST_BACKOFF",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "MAX_BACKOFF",
    "STABLE_AFTER",
    "TRANSITIONS",
    "Action",
    "BadTransition",
    "Exit",
    "Kill",
    "Listening",
    "Phase",
    "Ready",
    "SlotState",
    "Start",
    "Stop",
    "Supervision",
    "restart_delay",
]

#: Seconds between a worker's heartbeats.
HEARTBEAT_INTERVAL: Final = 0.25
#: Seconds of silence after which a worker counts as hung (or stopped) and is killed, by
#: default (``roomkit serve --worker-timeout``). A false kill costs every client of
#: every room of the worker, so a healthy worker must never come near it: at 2 s, six
#: workers on 2 cores holding 10,000-17,000 idle connections each were killed by their
#: own garbage collections (a full one paused a worker 1.0-1.5 s, the GIL keeping its
#: heartbeats in; benchmarks/scale.py), and at 1 s a burst of broadcasts to 200 clients
#: did it. A hung worker is rare, and costs its rooms this long (and a stopped one may
#: hold SQLite's write lock, so the others' commits wait until it is killed: their busy
#: timeout is this plus 5 s, ``WorkerSpec.busy_timeout``): gunicorn waits 30 s; 10 s is
#: five times the worst pause measured.
HEARTBEAT_TIMEOUT: Final = 10.0
#: Seconds a new worker has to be ready: to start Python, import the application (its
#: heartbeats start with its event loop, after that), open its storage and schedule its
#: alarms. Past it, a worker is killed, silent or not: one stuck as it starts would keep
#: the server from listening, or its slot's rooms away, for ever.
BOOT_TIMEOUT: Final = 30.0
#: Seconds a worker must have run before its exit counts as a fresh failure rather than
#: one more of a crash loop. Restarting one that lived this long at once costs at most a
#: tenth of a core (a start takes about half a second of CPU), and a worker killed now
#: and then, by an operator or for hanging, always comes back at once.
STABLE_AFTER: Final = 5.0
#: Seconds before the second restart in a row of a crash loop; each further one doubles.
FIRST_BACKOFF: Final = 0.5
#: Most seconds between restarts of a crash-looping slot.
MAX_BACKOFF: Final = 30.0


def restart_delay(failures: int) -> float:
    """Seconds to wait before starting a slot again after ``failures`` exits in a row,
    each soon after its start: none after the first (a worker killed once comes back at
    once), then ``FIRST_BACKOFF``, doubling up to ``MAX_BACKOFF``."""
    if failures <= 1:
        return 0.0
    return min(FIRST_BACKOFF * 2.0 ** (failures - 2), MAX_BACKOFF)


class SlotState(enum.Enum):
    """What a slot holds."""

    DOWN = "down"  # no process; maybe a restart due
    STARTING = "starting"  # a process, not ready yet
    RUNNING = "running"  # a process that said it is ready
    STOPPING = "stopping"  # a process told to drain
    KILLED = "killed"  # a process sent SIGKILL, not reaped yet


class Trigger(enum.Enum):
    START = "start"
    READY = "ready"
    DRAIN = "drain"
    SILENT = "silent"
    EXITED = "exited"


#: Every move a slot can make; any other is a bug of the supervisor's.
TRANSITIONS: Final[dict[tuple[SlotState, Trigger], SlotState]] = {
    (SlotState.DOWN, Trigger.START): SlotState.STARTING,
    (SlotState.STARTING, Trigger.READY): SlotState.RUNNING,
    (SlotState.STARTING, Trigger.DRAIN): SlotState.STOPPING,
    (SlotState.RUNNING, Trigger.DRAIN): SlotState.STOPPING,
    (SlotState.STARTING, Trigger.SILENT): SlotState.KILLED,
    (SlotState.RUNNING, Trigger.SILENT): SlotState.KILLED,
    (SlotState.STOPPING, Trigger.SILENT): SlotState.KILLED,
    (SlotState.STARTING, Trigger.EXITED): SlotState.DOWN,
    (SlotState.RUNNING, Trigger.EXITED): SlotState.DOWN,
    (SlotState.STOPPING, Trigger.EXITED): SlotState.DOWN,
    (SlotState.KILLED, Trigger.EXITED): SlotState.DOWN,
}


class BadTransition(Exception):
    """Raised when a slot is told of an event its state does not allow (a bug)."""


class Phase(enum.Enum):
    """Where the supervisor is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    FAILED = "failed"


@attrs.frozen
class Start:
    """Start a worker in ``slot``."""

    slot: int


@attrs.frozen
class Kill:
    """SIGKILL the worker of ``slot``: silent for ``silent_for`` seconds; or not ready
    ``unready_for`` seconds after its start (then ``silent_for`` is None); or (both
    None) at a second signal."""

    slot: int
    silent_for: float | None
    unready_for: float | None = None


@attrs.frozen
class Stop:
    """Tell the worker of ``slot`` to drain (SIGTERM): 1012 to its clients, then exit."""

    slot: int


@attrs.frozen
class Ready:
    """The worker started again in ``slot`` is ready (its rooms are back)."""

    slot: int


@attrs.frozen
class Listening:
    """Every slot's worker is ready, for the first time: the server is up."""


@attrs.frozen
class Exit:
    """Exit with ``status``: every worker is gone (or killed, after a second signal)."""

    status: int


Action = Start | Kill | Stop | Ready | Listening | Exit


@attrs.define
class _Slot:
    state: SlotState = SlotState.DOWN
    #: When its process started (STARTING onwards).
    started: float = 0.0
    #: When it was last heard from; None before its first heartbeat.
    heard: float | None = None
    #: When to start it again, while DOWN; None: not to be started.
    restart_at: float | None = None
    #: Exits in a row, each within STABLE_AFTER of its start.
    failures: int = 0
    #: Whether a process of this slot was ever ready.
    was_ready: bool = False

    def move(self, trigger: Trigger) -> None:
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise BadTransition(f"a {self.state.value} worker cannot {trigger.value}") from None

    def deadline(self, silence_limit: float) -> float:
        """When it counts as silent (infinity if it has no process to be silent)."""
        if self.state in (SlotState.DOWN, SlotState.KILLED):
            return math.inf
        boot = self.started + BOOT_TIMEOUT
        if self.heard is None:
            return boot
        beat = self.heard + silence_limit
        return min(beat, boot) if self.state is SlotState.STARTING else beat


class Supervision:
    """The decisions of a supervisor of ``count`` worker slots, started at ``now``,
    that kills a worker silent for ``silence_limit`` seconds.

    Every slot is due to start at once: the first :meth:`tick` starts them all.

    Raises:
      ValueError: if ``count`` is below 1, or ``silence_limit`` is no longer than
        ``HEARTBEAT_INTERVAL`` (every worker would be killed between two heartbeats).
    """

    def __init__(self, count: int, now: float, *, silence_limit: float = HEARTBEAT_TIMEOUT) -> None:
        if count < 1:
            raise ValueError(f"a supervisor needs 1 worker or more, not {count}")
        if not silence_limit > HEARTBEAT_INTERVAL:
            raise ValueError(
                f"a worker's silence limit must be longer than the {HEARTBEAT_INTERVAL} s "
                f"between its heartbeats, not {silence_limit} s"
            )
        self._silence_limit = silence_limit
        self._slots = [_Slot(restart_at=now) for _ in range(count)]
        self._phase = Phase.STARTING
        self._exit_status = 0

    @property
    def phase(self) -> Phase:
        return self._phase

    def state(self, slot: int) -> SlotState:
        """What ``slot`` holds now."""
        return self._slots[slot].state

    def restart_at(self, slot: int) -> float | None:
        """When ``slot``, DOWN, starts again; None if it will not."""
        return self._slots[slot].restart_at

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (infinity: only events will)."""
        deadlines = [slot.deadline(self._silence_limit) for slot in self._slots]
        deadlines += [slot.restart_at for slot in self._slots if slot.restart_at is not None]
        return min(deadlines)

    def tick(self, now: float) -> list[Action]:
        """What the time alone calls for: kill the silent, start what is due."""
        actions: list[Action] = []
        for index, slot in enumerate(self._slots):
            if now >= slot.deadline(self._silence_limit):
                beating = slot.heard is not None and now < slot.heard + self._silence_limit
                silent_for = now - (slot.started if slot.heard is None else slot.heard)
                slot.move(Trigger.SILENT)
                if beating:
                    actions.append(Kill(index, None, unready_for=now - slot.started))
                else:
                    actions.append(Kill(index, silent_for))
            elif slot.restart_at is not None and now >= slot.restart_at:
                slot.move(Trigger.START)
                slot.started, slot.heard, slot.restart_at = now, None, None
                actions.append(Start(index))
        return actions

    def heard(self, slot: int, now: float, *, ready: bool = False) -> list[Action]:
        """The worker of ``slot`` sent a heartbeat, or (``ready``) said it is serving.

        A worker being killed, or gone, is not heard any more.
        """
        state = self._slots[slot]
        if state.state in (SlotState.DOWN, SlotState.KILLED):
            return []
        state.heard = now
        if not ready or state.state is not SlotState.STARTING:
            return []
        state.move(Trigger.READY)
        state.was_ready = True
        if self._phase is Phase.RUNNING:
            return [Ready(slot)]
        if self._phase is Phase.STARTING and all(s.state is SlotState.RUNNING for s in self._slots):
            self._phase = Phase.RUNNING
            return [Listening()]
        return []

    def exited(self, slot: int, now: float) -> list[Action]:
        """The process of ``slot`` ended (however: it exited, crashed, or was killed)."""
        state = self._slots[slot]
        state.move(Trigger.EXITED)
        if self._phase is Phase.STARTING and not state.was_ready:
            self._exit_status = 1
            return self._drain(Phase.FAILED)
        if self._phase in (Phase.DRAINING, Phase.FAILED):
            return self._exit_if_done()
        state.failures = 1 if now - state.started >= STABLE_AFTER else state.failures + 1
        state.restart_at = now + restart_delay(state.failures)
        return []

    def signalled(self, signum: int) -> list[Action]:
        """SIGTERM or SIGINT (number ``signum``): the first drains every worker; the next
        kills them all and exits at once, with 128 + ``signum``."""
        if self._phase not in (Phase.DRAINING, Phase.FAILED):
            return self._drain(Phase.DRAINING)
        actions: list[Action] = []
        for index, slot in enumerate(self._slots):
            if slot.state is not SlotState.DOWN and slot.state is not SlotState.KILLED:
                slot.move(Trigger.SILENT)
                actions.append(Kill(index, None))
        return [*actions, Exit(128 + signum)]

    def _drain(self, phase: Phase) -> list[Action]:
        self._phase = phase
        actions: list[Action] = []
        for index, slot in enumerate(self._slots):
            slot.restart_at = None
            if slot.state in (SlotState.STARTING, SlotState.RUNNING):
                slot.move(Trigger.DRAIN)
                actions.append(Stop(index))
        return actions + self._exit_if_done()

    def _exit_if_done(self) -> list[Action]:
        if all(slot.state is SlotState.DOWN for slot in self._slots):
            return [Exit(self._exit_status)]
        return []
