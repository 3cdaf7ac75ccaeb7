"""Prometheus metrics: what a helper counts, read at scrape time through `prometheus_client`.

Nothing on the delivery path touches `prometheus_client`: the Rust hub keeps its counters
(deliveries, bytes and frames out, skipped, backpressured) and the protocol path bumps plain
ints in `Counters`; a scrape reads both (`samples`) and hands them to `prometheus_client`,
which does the exposition.

One process: `RoomcastCollector` turns the samples into metric families at scrape time.

Several worker processes (`roomcast serve --workers N`): a scrape reaches one worker (the
kernel picks it), yet must answer for all. Each worker mirrors its samples into
`prometheus_client`'s multiprocess values (files in `PROMETHEUS_MULTIPROC_DIR`, set by the
supervisor) once a second and at every scrape, and answers with `MultiProcessCollector`, which
sums every worker's files. Counters of a worker that died stay in the sum, so totals never go
backwards when one is restarted; gauges count live workers only (the supervisor marks dead
ones). Figures of the other workers are at most one mirror interval old.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..broker.protocol import BROKER_STATES
from ..protocol.counters import AUTH_OUTCOMES, RECEIVED_KINDS, Counters
from ..transport.ports import Node

__all__ = ["AUTH_OUTCOMES", "RECEIVED_KINDS", "Counters", "Exporter", "samples"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


LAG_INTERVAL = 0.25
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MIRROR_INTERVAL = 1.0


class Sample(NamedTuple):
    name: str  # counters without the `_total` suffix (prometheus_client adds it)
    kind: str  # "counter" or "gauge"
    doc: str
    labels: tuple[str, ...]
    values: list[tuple[tuple[str, ...], float]]


# Broker stats keys -> (metric name, kind, help); keys a broker does not report are left out.
# The join barrier's figures (helper stats, present when the broker confirms subscriptions).
_BARRIER_METRICS = {
    "subscribe_waits": (
        "roomcast_subscribe_waits",
        "Logins and joins that waited for the broker to confirm a subscription.",
    ),
    "subscribe_unconfirmed": (
        "roomcast_subscribe_unconfirmed",
        "Logins and joins that went ahead unconfirmed (subscribe_timeout or broker away).",
    ),
}
# History rooms' figures (helper stats, present when some room keeps history).
_HISTORY_METRICS = {
    "history_unnumbered": (
        "roomcast_history_unnumbered",
        "Messages to history rooms that came without an offset, delivered as plain ones.",
    ),
    "history_dropped": (
        "roomcast_history_dropped",
        "History room messages not written (redis unreachable): dropped.",
    ),
}
# The per-client limits' figures (helper stats; README "Limits").
_LIMIT_METRICS = {
    "room_limit_refused": (
        "roomcast_room_limit_refused",
        "Joins refused whole by max_rooms_per_client ('Room limit reached').",
    ),
    "rate_limited": (
        "roomcast_rate_limited",
        "Inbound messages dropped by the rate limit.",
    ),
    "presence_coalesced": (
        "roomcast_presence_coalesced",
        "Presence requests answered with one for the same room already waiting.",
    ),
}
_BROKER_METRICS = {
    "published": ("roomcast_broker_published", "counter", "Envelopes published to the broker."),
    "received": ("roomcast_broker_received", "counter", "Envelopes received from the broker."),
    "dropped": (
        "roomcast_broker_dropped",
        "counter",
        "Envelopes dropped (broker unreachable or its buffer full).",
    ),
    "reconnects": ("roomcast_broker_reconnects", "counter", "Broker connections re-established."),
    "watchdog_rebuilds": (
        "roomcast_broker_watchdog_rebuilds",
        "counter",
        "Broker connections rebuilt by the watchdog (silent subscriber).",
    ),
    "subscriptions": ("roomcast_broker_subscriptions", "gauge", "Channels subscribed now."),
    "queued": ("roomcast_broker_queued", "gauge", "Publishes queued, not yet written."),
}


def samples(helper: Node) -> list[Sample]:
    """Every figure of one helper, read now (O(1) in the number of connections)."""
    stats = helper.stats()
    counters = helper.counters
    ok, _ = helper.health()
    authenticated = stats["authenticated"]
    out = [
        Sample(
            "roomcast_connections",
            "gauge",
            "Open WebSocket connections by state (pending: not yet authenticated).",
            ("state",),
            [
                (("authenticated",), authenticated),
                (("pending",), stats["connections"] - authenticated),
            ],
        ),
        Sample(
            "roomcast_connects",
            "counter",
            "WebSocket connections accepted.",
            (),
            [((), counters.connects)],
        ),
        Sample(
            "roomcast_authentications",
            "counter",
            "Authentications by outcome.",
            ("outcome",),
            [((outcome,), n) for outcome, n in counters.auth.items()],
        ),
        Sample(
            "roomcast_closes",
            "counter",
            "Close frames the server sent, by close code.",
            ("code",),
            [((str(code),), n) for code, n in sorted(counters.closes.items())],
        ),
        Sample(
            "roomcast_messages_received",
            "counter",
            "Messages received from clients, by event kind.",
            ("kind",),
            [((kind,), n) for kind, n in counters.received.items()],
        ),
        Sample(
            "roomcast_deliveries",
            "counter",
            "Messages queued to a client (one per recipient).",
            (),
            [((), stats["delivered"])],
        ),
        Sample(
            "roomcast_deliveries_skipped",
            "counter",
            "Messages not queued to a client because it was backpressured.",
            (),
            [((), stats["skipped"])],
        ),
        Sample(
            "roomcast_sent_frames",
            "counter",
            "WebSocket frames written to clients (pings included).",
            (),
            [((), stats["frames_out"])],
        ),
        Sample(
            "roomcast_sent_bytes",
            "counter",
            "Bytes written to clients (WebSocket framing included).",
            (),
            [((), stats["bytes_out"])],
        ),
        Sample(
            "roomcast_backpressured_connections",
            "gauge",
            "Connections whose unsent data passed the backpressure limit.",
            (),
            [((), stats["backpressured"])],
        ),
        Sample(
            "roomcast_encrypted_connections",
            "gauge",
            "Connections with an encrypted session.",
            (),
            [((), helper.encrypted_connections)],
        ),
        Sample("roomcast_rooms", "gauge", "Rooms with members.", (), [((), stats["rooms"])]),
        Sample(
            "roomcast_users", "gauge", "Users with connected sessions.", (), [((), stats["users"])]
        ),
        Sample(
            "roomcast_room_memberships",
            "gauge",
            "Memberships over all rooms.",
            (),
            [((), stats["memberships"])],
        ),
        Sample(
            "roomcast_pending_bytes",
            "gauge",
            "Bytes queued for clients and not yet written.",
            (),
            [((), stats["pending_bytes"])],
        ),
        Sample(
            "roomcast_healthy",
            "gauge",
            "1 while accepting connections with the broker connected (what /health says).",
            (),
            [((), int(ok))],
        ),
        Sample(
            "roomcast_broker_connected",
            "gauge",
            "1 while the broker is connected.",
            (),
            [((), stats.get("broker_connected", 1))],
        ),
    ]
    state = helper.broker_state
    out.append(
        Sample(
            "roomcast_broker_state",
            "gauge",
            "1 for the broker's current state, 0 for the others.",
            ("state",),
            [((s,), int(s == state)) for s in BROKER_STATES],
        )
    )
    for key, (name, kind, doc) in _BROKER_METRICS.items():
        value = stats.get(f"broker_{key}")
        if value is not None:
            out.append(Sample(name, kind, doc, (), [((), value)]))
    counted = (*_BARRIER_METRICS.items(), *_HISTORY_METRICS.items(), *_LIMIT_METRICS.items())
    for key, (name, doc) in counted:
        value = stats.get(key)
        if value is not None:
            out.append(Sample(name, "counter", doc, (), [((), value)]))
    return out


def lag_histogram(registry: CollectorRegistry | None = None) -> Histogram:
    return Histogram(
        "roomcast_event_loop_lag_seconds",
        f"How late a timer due every {LAG_INTERVAL:g} s ran on the event loop.",
        buckets=LAG_BUCKETS,
        registry=registry,
    )


class LagMonitor:
    """A timer due every LAG_INTERVAL that observes how late it runs: the event loop's lag.
    It stops by itself once `alive()` is false."""

    def __init__(self, histogram: Histogram, alive: Callable[[], bool]) -> None:
        self.histogram = histogram
        self._alive = alive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + LAG_INTERVAL
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        if not self._alive():
            self._handle = None
            return
        now = self._loop.time()
        self.histogram.observe(max(0.0, now - self._due))
        self._due = now + LAG_INTERVAL
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class RoomcastCollector(Collector):
    """A helper's samples as metric families, read at each scrape."""

    def __init__(self, helper: Node) -> None:
        self._helper = helper

    def collect(self) -> Iterator[Metric]:
        for sample in samples(self._helper):
            family: Metric
            if sample.kind == "counter":
                family = CounterMetricFamily(sample.name, sample.doc, labels=sample.labels)
            else:
                family = GaugeMetricFamily(sample.name, sample.doc, labels=sample.labels)
            for labels, value in sample.values:
                family.add_metric(list(labels), value)
            yield family


