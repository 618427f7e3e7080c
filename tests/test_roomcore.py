"""The room core: pure, with members that only know when they were last seen."""

from __future__ import annotations

import attrs
import pytest

from roomkit._core.room import ROOM_FULL, SHUTTING_DOWN, Refusal, RoomCore
from roomkit._core.roomstate import Change, LifecycleError, RoomState


@attrs.define(eq=False)
class Peer:
    last_seen: float = 0.0


def core(max_members: int = 10, idle_timeout: float | None = None) -> RoomCore[Peer]:
    return RoomCore[Peer](max_members, idle_timeout)


def test_members_in_join_order_and_by_tag() -> None:
    room, (a, b, c) = core(), (Peer(), Peer(), Peer())
    for peer in (a, b, c):
        room.join(peer)
    room.retag(c, (), ("red",))
    room.retag(a, (), ("red", "blue"))
    assert list(room.members()) == [a, b, c]
    assert list(room.members("red")) == [c, a]  # in tagging order
    assert (len(room), b in room) == (3, True)


def test_a_member_that_leaves_is_forgotten_by_its_tags_too() -> None:
    room, (a, b) = core(), (Peer(), Peer())
    room.join(a)
    room.join(b)
    room.retag(a, (), ("red",))
    room.retag(b, (), ("red",))
    assert room.leave(a, ("red",)) is True
    assert list(room.members("red")) == [b]
    assert list(room.members()) == [b]
    assert room.leave(a, ("red",)) is False  # once only
    assert room.leave(b, ("red",)) is True
    assert list(room.members("red")) == []


def test_retagging_moves_a_member_from_its_old_tags_to_its_new() -> None:
    room, (a, b) = core(), (Peer(), Peer())
    room.join(a)
    room.join(b)
    room.retag(a, (), ("red",))
    room.retag(b, (), ("red",))
    room.retag(a, ("red",), ("blue",))
    assert (list(room.members("red")), list(room.members("blue"))) == ([b], [a])


def test_retagging_a_non_member_changes_nothing() -> None:
    room, stranger = core(), Peer()
    room.retag(stranger, (), ("red",))
    assert list(room.members("red")) == []


def test_admission_counts_the_handshake_itself() -> None:
    room = core(max_members=2)
    room.join(Peer())
    room.join(Peer())
    assert room.admission() is None  # two members, the newcomer one of them
    room.join(Peer())
    assert room.admission() is ROOM_FULL
    assert Refusal("room_full", 503, "Room is full") == ROOM_FULL
    assert room.admission(resume=True) is None  # it takes its parked session's place
    room.join(Peer())
    assert room.admission(resume=True) is ROOM_FULL


@pytest.mark.parametrize("shutdown", [[Change.SHUTDOWN], [Change.SHUTDOWN, Change.DRAIN]])
def test_a_room_shutting_down_refuses_before_it_counts(shutdown: list[Change]) -> None:
    room = core(max_members=1)
    room.join(Peer())
    room.join(Peer())  # full as well: shutting down is what it says
    room.change(Change.WAKE)
    for change in shutdown:
        room.change(change)
    assert room.admission() is SHUTTING_DOWN
    assert Refusal("shutting_down", 503, "Server shutting down") == SHUTTING_DOWN


def test_no_sweep_without_an_idle_timeout() -> None:
    assert core().joined(Peer(last_seen=5.0)) is None


def test_a_newcomer_may_be_idle_one_timeout_after_it_was_last_seen() -> None:
    assert core(idle_timeout=60).joined(Peer(last_seen=5.0)) == 65.0


def test_the_sweep_finds_the_idle_and_is_due_again_for_the_quietest_of_the_rest() -> None:
    room = core(idle_timeout=60)
    old, quiet, busy = Peer(last_seen=0.0), Peer(last_seen=30.0), Peer(last_seen=50.0)
    idle, due = room.sweep(60.0, [busy, old, quiet])
    assert (idle, due) == ([old], 90.0)  # quiet's 30 + 60, not busy's 50 + 60
    idle, due = room.sweep(60.0, [busy, quiet])
    assert (idle, due) == ([], 90.0)


def test_the_sweep_counts_idle_from_exactly_one_timeout() -> None:
    room = core(idle_timeout=60)
    peer = Peer(last_seen=10.0)
    assert room.sweep(69.999, [peer]) == ([], 70.0)
    assert room.sweep(70.0, [peer]) == ([peer], None)


def test_after_a_sweep_that_closes_everyone_none_is_due() -> None:
    room = core(idle_timeout=1)
    assert room.sweep(10.0, []) == ([], None)


def test_a_room_with_nobody_left_ends() -> None:
    room = core()
    room.change(Change.WAKE)
    assert room.quiet
    assert room.at_rest() is Change.END


def test_a_room_with_members_hibernates_only_while_awake() -> None:
    room, peer = core(), Peer()
    room.join(peer)
    room.change(Change.WAKE)
    assert not room.quiet
    assert room.at_rest() is Change.HIBERNATE
    room.change(Change.SHUTDOWN)
    assert room.at_rest() is None  # a room shutting down stays awake
    room.leave(peer, ())
    assert room.at_rest() is Change.END


def test_an_event_on_its_way_keeps_an_empty_room_up() -> None:
    room = core()
    room.change(Change.WAKE)
    room.expect()
    room.expect()
    assert not room.quiet
    assert room.at_rest() is None
    room.arrived()
    assert room.at_rest() is None  # one still on its way
    room.arrived()
    assert room.quiet
    assert room.at_rest() is Change.END


def test_the_room_core_changes_state_only_as_the_table_allows() -> None:
    room = core()
    assert room.state is RoomState.ASLEEP
    with pytest.raises(LifecycleError, match="a room asleep cannot hibernate"):
        room.change(Change.HIBERNATE)
    assert room.state is RoomState.ASLEEP
