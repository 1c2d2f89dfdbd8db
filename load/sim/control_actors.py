"""The processes of the control-plane simulator (load/sim/control.py): coordinators running the
live decision code (coordinator/core.py), shard followers planning ownership changes with the live
planner (shard/core/ownership.py), agents granting claims with the live fencing rule
(gpu_agent/fencing.py). Each talks to the simulated KV (load/sim/control_kv.py) through the world
it lives in; a paused process holds what arrives until it resumes, a crashed one drops it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from coordinator import core
from coordinator.membership import ReadOutcome
from coordinator.placement import PlacementConfig
from gpu_agent.fencing import SlotOwner, decide_claim
from load.sim.control_autoscale import PLAN_TICK_NS
from load.sim.control_kv import MS, Entry, KVError, NotFound, S, WrongLast
from schemas.control import AUTOSCALE_KEY, AgentHeartbeat, AgentSlot, Assignment, ModelLoad, ShardHeartbeat
from schemas.profile import ModelProfile
from shard.core.config import CoreConfig
from shard.core.ownership import AddModel, ClaimSlot, Holding, apply_step, plan_release, plan_transition

if TYPE_CHECKING:
    from load.sim.control import World

TICK_NS = 250 * MS
POLL_NS = 200 * MS
CLAIM_TIMEOUT_NS = 2 * S
HANDOVER_GRACE_NS = 1 * S


class Process:
    """Alive or not, paused or not; while paused, what arrives waits for the resume."""

    def __init__(self, world: World, name: str) -> None:
        self.world = world
        self.name = name
        self.alive = True
        self.incarnation = 0
        self.paused_until = 0
        self._held: list = []

    def running(self) -> bool:
        return self.alive and self.world.sim.now_ns >= self.paused_until

    def arrive(self, incarnation: int, action) -> None:  # noqa: ANN001
        """Run `action` if this incarnation still lives: now, or when a pause ends."""
        if not self.alive or incarnation != self.incarnation:
            return
        if self.world.sim.now_ns < self.paused_until:
            self._held.append((incarnation, action))
            return
        action()

    def pause(self, duration_ns: int) -> None:
        self.paused_until = self.world.sim.now_ns + duration_ns
        self.world.sim.at(self.paused_until, self._resume)

    def _resume(self) -> None:
        held, self._held = self._held, []
        for incarnation, action in held:
            self.arrive(incarnation, action)

    def kv(self, operation, done) -> None:  # noqa: ANN001
        incarnation = self.incarnation
        self.world.kv.call(operation, lambda result, error: self.arrive(incarnation, lambda: done(result, error)))

    def every(self, period_ns: int, action) -> None:  # noqa: ANN001
        incarnation = self.incarnation

        def fire() -> None:
            if not self.alive or incarnation != self.incarnation:
                return
            if self.running():
                action()
            self.world.sim.after(period_ns, fire)

        self.world.sim.after(self.world.rng.randrange(period_ns), fire)


class SimCoordinator(Process):
    def __init__(self, world: World, name: str) -> None:
        super().__init__(world, name)
        self.start()

    def start(self) -> None:
        w = self.world
        self.alive = True
        self.incarnation += 1
        scaling = w.case.autoscale
        self.core = core.CoordinatorCore(self.name, w.case.models, w.case.timing, core=CoreConfig(),
                                         placement=PlacementConfig(shard_rps_max=w.case.shard_rps_max),
                                         now_ns=w.sim.now_ns,
                                         autoscale=scaling.config if scaling else None, slots=sorted(w.agent_of))
        self.watches: list = []
        self._restart_watches()
        self.every(TICK_NS, lambda: self.feed(core.Tick()))

    def crash(self) -> None:
        self.alive = False
        for watch in self.watches:
            watch.stop()

    def feed(self, event: core.Event) -> None:
        for command in self.core.handle(event, self.world.sim.now_ns):
            self.execute(command)

    def _restart_watches(self) -> None:
        for watch in self.watches:
            watch.stop()
        incarnation = self.incarnation
        members, state = self.world.kv.buckets["members"], self.world.kv.buckets["state"]

        def on_member(entry: Entry | None, key: str) -> None:
            event = core.MemberUpdate(key=key, heartbeat=entry.value if entry else None,
                                 revision=entry.revision if entry else 0)
            self.arrive(incarnation, lambda: self.feed(event))

        def on_state(entry: Entry | None, key: str) -> None:
            event: core.Event | None = None
            if key.startswith("drain."):
                event = core.DrainUpdate(shard=key.split(".", 1)[1], draining=entry is not None)
            elif key == "assignment" and entry is not None:
                event = core.AssignmentSeen(assignment=entry.value)
            elif key == AUTOSCALE_KEY and entry is not None:
                event = core.AutoscaleSeen(status=entry.value)
            elif key.startswith("profiles."):  # profiles.<model>.<agent>, as coordinator/service.py reads it
                _, model, agent = key.split(".")
                event = core.ProfileUpdate(model=model, agent=agent, profile=entry.value if entry else None)
            if event is not None:
                self.arrive(incarnation, lambda: self.feed(event))

        self.watches = [members.watch(on_member), state.watch(on_state)]

    def execute(self, command: core.Command) -> None:
        buckets = self.world.kv.buckets
        match command:
            case core.Note(event=event, fields=fields):
                self.world.checker.note(event)
                self.world.log(f"{self.name} {event} {fields if fields else ''}")
            case core.RestartWatches():
                self._restart_watches()
            case core.TakeLease():
                self.kv(lambda: buckets["leader"].create("leader", self.name), self._lease_done)
            case core.RenewLease(revision=revision):
                self.kv(lambda: buckets["leader"].update("leader", self.name, revision), self._lease_done)
            case core.ReleaseLease(revision=revision):
                self.kv(lambda: buckets["leader"].delete("leader", revision), lambda _r, _e: None)
            case core.ReadMember(key=key):
                self.kv(lambda: buckets["members"].get(key), lambda r, e: self.feed(_member_read(key, r, e)))
            case core.ReadAssignment(shards=shards):
                def read() -> tuple:
                    state = buckets["state"]
                    drains = frozenset(s for s in shards if f"drain.{s}" in state.entries)
                    try:
                        return state.get("assignment"), drains
                    except NotFound:
                        return None, drains
                self.kv(read, lambda r, e: self.feed(_assignment_read(r, e)))
            case core.WriteAutoscale(status=status):
                self.world.checker.autoscale_decided(self.world, status)
                self.kv(lambda: buckets["state"].put(AUTOSCALE_KEY, status), lambda _r, _e: None)
            case core.WriteAssignment(assignment=new, revision=revision):
                decided = self.core.autoscale_status

                def write() -> int:
                    state = buckets["state"]
                    written = state.update("assignment", new, revision) if revision else state.create("assignment", new)
                    self.world.checker.assignment_written(self.world, new, decided)
                    return written
                self.kv(write, lambda r, e: self.feed(core.AssignmentWritten(outcome=_write_outcome(e))))
            case _:
                raise AssertionError(f"unknown command {command!r}")

    def _lease_done(self, revision: int | None, error: Exception | None) -> None:
        if isinstance(error, KVError):
            self.feed(core.LeaseResult(outcome=core.LeaseOutcome.FAILED))
        elif error is not None:
            self.feed(core.LeaseResult(outcome=core.LeaseOutcome.TAKEN_ELSEWHERE))
        else:
            self.feed(core.LeaseResult(outcome=core.LeaseOutcome.HELD, revision=revision))


def _member_read(key: str, entry: Entry | None, error: Exception | None) -> core.MemberRead:
    if isinstance(error, NotFound):
        return core.MemberRead(key=key, outcome=ReadOutcome.NOT_FOUND)
    if error is not None:
        return core.MemberRead(key=key, outcome=ReadOutcome.FAILED)
    return core.MemberRead(key=key, outcome=ReadOutcome.FOUND, heartbeat=entry.value, revision=entry.revision)


def _assignment_read(result: tuple | None, error: Exception | None) -> core.AssignmentRead:
    if error is not None:
        return core.AssignmentRead(assignment=None, revision=0, failed=True)
    entry, drains = result
    if entry is None:
        return core.AssignmentRead(assignment=None, revision=0, drains=drains)
    return core.AssignmentRead(assignment=entry.value, revision=entry.revision, drains=drains)


def _write_outcome(error: Exception | None) -> core.WriteOutcome:
    if error is None:
        return core.WriteOutcome.WRITTEN
    return core.WriteOutcome.RACED if isinstance(error, WrongLast) else core.WriteOutcome.FAILED


class SimShard(Process):
    """A shard follower: heartbeats, reads the assignment, applies it step by step."""

    def __init__(self, world: World, name: str) -> None:
        super().__init__(world, name)
        self.start()

    def start(self) -> None:
        self.alive = True
        self.incarnation += 1
        self.holding = Holding()
        self.epoch = 0
        self.applying = False
        self.gained_ns: dict[str, int] = {}
        self.models: frozenset[str] = frozenset()
        self.split_ways: dict[str, int] = {}  # model -> shards serving it, in the assignment applied
        self.in_flight: dict[int, str] = {}  # plan -> slot, sent and not reported
        self.every(self.world.case.timing.heartbeat_ttl_ns // 3, self.heartbeat)
        self.every(POLL_NS, self.poll)
        if self.world.traffic is not None:
            self.every(PLAN_TICK_NS, lambda: self.world.traffic.send_plans(self))

    def crash(self) -> None:
        self.alive = False
        self.holding = Holding()
        self.in_flight = {}
        self.world.checker.shard_holding(self.world, self.name, self.holding)

    def leave(self) -> None:
        """A clean stop: release everything, say goodbye."""
        self.world.kv.call(lambda: self.world.kv.buckets["members"].delete(f"shard.{self.name}"), lambda _r, _e: None)
        self.crash()

    def rate(self, model: str) -> float:
        """What the shard's meter reads for a model it holds: the case's rate (times the load
        factor in force, with autoscaling); 0 for a moment after the model arrives."""
        now = self.world.sim.now_ns
        if now - self.gained_ns.get(model, 0) <= 2 * S:
            return 0.0
        scaling = self.world.case.autoscale
        share = 1 / self.split_ways.get(model, 1)  # a split model: this shard's share, as it sees the split
        return self.world.case.rates[model] * share * (scaling.factor(now) if scaling else 1.0)

    def heartbeat(self) -> None:
        w = self.world
        rates = {m: self.rate(m) for m in sorted(self.holding.models)}
        loads = {m: ModelLoad(rate_rps=rate, recent_rps=rate, pending=0) for m, rate in rates.items()}
        beat = ShardHeartbeat(shard_id=self.name, models=loads, epoch=self.epoch)
        if w.case.autoscale is not None:
            # Busy slot time: what the load needs, up to every slot the shard owns.
            need = w.traffic.need(rates)
            beat = msgspec.structs.replace(beat, busy_slots=min(float(len(self.holding.slots)), need),
                                           slots_held=sorted(self.holding.slots | set(self.in_flight.values())))
        self.kv(lambda: w.kv.buckets["members"].put(f"shard.{self.name}", beat), lambda _r, _e: None)

    def poll(self) -> None:
        if self.applying:
            return
        self.kv(lambda: self.world.kv.buckets["state"].get("assignment"), self._polled)

    def _polled(self, entry: Entry | None, error: Exception | None) -> None:
        if error is not None or self.applying:
            return
        assignment: Assignment = entry.value
        if assignment.epoch < self.epoch:
            return  # a stale read
        me = self.name
        models = assignment.models_of(me)
        slots = frozenset(slot for slot, s in assignment.slots.items() if s == me)
        transition = plan_transition(self.holding, models, slots, self.world.hosts)
        if assignment.epoch == self.epoch and not transition.steps:
            return
        self.epoch = assignment.epoch
        self.models = models
        self.split_ways = {m: len(assignment.shards_of(m)) for m in models}
        self.applying = True
        self._run_steps(list(transition.steps), transition.releasing)

    def _run_steps(self, steps: list, releasing: frozenset[str]) -> None:
        while steps:
            step = steps.pop(0)
            if isinstance(step, ClaimSlot):
                self.world.claim(self, step.slot, self.epoch,
                                 lambda granted, s=step: self._claimed(s, granted, steps, releasing))
                return
            self._step(step)
        new = releasing - self.holding.releasing
        self.holding = msgspec.structs.replace(self.holding, releasing=releasing)
        self.applying = False
        if new:
            incarnation = self.incarnation
            self.world.sim.after(HANDOVER_GRACE_NS, lambda: self.arrive(incarnation, lambda: self._release(new)))

    def _claimed(self, step: ClaimSlot, granted: bool, steps: list, releasing: frozenset[str]) -> None:
        self._step(step, granted)
        self._run_steps(steps, releasing)

    def _step(self, step, granted: bool = True) -> None:  # noqa: ANN001
        if isinstance(step, AddModel):
            self.gained_ns[step.model] = self.world.sim.now_ns
        self.holding = apply_step(self.holding, step, granted)
        self.world.checker.shard_holding(self.world, self.name, self.holding)

    def _release(self, names: frozenset[str]) -> None:
        if self.applying:  # the apply under way decides; try again after it
            incarnation = self.incarnation
            self.world.sim.after(POLL_NS, lambda: self.arrive(incarnation, lambda: self._release(names)))
            return
        for step in plan_release(self.holding, names & self.holding.releasing, self.models):
            self._step(step)


class SimAgent(Process):
    def __init__(self, world: World, name: str, slots: dict[str, list[str]]) -> None:
        super().__init__(world, name)
        self.slots = slots
        self.start()

    def start(self) -> None:
        self.alive = True
        self.incarnation += 1
        self.owners = {slot: SlotOwner() for slot in self.slots}
        if self.world.traffic is not None:
            self.world.traffic.stopped.discard(self.name)  # started again, by the actuator or a fault
        self.open: dict[str, int] = {}  # slot -> plans received and not yet answered
        self.failing = False  # the last heartbeat put failed
        self.every(self.world.case.timing.heartbeat_ttl_ns // 3, self.heartbeat)
        self.publish_profiles()

    def crash(self) -> None:
        self.alive = False
        self.open = {}

    def stop(self) -> None:
        """The actuator stops the agent: it leaves (its heartbeat is deleted) and is gone."""
        self.world.kv.call(lambda: self.world.kv.buckets["members"].delete(f"agent.{self.name}"), lambda _r, _e: None)
        self.crash()

    def heartbeat(self) -> None:
        device = self.world.case.devices.get(self.name, "sim")
        beat = AgentHeartbeat(agent_id=self.name, device=device, slots=[
            AgentSlot(slot_id=s, models=models, owner=self.owners[s].shard, epoch=self.owners[s].epoch,
                      plans_open=self.open.get(s, 0))
            for s, models in sorted(self.slots.items())])
        self.kv(lambda: self.world.kv.buckets["members"].put(f"agent.{self.name}", beat), self._beat_done)

    def _beat_done(self, _result: object, error: Exception | None) -> None:
        """As gpu_agent/agent.py does: after failed heartbeats, publish the profiles again (the
        KV may have come back empty)."""
        if error is not None:
            self.failing = True
        elif self.failing:
            self.failing = False
            self.publish_profiles()

    def publish_profiles(self) -> None:
        """A mixed fleet's agents publish what they measured, `profiles.<model>.<agent>` in the
        state bucket, each put retried until it lands (gpu_agent/agent.py retries it too). A
        homogeneous seed publishes nothing: its coordinators plan on the models' own profiles."""
        case = self.world.case
        if not case.devices:
            return
        hosted = sorted({m for models in self.slots.values() for m in models})
        by_name = {m.name: m for m in case.models}
        for name in hosted:
            self._put_profile(f"profiles.{name}.{self.name}", case.profile(by_name[name], case.devices[self.name]))

    def _put_profile(self, key: str, profile: ModelProfile) -> None:
        def done(_result: object, error: Exception | None) -> None:
            if error is not None:
                incarnation = self.incarnation
                self.world.sim.after(S, lambda: self.arrive(incarnation, lambda: self._put_profile(key, profile)))

        self.kv(lambda: self.world.kv.buckets["state"].put(key, profile), done)

    def claim(self, slot: str, shard: str, epoch: int) -> bool:
        decision = decide_claim(self.owners[slot], shard, epoch)
        self.owners[slot] = decision.owner
        if decision.granted:
            self.world.checker.claim_granted(slot, epoch, shard, self.world.sim.now_ns)
        return decision.granted
