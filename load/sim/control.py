"""The control plane in virtual time (issue 11 §4): coordinators, shard followers and agents
against a simulated KV with injected anomalies, members joining, leaving, pausing and draining.
The coordinators run the live decision code (coordinator/core.py), the shards plan ownership
changes with the live planner (shard/core/ownership.py), the agents grant claims with the live
fencing rule (gpu_agent/fencing.py); only the I/O around them is simulated. The checkers
(load/sim/control_checks.py) watch the outcome. One seed draws the whole run; a failure names
the command that replays it: `symphony sim control --seed N`.
"""

from __future__ import annotations

import random

import msgspec

from coordinator.core import (
    AssignmentRead,
    AssignmentSeen,
    AssignmentWritten,
    Command,
    CoordinatorCore,
    CoordinatorTiming,
    DrainUpdate,
    Event,
    LeaseOutcome,
    LeaseResult,
    MemberRead,
    MemberUpdate,
    Note,
    ReadAssignment,
    ReadMember,
    ReleaseLease,
    RenewLease,
    RestartWatches,
    TakeLease,
    Tick,
    WriteAssignment,
    WriteOutcome,
)
from coordinator.epoch import ModelSettings
from coordinator.membership import ReadOutcome
from coordinator.placement import PlacementConfig
from gpu_agent.fencing import SlotOwner, decide_claim
from load.sim.control_checks import Checker
from load.sim.control_kv import MS, S, Anomalies, Entry, KVError, NotFound, Sim, SimKV, WrongLast
from schemas.control import AgentHeartbeat, AgentSlot, Assignment, ModelLoad, ShardHeartbeat
from shard.core.config import CoreConfig
from shard.core.ownership import AddModel, ClaimSlot, Holding, RemoveModel, RemoveSlot, apply_step, plan_release, plan_transition

TICK_NS = 250 * MS
POLL_NS = 200 * MS
CLAIM_TIMEOUT_NS = 2 * S
HANDOVER_GRACE_NS = 1 * S


class ControlCase(msgspec.Struct, frozen=True, kw_only=True):
    seed: int
    models: list[ModelSettings]
    rates: dict[str, float]  # what shards report for a model they hold (after their meter warms up)
    slots: dict[str, dict[str, list[str]]]  # agent -> slot -> models it runs
    shards: int
    coordinators: int
    timing: CoordinatorTiming
    anomalies: Anomalies
    faults: list[tuple[int, str]]  # (at_ns, kind); the target is drawn when it fires
    duration_ns: int  # then every process comes back and the run settles, with no more faults


class ControlResult(msgspec.Struct, kw_only=True):
    seed: int
    violations: list[str]
    epochs_written: int
    model_moves: int
    notes: dict[str, int]
    trace: list[str] = []  # with trace=True: faults and the coordinators' notes, timed

    @property
    def ok(self) -> bool:
        return not self.violations


