"""The discrete-event simulator: drives every shard's policy through `handle()` in virtual time.

Idea: one heap holds everything that is due (request arrivals, plan completions on the fake
slots, injected slot changes, policy wake-ups, coordinator epochs) as `(at_ns, source, seq,
data)`. The loop pops the earliest, hands it to the shard it belongs to with
`step = policy.handle(event, now_ns)`, and acts on `step.actions` and `step.wake_at_ns` (STYLE
§2), which may push more. At one instant an epoch goes first, then arrivals (pre-generated, so
they were scheduled first), completions, slot changes and wake-ups; within a source `seq` keeps
its own order (request id, dispatch count, place among the sorted slot changes, shard index).
Same seed, same bytes (STYLE §5).

The kernel owns the heap, routing (models and slots to shards), the wake-ups each shard asked
for and the epochs. It only wires the rest: execution on fake slots (load.sim.slots), outcomes
(load.sim.outcomes), the coordinator's algorithm (load.sim.partition) and the checkers, which
watch actions from outside (load.sim.checkers).
"""

from __future__ import annotations

import random
import time
from functools import reduce
from heapq import heappop, heappush, heappushpop

from load.schedule import Schedule, build_schedule
from load.sim.checkers import PLANS_FORWARD_ONLY, Checker
from load.sim.outcomes import DROPPED, NOREPLY, PENDING, OutcomeLedger
from load.sim.partition import epoch_assignment, partitioned_shards
from load.sim.records import EpochSample, ShardSpec, SimEvent, SimOptions, SimRun
from load.sim.slots import FakeSlots, PlanKey
from load.workload import LoadedWorkload, classes_of_slots
from schemas.profile import ModelProfile
from shard.core.actions import DispatchBatch, DropReason, DropRequests, PreemptBatch, Step
from shard.core.config import ModelConfig
from shard.core.events import SHUTDOWN, WAKE_UP, BatchCompleted, RequestArrived, SlotAdded, SlotRemoved
from shard.core.policies import make_policy
from shard.core.policy import Policy

# The records a caller passes in or gets back are re-exported beside the functions that take them.
__all__ = ["Kernel", "ShardSpec", "SimEvent", "SimOptions", "SimRun", "model_configs", "run_policy", "run_shards",
           "simulate"]

# Event sources, in their order at one instant.
EPOCH, ARRIVAL, COMPLETION, SLOT_CHANGE, WAKE = 0, 1, 2, 3, 4


def model_configs(loaded: LoadedWorkload, scale: float, slots: int | None = None) -> list[ModelConfig]:
    """The core's view of a workload's models; each rate hint is its bench mean at `scale`.

    In a mixed fleet of `slots` slots (default: the workload's) each model carries its profile
    per class present and, as `profile`, the slowest of them (reference §2.2; the core makes it
    monotone, as it does any profile). A homogeneous fleet's configs are what they always were."""
    present = list(dict.fromkeys(classes_of_slots(loaded, slots or loaded.workload.slots)))
    configs = []
    for m in loaded.workload.models:
        by_class = {c: loaded.class_profiles[c][m.name] for c in present}
        profile = reduce(ModelProfile.merge_slowest, by_class.values()) if by_class else loaded.profiles[m.name]
        configs.append(ModelConfig(name=m.name, slo_ns=int(m.slo_ms * 1e6), profile=profile, class_profiles=by_class,
                                   rate_hint_rps=m.bench_mean_rps * scale))
    return configs


def simulate(loaded: LoadedWorkload, policy_name: str, options: SimOptions = SimOptions()) -> SimRun:
    workload = loaded.workload
    slots = options.slots or workload.slots
    schedule = build_schedule(workload, scale=options.scale, seed=options.seed)
    models = model_configs(loaded, options.scale, slots)
    if options.shards <= 1:
        policy = make_policy(policy_name, models, options.core)
        return run_policy(policy, models, slots, schedule, options, loaded.slot_classes)
    shards = partitioned_shards(models, slots, options, policy_name, classes_of_slots(loaded, slots))
    return run_shards(shards, models, schedule, options, loaded.slot_classes)


def run_policy(policy: Policy, models: list[ModelConfig], slots: int, schedule: Schedule,
               options: SimOptions, slot_classes: list[str] = ()) -> SimRun:
    """The whole workload on one policy that owns every slot."""
    return run_shards([ShardSpec(policy, [m.name for m in models], list(range(slots)))], models, schedule, options,
                      slot_classes)


