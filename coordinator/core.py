"""The coordinator's control logic as a state machine without I/O (issue 11 §4): events in, with
an explicit `now_ns`; commands out, for a shell to carry out against JetStream KV and feed the
results back as events. The live service (coordinator/service.py) and the control-plane
simulator (load/sim/control.py) drive this same class.

Idea. Leadership is a lease: a key created with compare-and-swap in a bucket whose entries age
out, renewed every third of its life. This coordinator counts itself leader only until the lease
it last wrote could have aged out, measured from when it *sent* the write, so a paused leader
stops acting before a standby can take over. Each epoch period, and at once when the live
members change, the leader reads the assignment, decides the next one (coordinator/epoch.py)
and writes it with compare-and-swap on the revision it read, so two coordinators that both think
they lead can never both write, and epochs only go up. Membership comes from the coordinator's
own view (coordinator/membership.py), which only grows from what it observes and shrinks only on
evidence; a coordinator decides nothing about departures before its view has watched for a TTL.

Autoscaling (issue 13): with an `AutoscaleConfig`, each epoch first runs the autoscaler
(coordinator/autoscale.py `decide`) on the shards' and agents' heartbeats, moves the slots
through their phases (coordinator/slots.py: active, starting, draining, released), places only
the active slots, and publishes the decision (`WriteAutoscale`) for any actuator.
"""

from __future__ import annotations

import enum

import msgspec

from coordinator.autoscale import AutoscaleConfig, AutoscaleState, decide
from coordinator.epoch import (
    EpochInputs,
    ModelSettings,
    decide_epoch,
    fleet_for_autoscaler,
    membership_of,
    model_demands,
    shard_rates,
    slot_classes,
)
from coordinator.membership import Heartbeat, MemberView, ReadOutcome
from coordinator.placement import PlacementConfig, rank_slots
from coordinator.rates import RateMemory
from coordinator.slots import (
    SlotPhases,
    apply_target,
    autoscale_signal,
    autoscale_status,
    held_slots,
    observe,
    phases_from_status,
    present_slots,
)
from schemas.control import AgentHeartbeat, Assignment, AutoscaleStatus, freshest, preference_order
from schemas.profile import ModelProfile
from shard.core.config import CoreConfig

RATE_HOLD_EPOCHS = 3  # a model's planning rate falls only after this many epochs lower (plus a TTL)


class CoordinatorTiming(msgspec.Struct, frozen=True, kw_only=True):
    epoch_ns: int
    lease_ns: int
    heartbeat_ttl_ns: int


# ---- events: what the shell tells the core ---------------------------------------------------
class Tick(msgspec.Struct, frozen=True):
    """Periodic: time passed."""


class LeaseOutcome(enum.Enum):
    HELD = "held"  # created or renewed
    TAKEN_ELSEWHERE = "taken_elsewhere"  # the key exists (create) or changed (update)
    FAILED = "failed"  # the write failed: no answer about the lease


class LeaseResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: LeaseOutcome
    revision: int = 0


class MemberUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """From the members watch: a heartbeat, or (heartbeat None) a delete or purge."""

    key: str
    heartbeat: Heartbeat | None
    revision: int