# ---- actors -------------------------------------------------------------------------------------
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
        self.core = CoordinatorCore(self.name, w.case.models, w.case.timing, core=CoreConfig(),
                                    placement=PlacementConfig(), now_ns=w.sim.now_ns)
        self.watches: list = []
        self._restart_watches()
        self.every(TICK_NS, lambda: self.feed(Tick()))

    def crash(self) -> None:
        self.alive = False
        for watch in self.watches:
            watch.stop()

    def feed(self, event: Event) -> None:
        for command in self.core.handle(event, self.world.sim.now_ns):
            self.execute(command)

    def _restart_watches(self) -> None:
        for watch in self.watches:
            watch.stop()
        incarnation = self.incarnation
        members, state = self.world.kv.buckets["members"], self.world.kv.buckets["state"]

        def on_member(entry: Entry | None, key: str) -> None:
            event = MemberUpdate(key=key, heartbeat=entry.value if entry else None,
                                 revision=entry.revision if entry else 0)
            self.arrive(incarnation, lambda: self.feed(event))

        def on_state(entry: Entry | None, key: str) -> None:
            event: Event | None = None
            if key.startswith("drain."):
                event = DrainUpdate(shard=key.split(".", 1)[1], draining=entry is not None)
            elif key == "assignment" and entry is not None:
                event = AssignmentSeen(assignment=entry.value)
            if event is not None:
                self.arrive(incarnation, lambda: self.feed(event))

        self.watches = [members.watch(on_member), state.watch(on_state)]

    def execute(self, command: Command) -> None:
        buckets = self.world.kv.buckets
        match command:
            case Note(event=event, fields=fields):
                self.world.checker.note(event)
                self.world.log(f"{self.name} {event} {fields if fields else ''}")
            case RestartWatches():
                self._restart_watches()
            case TakeLease():
                self.kv(lambda: buckets["leader"].create("leader", self.name), self._lease_done)
            case RenewLease(revision=revision):
                self.kv(lambda: buckets["leader"].update("leader", self.name, revision), self._lease_done)
            case ReleaseLease(revision=revision):
                self.kv(lambda: buckets["leader"].delete("leader", revision), lambda _r, _e: None)
            case ReadMember(key=key):
                self.kv(lambda: buckets["members"].get(key), lambda r, e: self.feed(_member_read(key, r, e)))
            case ReadAssignment(shards=shards):
                def read() -> tuple:
                    state = buckets["state"]
                    drains = frozenset(s for s in shards if f"drain.{s}" in state.entries)
                    try:
                        return state.get("assignment"), drains
                    except NotFound:
                        return None, drains
                self.kv(read, lambda r, e: self.feed(_assignment_read(r, e)))
            case WriteAssignment(assignment=new, revision=revision):
                def write() -> int:
                    state = buckets["state"]
                    written = state.update("assignment", new, revision) if revision else state.create("assignment", new)
                    self.world.checker.assignment_written(self.world, new)
                    return written
                self.kv(write, lambda r, e: self.feed(AssignmentWritten(outcome=_write_outcome(e))))
            case _:
                raise AssertionError(f"unknown command {command!r}")

    def _lease_done(self, revision: int | None, error: Exception | None) -> None:
        if isinstance(error, KVError):
            self.feed(LeaseResult(outcome=LeaseOutcome.FAILED))
        elif error is not None:
            self.feed(LeaseResult(outcome=LeaseOutcome.TAKEN_ELSEWHERE))
        else:
            self.feed(LeaseResult(outcome=LeaseOutcome.HELD, revision=revision))


def _member_read(key: str, entry: Entry | None, error: Exception | None) -> MemberRead:
    if isinstance(error, NotFound):
        return MemberRead(key=key, outcome=ReadOutcome.NOT_FOUND)
    if error is not None:
        return MemberRead(key=key, outcome=ReadOutcome.FAILED)
    return MemberRead(key=key, outcome=ReadOutcome.FOUND, heartbeat=entry.value, revision=entry.revision)


def _assignment_read(result: tuple | None, error: Exception | None) -> AssignmentRead:
    if error is not None:
        return AssignmentRead(assignment=None, revision=0, failed=True)
    entry, drains = result
    if entry is None:
        return AssignmentRead(assignment=None, revision=0, drains=drains)
    return AssignmentRead(assignment=entry.value, revision=entry.revision, drains=drains)


