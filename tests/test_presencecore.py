"""The presence tracker (``roomkit/_core/presence.py``): state, diffs, coalescing per
turn, limits, and the two frames, exactly."""

from __future__ import annotations

import json

import pytest

from roomkit._core.frames import OPCODE_TEXT, encode_frame
from roomkit._core.presence import (
    MAX_META,
    Tracker,
    check_meta,
    default_key,
    diff_frame,
    state_frames,
)


def test_check_meta_takes_a_small_json_object() -> None:
    assert check_meta({"name": "ann", "n": 1}) == '{"name": "ann", "n": 1}'
    assert check_meta({"é": "ü"}) == '{"é": "ü"}'  # as it is, not escaped
    assert check_meta({}) == "{}"


def test_check_meta_refuses_what_is_no_small_json_object() -> None:
    for value in ([1], "ann", 3, None, True):
        with pytest.raises(TypeError, match="a presence is a dict"):
            check_meta(value)
    with pytest.raises(TypeError):
        check_meta({"x": object()})
    with pytest.raises(ValueError):
        check_meta({"x": float("nan")})
    with pytest.raises(ValueError, match='"ref"'):
        check_meta({"ref": "mine"})


def test_check_meta_limits_the_serialised_size_to_1_kib() -> None:
    assert MAX_META == 1024
    # {"x": "..."} is 9 bytes around the text; "é" is 2 bytes of UTF-8.
    check_meta({"x": "a" * (MAX_META - 9)})
    with pytest.raises(ValueError, match="at most 1024 bytes serialised, this one is 1025"):
        check_meta({"x": "a" * (MAX_META - 8)})
    with pytest.raises(ValueError, match="this one is 1026"):
        check_meta({"x": "é" * 508 + "a"})


def test_default_key_is_the_first_user_tag_else_the_connection_id() -> None:
    assert default_key("c-1", ["all", "user:ann", "user:bob"]) == "ann"
    assert default_key("c-1", ["all", "ann"]) == "c-1"
    assert default_key("c-1", []) == "c-1"
    assert default_key("c-1", ["user:"]) == ""  # an empty id is still the tag's


def meta(ref: str, **value: object) -> dict[str, object]:
    return {**value, "ref": ref}


def test_a_join_is_in_the_state_and_the_diff() -> None:
    tracker = Tracker()
    assert not tracker.pending and tracker.flush() is None
    tracker.track("c1", "ann", '{"tab": 1}')
    assert tracker.pending
    assert tracker.state() == {"ann": [meta("c1", tab=1)]}
    assert tracker.flush() == {"joins": {"ann": {"metas": [meta("c1", tab=1)]}}, "leaves": {}}
    assert not tracker.pending and tracker.flush() is None


def test_two_tabs_are_one_key_with_two_metas_in_join_order() -> None:
    tracker = Tracker()
    tracker.track("c2", "ann", '{"tab": 2}')
    tracker.track("c1", "ann", '{"tab": 1}')
    tracker.track("c3", "bob", "{}")
    assert tracker.state() == {"ann": [meta("c2", tab=2), meta("c1", tab=1)], "bob": [meta("c3")]}
    assert tracker.flush() == {
        "joins": {
            "ann": {"metas": [meta("c2", tab=2), meta("c1", tab=1)]},
            "bob": {"metas": [meta("c3")]},
        },
        "leaves": {},
    }
    tracker.track("c2", "", None)  # one tab closes: the key stays, with the other
    assert tracker.state() == {"ann": [meta("c1", tab=1)], "bob": [meta("c3")]}
    assert tracker.flush() == {"joins": {}, "leaves": {"ann": {"metas": [meta("c2", tab=2)]}}}


def test_an_update_is_a_leave_and_a_join_and_goes_last() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"s": "here"}')
    tracker.track("c2", "ann", '{"s": "here"}')
    tracker.flush()
    tracker.track("c1", "ann", '{"s": "away"}')
    assert tracker.state() == {"ann": [meta("c2", s="here"), meta("c1", s="away")]}
    assert tracker.flush() == {
        "joins": {"ann": {"metas": [meta("c1", s="away")]}},
        "leaves": {"ann": {"metas": [meta("c1", s="here")]}},
    }


def test_the_same_value_again_changes_nothing() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"s": 1}')
    tracker.track("c2", "ann", '{"s": 1}')
    tracker.flush()
    tracker.track("c1", "ann", '{"s": 1}')
    assert not tracker.pending and tracker.flush() is None
    assert list(tracker.state()["ann"]) == [meta("c1", s=1), meta("c2", s=1)]
    tracker.track("c9", "", None)  # untracking who is not tracked
    assert not tracker.pending


