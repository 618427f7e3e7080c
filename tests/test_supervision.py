"""roomkit._core.supervision: the supervisor's decisions, exactly, at given times."""

from __future__ import annotations

import math
import signal

import pytest

from roomkit._core.supervision import (
    BOOT_TIMEOUT,
    FIRST_BACKOFF,
    HEARTBEAT_TIMEOUT,
    MAX_BACKOFF,
    STABLE_AFTER,
    BadTransition,
    Exit,
    Kill,
    Listening,
    Phase,
    Ready,
    SlotState,
    Start,
    Stop,
    Supervision,
    restart_delay,
)

SIGTERM = int(signal.SIGTERM)


def running(count: int, now: float = 0.0) -> Supervision:
    """A supervision whose ``count`` workers all started and said ready at ``now``."""
    supervision = Supervision(count, now)
    assert supervision.tick(now) == [Start(i) for i in range(count)]
    for i in range(count):
        supervision.heard(i, now, ready=True)
    assert supervision.phase is Phase.RUNNING
    return supervision


def test_every_slot_starts_at_the_first_tick_and_the_server_listens_once_all_are_ready() -> None:
    supervision = Supervision(2, 10.0)
    assert supervision.next_deadline() == 10.0
    assert supervision.tick(10.0) == [Start(0), Start(1)]
    assert supervision.state(0) is SlotState.STARTING
    assert supervision.tick(10.1) == []  # started already
    assert supervision.heard(1, 10.5, ready=True) == []
    assert supervision.phase is Phase.STARTING
    assert supervision.heard(0, 10.6) == []  # a heartbeat is no ready
    assert supervision.heard(0, 10.7, ready=True) == [Listening()]
    assert supervision.phase is Phase.RUNNING
    assert supervision.state(0) is SlotState.RUNNING
    assert supervision.heard(0, 10.8, ready=True) == []  # said once is enough


def test_a_new_worker_has_the_boot_timeout_until_its_first_heartbeat() -> None:
    supervision = Supervision(1, 0.0)
    supervision.tick(0.0)
    assert supervision.next_deadline() == BOOT_TIMEOUT
    assert supervision.tick(BOOT_TIMEOUT - 0.001) == []
    assert supervision.tick(BOOT_TIMEOUT) == [Kill(0, BOOT_TIMEOUT)]
    assert supervision.state(0) is SlotState.KILLED


def test_a_worker_that_beats_but_is_not_ready_within_the_boot_timeout_is_killed() -> None:
    """Its event loop runs, but it never serves (stuck opening its storage, say): the
    server would never listen, or a restarted slot's rooms never come back."""
    supervision = Supervision(1, 0.0)
    supervision.tick(0.0)
    beat = 0.0
    while beat + 0.25 < BOOT_TIMEOUT:
        beat += 0.25
        supervision.heard(0, beat)
        assert supervision.tick(beat) == []
    assert supervision.next_deadline() == BOOT_TIMEOUT
    assert supervision.tick(BOOT_TIMEOUT) == [Kill(0, None, unready_for=BOOT_TIMEOUT)]
    assert supervision.exited(0, BOOT_TIMEOUT) == [Exit(1)]  # at start: it cannot start
    restarted = running(1)
    restarted.exited(0, 10.0)
    assert restarted.tick(10.0) == [Start(0)]
    restarted.heard(0, 10.0 + BOOT_TIMEOUT - 0.5)
    assert restarted.tick(10.0 + BOOT_TIMEOUT) == [Kill(0, None, unready_for=BOOT_TIMEOUT)]
    assert restarted.phase is Phase.RUNNING  # it is started again, later


def test_a_worker_silent_for_the_heartbeat_timeout_is_killed_and_started_again() -> None:
    supervision = running(2)
    supervision.heard(0, 5.0)
    supervision.heard(1, 5.5)
    assert supervision.next_deadline() == 5.0 + HEARTBEAT_TIMEOUT
    assert supervision.tick(5.0 + HEARTBEAT_TIMEOUT - 0.001) == []
    late = 5.0 + HEARTBEAT_TIMEOUT + 0.25  # slot 1, heard at 5.5, is not silent so long
    assert supervision.tick(late) == [Kill(0, HEARTBEAT_TIMEOUT + 0.25)]
    assert supervision.next_deadline() == 5.5 + HEARTBEAT_TIMEOUT  # slot 0 waits for its exit
    gone = late + 0.05
    assert supervision.heard(0, gone) == []  # too late: it is being killed
    assert supervision.tick(gone) == []
    assert supervision.exited(0, gone) == []
    assert supervision.restart_at(0) == gone  # at once: its first failure
    assert supervision.tick(gone) == [Start(0)]
    assert supervision.heard(0, gone + 0.6, ready=True) == [Ready(0)]
    assert supervision.phase is Phase.RUNNING


def test_restarts_of_a_crash_loop_back_off_and_a_stable_run_resets_them() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0, 0.5, 1, 2, 4, 8, 16, 30]
    assert restart_delay(100) == MAX_BACKOFF
    supervision = running(1)
    now, delays = 0.0, []
    for _ in range(4):
        now += 1.0  # each run shorter than STABLE_AFTER
        assert supervision.exited(0, now) == []
        restart = supervision.restart_at(0)
        assert restart is not None
        delays.append(restart - now)
        assert supervision.next_deadline() == restart
        assert supervision.tick(restart - 0.001) == []
        now = restart
        assert supervision.tick(now) == [Start(0)]
    assert delays == [0, FIRST_BACKOFF, 2 * FIRST_BACKOFF, 4 * FIRST_BACKOFF]
    assert supervision.exited(0, now + STABLE_AFTER) == []
    assert supervision.restart_at(0) == now + STABLE_AFTER  # at once again


