"""The node's metrics, in the Prometheus text format (``/metrics`` on the admin listener).

Each node has its own registry (several nodes may share a process in tests
and embedding programs). Counters and histograms are updated where things
happen; gauges of live state (connections, members by state, queue depths)
are read when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter("timpy_logins", "Successful logins (password or token)", ["method"], registry=r)
        self.login_failures = Counter("timpy_login_failures", "Refused logins", registry=r)
        # Counted once per message, on the loop: without prometheus_client's lock (``LoopCounter``).
        self.messages_in = LoopCounter("timpy_messages_in", "Messages accepted from clients (sends acknowledged)", r)
        self.delivery_latency = LoopHistogram(
            "timpy_send_latency_seconds",
            "From a send's arrival to its acknowledgement: stored, replicated, in every member's inbox",
            LATENCY_BUCKETS, r,
        )
        self.storage_latency = Histogram(
            "timpy_storage_seconds", "Storage calls (worker thread, transaction)", ["operation"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.errors = Counter("timpy_errors", "Errors sent to clients, by code", ["code"], registry=r)

    def watch(self, collect: Callable[[], Iterator[Any]]) -> None:
        """Add live values read at scrape time."""
        self.registry.register(_Live(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopCounter(Collector):
    """A counter only the node's trio loop adds to, once per message: a plain
    integer, read when Prometheus scrapes. prometheus_client's ``Counter``
    takes a lock on every ``inc`` (it may be shared by threads): about 1.7 µs
    against 0.1 µs, on a path that runs once per message."""

    def __init__(self, name: str, doc: str, registry: CollectorRegistry) -> None:
        self.name, self.doc = name, doc
        self.value = 0
        registry.register(self)

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(self.name, self.doc, value=self.value)

    def describe(self) -> list[Any]:
        return [CounterMetricFamily(self.name, self.doc)]


class LoopHistogram(Collector):
    """A histogram only the node's trio loop observes into (as ``LoopCounter``):
    a count per bucket (a value falls in the first bucket whose bound is not
    below it, Prometheus's ``le``), their sum, read when Prometheus scrapes."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name, self.doc = name, doc
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def collect(self) -> Iterator[Any]:
        cumulative, running = [], 0
        for bound, n in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else floatToGoString(bound), running))
        yield HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)

    def describe(self) -> list[Any]:
        return [HistogramMetricFamily(self.name, self.doc)]


class _Live(Collector):
    def __init__(self, collect: Callable[[], Iterator[Any]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Any]:
        yield from self._collect()

    def describe(self) -> list[Any]:
        return []


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauges(name: str, doc: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def counters(name: str, doc: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
