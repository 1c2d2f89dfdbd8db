"""Checkers for the control-plane simulator (issue 11 §4). They live outside the code under test
and judge only what happened: what was written to the KV, what agents granted, what each shard's
core held at every step, against the ground truth of which processes were alive.

1. No assignment without models is written while live shards exist.
2. Epochs only go up, and no two different assignments share an epoch.
3. Within a bound after the last membership change (or KV outage), every model is owned by one
   live shard, and every slot by a live shard whose agent is alive.
4. A slot is granted to at most one shard per epoch.
5. At every step, every slot in a shard's core can run every model in it.
6. Stickiness: a model moves only when its shard left or drained, or membership changed within
   the bound, or (autoscaled seeds) the load stepped within `load_bound_ns` (the balance rule
   may then act: what it reads changed).
With the autoscaler on (issue 13; load/sim/control_autoscale.py):
7. No agent is stopped while a plan is open or on its way to one of its slots, or while a shard
   that is alive (running, or paused with its heartbeat still in the KV) owns one or has a plan
   on it unreported; no plan reaches an agent the actuator stopped. Either loses requests.
8. A written assignment gives out only slots its coordinator's decision has active: never a
   draining or released one (unless asked for again, which makes it active first).
9. Every decision holds active + starting within [min_slots, pool].
10. Liveness: after the faults stop, with the load steady, the published decision converges
    within `autoscale_bound_ns` (nothing starting or draining, the target active, exactly the
    active slots' agents running) and stays so.
11. A slot whose plans are done, that no live shard holds, is not left draining longer than
    `drain_bound_ns` while the KV is up, a coordinator runs, a live shard exists and membership
    is unchanged. (With no live shard no assignment is written, as for check 3, and a slot
    leaves the assignment only by a new one: the newest still gives it away.)
With a mixed fleet (issue 16: agents of device classes, profiles at each class's speed):
13. Within the bound after the last membership change, no shard owns a slot of a class that
    cannot meet the SLO of one of the shard's models (best batch 0) while an agent of another
    class that can meet it hosts that model: such a model is served late on that slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.autoscale import choose_slots
from coordinator.core import RATE_HOLD_EPOCHS, CoordinatorTiming
from coordinator.slots import keep_hosts
from load.sim.control_autoscale import ACTUATOR_POLL_NS, PLAN_TIMEOUT_NS
from schemas.control import AUTOSCALE_KEY, Assignment, AutoscaleStatus
from shard.core.config import CoreConfig
from shard.core.latency import LatencyModel
from shard.core.ownership import Holding, hosting_violations
from shard.core.target_batch import best_batch

if TYPE_CHECKING:
    from load.sim.control import ControlCase, World

S = 1_000_000_000


def convergence_bound_ns(t: CoordinatorTiming) -> int:
    """Detection (a TTL of silence, plus the last heartbeat's period, plus a read that may be
    slow or fail), a leader change (lease, then a TTL to warm its view), an epoch, and slack
    for slow and failed calls."""
    return 2 * t.heartbeat_ttl_ns + t.heartbeat_ttl_ns // 3 + t.lease_ns + t.heartbeat_ttl_ns + t.epoch_ns + 6 * S


def drain_bound_ns(t: CoordinatorTiming) -> int:
    """From the moment a draining slot's plans are done and no shard holds it: three rounds of a
    heartbeat (a third of a TTL, plus a slow call of up to 2 s) reaching the leader and an epoch
    acting on it (the shards' quiet heartbeats, then the agent's `plans_open == 0`, then one
    for a failed decision write), two more epochs for failed reads, and slack."""
    return 3 * (t.heartbeat_ttl_ns // 3 + 2 * S + t.epoch_ns) + 2 * t.epoch_ns + 4 * S


def autoscale_bound_ns(case: ControlCase) -> int:
    """From the moment membership has settled after the faults (the load is steady by then):
    the down window must empty of older, higher recommendations and the down cool-down pass;
    then a drain (the longest plan, or its timeout, then `drain_bound_ns`) and the actuator's
    poll, or a start (the cold start, a TTL for the agent's heartbeat, two epochs). The hpa rule
    grows at most by 1/target per step and each step waits for the last to serve, so its up
    part counts once per slot of the pool."""
    a, t = case.autoscale, case.timing
    assert a is not None
    c = a.config
    pool = sum(len(slots) for slots in case.slots.values())
    window = int((c.down_window_s + c.down_cooldown_s + c.up_cooldown_s) * S) + t.epoch_ns
    drain = a.plan_ms_max * 1_000_000 + PLAN_TIMEOUT_NS + drain_bound_ns(t) + 2 * ACTUATOR_POLL_NS
    start = int(c.cold_start_s * S) + t.heartbeat_ttl_ns + 2 * t.epoch_ns + 2 * ACTUATOR_POLL_NS + 2 * S
    return window + drain + (pool if c.rule == "hpa" else 1) * start


class Checker:
    def __init__(self, case: ControlCase) -> None:
        self.case = case
        self.bound_ns = convergence_bound_ns(case.timing)
        self.violations: list[str] = []
        self.notes: dict[str, int] = {}
        self.last_epoch = 0
        self.epochs: dict[int, Assignment] = {}
        self.writes = 0
        self.moves = 0
        self.previous: Assignment | None = None
        self.changed_ns = 0  # the last membership change or outage end
        self.load_changed_ns = -(1 << 62)  # the last step of the load (autoscaled seeds only)
        self.split_changes = 0
        self.grants: dict[tuple[str, int], str] = {}
        self.decisions = 0
        self.stops = 0
        self.drain_ready: dict[str, int] = {}  # slot -> since when it is draining with nothing left
        self.leader: tuple[str, int] | None = None  # the leading coordinator and its tenure at the last sample
        self.leader_changed_ns = 0
        self.drain_bound_ns = drain_bound_ns(case.timing)
        self.barred = barred_slots(case)  # check 13: (model, slot) pairs the coordinator must not pair

    def fail(self, now_ns: int, message: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"t={now_ns / 1e9:.3f}s: {message}")

    def note(self, event: str) -> None:
        self.notes[event] = self.notes.get(event, 0) + 1

    def membership_changed(self, now_ns: int) -> None:
        self.changed_ns = now_ns

    def load_changed(self, now_ns: int) -> None:
        self.load_changed_ns = now_ns

    def load_bound_ns(self) -> int:
        """After a load step the placement's rates keep changing: the shards' meters follow at
        once, and a fall reaches the planning rate only after the coordinator's rate memory
        (RATE_HOLD_EPOCHS epochs and a TTL); then the convergence bound."""
        t = self.case.timing
        return RATE_HOLD_EPOCHS * t.epoch_ns + t.heartbeat_ttl_ns + self.bound_ns

    def stable(self, now_ns: int) -> bool:
        return now_ns - self.changed_ns >= self.bound_ns

    # ---- 1, 2, 6: what was written ---------------------------------------------------------------
    def assignment_written(self, world: World, new: Assignment, decided: AutoscaleStatus | None = None) -> None:
        now = world.sim.now_ns
        live = world.live_shards()
        self.writes += 1
        if self.case.autoscale is not None:
            inactive = sorted(set(new.slots) - set(decided.active if decided else ()))
            if inactive:
                self.fail(now, f"epoch {new.epoch} assigns slots {inactive} its decision does not have active "
                               f"({_phases(decided)})")
        if not new.models and live and self.case.models:
            self.fail(now, f"epoch {new.epoch} has no models while shards {sorted(live)} are live")
        if new.epoch <= self.last_epoch:
            self.fail(now, f"epoch {new.epoch} written after epoch {self.last_epoch}")
        if new.epoch in self.epochs and self.epochs[new.epoch] != new:
            self.fail(now, f"two different assignments at epoch {new.epoch}")
        self.epochs[new.epoch] = new
        self.last_epoch = max(self.last_epoch, new.epoch)
        previous, self.previous = self.previous, new
        if previous is None:
            return
        for model, shard in sorted(new.models.items()):
            old = previous.models.get(model)
            if old is None or old == shard:
                continue
            self.moves += 1
            if old in live and self.stable(now) and now - self.load_changed_ns >= self.load_bound_ns():
                self.fail(now, f"epoch {new.epoch} moved {model} from live {old} to {shard} with membership "
                               f"unchanged for {(now - self.changed_ns) / 1e9:.1f} s")
        self._split_changes(now, previous, new, live)

    def _split_changes(self, now: int, previous: Assignment, new: Assignment, live: set[str]) -> None:
        """Check 12 (issue 14): a split's shards are distinct (live once settled: `sample`), and
        with membership and load steady a split neither grows nor shrinks (no splitting and
        merging by turns)."""
        for model in sorted(new.splits):
            shards = new.splits[model]
            if len(set(shards)) != len(shards) or shards[0] != new.models.get(model):
                self.fail(now, f"epoch {new.epoch} splits {model} over {shards}, primary {new.models.get(model)}")
        for model in sorted(set(new.models) & set(previous.models)):
            old, now_split = previous.shards_of(model), new.shards_of(model)
            if old == now_split or not set(old) <= live or set(previous.slots) != set(new.slots):
                continue  # a split is as wide as the slots allow: slots the autoscaler adds widen it
            self.split_changes += 1
            if self.stable(now) and now - self.load_changed_ns >= self.load_bound_ns():
                self.fail(now, f"epoch {new.epoch} changed the split of {model} from {old} to {now_split} "
                               f"with membership unchanged for {(now - self.changed_ns) / 1e9:.1f} s")

    # ---- 3: convergence ---------------------------------------------------------------------------
    def sample(self, world: World) -> None:
        now = world.sim.now_ns
        if self.case.autoscale is not None:
            self.sample_draining(world)
        live = world.live_shards()
        if not self.stable(now) or not live or not any(c.running() for c in world.coordinators.values()):
            return  # nothing to converge to, or nobody to converge it
        entry = world.kv.buckets["state"].entries.get("assignment")
        if entry is None:
            self.fail(now, "no assignment while shards are live")
            return
        assignment: Assignment = entry.value
        agents = world.live_agents()
        for model in self.case.models:
            owners = assignment.shards_of(model.name)
            if not owners or not set(owners) <= live:
                self.fail(now, f"model {model.name} on {owners}, live shards {sorted(live)} (epoch {assignment.epoch})")
                return
        for slot, shard in sorted(assignment.slots.items()):
            if shard not in live or world.agent_of[slot] not in agents:
                self.fail(now, f"slot {slot} on {shard} (agent {world.agent_of[slot]}) is not live "
                               f"(epoch {assignment.epoch})")
                return
        for slot, shard in sorted(assignment.slots.items()):
            late = sorted(m for m in assignment.models_of(shard) if (m, slot) in self.barred)
            if late:
                self.fail(now, f"slot {slot} ({self.case.devices[world.agent_of[slot]]}) on {shard} cannot meet "
                               f"the SLO of {late}, which a faster class hosts (epoch {assignment.epoch})")
                return

    # ---- 4, 5: claims and cores ----------------------------------------------------------------------
    def claim_granted(self, slot: str, epoch: int, shard: str, now_ns: int = 0) -> None:
        holder = self.grants.setdefault((slot, epoch), shard)
        if holder != shard:
            self.fail(now_ns, f"slot {slot} granted to {holder} and {shard} at epoch {epoch}")

    def shard_holding(self, world: World, shard: str, holding: Holding) -> None:
        bad = hosting_violations(holding, world.hosts)
        if bad:
            self.fail(world.sim.now_ns, f"{shard} holds slots that cannot run its models: {bad[:3]}")

    def placeable(self, world: World) -> dict[str, frozenset[str]]:
        """What each slot may be given: its models, less those its class must not serve (13)."""
        if not self.barred:
            return world.hosts
        return {slot: frozenset(m for m in models if (m, slot) not in self.barred)
                for slot, models in world.hosts.items()}

    # ---- 7-11: autoscaling ----------------------------------------------------------------------
    def autoscale_decided(self, world: World, status: AutoscaleStatus) -> None:
        assert self.case.autoscale is not None
        self.decisions += 1
        config, slots = self.case.autoscale.config, len(world.agent_of)
        pool = min(config.max_slots, slots) if config.max_slots else slots
        held = len(status.active) + len(status.starting)
        if not min(config.min_slots, pool) <= held <= pool:
            self.fail(world.sim.now_ns, f"{status.coordinator} decided {held} slots active or starting, outside "
                                        f"[{config.min_slots}, {pool}] ({_phases(status)})")

    def agent_stopping(self, world: World, name: str) -> None:
        """The actuator is about to stop `name`: nothing may be in flight on its slots."""
        self.stops += 1
        agent, now = world.agents[name], world.sim.now_ns
        for slot in sorted(agent.slots):
            open_, transit = agent.open.get(slot, 0), world.traffic.in_transit.get(slot, 0)
            if open_ or transit:
                self.fail(now, f"agent {name} stopped with {open_} plans open and {transit} on their way to {slot}")
            for shard in self._holders(world, slot):
                self.fail(now, f"agent {name} stopped while {shard} holds {slot}")

    def plan_lost(self, world: World, shard: str, slot: str, stopped: bool) -> None:
        self.note("plan_lost")
        if stopped:
            self.fail(world.sim.now_ns, f"{shard} sent a plan to {slot} on {world.agent_of[slot]}, "
                                        f"which the actuator stopped")

    @staticmethod
    def _holders(world: World, slot: str) -> list[str]:
        """Shards alive (running, or paused with a heartbeat the KV still has) that own `slot` or
        have a plan on it unreported."""
        members = world.kv.buckets["members"]
        return [name for name, shard in sorted(world.shards.items())
                if shard.alive and (shard.running() or members._live(f"shard.{name}") is not None)  # noqa: SLF001
                and (slot in shard.holding.slots or slot in shard.in_flight.values())]

    def published(self, world: World) -> AutoscaleStatus | None:
        entry = world.kv.buckets["state"].entries.get(AUTOSCALE_KEY)
        return entry.value if entry is not None else None

    def sample_draining(self, world: World) -> None:
        """Check 11, every sample: how long each draining slot has had nothing left."""
        status, now = self.published(world), world.sim.now_ns
        leader = next(((n, c.core.tenure) for n, c in sorted(world.coordinators.items())
                       if c.alive and c.core.leading(now)), None)
        if leader != self.leader:
            # A new leader sees a draining slot quiet itself before it releases it (coordinator/
            # slots.py phases_from_status): the bound runs from the change, as from a member's.
            self.leader, self.leader_changed_ns = leader, now
        draining = set(status.draining) if status is not None else set()
        for slot in sorted(draining):
            agent = world.agents[world.agent_of[slot]]
            done = (agent.alive and not agent.open.get(slot, 0) and not world.traffic.in_transit.get(slot, 0)
                    and not self._holders(world, slot) and not world.kv.in_outage(now)
                    and any(c.running() for c in world.coordinators.values()) and bool(world.live_shards()))
            if not done:
                self.drain_ready.pop(slot, None)
                continue
            since = max(self.drain_ready.setdefault(slot, now), self.changed_ns, self.leader_changed_ns)
            if now - since > self.drain_bound_ns:
                self.fail(now, f"{slot} still draining {(now - since) / 1e9:.1f} s after its plans were done")
                self.drain_ready[slot] = now
        for slot in set(self.drain_ready) - draining:
            del self.drain_ready[slot]

    def autoscale_converged(self, world: World) -> str:
        """Check 10's condition; empty when it holds, else why not. Like check 3, it asks nothing
        of a cluster without a live shard (no assignment can take a slot out then)."""
        status = self.published(world)
        if not world.live_shards():
            return ""
        if status is None:
            return "no decision published"
        if status.starting or status.draining:
            return f"slots still moving ({_phases(status)})"
        if len(status.active) < status.target_slots or (
                len(status.active) > status.target_slots and _drainable(status, self.placeable(world))):
            return f"{len(status.active)} active for a target of {status.target_slots}"
        running = {name for name, agent in world.agents.items() if agent.alive}
        serving = {world.agent_of[slot] for slot in status.active}
        if running != serving:
            return f"agents running {sorted(running)}, serving {sorted(serving)} ({_phases(status)})"
        return ""


def _drainable(status: AutoscaleStatus, hosts: dict[str, frozenset[str]]) -> list[str]:
    """Active slots beyond the target that may still go: more active than the target is
    converged only when every extra one is the last host of some model (coordinator.slots.keep_hosts).
    The published lists are in the leader's preference order: the natural one, or in a mixed
    fleet the faster classes first (seed 192: the slow slot, last host of two models, stays)."""
    active = set(status.active)
    _start, drain = choose_slots(list(status.active), status.target_slots, active, set(), set())
    return keep_hosts(drain, active, hosts)


def _phases(status: AutoscaleStatus | None) -> str:
    if status is None:
        return "no decision"
    return (f"target {status.target_slots}, active {status.active}, starting {status.starting}, "
            f"draining {status.draining}, released {status.released}")


def barred_slots(case: ControlCase) -> frozenset[tuple[str, str]]:
    """Check 13's ground truth: (model, slot) where the slot's class meets the model's SLO at no
    batch while some agent of another class that hosts the model meets it. Judged from the case
    (the profiles the agents publish), on the shards' default core configuration."""
    if not case.devices:
        return frozenset()
    config = CoreConfig()

    def fits(model: str, device: str) -> bool:
        settings = next(m for m in case.models if m.name == model)
        latency = LatencyModel(case.profile(settings, device))
        return best_batch(latency, int(settings.slo_ms * 1e6), config.resp_ns, config.ctrl_ns, config.data_ns) > 0

    hosted = {(m, case.devices[agent]) for agent, slots in case.slots.items() for models in slots.values()
              for m in models}
    feasible = {pair for pair in hosted if fits(*pair)}
    return frozenset((m, slot) for agent, slots in case.slots.items() for slot, models in slots.items()
                     for m in models if (m, case.devices[agent]) not in feasible
                     and any(f_model == m for f_model, _device in feasible))
