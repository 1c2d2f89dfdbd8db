"""What the Symphony policy holds per model (reference §1.7 candidate fields) and its slot timer."""

from __future__ import annotations

from shard.core.batching import BatchQueue
from shard.core.config import CoreConfig, ModelConfig
from shard.core.latency import NEVER_BEFORE_NS, NEVER_NS, LatencyModel
from shard.core.rate_meter import RateMeter
from shard.core.target_batch import best_batch, max_batch_with_full_budget
from shard.core.timers import TimerOwner


class SlotTimer(TimerOwner):
    """The single slot timer (P3 fixed): always on the current rank-0 slot."""

    __slots__ = ()


class ModelState(TimerOwner):
    """Everything the policy holds for one model; candidate fields mirror reference §1.7."""

    __slots__ = (
        "batch_size",
        "budget_ns",
        "by_class",
        "class_cost_s",
        "config",
        "drop_at_ns",
        "exec_at_ns",
        "exec_ns",
        "initial_target",
        "inval_at_ns",
        "invalid_after_ns",
        "last_exec_at_ns",
        "least_cost_s",
        "latency",
        "meter",
        "name",
        "order",
        "parked",
        "plan_class",
        "planned_classes",
        "plans",
        "profile_latency",
        "queue",
        "send_at_ns",
        "slo_ns",
        "target",
        "target_queuing_delay_ns",
        "target_rate_rps",
    )

    def __init__(self, model: ModelConfig, config: CoreConfig, now_ns: int) -> None:
        super().__init__()
        self.config = model
        self.name = model.name
        self.slo_ns = model.slo_ns
        self.latency = self.profile_latency = LatencyModel(model.profile)
        self.exec_ns = self.latency.exec_ns
        self.queue = BatchQueue(self.latency, config.drop, config.ctrl_ns, config.data_ns, config.drop_beta)
        self.meter = RateMeter(config.rate_bin_ns, config.rate_window_bins, now_ns)
        self.budget_ns = model.slo_ns - config.ctrl_ns - config.resp_ns  # T in reference §1.5
        self.initial_target = max_batch_with_full_budget(self.latency, model.slo_ns // 2)
        self.least_cost_s = least_cost_s(self.latency, model.slo_ns, config)
        # Mixed fleets (issue 16): the latency of each slot class present, keyed by class index;
        # `order` lists them cheapest per request first; `plans` holds the candidate's plan on
        # each class it can run on, (class, batch, exec_at, invalid_after, send latency).
        self.by_class: dict[int, LatencyModel] = {}
        self.class_cost_s: dict[int, float] = {}  # least cost per request on each class
        self.order: list[int] = []
        self.plans: list[tuple[int, int, int, int, int]] = []
        self.planned_classes = 0  # how many of `order` the candidate was planned on
        self.plan_class = -1
        self.target = self.initial_target
        self.target_rate_rps = -1.0
        self.target_queuing_delay_ns = model.slo_ns // 2
        self.batch_size = 0
        self.exec_at_ns = NEVER_NS
        self.invalid_after_ns = NEVER_BEFORE_NS
        self.send_at_ns = NEVER_NS
        self.drop_at_ns = NEVER_NS
        self.inval_at_ns = NEVER_NS
        self.last_exec_at_ns = NEVER_BEFORE_NS
        self.parked = False  # a waiting plan in the matcher's rankings


def least_cost_s(latency: LatencyModel, slo_ns: int, config: CoreConfig) -> float:
    """Slot-seconds per request at b*; a model that cannot meet its SLO at all costs E(1)."""
    b_star = best_batch(latency, slo_ns, config.resp_ns, config.ctrl_ns, config.data_ns)
    return latency.exec_ns[max(b_star, 1)] / max(b_star, 1) / 1e9


def plan_with(model: ModelState, latency: LatencyModel, config: CoreConfig) -> None:
    """The latency the model's queue, window and target use (mixed fleets: its cheapest class
    present; one class: that class's)."""
    model.latency = latency
    model.exec_ns = latency.exec_ns
    model.queue.latency = latency
    model.queue.exec_ns = latency.exec_ns
    model.least_cost_s = least_cost_s(latency, model.slo_ns, config)
    model.target_rate_rps = -1.0  # the target is re-estimated on this latency