def run_shards(shards: list[ShardSpec], models: list[ModelConfig], schedule: Schedule, options: SimOptions,
               slot_classes: list[str] = ()) -> SimRun:
    """Drive every shard's policy on one clock: arrivals go to the model's shard, completions to
    the shard that dispatched the plan, wake-ups to the shard that asked; at each epoch
    (`options.epoch_s`) slots move between shards as the coordinator's algorithm says.
    `slot_classes` is a mixed fleet's class pattern (slot i: `[i % len]`; empty: homogeneous)."""
    return Kernel(shards, models, schedule, options, slot_classes).run()


class Kernel:
    """One simulation run: the event heap and the loop over it."""

    def __init__(self, shards: list[ShardSpec], models: list[ModelConfig], schedule: Schedule,
                 options: SimOptions, slot_classes: list[str] = ()) -> None:
        self.shards = shards
        self.models = models
        self.schedule = schedule
        self.options = options
        self.policies = [spec.policy for spec in shards]
        self.handles = [policy.handle for policy in self.policies]
        self.names = [m.name for m in models]
        self.index_of = {name: i for i, name in enumerate(self.names)}
        self.slo_ns = [m.slo_ns for m in models]
        serving: dict[str, list[int]] = {}
        for k, spec in enumerate(shards):
            for name in spec.models:
                serving.setdefault(name, []).append(k)
        self.serving = [serving[name] for name in self.names]
        # A model on one shard routes to it; a split model (-1) to one of its shards at random,
        # weighted by their slots, as NATS spreads a queue group over weighted subscriptions.
        self.shard_of_model = [ks[0] if len(ks) == 1 else -1 for ks in self.serving]
        self.route_rng = random.Random(schedule.seed)
        self.owner = {slot_id: k for k, spec in enumerate(shards) for slot_id in spec.slots}  # slot -> shard
        self.held = [len(spec.slots) for spec in shards]  # slots per shard, as the owner map has them
        self.recv_ns = schedule.times_ns.tolist()
        self.model_of = schedule.model_index.tolist()
        self.ledger = OutcomeLedger(self.recv_ns)
        self.slots = FakeSlots([m.profile for m in models], schedule.window_ns, options.noise, schedule.seed,
                               slot_classes=list(slot_classes), class_profiles=_true_profiles(models, slot_classes))
        self.checker = self._checker() if options.checks else None
        self.epoch_ns = int(options.epoch_s * 1e9)
        self.epochs: list[EpochSample] = []
        self.wake_of: list[int | None] = [None] * len(shards)  # the wake-up each shard asked for last
        self.heap: list[tuple[int, int, int, object]] = []  # (at_ns, source, seq, data)
        self.dispatched = 0
        self.events = 0
        self.now_ns = 0

    def _checker(self) -> Checker:
        return Checker(
            recv_ns=self.recv_ns,
            slo_ns_of_request=[self.slo_ns[m] for m in self.model_of],
            model_of_request=self.model_of,
            model_names=self.names,
            batch_size_max=self.slots.batch_size_max(),
            deadline_margin_ns=self.policies[0].deadline_margin_ns,
            true_exec_ns=(self.slots.true_forward_ns if self.policies[0].name in PLANS_FORWARD_ONLY
                          else self.slots.true_exec_ns),
        )

    def slot_added(self, slot_id: int, free_at_ns: int = 0) -> SlotAdded:
        """The event for a slot joining a shard, naming its class in a mixed fleet."""
        return SlotAdded(slot_id, free_at_ns, slot_class=self.slots.class_of(slot_id))

    def run(self) -> SimRun:
        started = time.process_time()
        self._start()
        self._loop()
        for k, handle in enumerate(self.handles):
            self._apply(handle(SHUTDOWN, self.now_ns).actions, self.now_ns, k)
        cpu_s = time.process_time() - started
        if self.checker is not None:
            self.checker.at_end()
        self.ledger.close()
        return SimRun(
            policy=self.policies[0].name,
            slots=len(self.owner),
            shards=len(self.shards),
            model_shards={name: len(ks) for name, ks in zip(self.names, self.serving, strict=True)},
            epochs=self.epochs,
            schedule=self.schedule,
            model_names=self.names,
            slo_ns=self.slo_ns,
            outcome=self.ledger.outcome,
            finish_ns=self.ledger.finish_ns,
            batches=self.slots.batches,
            busy_ns_in_window=self.slots.busy_ns_in_window,
            busy_ns_by_slot=self.slots.busy_ns_by_slot,
            cpu_s=cpu_s,
            events=self.events,
        )

    def _start(self) -> None:
        """Each shard's first slots join at 0; the first arrival, the slot changes and the first
        epoch go on the heap."""
        for slot_id, k in sorted(self.owner.items()):
            self.slots.add(slot_id, 0)
            self._settle(k, self.handles[k](self.slot_added(slot_id), 0), 0)
        if self.recv_ns:
            heappush(self.heap, (self.recv_ns[0], ARRIVAL, 0, None))
        changes = sorted((int(e.at_s * 1e9), e.kind, e.slot_id) for e in self.options.slot_events)
        for seq, (at_ns, kind, slot_id) in enumerate(changes):
            heappush(self.heap, (at_ns, SLOT_CHANGE, seq, (kind, slot_id)))
        if self.epoch_ns:
            heappush(self.heap, (self.epoch_ns, EPOCH, 0, None))

    def _loop(self) -> None:
        """Pop the earliest event, hand it to its shard, settle the step; until nothing is due.

        Arrivals and wake-ups, most of the events, are handled in line. An arrival pushes the
        next one once its step is settled, in one go with the next pop (the next arrival is most
        often the earliest event, and then `heappushpop` hands it straight back), so the heap
        holds one arrival at a time. A wake-up the shard has since moved or cancelled is
        superseded: it is skipped and does not advance the clock."""
        heap, handles, wake_of, checker = self.heap, self.handles, self.wake_of, self.checker
        recv_ns, model_of, names, shard_of_model = self.recv_ns, self.model_of, self.names, self.shard_of_model
        arrivals = len(recv_ns)
        now_ns, events = self.now_ns, self.events
        next_arrival = None
        while heap or next_arrival:
            if next_arrival:
                at_ns, source, seq, data = heappushpop(heap, next_arrival)
                next_arrival = None
            else:
                at_ns, source, seq, data = heappop(heap)
            if source == ARRIVAL:
                now_ns = at_ns
                if seq + 1 < arrivals:
                    next_arrival = (recv_ns[seq + 1], ARRIVAL, seq + 1, None)
                if checker is not None:
                    checker.on_arrival(seq)
                m = model_of[seq]
                k = shard_of_model[m]
                if k < 0:
                    k = self._route(m)
                step = handles[k](RequestArrived(seq, names[m]), now_ns)
            elif source == WAKE:
                if wake_of[seq] != at_ns:
                    continue  # superseded
                now_ns = at_ns
                k = seq
                wake_of[k] = None
                step = handles[k](WAKE_UP, now_ns)
            elif source == COMPLETION or source == SLOT_CHANGE:
                now_ns = at_ns
                routed = self._complete(data, now_ns) if source == COMPLETION else self._change_slot(*data, now_ns)
                if routed is None:
                    continue  # a plan preempted or lost with its slot; a slot change that changes nothing
                k, step = routed
            else:
                if not self._anything_due():
                    break  # epochs alone do not keep the run going
                now_ns = at_ns
                self._epoch(now_ns)
                continue
            events += 1
            if step.actions:  # _settle, in line: most steps ask only for a wake-up
                self._apply(step.actions, now_ns, k)
            wake_ns = step.wake_at_ns
            assert wake_ns is None or wake_ns > now_ns, self._early_wake(k, wake_ns, now_ns)
            if wake_ns != wake_of[k]:
                wake_of[k] = wake_ns
                if wake_ns is not None:
                    heappush(heap, (wake_ns, WAKE, k, None))
        self.now_ns, self.events = now_ns, events

    def _route(self, m: int) -> int:
        """The shard a split model's request goes to: one of its shards, weighted by slots held."""
        shards = self.serving[m]
        weights = [self.held[shard] for shard in shards]
        return self.route_rng.choices(shards, weights=weights)[0] if sum(weights) else shards[0]

    def _anything_due(self) -> bool:
        """Is anything but superseded wake-ups on the heap? Those are dropped from its top."""
        heap, wake_of = self.heap, self.wake_of
        while heap and heap[0][1] == WAKE and heap[0][0] != wake_of[heap[0][2]]:
            heappop(heap)
        return bool(heap)

    def _settle(self, k: int, step: Step, now_ns: int) -> None:
        """Act on shard k's step: apply its actions, and push its wake-up if it asked for a new one."""
        if step.actions:
            self._apply(step.actions, now_ns, k)
        wake_ns = step.wake_at_ns
        assert wake_ns is None or wake_ns > now_ns, self._early_wake(k, wake_ns, now_ns)
        if wake_ns != self.wake_of[k]:
            self.wake_of[k] = wake_ns  # the entry it had, if any, is superseded
            if wake_ns is not None:
                heappush(self.heap, (wake_ns, WAKE, k, None))

    def _early_wake(self, k: int, wake_ns: int, now_ns: int) -> str:
        return f"{self.policies[k].name} asked to be woken at {wake_ns} <= now {now_ns}"

    def _complete(self, key: PlanKey, now_ns: int) -> tuple[int, Step] | None:
        """A plan's finish has come: tell the shard that dispatched it; None when it was cancelled."""
        plan = self.slots.complete(key)
        if plan is None:
            return None
        if self.checker is not None:
            self.checker.on_completed(plan.slot_id, key, now_ns)
        k, plan_id = key
        return k, self.handles[k](BatchCompleted(plan.slot_id, plan_id, plan.start_ns, plan.finish_ns), now_ns)

    def _change_slot(self, kind: str, slot_id: int, now_ns: int) -> tuple[int, Step] | None:
        """An injected slot change; the plans on a removed slot are lost with it (their requests
        dropped). None when it changes nothing."""
        if kind == "remove":
            if not self.slots.is_up(slot_id):
                return None
            for key in self.slots.plans_running_after(slot_id, now_ns):
                self.ledger.mark(self.slots.cancel(key, now_ns), DROPPED)
            self.slots.remove(slot_id)
            if self.checker is not None:
                self.checker.on_slot_removed(slot_id)
            k = self.owner[slot_id]
            return k, self.handles[k](SlotRemoved(slot_id), now_ns)
        if self.slots.is_up(slot_id):
            return None
        self.slots.add(slot_id, now_ns)
        k = self.owner[slot_id]
        return k, self.handles[k](self.slot_added(slot_id), now_ns)

    def _epoch(self, now_ns: int) -> None:
        """An epoch: the coordinator's algorithm re-allocates slots from measured rates; the next
        epoch goes on the heap."""
        heappush(self.heap, (now_ns + self.epoch_ns, EPOCH, 0, None))
        busy_ns = self.slots.busy_ns_between(now_ns - self.epoch_ns, now_ns)
        moves, desired = epoch_assignment(self.policies, self.shards, self.owner, self.models,
                                          config=self.options.core, quotas=self.options.quotas,
                                          shard_rps_max=self.options.shard_rps_max,
                                          slot_classes=self.slots.slot_classes)
        self.epochs.append(EpochSample(now_ns, desired, busy_ns / self.epoch_ns, len(self.owner)))
        for slot_id, k in moves.items():
            old = self.owner[slot_id]
            self._settle(old, self.handles[old](SlotRemoved(slot_id), now_ns), now_ns)
            self.owner[slot_id] = k
            self.held[old] -= 1
            self.held[k] += 1
            free_ns = self.slots.free_at_ns(slot_id, now_ns)
            self._settle(k, self.handles[k](self.slot_added(slot_id, free_ns), now_ns), now_ns)

    def _apply(self, actions: list, now_ns: int, k: int) -> None:
        for action in actions:
            kind = action.__class__
            if kind is DispatchBatch:
                self._dispatch(action, now_ns, k)
            elif kind is DropRequests:
                if self.checker is not None:
                    self.checker.on_drop(action.request_ids, action.reason.value)
                self.ledger.mark(action.request_ids, NOREPLY if action.reason is DropReason.SHUTDOWN else DROPPED)
            elif kind is PreemptBatch:
                key = (k, action.plan_id)
                if self.checker is not None:
                    self.checker.on_preempt(now_ns, key)
                self.ledger.mark(self.slots.cancel(key, now_ns), PENDING)  # back in the policy's queue
            else:
                raise TypeError(f"unknown action {action!r}")

    def _dispatch(self, action: DispatchBatch, now_ns: int, k: int) -> None:
        """Run the plan on its fake slot, judge its requests on the finish, and schedule the completion."""
        key = (k, action.plan_id)
        request_ids = action.request_ids
        if self.checker is not None:
            self.checker.on_dispatch(now_ns, key, action.slot_id, action.model, request_ids,
                                     action.exec_at_ns, action.finish_at_ns)
        m = self.index_of[action.model]
        finish_ns = self.slots.run(key, action.slot_id, m, request_ids, action.exec_at_ns)
        self.ledger.judge(request_ids, self.slo_ns[m], finish_ns)
        self.dispatched += 1
        heappush(self.heap, (finish_ns, COMPLETION, self.dispatched, key))


def _true_profiles(models: list[ModelConfig], slot_classes: list[str]) -> dict[str, list[ModelProfile]]:
    """Per class in the pattern, every model's profile on it (by model index): what its slots run."""
    return {c: [m.class_profiles.get(c, m.profile) for m in models] for c in dict.fromkeys(slot_classes)}
