"""The history checker: what a cluster's clients saw, against what its storage holds.

Pure (no trio, no I/O), in the manner of Jepsen's checkers. The runner
(tests/historyrun.py) records a history of events, one ``invoke`` and at most one
completion per operation, all timed by one monotonic clock (the runner's process); at
the end it reads each room's log straight from PostgreSQL. :func:`check` gives the
verdict.

**The room** (tests/historyapp.py) keeps an append-only log. A write appends one entry,
``(seq, op, activation, member)``, and is acknowledged with its ``seq`` and activation
only once committed (the output gate). A read answers with the activation and the op ids
of its log in order. An *activation* is one instance of the room, an id it makes in
``on_start``: a claim of the room (a takeover, a restart) or a reset after a failed
commit makes a new one.

**Outcomes.** ``ok``: the reply came. ``fail``: the operation certainly had no effect
(the client never sent it). ``info``: unknown (the connection closed first, or the client
gave up); an operation without a completion is ``info`` too. An ``info`` write may or
may not be stored, and either is correct.

**What is checked**, each room on its own (:class:`Kind` names each violation):

* *Durability*: every acknowledged write is stored once, at the ``seq`` and under the
  activation its reply named (``LOST``, ``MISACKED``); nothing else is stored: no entry
  whose operation was never invoked, failed, or was a read (``PHANTOM``), none twice
  (``DUPLICATE``), and the seqs run 1, 2, 3... (``GAP``).
* *No stale activation*: each activation's entries form one contiguous block of the
  log (``STALE_ACTIVATION``: A..B..A). A claim fences every earlier claim's writes, and a
  reset discards its instance, so an activation that wrote after another one began can
  only be a stale one whose write the fence let through.
* *Real-time order* of the log (``ORDER``): a write invoked after another was acknowledged
  is stored after it. Reads (``STALE_READ``): a read's log is a prefix of the stored one,
  and holds every write acknowledged before the read was invoked.
* *One activation at a time, as the clients see it* (``OVERLAP``), below.
* *Failover*: for each fault and each room it struck, the time from the fault to the
  room's first acknowledged write invoked after it (None: no write succeeded afterwards).

**One activation at a time.** Each operation that an activation served took effect at
one instant within its window ``[invoked, completed]`` (a write: at its commit, which
the acknowledgement follows; a read: when its hook ran). A room served by one activation
at a time means: the activations come in an order A1, A2, ..., and every operation A1
served took effect before every one A2 served, and so on. The order is the log's: the
blocks of entries (writers), and an activation that only read sits just after the block
whose entry was the last it saw (it loaded the log when it began, so it began after that
writer's last commit, and before the next writer's first: the next writer's claim fenced
it, and a read-only activation sees no later entry). The check: for operations ``x``
served by an earlier activation and ``y`` by a later one, ``y`` completed before ``x``
was invoked is a violation. It is sound: if ``x`` took effect before ``y``, then
``invoked(x) <= effect(x) < effect(y) <= completed(y)``. It is also complete for what
the clients can tell: when no such pair exists, effect times that keep the activations
apart exist (put each earlier activation's effects at their invocations, and each later
one's at the latest invocation before it), so any delay of delivery explains the
history. Read-only activations that follow the same writer have no order among
themselves and are not checked against each other; ``STALE_READ`` covers them. An
``info`` write that was stored took effect at or after its invocation, so its
invocation counts, not its completion.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs


class EventType(enum.Enum):
    """What happened to an operation: invoked, then at most one completion."""

    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Op(enum.Enum):
    WRITE = "write"
    READ = "read"


@attrs.frozen
class Ack:
    """A write's reply: where its entry went, and which activation stored it."""

    activation: str
    seq: int


@attrs.frozen
class Seen:
    """A read's reply: the activation that served it and the op ids of its log."""

    activation: str
    ops: tuple[str, ...]


@attrs.frozen
class Event:
    """One event of a history. ``op`` ids are unique in a history; ``time`` is the
    runner's monotonic clock; ``kind`` matters on ``invoke``, ``reply`` on ``ok``."""

    type: EventType
    op: str
    client: str
    room: str
    time: float
    kind: Op = Op.WRITE
    reply: Ack | Seen | None = None


@attrs.frozen
class Entry:
    """One entry of a room's stored log."""

    seq: int
    op: str
    activation: str
    member: str


@attrs.frozen
class Fault:
    """A fault the runner caused at ``at``, and the rooms it struck (their owner's)."""

    kind: str
    at: float
    rooms: frozenset[str]
    node: str | None = None


class Kind(enum.Enum):
    """The violations :func:`check` finds (see the module docstring)."""

    LOST = "lost"
    MISACKED = "misacked"
    PHANTOM = "phantom"
    DUPLICATE = "duplicate"
    GAP = "gap"
    STALE_ACTIVATION = "stale activation"
    ORDER = "order"
    STALE_READ = "stale read"
    OVERLAP = "overlap"


