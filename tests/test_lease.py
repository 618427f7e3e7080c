"""roomkit._core.lease: a member's lease by its monotonic clock. Pure: exact times."""

from __future__ import annotations

import math

import pytest

from roomkit._core.lease import HEARTBEATS_PER_LEASE, MARGIN, Heard, Lease, Verdict


def registered(seconds: float = 5.0, at: float = 100.0) -> Lease:
    """A lease whose registration was sent at ``at`` and came back at once."""
    lease = Lease(seconds)
    assert lease.heard(at, at, Heard.RENEWED) == Verdict(at + seconds / 3)
    return lease


def test_the_constants_leave_two_heartbeats_to_fail() -> None:
    assert HEARTBEATS_PER_LEASE == 3
    assert MARGIN == 0.1


def test_a_new_lease_is_not_valid_before_its_registration() -> None:
    lease = Lease(3.0)
    assert (lease.until, lease.held) == (-math.inf, False)
    assert not lease.valid(0.0)
    assert not lease.expired(0.0)  # nothing held: nothing to fence
    assert lease.interval == 1.0
    assert lease.margin == pytest.approx(0.3)


def test_a_renewal_counts_from_the_send_time_less_the_margin() -> None:
    lease = registered()
    assert (lease.until, lease.held) == (104.5, True)
    assert lease.valid(104.49)
    assert not lease.valid(104.5)  # the end itself is out
    assert lease.heard(101.0, 101.2, Heard.RENEWED) == Verdict(pytest.approx(101.0 + 5.0 / 3))
    assert lease.until == 105.5


def test_a_slow_renewal_that_comes_back_late_never_shortens_the_lease() -> None:
    lease = registered()
    lease.heard(103.0, 103.1, Heard.RENEWED)
    lease.heard(102.0, 103.2, Heard.RENEWED)  # sent earlier, heard later
    assert lease.until == 107.5


def test_the_lease_expires_once_at_its_end() -> None:
    lease = registered()
    assert not lease.expired(104.49)
    assert lease.expired(104.5)
    assert not lease.held
    assert not lease.expired(200.0)  # fenced already


def test_a_failed_heartbeat_leaves_the_lease_running_out() -> None:
    lease = registered()
    assert lease.heard(101.0, 101.5, Heard.FAILED) == Verdict(pytest.approx(101.0 + 5.0 / 3))
    assert lease.until == 104.5
    # A failure heard past the end fences, as the watcher would have.
    assert lease.heard(104.0, 104.6, Heard.FAILED) == Verdict(pytest.approx(104.0 + 5.0 / 3), True)
    assert not lease.held


def test_a_renewal_heard_after_the_lease_ran_out_fences_first() -> None:
    lease = registered()
    # Sent in time, but answered after the end: PostgreSQL may have let the row expire
    # before it arrived, and another member may hold the rooms.
    verdict = lease.heard(104.0, 104.6, Heard.RENEWED)
    assert verdict == Verdict(pytest.approx(104.0 + 5.0 / 3), fence=True, resumed=True)
    assert (lease.until, lease.held) == (108.5, True)


def test_a_renewal_after_a_fence_resumes_without_fencing_again() -> None:
    lease = registered()
    assert lease.expired(110.0)
    assert lease.heard(110.0, 110.1, Heard.RENEWED) == Verdict(
        pytest.approx(110.0 + 5.0 / 3), fence=False, resumed=True
    )
    assert lease.valid(114.49)


def test_replaced_fences_at_once_and_asks_for_a_registration_now() -> None:
    lease = registered()
    assert lease.heard(101.0, 101.1, Heard.REPLACED) == Verdict(101.0, fence=True)
    assert (lease.until, lease.held) == (-math.inf, False)
    assert not lease.valid(101.1)
    assert lease.heard(101.1, 101.2, Heard.RENEWED) == Verdict(
        pytest.approx(101.1 + 5.0 / 3), resumed=True
    )
    assert lease.until == pytest.approx(105.6)


def test_a_replaced_member_that_was_fenced_already_fences_nothing_more() -> None:
    lease = registered()
    assert lease.expired(120.0)
    assert lease.heard(120.0, 120.1, Heard.REPLACED) == Verdict(120.0)


def test_a_stopped_process_is_invalid_when_it_resumes() -> None:
    lease = registered(1.0, at=10.0)
    assert lease.valid(10.89)
    assert not lease.valid(30.0)  # SIGSTOP for 20 s: no event runs before a renewal


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.inf, math.nan])
def test_a_lease_is_positive_finite_seconds(seconds: float) -> None:
    with pytest.raises(ValueError, match="a lease is positive seconds"):
        Lease(seconds)