def test_sigterm_drains_every_worker_and_exits_0_once_all_are_gone() -> None:
    supervision = running(3)
    supervision.exited(2, 1.0)  # down, a restart due
    assert supervision.signalled(SIGTERM) == [Stop(0), Stop(1)]
    assert supervision.phase is Phase.DRAINING
    assert supervision.restart_at(2) is None
    assert supervision.tick(0.9) == []  # no restart while draining
    supervision.heard(0, 0.25)
    supervision.heard(1, 0.5)
    assert supervision.next_deadline() == 0.25 + HEARTBEAT_TIMEOUT
    assert supervision.exited(0, 1.0) == []
    assert supervision.restart_at(0) is None
    assert supervision.tick(0.5 + HEARTBEAT_TIMEOUT) == [Kill(1, HEARTBEAT_TIMEOUT)]  # hung
    assert supervision.exited(1, 0.6 + HEARTBEAT_TIMEOUT) == [Exit(0)]


def test_a_second_signal_kills_every_worker_and_exits_at_once() -> None:
    supervision = running(3)
    supervision.signalled(SIGTERM)
    supervision.exited(1, 1.0)
    assert supervision.signalled(int(signal.SIGINT)) == [Kill(0, None), Kill(2, None), Exit(130)]


def test_a_signal_while_starting_stops_the_workers_that_started() -> None:
    supervision = Supervision(2, 0.0)
    assert supervision.signalled(SIGTERM) == [Exit(0)]  # none started yet
    supervision = Supervision(2, 0.0)
    supervision.tick(0.0)
    assert supervision.signalled(SIGTERM) == [Stop(0), Stop(1)]
    assert supervision.heard(0, 0.5, ready=True) == []  # told to drain: no Listening
    assert supervision.exited(0, 0.6) == []
    assert supervision.exited(1, 0.7) == [Exit(0)]


def test_a_worker_that_exits_before_its_first_ready_at_start_fails_the_server() -> None:
    supervision = Supervision(3, 0.0)
    supervision.tick(0.0)
    supervision.heard(0, 0.5, ready=True)
    assert supervision.exited(1, 0.6) == [Stop(0), Stop(2)]
    assert supervision.phase is Phase.FAILED
    assert supervision.exited(0, 0.7) == []
    assert supervision.exited(2, 0.8) == [Exit(1)]


def test_a_worker_killed_before_its_first_ready_at_start_fails_the_server() -> None:
    supervision = Supervision(1, 0.0)
    supervision.tick(0.0)
    supervision.tick(BOOT_TIMEOUT)
    assert supervision.exited(0, BOOT_TIMEOUT) == [Exit(1)]


def test_a_worker_that_was_ready_once_is_restarted_even_before_the_server_listens() -> None:
    supervision = Supervision(2, 0.0)
    supervision.tick(0.0)
    supervision.heard(0, 0.5, ready=True)
    assert supervision.exited(0, 1.0) == []
    assert supervision.tick(1.0) == [Start(0)]
    assert supervision.heard(1, 1.2, ready=True) == []  # slot 0's new worker is not ready
    assert supervision.heard(0, 1.3, ready=True) == [Listening()]


def test_a_restarted_worker_that_never_gets_ready_while_running_backs_off() -> None:
    supervision = running(1)
    supervision.exited(0, 1.0)
    supervision.tick(1.0)
    assert supervision.exited(0, 1.5) == []  # never ready, but the server is running
    assert supervision.restart_at(0) == 1.5 + FIRST_BACKOFF


def test_nothing_to_wait_for_is_an_infinite_deadline() -> None:
    supervision = running(1)
    supervision.signalled(SIGTERM)
    supervision.exited(0, 1.0)
    assert supervision.next_deadline() == math.inf


def test_an_event_the_state_does_not_allow_is_a_bug() -> None:
    supervision = Supervision(1, 0.0)
    with pytest.raises(BadTransition, match="a down worker cannot exited"):
        supervision.exited(0, 0.0)
    with pytest.raises(ValueError, match="1 worker or more"):
        Supervision(0, 0.0)


def test_a_worker_is_killed_after_the_silence_limit_it_was_given() -> None:
    supervision = Supervision(1, 0.0, silence_limit=3.0)
    supervision.tick(0.0)
    supervision.heard(0, 1.0, ready=True)
    assert supervision.next_deadline() == 4.0
    assert supervision.tick(3.999) == []
    assert supervision.tick(4.5) == [Kill(0, 3.5)]


def test_the_default_silence_limit_outlasts_a_full_garbage_collection() -> None:
    # A full collection paused workers of 10,000-17,000 connections each 1.0-1.5 s, six
    # of them on 2 cores at once: 2 s killed healthy ones (benchmarks/scale.py).
    supervision = running(1)
    supervision.heard(0, 5.0)
    assert supervision.tick(5.0 + 9.9) == []
    assert supervision.tick(5.0 + 10.1) == [Kill(0, 10.1)]
    assert HEARTBEAT_TIMEOUT == 10.0


@pytest.mark.parametrize("limit", [0.25, 0.1, 0.0, -1.0])
def test_a_silence_limit_within_a_heartbeat_interval_is_refused(limit: float) -> None:
    with pytest.raises(ValueError, match=r"longer than the 0\.25 s between its heartbeats"):
        Supervision(1, 0.0, silence_limit=limit)
