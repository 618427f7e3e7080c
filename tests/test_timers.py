"""The timer heap: pure, exact deadlines and counts, no clock."""

from __future__ import annotations

import math
import random
import weakref

from roomkit._core.timers import Timers


def test_timers_pop_in_deadline_order_and_replace() -> None:
    timers = Timers[str]()
    timers.set("a", 5)
    timers.set("b", 3)
    timers.set("c", 9)
    timers.set("a", 1)  # replaces 5
    timers.cancel("c")
    assert timers.next_deadline() == 1
    assert timers.pop_due(4) == ["a", "b"]
    assert timers.pop_due(100) == []
    assert timers.next_deadline() == math.inf
    assert len(timers) == 0


def test_a_timer_set_earlier_only_never_moves_later() -> None:
    timers = Timers[str]()
    timers.set("a", 5)
    timers.set("a", 10, earlier_only=True)  # later: ignored
    timers.set("b", 7, earlier_only=True)  # none yet: set
    assert timers.pop_due(6) == ["a"]
    timers.set("b", 3, earlier_only=True)  # earlier: moved
    assert timers.pop_due(4) == ["b"]
    assert len(timers) == 0


def test_a_timer_set_later_moves_in_place_and_surfaces_at_its_time() -> None:
    timers = Timers[str]()
    timers.set("a", 5)
    for deadline in range(6, 1006):  # an alarm re-armed for later, per message
        timers.set("a", deadline)
    assert timers.entries == 1
    assert timers.next_deadline() == 1005
    assert timers.entries == 1  # moved down to its time, not copied
    assert timers.pop_due(1004) == []
    assert timers.pop_due(1005) == ["a"]
    assert (timers.entries, len(timers)) == (0, 0)


def test_stale_entries_never_outnumber_the_live_ones() -> None:
    timers = Timers[str]()
    for key in "abc":
        timers.set(key, 100)
    entries = []
    for deadline in (90, 80, 70, 60):  # earlier each time: a new entry, the old one stale
        timers.set("a", deadline)
        entries.append(timers.entries)
    assert entries == [4, 5, 6, 3]  # the fourth stale entry outnumbered the 3 live: rebuilt
    entries = []
    for key in "bca":
        timers.cancel(key)
        entries.append(timers.entries)
    assert entries == [3, 1, 0]
    assert timers.next_deadline() == math.inf


def test_a_cancelled_key_is_not_referenced_by_the_timers() -> None:
    class Key:
        pass

    timers = Timers[Key]()
    kept = [Key(), Key(), Key()]
    for key in kept:
        timers.set(key, 10)
    gone = Key()
    ref = weakref.ref(gone)
    timers.set(gone, 5)
    timers.set(gone, 1)  # earlier: its first entry goes stale
    timers.cancel(gone)
    del gone
    assert ref() is None
    assert timers.entries == 5  # two stale entries (no more than the live), holding no key
    assert timers.pop_due(10) == kept
    assert timers.entries == 0


def test_timers_match_a_model_and_stay_within_twice_the_live_ones() -> None:
    rng = random.Random(12)
    timers = Timers[int]()
    model: dict[int, float] = {}
    now = 0.0
    for _ in range(20_000):
        op = rng.random()
        key = rng.randrange(50)
        if op < 0.6:
            deadline = now + rng.random() * 100
            earlier_only = rng.random() < 0.2
            timers.set(key, deadline, earlier_only=earlier_only)
            if not (earlier_only and key in model and model[key] <= deadline):
                model[key] = deadline
        elif op < 0.9:
            timers.cancel(key)
            model.pop(key, None)
        else:
            now += rng.random() * 10
            due = sorted((d, k) for k, d in model.items() if d <= now)
            assert timers.pop_due(now) == [k for _, k in due]
            for _, k in due:
                del model[k]
        assert len(timers) == len(model)
        assert timers.entries <= 2 * len(model)
        assert timers.next_deadline() == min(model.values(), default=math.inf)
