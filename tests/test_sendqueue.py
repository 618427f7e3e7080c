"""The send queue (pure): exact bytes owed, exact verdicts, no socket."""

from __future__ import annotations

from wsproto.events import CloseConnection

from roomkit._core.sendqueue import SLOW_CONSUMER, SendQueue


def test_frames_are_queued_in_order_and_counted() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"abc") and queue.push(b"de")
    assert (queue.frames, queue.queued, queue.owed, queue.close) == ([b"abc", b"de"], 5, 5, None)


def test_a_frame_that_fits_exactly_is_queued() -> None:
    queue = SendQueue(limit=5)
    assert queue.push(b"abc") and queue.push(b"de")
    assert queue.owed == 5 and queue.close is None


def test_a_frame_past_the_limit_is_the_slow_consumer_verdict() -> None:
    queue = SendQueue(limit=5)
    assert queue.push(b"abc")
    assert not queue.push(b"def")
    assert (queue.frames, queue.queued, queue.close) == ([], 0, SLOW_CONSUMER)
    assert (SLOW_CONSUMER.code, SLOW_CONSUMER.reason) == (1008, "slow consumer")


def test_bytes_held_at_the_gate_count_against_the_limit() -> None:
    queue = SendQueue(limit=10)
    assert queue.hold(6)
    assert queue.owed == 6
    assert not queue.push(b"12345")  # 6 held + 5 > 10
    assert queue.close is SLOW_CONSUMER
    assert queue.held == 6  # the gate gives its bytes back itself


def test_a_hold_past_the_limit_is_refused_with_the_verdict() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"12345")
    assert queue.hold(5)
    assert not queue.hold(1)
    assert (queue.frames, queue.queued, queue.held, queue.close) == ([], 0, 5, SLOW_CONSUMER)


def test_unhold_gives_back_room() -> None:
    queue = SendQueue(limit=10)
    assert queue.hold(10)
    queue.unhold(10)
    assert queue.push(b"0123456789") and queue.owed == 10


def test_bytes_being_written_count_until_written() -> None:
    queue = SendQueue(limit=10)
    assert queue.push(b"abc") and queue.push(b"defg")
    assert queue.take() == b"abcdefg"
    assert (queue.frames, queue.queued, queue.writing, queue.owed) == ([], 0, 7, 7)
    assert not queue.push(b"1234")  # 7 being written + 4 > 10
    assert queue.writing == 7
    queue.written()
    assert queue.owed == 0


def test_take_gives_a_single_frame_as_it_is() -> None:
    queue = SendQueue(limit=10)
    frame = b"abc"
    queue.push(frame)
    assert queue.take() is frame


def test_a_partial_write_leaves_the_rest_at_the_head() -> None:
    queue = SendQueue(limit=100)
    queue.push(b"abc")
    queue.push(b"defg")
    data = b"abcdefg"
    queue.sent(data, 5)
    assert (queue.frames, queue.queued) == ([b"fg"], 2)
    queue.sent(b"fg", 2)
    assert (queue.frames, queue.queued) == ([], 0)


def test_a_waiting_pong_is_replaced_where_it_stands() -> None:
    queue = SendQueue(limit=100)
    queue.push(b"data")
    assert queue.push_pong(b"pong-1")
    queue.push(b"more")
    assert queue.push_pong(b"pong-22")
    assert queue.frames == [b"data", b"pong-22", b"more"]
    assert queue.queued == 4 + 7 + 4


def test_a_pong_taken_by_the_writer_is_not_replaced() -> None:
    queue = SendQueue(limit=100)
    assert queue.push_pong(b"pong-1")
    queue.take()
    queue.written()
    queue.push(b"data")
    assert queue.push_pong(b"pong-2")
    assert queue.frames == [b"data", b"pong-2"]


def test_a_pong_partly_written_is_not_replaced() -> None:
    queue = SendQueue(limit=100)
    assert queue.push_pong(b"pong-1")
    queue.sent(b"pong-1", 2)  # its tail heads the queue: not the same object
    assert queue.push_pong(b"pong-2")
    assert queue.frames == [b"ng-1", b"pong-2"]


def test_a_new_pong_counts_against_the_limit() -> None:
    queue = SendQueue(limit=5)
    assert queue.push(b"abcd")
    assert not queue.push_pong(b"pong")
    assert queue.close is SLOW_CONSUMER


def test_a_replaced_pong_counts_only_its_own_size() -> None:
    queue = SendQueue(limit=8)
    assert queue.push_pong(b"pong")
    assert queue.push_pong(b"pong-new")  # replaces: 8 bytes, not 12
    assert (queue.frames, queue.queued, queue.close) == ([b"pong-new"], 8, None)


def test_the_verdict_forgets_the_pong() -> None:
    queue = SendQueue(limit=10)
    assert queue.push_pong(b"pong")
    assert not queue.push(b"1234567")
    assert queue.push_pong(b"pong-2")  # queued anew, not put where the old one was
    assert queue.frames == [b"pong-2"]


def test_the_close_owed_is_the_last_asked_for() -> None:
    queue = SendQueue(limit=10)
    queue.owe_close(CloseConnection(1000, "bye"))
    queue.owe_close(CloseConnection(1001, "going"))
    assert queue.close == CloseConnection(1001, "going")


def test_bytes_being_written_count_against_a_hold() -> None:
    queue = SendQueue(10)
    assert queue.push(b"abcdef")
    assert queue.take() == b"abcdef"  # 6 being written, none queued
    assert not queue.hold(5)  # 6 + 5 > 10: cut off, though nothing is queued
    assert queue.close is not None
