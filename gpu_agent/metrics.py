"""The agent's Prometheus metrics (docs/metrics.md): per slot and model executions, items,
compute time, padding waste; compile count (flat after warm-up) and device memory at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class AgentMetrics:
    def __init__(self, state: Callable[[], dict]) -> None:
        self.registry = r = CollectorRegistry()
        labels = ["slot", "model"]
        self.executions = Counter("symphony_agent_executions", "Batches executed (nv_inference_exec_count)",
                                  labels, registry=r)
        self.items = Counter("symphony_agent_items", "Requests executed in batches (nv_inference_count)",
                             labels, registry=r)
        self.compute_seconds = Counter("symphony_agent_compute_seconds",
                                       "Time executing batches (nv_inference_compute_infer_duration)", labels,
                                       registry=r)
        self.padding_items = Counter("symphony_agent_padding_items",
                                     "Rows of padding run to reach the compiled bucket size", labels, registry=r)
        self.replies = Counter("symphony_agent_replies", "Replies sent, by status", ["model", "status"], registry=r)
        self.expired_plans = Counter("symphony_agent_expired_plans",
                                     "Plans whose every request was past its deadline at start: not run",
                                     ["slot"], registry=r)
        self.expired_items = Counter("symphony_agent_expired_items",
                                     "Requests past their deadline at start: answered 504, not run", ["slot"],
                                     registry=r)
        self.undecodable = Counter("symphony_agent_undecodable_messages",
                                   "Plans and claims that failed to decode: dropped (plans) or refused (claims)",
                                   ["kind"], registry=r)
        self.withheld_plans = Counter("symphony_agent_withheld_plans",
                                      "Plans reached after their shard may have declared them lost: not answered "
                                      "here, reported withheld (the shard answers)", ["slot"], registry=r)
        self.late_compute_seconds = Counter(
            "symphony_agent_late_compute_seconds",
            "Device time spent on requests that finished past their deadline (their share of each batch)",
            ["slot"], registry=r)
        r.register(_StateCollector(state))


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], dict]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.state()
        compiles = GaugeMetricFamily("symphony_agent_compile_count", "Executables compiled; flat after load",
                                     labels=["model"])
        for model, count in state["compiles"].items():
            compiles.add_metric([model], count)
        yield compiles
        queued = GaugeMetricFamily("symphony_agent_plans_queued", "Plans waiting per slot", labels=["slot"])
        for slot, count in state["queued"].items():
            queued.add_metric([slot], count)
        yield queued
        memory = GaugeMetricFamily("symphony_agent_device_memory_bytes",
                                   "Device memory in use, where JAX exposes it", labels=["device"])
        for device, used in state["memory"].items():
            memory.add_metric([device], used)
        yield memory
