"""A room's hooks, each run as a transaction behind the room's output gate.

What a hook sends (``send``, ``broadcast``, ``close``) is collected in an outbox
instead of queued, and what it writes to storage in a :class:`~roomkit.storage.Changes`.
When the hook returns, its changes go to the group committer and the actor takes its
next event at once; the outbox waits in the room's
:class:`~roomkit._core.gate.OutputGate` until the commit is durable and every earlier
outbox has been released, so sends leave in hook order and never before the writes
they acknowledge; it is then delivered. When the hook raises, both are dropped and
``on_error`` runs. When a commit fails, the room resets, as a Durable Object whose
storage failed does. When the store refuses a commit because another process has
claimed the room since (:class:`~roomkit.FencedError`), the room is not this process's
any more: nothing it held goes out, its connections are closed with 1012 so that their
clients reconnect to the owner, and it runs no hook again.

The gate decides and awaits nothing; :class:`HookRunner` carries out what it returns:
commits, releases, deliveries. The actor decides when hooks run, one at a time.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Literal, Protocol

import trio
from wsproto.events import CloseConnection

from ._closecodes import CloseCode
from ._core.gate import Outbox, OutputGate, Pending, Settle
from ._core.history import ReplayLog
from ._errors import FencedError, OutsideHookError
from ._metrics import RoomMetrics
from ._room import Room
from ._roomhost import RoomHost
from ._roomid import RoomId
from ._transport import Transport
from .storage import AlarmWrite, Changes, Claim

__all__ = ["HookName", "HookRunner", "Members"]

logger = logging.getLogger("roomkit.room")

HookName = Literal[
    "on_start", "on_connect", "on_message", "on_close", "on_alarm", "on_error", "on_request", "rpc"
]
"""A Room hook, by name: what a hook transaction runs, and its metrics label (``rpc``:
an ``@roomkit.rpc`` method, which a transaction runs as its ``call``)."""


class Members(Protocol):
    """What a room's hooks need of the actor that runs them: whom a reset closes."""

    def all_connections(self) -> list[Transport]: ...

    def log_fields(self) -> dict[str, Any]: ...

    def presence_began(self) -> None: ...

    def presence_rolled_back(self) -> None: ...

    def presence_ended(self) -> None: ...


