"""A room's log of broadcasts (pure): its keys and entries, trimming, undoing a turn,
and the recovery decision, exactly."""

from __future__ import annotations

import json

import pytest

import roomkit
from roomkit._core.history import (
    LOG_END,
    LOG_PREFIX,
    MARKS,
    MAX_COUNT,
    MAX_ENTRY,
    META_KEY,
    ReplayLog,
    decide,
    entry,
    log_key,
    meets,
    payload_of,
    seq_of,
    upgrade,
)

E = "0123456789abcdef"


def test_keys_sort_after_every_other_key_and_in_seq_order() -> None:
    assert log_key(1) == "\U0010fffflog:0000000000000001"
    assert log_key(0xABC) == "\U0010fffflog:0000000000000abc"
    assert seq_of(log_key(2**40 + 5)) == 2**40 + 5
    assert META_KEY == "\U0010ffffmeta"
    assert sorted([log_key(10), log_key(9), "\uffff" * 3, "z"]) == [
        "z",
        "\uffff" * 3,
        log_key(9),
        log_key(10),
    ]
    assert LOG_PREFIX < log_key(2**63) < LOG_END < META_KEY


def test_entries() -> None:
    text = entry(12.5, "red", ["c-1"], ["s1"], "hé")
    assert text == '{"t":12.5,"tag":"red","x":["c-1"],"s":["s1"],"text":"hé"}'
    assert payload_of(json.loads(text)) == "hé"
    binary = json.loads(entry(1.0, None, [], [], b"\x00\xff"))
    assert binary == {"t": 1.0, "tag": None, "x": [], "s": [], "bin": "AP8="}
    assert payload_of(binary) == b"\x00\xff"


