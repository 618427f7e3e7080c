"""A room's log of broadcasts (pure): its keys and entries, trimming, undoing a turn,
and the recovery decision, exactly."""

from __future__ import annotations

import json

import pytest

import roomkit
from roomkit._core.history import (
    LOG_END,
    LOG_PREFIX,
    META_KEY,
    ReplayLog,
    decide,
    entry,
    log_key,
    meets,
    payload_of,
    seq_of,
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
    text = entry(12.5, "red", ["c-1"], "hé")
    assert text == '{"t":12.5,"tag":"red","x":["c-1"],"text":"hé"}'
    assert payload_of(json.loads(text)) == "hé"
    binary = json.loads(entry(1.0, None, [], b"\x00\xff"))
    assert binary == {"t": 1.0, "tag": None, "x": [], "bin": "AP8="}
    assert payload_of(binary) == b"\x00\xff"


@pytest.mark.parametrize(
    ("tag", "excluded", "conn", "tags", "meant"),
    [
        (None, [], "a", (), True),
        ("red", [], "a", ("red",), True),
        ("red", [], "a", ("blue",), False),
        ("red", [], "a", (), False),
        (None, ["a"], "a", (), False),
        (None, ["b"], "a", (), True),
        ("red", ["a"], "a", ("red",), False),
    ],
)
def test_who_an_entry_is_meant_for(
    tag: str | None, excluded: list[str], conn: str, tags: tuple[str, ...], meant: bool
) -> None:
    assert meets(json.loads(entry(0.0, tag, excluded, "m")), conn, tags) is meant


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


def test_the_first_log_makes_the_epoch_and_each_one_the_meta() -> None:
    log = ReplayLog(roomkit.History())
    assert log.position is None
    seq, writes = log.append(1.0, "e1")
    assert seq == 1 and log.epoch is not None and len(log.epoch) == 16
    assert writes == {
        log_key(1): "e1",
        META_KEY: json.dumps({"epoch": log.epoch, "head": 1}, separators=(",", ":")),
    }
    seq, writes = log.append(2.0, "e2")
    assert seq == 2 and set(writes) == {log_key(2), META_KEY}
    assert log.position == (log.epoch, 2)
    assert log.begin() == {}  # the epoch stands


def test_begin_makes_the_epoch_at_head_zero() -> None:
    log = ReplayLog(roomkit.History())
    made = log.begin()
    assert log.position == (log.epoch, 0)
    assert made == {META_KEY: f'{{"epoch":"{log.epoch}","head":0}}'}


def test_trimming_beyond_max_count_in_the_same_writes() -> None:
    log = ReplayLog(roomkit.History(max_count=2))
    log.append(1.0, "a")
    log.append(2.0, "b")
    _, writes = log.append(3.0, "c")
    assert writes[log_key(1)] is None and writes[log_key(3)] == "c"
    assert log.oldest(3.0) == 2


def test_trimming_by_age() -> None:
    log = ReplayLog(roomkit.History(max_age=10.0))
    log.append(0.0, "a")
    log.append(5.0, "b")
    assert log.oldest(9.0) == 1
    assert log.oldest(12.0) == 2  # aged out, though not deleted yet
    assert log.oldest(100.0) is None
    _, writes = log.append(14.0, "c")
    assert writes[log_key(1)] is None and log_key(2) not in writes
    assert log.oldest(14.0) == 2


def test_a_log_loaded_from_the_store() -> None:
    meta = {"epoch": E, "head": 9}
    log = ReplayLog(roomkit.History(), meta, [(8, 1.0), (9, 2.0)])
    assert log.position == (E, 9) and log.oldest(2.0) == 8
    assert log.append(3.0, "x")[0] == 10


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
    mark = log.mark()  # compacts what was trimmed: 1
    log.clear()
    assert log.position is None and log.oldest(5.0) is None
    log.restore(mark)
    assert log.head == 3 and log.oldest(5.0) == 2


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
    ],
)
def test_history_checks_its_fields(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="History"):
        roomkit.History(**options)  # type: ignore[arg-type]


def test_history_defaults() -> None:
    assert roomkit.History() == roomkit.History(max_count=1000, max_age=120.0, max_replay=1000)
