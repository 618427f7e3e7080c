"""This process as a member of a cluster on PostgreSQL: the Trio side.

A server whose storage is a ``postgresql://`` URL is a cluster member (a node of one
process, or one worker of ``--workers N``). Its :class:`Member`:

* registers in the members table (a new incarnation) before it serves, and heartbeats
  every lease/3 on the store's heartbeat connection, never behind a commit;
* keeps its lease by this process's monotonic clock (``_core/lease.py``) and writes its
  end into the room host (``Host.valid_until``), which every room compares with
  ``trio.current_time()`` before each event. When the lease runs out (the heartbeats
  failed, or the process was stopped) or the member was replaced, every room of this
  process is fenced here at once: its outboxes dropped, its clients closed with 1012
  "Room moved", no hook run, not even ``on_close``; until a heartbeat succeeds again,
  new handshakes get 503 and no room is acquired;
* acquires rooms for their actors (``Host.claim``): the store gives the room a new
  epoch if nobody live owns it, in the same transaction as it reads the room's alarm,
  which is then scheduled here; if another member owns it, the room is fenced here and
  the directory cache learns the owner;
* polls the alarms of rooms nobody live owns (every lease/2, those due within a
  lease), acquires those placed in this worker and schedules them;
* releases the room of each actor that ends here (the host calls
  :meth:`Member.release`): the next client's node acquires it, so that behind a
  balancer that hashes on the room, rooms follow the balancer rather than stay where
  they first started. In the background, never in the room's way, one round trip for
  every room that ended meanwhile;
* answers the front door's question, who owns a room (``locate``), from a small cache
  of the directory: an entry lives a lease at most, and never past the end of the
  owner's lease as the directory gave it (``_core/location.py``, ``trusted_until``), so
  that a stopped owner's rooms are acquired as soon as its row expires; an entry is
  dropped when a forward fails;
* drains at shutdown: marks itself draining, lets the host shut down (1012, flush),
  releases its rooms' claims, and leaves the members table, so that its rooms move at
  once rather than after a lease.

What the data's safety rests on is the fence in the store, not this: every write
carries its room's epoch, checked in the same transaction. The lease only stops a
stale process from serving.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Final

import trio

from ._core.lease import Heard, Lease
from ._core.location import Located, Membership, trusted_until
from ._host import Host
from ._roomid import RoomId
from .storage import Acquired, AlarmWrite, Claim, ClusterStore, Owned

__all__ = ["DIRECTORY_CACHE", "Member", "secret_bytes"]

logger = logging.getLogger("roomkit.cluster")

#: Rooms whose owner the directory cache remembers; past it, the oldest entry goes.
DIRECTORY_CACHE: Final = 10_000


def secret_bytes(secret: str | None) -> bytes | None:
    """The cluster's secret (``cluster_secret``) as the forwarded header's HMAC key;
    without one, a warning that owners will see the forwarding node's address."""
    if secret is None:
        logger.warning(
            "the cluster has no secret (--cluster-secret): rooms see the address of the "
            "node that forwarded a client, not the client's"
        )
        return None
    return secret.encode()


#: Why a heartbeat's answer fences every room.
_FENCED_BECAUSE: Final = {
    Heard.REPLACED: "replaced by another process of the same member id",
    Heard.RENEWED: "lease ran out before its renewal came back",
    Heard.FAILED: "lease ran out",
}


