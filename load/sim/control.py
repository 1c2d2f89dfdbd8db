"""The control plane in virtual time (issue 11 §4): coordinators, shard followers and agents
against a simulated KV with injected anomalies, members joining, leaving, pausing and draining.
The coordinators run the live decision code (coordinator/core.py), the shards plan ownership
changes with the live planner (shard/core/ownership.py), the agents grant claims with the live
fencing rule (gpu_agent/fencing.py); only the I/O around them is simulated. The checkers
(load/sim/control_checks.py) watch the outcome. One seed draws the whole run; a failure names
the command that replays it: `symphony sim control --seed N`. About a third of the seeds draw a
mixed fleet (issue 16, `draw_classes`): agents of device classes that publish their profiles at
their class's speed, which the coordinators place by.
"""

from __future__ import annotations

import random

import msgspec

from coordinator.core import CoordinatorTiming
from coordinator.epoch import ModelSettings
from load.sim.control_actors import CLAIM_TIMEOUT_NS, SimAgent, SimCoordinator, SimShard
from load.sim.control_autoscale import AutoscaleCase, PlanTraffic, SimActuator, draw_autoscale
from load.sim.control_checks import Checker, autoscale_bound_ns
from load.sim.control_kv import MS, Anomalies, S, Sim, SimKV
from schemas.profile import ModelProfile


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
    autoscale: AutoscaleCase | None = None  # the autoscaler on, with an actuator, plans and a changing load
    shard_rps_max: float = 0.0  # > 0: models arriving faster are split across shards (issue 14)
    # A mixed fleet (issue 16): agent -> its device class, and class -> how fast it runs each
    # model against the model's nominal profile. Empty: one class ("sim"), no profiles published.
    devices: dict[str, str] = {}
    speeds: dict[str, float] = {}

    def profile(self, model: ModelSettings, device: str) -> ModelProfile:
        """What an agent of `device` measures for `model` (and publishes)."""
        profile = model.fallback_profile().at_speed(self.speeds[device])
        return msgspec.structs.replace(profile, device=device)


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
        self.traffic = PlanTraffic(self, case.autoscale) if case.autoscale else None
        self.coordinators = {f"c{i}": SimCoordinator(self, f"c{i}") for i in range(case.coordinators)}
        self.shards = {f"shard-{i}": SimShard(self, f"shard-{i}") for i in range(case.shards)}
        self.agents = {name: SimAgent(self, name, slots) for name, slots in sorted(case.slots.items())}
        self.actuator = SimActuator(self, case.autoscale) if case.autoscale else None
        self._membership = self._ground_truth()
        for at_ns, kind in case.faults:
            self.sim.at(at_ns, lambda kind=kind: self.fault(kind))
        for at_ns, _factor in case.autoscale.steps if case.autoscale else ():
            self.sim.at(at_ns, lambda: self.checker.load_changed(self.sim.now_ns))
        for _start, end in case.anomalies.outages:
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

    def membership_check(self) -> None:
        truth = self._ground_truth()
        if truth != self._membership:
            self._membership = truth
            self.checker.membership_changed(self.sim.now_ns)

    def _sample(self) -> None:
        self.membership_check()
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
            self.membership_check()
            return
        candidates, act = {
            "shard_crash": (alive_shards, lambda n: self.shards[n].crash()),
            "shard_leave": (alive_shards, lambda n: self.shards[n].leave()),
            "shard_start": (dead_shards, lambda n: self.shards[n].start()),
            "shard_pause": (self.live_shards(),
                            lambda n: self.shards[n].pause(rng.randrange(2 * timing.heartbeat_ttl_ns))),
            "agent_crash": (self.live_agents(), lambda n: self.agents[n].crash()),
            "agent_start": ([n for n, p in self.agents.items() if not p.alive], lambda n: self.agents[n].start()),
            "agent_pause": (self.live_agents(),
                            lambda n: self.agents[n].pause(rng.randrange(2 * timing.heartbeat_ttl_ns))),
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
            self.membership_check()

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
            self.membership_check()

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
    rates = {m.name: rng.choice([0.0, 20.0, 300.0, 2000.0]) for m in models}
    devices, speeds = draw_classes(seed, sorted(slots))
    return ControlCase(seed=seed, models=models, rates=rates, slots=slots, shards=rng.randint(1, 4),
                       coordinators=rng.randint(1, 3), timing=timing, anomalies=anomalies, faults=faults,
                       duration_ns=duration_ns, autoscale=draw_autoscale(
                           seed, models, rates, sum(len(s) for s in slots.values()), duration_ns),
                       shard_rps_max=random.Random(seed ^ SPLIT_SEED).choice([0.0, 0.0, 250.0, 900.0]),
                       devices=devices, speeds=speeds)


SPLIT_SEED = 0x5B117  # the split budget draws from its own stream: the seeds drawn before it stay as they were

# Issue 16: device classes and their speed against a model's nominal profile. At a quarter or a
# tenth of the speed the tight-SLO models meet their SLO at no batch, so the coordinator must
# keep them off those slots wherever a faster class hosts them (check 13).
CLASS_SPEEDS = {"fast": 2.0, "base": 1.0, "slow": 0.25, "old": 0.1}
CLASS_MIXES = [["fast", "base"], ["fast", "slow"], ["base", "slow"], ["fast", "base", "slow"], ["fast", "old"],
               ["base", "old"], ["fast", "base", "old"]]
MIXED_P = 0.4


def draw_classes(seed: int, agents: list[str]) -> tuple[dict[str, str], dict[str, float]]:
    """A mixed fleet for some seeds (agent -> device, device -> speed), else none. From its own
    random stream, so a seed drawn homogeneous runs exactly as before the classes existed. Every
    class drawn has an agent when there are enough agents; one agent is never mixed."""
    rng = random.Random(f"{seed}:classes")
    if len(agents) < 2 or rng.random() >= MIXED_P:
        return {}, {}
    names = rng.choice(CLASS_MIXES)
    order = rng.sample(agents, len(agents))
    devices = {agent: names[i] if i < len(names) else rng.choice(names) for i, agent in enumerate(order)}
    return dict(sorted(devices.items())), {name: CLASS_SPEEDS[name] for name in sorted(set(devices.values()))}


SETTLE_NS_MAX = 120 * S


def run_case(case: ControlCase, *, trace: bool = False) -> ControlResult:
    world = World(case, trace=trace)
    world.sim.run_until(case.duration_ns)
    # Settle: every process that is down comes back (agents, with the autoscaler, only as its
    # actuator starts them), no more faults or outages; once membership has been stable for the
    # bound, the last check must hold, and the autoscaler must have converged (check 10).
    agents = [] if case.autoscale else list(world.agents.values())
    for process in [*world.coordinators.values(), *world.shards.values(), *agents]:
        if not process.alive:
            process.start()
    world.membership_check()
    c = world.checker
    scaling_ns = autoscale_bound_ns(case) if case.autoscale else 0
    deadline = case.duration_ns + c.bound_ns + scaling_ns
    # Converged means it stays so: for the down window and cool-down (an older, higher
    # recommendation may still be in the window and then let the target fall) and two epochs.
    hold_ns = _hold_ns(case)
    since: int | None = None
    leader, leader_since_ns = _leader(world), world.sim.now_ns
    while world.sim.now_ns < case.duration_ns + SETTLE_NS_MAX + scaling_ns:
        if _leader(world) != leader:
            # A new leader re-derives the slots' phases from what it sees (released ones are
            # drained again), so convergence is asked of a leader that stays (seed 851: the
            # KV's slow lease writes handed leadership back and forth every 5-8 s).
            leader, leader_since_ns = _leader(world), world.sim.now_ns
            deadline = max(deadline, leader_since_ns + scaling_ns)
        settled = c.stable(world.sim.now_ns) and not (case.autoscale and c.autoscale_converged(world))
        since = (since if since is not None else world.sim.now_ns) if settled else None
        if since is not None and world.sim.now_ns - max(since, leader_since_ns) >= hold_ns:
            break
        world.sim.run_until(world.sim.now_ns + S)
    leader_stable = world.sim.now_ns - leader_since_ns >= hold_ns
    if not c.stable(world.sim.now_ns):
        c.fail(world.sim.now_ns, "membership never settled")
    elif case.autoscale and not leader_stable:
        c.note("autoscale_leader_never_settled")  # liveness is asked of a leader that stays
    elif case.autoscale and (why := c.autoscale_converged(world)):
        c.fail(world.sim.now_ns, f"the autoscaler did not converge: {why}")
    elif case.autoscale and world.sim.now_ns - hold_ns > deadline:
        c.fail(world.sim.now_ns, f"the autoscaler converged {(world.sim.now_ns - deadline) / 1e9:.1f} s "
                                 f"after its bound")
    world.sim.run_until(world.sim.now_ns + S)  # a sample taken while stable
    leader_stable = leader_stable and _leader(world) == leader
    # Unless membership changed meanwhile (seed 477: an agent's heartbeat aged out under the KV's
    # failed writes and came back; the leader rightly asked for a slot in its place).
    if case.autoscale and leader_stable and c.stable(world.sim.now_ns) and (why := c.autoscale_converged(world)):
        c.fail(world.sim.now_ns, f"the autoscaler left its converged state: {why}")

    return ControlResult(seed=case.seed, violations=c.violations, epochs_written=c.writes, model_moves=c.moves,
                         notes=dict(sorted(c.notes.items())), trace=world.trace or [])


def _leader(world: World) -> tuple[str, int] | None:
    """The coordinator that leads now and its tenure, if one does (a tenure starts from the
    newest published phases, so losing and taking the lead again is a change too)."""
    now = world.sim.now_ns
    return next(((name, c.core.tenure) for name, c in sorted(world.coordinators.items())
                 if c.alive and c.core.leading(now)), None)


def _hold_ns(case: ControlCase) -> int:
    if case.autoscale is None:
        return 0
    c = case.autoscale.config
    return int((c.down_window_s + c.down_cooldown_s) * S) + 2 * case.timing.epoch_ns


def run_control_seed(seed: int, *, duration_s: float = 60.0, trace: bool = False) -> ControlResult:
    return run_case(draw_case(seed, duration_s=duration_s), trace=trace)
