"""roomkit._core.lease: a member's lease by its monotonic clock. Pure: exact times."""

from __future__ import annotations

import math

import pytest

from roomkit._core.lease import HEARTBEATS_PER_LEASE, MARGIN, Heard, Lease


def test_the_constants_leave_two_heartbeats_to_fail() -> None:
    assert HEARTBEATS_PER_LEASE == 3
    assert MARGIN == 0.1


def test_a_new_lease_is_not_valid_before_its_first_heartbeat() -> None:
    lease = Lease(3.0)
    assert lease.until == -math.inf
    assert not lease.valid(0.0)
    assert lease.interval == 1.0
    assert lease.margin == pytest.approx(0.3)


def test_a_renewal_counts_from_the_send_time_less_the_margin() -> None:
    lease = Lease(5.0)
    assert lease.heard(100.0, Heard.RENEWED) == pytest.approx(100.0 + 5.0 / 3)
    assert lease.until == 104.5
    assert lease.valid(104.49)
    assert not lease.valid(104.5)  # the end itself is out


def test_a_slow_renewal_that_comes_back_late_never_shortens_the_lease() -> None:
    lease = Lease(5.0)
    lease.heard(110.0, Heard.RENEWED)
    lease.heard(100.0, Heard.RENEWED)  # sent earlier, heard later
    assert lease.until == 114.5


def test_a_failed_heartbeat_leaves_the_lease_running_out() -> None:
    lease = Lease(5.0)
    lease.heard(100.0, Heard.RENEWED)
    assert lease.heard(101.0, Heard.FAILED) == pytest.approx(101.0 + 5.0 / 3)
    assert lease.until == 104.5
    assert not lease.valid(104.5)


def test_replaced_ends_the_lease_at_once_and_asks_for_a_registration_now() -> None:
    lease = Lease(5.0)
    lease.heard(100.0, Heard.RENEWED)
    assert lease.heard(101.0, Heard.REPLACED) == 101.0
    assert lease.until == -math.inf
    assert not lease.valid(101.0)
    lease.heard(101.5, Heard.RENEWED)  # registered again
    assert lease.until == 106.0


def test_a_stopped_process_is_invalid_when_it_resumes() -> None:
    lease = Lease(1.0)
    lease.heard(10.0, Heard.RENEWED)
    assert lease.valid(10.89)
    assert not lease.valid(30.0)  # SIGSTOP for 20 s: no event runs before a renewal


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.inf, math.nan])
def test_a_lease_is_positive_finite_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="a lease is positive seconds"):
        Lease(seconds)