@attrs.frozen
class Violation:
    kind: Kind
    room: str
    ops: tuple[str, ...]
    detail: str


@attrs.frozen
class Failover:
    """How long ``room`` took to acknowledge a write after fault number ``fault``."""

    fault: int
    kind: str
    room: str
    seconds: float | None


@attrs.frozen
class Verdict:
    """The outcome of :func:`check`: counts of operations, violations, failovers."""

    writes: int
    acknowledged: int
    indeterminate: int
    failed: int
    reads: int
    violations: tuple[Violation, ...]
    failovers: tuple[Failover, ...]

    def of(self, kind: Kind) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.kind is kind)

    @property
    def lost(self) -> int:
        return len(self.of(Kind.LOST))


#: How a room's checks report a violation: its kind, the operations, what happened.
Flag = Callable[[Kind, Iterable[str], str], None]


class HistoryError(Exception):
    """Raised when a history is malformed: a completion without its invoke, two
    completions, an ``ok`` without the reply of its kind."""


@attrs.frozen
class Operation:
    """One operation folded from its events. One that never completed is ``info``, with
    ``completed`` infinite: its window never closed."""

    id: str
    client: str
    room: str
    kind: Op
    invoked: float
    outcome: EventType = EventType.INFO
    completed: float = math.inf
    reply: Ack | Seen | None = None


def operations(events: Iterable[Event]) -> dict[str, Operation]:
    """Fold a history's events into its operations, by op id."""
    ops: dict[str, Operation] = {}
    for event in events:
        if event.type is EventType.INVOKE:
            if event.op in ops:
                raise HistoryError(f"{event.op} invoked twice")
            ops[event.op] = Operation(event.op, event.client, event.room, event.kind, event.time)
            continue
        op = ops.get(event.op)
        if op is None or op.completed != math.inf:
            raise HistoryError(f"{event.op}: {event.type.value} without a pending invoke")
        expected = {Op.WRITE: Ack, Op.READ: Seen}[op.kind]
        if (event.type is EventType.OK) != isinstance(event.reply, expected):
            raise HistoryError(f"{event.op}: {event.type.value} with reply {event.reply!r}")
        ops[event.op] = attrs.evolve(
            op, outcome=event.type, completed=event.time, reply=event.reply
        )
    return ops


def check(
    events: Iterable[Event],
    stored: Mapping[str, Sequence[Entry]],
    faults: Sequence[Fault] = (),
) -> Verdict:
    """The verdict on a history, given each room's stored log in seq order."""
    ops = operations(events)
    by_room: dict[str, list[Operation]] = defaultdict(list)
    for op in ops.values():
        by_room[op.room].append(op)
    violations: list[Violation] = []
    for room in sorted(by_room.keys() | stored.keys()):
        violations += _check_room(room, by_room[room], list(stored.get(room, ())), ops)
    writes = [op for op in ops.values() if op.kind is Op.WRITE]
    return Verdict(
        writes=len(writes),
        acknowledged=sum(op.outcome is EventType.OK for op in writes),
        indeterminate=sum(op.outcome is EventType.INFO for op in writes),
        failed=sum(op.outcome is EventType.FAIL for op in writes),
        reads=sum(op.kind is Op.READ and op.outcome is EventType.OK for op in ops.values()),
        violations=tuple(violations),
        failovers=tuple(_failovers(faults, by_room)),
    )


def _check_room(
    room: str, ops: list[Operation], log: list[Entry], everyone: Mapping[str, Operation]
) -> list[Violation]:
    found: list[Violation] = []

    def flag(kind: Kind, ids: Iterable[str], detail: str) -> None:
        found.append(Violation(kind, room, tuple(ids), detail))

    at: dict[str, Entry] = {}
    for previous, entry in zip([0, *(e.seq for e in log)], log, strict=False):
        if entry.seq != previous + 1:
            flag(Kind.GAP, [entry.op], f"seq {entry.seq} follows seq {previous}")
        if entry.op in at:
            flag(Kind.DUPLICATE, [entry.op], f"stored at {at[entry.op].seq} and {entry.seq}")
            continue
        at[entry.op] = entry
        op = everyone.get(entry.op)
        if op is None or op.room != room or op.kind is not Op.WRITE:
            flag(Kind.PHANTOM, [entry.op], f"seq {entry.seq} was never written to {room}")
        elif op.outcome is EventType.FAIL:
            flag(Kind.PHANTOM, [entry.op], f"seq {entry.seq} is a write that failed")
    blocks = _blocks(log, flag)
    for op in ops:
        if op.outcome is not EventType.OK or not isinstance(op.reply, Ack):
            continue
        kept = at.get(op.id)
        if kept is None:
            flag(Kind.LOST, [op.id], f"acknowledged as seq {op.reply.seq} by {op.reply.activation}")
        elif (kept.seq, kept.activation) != (op.reply.seq, op.reply.activation):
            flag(Kind.MISACKED, [op.id], f"acknowledged {op.reply}, stored {kept}")
    _check_order(ops, at, log, flag)
    _check_overlap(ops, at, log, blocks, flag)
    return found


