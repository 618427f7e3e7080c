"""roomkit._core.location: where a cluster's front door sends a routed handshake. Pure."""

from __future__ import annotations

import math

import pytest

from roomkit._core.handoff import HandTo
from roomkit._core.location import (
    ForwardTo,
    Located,
    Membership,
    ServeHere,
    Unavailable,
    advertised,
    trusted_until,
)
from roomkit._core.placement import Placement
from roomkit._roomid import RoomId

ROOM = RoomId("", "lobby")
NODE = Membership("10.0.0.1:8080")
#: Worker 0 of a node of two workers; ROOM lives in worker HOME among them.
WORKERS = Placement("0", ("0", "1"))
HOME = WORKERS.owner(ROOM)


def worker(slot: str) -> Membership:
    return Membership("10.0.0.1:8080", Placement(slot, ("0", "1")))


def test_member_ids() -> None:
    assert NODE.me == "10.0.0.1:8080"
    assert worker("1").me == "10.0.0.1:8080/1"
    assert worker("0").member("1") == "10.0.0.1:8080/1"


@pytest.mark.parametrize(
    ("member", "slot"),
    [
        ("10.0.0.1:8080/1", "1"),
        ("10.0.0.1:8080/0", None),  # itself
        ("10.0.0.1:8080/2", None),  # no such slot
        ("10.0.0.2:8080/1", None),  # another node's worker
        ("10.0.0.1:8080", None),  # a node of one process at the same address
        ("10.0.0.1:80801/1", None),
    ],
)
def test_a_sibling_is_another_worker_of_this_node(member: str, slot: str | None) -> None:
    assert worker("0").sibling(member) == slot


def test_a_node_of_one_process_has_no_siblings() -> None:
    assert NODE.sibling("10.0.0.1:8080/1") is None


def test_the_live_owner_here_is_served_here() -> None:
    mine = Located("10.0.0.1:8080", "10.0.0.1:8080", live=True)
    assert NODE.locate(ROOM, mine, forwarded=True, handed=False) == ServeHere()


def test_another_live_node_gets_the_connection_forwarded_once() -> None:
    theirs = Located("10.0.0.2:8080", "10.0.0.2:8080", live=True)
    assert NODE.locate(ROOM, theirs, forwarded=False, handed=False) == ForwardTo("10.0.0.2:8080")
    assert NODE.locate(ROOM, theirs, forwarded=True, handed=False) == Unavailable()


def test_another_nodes_worker_is_reached_at_its_nodes_address() -> None:
    theirs = Located("10.0.0.2:8080/1", "10.0.0.2:8080", live=True)
    assert worker("0").locate(ROOM, theirs, forwarded=False, handed=False) == ForwardTo(
        "10.0.0.2:8080"
    )
    assert worker("0").locate(ROOM, theirs, forwarded=False, handed=True) == Unavailable()


def test_a_live_sibling_gets_the_connection_handed_even_if_forwarded() -> None:
    sibling = Located("10.0.0.1:8080/1", "10.0.0.1:8080", live=True)
    me = worker("0")
    assert me.locate(ROOM, sibling, forwarded=True, handed=False) == HandTo("1")
    assert me.locate(ROOM, sibling, forwarded=False, handed=True) == Unavailable()


@pytest.mark.parametrize(
    "owner",
    [
        None,
        Located("10.0.0.2:8080", "10.0.0.2:8080", live=False),
        Located("10.0.0.1:8080", "10.0.0.1:8080", live=False),
    ],
)
def test_a_room_nobody_live_owns_is_acquired_here(owner: Located | None) -> None:
    assert NODE.locate(ROOM, owner, forwarded=False, handed=False) == ServeHere()


@pytest.mark.parametrize("me", [NODE, worker("0"), worker("1")])
def test_a_room_nobody_live_owns_is_left_to_the_node_that_forwarded_it(me: Membership) -> None:
    # Its directory was stale (the room was released here since): 503, and the
    # client's retry is acquired by the node it reached.
    assert me.locate(ROOM, None, forwarded=True, handed=False) == Unavailable()


def test_a_room_nobody_live_owns_goes_to_the_worker_the_placement_picks() -> None:
    dead = Located("10.0.0.2:8080", "10.0.0.2:8080", live=False)
    other = "1" if HOME == "0" else "0"
    assert worker(HOME).locate(ROOM, dead, forwarded=False, handed=True) == ServeHere()
    assert worker(other).locate(ROOM, None, forwarded=False, handed=False) == HandTo(HOME)
    assert worker(other).locate(ROOM, dead, forwarded=False, handed=True) == Unavailable()


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("10.0.0.1", "10.0.0.1:8080"),
        ("0.0.0.0", "node-1:8080"),
        ("::", "node-1:8080"),
        ("", "node-1:8080"),
        ("::1", "[::1]:8080"),
        ("node-2.example", "node-2.example:8080"),
    ],
)
def test_the_advertised_address_by_default_is_the_listening_one(host: str, expected: str) -> None:
    assert advertised(host, 8080, "node-1") == expected


@pytest.mark.parametrize(
    ("expires_in", "until"),
    [
        (math.inf, 103.0),  # the store cannot tell: a lease
        (7.0, 103.0),  # an owner with a longer lease than this member's: still a lease
        (3.0, 103.0),
        (1.25, 101.25),  # the owner's row expires first: not an instant past it
        (0.0, 100.0),
        (-0.5, 100.0),  # expired already: not trusted at all
    ],
)
def test_a_cached_owner_is_trusted_a_lease_at_most_and_never_past_its_own_lease(
    expires_in: float, until: float
) -> None:
    assert trusted_until(100.0, 3.0, expires_in) == until
