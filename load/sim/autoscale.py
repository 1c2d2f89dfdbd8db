"""Autoscaling in simulation: the coordinator's autoscaler (coordinator/autoscale.py) in the loop
of a workload whose rates change over time, with an actuator that has a cold start.

Each epoch the kernel measures what a live coordinator would (every model's arrival rate over
the epoch, busy slot time, the bad rate of the epoch's decided requests), asks `decide` for the
slots to hold and `choose_slots` for which, and acts:
- a started slot costs GPU time from the decision on and serves after `cold_start_s`;
- a drained slot gets SlotRemoved at once (its shard plans nothing more on it), finishes the
  plans it holds and is released when the last one ends; a draining slot the autoscaler wants
  back serves again at once (it is warm);
- a dispatch to a slot that is not serving is a violation (the drain contract);
- injected slot failures (`SimOptions.slot_events`, kind "remove") lose the slot's plans and
  stop its cost; the autoscaler replaces it at its next epoch.
GPU-seconds are provisioned slot time (starting, serving or draining) over the bench window; the
oracle's are the slots the true load needs at the analytic bound's cost over the target
utilisation, rounded up, within the pool and the autoscaler's min and max, second by second.
One shard owns every slot (partitioned autoscaling would add the coordinator's slot moves on top;
not simulated here).
"""

from __future__ import annotations

import math
from heapq import heappush

import msgspec
import numpy as np

from coordinator.autoscale import AutoscaleConfig, AutoscaleSignal, AutoscaleState, choose_slots, decide
from coordinator.demand import model_demand
from load.bound import analytic_bound
from load.schedule import NS_PER_S, build_schedule
from load.sim.kernel import EPOCH, SLOT_CHANGE, Kernel, model_configs
from load.sim.outcomes import DROPPED, SUCCESS, TIMEOUT
from load.sim.records import ShardSpec, SimOptions
from load.workload import LoadedWorkload
from shard.core.actions import DispatchBatch
from shard.core.events import SlotRemoved
from shard.core.policies import make_policy

_AUTOSCALE_SEQ = 1 << 40  # slot changes the actuator pushes sort after injected ones at one instant


class AutoscaleSample(msgspec.Struct, frozen=True, kw_only=True):
    t_s: float  # since the start of the bench window
    active: int  # serving
    starting: int
    draining: int
    target: int  # the decision
    busy_slots: float  # measured over the epoch that just ended
    needed_slots: float  # the true load at the bound's cost (no utilisation target)
    oracle_slots: int  # ceil(needed / target utilisation)
    offered_rps: float
    goodput_rps: float  # of the requests received in the epoch
    bad_rate: float
    reason: str


class AutoscaleResult(msgspec.Struct, kw_only=True):
    workload: str
    policy: str
    rule: str  # "demand", "hpa" or "fixed"
    slots: int  # the pool
    fixed_slots: int = 0  # with rule "fixed": the pool size held throughout
    scale: float
    cold_start_s: float
    epoch_s: float
    target_utilization: float
    bench_s: float
    gpu_seconds: float
    oracle_gpu_seconds: float
    gpu_vs_oracle: float
    bad_rate: float
    goodput_rps: float
    offered: int
    mean_active_slots: float
    scale_ups: int
    scale_downs: int
    samples: list[AutoscaleSample]


class _Actuator:
    """Which slots serve, start and drain, and the GPU time they cost; pure bookkeeping."""

    def __init__(self, window_ns: tuple[int, int]) -> None:
        self.window_start_ns, self.window_end_ns = window_ns
        self.serving: set[int] = set()
        self.starting: dict[int, int] = {}  # slot -> when it serves
        self.draining: set[int] = set()
        self.since_ns: dict[int, int] = {}  # slot -> when it was provisioned
        self.gpu_ns = 0

    def provision(self, slot: int, now_ns: int) -> None:
        self.since_ns.setdefault(slot, now_ns)

    def release(self, slot: int, now_ns: int) -> None:
        start = self.since_ns.pop(slot)
        lo, hi = max(start, self.window_start_ns), min(now_ns, self.window_end_ns)
        if hi > lo:
            self.gpu_ns += hi - lo

    def close(self) -> None:
        for slot in list(self.since_ns):
            self.release(slot, self.window_end_ns)