class MemberRead(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    outcome: ReadOutcome
    heartbeat: Heartbeat | None = None
    revision: int = 0


class DrainUpdate(msgspec.Struct, frozen=True, kw_only=True):
    shard: str
    draining: bool


class ProfileUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's measured profile of a model (None: withdrawn)."""

    model: str
    agent: str
    profile: ModelProfile | None


class AssignmentSeen(msgspec.Struct, frozen=True, kw_only=True):
    """The assignment as written by anyone (from the state watch)."""

    assignment: Assignment


class AssignmentRead(msgspec.Struct, frozen=True, kw_only=True):
    """The assignment with its revision, and which of the shards asked about are drained (read
    key by key: a watch that missed a drain mark must not hide it for long)."""

    assignment: Assignment | None
    revision: int
    drains: frozenset[str] = frozenset()
    failed: bool = False


class WriteOutcome(enum.Enum):
    WRITTEN = "written"
    RACED = "raced"  # the revision moved: someone else wrote
    FAILED = "failed"


class AssignmentWritten(msgspec.Struct, frozen=True, kw_only=True):
    outcome: WriteOutcome


class AutoscaleSeen(msgspec.Struct, frozen=True, kw_only=True):
    """The autoscaler's decision as published by anyone (from the state watch)."""

    status: AutoscaleStatus


Event = (Tick | LeaseResult | MemberUpdate | MemberRead | DrainUpdate | ProfileUpdate | AssignmentSeen
         | AssignmentRead | AssignmentWritten | AutoscaleSeen)


# ---- commands: what the core asks of the shell -----------------------------------------------
class TakeLease(msgspec.Struct, frozen=True):
    """Create the lease key; fails if someone holds it."""


class RenewLease(msgspec.Struct, frozen=True, kw_only=True):
    revision: int


class ReleaseLease(msgspec.Struct, frozen=True, kw_only=True):
    revision: int


class ReadMember(msgspec.Struct, frozen=True, kw_only=True):
    key: str


class RestartWatches(msgspec.Struct, frozen=True):
    """A direct read found what the watch never delivered: start the watches again."""


class ReadAssignment(msgspec.Struct, frozen=True, kw_only=True):
    """Read the assignment, and the drain mark of each of these shards."""

    shards: list[str]


class WriteAssignment(msgspec.Struct, frozen=True, kw_only=True):
    assignment: Assignment
    revision: int  # compare-and-swap on this revision (0: create)


class WriteAutoscale(msgspec.Struct, frozen=True, kw_only=True):
    """Publish the autoscaler's decision (KV key `autoscale`); nothing waits for the result."""

    status: AutoscaleStatus


class Note(msgspec.Struct, frozen=True, kw_only=True):
    """Something worth a log line and a metric, decided here and reported by the shell."""

    event: str
    level: str = "info"
    fields: dict = {}


Command = (TakeLease | RenewLease | ReleaseLease | ReadMember | RestartWatches | ReadAssignment | WriteAssignment
           | WriteAutoscale | Note)


class CoordinatorCore:
    def __init__(self, coordinator_id: str, models: list[ModelSettings], timing: CoordinatorTiming, *,
                 core: CoreConfig, placement: PlacementConfig, now_ns: int,
                 autoscale: AutoscaleConfig | None = None, slots: list[str] | None = None) -> None:
        """`autoscale`: run the autoscaler each epoch (None: every slot serves); `slots`: every
        slot the cluster config knows, running or not (the autoscaler may start any of them)."""
        self.id = coordinator_id
        self.models = models
        self.timing = timing
        self.core = core
        self.placement = placement
        self.view = MemberView(timing.heartbeat_ttl_ns, now_ns)
        self.rates = RateMemory(RATE_HOLD_EPOCHS * timing.epoch_ns + timing.heartbeat_ttl_ns)
        self.drains: set[str] = set()
        self.profiles: dict[tuple[str, str], ModelProfile] = {}  # (model, agent) -> profile
        # The slowest profile per model, merged again only for models whose profiles changed
        # since: merging every agent's profile at every epoch took half of it at 500 models.
        self._merged: dict[str, ModelProfile] = {}
        # Issue 16: the slowest per model and slot class (an agent's class: the device its
        # heartbeat reports, else its profile's), and the classes they were merged with.
        self._by_class: dict[str, dict[str, ModelProfile]] = {}
        self._devices: dict[str, str] = {}  # agent -> device, as of the last merge
        self._slot_classes: dict[str, str] = {}  # slot -> device of its agent, as last seen
        self._agents_of: dict[str, set[str]] = {}  # model -> agents that reported a profile of it
        self._stale: set[str] = set()  # models whose merged profile is out of date
        self.latest: Assignment | None = None  # the newest assignment written or seen
        # Lease state: one lease write in flight at a time.
        self.lease_revision = 0
        self.lease_valid_until_ns = 0
        self._lease_sent_ns: int | None = None
        self._lease_due_ns = now_ns
        # Epoch state: one read-decide-write at a time.
        self._epoch_op: str | None = None  # None, "reading" or "writing"
        self._epoch_membership: tuple | None = None
        self._pending: Assignment | None = None
        self._membership_done: tuple | None = None
        self._last_epoch_ns: int | None = None
        self._confirming: set[str] = set()
        self._member_update_ns = now_ns  # the last update the members watch delivered
        self._watches_started_ns = now_ns
        # Autoscaling state, decided only while leading.
        self.autoscale = autoscale
        self.slots = sorted(slots or [])
        self.autoscale_state = AutoscaleState()
        self.phases: SlotPhases | None = None  # None until this coordinator decided once
        self.autoscale_seen: AutoscaleStatus | None = None  # the newest published by anyone
        self.autoscale_seq = 0  # this coordinator's decisions (AutoscaleStatus.seq)
        self.tenure = 0  # times it took the lead
        self.autoscale_status: AutoscaleStatus | None = None  # the newest this coordinator decided

    # ---- queries ------------------------------------------------------------------------------
    def leading(self, now_ns: int) -> bool:
        return self.lease_revision > 0 and now_ns < self.lease_valid_until_ns

    def view_warm(self, now_ns: int) -> bool:
        """Every live member has had a TTL to show itself to this view."""
        return not self.view.outage and now_ns - self.view.trusted_from_ns >= self.timing.heartbeat_ttl_ns

    # ---- the step function ----------------------------------------------------------------------
    def handle(self, event: Event, now_ns: int) -> list[Command]:
        match event:
            case Tick():
                return self._tick(now_ns)
            case LeaseResult():
                return self._lease_result(event, now_ns)
            case MemberUpdate(key=key, heartbeat=None):
                self._member_update_ns = now_ns
                return [Note(event="member_left", fields={"member": key})] if self.view.left(key, now_ns) else []
            case MemberUpdate(key=key, heartbeat=beat, revision=revision):
                self._member_update_ns = now_ns
                new = self.view.observe(key, beat, revision, now_ns)
                return [Note(event="member_joined", fields={"member": key})] if new else []
            case MemberRead():
                return self._member_read(event, now_ns)
            case DrainUpdate(shard=shard, draining=draining):
                (self.drains.add if draining else self.drains.discard)(shard)
                return []
            case ProfileUpdate(model=model, agent=agent, profile=profile):
                if profile is None:
                    self.profiles.pop((model, agent), None)
                    self._agents_of.get(model, set()).discard(agent)
                else:
                    self.profiles[(model, agent)] = profile
                    self._agents_of.setdefault(model, set()).add(agent)
                self._stale.add(model)
                return []
            case AutoscaleSeen(status=status):
                self.autoscale_seen = freshest(status, self.autoscale_seen)  # a late put is not news
                return []
            case AssignmentSeen(assignment=assignment):
                if self.latest is None or assignment.epoch > self.latest.epoch:
                    self.latest = assignment
                return []
            case AssignmentRead():
                return self._assignment_read(event, now_ns)
            case AssignmentWritten():
                return self._assignment_written(event, now_ns)
        raise AssertionError(f"unknown event {event!r}")

    def stop(self, now_ns: int) -> list[Command]:
        """Hand the lease over at once instead of letting it age out."""
        if self.leading(now_ns):
            revision, self.lease_revision = self.lease_revision, 0
            return [ReleaseLease(revision=revision)]
        return []

    # ---- leadership ---------------------------------------------------------------------------
    def _tick(self, now_ns: int) -> list[Command]:
        commands: list[Command] = []
        if self._lease_sent_ns is None and now_ns >= self._lease_due_ns:
            self._lease_sent_ns = now_ns
            # A lease this coordinator held may still be its own on the server (its TTL started
            # after the write was sent): renewing at that revision either extends it or fails.
            commands.append(RenewLease(revision=self.lease_revision) if self.lease_revision else TakeLease())
        for key in self.view.suspects(now_ns):
            if key not in self._confirming:
                self._confirming.add(key)
                commands.append(ReadMember(key=key))
        ttl_ns = self.timing.heartbeat_ttl_ns
        if now_ns - max(self._member_update_ns, self._watches_started_ns) > ttl_ns:
            # Members heartbeat three times a TTL: a watch silent for a whole TTL has most likely
            # died (or everyone left, and then a restart costs nothing).
            commands += self._restart_watches(now_ns, "watch_silent")
        if self.leading(now_ns):
            commands += self._maybe_start_epoch(now_ns)
        return commands

    def _lease_result(self, result: LeaseResult, now_ns: int) -> list[Command]:
        sent_ns = self._lease_sent_ns
        assert sent_ns is not None, "a lease result without a lease write"
        self._lease_sent_ns = None
        self._lease_due_ns = now_ns + self.timing.lease_ns // 3
        was_leading = self.leading(now_ns)
        if result.outcome is LeaseOutcome.HELD:
            self.lease_revision = result.revision
            self.lease_valid_until_ns = sent_ns + self.timing.lease_ns  # the server's TTL started later
            if not was_leading:
                # What it decided in an earlier tenure is no claim on the present: the phases
                # come from the newest status published, or from the heartbeats (seed 1596: a
                # leader back after 6 s went on from its own old phases, in which three slots
                # started again since were released, and their agent was stopped).
                self.phases = None
                self.autoscale_status = None
                self.tenure += 1
                return [Note(event="leadership_taken")]
            return []
        if result.outcome is LeaseOutcome.TAKEN_ELSEWHERE:
            self.lease_revision = 0
            self.lease_valid_until_ns = 0
            return [Note(event="leadership_lost", level="warning")] if was_leading else []
        # FAILED: the lease may still be ours until it ages out; retry soon.
        self._lease_due_ns = now_ns + self.timing.lease_ns // 10
        return [Note(event="lease_write_failed", level="warning")]

    # ---- membership -----------------------------------------------------------------------------
    def _member_read(self, read: MemberRead, now_ns: int) -> list[Command]:
        self._confirming.discard(read.key)
        result = self.view.confirm(read.key, read.outcome, read.heartbeat, read.revision, now_ns)
        if result.removed:
            return [Note(event="member_gone", level="warning", fields={"member": read.key})]
        if result.watch_stale:
            return self._restart_watches(now_ns, "watch_stale", read.key)
        return []

    def _restart_watches(self, now_ns: int, why: str, member: str = "") -> list[Command]:
        self._watches_started_ns = now_ns
        return [Note(event=why, level="warning", fields={"member": member} if member else {}), RestartWatches()]

    def _merged_profiles(self, agents: dict[str, AgentHeartbeat]) -> tuple[dict[str, ModelProfile],
                                                                          dict[str, dict[str, ModelProfile]]]:
        """The slowest profile per model (reference §2.2), in model order, and per model the
        slowest of each slot class (`agents`: the live ones, whose devices name the classes).
        Only models whose profiles (or whose agents' devices) changed are merged again, folding
        their agents' profiles in agent order as a full merge would, so the result is the same
        profile for profile."""
        devices = {agent: beat.device for agent, beat in agents.items()}
        if devices != self._devices:
            changed = {a for a in devices.keys() | self._devices.keys() if devices.get(a) != self._devices.get(a)}
            self._stale.update(m for m, agents in self._agents_of.items() if not agents.isdisjoint(changed))
            self._devices = devices
        for model in self._stale:
            agents = sorted(self._agents_of.get(model, ()))
            if not agents:
                self._merged.pop(model, None)
                self._by_class.pop(model, None)
                self._agents_of.pop(model, None)
                continue
            profiles = [self.profiles[(model, agent)] for agent in agents]
            classes = [devices.get(agent) or profile.device for agent, profile in zip(agents, profiles, strict=True)]
            self._by_class[model] = merge_by_class(list(zip(classes, profiles, strict=True)))
            if len(self._by_class[model]) == 1:  # one class: its merge is the merge over all, fold for fold
                self._merged[model] = next(iter(self._by_class[model].values()))
                continue
            merged = profiles[0]
            for profile in profiles[1:]:
                merged = merged.merge_slowest(profile)
            self._merged[model] = merged
        self._stale.clear()
        ordered = sorted(self._merged)
        return {model: self._merged[model] for model in ordered}, {model: self._by_class[model] for model in ordered}

    def _inputs(self, previous: Assignment | None, now_ns: int, previous_written: bool = True) -> EpochInputs:
        agents = self.view.agents()
        merged, by_class = self._merged_profiles(agents)
        shards = self.view.shards()
        return EpochInputs(
            shards=shards,
            agents=agents,
            drains=frozenset(self.drains),
            rates=self.rates.update(shards, now_ns, previous.splits if previous else None),
            previous=previous,
            previous_written=previous_written,
            latest_epoch=self.latest.epoch if self.latest else 0,
            profiles=merged,
            class_profiles=by_class,
        )

    # ---- epochs ---------------------------------------------------------------------------------
    def _maybe_start_epoch(self, now_ns: int) -> list[Command]:
        if self._epoch_op is not None or not self.view_warm(now_ns):
            return []
        membership = membership_of(EpochInputs(shards=self.view.shards(), agents=self.view.agents(),
                                               drains=frozenset(self.drains), previous=None))
        due = self._last_epoch_ns is None or now_ns - self._last_epoch_ns >= self.timing.epoch_ns
        if membership == self._membership_done and not due:
            return []
        self._epoch_op = "reading"
        self._epoch_membership = membership
        return [ReadAssignment(shards=sorted(self.view.shards()))]

    def _assignment_read(self, read: AssignmentRead, now_ns: int) -> list[Command]:
        assert self._epoch_op == "reading"
        self._epoch_op = None
        if read.failed:
            return [Note(event="assignment_read_failed", level="warning")]
        self.drains = set(read.drains)
        if read.assignment is not None and (self.latest is None or read.assignment.epoch > self.latest.epoch):
            self.latest = read.assignment
        if not self.leading(now_ns):
            return []
        # A KV that lost its assignment (or holds one that does not decode) gets a new one, placed
        # from the newest this coordinator saw so that models stay where they are.
        basis = read.assignment or self.latest
        inputs, scaled = self._autoscale(self._inputs(basis, now_ns, read.assignment is not None), now_ns)
        decision = decide_epoch(self.models, inputs, core=self.core, placement=self.placement, coordinator_id=self.id)
        if decision.assignment is None:
            self._epoch_done(now_ns)
            if decision.reason == "unchanged":
                return scaled
            return scaled + [Note(event=f"epoch_{decision.reason}", level="error" if decision.errors else "warning",
                                  fields={"errors": decision.errors})]
        self._epoch_op = "writing"
        self._pending = decision.assignment
        return scaled + [WriteAssignment(assignment=decision.assignment, revision=read.revision)]

    def _autoscale(self, inputs: EpochInputs, now_ns: int) -> tuple[EpochInputs, list[Command]]:
        """The autoscaler's step: the slots' phases from the heartbeats, the decision, the phases
        after it, and the inputs with only the active slots (the rest are out of the assignment,
        so their shards stop sending them plans)."""
        if self.autoscale is None:
            return inputs, []
        seen = {agent: self.view.members[f"agent.{agent}"].seen_ns for agent in inputs.agents}
        present = present_slots(inputs.agents, seen)
        rates = shard_rates(inputs.shards)
        self._slot_classes.update(slot_classes(inputs.agents))
        demands = model_demands(self.models, rates, inputs.profiles, self.core)
        worth, hosts = fleet_for_autoscaler(self.models, inputs, {d.name: d.demand for d in demands}, self.core,
                                            self._slot_classes)
        # The shards' preference order (natural: gpu-2 before gpu-10), so that the autoscaler drains
        # the slots the shards pack least work onto; plain sorted() disagreed past 9 slots. In a
        # mixed fleet the faster classes first (`rank_slots`), so the slow slots are let go first.
        ranked = rank_slots(preference_order(set(self.slots) | set(present)), worth)
        phases = self.phases
        seen = self.autoscale_seen
        if seen is not None and seen.coordinator != self.id and (
                self.autoscale_status is None or freshest(seen, self.autoscale_status) is seen):
            # Another leader decided since this one last did (seed 851: two coordinators taking
            # turns each went on from its own old phases, draining a different slot each time).
            phases = phases_from_status(seen, now_ns)
        elif phases is None:
            phases = SlotPhases()
        phases = observe(phases, present, held_slots(inputs.shards, self.latest), now_ns)
        demand = sum(d.rate_rps * d.cost_s for d in demands)  # epoch.demand_slots
        signal = autoscale_signal(inputs.shards, demand, phases, present, len(ranked), now_ns, (ranked, worth))
        decision, self.autoscale_state = decide(self.autoscale, self.autoscale_state, signal)
        self.phases = apply_target(phases, ranked, decision.target_slots, present, now_ns, hosts,
                                   cap=self.autoscale.max_slots)
        self.autoscale_seq += 1
        status = autoscale_status(
            self.phases, ranked, present, coordinator=self.id, epoch=self.latest.epoch if self.latest else 0,
            lease_revision=self.lease_revision, seq=self.autoscale_seq,
            target_slots=decision.target_slots, need_slots=decision.need_slots, reason=decision.reason,
            rule=decision.rule, demand_slots=signal.demand_slots, busy_slots=signal.busy_slots,
            bad_rate=signal.bad_rate)
        previous, self.autoscale_status = self.autoscale_status, status
        active = set(status.active)
        agents = {agent: msgspec.structs.replace(beat, slots=[s for s in beat.slots if s.slot_id in active])
                  for agent, beat in inputs.agents.items()}
        commands: list[Command] = [WriteAutoscale(status=status)]
        if previous is None or _phases_of(previous) != _phases_of(status):
            commands.append(Note(event="autoscale", fields={
                "target_slots": status.target_slots, "need_slots": round(status.need_slots, 3),
                "reason": status.reason, "active": status.active, "starting": status.starting,
                "draining": status.draining, "released": status.released}))
        return msgspec.structs.replace(inputs, agents=agents), commands

    def _assignment_written(self, written: AssignmentWritten, now_ns: int) -> list[Command]:
        assert self._epoch_op == "writing" and self._pending is not None
        self._epoch_op = None
        new, self._pending = self._pending, None
        if written.outcome is not WriteOutcome.WRITTEN:
            return [Note(event=f"assignment_{written.outcome.value}", level="warning", fields={"epoch": new.epoch})]
        self.latest = new
        self._epoch_done(now_ns)
        return [Note(event="assignment_written", fields={
            "epoch": new.epoch, "models": new.models, "slots": new.slots,
            "desired_slots": new.desired_slots, "surplus_slots": new.surplus_slots})]

    def _epoch_done(self, now_ns: int) -> None:
        self._last_epoch_ns = now_ns
        self._membership_done = self._epoch_membership


def merge_by_class(profiles: list[tuple[str, ModelProfile]]) -> dict[str, ModelProfile]:
    """(slot class, profile) pairs, in agent order -> the slowest profile of each class, folded
    in that order (a fleet of one class gets the very profile the merge over all agents gives)."""
    merged: dict[str, ModelProfile] = {}
    for name, profile in profiles:
        merged[name] = merged[name].merge_slowest(profile) if name in merged else profile
    return {name: merged[name] for name in sorted(merged)}


def _phases_of(status: AutoscaleStatus) -> tuple:
    return status.target_slots, status.active, status.starting, status.draining, status.released
