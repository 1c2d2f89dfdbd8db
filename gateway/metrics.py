"""The gateway's Prometheus metrics (docs/metrics.md): calls by front door, model and status,
items (a batched OIP call is several), the time a call spends in the gateway, and the batch
messages its coalescing sends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds from the decoded call to its reply: light-load latency is a few milliseconds.
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.calls = Counter("symphony_gateway_calls", "Inference calls answered, by model and status",
                             ["model", "status"], registry=r)
        self.items = Counter("symphony_gateway_items", "Requests (batch items) forwarded, by model", ["model"],
                             registry=r)
        self.seconds = Histogram("symphony_gateway_call_seconds", "Time from a decoded call to its outputs",
                                 ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.errors = Counter("symphony_gateway_errors", "Inference calls answered with an error, by front door "
                              "and status: the gateway's own (bad input, unknown model) and the cluster's",
                              ["door", "status"], registry=r)

        self._children: dict[tuple[str, int], tuple] = {}  # labels() costs a few us: once per model and status

    def observe(self, model: str, status: int, items: int, elapsed_ns: int) -> None:
        children = self._children.get((model, status))
        if children is None:
            children = self._children[(model, status)] = (
                self.calls.labels(model, str(int(status))), self.items.labels(model), self.seconds.labels(model))
        calls, item_count, seconds = children
        calls.inc()
        item_count.inc(items)
        seconds.observe(elapsed_ns / 1e9)

    def watch(self, state: Callable[[], dict[str, int]]) -> None:
        """Scrape-time readings of the forwarder: `calls_in_flight`, `batches_open` (batch
        messages with a caller still waiting: what a leak would grow) and `batch_messages`."""
        self.registry.register(_StateCollector(state))


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], dict[str, int]]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        state = self.state()
        yield GaugeMetricFamily("symphony_gateway_calls_in_flight", "Inference calls being answered now",
                                value=state["calls_in_flight"])
        yield GaugeMetricFamily("symphony_gateway_batches_open",
                                "Batch messages with a caller still waiting for a reply",
                                value=state["batches_open"])
        yield CounterMetricFamily("symphony_gateway_batch_messages", "Batched-ingress messages sent (requests "
                                  "per message = items / this)", value=state["batch_messages"])
