"""The client's reconnection schedule (``roomkit._reconnect``): pure, exact."""

from __future__ import annotations

import pytest

from roomkit._reconnect import Backoff, GiveUp, Reconnection, Retry

DEFAULT = Backoff()


def test_the_default_ceilings_in_the_first_minute_of_an_outage() -> None:
    # docs/clients.md's table: 0.5, 1, 2, then 2 for as long as the outage is under 60 s.
    assert [DEFAULT.ceiling(n, outage=10.0) for n in range(8)] == [
        0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0,
    ]  # fmt: skip
    assert DEFAULT.ceiling(40, outage=59.999) == 2.0


def test_after_the_early_period_the_ceiling_is_max_delay() -> None:
    assert [DEFAULT.ceiling(n, outage=60.0) for n in range(7)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0,
    ]  # fmt: skip
    assert DEFAULT.ceiling(10_000, outage=1e9) == 10.0  # no overflow however long


def test_a_max_delay_under_the_early_one_bounds_both() -> None:
    backoff = Backoff(initial_delay=1.0, max_delay=1.5)
    assert [backoff.ceiling(n, outage=0.0) for n in range(3)] == [1.0, 1.5, 1.5]


@pytest.mark.parametrize(
    "bad", [{"initial_delay": -1}, {"max_delay": -0.1}, {"growth": 0.5}, {"early_period": -1}]
)
def test_bad_schedules_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be at least"):
        Backoff(**bad)


def test_tries_count_up_and_a_connection_resets_them() -> None:
    tries = Reconnection(DEFAULT, max_retries=None, outage_began=100.0)
    assert tries.after(opened=False, close_code=None, now=100.0) == Retry(2, 1.0)
    assert tries.after(opened=False, close_code=None, now=101.0) == Retry(3, 2.0)
    assert tries.after(opened=False, close_code=None, now=161.0) == Retry(4, 4.0)  # late
    assert tries.after(opened=True, close_code=1001, now=500.0) == Retry(1, 0.5)
    assert (tries.failures, tries.outage_began) == (0, 500.0)
    assert tries.after(opened=False, close_code=None, now=559.0) == Retry(2, 1.0)


def test_the_outage_begins_when_the_connection_ends() -> None:
    tries = Reconnection(DEFAULT, max_retries=None, outage_began=0.0)
    tries.after(opened=True, close_code=1006, now=1000.0)
    for _ in range(5):
        step = tries.after(opened=False, close_code=None, now=1059.0)
    assert step == Retry(6, 2.0)
    assert tries.after(opened=False, close_code=None, now=1060.0) == Retry(7, 10.0)


def test_after_a_1012_the_first_try_is_at_once_and_free() -> None:
    tries = Reconnection(DEFAULT, max_retries=0, outage_began=0.0)
    assert tries.after(opened=True, close_code=1012, now=5.0) == Retry(0, 0.0)
    # The free try failed: not counted (max_retries=0 would give up), the usual first wait.
    assert tries.after(opened=False, close_code=None, now=5.0) == Retry(1, 0.5)
    assert tries.after(opened=False, close_code=None, now=5.5) == GiveUp(1)


def test_max_retries_counts_failed_tries_in_a_row() -> None:
    tries = Reconnection(DEFAULT, max_retries=3, outage_began=0.0)
    steps = [tries.after(opened=False, close_code=None, now=0.0) for _ in range(4)]
    assert steps == [Retry(2, 1.0), Retry(3, 2.0), Retry(4, 2.0), GiveUp(4)]
