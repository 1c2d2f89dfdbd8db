"""The coordinator: one leader (a lease in JetStream KV, renewed by compare-and-swap) computes an
assignment every epoch, and at once when membership changes, from the members' heartbeats;
standbys wait for the lease to age out and take over. The assignment is written with epoch + 1
only while leading, and with compare-and-swap on the previous revision."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import structlog
from prometheus_client import CollectorRegistry, Gauge
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from coordinator.placement import PlacementConfig, plan_assignment
from coordinator.state import (
    LEADER_BUCKET,
    count_undecodable,
    keys_with_prefix,
    open_buckets,
    read_assignment,
    read_members,
    undecodable,
    with_retries,
)
from load.sim.partition import model_demand
from ops.cluster_config import ClusterConfig
from ops.connect import connect_service
from ops.services import register_service
from schemas.control import ASSIGNMENT_KEY, Assignment, encode, model_spec_decoder
from schemas.limits import validate_identifier
from schemas.model import validate_model_name
from schemas.status_report import CoordinatorStatus
from schemas.profile import ModelProfile, profile_from_sleep_spec
from shard.core.config import CoreConfig, ModelConfig

log = structlog.get_logger("coordinator")


class Coordinator:
    def __init__(self, config: ClusterConfig, coordinator_id: str) -> None:
        self.config = config
        self.settings = config.coordinator
        self.id = validate_identifier(coordinator_id, "coordinator id")  # it becomes a subject token
        self.prefix = config.subject_prefix
        self.leading = False
        self._lease_revision = 0
        self._members_seen: frozenset[str] = frozenset()
        self._last_epoch = 0.0
        self._latest: Assignment | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._agents: list[str] = []
        self.registry = CollectorRegistry()
        gauges = {
            "desired": ("symphony_coordinator_desired_slots", "Slots the measured load needs at the target "
                        "utilisation: the load-proportional signal for an autoscaler"),
            "surplus": ("symphony_coordinator_surplus_slots", "Slots beyond the desired count"),
            "slots": ("symphony_coordinator_slots", "Slots in the assignment"),
            "epoch": ("symphony_coordinator_epoch", "Epoch of the current assignment"),
            "leading": ("symphony_coordinator_leading", "1 while this coordinator holds the lease"),
            "undecodable": ("symphony_coordinator_undecodable_entries", "KV entries (assignment, heartbeats, "
                            "profiles) that did not decode and were skipped, since start"),
        }
        self.gauges = {k: Gauge(name, doc, registry=self.registry) for k, (name, doc) in gauges.items()}
        for key, read in (("desired", lambda: self.status().desired_slots),
                          ("surplus", lambda: self.status().surplus_slots),
                          ("slots", lambda: self.status().slots), ("epoch", lambda: self.status().epoch),
                          ("leading", lambda: int(self.leading)),
                          ("undecodable", lambda: sum(undecodable.values()))):
            self.gauges[key].set_function(read)

    async def start(self, url: str) -> None:
        settings = self.settings
        self.nc = await connect_service(url, f"coordinator-{self.id}")
        await self._open_state()
        self.service = await register_service(
            self.nc, "symphony-coordinator", f"coordinator {self.id}", {"coordinator_id": self.id},
            f"{self.prefix}.coordinator.{self.id}.status", self.status)
        self._tasks = [asyncio.create_task(self._lease_loop()), asyncio.create_task(self._epoch_loop())]
        if settings.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(settings.metrics_port, addr="0.0.0.0", registry=self.registry)
        log.info("coordinator_started", coordinator=self.id)

    async def _open_state(self) -> None:
        """The buckets (created if missing) and the model registry, readable with
        `nats kv get symphony models.<name>`. Run again whenever the buckets have gone: KV is
        soft state, and a server that restarts with an empty store gets it all back."""
        settings = self.settings
        self.buckets = await open_buckets(self.nc, heartbeat_ttl_s=settings.heartbeat_ttl_s,
                                          lease_s=settings.lease_s, replicas=settings.kv_replicas)
        for entry in self.config.models:
            key = f"models.{validate_model_name(entry.name)}"
            await with_retries(lambda key=key, entry=entry: self.buckets.state.put(key, encode(entry)))

    async def _state_lost(self) -> bool:
        try:
            await self.nc.jetstream().stream_info(f"KV_{LEADER_BUCKET}")
        except nats.js.errors.NotFoundError:
            return True
        return False

    def status(self) -> CoordinatorStatus:
        a = self._latest or Assignment()
        return CoordinatorStatus(coordinator_id=self.id, leading=self.leading, epoch=a.epoch,
                                 shards=sorted(set(a.models.values())), agents=self._agents,
                                 desired_slots=a.desired_slots, surplus_slots=a.surplus_slots, slots=len(a.slots))

    # ---- leadership ---------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        period = self.settings.lease_s / 3
        while True:
            try:
                await self._hold_lease()
            except (nats.errors.Error, OSError) as error:
                log.warning("lease_error", coordinator=self.id, error=repr(error))
                self.leading = False
                try:
                    if await self._state_lost():
                        log.warning("kv_state_lost", coordinator=self.id)
                        await self._open_state()
                except (nats.errors.Error, OSError) as reopen_error:
                    log.warning("kv_reopen_failed", coordinator=self.id, error=repr(reopen_error))
            await asyncio.sleep(period)

    async def _hold_lease(self) -> None:
        leader = self.buckets.leader
        if self.leading:
            try:
                self._lease_revision = await leader.update("leader", self.id.encode(), last=self._lease_revision)
            except KeyWrongLastSequenceError:
                self.leading = False
                log.warning("leadership_lost", coordinator=self.id)
            return
        try:
            self._lease_revision = await leader.create("leader", self.id.encode())
        except KeyWrongLastSequenceError:
            return  # someone leads; its lease has not aged out
        self.leading = True
        log.info("leadership_taken", coordinator=self.id)
        self._wake.set()

    # ---- epochs -------------------------------------------------------------------------
    async def _epoch_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self.leading:
                continue
            try:
                await self._maybe_run_epoch()
            except (nats.errors.Error, OSError) as error:
                log.warning("epoch_error", coordinator=self.id, error=repr(error))

    async def _maybe_run_epoch(self) -> None:
        shards, agents = await read_members(self.buckets.members)
        drains = await self._drains()
        members = frozenset([f"shard.{s}" for s, hb in shards.items() if not hb.draining and s not in drains]
                            + [f"agent.{a}" for a in agents])
        due = time.monotonic() - self._last_epoch >= self.settings.epoch_s
        if members == self._members_seen and not due:
            return
        changed = members != self._members_seen
        self._members_seen = members
        self._last_epoch = time.monotonic()
        await self._run_epoch(shards, agents, drains, force=changed)

    async def _drains(self) -> set[str]:
        return {k.split(".", 1)[1] for k in await keys_with_prefix(self.buckets.state, "drain.")}

    async def _run_epoch(self, shards: dict, agents: dict, drains: set[str], *, force: bool) -> None:
        live = sorted(s for s, hb in shards.items() if not hb.draining and s not in drains)
        slot_models = {slot.slot_id: slot.models for hb in agents.values() for slot in hb.slots}
        self._agents = sorted(agents)
        rates: dict[str, float] = {}
        for hb in shards.values():
            for name, load in hb.models.items():
                rates[name] = max(rates.get(name, 0.0), load.rate_rps)
        profiles = await self._profiles()
        core = CoreConfig()
        demands = []
        for entry in self.config.models:
            hosts = sorted(s for s, models in slot_models.items() if entry.name in models)
            profile = profiles.get(entry.name) or _fallback_profile(entry.kind, entry.batch_size_max)
            model = ModelConfig(name=entry.name, slo_ns=int(entry.slo_ms * 1e6), profile=profile)
            demands.append(model_demand(model, rates.get(entry.name, 0.0), core, hosts))
        previous, revision = await read_assignment(self.buckets.state)
        new = plan_assignment(previous, demands, live, sorted(slot_models), PlacementConfig(
            target_utilization=self.settings.target_utilization))
        # Epochs never go back, even when the KV lost the assignment: agents fence by epoch.
        floor = max([previous.epoch if previous else 0, self._latest.epoch if self._latest else 0]
                    + [hb.epoch for hb in shards.values()])
        new = msgspec.structs.replace(new, coordinator=self.id, epoch=max(new.epoch, floor + 1))
        same = previous is not None and previous.models == new.models and previous.slots == new.slots
        if same and not force and previous.desired_slots == new.desired_slots:
            self._latest = previous
            return
        if not self.leading:
            return
        try:
            if revision:
                await self.buckets.state.update(ASSIGNMENT_KEY, encode(new), last=revision)
            else:
                await self.buckets.state.create(ASSIGNMENT_KEY, encode(new))
        except KeyWrongLastSequenceError:
            log.warning("assignment_raced", coordinator=self.id)
            return
        self._latest = new
        log.info("assignment_written", coordinator=self.id, epoch=new.epoch, models=new.models,
                 slots=new.slots, desired_slots=new.desired_slots, surplus_slots=new.surplus_slots)

    async def _profiles(self) -> dict[str, ModelProfile]:
        """The slowest profile per model among the agents that published one (reference §2.2)."""
        merged: dict[str, ModelProfile] = {}
        for key in await keys_with_prefix(self.buckets.state, "profiles."):
            try:
                entry = await self.buckets.state.get(key)
            except KeyNotFoundError:
                continue
            try:
                spec = model_spec_decoder.decode(entry.value)
            except msgspec.DecodeError as error:
                count_undecodable("profile", key, error)
                continue
            if spec.profile is not None:
                have = merged.get(spec.name)
                merged[spec.name] = spec.profile if have is None else have.merge_slowest(spec.profile)
        return merged

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.leading:
            try:  # hand over at once instead of waiting for the lease to age out
                await self.buckets.leader.delete("leader", last=self._lease_revision)
            except (nats.errors.Error, KeyWrongLastSequenceError):
                pass
        await self.service.stop()
        await self.nc.drain()


def _fallback_profile(kind: str, batch_size_max: int) -> ModelProfile:
    if kind.startswith(("sleep:", "sleep#")):
        return profile_from_sleep_spec(kind, batch_size_max)
    return profile_from_sleep_spec("sleep:1000,5000", batch_size_max)  # until an agent has measured it