def test_a_join_and_a_leave_in_one_turn_cancel() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"s": 1}')
    tracker.track("c1", "ann", '{"s": 2}')
    tracker.track("c1", "", None)
    assert tracker.pending  # something happened...
    assert tracker.flush() is None  # ...that nobody needs to hear of
    assert tracker.state() == {}


def test_a_turn_tells_only_its_net_change() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"s": 1}')
    tracker.flush()
    tracker.track("c1", "ann", '{"s": 2}')
    tracker.track("c1", "ann", '{"s": 3}')
    assert tracker.flush() == {
        "joins": {"ann": {"metas": [meta("c1", s=3)]}},
        "leaves": {"ann": {"metas": [meta("c1", s=1)]}},
    }
    # Back to its value of the turn's start, but moved last: told, so that a client
    # applying leaves then joins orders the key as the room does.
    tracker.track("c2", "ann", "{}")
    tracker.flush()
    tracker.track("c1", "ann", '{"s": 4}')
    tracker.track("c1", "ann", '{"s": 3}')
    assert tracker.state() == {"ann": [meta("c2"), meta("c1", s=3)]}
    assert tracker.flush() == {
        "joins": {"ann": {"metas": [meta("c1", s=3)]}},
        "leaves": {"ann": {"metas": [meta("c1", s=3)]}},
    }


def test_a_new_key_leaves_the_old_one() -> None:
    tracker = Tracker()
    tracker.track("c1", "c1", "{}")
    tracker.flush()
    tracker.track("c1", "ann", "{}")
    assert tracker.state() == {"ann": [meta("c1")]}
    assert tracker.flush() == {
        "joins": {"ann": {"metas": [meta("c1")]}},
        "leaves": {"c1": {"metas": [meta("c1")]}},
    }


def test_fifty_joins_are_one_diff_in_join_order() -> None:
    tracker = Tracker()
    for i in range(50):
        tracker.track(f"c{i}", f"u{i % 5}", json.dumps({"i": i}))
    diff = tracker.flush()
    assert diff is not None and diff["leaves"] == {}
    assert list(diff["joins"]) == [f"u{k}" for k in range(5)]
    assert [m["i"] for m in diff["joins"]["u0"]["metas"]] == list(range(0, 50, 5))
    assert tracker.flush() is None


def test_joins_are_listed_in_join_order_whatever_order_they_changed_in() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"s": 1}')
    tracker.track("c2", "ann", '{"s": 1}')
    tracker.flush()
    tracker.track("c2", "ann", '{"s": 2}')
    tracker.track("c1", "ann", '{"s": 2}')
    tracker.track("c3", "ann", '{"s": 2}')
    diff = tracker.flush()
    assert diff is not None
    assert [m["ref"] for m in diff["joins"]["ann"]["metas"]] == ["c2", "c1", "c3"]
    assert [m["ref"] for m in diff["leaves"]["ann"]["metas"]] == ["c2", "c1"]


def test_state_and_diffs_are_copies() -> None:
    tracker = Tracker()
    tracker.track("c1", "ann", '{"tabs": [1]}')
    state = tracker.state()
    state["ann"][0]["tabs"].append(2)
    state["ann"].append({})
    diff = tracker.flush()
    assert diff is not None
    diff["joins"]["ann"]["metas"][0]["tabs"].append(3)
    assert tracker.state() == {"ann": [meta("c1", tabs=[1])]}


def test_the_frames_exactly() -> None:
    tracker = Tracker()
    assert state_frames(tracker, 1024) == [encode_frame(OPCODE_TEXT, b'["presence_state",{}]')]
    tracker.track("c1", "ann", '{"name": "Ann é"}')
    assert state_frames(tracker, 1024) == [
        encode_frame(
            OPCODE_TEXT,
            '["presence_state",{"ann":{"metas":[{"name":"Ann é","ref":"c1"}]}}]'.encode(),
        )
    ]
    diff = tracker.flush()
    assert diff is not None
    assert diff_frame(diff) == encode_frame(
        OPCODE_TEXT,
        b'["presence_diff",{"joins":{"ann":{"metas":[{"name":"Ann \xc3\xa9","ref":"c1"}]}},'
        b'"leaves":{}}]',
    )


def ordered(state: dict[str, list[dict[str, object]]]) -> list[tuple[str, list[str]]]:
    """A state's keys and each key's refs, in order (== on dicts ignores it)."""
    return [(key, [str(m["ref"]) for m in metas]) for key, metas in state.items()]


@pytest.fixture
def ann_then_bob() -> Tracker:
    """A tracker of ann (``a1``) then bob (``b1``), their joins flushed."""
    tracker = Tracker()
    tracker.track("a1", "ann", "{}")
    tracker.track("b1", "bob", "{}")
    tracker.flush()
    return tracker


