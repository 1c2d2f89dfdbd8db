"""The shard's Prometheus metrics (docs/metrics.md). Counters and histograms are updated by the
shell as things happen; gauges that mirror the core's state are read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DECISION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class ShardMetrics:
    def __init__(self, shard_id: str, state: Callable[[], dict]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("symphony_shard_requests_received", "Requests received (nv_inference_request_*)",
                                ["model"], registry=r)
        self.outcomes = Counter(
            "symphony_shard_requests", "Requests leaving the shard, by outcome: dispatched (in a batch), "
            "dropped (504), rejected (413/429), bad_request (400), unavailable (503), lost (slot lost, 503)",
            ["model", "outcome"], registry=r)
        self.items = Counter("symphony_shard_inference_count", "Items dispatched in batches (nv_inference_count)",
                             ["model"], registry=r)
        self.executions = Counter("symphony_shard_inference_exec_count",
                                  "Batches dispatched (nv_inference_exec_count); mean batch = count / exec_count",
                                  ["model"], registry=r)
        self.queue_seconds = Histogram("symphony_shard_queue_seconds", "Time a request waited in the shard",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram(
            "symphony_shard_request_seconds", "Receipt to completion report, per request of a completed batch",
            ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("symphony_shard_batch_size", "Batch sizes dispatched", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.decision_seconds = Histogram("symphony_shard_decision_seconds",
                                          "Time in the scheduling core per event", buckets=DECISION_BUCKETS,
                                          registry=r)
        self.late_wake_ups = Counter("symphony_shard_late_wake_ups", "Wake-ups later than the timer jitter",
                                     registry=r)
        self.slots_lost = Counter("symphony_shard_slots_lost", "Slots declared lost", registry=r)
        r.register(_StateCollector(shard_id, state))


class _StateCollector(Collector):
    """Gauges read from the shard at scrape time."""

    def __init__(self, shard_id: str, state: Callable[[], dict]) -> None:
        self.shard_id = shard_id
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state()
        pending = GaugeMetricFamily("symphony_shard_pending_requests", "Requests held by the core",
                                    labels=["model"])
        target = GaugeMetricFamily("symphony_shard_target_batch_size", "Current target batch size",
                                   labels=["model"])
        rate = GaugeMetricFamily("symphony_shard_rate_estimate_rps", "Rate estimate (RPS meter mean)",
                                 labels=["model"])
        for model, (held, tbs, rps) in state["models"].items():
            pending.add_metric([model], held)
            target.add_metric([model], tbs)
            rate.add_metric([model], rps)
        yield pending
        yield target
        yield rate
        yield GaugeMetricFamily("symphony_shard_slots_owned", "Slots this shard schedules",
                                value=state["slots_owned"])
        yield GaugeMetricFamily("symphony_shard_slots_busy", "Slots with a batch in flight",
                                value=state["slots_busy"])
