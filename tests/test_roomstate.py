"""A room's lifecycle: the table, exactly."""

from __future__ import annotations

import itertools

import pytest

from roomkit._core.roomstate import TRANSITIONS, Change, LifecycleError, RoomState, advance

S, C = RoomState, Change

#: Every allowed transition, written out again: a change to the table fails here.
ALLOWED = {
    (S.ASLEEP, C.WAKE): S.AWAKE,
    (S.AWAKE, C.HIBERNATE): S.ASLEEP,
    (S.AWAKE, C.SHUTDOWN): S.CLOSING,
    (S.AWAKE, C.END): S.GONE,
    (S.CLOSING, C.DRAIN): S.DRAINING,
    (S.CLOSING, C.END): S.GONE,
    (S.DRAINING, C.END): S.GONE,
    (S.ASLEEP, C.CANCEL): S.GONE,
    (S.AWAKE, C.CANCEL): S.GONE,
    (S.CLOSING, C.CANCEL): S.GONE,
    (S.DRAINING, C.CANCEL): S.GONE,
}


@pytest.mark.parametrize(("state", "change"), list(itertools.product(RoomState, Change)))
def test_each_change_from_each_state(state: RoomState, change: Change) -> None:
    if (state, change) in ALLOWED:
        assert advance(state, change) is ALLOWED[state, change]
    else:
        with pytest.raises(LifecycleError, match=f"a room {state.value} cannot {change.value}"):
            advance(state, change)


def test_the_table_has_every_state_and_gone_is_final() -> None:
    assert set(TRANSITIONS) == set(RoomState)
    assert TRANSITIONS[S.GONE] == {}


def test_a_room_lives_asleep_and_awake_until_it_ends() -> None:
    state = S.ASLEEP
    for change in (C.WAKE, C.HIBERNATE, C.WAKE, C.END):
        state = advance(state, change)
    assert state is S.GONE


def test_a_shutdown_drains_then_ends() -> None:
    state = S.ASLEEP
    for change in (C.WAKE, C.SHUTDOWN, C.DRAIN, C.END):
        state = advance(state, change)
    assert state is S.GONE