class Exporter:
    """Renders /metrics for one helper: its own figures, or with `PROMETHEUS_MULTIPROC_DIR`
    set (worker processes), the sum over every worker. `start()`/`stop()` in the loop."""

    def __init__(self, helper: Node) -> None:
        self._helper = helper
        self._registry = CollectorRegistry()
        self._directory = os.environ.get(MULTIPROC_ENV)
        self._mirror: _Mirror | None = None
        self._mirror_handle: asyncio.TimerHandle | None = None
        if self._directory:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self._registry, self._directory)  # type: ignore[no-untyped-call]
            self._mirror = _Mirror(helper)
            # Multiprocess values: observations go to this worker's files.
            self._lag = LagMonitor(lag_histogram(), self._alive)
        else:
            self._registry.register(RoomcastCollector(helper))
            self._lag = LagMonitor(lag_histogram(self._registry), self._alive)

    def _alive(self) -> bool:
        return not self._helper.shut_down

    @property
    def multiprocess(self) -> bool:
        return self._mirror is not None

    def start(self) -> None:
        self._lag.start()
        if self._mirror is not None:
            self._mirror.sync()
            loop = asyncio.get_running_loop()
            self._mirror_handle = loop.call_later(MIRROR_INTERVAL, self._tick)

    def stop(self) -> None:
        self._lag.stop()
        if self._mirror_handle is not None:
            self._mirror_handle.cancel()
            self._mirror_handle = None

    def _tick(self) -> None:
        assert self._mirror is not None
        if not self._alive():
            self._mirror_handle = None
            return
        self._mirror.sync()
        loop = asyncio.get_running_loop()
        self._mirror_handle = loop.call_later(MIRROR_INTERVAL, self._tick)

    def render(self) -> bytes:
        """The Prometheus text exposition, current for this process."""
        if self._mirror is not None:
            self._mirror.sync()
        return generate_latest(self._registry)