def _blocks(log: list[Entry], flag: Flag) -> dict[str, int]:
    """Each activation's block number in the log; flags one that comes back."""
    blocks: dict[str, int] = {}
    for previous, entry in zip([None, *log], log, strict=False):
        if previous is not None and entry.activation == previous.activation:
            continue
        if entry.activation not in blocks:
            blocks[entry.activation] = len(blocks)
        else:
            assert previous is not None
            detail = f"{entry.activation} wrote seq {entry.seq} after {previous.activation}"
            flag(Kind.STALE_ACTIVATION, [entry.op], detail)
    return blocks


def _check_order(
    ops: list[Operation], at: Mapping[str, Entry], log: list[Entry], flag: Flag
) -> None:
    """Writes stored in real-time order; reads see a prefix and all acknowledged before.

    By positions in the stored log, not seqs: where a ``GAP`` is, they differ."""
    position = {entry.op: index for index, entry in enumerate(log, 1)}
    acked = sorted(
        (op.completed, position[op.id], op.id)
        for op in ops
        if op.kind is Op.WRITE and op.outcome is EventType.OK and op.id in at
    )
    times = [time for time, _, _ in acked]
    highest: list[tuple[int, str]] = []  # highest[i]: the last position among acked[: i + 1]
    for _, place, op_id in acked:
        highest.append(max(highest[-1], (place, op_id)) if highest else (place, op_id))

    def before(time: float) -> tuple[int, str] | None:
        """The last position of a write acknowledged strictly before ``time``."""
        count = bisect.bisect_left(times, time)
        return highest[count - 1] if count else None

    stored_ops = [entry.op for entry in log]
    for op in ops:
        prior = before(op.invoked)
        if op.kind is Op.WRITE and op.id in at and prior and position[op.id] < prior[0]:
            flag(Kind.ORDER, [prior[1], op.id], f"{op.id} invoked after {prior[1]} was acked")
        if op.outcome is not EventType.OK or not isinstance(op.reply, Seen):
            continue
        seen = op.reply.ops
        if list(seen) != stored_ops[: len(seen)]:
            flag(Kind.STALE_READ, [op.id], "its log is not a prefix of the stored log")
        elif prior and len(seen) < prior[0]:
            flag(Kind.STALE_READ, [prior[1], op.id], f"{op.id} missed {prior[1]}, acked before")


def _check_overlap(
    ops: list[Operation],
    at: Mapping[str, Entry],
    log: list[Entry],
    blocks: Mapping[str, int],
    flag: Flag,
) -> None:
    """No operation of a later activation completed before one of an earlier was invoked."""
    ranked: dict[int, list[Operation]] = defaultdict(list)
    for op in ops:
        rank = _rank(op, at, log, blocks)
        if rank is not None:
            ranked[rank].append(op)
    latest: tuple[float, str] | None = None  # the last invocation of the earlier ranks
    for rank in sorted(ranked):
        group = ranked[rank]
        for op in group:
            if latest and op.outcome is EventType.OK and op.completed < latest[0]:
                flag(Kind.OVERLAP, [latest[1], op.id], _overlap(op, latest[1], rank))
        invoked = max((op.invoked, op.id) for op in group)
        latest = max(latest, invoked) if latest else invoked


def _overlap(op: Operation, earlier: str, rank: int) -> str:
    return f"{op.id} (activation rank {rank}) completed before {earlier} of an earlier one began"


def _rank(
    op: Operation, at: Mapping[str, Entry], log: list[Entry], blocks: Mapping[str, int]
) -> int | None:
    """The position of the activation that served ``op``: writers at even ranks, in log
    order; a read-only one just after the writer of the last entry it saw."""
    if op.outcome is EventType.OK and op.reply is not None:
        activation = op.reply.activation
    elif op.outcome is EventType.INFO and op.id in at:
        activation = at[op.id].activation
    else:
        return None
    if activation in blocks:
        return 2 * blocks[activation]
    if not isinstance(op.reply, Seen):
        return None  # a lost write's activation: LOST says it
    seen = op.reply.ops
    if list(seen) != [entry.op for entry in log[: len(seen)]]:
        return None  # STALE_READ says it
    return 2 * blocks[log[len(seen) - 1].activation] + 1 if seen else -1


def _failovers(faults: Sequence[Fault], by_room: Mapping[str, list[Operation]]) -> list[Failover]:
    result: list[Failover] = []
    for number, fault in enumerate(faults):
        for room in sorted(fault.rooms):
            after = [
                op.completed
                for op in by_room.get(room, ())
                if op.kind is Op.WRITE and op.outcome is EventType.OK and op.invoked >= fault.at
            ]
            seconds = min(after) - fault.at if after else None
            result.append(Failover(number, fault.kind, room, seconds))
    return result
