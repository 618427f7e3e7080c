"""The history checker (tests/history.py): synthetic histories, each violation caught.

Times are plain numbers on the runner's one clock. Each history is written as its
operations: ``write(op, invoked, completed, activation, seq)`` for an acknowledged write,
``info``/``fail`` for the others, ``read(op, invoked, completed, activation, ops)``; the
stored log as ``(op, activation)`` pairs, given seqs 1, 2, 3...
"""

from __future__ import annotations

import pytest

from tests.history import (
    Ack,
    Entry,
    Event,
    EventType,
    Failover,
    Fault,
    HistoryError,
    Kind,
    Op,
    Seen,
    Verdict,
    Violation,
    check,
    operations,
)

ROOM = "r"


def write(
    op: str, invoked: float, completed: float, activation: str, seq: int, room: str = ROOM
) -> list[Event]:
    return [
        Event(EventType.INVOKE, op, "c1", room, invoked),
        Event(EventType.OK, op, "c1", room, completed, reply=Ack(activation, seq)),
    ]


def info(op: str, invoked: float, completed: float | None = None) -> list[Event]:
    events = [Event(EventType.INVOKE, op, "c1", ROOM, invoked)]
    if completed is not None:
        events.append(Event(EventType.INFO, op, "c1", ROOM, completed))
    return events


def fail(op: str, invoked: float, completed: float) -> list[Event]:
    return [
        Event(EventType.INVOKE, op, "c1", ROOM, invoked),
        Event(EventType.FAIL, op, "c1", ROOM, completed),
    ]


def read(op: str, invoked: float, completed: float, activation: str, ops: str) -> list[Event]:
    seen = Seen(activation, tuple(ops.split()))
    return [
        Event(EventType.INVOKE, op, "c2", ROOM, invoked, kind=Op.READ),
        Event(EventType.OK, op, "c2", ROOM, completed, kind=Op.READ, reply=seen),
    ]


def stored(*entries: tuple[str, str], room: str = ROOM) -> dict[str, list[Entry]]:
    log = [Entry(seq, op, act, f"node-{act}") for seq, (op, act) in enumerate(entries, 1)]
    return {room: log}


def found(verdict: Verdict) -> list[tuple[Kind, tuple[str, ...]]]:
    return [(v.kind, v.ops) for v in verdict.violations]


def test_a_clean_failover_from_one_activation_to_the_next() -> None:
    history = [
        *write("w1", 0, 1, "A", 1),
        *read("r1", 1.5, 2, "A", "w1"),
        *info("w2", 2, 3),  # A died with it: not stored, and that is allowed
        *info("w3", 2.5),  # never completed: info as well, and stored
        *write("w4", 4, 6, "B", 3),
        *read("r2", 6, 7, "B", "w1 w3 w4"),
        *fail("w5", 7, 7.5),
    ]
    fault = Fault("kill", 2.2, frozenset({ROOM}), "node-A")
    verdict = check(history, stored(("w1", "A"), ("w3", "B"), ("w4", "B")), [fault])
    assert verdict == Verdict(
        writes=5,
        acknowledged=2,
        indeterminate=2,
        failed=1,
        reads=2,
        violations=(),
        failovers=(Failover(0, "kill", ROOM, 6 - 2.2),),
    )


def test_an_acknowledged_write_missing_from_storage_is_lost() -> None:
    history = [*write("w1", 0, 1, "A", 1), *write("w2", 1, 2, "A", 2)]
    verdict = check(history, stored(("w1", "A")))
    assert found(verdict) == [(Kind.LOST, ("w2",))]
    assert verdict.lost == 1


def test_a_write_stored_elsewhere_than_its_reply_said_is_misacked() -> None:
    history = [*info("w0", 0), *write("w1", 0, 1, "A", 1)]
    assert found(check(history, stored(("w0", "A"), ("w1", "A")))) == [(Kind.MISACKED, ("w1",))]
    history = write("w1", 0, 1, "A", 1)
    assert found(check(history, stored(("w1", "B")))) == [(Kind.MISACKED, ("w1",))]