class AutoscaleKernel(Kernel):
    """The simulation kernel with the autoscaler and its actuator at every epoch."""

    def __init__(self, loaded: LoadedWorkload, policy_name: str, options: SimOptions,
                 config: AutoscaleConfig, pool: int, fixed: int = 0) -> None:
        schedule = build_schedule(loaded.workload, scale=options.scale, seed=options.seed)
        models = model_configs(loaded, options.scale, pool)
        policy = make_policy(policy_name, models, options.core)
        self.config, self.pool, self.fixed = config, pool, fixed
        self.state = AutoscaleState()
        self.act = _Actuator(schedule.window_ns)
        first = fixed or self._first_slots(loaded, models, options, config)
        super().__init__([ShardSpec(policy, [m.name for m in models], list(range(first)))], models, schedule, options,
                         loaded.slot_classes)
        for slot in range(first):
            self.act.serving.add(slot)
            self.act.provision(slot, 0)
        self.times_ns = schedule.times_ns
        self.model_index = schedule.model_index
        self.samples: list[tuple] = []
        self.ups = self.downs = 0
        self._change_seq = _AUTOSCALE_SEQ
        self.busy_ns = np.zeros(int(self.times_ns[-1] // self.epoch_ns) + 2 if len(self.times_ns) else 2)

    def _first_slots(self, loaded: LoadedWorkload, models: list, options: SimOptions, config: AutoscaleConfig) -> int:
        """What the demand rule asks for from the first segment's rates, whatever the rule under
        test (the cluster was sized for the night before the run starts; a rule that reads busy
        slots has nothing to read yet)."""
        rates = [m.segments()[0].rps * options.scale for m in loaded.workload.models]
        demands = [model_demand(m, r, options.core, []) for m, r in zip(models, rates, strict=True)]
        demand = sum(d.rate_rps * d.cost_s for d in demands)
        signal = AutoscaleSignal(now_s=0.0, demand_slots=demand, busy_slots=0.0, active=0, total=self.pool)
        demand_rule = msgspec.structs.replace(config, rule="demand")
        return max(1, decide(demand_rule, AutoscaleState(), signal)[0].target_slots)

    # ---- the epoch: measure, decide, act ------------------------------------------------
    def _epoch(self, now_ns: int) -> None:
        heappush(self.heap, (now_ns + self.epoch_ns, EPOCH, 0, None))
        if self.fixed:
            self.samples.append((now_ns, self.fixed, "fixed", self.fixed, 0, 0))
            return
        signal = self._signal(now_ns)
        decision, self.state = decide(self.config, self.state, signal)
        act = self.act
        start, drain = choose_slots(list(range(self.pool)), decision.target_slots, act.serving, set(act.starting),
                                    act.draining)
        for slot in start:
            self._start_slot(slot, now_ns)
        for slot in drain:
            self._drain_slot(slot, now_ns)
        self.ups += bool(start)
        self.downs += bool(drain)
        self.samples.append((now_ns, decision.target_slots, decision.reason, len(act.serving), len(act.starting),
                             len(act.draining)))

    def _signal(self, now_ns: int) -> AutoscaleSignal:
        lo_ns = now_ns - self.epoch_ns
        lo, hi = np.searchsorted(self.times_ns, [lo_ns, now_ns])
        counts = np.bincount(self.model_index[lo:hi], minlength=len(self.models))
        epoch_s = self.epoch_ns / NS_PER_S
        demand = 0.0
        for model, count in zip(self.models, counts.tolist(), strict=True):
            d = model_demand(model, count / epoch_s, self.options.core, [])
            demand += d.rate_rps * d.cost_s
        outcome = np.frombuffer(self.ledger.outcome, dtype=np.uint8)[lo:hi]
        decided = np.count_nonzero(outcome != 0)
        bad = np.count_nonzero((outcome == DROPPED) | (outcome == TIMEOUT))
        busy = self.busy_slots_in(int(lo_ns // self.epoch_ns))
        return AutoscaleSignal(now_s=now_ns / NS_PER_S, demand_slots=demand, busy_slots=busy,
                               bad_rate=bad / decided if decided else 0.0, active=len(self.act.serving),
                               starting=len(self.act.starting), total=self.pool)

    def busy_slots_in(self, epoch: int) -> float:
        """Busy slot time per second over epoch number `epoch` (from time 0)."""
        return float(self.busy_ns[epoch] / self.epoch_ns) if 0 <= epoch < len(self.busy_ns) else 0.0

    def _start_slot(self, slot: int, now_ns: int) -> None:
        act = self.act
        if slot in act.draining:  # warm: it serves again at once
            act.draining.discard(slot)
            act.serving.add(slot)
            self.owner[slot] = 0
            self._settle(0, self.handles[0](self.slot_added(slot, self.slots.free_at_ns(slot, now_ns)), now_ns), now_ns)
            return
        act.provision(slot, now_ns)
        ready_ns = now_ns + int(self.config.cold_start_s * NS_PER_S)
        act.starting[slot] = ready_ns
        self._push_change(ready_ns, "ready", slot)

    def _drain_slot(self, slot: int, now_ns: int) -> None:
        act = self.act
        if slot in act.starting:  # serves nothing yet: released at once
            del act.starting[slot]
            act.release(slot, now_ns)
            return
        act.serving.discard(slot)
        act.draining.add(slot)
        self.owner.pop(slot, None)
        self._settle(0, self.handles[0](SlotRemoved(slot), now_ns), now_ns)
        self._push_change(max(now_ns, self.slots.free_at_ns(slot, now_ns)), "release", slot)

    def _push_change(self, at_ns: int, kind: str, slot: int) -> None:
        self._change_seq += 1
        heappush(self.heap, (at_ns, SLOT_CHANGE, self._change_seq, (kind, slot)))

    def _change_slot(self, kind: str, slot_id: int, now_ns: int):  # noqa: ANN202 - the kernel's contract
        act = self.act
        if kind == "ready":
            if act.starting.get(slot_id) != now_ns:
                return None  # drained before it was ready
            del act.starting[slot_id]
            act.serving.add(slot_id)
            self.owner[slot_id] = 0
            if not self.slots.is_up(slot_id):
                self.slots.add(slot_id, now_ns)
            return 0, self.handles[0](self.slot_added(slot_id, now_ns), now_ns)
        if kind == "release":
            if slot_id not in act.draining:
                return None  # taken back while draining
            free_ns = self.slots.free_at_ns(slot_id, now_ns)
            if free_ns > now_ns:  # noise made its last plan run longer than planned
                self._push_change(free_ns, "release", slot_id)
                return None
            act.draining.discard(slot_id)
            self.slots.remove(slot_id)
            act.release(slot_id, now_ns)
            return None
        return self._fault(kind, slot_id, now_ns)

    def _fault(self, kind: str, slot_id: int, now_ns: int):  # noqa: ANN202 - the kernel's contract
        """An injected fault: a slot that fails loses its plans (the kernel drops their requests)
        and is no longer paid for; the autoscaler sees one fewer and may start another. An
        injected "add" is the actuator's to decide, so it changes nothing here."""
        act = self.act
        if kind != "remove":
            return None
        if slot_id in act.starting:
            del act.starting[slot_id]
            act.release(slot_id, now_ns)
            return None
        if slot_id not in act.serving and slot_id not in act.draining:
            return None
        act.serving.discard(slot_id)
        act.draining.discard(slot_id)
        act.release(slot_id, now_ns)
        self.owner[slot_id] = 0
        routed = super()._change_slot(kind, slot_id, now_ns)
        self.owner.pop(slot_id, None)
        return routed

    def _dispatch(self, action: DispatchBatch, now_ns: int, k: int) -> None:
        if action.slot_id not in self.act.serving:
            raise AssertionError(f"plan {action.plan_id} dispatched to slot {action.slot_id}, which is not serving")
        super()._dispatch(action, now_ns, k)
        batch = self.slots.batches[-1]
        self._add_busy(batch.start_ns, batch.finish_ns)

    def _add_busy(self, start_ns: int, finish_ns: int) -> None:
        epoch_ns = self.epoch_ns
        at = start_ns
        while at < finish_ns:
            bin_ = int(at // epoch_ns)
            end = min(finish_ns, (bin_ + 1) * epoch_ns)
            if bin_ >= len(self.busy_ns):
                self.busy_ns = np.concatenate([self.busy_ns, np.zeros(bin_ + 2 - len(self.busy_ns))])
            self.busy_ns[bin_] += end - at
            at = end


def simulate_autoscale(loaded: LoadedWorkload, policy: str, config: AutoscaleConfig, *, epoch_s: float = 5.0,
                       options: SimOptions = SimOptions(), fixed_slots: int = 0) -> AutoscaleResult:
    """One autoscaled run (or, with `fixed_slots`, one with that many slots throughout)."""
    pool = options.slots or loaded.workload.slots
    options = msgspec.structs.replace(options, epoch_s=epoch_s, shards=1)
    kernel = AutoscaleKernel(loaded, policy, options, config, pool, fixed_slots)
    run = kernel.run()
    kernel.act.close()
    return _result(loaded, policy, config, kernel, run, options, pool)


def _result(loaded: LoadedWorkload, policy: str, config: AutoscaleConfig, kernel: AutoscaleKernel, run,  # noqa: ANN001
            options: SimOptions, pool: int) -> AutoscaleResult:
    schedule = run.schedule
    w0, w1 = schedule.window_ns
    bench_s = (w1 - w0) / NS_PER_S
    outcome = np.frombuffer(bytes(run.outcome), dtype=np.uint8)
    times = schedule.times_ns
    inside = (times >= w0) & (times < w1)
    needed = _needed_slots(loaded, options, kernel.epoch_ns, w1)
    samples = _samples(kernel, outcome, times, needed, config, w0, w1)
    oracle_gpu_s = sum(_oracle(n, config, pool) for n in _needed_slots(
        loaded, options, NS_PER_S, w1)[int(w0 // NS_PER_S):int(w1 // NS_PER_S)])
    offered = int(np.count_nonzero(inside))
    success = int(np.count_nonzero(outcome[inside] == SUCCESS))
    gpu_s = kernel.act.gpu_ns / NS_PER_S
    return AutoscaleResult(
        workload=loaded.workload.name, policy=policy, rule="fixed" if kernel.fixed else config.rule, slots=pool,
        fixed_slots=kernel.fixed, scale=options.scale, cold_start_s=config.cold_start_s,
        epoch_s=kernel.epoch_ns / NS_PER_S, target_utilization=config.target_utilization, bench_s=bench_s,
        gpu_seconds=gpu_s, oracle_gpu_seconds=float(oracle_gpu_s),
        gpu_vs_oracle=gpu_s / oracle_gpu_s if oracle_gpu_s else math.inf,
        bad_rate=1.0 - success / offered if offered else 0.0, goodput_rps=success / bench_s if bench_s else 0.0,
        offered=offered, mean_active_slots=gpu_s / bench_s if bench_s else 0.0,
        scale_ups=kernel.ups, scale_downs=kernel.downs, samples=samples)


def _oracle(needed: float, config: AutoscaleConfig, pool: int) -> int:
    """The slots an oracle would hold for this need: at the target utilisation, within the pool
    and the autoscaler's min and max."""
    cap = min(pool, config.max_slots) if config.max_slots else pool
    return min(cap, max(config.min_slots, math.ceil(needed / config.target_utilization - 1e-9)))


def _needed_slots(loaded: LoadedWorkload, options: SimOptions, step_ns: int, end_ns: int) -> list[float]:
    """The true load, step by step from time 0: sum of each model's segment rate x the bound's
    cost per request (what no scheduler can do with less)."""
    bound = analytic_bound(loaded, options.slots or loaded.workload.slots, options.core)
    steps = int(end_ns // step_ns) + 1
    needed = np.zeros(steps)
    for model, cost in zip(loaded.workload.models, (m.cost_s_per_request for m in bound.models), strict=True):
        at_s = 0.0
        for segment in model.segments():
            lo, hi = int(at_s * NS_PER_S // step_ns), int((at_s + segment.seconds) * NS_PER_S // step_ns)
            needed[lo:min(hi, steps)] += segment.rps * options.scale * cost
            at_s += segment.seconds
    return needed.tolist()


def _samples(kernel: AutoscaleKernel, outcome: np.ndarray, times: np.ndarray, needed: list[float],
             config: AutoscaleConfig, w0: int, w1: int) -> list[AutoscaleSample]:
    """The time series over the bench window, one sample per epoch; outcomes are final ones, by
    receive time within the epoch that ended at the sample."""
    epoch_ns = kernel.epoch_ns
    out = []
    for at_ns, target, reason, active, starting, draining in kernel.samples:
        if at_ns <= w0 or at_ns > w1:
            continue
        lo, hi = (int(i) for i in np.searchsorted(times, [at_ns - epoch_ns, at_ns]))
        success = int(np.count_nonzero(outcome[lo:hi] == SUCCESS))
        epoch = int(at_ns // epoch_ns) - 1
        n = float(needed[epoch]) if 0 <= epoch < len(needed) else 0.0
        out.append(AutoscaleSample(
            t_s=(at_ns - w0) / NS_PER_S, active=active, starting=starting, draining=draining, target=target,
            busy_slots=kernel.busy_slots_in(epoch),
            needed_slots=n, oracle_slots=_oracle(n, config, kernel.pool),
            offered_rps=(hi - lo) * NS_PER_S / epoch_ns, goodput_rps=success * NS_PER_S / epoch_ns,
            bad_rate=1.0 - success / (hi - lo) if hi > lo else 0.0, reason=reason))
    return out

