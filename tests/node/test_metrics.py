"""The loop's own counter and histogram (``LoopCounter``, ``LoopHistogram``)
print exactly what prometheus_client's would for the same values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from timpy.node.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram, NodeMetrics


@given(
    values=st.lists(
        st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 20, allow_nan=False), st.just(0.0)), max_size=60,
    ),
)
def test_loop_metrics_print_what_prometheus_client_prints(values):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter, histogram = LoopCounter("t_sends", "sends", ours), LoopHistogram("t_wait_seconds", "wait", LATENCY_BUCKETS, ours)
    reference = Counter("t_sends", "sends", registry=theirs)
    reference_h = Histogram("t_wait_seconds", "wait", buckets=LATENCY_BUCKETS, registry=theirs)
    for v in values:
        counter.inc()
        histogram.observe(v)
        reference.inc()
        reference_h.observe(v)

    def samples(registry: CollectorRegistry) -> dict[str, float]:
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in generate_latest(registry).decode().splitlines()
            if line and line[0] != "#" and "_created" not in line
        }

    assert samples(ours) == samples(theirs)
    assert counter.value == histogram.count == len(values)


def test_a_node_registry_refuses_a_second_metric_of_one_name():
    metrics = NodeMetrics()
    with pytest.raises(ValueError, match="timpy_messages_in"):
        LoopCounter("timpy_messages_in", "again", metrics.registry)