def test_an_entry_nobody_wrote_a_failed_write_or_a_read_stored_is_a_phantom() -> None:
    history = [*fail("w1", 0, 1), *read("r1", 0, 1, "A", ""), *write("w9", 0, 1, "A", 1)]
    log = stored(("w9", "A"), ("w1", "A"), ("ghost", "A"), ("r1", "A"))
    kinds = [(Kind.PHANTOM, ("w1",)), (Kind.PHANTOM, ("ghost",)), (Kind.PHANTOM, ("r1",))]
    assert found(check(history, log)) == kinds
    # a write to another room stored in this one
    other = [Event(EventType.INVOKE, "x", "c1", "elsewhere", 0)]
    assert found(check(other, stored(("x", "A")))) == [(Kind.PHANTOM, ("x",))]


def test_an_op_stored_twice_is_a_duplicate() -> None:
    history = write("w1", 0, 1, "A", 1)
    assert found(check(history, stored(("w1", "A"), ("w1", "A")))) == [(Kind.DUPLICATE, ("w1",))]


def test_seqs_that_skip_or_do_not_start_at_one_are_gaps() -> None:
    history = [*info("w1", 0), *info("w2", 0), *info("w3", 0)]
    entries = [Entry(2, "w1", "A", "n"), Entry(3, "w2", "A", "n"), Entry(5, "w3", "A", "n")]
    assert found(check(history, {ROOM: entries})) == [(Kind.GAP, ("w1",)), (Kind.GAP, ("w3",))]


def test_a_gap_alone_is_no_stale_read() -> None:
    entries = [Entry(1, "w1", "A", "n"), Entry(3, "w3", "B", "n")]
    history = [*write("w1", 0, 1, "A", 1), *write("w3", 2, 3, "B", 3)]
    history += read("r1", 4, 5, "B", "w1 w3")
    assert found(check(history, {ROOM: entries})) == [(Kind.GAP, ("w3",))]


def test_an_activation_that_writes_again_after_another_is_stale() -> None:
    history = [*info("w1", 0), *info("w2", 0), *info("w3", 0), *info("w4", 0)]
    log = stored(("w1", "A"), ("w2", "B"), ("w3", "A"), ("w4", "A"))
    assert found(check(history, log)) == [(Kind.STALE_ACTIVATION, ("w3",))]
    # A, then B, then C: each its own block, nothing stale
    assert found(check(history, stored(("w1", "A"), ("w2", "B"), ("w3", "B"), ("w4", "C")))) == []


def test_a_write_invoked_after_another_was_acknowledged_is_stored_after_it() -> None:
    history = [*write("w1", 0, 1, "A", 2), *info("w2", 1.5)]
    assert found(check(history, stored(("w2", "A"), ("w1", "A")))) == [(Kind.ORDER, ("w1", "w2"))]
    # concurrent writes may land in either order, also when one's ack and the other's
    # invocation read the same instant
    history = [*write("w1", 0, 2, "A", 2), *write("w2", 1, 3, "A", 1)]
    assert found(check(history, stored(("w2", "A"), ("w1", "A")))) == []
    history = [*write("w1", 0, 1, "A", 2), *info("w2", 1)]
    assert found(check(history, stored(("w2", "A"), ("w1", "A")))) == []


def test_a_read_sees_a_prefix_of_the_log_and_every_write_acknowledged_before_it() -> None:
    log = stored(("w1", "A"), ("w2", "A"))
    base = [*write("w1", 0, 1, "A", 1), *write("w2", 2, 3, "A", 2)]
    assert found(check([*base, *read("r1", 1, 2.5, "A", "w1")], log)) == []
    assert found(check([*base, *read("r1", 3.5, 4, "A", "w1")], log)) == [
        (Kind.STALE_READ, ("w2", "r1"))
    ]
    assert found(check([*base, *read("r1", 3.5, 4, "A", "w2 w1")], log)) == [
        (Kind.STALE_READ, ("r1",))
    ]


def test_a_later_activation_that_served_before_an_earlier_one_overlaps() -> None:
    log = stored(("w1", "A"), ("w2", "B"))
    history = [
        *write("w1", 0, 0.5, "A", 1),
        *read("rb", 1, 2, "B", "w1"),  # B is serving at 2...
        *read("ra", 3, 4, "A", "w1"),  # ...and A still at 3
        *write("w2", 5, 6, "B", 2),
    ]
    assert found(check(history, log)) == [(Kind.OVERLAP, ("ra", "rb"))]


