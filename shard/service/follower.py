"""A coordinated shard follows the assignment: it heartbeats its models' load into the members
bucket, reads the assignment, and applies each new epoch in the order shard/core/ownership.py
plans: slots lost stop at once; models lost that every remaining slot runs keep being served for
a grace period (the new owner subscribes meanwhile), then drain and hand back what is still
queued; models gained are subscribed; slots gained are claimed from their agents with the epoch
before use. What each slot can run comes from the cluster config, not from a KV listing.

In a mixed fleet (issue 16) each slot joins the core with its class (its agent's device, as its
published profiles name it). A model joins only once every slot held has a profile for it; a slot
joins only once every model held has profiles that cover its class. Until then the step waits
and is tried again, as a model without a profile is: the core never plans a slot with a guess."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import structlog
from nats.js.errors import KeyNotFoundError

from runtime.kv import count_undecodable, open_buckets, read_assignment, with_retries
from schemas.control import (
    Assignment,
    ModelLoad,
    ShardHeartbeat,
    SlotClaim,
    claim_reply_decoder,
    encode,
    model_spec_decoder,
    preference_order,
)
from schemas.model import ModelSpec
from shard.core.ownership import (
    AddModel,
    ClaimSlot,
    Holding,
    RemoveModel,
    RemoveSlot,
    plan_release,
    plan_transition,
)
from shard.service.specs import ClassedSpec, claimable_class, classed_spec, uncovered

log = structlog.get_logger("shard")
HANDOVER_GRACE_S = 1.0
BAD_OUTCOMES = ("dropped", "expired", "lost", "unavailable")  # answered, but not served in time
SERVED_OUTCOMES = ("dispatched",)


class Totals(msgspec.Struct, frozen=True):
    """Cumulative counts at one heartbeat: its time, busy slot-seconds, bad and all answers, and
    all answers per model."""

    now_ns: int
    busy_s: float
    bad: int
    answered: int
    answered_by_model: dict[str, int] = {}


class IntervalLoad(msgspec.Struct, frozen=True):
    """What the autoscaler reads from a shard about the time since its previous heartbeat."""

    busy_slots: float = 0.0  # busy slot-seconds per second
    bad_rate: float = 0.0  # of the answers, the ones not served in time
    rates_rps: dict[str, float] = {}  # answers per second by model: a rate that follows a step at once


def interval_totals(now_ns: int, busy_s: float, outcomes: dict[tuple[str, str], int]) -> Totals:
    bad = sum(n for (_model, outcome), n in outcomes.items() if outcome in BAD_OUTCOMES)
    served = sum(n for (_model, outcome), n in outcomes.items() if outcome in SERVED_OUTCOMES)
    by_model: dict[str, int] = {}
    for (model, outcome), n in outcomes.items():
        if outcome in BAD_OUTCOMES or outcome in SERVED_OUTCOMES:
            by_model[model] = by_model.get(model, 0) + n
    return Totals(now_ns, busy_s, bad, bad + served, by_model)


def interval_load(previous: Totals | None, now: Totals) -> IntervalLoad:
    """Busy slots, the bad fraction and each model's answer rate between two heartbeats (the
    first heartbeat reports nothing). The core's rate meter averages over seconds; the answer
    rate over one heartbeat interval lets the autoscaler see a step up within an epoch."""
    if previous is None or now.now_ns <= previous.now_ns:
        return IntervalLoad()
    seconds = (now.now_ns - previous.now_ns) / 1e9
    busy = max(0.0, now.busy_s - previous.busy_s) / seconds
    answered = now.answered - previous.answered
    bad = min(1.0, max(0, now.bad - previous.bad) / answered) if answered > 0 else 0.0
    rates = {m: max(0, n - previous.answered_by_model.get(m, 0)) / seconds for m, n in now.answered_by_model.items()}
    return IntervalLoad(busy, bad, rates)


class AssignmentFollower:
    def __init__(self, shard) -> None:  # noqa: ANN001 - ShardService
        self.shard = shard
        self.settings = shard.config.coordinator
        self.epoch = 0
        self.draining = False
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._releasing: set[str] = set()  # lost models kept for the handover grace
        self._models: frozenset[str] = frozenset()  # the models the latest assignment gives this shard
        self._last_totals: Totals | None = None  # at the previous heartbeat: the autoscaler's interval

    async def start(self) -> None:
        self.buckets = await open_buckets(self.shard.nc, heartbeat_ttl_s=self.settings.heartbeat_ttl_s,
                                          lease_s=self.settings.lease_s, replicas=self.settings.kv_replicas)
        await with_retries(self._heartbeat)
        self._tasks = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._watch())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:  # leave at once instead of waiting for the heartbeat to age out
            await self.buckets.members.delete(f"shard.{self.shard.entry.id}")
        except nats.errors.Error:
            pass

    # ---- heartbeats ---------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        shard = self.shard
        now_ns = shard.clock.now_ns()
        totals = interval_totals(now_ns, shard.busy_seconds(), shard.metrics.outcomes)
        load = interval_load(self._last_totals, totals)
        self._last_totals = totals
        loads = {name: ModelLoad(rate_rps=stats.rate_rps, pending=stats.pending,
                                 recent_rps=load.rates_rps.get(name, 0.0))
                 for name, stats in shard.policy.stats(now_ns).items()}
        beat = ShardHeartbeat(shard_id=shard.entry.id, models=loads, epoch=self.epoch, draining=self.draining,
                              busy_slots=load.busy_slots, bad_rate=load.bad_rate, slots_held=shard.held_slots())
        await self.buckets.members.put(f"shard.{shard.entry.id}", encode(beat))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_ttl_s / 3)
            try:
                await self._heartbeat()
            except (nats.errors.Error, OSError) as error:
                log.warning("heartbeat_failed", shard=self.shard.entry.id, error=repr(error))

    # ---- following the assignment -------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            try:
                assignment, _revision = await read_assignment(self.buckets.state)
                if assignment is not None and (assignment.epoch > self.epoch or self._behind(assignment)):
                    async with self._lock:
                        await self._apply(assignment)
            except (nats.errors.Error, OSError) as error:
                log.warning("assignment_read_failed", shard=self.shard.entry.id, error=repr(error))
            await asyncio.sleep(0.2)

    def _holding(self) -> Holding:
        shard = self.shard
        return Holding(models=frozenset(shard.specs), slots=frozenset(shard.usable_slots()),
                       releasing=frozenset(self._releasing))

    def _mine(self, assignment: Assignment) -> tuple[frozenset[str], frozenset[str]]:
        me = self.shard.entry.id
        return (assignment.models_of(me),
                frozenset(slot for slot, s in assignment.slots.items() if s == me))

    def _behind(self, assignment: Assignment) -> bool:
        """Steps of this epoch not taken yet (a claim refused, a model without a profile)."""
        models, slots = self._mine(assignment)
        return bool(plan_transition(self._holding(), models, slots, self.shard.slot_models).steps)

    async def _apply(self, assignment: Assignment) -> None:
        """Apply an epoch in the order shard/core/ownership.py plans, which keeps every slot in
        the core able to run every model in it at each step."""
        me = self.shard.entry.id
        shard = self.shard
        models, slots = self._mine(assignment)
        new_epoch = assignment.epoch != self.epoch
        self.epoch = assignment.epoch
        self._models = models
        holding = self._holding()
        transition = plan_transition(holding, models, slots, shard.slot_models)
        steps = shard.metrics.assignment_steps
        if new_epoch:
            for slot in transition.refused_slots:
                steps["slot_refused"] += 1
                log.error("slot_refused", shard=me, slot=slot, epoch=self.epoch,
                          models=sorted(models - shard.slot_models.get(slot, frozenset())))
        for step in transition.steps:
            match step:
                case RemoveSlot(slot=slot):
                    steps["remove_slot"] += 1
                    await shard.remove_slot(slot)
                case RemoveModel(model=name):
                    steps["remove_model"] += 1
                    self._releasing.discard(name)
                    await shard.remove_model(name)
                case AddModel(model=name):
                    spec = await self._spec(name)
                    if spec is None:  # its agents are still compiling and profiling it: retried
                        if new_epoch:
                            log.warning("model_without_profile", shard=me, model=name, epoch=self.epoch)
                        continue
                    steps["add_model"] += 1
                    await shard.add_model(spec)
                case ClaimSlot(slot=slot):
                    await self._claim_slot(slot, preference_order(assignment.slots).index(slot), new_epoch)
        graceful = sorted(transition.releasing - self._releasing)
        self._releasing = set(transition.releasing)
        if graceful:
            asyncio.get_running_loop().call_later(
                HANDOVER_GRACE_S, lambda: asyncio.ensure_future(self._release(frozenset(graceful))))
        await shard.weigh_ingress()
        if new_epoch or holding != self._holding():
            log.info("assignment_applied", shard=me, epoch=self.epoch, models=sorted(models), slots=sorted(slots),
                     held_models=sorted(shard.specs), held_slots=sorted(shard.usable_slots()),
                     kept_for_grace=sorted(transition.releasing))
            await self._heartbeat()

    async def _release(self, names: frozenset[str]) -> None:
        """The grace period of models lost is over: those not given back leave."""
        async with self._lock:
            for step in plan_release(self._holding(), names & frozenset(self._releasing), self._models):
                self.shard.metrics.assignment_steps["remove_model"] += 1
                self._releasing.discard(step.model)
                await self.shard.remove_model(step.model)

    async def _claim_slot(self, slot: str, rank: int, new_epoch: bool) -> None:
        """Claim the slot and add it to the core with its class; deferred (tried again) while the
        profiles of the models held do not cover its class."""
        steps = self.shard.metrics.assignment_steps
        slot_class = await self._slot_class(slot)
        if slot_class is None:
            steps["claim_deferred"] += 1
            if new_epoch:
                log.warning("slot_class_without_profile", shard=self.shard.entry.id, slot=slot, epoch=self.epoch,
                            models=sorted(self.shard.model_configs))
            return
        if await self._claim(self.shard.agent_of_slot(slot), slot):
            steps["claim_slot"] += 1
            await self.shard.add_slot(slot, rank=rank, slot_class=slot_class)
        else:
            steps["claim_refused"] += 1

    async def _slot_class(self, slot: str) -> str | None:
        """The slot's class if every model held plans it safely (specs.claimable_class), read from
        what its agent published now. A held model whose profiles do not cover it (the class
        joined after the model did) has its profiles read again and replaced first."""
        agent = self.shard.agent_of_slot(slot)
        if agent is None:
            return None
        names = sorted(self.shard.model_configs) or sorted(self.shard.slot_models.get(slot, ()))
        published = {name: await self._published(name, agent) for name in names}
        for name in uncovered(published, self.shard.model_configs):
            fresh = await self._spec(name)
            if fresh is not None and fresh.model_config() != self.shard.model_configs[name]:
                self.shard.metrics.assignment_steps["refresh_model"] += 1
                await self.shard.refresh_model(fresh)
        return claimable_class(published, self.shard.model_configs)

    async def _claim(self, agent_id: str | None, slot: str) -> bool:
        if agent_id is None:
            log.warning("slot_without_agent", shard=self.shard.entry.id, slot=slot)
            return False
        claim = SlotClaim(slot_id=slot, shard_id=self.shard.entry.id, epoch=self.epoch)
        try:
            msg = await self.shard.nc.request(f"{self.shard.prefix}.agent.{agent_id}.claim", encode(claim), timeout=2)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            log.warning("claim_unanswered", shard=self.shard.entry.id, slot=slot, agent=agent_id)
            return False
        try:
            reply = claim_reply_decoder.decode(msg.data)
        except msgspec.DecodeError as error:
            log.error("undecodable_claim_reply", shard=self.shard.entry.id, slot=slot, agent=agent_id,
                      error=str(error)[:200])
            return False
        if not reply.ok:
            log.warning("claim_refused", shard=self.shard.entry.id, slot=slot, reason=reply.reason)
        return reply.ok

    async def _spec(self, name: str) -> ClassedSpec | None:
        """The model's spec with the slowest profile among the agents that host it (reference
        §2.2) and the slowest per class (each profile names its agent's class as its device).
        None until every slot held has its agent's profile: the core could not plan it otherwise."""
        published: dict[str, ModelSpec] = {}
        for agent in self.shard.config.agents:
            if any(name in slot.models for slot in agent.slots):
                spec = await self._published(name, agent.id)
                if spec is not None and spec.profile is not None:
                    published[agent.id] = spec
        held_agents = {self.shard.agent_of_slot(slot) for slot in self.shard.usable_slots()}
        if not held_agents <= set(published):
            return None
        return classed_spec((spec.profile.device, spec) for spec in published.values())

    async def _published(self, name: str, agent_id: str) -> ModelSpec | None:
        """What the agent published for the model, read by key (`profiles.<model>.<agent>`): a
        listing can miss keys."""
        key = f"profiles.{name}.{agent_id}"
        try:
            entry = await self.buckets.state.get(key)
        except KeyNotFoundError:
            return None
        try:
            return model_spec_decoder.decode(entry.value)
        except msgspec.DecodeError as error:
            count_undecodable("profile", key, error)
            return None