def test_an_entry_too_big_keeps_its_time_alone() -> None:
    fits = entry(1.0, None, [], [], "x" * (MAX_ENTRY - 100))
    assert len(fits.encode()) <= MAX_ENTRY and payload_of(json.loads(fits)) == "x" * (
        MAX_ENTRY - 100
    )
    for big in ("é" * (MAX_ENTRY // 2), "\x00" * (MAX_ENTRY // 6 + 1), b"\xff" * MAX_ENTRY):
        cut = entry(2.0, "red", ["c-1"], ["s1"], big)
        assert cut == '{"t":2.0,"cut":true}' and payload_of(json.loads(cut)) is None
    wide = entry(3.0, None, [f"c-{n}" for n in range(10_000)], [], "m")  # a long exclude
    assert json.loads(wide) == {"t": 3.0, "cut": True}


@pytest.mark.parametrize(
    ("tag", "excluded", "sessions", "conn", "session", "tags", "meant"),
    [
        (None, [], [], "a", None, (), True),
        ("red", [], [], "a", None, ("red",), True),
        ("red", [], [], "a", None, ("blue",), False),
        ("red", [], [], "a", None, (), False),
        (None, ["a"], [], "a", None, (), False),
        (None, ["b"], [], "a", None, (), True),
        ("red", ["a"], [], "a", None, ("red",), False),
        (None, ["b"], ["s"], "a", "s", (), False),  # its session's next connection
        (None, ["b"], ["s"], "a", "t", (), True),
        (None, ["b"], ["s"], "a", None, (), True),  # a plain connection has no session
        ("red", [], ["s"], "a", "s", ("blue",), False),
    ],
)
def test_who_an_entry_is_meant_for(
    tag: str | None,
    excluded: list[str],
    sessions: list[str],
    conn: str,
    session: str | None,
    tags: tuple[str, ...],
    meant: bool,
) -> None:
    value = json.loads(entry(0.0, tag, excluded, sessions, "m"))
    assert meets(value, conn, session, tags) is meant


def test_an_entry_of_the_first_format_is_meant_by_id_alone() -> None:
    value = {"t": 0.0, "tag": None, "x": ["a"], "text": "m"}
    assert not meets(value, "a", "s", ()) and meets(value, "b", "s", ())


@pytest.mark.parametrize(
    ("room", "oldest", "max_replay", "asked", "decision"),
    [
        (None, None, 10, (E, 0), None),  # the room has no epoch (cleared, or never)
        ((E, 5), 1, 10, ("f" * 16, 5), None),  # another epoch
        ((E, 5), 1, 10, (E, 6), None),  # ahead of the head: a forged or foreign seq
        ((E, 5), 1, 10, (E, 5), (5, 5)),  # level: nothing missed
        ((E, 5), None, 10, (E, 5), (5, 5)),  # level, the log aged out (socket.io #5282)
        ((E, 0), None, 10, (E, 0), (0, 0)),
        ((E, 5), 1, 10, (E, 0), (0, 5)),  # saw nothing since its welcome (socket.io #5538)
        ((E, 5), 1, 10, (E, 3), (3, 5)),
        ((E, 5), 4, 10, (E, 3), (3, 5)),  # oldest is exactly the first missed
        ((E, 5), 5, 10, (E, 3), None),  # the first missed is trimmed
        ((E, 5), None, 10, (E, 3), None),  # everything missed aged out
        ((E, 5), 1, 2, (E, 3), (3, 5)),  # exactly max_replay
        ((E, 5), 1, 2, (E, 2), None),  # one more than max_replay
    ],
)
def test_the_recovery_decision(
    room: tuple[str, int] | None,
    oldest: int | None,
    max_replay: int,
    asked: tuple[str, int],
    decision: tuple[int, int] | None,
) -> None:
    assert decide(room, oldest, max_replay, asked) == decision


def meta(log: ReplayLog) -> dict[str, object]:
    return {"v": 2, "epoch": log.epoch, "head": log.head, "first": log.first, "marks": log.marks}


def test_the_first_log_makes_the_epoch_and_each_one_the_meta() -> None:
    log = ReplayLog(roomkit.History())
    assert log.position is None
    seq, writes = log.append(1.0, "e1")
    assert seq == 1 and log.epoch is not None and len(log.epoch) == 16
    assert writes == {
        log_key(1): "e1",
        META_KEY: json.dumps(
            {"v": 2, "epoch": log.epoch, "head": 1, "first": 1, "marks": [[1, 1.0]]},
            separators=(",", ":"),
        ),
    }
    seq, writes = log.append(2.0, "e2")
    assert seq == 2 and set(writes) == {log_key(2), META_KEY}
    assert log.position == (log.epoch, 2)
    assert log.begin() == {}  # the epoch stands


def test_begin_makes_the_epoch_at_head_zero() -> None:
    log = ReplayLog(roomkit.History())
    made = log.begin()
    assert log.position == (log.epoch, 0) and log.oldest(0.0) is None
    assert made == {META_KEY: f'{{"v":2,"epoch":"{log.epoch}","head":0,"first":1,"marks":[]}}'}


def test_trimming_beyond_max_count_in_the_same_writes() -> None:
    log = ReplayLog(roomkit.History(max_count=2))
    log.append(1.0, "a")
    log.append(2.0, "b")
    _, writes = log.append(3.0, "c")
    assert writes[log_key(1)] is None and writes[log_key(3)] == "c"
    assert log.oldest(3.0) == 2 and log.first == 2


def test_marks_one_entry_a_step() -> None:
    """max_age 16: a step of 1 s. A mark is the first entry a step or more after the
    last mark; those between it and the next were logged within its step."""
    log = ReplayLog(roomkit.History(max_age=16.0))
    for seq, t in enumerate([0.0, 0.5, 0.99, 1.0, 1.2, 5.0, 5.5, 5.9], 1):
        assert log.append(t, "e")[0] == seq
    assert log.marks == ((1, 0.0), (4, 1.0), (6, 5.0))
    assert log.oldest(16.5) == 1  # 1..3 were logged before 1.0: not surely aged at 0.5
    assert log.oldest(17.0) == 4  # at 1.0 they are
    assert log.oldest(18.0) == 6  # 4 and 5 were logged before 2.0
    assert log.oldest(22.0) is None  # everything before 6.0
    assert log.fresh(5.5, 21.5) and not log.fresh(5.5, 21.6)


def test_trimming_by_age_deletes_whole_steps() -> None:
    log = ReplayLog(roomkit.History(max_age=16.0))
    for t in [0.0, 0.5, 1.0, 1.5, 5.0]:
        log.append(t, "e")
    _, writes = log.append(17.5, "f")  # entries 1 and 2 were logged before 1.0: aged
    assert {key for key, value in writes.items() if value is None} == {log_key(1), log_key(2)}
    assert log.first == 3 and log.marks == ((3, 1.0), (5, 5.0), (6, 17.5))
    _, writes = log.append(30.0, "g")  # all before 6.0 (entry 5 too)
    assert [key for key, value in writes.items() if value is None] == [
        log_key(s) for s in (3, 4, 5)
    ]
    assert log.first == 6 and log.marks == ((6, 17.5), (7, 30.0))


def test_the_meta_keeps_at_most_marks_plus_one() -> None:
    log = ReplayLog(roomkit.History(max_count=MAX_COUNT, max_age=16.0))
    for n in range(5000):
        log.append(n * 0.25, "e")
        assert len(log.marks) <= MARKS + 1
    assert log.marks[0][0] <= log.first < (log.marks[1][0] if len(log.marks) > 1 else 10**9)
    assert log.head - log.first < 17 * 4 + 4  # 17 steps of 4 entries, at most


def test_a_log_loaded_from_the_store() -> None:
    stored = {"v": 2, "epoch": E, "head": 9, "first": 8, "marks": [[8, 1.0]]}
    log = ReplayLog(roomkit.History(), stored)
    assert log.position == (E, 9) and log.oldest(2.0) == 8
    assert meta(log) == {**stored, "marks": ((8, 1.0),)}
    assert log.append(3.0, "x")[0] == 10


def test_a_meta_of_an_unknown_format_starts_a_new_epoch() -> None:
    log = ReplayLog(roomkit.History(), {"v": 3, "epoch": E, "head": 9})
    assert log.position is None
    assert log.append(1.0, "x")[0] == 1 and log.epoch != E


def test_upgrading_a_log_of_the_first_format() -> None:
    history = roomkit.History(max_age=16.0)
    old = {"epoch": E, "head": 9}
    times = [(6, 1.0), (7, 1.5), (8, 2.0), (9, 2.1)]
    assert upgrade(history, old, times) == {
        "v": 2,
        "epoch": E,
        "head": 9,
        "first": 6,
        "marks": [(6, 1.0), (8, 2.0)],
    }
    assert upgrade(history, old, [])["first"] == 10  # nothing retained
    log = ReplayLog(history, upgrade(history, old, times))
    assert log.position == (E, 9) and log.oldest(17.5) == 6 and log.oldest(18.0) == 8


def test_restoring_a_mark_undoes_the_turn() -> None:
    log = ReplayLog(roomkit.History(max_count=2))
    log.append(1.0, "a")
    log.append(2.0, "b")
    mark = log.mark()
    log.append(3.0, "c")
    log.append(4.0, "d")
    assert log.oldest(4.0) == 3
    log.restore(mark)
    assert log.head == 2 and log.oldest(4.0) == 1
    assert log.append(5.0, "c2")[0] == 3
    mark = log.mark()
    log.clear({})
    assert log.position is None and log.oldest(5.0) is None
    log.restore(mark)
    assert log.head == 3 and log.oldest(5.0) == 2


def test_rolling_back_a_block_that_cleared_nothing() -> None:
    log = ReplayLog(roomkit.History())
    log.append(1.0, "a")
    block = log.block()
    _, writes = log.append(2.0, "b")
    assert log.rolled_back(block, {**writes, "app": "1"}) == writes  # the log's alone


def test_rolling_back_a_clear_restores_the_log_before_it() -> None:
    log = ReplayLog(roomkit.History())
    log.append(1.0, "a")
    before = meta(log)
    block = log.block()
    _, writes = log.append(2.0, "b")  # went out: it stays
    logged = meta(log)
    log.clear({**writes, "app": "1"})
    assert log.position is None
    assert log.rolled_back(block, {}) == writes
    assert meta(log) == logged != before


def test_rolling_back_a_clear_the_block_logged_after() -> None:
    log = ReplayLog(roomkit.History())
    for t in (1.0, 2.0, 3.0):
        log.append(t, "old")
    block = log.block()
    log.clear({})
    _, writes = log.append(4.0, "new")  # out in a new epoch: that one stands
    epoch = log.epoch
    kept = log.rolled_back(block, writes)
    assert kept == {**writes, log_key(2): None, log_key(3): None}  # 1 is the new one's
    assert log.position == (epoch, 1)
    log.clear({})  # and again, in a later block, with nothing logged since
    assert log.rolled_back(log.block(), {}) == {}
    assert log.position is None


def test_rolling_back_two_clears_keeps_the_last_log_that_went_out() -> None:
    log = ReplayLog(roomkit.History())
    log.append(1.0, "first epoch")
    block = log.block()
    log.clear({})
    _, writes = log.append(2.0, "second epoch")
    second = meta(log)
    log.clear(writes)
    log.clear({})  # a clear of no log changes nothing to restore
    assert log.rolled_back(block, {}) == writes
    assert meta(log) == second


@pytest.mark.parametrize(
    "options",
    [
        {"max_count": 0},
        {"max_count": 1.5},
        {"max_count": True},
        {"max_replay": -1},
        {"max_age": 0},
        {"max_age": float("inf")},
        {"max_age": "1"},
        {"max_count": MAX_COUNT + 1},
    ],
)
def test_history_checks_its_fields(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="History"):
        roomkit.History(**options)  # type: ignore[arg-type]


def test_history_defaults() -> None:
    assert roomkit.History() == roomkit.History(max_count=1000, max_age=120.0, max_replay=1000)
