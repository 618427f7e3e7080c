"""The server's counters: plain numbers that the hot path bumps, read at scrape time.

roomkit counts what happens (a message in, a frame out, a hook run) by adding to plain
Python ``int``/``float`` attributes of the objects here: no lock, no call, no label
lookup. prometheus-client's own ``Counter.inc`` takes a ``threading.Lock`` on every call,
which fan-out (hundreds of thousands of deliveries a second, all in one thread) would
pay for nothing. Its collector (``_exposition.py``) turns these numbers into metric
families only when ``GET /metrics`` is scraped. Everything here is synchronous and
owned by one Trio thread.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Final, Literal, get_args

__all__ = [
    "CUT_REASONS",
    "DURATION_BUCKETS",
    "FORWARD_OUTCOMES",
    "HANDOFF_OUTCOMES",
    "REFUSAL_REASONS",
    "CutReason",
    "ForwardOutcome",
    "HandoffOutcome",
    "Histogram",
    "Metrics",
    "RefusalReason",
    "RoomMetrics",
]

#: Upper bounds, in seconds, of the duration histograms' buckets: hooks and commits
#: usually take well under a millisecond, a slow one seconds.
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

CutReason = Literal[
    "rate_limit",
    "slow_consumer",
    "message_too_big",
    "protocol_error",
    "ping_timeout",
    "idle",
    "storage_failure",
    "fenced",
    "internal_error",
]
"""Why roomkit closed a connection that the room had not asked to close."""
CUT_REASONS: Final[tuple[CutReason, ...]] = get_args(CutReason)

RefusalReason = Literal[
    "timeout",
    "tls",
    "too_large",
    "bad_request",
    "not_found",
    "bad_room_name",
    "origin",
    "bad_handshake",
    "server_full",
    "room_full",
    "shutting_down",
    "owner_unavailable",
    "misplaced",
    "lease_expired",
    "forged",
    "fenced",
    "rejected",
    "error",
    "internal_error",
]
"""Why a WebSocket handshake (or a request head that could not be read) was refused."""
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = get_args(RefusalReason)

HandoffOutcome = Literal["sent", "relayed", "adopted", "malformed"]
"""What became of a connection between workers (``--workers``): handed to its room's
owner with its socket, or relayed to it (TLS); taken here from another worker; or a
message from another worker that was no hand-off."""
HANDOFF_OUTCOMES: Final[tuple[HandoffOutcome, ...]] = get_args(HandoffOutcome)

ForwardOutcome = Literal["spliced", "refused", "unreachable", "malformed", "passed"]
"""What became of a request forwarded to its room's owner node (a cluster): a handshake
spliced after the owner's ``101``, or refused by the owner, whose answer was passed on;
the owner not reached (503); a request head that could not be forwarded as read (400);
or a plain HTTP request passed on to the owner, which answers it."""
FORWARD_OUTCOMES: Final[tuple[ForwardOutcome, ...]] = get_args(ForwardOutcome)


class Histogram:
    """Counts of observed values per bucket of ``bounds``, and their sum.

    ``counts[i]`` counts the values ``v`` with ``bounds[i-1] < v <= bounds[i]``; the
    last one counts those above every bound.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds: Final = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values at or below it)`` per bucket, ending with infinity."""
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets


class RoomMetrics:
    """What the rooms of one Room class did, since the server started.

    Attributes:
      connections_opened: handshakes accepted.
      messages_received: complete messages read from peers (auto-answered, badly typed
        and rate-limited ones included).
      messages_sent: text and binary frames queued for peers (control frames are not).
      bytes_received: bytes read from sockets after the handshake, framing included.
      bytes_sent: bytes written to sockets after the handshake, framing included.
      alarms_run: ``on_alarm`` calls.
      alarms_retried: failed ``on_alarm`` calls scheduled to run again.
      cut: connections closed by roomkit, by reason.
      internal_errors: failures of roomkit's own code while serving one of these rooms'
        connections, handling one of their events or running one of their timers (a
        bug: each is logged with its traceback); each ended only what it was serving.
      hooks: the durations of hook calls, in seconds, by hook name.
      http_requests: plain HTTP requests to these rooms' paths that were no server page
        (``on_request``, or 426 where a class has none), by the status answered here
        (a request handed to another worker or node is counted where it is answered).
    """

    __slots__ = (
        "alarms_retried",
        "alarms_run",
        "bytes_received",
        "bytes_sent",
        "connections_opened",
        "cut",
        "hooks",
        "http_requests",
        "internal_errors",
        "messages_received",
        "messages_sent",
    )

    def __init__(self) -> None:
        self.connections_opened = 0
        self.messages_received = self.messages_sent = 0
        self.bytes_received = self.bytes_sent = 0
        self.alarms_run = self.alarms_retried = 0
        self.internal_errors = 0
        self.cut: Final = dict.fromkeys(CUT_REASONS, 0)
        self.hooks: Final[dict[str, Histogram]] = {}
        self.http_requests: Final[dict[int, int]] = {}

    def hook_ran(self, hook: str, seconds: float) -> None:
        """Record that the hook named ``hook`` took ``seconds``."""
        histogram = self.hooks.get(hook)
        if histogram is None:
            histogram = self.hooks[hook] = Histogram()
        histogram.observe(seconds)

    def answered(self, status: int) -> None:
        """Count a plain HTTP request to one of these rooms, answered with ``status``."""
        self.http_requests[status] = self.http_requests.get(status, 0) + 1


class Metrics:
    """One server's counters: per Room class, and server-wide.

    Attributes:
      rooms: the counters of each Room class, by class name.
      refused: refused handshakes, by reason.
      commits: the durations of storage commits (group commits: one per batch), in seconds.
      commit_failures: storage commits that raised.
      handoffs: connections between workers, by outcome (``--workers``).
      forwarded: handshakes forwarded to their room's owner node, by outcome (a
        cluster), counted as soon as the outcome is known.
      forwarding: connections being forwarded now: connecting to their owner, or
        spliced to it (``Forwards`` keeps this count, and drains on it).
    """

    def __init__(self) -> None:
        self.rooms: Final[dict[str, RoomMetrics]] = {}
        self.refused: Final = dict.fromkeys(REFUSAL_REASONS, 0)
        self.commits: Final = Histogram()
        self.commit_failures = 0
        self.handoffs: Final = dict.fromkeys(HANDOFF_OUTCOMES, 0)
        self.forwarded: Final = dict.fromkeys(FORWARD_OUTCOMES, 0)
        self.forwarding = 0

    def room(self, room_class: type) -> RoomMetrics:
        """The counters of ``room_class``, labelled by its name (made on first use).

        Two classes of the same name (from different modules) share their counters.
        """
        counters = self.rooms.get(room_class.__name__)
        if counters is None:
            counters = self.rooms[room_class.__name__] = RoomMetrics()
        return counters

    def refuse(self, reason: RefusalReason) -> None:
        self.refused[reason] += 1
