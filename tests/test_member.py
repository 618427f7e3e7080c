"""roomkit._cluster: one cluster member's lease, fencing, acquires and orphan alarms.

The member runs in ``roomkit.testing``'s server over its in-memory transport, on
``autojump_clock``, with a cluster store of its own (:class:`Directory`): the rooms'
data in SQLite (in memory, no thread), the members and owners in dicts, PostgreSQL's
clock Trio's. So the times asserted are exact. tests/test_cluster.py runs real nodes on
a real PostgreSQL.
"""

from __future__ import annotations

import builtins
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

import roomkit
from roomkit.storage import (
    Acquired,
    AlarmWrite,
    Changes,
    Claim,
    ClusterStore,
    KeyRange,
    Owned,
    Owner,
    RoomId,
    SQLiteStore,
    StoredAlarm,
)
from roomkit.storage._sqlite import SQLiteCore
from roomkit.testing import open_test_server

from .apps import KV

LEASE = 3.0
#: The lease by the member's clock after a heartbeat sent at t: t + LEASE - margin.
VALID = LEASE * 0.9
ROOM = RoomId("", "r")
OTHER = RoomId("", "o")


class Directory(ClusterStore):
    """A cluster store in memory: SQLite for the data, dicts for the members and the
    owners, Trio's clock as the database's. ``beating`` False fails every heartbeat;
    ``releases`` False fails every release, and a ``gate`` holds each until it is set."""

    def __init__(self) -> None:
        self.data = SQLiteStore(SQLiteCore(":memory:"), in_thread=False)
        self.members: dict[str, tuple[int, float, bool]] = {}  # incarnation, expires, draining
        self.owners: dict[RoomId, str | None] = {}
        self.incarnations = 0
        self.beating = True
        self.released: list[Claim] = []  # every claim asked to be released, in order
        self.releases = True
        self.gate: trio.Event | None = None
        self.epochs: dict[RoomId, int] = {}
        self.hidden: set[RoomId] = set()  # rooms whose owner locate does not show
        self.epoch = time.time() - trio.current_time()
        self.acquired: list[RoomId] = []  # every room asked for, in order

    def live(self, member: str | None) -> bool:
        row = self.members.get(member or "")
        return row is not None and row[1] > trio.current_time() and not row[2]

    def expires_in(self, member: str | None) -> float:
        row = self.members.get(member or "")
        return 0.0 if row is None else row[1] - trio.current_time()

    async def register(self, member: str, address: str, lease: float) -> int:
        self.incarnations += 1
        self.members[member] = (self.incarnations, trio.current_time() + lease, False)
        return self.incarnations

    async def heartbeat(self, member: str, incarnation: int, lease: float) -> bool:
        if not self.beating:
            raise OSError("PostgreSQL is unreachable")
        row = self.members.get(member)
        if row is None or row[0] != incarnation:
            return False
        self.members[member] = (incarnation, trio.current_time() + lease, row[2])
        return True

    async def set_draining(self, member: str, incarnation: int) -> None:
        number, expires, _ = self.members[member]
        self.members[member] = (number, expires, True)

    async def leave(self, member: str, incarnation: int) -> None:
        del self.members[member]

    async def acquire(self, room: RoomId, member: str, *, lock_timeout: float) -> Acquired | Owned:
        self.acquired.append(room)
        owner = self.owners.get(room)
        row = self.members.get(owner or "")
        if owner != member and row is not None and (self.live(owner) or row[2]):
            return Owned(owner or "", "elsewhere:1", row[2], self.expires_in(owner))
        self.owners[room] = member
        alarm = next((AlarmWrite(due, n) for r, due, n in await self.alarms() if r == room), None)
        claim = await self.data.claim(room, member)
        self.epochs[room] = claim.epoch
        return Acquired(claim, alarm)

    async def release(self, claims: Sequence[Claim], member: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if not self.releases:
            raise OSError("PostgreSQL is unreachable")
        self.released.extend(claims)
        for claim in claims:  # as PostgreSQL's: only where the epoch is still the claim's
            if self.owners.get(claim.room) == member and self.epochs[claim.room] == claim.epoch:
                self.owners[claim.room] = None

    async def locate(self, room: RoomId) -> Owner | None:
        owner = None if room in self.hidden else self.owners.get(room)
        if owner is None:
            return None
        return Owner(owner, "elsewhere:1", self.live(owner), self.expires_in(owner))

    async def orphan_alarms(
        self, horizon: float, *, member: str | None = None
    ) -> builtins.list[StoredAlarm]:
        soon = self.epoch + trio.current_time() + horizon  # the test kit's wall clock
        return [
            (room, due, retry)
            for room, due, retry in await self.alarms()
            if due < soon and not self.live(self.owners.get(room))
        ]

    async def claim(self, room: RoomId, owner: str) -> Claim:
        return await self.data.claim(room, owner)

    async def get_many(self, room: RoomId, keys: Sequence[str]) -> dict[str, str]:
        return await self.data.get_many(room, keys)

    async def list(
        self, room: RoomId, keys: KeyRange, *, reverse: bool, limit: int | None
    ) -> builtins.list[tuple[str, str]]:
        return await self.data.list(room, keys, reverse=reverse, limit=limit)

    async def commit(self, batch: Sequence[tuple[Claim, Changes]]) -> builtins.list[Any]:
        return await self.data.commit(batch)

    async def alarms(self) -> builtins.list[StoredAlarm]:
        return await self.data.alarms()

    async def aclose(self) -> None:
        await self.data.aclose()


class Ledger(KV):
    """KV that writes down each on_close, so that a test sees whether one ran."""

    async def on_close(self, conn: roomkit.Connection, code: int, reason: str, clean: bool) -> None:
        await self.storage.put("closed", code)


async def put(client: Any, key: str, value: Any) -> None:
    await client.send(json.dumps({"op": "put", "key": key, "value": value}))
    assert await client.receive_json() == {"op": "put", "result": None}


async def test_a_member_whose_heartbeats_fail_fences_its_rooms_when_its_lease_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(Ledger, storage=store, lease=LEASE) as server:
        start = trio.current_time()
        async with server.connect("/r") as client:
            await put(client, "a", 1)
            store.beating = False  # from the next heartbeat, at start + LEASE/3, on
            assert await client.receive_close() == (1012, "Room moved")
            # The last heartbeat that succeeded was the registration, sent at start.
            assert trio.current_time() == pytest.approx(start + VALID)
        with pytest.raises(roomkit.ClientClosed) as refused:
            async with server.connect("/r"):
                pass
        assert refused.value.status == 503
        store.beating = True
        await trio.sleep(LEASE / 3)  # the next heartbeat renews the lease
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "closed"}')
            # No on_close ran for the fenced connection; the room was acquired anew.
            assert await client.receive_json() == {"op": "get", "result": None}
        assert store.owners[ROOM] == next(iter(store.members))


