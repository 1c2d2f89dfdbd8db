"""The shard's Prometheus metrics (docs/metrics.md).

The hot path only bumps plain integers and bucket counts (prometheus-client's own counters take
a lock per increment, which cost about a tenth of the shard's CPU at high rates); a collector
turns them into Prometheus families when scraped."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from runtime.stats import ModelCounters
from schemas.plan import PlanRequest
from shard.core.policy import ModelStats

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DECISION_BUCKETS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2)


class FastHistogram:
    """Bucket counts and a sum, without locks (one event loop writes them)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, int]]:
        cumulative, out = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


OUTCOMES = ("dispatched", "dropped", "rejected", "bad_request", "unavailable", "lost", "handed_back", "expired",
            "duplicate", "unknown")

PLAN_REFUSALS = ("slot_cannot_run_model", "too_large")
BATCH_OUTCOMES = ("opened", "refused")  # batch messages (batched ingress): split into requests, or refused whole
ASSIGNMENT_STEPS = ("remove_slot", "remove_model", "add_model", "claim_slot", "claim_refused", "slot_refused",
                    "claim_deferred", "refresh_model")


class ShardMetrics:
    def __init__(self, models: list[str], state: Callable[[], dict]) -> None:
        """`state()` gives the live gauges: "models" (model -> `ModelStats` from the policy),
        "slots_owned" and "slots_busy"."""
        self.received = dict.fromkeys(models, 0)
        self.succeeded = dict.fromkeys(models, 0)  # answered 200 by agents, from completion reports
        self.failed = dict.fromkeys(models, 0)  # answered with an error by agents (bad input, expired)
        self.outcomes = {(m, o): 0 for m in models for o in OUTCOMES}
        self.batches = {(m, o): 0 for m in models for o in BATCH_OUTCOMES}
        self.items = dict.fromkeys(models, 0)
        self.executions = dict.fromkeys(models, 0)
        self.queue_seconds = {m: FastHistogram(LATENCY_BUCKETS) for m in models}
        self.request_seconds = {m: FastHistogram(LATENCY_BUCKETS) for m in models}
        self.batch_size = {m: FastHistogram(BATCH_BUCKETS) for m in models}
        self.decision_seconds = FastHistogram(DECISION_BUCKETS)
        self.late_wake_ups = 0
        self.slots_lost = 0
        # Plans the shell would not send, by reason: "slot_cannot_run_model" (a grant the core
        # must never make: issue 11 §2) and "too_large" (over the server's max_payload).
        self.plans_refused = dict.fromkeys(PLAN_REFUSALS, 0)
        self.assignment_steps = dict.fromkeys(ASSIGNMENT_STEPS, 0)  # ownership changes applied
        # Triton's statistics of the requests this shard answers itself: `fail` (runtime/stats.py).
        self.stats = {m: ModelCounters() for m in models}
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self, state))

    def add_model(self, model: str) -> None:
        """Series for a model this shard gained (with a coordinator, models come and go)."""
        for table in (self.received, self.succeeded, self.failed, self.items, self.executions):
            table.setdefault(model, 0)
        self.stats.setdefault(model, ModelCounters())
        for outcome in OUTCOMES:
            self.outcomes.setdefault((model, outcome), 0)
        for outcome in BATCH_OUTCOMES:
            self.batches.setdefault((model, outcome), 0)
        for hists, bounds in ((self.queue_seconds, LATENCY_BUCKETS), (self.request_seconds, LATENCY_BUCKETS),
                              (self.batch_size, BATCH_BUCKETS)):
            hists.setdefault(model, FastHistogram(bounds))

    def count(self, model: str, outcome: str, n: int = 1) -> None:
        key = (model, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def count_failed(self, model: str, outcome: str, n: int, ns: int, wall_ns: int) -> None:
        """`n` requests this shard answers with an error (`outcome`), after `ns` in it, summed:
        counted before the replies go out, so a client that has its reply finds it counted."""
        self.count(model, outcome, n)
        counters = self.stats.get(model)
        if counters is None:  # a model this shard never subscribed: not counted (bounded)
            return
        counters.failed(n, ns, wall_ns)

    def count_dispatch(self, model: str, requests: list[PlanRequest]) -> None:
        """A batch plan sent: its requests leave the shard's queue for a slot."""
        self.count(model, "dispatched", len(requests))
        self.items[model] += len(requests)
        self.executions[model] += 1
        self.batch_size[model].observe(len(requests))
        queue = self.queue_seconds[model]
        for request in requests:
            queue.observe(request.queue_us / 1e6)


class _Collector(Collector):
    def __init__(self, metrics: ShardMetrics, state: Callable[[], dict]) -> None:
        self.m = metrics
        self.state = state

    def collect(self) -> Iterator:
        m = self.m
        yield _counter("symphony_shard_requests_received", "Requests received",
                       {(k,): v for k, v in m.received.items()}, ["model"])
        yield _counter("symphony_shard_requests", "Requests leaving the shard, by outcome: dispatched (in a batch), "
                       "dropped (504), rejected (413/429), bad_request (400), unavailable (503), lost (slot lost), "
                       "handed_back (moved), expired (past its deadline on arrival, 504), duplicate (a repeated "
                       "id within its deadline, not answered again), unknown (in a plan sent before a lost "
                       "connection: not answered by the shard)",
                       dict(m.outcomes), ["model", "outcome"])
        yield _counter("symphony_shard_batch_messages", "Batch messages (batched ingress) received, by outcome: "
                       "opened (split into its requests, each counted as received), refused (not a batch: one 400)",
                       dict(m.batches), ["model", "outcome"])
        yield _counter("symphony_shard_requests_succeeded",
                       "Requests agents answered 200 (nv_inference_request_success)",
                       {(k,): v for k, v in m.succeeded.items()}, ["model"])
        yield _counter("symphony_shard_requests_failed", "Requests agents answered with an error (bad input, expired)",
                       {(k,): v for k, v in m.failed.items()}, ["model"])
        yield _counter("symphony_shard_inference_count", "Items dispatched in batches (nv_inference_count)",
                       {(k,): v for k, v in m.items.items()}, ["model"])
        yield _counter("symphony_shard_inference_exec_count", "Batches dispatched (nv_inference_exec_count)",
                       {(k,): v for k, v in m.executions.items()}, ["model"])
        yield _histogram("symphony_shard_queue_seconds", "Time a request waited in the shard", m.queue_seconds)
        yield _histogram("symphony_shard_request_seconds", "Receipt to completion report", m.request_seconds)
        yield _histogram("symphony_shard_batch_size", "Batch sizes dispatched", m.batch_size)
        yield _histogram("symphony_shard_decision_seconds", "Time in the scheduling core per request",
                         {None: m.decision_seconds})
        yield _counter("symphony_shard_late_wake_ups", "Wake-ups later than the timer jitter",
                       {(): m.late_wake_ups}, [])
        yield _counter("symphony_shard_slots_lost", "Slots declared lost", {(): m.slots_lost}, [])
        yield _counter("symphony_shard_plans_refused", "Batches the shard refused to send, by reason: "
                       "slot_cannot_run_model (the granted slot does not host the model; its requests get 503), "
                       "too_large (over the server's max_payload; 413)",
                       {(k,): v for k, v in m.plans_refused.items()}, ["reason"])
        yield _counter("symphony_shard_assignment_steps", "Ownership changes applied from assignments, by step",
                       {(k,): v for k, v in m.assignment_steps.items()}, ["step"])
        state = self.state()
        pending = GaugeMetricFamily("symphony_shard_pending_requests", "Requests held by the core", labels=["model"])
        target = GaugeMetricFamily("symphony_shard_target_batch_size", "Current target batch size", labels=["model"])
        rate = GaugeMetricFamily("symphony_shard_rate_estimate_rps", "Rate estimate (RPS meter mean)",
                                 labels=["model"])
        stats: dict[str, ModelStats] = state["models"]
        for model, model_stats in stats.items():
            pending.add_metric([model], model_stats.pending)
            target.add_metric([model], model_stats.target_batch_size)
            rate.add_metric([model], model_stats.rate_rps)
        yield pending
        yield target
        yield rate
        yield GaugeMetricFamily("symphony_shard_slots_owned", "Slots this shard schedules", value=state["slots_owned"])
        yield GaugeMetricFamily("symphony_shard_slots_busy", "Slots with a batch in flight", value=state["slots_busy"])


def _counter(name: str, doc: str, values: dict, labels: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def _histogram(name: str, doc: str, histograms: dict) -> HistogramMetricFamily:
    labelled = any(key is not None for key in histograms)
    family = HistogramMetricFamily(name, doc, labels=["model"] if labelled else None)
    for key, hist in histograms.items():
        family.add_metric([key] if labelled else [], hist.buckets(), hist.total)
    return family



