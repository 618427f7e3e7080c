"""A connection's lifecycle (pure): every move of the table, and the ones it refuses."""

from __future__ import annotations

import pytest

from roomkit._core.lifecycle import (
    PUBLIC,
    TRANSITIONS,
    BadTransition,
    ConnectionState,
    Phase,
    Trigger,
    advance,
)

C, OP, D, CG, CD, R, A = (
    Phase.CONNECTING,
    Phase.OPEN,
    Phase.DEAF,
    Phase.CLOSING,
    Phase.CLOSED,
    Phase.REJECTED,
    Phase.AWAY,
)
ADMIT, REJECT, DEAFEN, CLOSE, GONE, PARK = Trigger

MOVES = [
    (C, ADMIT, OP),
    (C, REJECT, R),
    (C, DEAFEN, C),
    (C, CLOSE, CG),
    (C, GONE, CD),
    (OP, REJECT, R),
    (OP, DEAFEN, D),
    (OP, CLOSE, CG),
    (OP, GONE, CD),
    (D, REJECT, R),
    (D, DEAFEN, D),
    (D, CLOSE, CG),
    (D, GONE, CD),
    (CG, REJECT, R),
    (CG, DEAFEN, CG),
    (CG, CLOSE, CG),
    (CG, GONE, CD),
    (CD, DEAFEN, CD),
    (CD, PARK, A),
    (R, DEAFEN, R),
    (R, GONE, R),
    (A, DEAFEN, A),
    (A, GONE, CD),
]


@pytest.mark.parametrize(("phase", "trigger", "after"), MOVES)
def test_each_move(phase: Phase, trigger: Trigger, after: Phase) -> None:
    assert advance(phase, trigger) is after


def test_the_table_has_no_other_move() -> None:
    assert sorted((p.value, t.value) for p, moves in TRANSITIONS.items() for t in moves) == sorted(
        (p.value, t.value) for p, t, _ in MOVES
    )


@pytest.mark.parametrize(
    ("phase", "trigger"),
    [
        (OP, ADMIT),
        (D, ADMIT),
        (CG, ADMIT),
        (CD, ADMIT),
        (CD, CLOSE),
        (CD, GONE),
        (R, CLOSE),
        (OP, PARK),
        (A, PARK),
        (A, ADMIT),
    ],
)
def test_a_move_the_table_lacks_is_a_bug(phase: Phase, trigger: Trigger) -> None:
    with pytest.raises(BadTransition, match=f"a {phase.value} connection cannot {trigger.value}"):
        advance(phase, trigger)


def test_how_each_phase_shows_to_rooms() -> None:
    assert PUBLIC == {
        C: ConnectionState.CONNECTING,
        OP: ConnectionState.OPEN,
        D: ConnectionState.OPEN,
        CG: ConnectionState.CLOSING,
        CD: ConnectionState.CLOSED,
        R: ConnectionState.CLOSED,
        A: ConnectionState.AWAY,
    }
    assert [s.value for s in ConnectionState] == [
        "connecting",
        "open",
        "closing",
        "closed",
        "away",
    ]