class Member:
    """This process in its cluster: its registration, its lease, the rooms it holds.

    Args:
      store: the cluster's store.
      membership: this process's member id and its node's workers.
      lease: seconds (``--lease``): how long the members table keeps this member live
        after each heartbeat.

    The room host it holds rooms for is given to :meth:`register`, since the host
    acquires its rooms through :meth:`acquire`.
    """

    def __init__(self, store: ClusterStore, membership: Membership, lease: float) -> None:
        self.membership: Final = membership
        self.me: Final = membership.me
        self._store = store
        self._lease = Lease(lease)
        self._host: Host | None = None
        self._incarnation: int | None = None
        self._renewed = trio.Event()
        self._draining = False  # drain() was called: no room is acquired any more
        self._scope = trio.CancelScope()  # run()'s, cancelled when the member leaves
        # Rooms the orphan poll acquired, for the actor their alarm makes.
        self._acquired: dict[RoomId, Claim] = {}
        #: How many times this process fenced every room (its lease ran out, or it was
        #: replaced): an acquire that spans one is not served.
        self._fences = 0
        # The claims of rooms that ended here, to release; and the releaser's wake-up.
        self._releasing: dict[RoomId, Claim] = {}
        self._ended = trio.Event()
        # The directory cache: a room's owner elsewhere, and until when it is trusted.
        self._directory: dict[RoomId, tuple[Located, float]] = {}

    @property
    def _rooms(self) -> Host:
        """The room host, once registered."""
        assert self._host is not None, "a member holds rooms once registered"
        return self._host

    @property
    def lease(self) -> float:
        return self._lease.seconds

    def valid(self) -> bool:
        """Whether this process's lease runs now: it may serve and acquire rooms."""
        return self._lease.valid(trio.current_time())

    async def register(self, host: Host) -> None:
        """Register in the members table (a new incarnation) to hold ``host``'s rooms;
        valid from now on.

        Raises:
          Exception: whatever the store raises (PostgreSQL unreachable): the server
            does not start.
        """
        self._host = host
        sent = trio.current_time()
        await self._register()
        self._heard(sent, Heard.RENEWED)

    async def _register(self) -> None:
        self._incarnation = await self._store.register(
            self.me, self.membership.advertise, self.lease
        )
        logger.debug(
            "member %s registered (incarnation %d, lease %s s)",
            self.me,
            self._incarnation,
            self.lease,
        )

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Heartbeat, watch the lease and poll orphan alarms, until cancelled or
        :meth:`leave`."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._watch)
                nursery.start_soon(self._orphans)
                nursery.start_soon(self._releases)
                task_status.started()

    # The lease.

    async def _heartbeats(self) -> None:
        due = trio.current_time() + self._lease.interval
        while True:
            await trio.sleep_until(due)
            sent = trio.current_time()
            due = self._heard(sent, await self._beat())

    async def _beat(self) -> Heard:
        """One heartbeat (a registration, after the member was replaced); what it did.

        It may take no longer than the lease: a heartbeat that hangs (PostgreSQL
        unreachable) counts as failed, and the next one is tried.
        """
        incarnation = self._incarnation
        with trio.move_on_after(self.lease):
            try:
                if incarnation is None:
                    await self._register()
                    return Heard.RENEWED
                if await self._store.heartbeat(self.me, incarnation, self.lease):
                    return Heard.RENEWED
                logger.warning("member %s was replaced; registering again", self.me)
                self._incarnation = None
                return Heard.REPLACED
            except Exception as exc:
                logger.warning("member %s: heartbeat failed: %s", self.me, exc)
        return Heard.FAILED

    def _heard(self, sent: float, outcome: Heard) -> float:
        """Carry out what the heartbeat sent at ``sent`` came back with; when the next is
        due."""
        verdict = self._lease.heard(sent, trio.current_time(), outcome)
        if verdict.fence:  # before the lease's new end is written: no event slips in
            self._fence(_FENCED_BECAUSE[outcome])
        self._rooms.valid_until = self._lease.until
        if verdict.resumed:
            logger.info("member %s: lease renewed; serving again", self.me)
        if outcome is Heard.RENEWED:
            self._renewed.set()
        return verdict.next

    async def _watch(self) -> None:
        """Fence every room here as soon as the lease runs out, events or none."""
        while True:
            await trio.sleep_until(self._lease.until)
            if self._lease.expired(trio.current_time()):
                self._fence("lease ran out")
            if not self.valid():  # no lease (run out, or not registered): wait for one
                self._renewed = trio.Event()
                await self._renewed.wait()

    def _fence(self, why: str) -> None:
        """This process may own nothing now: fence every room, forget every claim."""
        rooms = self._rooms.fence_all()
        logger.warning("member %s: %s; fenced %d rooms here", self.me, why, rooms)
        self._fences += 1  # an acquire in flight now is not to be served: see _acquire
        for room in self._acquired:  # their alarms go to whoever acquires them next
            self._rooms.alarm_changed(room, AlarmWrite(None))
        self._acquired.clear()
        self._directory.clear()

    # Rooms.

    async def acquire(self, room: RoomId) -> Claim | None:
        """Acquire ``room`` for its actor: its claim, or None if it is not to be served
        here (another member owns it, this lease ran out or the member drains, or the
        store failed: the handshakes waiting get 503, and their clients come back).

        The room's stored alarm, if any, is scheduled here.
        """
        claim = self._acquired.pop(room, None)
        if claim is not None:
            return claim
        acquired = await self._acquire(room)
        return None if acquired is None else acquired.claim

    async def _acquire(self, room: RoomId) -> Acquired | None:
        if self._draining or not self.valid():
            return None
        fences, asked = self._fences, trio.current_time()
        try:
            outcome = await self._store.acquire(room, self.me, lock_timeout=self.lease)
        except Exception as exc:  # a lock held past the lease, PostgreSQL unreachable
            logger.warning("room %s: acquiring the room failed: %s", room, exc)
            return None
        if isinstance(outcome, Acquired) and (
            self._fences != fences or self._draining or not self.valid()
        ):
            # The lease ran out (or the drain began) while the acquire was in flight: a
            # claim won then must not be served, or the room would run hooks past the
            # lease that fenced every other room here. Its next client acquires again.
            self.release(outcome.claim)
            return None
        if isinstance(outcome, Owned):
            logger.info("room %s: owned by %s; not served here", room, outcome.member)
            if not outcome.draining:  # a draining owner's room is free soon: ask again then
                located = Located(outcome.member, outcome.address, live=True)
                self._remember(room, located, trusted_until(asked, self.lease, outcome.expires_in))
            return None
        self._directory.pop(room, None)
        if outcome.alarm is not None:
            self._rooms.alarm_changed(room, outcome.alarm)
        return outcome

    def release(self, claim: Claim) -> None:
        """The room of ``claim`` ended here (no connection, nothing pending): give it up
        in the directory, so that whichever node its next client reaches acquires it,
        instead of forwarding the client here for as long as this member lives.

        Never waits: the release goes out in the background (:meth:`_releases`). A new
        actor of the room may acquire it here meanwhile: the release is conditional on
        the claim's epoch, which that acquire moved on, so it then changes nothing.

        A room whose alarm is due within a lease keeps its claim, for the actor its
        alarm makes here on time (as the orphan poll's rooms do). One with a later alarm
        forgets it here: whoever acquires the room next schedules it, the orphan poll of
        any member (this one too) within a lease of its due time, so that the alarm runs
        once, in the room's owner, and on time. While the member drains nothing is
        released here: the drain releases every room.
        """
        if self._draining:
            return
        room = claim.room
        alarm = self._rooms.stored_alarm(room)
        if alarm is not None and alarm.due is not None:
            if alarm.due < self._rooms.wall_time() + self.lease:
                self._acquired[room] = claim
                return
            self._rooms.alarm_changed(room, AlarmWrite(None))
        self._releasing[room] = claim
        self._ended.set()

    async def _releases(self) -> None:
        """Release the rooms that ended here, all those pending in one round trip.

        A release that fails (PostgreSQL unreachable) is given up: the rooms stay this
        live member's, as they would without it, and are acquired here again (or their
        clients forwarded here) until it leaves or its lease runs out.
        """
        while True:
            await self._ended.wait()
            self._ended = trio.Event()
            claims = list(self._releasing.values())
            self._releasing.clear()
            try:
                await self._store.release(claims, self.me)
            except Exception as exc:
                logger.warning(
                    "member %s: releasing %d rooms that ended failed: %s",
                    self.me,
                    len(claims),
                    exc,
                )

    async def locate(self, room: RoomId) -> Located | None:
        """The room's owner as the directory says (None: nobody ever, or released).

        Raises:
          Exception: whatever the store raises; the caller answers 503.
        """
        cached = self._directory.get(room)
        if cached is not None:
            located, until = cached
            if trio.current_time() < until:
                return located
            del self._directory[room]
        asked = trio.current_time()
        owner = await self._store.locate(room)
        if owner is None:
            return None
        located = Located(owner.member, owner.address or "", owner.live)
        if located.live and located.member != self.me:
            self._remember(room, located, trusted_until(asked, self.lease, owner.expires_in))
        return located

    def forget(self, room: RoomId) -> None:
        """Drop what the cache says of ``room``'s owner: reaching it failed."""
        self._directory.pop(room, None)

    def _remember(self, room: RoomId, located: Located, until: float) -> None:
        """Cache ``room``'s owner until ``until`` (this process's monotonic clock)."""
        directory = self._directory
        directory.pop(room, None)
        if len(directory) >= DIRECTORY_CACHE:
            del directory[next(iter(directory))]
        directory[room] = (located, until)

    async def _orphans(self) -> None:
        """Every lease/2, acquire the rooms with an alarm due within a lease that nobody
        live owns and that are placed in this worker, and schedule their alarms."""
        while True:
            await trio.sleep(self.lease / 2)
            if self._draining or not self.valid():
                continue
            try:
                orphans = await self._store.orphan_alarms(self.lease, member=self.me)
            except Exception as exc:
                logger.warning("member %s: polling orphan alarms failed: %s", self.me, exc)
                continue
            for room, _, _ in orphans:
                await self._adopt_orphan(room)

    async def _adopt_orphan(self, room: RoomId) -> None:
        workers = self.membership.workers
        if workers is not None and not workers.owns(room):
            return  # its worker of this node polls too
        if room in self._acquired or self._rooms.holds(room):
            return
        acquired = await self._acquire(room)  # which schedules the alarm it finds stored
        if acquired is None:
            return
        if acquired.alarm is None:
            # It fired (or was deleted) since the poll, in a member that has released
            # the room since: nothing to run, and the polled alarm must not run twice.
            self.release(acquired.claim)
            return
        self._acquired[room] = acquired.claim

    # Drain.

    async def drain(self) -> None:
        """Mark this member draining: other members stop sending it clients, and may
        acquire its rooms as their clients come. It acquires no room from now on."""
        self._draining = True
        if self._incarnation is None:
            return
        try:
            with trio.fail_after(self.lease):
                await self._store.set_draining(self.me, self._incarnation)
        except Exception as exc:
            logger.warning("member %s: marking it draining failed: %s", self.me, exc)

    async def leave(self, claims: Sequence[Claim]) -> None:
        """Release ``claims`` (the rooms it held, flushed) and leave the members table;
        the heartbeats stop first, so that none registers the member again."""
        self._scope.cancel()
        incarnation, self._incarnation = self._incarnation, None
        self._rooms.valid_until = -math.inf
        if incarnation is None:
            return
        held = [*claims, *self._acquired.values(), *self._releasing.values()]
        try:
            with trio.fail_after(self.lease):
                await self._store.release(held, self.me)
        except Exception as exc:  # they move after the lease instead
            logger.warning("member %s: releasing its rooms failed: %s", self.me, exc)
        try:
            with trio.fail_after(self.lease):  # a hung PostgreSQL must not hold the exit
                await self._store.leave(self.me, incarnation)
        except Exception as exc:
            logger.warning("member %s: leaving the cluster failed: %s", self.me, exc)
        else:
            logger.info("member %s: left the cluster", self.me)