def test_operations_of_two_activations_whose_windows_meet_do_not_overlap() -> None:
    log = stored(("w1", "A"), ("w2", "B"))
    # A's reply took long to arrive: B served later than A, as far as anyone can tell
    slow = [*write("w1", 1, 5, "A", 1), *write("w2", 2, 3, "B", 2)]
    assert found(check(slow, log)) == []
    # B's reply at 2, A's next request sent at 2: the same instant on one clock is no proof
    touching = [
        *write("w1", 0, 1, "A", 1),
        *read("rb", 1, 2, "B", "w1"),
        *read("ra", 2, 3, "A", "w1"),
        *write("w2", 4, 5, "B", 2),
    ]
    assert found(check(touching, log)) == []


def test_a_read_only_activation_sits_after_the_writer_it_saw_last() -> None:
    log = stored(("w1", "A"), ("w2", "B"))
    history = [
        *write("w1", 0, 0.5, "A", 1),
        *read("rb", 1, 2, "B", "w1"),
        *read("rr", 3, 4, "R", "w1"),  # R, which only read, came before B: stale at 3
        *write("w2", 5, 6, "B", 2),
    ]
    assert found(check(history, log)) == [(Kind.OVERLAP, ("rr", "rb"))]
    # before any entry: R saw the empty log, so it came before A
    history = [*read("ra", 1, 2, "A", ""), *read("rr", 3, 4, "R", ""), *write("w1", 5, 6, "A", 1)]
    assert found(check(history, stored(("w1", "A")))) == [(Kind.OVERLAP, ("rr", "ra"))]


def test_read_only_activations_after_the_same_writer_are_not_ordered() -> None:
    history = [
        *write("w1", 0, 0.5, "A", 1),
        *read("r1", 1, 2, "R1", "w1"),
        *read("r2", 3, 4, "R2", "w1"),
        *read("r3", 5, 6, "R1", "w1"),
    ]
    assert found(check(history, stored(("w1", "A")))) == []


def test_a_stored_indeterminate_write_counts_from_its_invocation() -> None:
    log = stored(("w1", "A"), ("w2", "A"), ("w3", "B"))
    history = [
        *write("w1", 0, 0.5, "A", 1),
        *read("rb", 1, 2, "B", "w1 w2"),  # B saw w2, which A stored after 3: impossible
        *info("w2", 3, 3.5),
        *write("w3", 4, 5, "B", 3),
    ]
    assert found(check(history, log)) == [(Kind.OVERLAP, ("w2", "rb"))]


def test_failover_counts_from_the_fault_to_the_first_write_invoked_after_it() -> None:
    history = [
        *write("w1", 0.5, 1.5, "A", 1),  # invoked before the fault: not the failover
        *write("w2", 1.2, 3.0, "B", 3),
        *write("w3", 1.1, 3.5, "B", 2),
        *write("x1", 2.0, 2.25, "X", 1, room="other"),
    ]
    faults = [
        Fault("stop", 1.0, frozenset({ROOM, "other", "idle"})),
        Fault("drain", 4.0, frozenset({ROOM})),
    ]
    log = stored(("w1", "A"), ("w3", "B"), ("w2", "B")) | stored(("x1", "X"), room="other")
    verdict = check(history, log, faults)
    assert verdict.violations == ()
    assert verdict.failovers == (
        Failover(0, "stop", "idle", None),
        Failover(0, "stop", "other", 1.25),
        Failover(0, "stop", ROOM, 2.0),
        Failover(1, "drain", ROOM, None),
    )


def test_a_violation_names_its_room_and_says_what_happened() -> None:
    verdict = check(write("w1", 0, 1, "A", 1), {})
    assert verdict.violations == (
        Violation(Kind.LOST, ROOM, ("w1",), "acknowledged as seq 1 by A"),
    )


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([Event(EventType.OK, "w", "c", ROOM, 1, reply=Ack("A", 1))], "ok without a pending"),
        ([*info("w", 0), *info("w", 1)], "invoked twice"),
        ([*info("w", 0, 1), Event(EventType.INFO, "w", "c", ROOM, 2)], "info without a pending"),
        ([*info("w", 0), Event(EventType.OK, "w", "c", ROOM, 1)], "ok with reply None"),
        ([*info("w", 0), Event(EventType.FAIL, "w", "c", ROOM, 1, reply=Ack("A", 1))], "fail with"),
        ([*info("w", 0), Event(EventType.OK, "w", "c", ROOM, 1, reply=Seen("A", ()))], "ok with"),
    ],
)
def test_a_malformed_history_is_refused(events: list[Event], message: str) -> None:
    with pytest.raises(HistoryError, match=message):
        operations(events)