async def test_a_replaced_member_fences_at_once_and_registers_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(Ledger, storage=store, lease=LEASE) as server:
        (me,) = store.members
        async with server.connect("/r") as client:
            await put(client, "a", 1)
            await store.register(me, "elsewhere:1", LEASE)  # a restart took its id
            assert await client.receive_close() == (1012, "Room moved")
        assert store.incarnations == 3  # registered again after the next heartbeat
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "a"}')
            assert await client.receive_json() == {"op": "get", "result": 1}


async def test_an_acquire_lost_to_another_member_refuses_with_503_and_tells_the_cache(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(Ledger, storage=store, lease=LEASE) as server:
        await store.register("other:1", "other:1", math.inf)
        store.owners[ROOM] = "other:1"
        store.hidden.add(ROOM)  # the directory did not show it yet: a race
        with pytest.raises(roomkit.ClientClosed) as lost:
            async with server.connect("/r"):
                pass
        assert (lost.value.status, lost.value.reason) == (
            503,
            "Service unavailable: the room moved",
        )
        with pytest.raises(roomkit.ClientClosed) as forwarded:
            # The directory still hides it: only the cache sends this one to other:1,
            # which the test transport cannot reach; the room is not asked for again.
            async with server.connect("/r"):
                pass
        assert (forwarded.value.status, forwarded.value.reason) == (503, "Service unavailable")
        assert store.acquired == [ROOM]


async def test_the_cache_forgets_an_owner_when_its_lease_ends_and_the_room_is_acquired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(Ledger, storage=store, lease=LEASE) as server:
        await store.register("other:1", "other:1", LEASE / 3)  # then stopped: no heartbeat
        store.owners[ROOM] = "other:1"
        store.hidden.add(ROOM)  # only the cache can send a client to other:1
        with pytest.raises(roomkit.ClientClosed) as lost:
            async with server.connect("/r"):
                pass
        assert (lost.value.status, lost.value.reason) == (
            503,
            "Service unavailable: the room moved",
        )
        # The cache learned other:1 with the lease it had left, LEASE/3, not for a
        # lease of this member's: once other:1's row has expired, the next client's
        # handshake asks again and acquires the room here.
        await trio.sleep(LEASE / 3)
        async with server.connect("/r") as client:
            await put(client, "a", 1)
        assert store.acquired == [ROOM, ROOM]
        assert store.owners[ROOM] != "other:1"


async def test_an_orphan_alarm_is_acquired_within_a_lease_of_its_due_time_and_fires_here(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    due = time.time() + 100.0  # the test kit's wall clock starts at today's time
    claim = await store.data.claim(ROOM, "dead:1")
    store.owners[ROOM] = "dead:1"  # a member that is gone
    theirs = await store.data.claim(OTHER, "other:1")
    store.owners[OTHER] = "other:1"  # a member that lives on
    await store.register("other:1", "other:1", math.inf)
    await store.data.commit(
        [(claim, Changes(alarm=AlarmWrite(due, 0))), (theirs, Changes(alarm=AlarmWrite(due, 0)))]
    )
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        me = next(member for member in store.members if member != "other:1")
        await trio.sleep(100.0 - LEASE - 1)
        assert store.owners[ROOM] == "dead:1"  # not scheduled at start, nor polled yet
        await trio.sleep(LEASE + 0.5)
        assert store.owners[ROOM] == me  # the poll acquired it, before it was due
        await trio.sleep(1)
        assert store.owners[ROOM] is None  # it fired, and the room ended: released
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "fired"}')
            (fired,) = (await client.receive_json())["result"]
            assert fired == {"at": pytest.approx(100.0, abs=0.01), "retry": 0}
        assert OTHER not in store.acquired  # the live member's room: never, due or not


class Sleepy(KV):
    hibernate_after = 1.0


async def test_a_room_that_ends_is_released_and_its_next_client_acquires_it_anew(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(Sleepy, storage=store, lease=LEASE) as server:
        (me,) = store.members
        async with server.connect("/r") as client:
            await put(client, "a", 1)
            await trio.sleep(10)  # hibernated: still this member's
            assert (store.owners[ROOM], store.released) == (me, [])
        await trio.sleep(0.001)
        assert (store.owners[ROOM], store.released) == (None, [Claim(ROOM, 1)])
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "a"}')
            assert await client.receive_json() == {"op": "get", "result": 1}
        assert store.acquired == [ROOM, ROOM]
        assert store.epochs[ROOM] == 2
    assert store.released == [Claim(ROOM, 1), Claim(ROOM, 2)]  # the second by the drain


async def test_a_late_release_never_undoes_a_newer_acquire_of_the_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    store.gate = trio.Event()  # the release of the room's first life is held up...
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        (me,) = store.members
        async with server.connect("/r") as client:
            await put(client, "a", 1)
        async with server.connect("/r") as client:  # ...while the room starts again here
            await put(client, "b", 2)
            store.gate.set()
            await trio.sleep(0.001)
            # It came after the new acquire, with the old epoch: it changed nothing.
            assert store.released == [Claim(ROOM, 1)]
            assert (store.owners[ROOM], store.epochs[ROOM]) == (me, 2)
            await put(client, "c", 3)  # the room's writes still land


async def test_a_release_that_fails_leaves_the_room_owned_here_and_harms_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = Directory()
    store.releases = False
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        (me,) = store.members
        async with server.connect("/r") as client:
            await put(client, "a", 1)
        await trio.sleep(0.001)
        assert store.owners[ROOM] == me
        assert f"member {me}: releasing 1 rooms that ended failed" in caplog.text
        async with server.connect("/r") as client:  # acquired again here (it is mine)
            await client.send('{"op": "get", "key": "a"}')
            assert await client.receive_json() == {"op": "get", "result": 1}
        store.releases = True


async def test_a_room_that_ends_with_a_later_alarm_is_released_and_the_poll_fires_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        start = trio.current_time()
        async with server.connect("/r") as client:
            await client.send('{"op": "set_alarm", "delay": 100}')
            await client.receive_json()
        await trio.sleep(0.001)
        assert (store.owners[ROOM], store.released) == (None, [Claim(ROOM, 1)])
        await trio.sleep(100 - LEASE / 2)
        assert store.owners[ROOM] is not None  # the poll acquired it, before it was due
        assert store.epochs[ROOM] == 2
        await trio.sleep(LEASE)
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "fired"}')
            (fired,) = (await client.receive_json())["result"]
            assert fired == {"at": pytest.approx(start + 100, abs=0.01), "retry": 0}