class _Mirror:
    """Copies a helper's samples into prometheus_client's multiprocess values (this
    process's files): counters by their increase since the last copy, gauges as they are."""

    def __init__(self, helper: Node) -> None:
        self._helper = helper
        self._metrics: dict[str, Counter | Gauge] = {}
        self._seen: dict[tuple[str, tuple[str, ...]], float] = {}
        # One series per live worker (label `pid`): shows how connections are spread.
        self._worker = Gauge(
            "roomcast_worker_connections",
            "Open connections of each live worker process.",
            registry=None,
            multiprocess_mode="liveall",
        )

    def _metric(self, sample: Sample) -> Counter | Gauge:
        metric = self._metrics.get(sample.name)
        if metric is None:
            if sample.kind == "counter":
                metric = Counter(sample.name, sample.doc, sample.labels, registry=None)
            else:
                metric = Gauge(
                    sample.name,
                    sample.doc,
                    sample.labels,
                    registry=None,
                    multiprocess_mode="livesum",
                )
            self._metrics[sample.name] = metric
        return metric

    def sync(self) -> None:
        seen = self._seen
        total = 0.0
        for sample in samples(self._helper):
            metric = self._metric(sample)
            for labels, value in sample.values:
                child = metric.labels(*labels) if labels else metric
                if isinstance(metric, Counter):
                    key = (sample.name, labels)
                    increase = value - seen.get(key, 0.0)
                    if increase > 0:
                        child.inc(increase)
                        seen[key] = value
                else:
                    child.set(value)  # type: ignore[union-attr]
            if sample.name == "roomcast_connections":
                total = sum(value for _, value in sample.values)
        self._worker.set(total)
