"""The Python client's copy of a room's presence (``roomkit/_clientpresence.py``),
exactly, and in agreement with the server's tracker over random turns."""

from __future__ import annotations

import json
import random

from roomkit._clientpresence import ClientPresence
from roomkit._core.presence import Tracker


def state_frame(state: dict[str, list[dict[str, object]]]) -> str:
    return json.dumps(["presence_state", {key: {"metas": metas} for key, metas in state.items()}])


def test_a_state_replaces_everything_and_a_diff_applies_leaves_then_joins() -> None:
    presence = ClientPresence()
    assert presence.clear() is False
    assert presence.feed(state_frame({"ann": [{"ref": "1"}], "bob": [{"ref": "2"}]})) == ({}, {})
    assert presence.state == {"ann": [{"ref": "1"}], "bob": [{"ref": "2"}]}
    update = {
        "joins": {"ann": {"metas": [{"s": "away", "ref": "1"}]}, "cy": {"metas": [{"ref": "3"}]}},
        "leaves": {"ann": {"metas": [{"ref": "1"}]}, "bob": {"metas": [{"ref": "2"}]}},
    }
    joins, leaves = presence.feed(json.dumps(["presence_diff", update])) or ({}, {})
    assert joins == {"ann": [{"s": "away", "ref": "1"}], "cy": [{"ref": "3"}]}
    assert leaves == {"ann": [{"ref": "1"}], "bob": [{"ref": "2"}]}
    assert presence.state == {"ann": [{"s": "away", "ref": "1"}], "cy": [{"ref": "3"}]}
    assert presence.clear() is True and presence.state == {}


def test_a_second_tab_goes_last_and_a_leave_of_one_keeps_the_key() -> None:
    presence = ClientPresence()
    presence.feed(state_frame({"ann": [{"ref": "1"}]}))
    presence.feed(json.dumps(["presence_diff", {"joins": {"ann": {"metas": [{"ref": "2"}]}}}]))
    assert presence.state == {"ann": [{"ref": "1"}, {"ref": "2"}]}
    presence.feed(json.dumps(["presence_diff", {"leaves": {"ann": {"metas": [{"ref": "1"}]}}}]))
    assert presence.state == {"ann": [{"ref": "2"}]}


def test_other_kinds_and_broken_frames_are_ignored() -> None:
    presence = ClientPresence()
    presence.feed(state_frame({"ann": [{"ref": "1"}]}))
    for frame in ('["m", 1, "x"]', "not json", '["presence_diff"]', '["presence_diff", 3]', "{}"):
        assert presence.feed(frame) is None
    # Entries of the wrong shape inside a frame are left out, the rest applied.
    odd = {"joins": {"bob": {"metas": [{"ref": "2"}, 7]}, "cy": {"metas": []}, "dan": 1}}
    assert presence.feed(json.dumps(["presence_diff", odd])) == ({"bob": [{"ref": "2"}]}, {})
    assert presence.state == {"ann": [{"ref": "1"}], "bob": [{"ref": "2"}]}


def in_order(state: dict[str, list[dict[str, object]]]) -> list[tuple[str, list[object]]]:
    """A state as its keys and metas in order (== on dicts ignores the keys' order)."""
    return list(state.items())


def test_the_client_agrees_with_the_servers_tracker_over_random_turns() -> None:
    """In content and in order: keys and metas as the room lists them."""
    rng = random.Random(18)
    tracker, presence = Tracker(), ClientPresence()
    refs, keys = [f"c{i}" for i in range(10)], ["ann", "bob", "cy", "dee", "eve"]
    for _turn in range(1000):
        for _ in range(rng.randint(1, 4)):
            ref = rng.choice(refs)
            if rng.random() < 0.3:
                tracker.track(ref, "", None)
            else:
                tracker.track(ref, rng.choice(keys), json.dumps({"v": rng.randint(0, 2)}))
        diff = tracker.flush()
        if diff is not None:
            presence.feed(json.dumps(["presence_diff", diff]))
        assert in_order(presence.state) == in_order(tracker.state())
        if rng.random() < 0.05:  # a reconnect: a welcome, then the whole state
            presence.clear()
            presence.feed(state_frame(tracker.state()))
            assert in_order(presence.state) == in_order(tracker.state())


def test_a_key_emptied_and_filled_again_by_one_diff_keeps_its_place() -> None:
    presence = ClientPresence()
    presence.feed(state_frame({"ann": [{"ref": "1"}], "bob": [{"ref": "2"}]}))
    update = {
        "joins": {"ann": {"metas": [{"s": "away", "ref": "1"}]}},
        "leaves": {"ann": {"metas": [{"ref": "1"}]}},
    }
    presence.feed(json.dumps(["presence_diff", update]))
    assert list(presence.state) == ["ann", "bob"]
    presence.feed(json.dumps(["presence_diff", {"leaves": {"ann": {"metas": [{"ref": "1"}]}}}]))
    presence.feed(json.dumps(["presence_diff", {"joins": {"ann": {"metas": [{"ref": "1"}]}}}]))
    assert list(presence.state) == ["bob", "ann"]  # gone in between: back last