async def test_a_room_that_ends_with_its_alarm_due_within_a_lease_keeps_it_to_fire_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        (me,) = store.members
        start = trio.current_time()
        async with server.connect("/r") as client:
            await client.send(json.dumps({"op": "set_alarm", "delay": 0.1}))
            await client.receive_json()
        await trio.sleep(0.001)
        assert (store.owners[ROOM], store.released) == (me, [])
        await trio.sleep(LEASE)
        # It fired here, on time, under the claim it kept, and the room ended again.
        assert (store.owners[ROOM], store.released) == (None, [Claim(ROOM, 1)])
        assert store.acquired == [ROOM]
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "fired"}')
            (fired,) = (await client.receive_json())["result"]
            assert fired == {"at": pytest.approx(start + 0.1, abs=0.01), "retry": 0}


async def test_a_released_rooms_alarm_is_left_to_whoever_acquires_it_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Directory()
    async with open_test_server(KV, storage=store, lease=LEASE) as server:
        async with server.connect("/r") as client:
            await client.send('{"op": "set_alarm", "delay": 100}')
            await client.receive_json()
        await trio.sleep(0.001)
        assert store.owners[ROOM] is None
        # Another member acquires the room, runs its alarm (deleting it) and releases it.
        theirs = await store.data.claim(ROOM, "other:1")
        store.epochs[ROOM] = theirs.epoch
        await store.data.commit([(theirs, Changes(alarm=AlarmWrite(None)))])
        await trio.sleep(200)
        # The alarm this member had scheduled was forgotten at the release: it never ran.
        assert store.acquired == [ROOM]
        async with server.connect("/r") as client:
            await client.send('{"op": "get", "key": "fired"}')
            assert await client.receive_json() == {"op": "get", "result": None}


class SlowAcquire(Directory):
    """A Directory whose acquires wait for ``hold``, once it is set to an Event."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: trio.Event | None = None

    async def acquire(self, room: RoomId, member: str, *, lock_timeout: float) -> Acquired | Owned:
        if self.hold is not None:
            await self.hold.wait()
        return await super().acquire(room, member, lock_timeout=lock_timeout)


async def test_a_claim_won_after_the_lease_ran_out_is_released_and_never_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = SlowAcquire()
    async with open_test_server(Ledger, storage=store, lease=LEASE) as server:
        hold = store.hold = trio.Event()
        store.beating = False  # the lease runs out while the acquire waits

        async def answer_late() -> None:
            await trio.sleep(LEASE)  # past the lease's end, VALID
            hold.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_late)
            with pytest.raises(roomkit.ClientClosed) as refused:
                async with server.connect("/r"):
                    pass
        assert refused.value.status == 503
        assert server.room("r") is None  # no instance was made: no hook ran
        assert [claim.room for claim in store.released] == [ROOM]
        store.hold, store.beating = None, True
        await trio.sleep(LEASE / 3)  # renewed
        async with server.connect("/r") as client:
            await put(client, "a", 1)  # acquired anew, and served