def _write_outcome(error: Exception | None) -> WriteOutcome:
    if error is None:
        return WriteOutcome.WRITTEN
    return WriteOutcome.RACED if isinstance(error, WrongLast) else WriteOutcome.FAILED


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
        self.every(self.world.case.timing.heartbeat_ttl_ns // 3, self.heartbeat)
        self.every(POLL_NS, self.poll)

    def crash(self) -> None:
        self.alive = False
        self.holding = Holding()
        self.world.checker.shard_holding(self.world, self.name, self.holding)

    def leave(self) -> None:
        """A clean stop: release everything, say goodbye."""
        self.world.kv.call(lambda: self.world.kv.buckets["members"].delete(f"shard.{self.name}"), lambda _r, _e: None)
        self.crash()

    def heartbeat(self) -> None:
        now = self.world.sim.now_ns
        # A model's rate meter needs a moment after the model arrives: 0 until then.
        loads = {m: ModelLoad(rate_rps=self.world.case.rates[m] if now - self.gained_ns.get(m, 0) > 2 * S else 0.0,
                              pending=0) for m in sorted(self.holding.models)}
        beat = ShardHeartbeat(shard_id=self.name, models=loads, epoch=self.epoch)
        self.kv(lambda: self.world.kv.buckets["members"].put(f"shard.{self.name}", beat), lambda _r, _e: None)

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
        models = frozenset(m for m, s in assignment.models.items() if s == me)
        slots = frozenset(slot for slot, s in assignment.slots.items() if s == me)
        transition = plan_transition(self.holding, models, slots, self.world.hosts)
        if assignment.epoch == self.epoch and not transition.steps:
            return
        self.epoch = assignment.epoch
        self.models = models
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
        self.every(self.world.case.timing.heartbeat_ttl_ns // 3, self.heartbeat)

    def crash(self) -> None:
        self.alive = False

    def heartbeat(self) -> None:
        beat = AgentHeartbeat(agent_id=self.name, device="sim", slots=[
            AgentSlot(slot_id=s, models=models, owner=self.owners[s].shard, epoch=self.owners[s].epoch)
            for s, models in sorted(self.slots.items())])
        self.kv(lambda: self.world.kv.buckets["members"].put(f"agent.{self.name}", beat), lambda _r, _e: None)

    def claim(self, slot: str, shard: str, epoch: int) -> bool:
        decision = decide_claim(self.owners[slot], shard, epoch)
        self.owners[slot] = decision.owner
        if decision.granted:
            self.world.checker.claim_granted(slot, epoch, shard, self.world.sim.now_ns)
        return decision.granted


# ---- the world ----------------------------------------------------------------------------------
class World:
    def __init__(self, case: ControlCase, *, trace: bool = False) -> None:
        self.case = case
        self.trace: list[str] | None = [] if trace else None
        self.sim = Sim(case.seed)
        self.rng = random.Random(case.seed * 7919 + 1)
        self.kv = SimKV(self.sim, case.anomalies, ttl_ns=case.timing.heartbeat_ttl_ns, lease_ns=case.timing.lease_ns,
                        rng=random.Random(case.seed * 7919 + 2))
        self.hosts = {slot: frozenset(models) for slots in case.slots.values() for slot, models in slots.items()}
        self.agent_of = {slot: agent for agent, slots in case.slots.items() for slot in slots}
        self.checker = Checker(case)
        self.drained: set[str] = set()
        self.coordinators = {f"c{i}": SimCoordinator(self, f"c{i}") for i in range(case.coordinators)}
        self.shards = {f"shard-{i}": SimShard(self, f"shard-{i}") for i in range(case.shards)}
        self.agents = {name: SimAgent(self, name, slots) for name, slots in sorted(case.slots.items())}
        self._membership = self._ground_truth()
        for at_ns, kind in case.faults:
            self.sim.at(at_ns, lambda kind=kind: self.fault(kind))
        for start, end in case.anomalies.outages:
            self.sim.at(end, lambda: self.checker.membership_changed(self.sim.now_ns))
        self._sample()

    # ---- ground truth -------------------------------------------------------------------------
    def live_shards(self) -> set[str]:
        return {n for n, s in self.shards.items() if s.running() and n not in self.drained}

    def live_agents(self) -> set[str]:
        return {n for n, a in self.agents.items() if a.running()}

    def _ground_truth(self) -> tuple:
        """Who is alive, and whose heartbeat the KV lost while it ran (outside outages, a real
        departure the coordinator is right to act on)."""
        now = self.sim.now_ns
        members = self.kv.buckets["members"]
        outage = self.kv.in_outage(now) or any(
            end <= now < end + self.case.timing.heartbeat_ttl_ns for _s, end in self.case.anomalies.outages)
        expired = () if outage else tuple(sorted(
            key for key in [*(f"shard.{n}" for n in self.live_shards()), *(f"agent.{n}" for n in self.live_agents())]
            if members._live(key) is None))  # noqa: SLF001 - the checker reads the server's truth
        running = tuple(sorted(n for n, c in self.coordinators.items() if c.running()))
        return tuple(sorted(self.live_shards())), tuple(sorted(self.live_agents())), running, expired

    def _membership_check(self) -> None:
        truth = self._ground_truth()
        if truth != self._membership:
            self._membership = truth
            self.checker.membership_changed(self.sim.now_ns)

    def _sample(self) -> None:
        self._membership_check()
        self.checker.sample(self)
        self.sim.after(100 * MS, self._sample)

    # ---- claims ----------------------------------------------------------------------------------
    def claim(self, shard: SimShard, slot: str, epoch: int, done) -> None:  # noqa: ANN001
        """A claim request to the slot's agent; `done(granted)` exactly once, False on timeout."""
        agent = self.agents[self.agent_of[slot]]
        answered = [False]
        incarnation = shard.incarnation

        def answer(granted: bool) -> None:
            if not answered[0]:
                answered[0] = True
                shard.arrive(incarnation, lambda: done(granted))

        def at_agent() -> None:
            granted = agent.claim(slot, shard.name, epoch)
            self.sim.after(MS, lambda: answer(granted))

        self.sim.after(MS, lambda: agent.arrive(agent.incarnation, at_agent))
        self.sim.after(CLAIM_TIMEOUT_NS, lambda: answer(False))

    # ---- faults ------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.sim.now_ns / 1e9:9.3f} {line}")

    def fault(self, kind: str) -> None:
        """One fault; its target is drawn now, among the processes it can apply to."""
        rng, timing = self.rng, self.case.timing
        alive_shards = [n for n, p in self.shards.items() if p.alive]
        dead_shards = [n for n, p in self.shards.items() if not p.alive]
        if kind == "shard_start" and (not dead_shards or rng.random() < 0.5):
            name = f"shard-{len(self.shards)}"
            self.log(f"fault {kind} {name} (new)")
            self.shards[name] = SimShard(self, name)
            self._membership_check()
            return
        candidates, act = {
            "shard_crash": (alive_shards, lambda n: self.shards[n].crash()),
            "shard_leave": (alive_shards, lambda n: self.shards[n].leave()),
            "shard_start": (dead_shards, lambda n: self.shards[n].start()),
            "shard_pause": (self.live_shards(), lambda n: self.shards[n].pause(rng.randrange(2 * timing.heartbeat_ttl_ns))),
            "agent_crash": (self.live_agents(), lambda n: self.agents[n].crash()),
            "agent_start": ([n for n, p in self.agents.items() if not p.alive], lambda n: self.agents[n].start()),
            "agent_pause": (self.live_agents(), lambda n: self.agents[n].pause(rng.randrange(2 * timing.heartbeat_ttl_ns))),
            "coordinator_crash": ([n for n, p in self.coordinators.items() if p.alive],
                                  lambda n: self.coordinators[n].crash()),
            "coordinator_start": ([n for n, p in self.coordinators.items() if not p.alive],
                                  lambda n: self.coordinators[n].start()),
            "coordinator_pause": ([n for n, p in self.coordinators.items() if p.running()],
                                  lambda n: self.coordinators[n].pause(rng.randrange(3 * timing.lease_ns))),
            "drain": (self.live_shards(), self._drain),
            "undrain": (self.drained, self._undrain),
        }[kind]
        names = sorted(candidates)
        if names:
            name = rng.choice(names)
            self.log(f"fault {kind} {name}")
            act(name)
            self._membership_check()

    def _drain(self, name: str, draining: bool = True) -> None:
        """The operator's `symphony drain [--undo]`: retried until the KV takes it; the shard
        counts as drained from the moment the mark is written."""
        state = self.kv.buckets["state"]

        def write() -> None:
            if draining:
                state.put(f"drain.{name}", True)
                self.drained.add(name)
            else:
                state.delete(f"drain.{name}")
                self.drained.discard(name)
            self._membership_check()

        def done(_result: object, error: Exception | None) -> None:
            if error is not None:
                self.sim.after(S, lambda: self.kv.call(write, done))

        self.kv.call(write, done)

    def _undrain(self, name: str) -> None:
        self._drain(name, draining=False)


FAULT_KINDS = ["shard_crash", "shard_leave", "shard_start", "shard_start", "shard_pause", "agent_crash",
               "agent_start", "agent_start", "agent_pause", "coordinator_crash", "coordinator_start",
               "coordinator_pause", "drain", "undrain"]


def draw_case(seed: int, *, duration_s: float = 60.0) -> ControlCase:
    rng = random.Random(seed)
    classes = rng.randint(1, 3)
    models = [ModelSettings(name=f"m{i}", slo_ms=rng.choice([25.0, 50.0, 100.0, 300.0]),
                            kind=f"sleep:{rng.choice([20, 400, 1082])},{rng.choice([500, 5204])}", batch_size_max=64)
              for i in range(rng.randint(classes, 6))]
    class_of = {m.name: i % classes for i, m in enumerate(models)}
    slots: dict[str, dict[str, list[str]]] = {}
    for a in range(rng.randint(classes, 4)):
        cls = a % classes
        slots[f"agent-{a}"] = {f"a{a}s{k}": sorted(n for n, c in class_of.items() if c == cls)
                               for k in range(rng.randint(1, 3))}
    ttl_s = rng.choice([1.5, 3.0])
    timing = CoordinatorTiming(epoch_ns=int(rng.choice([1.0, 2.0, 5.0]) * S), lease_ns=int(ttl_s * S),
                               heartbeat_ttl_ns=int(ttl_s * S))
    intensity = rng.random()
    duration_ns = int(duration_s * S)
    outages = []
    t = rng.uniform(5, 30) * S
    while rng.random() < 0.6 * intensity + 0.2:
        length = int(rng.uniform(2, 10) * S)
        if t + length >= duration_ns:
            break
        outages.append((int(t), int(t) + length))
        t += length + rng.uniform(10, 40) * S
    anomalies = Anomalies(
        fail_p=0.05 * intensity, slow_p=0.02 * intensity, stale_read_p=0.05 * intensity,
        cas_race_p=0.03 * intensity, watch_lag_ns=int(rng.choice([1, 5, 50]) * MS),
        watch_death_p=0.01 * intensity, snapshot_partial_p=0.5 * intensity, outages=outages)
    faults = []
    t = rng.uniform(3, 10)
    while t < duration_s:
        faults.append((int(t * S), rng.choice(FAULT_KINDS)))
        t += rng.expovariate(1 / (4 + 16 * (1 - intensity)))
    return ControlCase(seed=seed, models=models, rates={m.name: rng.choice([0.0, 20.0, 300.0, 2000.0]) for m in models},
                       slots=slots, shards=rng.randint(1, 4), coordinators=rng.randint(1, 3), timing=timing,
                       anomalies=anomalies, faults=faults, duration_ns=duration_ns)


SETTLE_NS_MAX = 120 * S


def run_case(case: ControlCase, *, trace: bool = False) -> ControlResult:
    world = World(case, trace=trace)
    world.sim.run_until(case.duration_ns)
    # Settle: every process that is down comes back, no more faults or outages; once membership
    # has been stable for the bound, the last check must hold.
    for process in [*world.coordinators.values(), *world.shards.values(), *world.agents.values()]:
        if not process.alive:
            process.start()
    world._membership_check()  # noqa: SLF001
    c = world.checker
    while not c.stable(world.sim.now_ns) and world.sim.now_ns < case.duration_ns + SETTLE_NS_MAX:
        world.sim.run_until(world.sim.now_ns + S)
    if not c.stable(world.sim.now_ns):
        c.fail(world.sim.now_ns, "membership never settled")
    world.sim.run_until(world.sim.now_ns + S)  # a sample taken while stable

    return ControlResult(seed=case.seed, violations=c.violations, epochs_written=c.writes, model_moves=c.moves,
                         notes=dict(sorted(c.notes.items())), trace=world.trace or [])


def run_control_seed(seed: int, *, duration_s: float = 60.0, trace: bool = False) -> ControlResult:
    return run_case(draw_case(seed, duration_s=duration_s), trace=trace)
