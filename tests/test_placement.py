"""roomkit._core.placement: rendezvous hashing of rooms over members."""

from __future__ import annotations

import collections

import pytest

from roomkit._core.placement import Placement, owner, score
from roomkit._roomid import RoomId

ROOMS = [RoomId("/chat", f"room-{i}") for i in range(2000)]
MEMBERS = ("0", "1", "2", "3")


def test_score_is_the_same_in_every_process() -> None:
    # Pinned: a change of hash would move every stored room to another worker.
    assert score(RoomId("", "lobby"), "0") == 0x9BD04EA327753258
    assert score(RoomId("/chat", "lobby"), "0") != score(RoomId("", "lobby"), "0")


def test_namespace_and_name_do_not_run_together() -> None:
    assert score(RoomId("/a", "b"), "0") != score(RoomId("/a\0", "b"), "0")
    assert score(RoomId("/a", "\0b"), "0") != score(RoomId("/a\0", "b"), "0")


def test_every_member_gets_a_fair_share() -> None:
    counts = collections.Counter(owner(room, MEMBERS) for room in ROOMS)
    assert set(counts) == set(MEMBERS)
    assert all(400 <= n <= 600 for n in counts.values()), counts


def test_the_order_of_members_does_not_matter() -> None:
    reordered = tuple(reversed(MEMBERS))
    assert all(owner(room, MEMBERS) == owner(room, reordered) for room in ROOMS)


def test_only_a_leaving_members_rooms_move() -> None:
    before = {room: owner(room, MEMBERS) for room in ROOMS}
    after = {room: owner(room, ("0", "1", "3")) for room in ROOMS}
    moved = {room for room in ROOMS if before[room] != after[room]}
    assert moved == {room for room in ROOMS if before[room] == "2"}
    assert moved  # the test means something only if member 2 held rooms


def test_no_members_is_an_error() -> None:
    with pytest.raises(ValueError, match="no members"):
        owner(ROOMS[0], ())


def test_placement_says_what_lives_here() -> None:
    placements = [Placement(me, MEMBERS) for me in MEMBERS]
    for room in ROOMS[:100]:
        (home,) = [p.me for p in placements if p.owns(room)]
        assert all(p.owner(room) == home for p in placements)


@pytest.mark.parametrize(
    ("me", "members", "problem"),
    [
        ("4", MEMBERS, "not among"),
        ("0", ("0", "0"), "repeated"),
        ("", ("", "1"), "empty"),
    ],
)
def test_placement_refuses_a_bad_member_list(
    me: str, members: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Placement(me, members)
