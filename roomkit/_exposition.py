"""``GET /metrics``: the server's counters in the Prometheus text format.

A custom prometheus-client collector reads roomkit's plain counters (``_metrics.py``)
and the live rooms when it is scraped, and only then builds metric families; nothing
of prometheus-client runs on the hot path. Each server has its own
``CollectorRegistry``, never the global one, so that several servers can run in one
process (as they do in tests).

A worker of ``--workers N`` serves every worker's metrics: it gathers their pages (the
text format, over their Unix sockets) and :func:`merged_exposition` reads them back with
prometheus-client's parser and writes them as one page, each sample with a ``worker``
label. The text format is the one contract the workers already share (a second
encoding of the counters would have to follow every new metric), and it carries the
process metrics too, so each worker's CPU time and memory show apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.samples import Sample

from ._core.frontdoor import Response
from ._metrics import Histogram, Metrics

__all__ = ["CONTENT_TYPE", "LiveRoom", "MetricsCollector", "merged_exposition", "metrics_page"]

#: The Prometheus text format that ``generate_latest`` writes for roomkit's metric names.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class LiveRoom(Protocol):
    """What the collector reads of a live room."""

    @property
    def room_class(self) -> type: ...

    @property
    def awake(self) -> bool: ...

    def connections(self) -> Sized: ...


class MetricsCollector:
    """Turns a server's :class:`Metrics` and its live rooms into metric families.

    Args:
      metrics: the server's counters.
      rooms: returns the server's live rooms, at scrape time.
    """

    def __init__(self, metrics: Metrics, rooms: Callable[[], Iterable[LiveRoom]]) -> None:
        self._metrics = metrics
        self._rooms = rooms

    def collect(self) -> Iterator[Metric]:
        yield from self._gauges()
        yield from self._room_counters()
        yield self._hooks()
        yield _by_label(
            "roomkit_handshakes_refused",
            "WebSocket handshakes (or unreadable request heads) refused, by reason.",
            "reason",
            self._metrics.refused,
        )
        yield _by_label(
            "roomkit_handoffs",
            "Connections between workers (--workers), by outcome: handed to their room's "
            "worker (sent), relayed to it (relayed, TLS), taken from another worker "
            "(adopted), or a message from one that was no hand-off (malformed).",
            "outcome",
            self._metrics.handoffs,
        )
        yield from self._forwards()
        commits = HistogramMetricFamily(
            "roomkit_storage_commit_duration_seconds",
            "Time each storage commit (a group of hooks' writes) took.",
        )
        _add_histogram(commits, [], self._metrics.commits)
        yield commits
        yield CounterMetricFamily(
            "roomkit_storage_commit_failures",
            "Storage commits that failed (their rooms were reset).",
            value=self._metrics.commit_failures,
        )

    def _forwards(self) -> Iterator[Metric]:
        yield _by_label(
            "roomkit_forwarded",
            "Requests forwarded to their room's owner node (a cluster), by outcome: a "
            "WebSocket handshake spliced after its 101, or refused by it (its answer "
            "passed on); a plain HTTP request passed on; not reached (503); or a head "
            "that could not be forwarded as read (malformed, 400).",
            "outcome",
            self._metrics.forwarded,
        )
        yield GaugeMetricFamily(
            "roomkit_forwarded_connections",
            "Connections being forwarded to their room's owner node now: connecting to "
            "it, or spliced.",
            value=self._metrics.forwarding,
        )

    def _gauges(self) -> Iterator[Metric]:
        open_ = dict.fromkeys(self._metrics.rooms, 0)
        awake = dict.fromkeys(self._metrics.rooms, 0)
        hibernated = dict.fromkeys(self._metrics.rooms, 0)
        for room in self._rooms():
            name = room.room_class.__name__
            open_[name] = open_.get(name, 0) + len(room.connections())
            counts = awake if room.awake else hibernated
            counts[name] = counts.get(name, 0) + 1
        connections = GaugeMetricFamily(
            "roomkit_connections", "Open WebSocket connections.", labels=["room_class"]
        )
        for name, count in open_.items():
            connections.add_metric([name], count)
        yield connections
        rooms = GaugeMetricFamily(
            "roomkit_rooms",
            "Live rooms: awake (an instance in memory) or hibernated (only its sockets).",
            labels=["room_class", "state"],
        )
        for state, counts in (("awake", awake), ("hibernated", hibernated)):
            for name, count in counts.items():
                rooms.add_metric([name, state], count)
        yield rooms

    def _room_counters(self) -> Iterator[Metric]:
        families = {
            field: CounterMetricFamily(name, help_, labels=["room_class"])
            for field, name, help_ in _ROOM_COUNTERS
        }
        cut = CounterMetricFamily(
            "roomkit_connections_cut",
            "Connections roomkit closed on its own (not asked by the room), by reason.",
            labels=["room_class", "reason"],
        )
        http = CounterMetricFamily(
            "roomkit_http_requests",
            "Plain HTTP requests to room paths (on_request, or 426), by the status answered.",
            labels=["room_class", "status"],
        )
        for name, counters in self._metrics.rooms.items():
            for field, family in families.items():
                family.add_metric([name], getattr(counters, field))
            for reason, count in counters.cut.items():
                cut.add_metric([name, reason], count)
            for status, count in sorted(counters.http_requests.items()):
                http.add_metric([name, str(status)], count)
        yield from families.values()
        yield cut
        yield http

    def _hooks(self) -> Metric:
        hooks = HistogramMetricFamily(
            "roomkit_hook_duration_seconds",
            "Time each hook call took, its awaits included.",
            labels=["room_class", "hook"],
        )
        for name, counters in self._metrics.rooms.items():
            for hook, histogram in counters.hooks.items():
                _add_histogram(hooks, [name, hook], histogram)
        return hooks


#: Per-class counters: attribute of RoomMetrics, metric name, help.
_ROOM_COUNTERS = (
    ("connections_opened", "roomkit_connections_opened", "WebSocket handshakes accepted."),
    ("messages_received", "roomkit_messages_received", "Complete messages read from peers."),
    ("messages_sent", "roomkit_messages_sent", "Text and binary frames queued for peers."),
    (
        "bytes_received",
        "roomkit_received_bytes",
        "Bytes read from WebSocket connections, framing included.",
    ),
    (
        "bytes_sent",
        "roomkit_sent_bytes",
        "Bytes written to WebSocket connections, framing included.",
    ),
    ("alarms_run", "roomkit_alarms_run", "on_alarm calls."),
    ("alarms_retried", "roomkit_alarms_retried", "Failed on_alarm calls scheduled to run again."),
    (
        "internal_errors",
        "roomkit_internal_errors",
        "Failures of roomkit's own code serving a connection, an event or a timer.",
    ),
)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], data: Histogram) -> None:
    buckets = [
        ("+Inf" if bound == math.inf else repr(bound), count) for bound, count in data.cumulative()
    ]
    family.add_metric(labels, buckets, data.sum)


def metrics_page(
    metrics: Metrics, rooms: Callable[[], Iterable[LiveRoom]]
) -> Callable[[], Response]:
    """The ``GET /metrics`` handler of one server: renders a fresh scrape each call.

    Besides roomkit's own metrics, the page has prometheus-client's process metrics
    (CPU time, memory, open file descriptors; Linux only).
    """
    registry = CollectorRegistry()
    registry.register(MetricsCollector(metrics, rooms))
    ProcessCollector(registry=registry)

    def page() -> Response:
        return Response(200, generate_latest(registry), content_type=CONTENT_TYPE)

    return page


def merged_exposition(pages: Mapping[str, bytes | None]) -> bytes:
    """One metrics page of the workers' ``pages`` (their ids to their own pages, None
    for a worker that did not answer): every sample with a ``worker`` label, the
    families of the same name together, and ``roomkit_worker_up`` saying which
    workers are in it (1) and which were left out (0: no answer, or no page)."""
    families: dict[str, Metric] = {}
    up = GaugeMetricFamily(
        "roomkit_worker_up",
        "Whether the worker's metrics are in this scrape (0: it did not answer in time).",
        labels=["worker"],
    )
    for worker, page in sorted(pages.items(), key=lambda item: int(item[0])):
        parsed = None if page is None else _parsed(page)
        up.add_metric([worker], 0 if parsed is None else 1)
        for family in parsed or ():
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            merged.samples += [_labelled(sample, worker) for sample in family.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *families.values()]))
    return generate_latest(registry)


def _parsed(page: bytes) -> list[Metric] | None:
    """The families of a worker's page; None if it is no page (it is left out)."""
    try:
        return list(text_string_to_metric_families(page.decode()))
    except ValueError:  # UnicodeDecodeError too
        return None


#: A label's values: its literals (a refusal reason, an outcome).
_Label = TypeVar("_Label", bound=str)


def _labelled(sample: Sample, worker: str) -> Sample:
    labels = {"worker": worker, **sample.labels}
    return Sample(
        sample.name,
        labels,
        sample.value,
        sample.timestamp,
        sample.exemplar,
        sample.native_histogram,
    )


def _by_label(name: str, text: str, label: str, counts: Mapping[_Label, int]) -> Metric:
    """A counter family with one label, one sample per entry of ``counts``."""
    family = CounterMetricFamily(name, text, labels=[label])
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


class _Families:
    """A collector of families already made."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
