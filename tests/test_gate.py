"""The output gate: pure, driven as the actor drives it, with exact releases and counts.

A ``Peer`` stands for a recipient's send queue: it holds bytes up to its limit.
"""

from __future__ import annotations

import attrs
from wsproto.events import CloseConnection

from roomkit._core.gate import Outbox, OutputGate, Pending
from roomkit.storage import Changes


@attrs.define(eq=False)
class Peer:
    limit: int = 100
    held: int = 0

    def hold(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def unhold(self, size: int) -> None:
        self.held -= size


WRITE = Changes({"k": "v"})
CLOSE = CloseConnection(1000, "bye")


def outbox(*items: tuple[bytes | CloseConnection, list[Peer]]) -> Outbox[Peer]:
    box: Outbox[Peer] = []
    for item, recipients in items:
        OutputGate.hold(box, item, recipients)
    return box


def outboxes(released: list[Pending[Peer]]) -> list[Outbox[Peer]]:
    return [pending.outbox for pending in released]


def test_an_outbox_with_nothing_to_wait_for_passes_at_once() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    box = outbox((b"hi", [ann]))
    assert gate.passes(None, box) is True
    assert ann.held == 0  # given back: the caller delivers it now
    assert gate.passes(Changes(), []) is True  # rolled back: nothing to commit
    assert gate.settled


def test_an_outbox_passes_neither_with_changes_nor_behind_one_in_flight() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    box = outbox((b"hi", [ann]))
    assert gate.passes(WRITE, box) is False
    assert ann.held == 2  # still held, for finish()
    gate.finish(WRITE, box, None)
    assert gate.passes(None, outbox((b"x", [ann]))) is False  # behind the write
    assert ann.held == 3


def test_an_outbox_in_line_with_nothing_to_wait_for_is_released_at_once() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    box = outbox((b"hi", [ann]))
    assert ann.held == 2
    assert gate.finish(None, box, None) is None
    assert not gate.settled
    assert outboxes(gate.release()) == [[(b"hi", [ann])]]
    assert (ann.held, gate.settled) == (0, True)
    assert gate.release() == []


def test_rolled_back_changes_are_nothing_to_commit() -> None:
    gate = OutputGate[Peer]()
    assert gate.finish(Changes(), [], None) is None
    assert gate.layers() == []
    assert len(gate.release()) == 1


def test_an_outbox_waits_for_its_commit_and_leaves_in_hook_order() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    first = gate.finish(WRITE, outbox((b"1", [ann])), None)
    assert first is not None and first.changes is WRITE
    assert gate.finish(None, outbox((b"2", [ann])), None) is None  # behind the first
    assert gate.release() == []
    assert ann.held == 2  # both still held
    assert gate.committed(first, True) is False
    assert outboxes(gate.release()) == [[(b"1", [ann])], [(b"2", [ann])]]
    assert (ann.held, gate.settled) == (0, True)


def test_a_later_commit_durable_first_still_waits_for_the_earlier() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    first = gate.finish(WRITE, outbox((b"1", [ann])), None)
    second = gate.finish(Changes({"j": "w"}), outbox((b"2", [ann])), None)
    assert first is not None and second is not None
    gate.committed(second, True)
    assert gate.release() == []
    assert gate.layers() == [WRITE, Changes({"j": "w"})]
    gate.committed(first, True)
    assert [p.changes for p in gate.release()] == [WRITE, Changes({"j": "w"})]
    assert gate.layers() == []


def test_layers_are_the_changes_in_flight_oldest_first() -> None:
    gate = OutputGate[Peer]()
    gate.finish(None, [], None)
    first = gate.finish(WRITE, [], None)
    assert gate.layers() == [WRITE]
    assert first is not None
    gate.committed(first, True)
    gate.release()
    assert gate.layers() == []


def test_a_frame_is_held_only_for_the_recipients_that_take_it() -> None:
    ann, bob = Peer(limit=10), Peer(limit=3)
    box = outbox((b"12345", [ann, bob]), (b"123", [bob]), (b"x" * 11, [ann]))
    assert box == [(b"12345", [ann]), (b"123", [bob])]  # the last one fit nobody
    assert (ann.held, bob.held) == (5, 3)


def test_a_close_is_held_for_every_recipient_and_counts_against_none() -> None:
    full = Peer(limit=0)
    box = outbox((CLOSE, [full]))
    assert box == [(CLOSE, [full])]
    assert full.held == 0
    gate = OutputGate[Peer]()
    gate.finish(None, box, None)
    assert outboxes(gate.release()) == [[(CLOSE, [full])]]


def test_dropping_an_outbox_gives_back_what_it_held() -> None:
    ann, bob = Peer(), Peer()
    box = outbox((b"abc", [ann, bob]), (b"de", [bob]), (CLOSE, [ann]))
    assert (ann.held, bob.held) == (3, 5)
    OutputGate.drop(box)
    assert (ann.held, bob.held) == (0, 0)


def test_settle_is_carried_with_its_outbox() -> None:
    gate = OutputGate[Peer]()
    told: list[bool] = []
    entry = gate.finish(WRITE, [], told.append)
    assert entry is not None and entry.settle is not None
    gate.committed(entry, True)
    [released] = gate.release()
    assert released.settle == told.append


def test_a_failed_commit_resets_once_and_drops_everything_in_flight() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    first = gate.finish(WRITE, outbox((b"1", [ann])), None)
    second = gate.finish(Changes({"j": "w"}), outbox((b"22", [ann])), None)
    gate.finish(None, outbox((b"333", [ann])), None)
    assert first is not None and second is not None
    assert ann.held == 6
    assert gate.committed(first, False) is True  # the room must reset
    dropped = gate.fail()
    assert outboxes(dropped) == [[(b"1", [ann])], [(b"22", [ann])], [(b"333", [ann])]]
    assert (ann.held, gate.settled) == (0, True)
    assert gate.committed(second, False) is False  # the same batch's failure: moot
    assert gate.release() == []


def test_a_late_failure_of_a_dropped_outbox_does_not_reset_the_next_instance() -> None:
    gate, ann = OutputGate[Peer](), Peer()
    first = gate.finish(WRITE, outbox((b"1", [ann])), None)
    second = gate.finish(Changes({"j": "w"}), outbox((b"22", [ann])), None)
    assert first is not None and second is not None
    assert gate.committed(first, False) is True
    gate.fail()
    after = gate.finish(Changes({"k": "w"}), outbox((b"4444", [ann])), None)  # the next instance
    assert gate.committed(second, False) is False  # its batch failed later: moot
    assert after is not None and gate.committed(after, True) is False
    assert outboxes(gate.release()) == [[(b"4444", [ann])]]


def test_release_stops_at_the_first_entry_not_durable() -> None:
    gate = OutputGate[Peer]()
    first = gate.finish(WRITE, [], None)
    gate.finish(Changes({"j": "w"}), [], None)  # its commit still in flight
    gate.finish(None, [], None)  # nothing to commit, but behind the second
    assert first is not None
    gate.committed(first, True)
    assert [p.changes for p in gate.release()] == [WRITE]
    assert len(gate.layers()) == 1
