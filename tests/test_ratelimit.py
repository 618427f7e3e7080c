"""The token bucket (pure): exact counts at exact times."""

from __future__ import annotations

import math

import pytest

from roomkit import RateLimit
from roomkit._core.ratelimit import FLOOD_SECONDS, TokenBucket, Verdict


def test_burst_then_refill() -> None:
    bucket = TokenBucket(RateLimit(per_second=10, burst=5), now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [Verdict.ALLOW] * 5 + [Verdict.DROP]
    assert bucket.take(0.1) is Verdict.ALLOW  # one token back after 1/10 s
    assert bucket.take(0.1) is Verdict.DROP
    assert [bucket.take(10.0) for _ in range(6)] == [Verdict.ALLOW] * 5 + [Verdict.DROP]


def test_a_steady_sender_at_the_rate_is_never_dropped() -> None:
    bucket = TokenBucket(RateLimit(per_second=10, burst=1), now=0.0)
    assert all(bucket.take(i / 10) is Verdict.ALLOW for i in range(1000))


def test_a_flood_runs_out_of_patience() -> None:
    limit = RateLimit(per_second=10, burst=5)
    bucket = TokenBucket(limit, now=0.0)
    verdicts = [bucket.take(0.0) for _ in range(5 + int(10 * FLOOD_SECONDS))]
    assert verdicts[:5] == [Verdict.ALLOW] * 5
    assert verdicts[5:-1] == [Verdict.DROP] * (int(10 * FLOOD_SECONDS) - 1)
    assert verdicts[-1] is Verdict.FLOOD


def test_the_flood_comes_after_exactly_three_seconds_of_refills() -> None:
    # Written out, not derived from FLOOD_SECONDS: 10 a second for 3 s is 30 drops'
    # patience; the 30th drop is the flood, not the 29th nor the 31st.
    bucket = TokenBucket(RateLimit(per_second=10, burst=5), now=0.0)
    verdicts = [bucket.take(0.0) for _ in range(5 + 30)]
    assert verdicts == [Verdict.ALLOW] * 5 + [Verdict.DROP] * 29 + [Verdict.FLOOD]


def test_a_steady_sender_over_the_rate_is_closed_within_seconds() -> None:
    bucket = TokenBucket(RateLimit(per_second=10, burst=5), now=0.0)
    verdicts = [bucket.take(i / 20) for i in range(20 * 60)]  # twice the rate, a minute
    flood_at = verdicts.index(Verdict.FLOOD) / 20
    assert 3 < flood_at < 4  # 3 s of patience spent at 10 drops a second, once over burst


def test_patience_comes_back() -> None:
    limit = RateLimit(per_second=10, burst=5)
    bucket = TokenBucket(limit, now=0.0)
    for _ in range(5 + 25):  # spends most of the patience
        bucket.take(0.0)
    # Ten quiet seconds later, tokens and patience are full: it acts like a new bucket.
    fresh = TokenBucket(limit, now=10.0)
    assert [bucket.take(10.0) for _ in range(40)] == [fresh.take(10.0) for _ in range(40)]


@pytest.mark.parametrize(("per_second", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0)])
def test_bad_limits_are_refused(per_second: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(per_second=per_second, burst=burst)


@pytest.mark.parametrize(
    ("per_second", "burst", "message"),
    [
        (0, 1, "per_second must be a positive number, not 0"),
        (math.inf, 1, "per_second must be a positive number, not inf"),
        (1, 0, "burst must be a positive int, not 0"),
        (1, True, "burst must be a positive int, not True"),
        (1, 1.5, "burst must be a positive int, not 1.5"),
    ],
)
def test_each_bad_rate_limit_gets_its_exact_error(
    per_second: float, burst: int, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        RateLimit(per_second, burst)
    assert str(raised.value) == message
