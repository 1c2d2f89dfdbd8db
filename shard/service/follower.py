"""A coordinated shard follows the assignment: it heartbeats its models' load into the members
bucket, watches the assignment, and applies each new epoch: models gained are subscribed first;
slots are claimed from their agents with the epoch before use; slots lost stop at once; models
lost keep being served for a grace period (the new owner subscribes meanwhile), then drain and
hand back what is still queued."""

from __future__ import annotations

import asyncio

import msgspec
import nats
import structlog
from nats.js.errors import KeyNotFoundError

from coordinator.state import (
    count_undecodable,
    keys_with_prefix,
    open_buckets,
    read_assignment,
    read_members,
    with_retries,
)
from schemas.control import ModelLoad, ShardHeartbeat, SlotClaim, claim_reply_decoder, encode, model_spec_decoder
from schemas.model import ModelSpec
from schemas.profile import ModelProfile

log = structlog.get_logger("shard")
HANDOVER_GRACE_S = 1.0


class AssignmentFollower:
    def __init__(self, shard) -> None:  # noqa: ANN001 - ShardService
        self.shard = shard
        self.settings = shard.config.coordinator
        self.epoch = 0
        self.draining = False
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        self._releasing: set[str] = set()

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
        stats = getattr(self.shard.policy, "model_stats", None)
        loads = {name: ModelLoad(rate_rps=rate, pending=held)
                 for name, (held, _target, rate) in (stats() if stats else {}).items()}
        beat = ShardHeartbeat(shard_id=self.shard.entry.id, models=loads, epoch=self.epoch, draining=self.draining)
        await self.buckets.members.put(f"shard.{self.shard.entry.id}", encode(beat))

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

    def _behind(self, assignment) -> bool:  # noqa: ANN001
        """Models or slots the assignment gives this shard that it could not take up yet."""
        me = self.shard.entry.id
        models = {m for m, s in assignment.models.items() if s == me}
        slots = {slot for slot, s in assignment.slots.items() if s == me}
        return bool(models - set(self.shard.specs)) or bool(slots - self.shard.usable_slots())

    async def _apply(self, assignment) -> None:  # noqa: ANN001
        """Apply an epoch. The core treats its slots as interchangeable, so at no moment may it
        hold a slot that cannot run one of its models: slots lost go first, then models no new
        slot can host, then models gained, then the new slots (claimed first); models lost that
        the remaining slots still host are kept a moment while their new owner subscribes."""
        me = self.shard.entry.id
        shard = self.shard
        models = {m for m, s in assignment.models.items() if s == me}
        slots = {slot for slot, s in assignment.slots.items() if s == me}
        self.epoch = assignment.epoch
        _shards, agents = await read_members(self.buckets.members)
        hosted = {s.slot_id: set(s.models) for hb in agents.values() for s in hb.slots}
        agent_of = {s.slot_id: a for a, hb in agents.items() for s in hb.slots}
        for slot in sorted(shard._owned - slots):  # noqa: SLF001 - the follower drives the shard
            await shard.remove_slot(slot)
        lost = sorted(set(shard.specs) - models - self._releasing)
        graceful = [m for m in lost if all(m in hosted.get(s, set()) for s in slots)]
        for name in lost:
            if name not in graceful:
                await shard.remove_model(name)
        for name in sorted(models - set(shard.specs)):
            spec = await self._spec(name)
            if spec is None:
                log.warning("model_without_profile", shard=me, model=name)
                continue
            await shard.add_model(spec)
        for slot in sorted(slots - shard.usable_slots()):  # new, or lost and back (claimed again)
            if await self._claim(agent_of.get(slot), slot):
                await shard.add_slot(slot)
        self._releasing.update(graceful)
        if graceful:
            asyncio.get_running_loop().call_later(
                HANDOVER_GRACE_S, lambda: asyncio.ensure_future(self._release(graceful, assignment.epoch)))
        log.info("assignment_applied", shard=me, epoch=self.epoch, models=sorted(models), slots=sorted(slots))
        await self._heartbeat()

    async def _release(self, names: list[str], epoch: int) -> None:
        async with self._lock:
            assignment, _rev = await read_assignment(self.buckets.state)
            for name in names:
                self._releasing.discard(name)
                if assignment is not None and assignment.models.get(name) == self.shard.entry.id:
                    continue  # it came back
                await self.shard.remove_model(name)

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

    async def _spec(self, name: str) -> ModelSpec | None:
        """The model's spec with the slowest profile any agent published for it."""
        keys = await keys_with_prefix(self.buckets.state, f"profiles.{name}.")
        chosen: ModelSpec | None = None
        profile: ModelProfile | None = None
        for key in keys:
            try:
                entry = await self.buckets.state.get(key)
            except KeyNotFoundError:
                continue
            try:
                spec = model_spec_decoder.decode(entry.value)
            except msgspec.DecodeError as error:
                count_undecodable("profile", key, error)
                continue
            chosen = chosen or spec
            if spec.profile is not None:
                profile = spec.profile if profile is None else profile.merge_slowest(spec.profile)
        if chosen is None or profile is None:
            return None
        return msgspec.structs.replace(chosen, profile=profile)