def test_a_key_keeps_its_place_while_it_ends_each_turn_with_a_meta(ann_then_bob: Tracker) -> None:
    tracker = ann_then_bob
    tracker.track("a1", "ann", '{"s": "away"}')  # its only meta updates: ann stays first
    assert ordered(tracker.state()) == [("ann", ["a1"]), ("bob", ["b1"])]
    tracker.flush()
    tracker.track("a2", "ann", "{}")  # in one turn: a second tab joins, the first leaves
    tracker.track("a1", "", None)
    assert ordered(tracker.state()) == [("ann", ["a2"]), ("bob", ["b1"])]
    diff = tracker.flush()
    assert diff is not None and list(diff["joins"]) == ["ann"]
    assert ordered(tracker.state()) == [("ann", ["a2"]), ("bob", ["b1"])]


def test_a_key_that_ends_a_turn_empty_comes_back_last(ann_then_bob: Tracker) -> None:
    tracker = ann_then_bob
    tracker.track("a1", "", None)
    tracker.flush()
    tracker.track("a1", "ann", "{}")
    assert ordered(tracker.state()) == [("bob", ["b1"]), ("ann", ["a1"])]
    tracker.flush()
    tracker.track("c1", "cy", "{}")  # new keys go last, in the order of their first metas
    tracker.track("d1", "dee", "{}")
    tracker.track("b1", "", None)  # and bob, emptied, is gone when the turn ends
    tracker.track("a1", "ann", '{"v": 1}')
    diff = tracker.flush()
    assert diff is not None and list(diff["joins"]) == ["ann", "cy", "dee"]
    assert ordered(tracker.state()) == [("ann", ["a1"]), ("cy", ["c1"]), ("dee", ["d1"])]


def test_the_order_mid_turn_is_the_one_the_turn_ends_with(ann_then_bob: Tracker) -> None:
    tracker = ann_then_bob
    tracker.track("c1", "cy", "{}")
    tracker.track("a1", "ann", '{"v": 1}')
    tracker.track("b2", "bob", "{}")
    mid = ordered(tracker.state())
    tracker.flush()
    assert (
        mid == ordered(tracker.state()) == [("ann", ["a1"]), ("bob", ["b1", "b2"]), ("cy", ["c1"])]
    )


def test_a_rollback_puts_back_what_the_hook_changed_in_place() -> None:
    tracker = Tracker()
    tracker.track("a", "ann", '{"n": 1}')
    tracker.track("b", "bob", '{"n": 1}')
    tracker.track("c", "ann", '{"n": 1}')
    tracker.flush()
    tracker.track("c", "", None, turn=False)  # roomkit's own, before the hook: kept
    tracker.begin()
    tracker.track("a", "ann", '{"n": 2}')  # an update: last in its key...
    tracker.track("b", "", None)
    tracker.track("d", "dan", '{"n": 1}')
    tracker.track("e", "eve", '{"n": 1}', turn=False)  # not the hook's: kept
    assert tracker.rollback() == {"a": '{"n":1}', "b": '{"n":1}', "d": None}
    assert tracker.state() == {  # ...and back in its place
        "ann": [{"n": 1, "ref": "a"}],
        "bob": [{"n": 1, "ref": "b"}],
        "eve": [{"n": 1, "ref": "e"}],
    }
    assert tracker.flush() == {
        "joins": {"eve": {"metas": [{"n": 1, "ref": "e"}]}},
        "leaves": {"ann": {"metas": [{"n": 1, "ref": "c"}]}},
    }
    tracker.begin()
    tracker.track("a", "ann", '{"n": 3}')
    tracker.end()  # returned: its changes stand
    assert tracker.rollback() == {}
    assert tracker.state()["ann"] == [{"n": 3, "ref": "a"}]


def test_a_rollback_after_a_flush_in_the_hook_tells_the_clients_it() -> None:
    """A task of the room's flushes at once, the hook's changes so far with its own: the
    rollback's diff takes them back."""
    tracker = Tracker()
    tracker.track("a", "ann", '{"n": 1}')
    tracker.flush()
    tracker.begin()
    tracker.track("a", "ann", '{"n": 2}')
    tracker.track("b", "bob", '{"n": 1}', turn=False)
    assert tracker.flush() is not None  # sent, a's update with it
    assert tracker.rollback() == {"a": '{"n":1}'}
    assert tracker.flush() == {
        "joins": {"ann": {"metas": [{"n": 1, "ref": "a"}]}},
        "leaves": {"ann": {"metas": [{"n": 2, "ref": "a"}]}},
    }
    assert list(tracker.state()) == ["ann", "bob"]