class HookRunner:
    """The hooks of the live room ``room``: its instance, the running hook's outbox and
    changes, and the output gate they wait in.

    Args:
      host: the server's services: the committer, alarms, the unhandled-error report.
      room: the room's identity.
      metrics: the counters of the room's class.
      members: the actor, for the connections a storage failure closes.
    """

    # Slots: every room keeps one of these, hibernated rooms too.
    __slots__ = (
        "_gate",
        "_host",
        "_members",
        "_metrics",
        "_settled",
        "changes",
        "claim",
        "fenced",
        "instance",
        "log",
        "outbox",
        "room",
        "task",
    )

    def __init__(
        self, host: RoomHost, room: RoomId, metrics: RoomMetrics, members: Members
    ) -> None:
        self.room: Final = room
        self._host = host
        self._metrics = metrics
        self._members = members
        #: The room's Room instance; None while it sleeps, or once storage failed.
        self.instance: Room | None = None
        #: The event loop's task, while the room is awake: the only one hooks run in.
        self.task: trio.lowlevel.Task | None = None
        #: The room's claim in the store, once its first hook is about to run.
        self.claim: Claim | None = None
        #: Whether another process has claimed the room since: no hook runs again.
        self.fenced = False
        #: The running hook's outbox, and its changes once it has written.
        self.outbox: Outbox[Transport] | None = None
        self.changes: Changes | None = None
        #: The room's log of broadcasts, with a history, while its instance lives
        #: (loaded from the store when it starts or wakes); a hook that raises undoes
        #: what it logged, with its writes.
        self.log: ReplayLog | None = None
        self._gate: OutputGate[Transport] | None = None  # see gate
        self._settled: trio.Event | None = None  # set when the gate settles, if awaited

    @property
    def gate(self) -> OutputGate[Transport]:
        """The output gate, made on first use and dropped, empty, when the room sleeps."""
        if self._gate is None:
            self._gate = OutputGate()
        return self._gate

    def rest(self) -> None:
        """The room hibernates or ends, its gate empty: drop the instance and the gate."""
        self.instance = self.task = self._gate = self.log = None

    # Running a hook.

    async def run(self, conn: Transport | None, hook: HookName, *args: Any) -> None:
        """Run ``hook`` (about ``conn``, if any); ``on_error`` if it raises."""
        error = await self.transaction(hook, *args)
        if error is not None:
            await self.report(conn, error)

    async def transaction(
        self,
        hook: HookName,
        *args: Any,
        changes: Changes | None = None,
        settle: Settle | None = None,
        call: Callable[[], Awaitable[object]] | None = None,
    ) -> Exception | None:
        """Run the instance's ``hook`` as a transaction behind the output gate; return
        what it raised.

        With ``call``, the transaction awaits ``call()`` instead of the hook named
        ``hook`` (which then only labels it): a method of the room's own that is no
        hook (an ``@roomkit.rpc`` one), or a hook whose result the caller keeps.
        """
        outbox: Outbox[Transport] = []
        self.outbox, self.changes = outbox, changes  # changes made on the first write
        started = time.perf_counter()
        instance = self.instance
        log = self.log
        mark = None if log is None else log.mark()
        members = self._members
        members.presence_began()
        try:
            if call is None:
                await getattr(instance, hook)(*args)
            else:
                await call()
        except Exception as exc:
            self.gate.drop(outbox)
            if log is not None and mark is not None and self.log is log:
                log.restore(mark)  # what it logged is dropped with its writes
            members.presence_rolled_back()  # and its presence changes, unsent
            return exc
        finally:
            members.presence_ended()
            self._metrics.hook_ran(hook, time.perf_counter() - started)
            changes, self.outbox, self.changes = self.changes, None, None
        if self.instance is not instance:
            # The room was reset (or fenced) while the hook awaited: it ran on memory
            # ahead of the store, after writes that never landed, so neither what it
            # wrote nor what it sent may go out.
            self.gate.drop(outbox)
            if settle is not None:
                settle(False)
            return None
        self.finish(changes, outbox, settle)
        return None

    async def report(self, conn: Transport | None, error: Exception) -> None:
        """Run ``on_error`` for what a hook raised; cut ``conn`` if that raises too."""
        if self.instance is None:  # a failed commit reset the room while the hook ran
            fields = self._members.log_fields() if conn is None else conn.log_fields()
            logger.error(
                "room %s: a hook raised after the room was reset",
                self.room,
                exc_info=error,
                extra=fields,
            )
            self._host.unhandled(error)
            return
        failure = await self.transaction("on_error", None if conn is None else conn.handle, error)
        if failure is not None:
            fields = self._members.log_fields() if conn is None else conn.log_fields()
            logger.error("room %s: on_error raised", self.room, exc_info=failure, extra=fields)
            if conn is not None:
                conn.cut("internal_error", CloseCode.INTERNAL_ERROR, "Internal error")

    def check_in_hook(self) -> None:
        """Raise unless a hook of this room is running, in the current task."""
        if self.outbox is None or trio.lowlevel.current_task() is not self.task:
            raise OutsideHookError("room storage can only be used inside a hook")

    def current_changes(self) -> Changes:
        """The running hook's changes, for writes; raises outside a hook."""
        self.check_in_hook()
        if self.changes is None:
            self.changes = Changes()
        return self.changes

    def storage_layers(self) -> list[Changes]:
        """The changes not yet durable, oldest first; the running hook's last if it has
        written (for reads, which make no changes of their own)."""
        self.check_in_hook()
        layers = self.gate.layers()
        if self.changes is not None:
            layers.append(self.changes)
        return layers

    # The output gate: committing, releasing, delivering.

    def close_behind(self, conns: Sequence[Transport], frame: CloseConnection) -> None:
        """Close ``conns`` with ``frame`` after what the gate has released or still holds
        for them."""
        self.send_behind(frame, conns)

    def send_behind(self, item: bytes | CloseConnection, conns: Sequence[Transport]) -> None:
        """Queue ``item`` for ``conns`` after what the gate has released or still holds
        for them (a close, a presence diff: nothing to commit of their own)."""
        if self._gate is None:  # nothing held (and no gate to make, asleep)
            for conn in conns:
                conn.push(item)
        else:
            self.finish(None, [(item, conns)])

    def finish(
        self, changes: Changes | None, outbox: Outbox[Transport], settle: Settle | None = None
    ) -> None:
        """Commit a returned hook's changes; its outbox is released once they are durable."""
        if changes is not None and changes.alarm is not None:
            self._host.alarm_changed(self.room, changes.alarm)
        gate = self.gate
        if gate.passes(changes, outbox):  # nothing to wait for: out at once
            _deliver((outbox,))
            if settle is not None:
                settle(True)
            return
        pending = gate.finish(changes, outbox, settle)
        if pending is None:
            self._release()
        else:
            assert pending.changes is not None and self.claim is not None
            done = functools.partial(self._committed, pending)
            self._host.commit(self.claim, pending.changes, done, self._release)

    def _committed(self, pending: Pending[Transport], error: Exception | None) -> None:
        gate = self._gate
        try:
            must_reset = gate is not None and gate.committed(pending, error is None)
        except Exception:
            self._broken("recording a commit")
            return
        if must_reset:
            if isinstance(error, FencedError):
                self._fenced(error)
            else:
                self._storage_failed()

    def _release(self) -> None:
        """Deliver every outbox the gate lets go of, in hook order."""
        gate = self._gate
        if gate is None:
            return
        try:
            released = gate.release()
            if released:
                _deliver([pending.outbox for pending in released])
                for pending in released:  # the handshakes that waited for them
                    if pending.settle is not None:
                        pending.settle(True)
        except Exception:
            self._broken("releasing a commit")
            return
        if self._settled is not None and gate.settled:
            self._settled.set()

    def _broken(self, what: str) -> None:
        """A bug of roomkit's own while ``what``: the room's output gate can no longer be
        trusted to release what it holds, so the room resets as after a storage failure
        (1011 to every connection), rather than hold its connections for ever."""
        logger.exception(
            "room %s: %s failed; resetting the room",
            self.room,
            what,
            extra=self._members.log_fields(),
        )
        self._drop_all()
        for conn in self._members.all_connections():
            conn.cut("internal_error", CloseCode.INTERNAL_ERROR, "Internal error")

    async def settle(self) -> None:
        """Wait until no outbox of this room is in flight."""
        while self._gate is not None and not self._gate.settled:
            self._settled = settled = trio.Event()
            await settled.wait()
        self._settled = None

    def wake_settle(self) -> None:
        """Have :meth:`settle`, if it waits, look again: the room sleeps, ended or reset."""
        if self._settled is not None:
            self._settled.set()

    def _storage_failed(self) -> None:
        """A commit failed: nothing held back may go out, and memory may be ahead of disk.

        Like a Durable Object whose storage failed, the room resets: every connection is
        closed with 1011 and the instance is dropped, so the next event starts afresh
        from what the store really holds.
        """
        logger.error(
            "room %s: storage failed; resetting the room",
            self.room,
            extra=self._members.log_fields(),
        )
        self._drop_all(void=True)
        for conn in self._members.all_connections():
            conn.cut("storage_failure", CloseCode.INTERNAL_ERROR, "Storage failure")

    def _fenced(self, error: FencedError) -> None:
        """Another process claimed the room: its writes were refused, and it is theirs.

        Nothing held back goes out (it acknowledged writes that did not land); every
        connection is closed with 1012 "Room moved", so that its client comes back at
        once, to the owner; and the room runs no hook again (``fenced``), not even
        ``on_close``: it ends once its connections are gone. Its alarm is forgotten
        here, where its timer would claim the room back: the owner schedules it.
        """
        logger.warning(
            "%s; closing its connections with 1012", error, extra=self._members.log_fields()
        )
        self._give_up()

    def lapse(self) -> None:
        """This process's lease ran out (or its member was replaced): another member may
        own the room already. As when fenced, nothing held back goes out (its writes may
        never land), every connection is closed with 1012 "Room moved", its alarm is
        left to whoever acquires the room, and no hook runs again, not even ``on_close``.
        """
        if not self.fenced:
            logger.warning(
                "room %s: this process's lease ran out; closing its connections with 1012",
                self.room,
                extra=self._members.log_fields(),
            )
            self._give_up()

    def _give_up(self) -> None:
        self.fenced = True
        self._drop_all()
        self._host.alarm_changed(self.room, AlarmWrite(None))
        for conn in self._members.all_connections():
            conn.cut("fenced", CloseCode.SERVICE_RESTART, "Room moved")

    def _drop_all(self, *, void: bool = False) -> None:
        """Drop every outbox in flight (refusing the handshakes that waited on them)
        and the instance: the room's memory may be ahead of what the store holds.

        With ``void``, the changes of those outboxes still queued for a later commit are
        emptied as well, so that none of them lands: a hook after the failed one wrote
        on top of what never landed (a counter's next value, a log's next entry), and
        its write alone would leave a hole. Only from the committer's own callbacks,
        when no commit is in flight that could be reading them.
        """
        for pending in self.gate.fail():
            if void and pending.changes is not None:
                _void(pending.changes)
            if pending.settle is not None:
                pending.settle(False)
        self.wake_settle()
        self.instance = self.log = None  # memory may be ahead of the store: read it anew


def _void(changes: Changes) -> None:
    """Make ``changes`` write nothing (they are queued: the committer holds them)."""
    changes.writes.clear()
    changes.cleared = False
    changes.alarm = None


def _deliver(outboxes: Iterable[Outbox[Transport]]) -> None:
    """Queue every item of ``outboxes`` in order, then write once per connection."""
    touched: dict[Transport, None] = {}
    for outbox in outboxes:
        for item, recipients in outbox:
            for conn in recipients:
                conn.push(item, kick=False)
                touched[conn] = None
    for conn in touched:  # one write each for everything the hooks sent it
        conn.kick()
