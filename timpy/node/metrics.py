"""The node's metrics, in the Prometheus text format (``/metrics`` on the admin listener).

Each node has its own registry (several nodes may share a process in tests
and embedding programs). Counters and histograms are updated where things
happen; gauges of live state (connections, members by state, queue depths)
are read when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter("timpy_logins", "Successful logins (password or token)", ["method"], registry=r)
        self.login_failures = Counter("timpy_login_failures", "Refused logins", registry=r)
        self.messages_in = Counter("timpy_messages_in", "Messages accepted from clients (sends acknowledged)", registry=r)
        self.messages_out = Counter("timpy_messages_out", "Messages pushed to live terminals on this node", registry=r)
        self.delivery_latency = Histogram(
            "timpy_send_latency_seconds",
            "From a send's arrival to its acknowledgement: stored, replicated, in every member's inbox",
            buckets=LATENCY_BUCKETS, registry=r,
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
