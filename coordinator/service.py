"""The coordinator service: a thin shell around coordinator/core.py. It watches the members and
state buckets and turns what it sees into events, ticks the core, and carries out the commands
the core returns against JetStream KV, feeding each result back as exactly one event. Every
decision (leadership, who is alive, when to write which assignment) is the core's."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE
from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.core import (
    AssignmentRead,
    AssignmentSeen,
    AssignmentWritten,
    AutoscaleSeen,
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
    ProfileUpdate,
    ReadAssignment,
    ReadMember,
    ReleaseLease,
    RenewLease,
    RestartWatches,
    TakeLease,
    Tick,
    WriteAssignment,
    WriteAutoscale,
    WriteOutcome,
)
from coordinator.epoch import ModelSettings
from coordinator.membership import ReadOutcome
from coordinator.placement import PlacementConfig
from runtime.cluster_config import ClusterConfig
from runtime.connect import connect_service
from runtime.kv import (
    LEADER_BUCKET,
    count_undecodable,
    decode_member,
    open_buckets,
    read_assignment,
    undecodable,
    with_retries,
)
from runtime.metrics_http import MetricsEndpoint, serve_metrics
from runtime.services import register_service
from schemas.control import (
    ASSIGNMENT_KEY,
    AUTOSCALE_KEY,
    Assignment,
    AutoscaleStatus,
    assignment_decoder,
    autoscale_status_decoder,
    encode,
    model_spec_decoder,
)
from schemas.limits import validate_identifier
from schemas.model import validate_model_name
from schemas.status_report import CoordinatorStatus
from shard.core.config import core_config_for

log = structlog.get_logger("coordinator")
TICK_S_MAX = 0.25
WATCH_INACTIVE_S = 30.0


class Coordinator:
    def __init__(self, config: ClusterConfig, coordinator_id: str) -> None:
        self.config = config
        self.settings = config.coordinator
        self.id = validate_identifier(coordinator_id, "coordinator id")  # it becomes a subject token
        self.prefix = config.subject_prefix
        settings = self.settings
        self.timing = CoordinatorTiming(epoch_ns=int(settings.epoch_s * 1e9), lease_ns=int(settings.lease_s * 1e9),
                                        heartbeat_ttl_ns=int(settings.heartbeat_ttl_s * 1e9))
        self.core: CoordinatorCore | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self._watches: list[asyncio.Task] = []
        self._commands: set[asyncio.Task] = set()
        self.registry = CollectorRegistry()
        self.notes = Counter("symphony_coordinator_events_total", "Control-plane events the coordinator "
                             "decided or observed (member_gone, watch_stale, assignment_raced, ...)",
                             ["event"], registry=self.registry)
        gauges = {
            "desired": ("symphony_coordinator_desired_slots", "Slots the measured load needs at the target "
                        "utilisation: the load-proportional signal for an autoscaler"),
            "surplus": ("symphony_coordinator_surplus_slots", "Slots beyond the desired count"),
            "slots": ("symphony_coordinator_slots", "Slots in the assignment"),
            "epoch": ("symphony_coordinator_epoch", "Epoch of the current assignment"),
            "leading": ("symphony_coordinator_leading", "1 while this coordinator holds the lease"),
            "members": ("symphony_coordinator_members", "Shards and agents alive in this coordinator's view"),
            "undecodable": ("symphony_coordinator_undecodable_entries", "KV entries (assignment, heartbeats, "
                            "profiles) that did not decode and were skipped, since start"),
        }
        self.gauges = {k: Gauge(name, doc, registry=self.registry) for k, (name, doc) in gauges.items()}
        self._autoscale_gauges()
        for key, read in (("desired", lambda: self.status().desired_slots),
                          ("surplus", lambda: self.status().surplus_slots),
                          ("slots", lambda: self.status().slots), ("epoch", lambda: self.status().epoch),
                          ("leading", lambda: int(self.leading)),
                          ("members", lambda: len(self.core.view.members) if self.core else 0),
                          ("undecodable", lambda: sum(undecodable.values()))):
            self.gauges[key].set_function(read)

    def _autoscale_gauges(self) -> None:
        """The autoscaler's decision as metrics, for an HPA or KEDA (docs/operations.md): only the
        leader reports it; the others report 0, so `max()` over coordinators is the decision."""
        gauges = {
            "target_slots": "Slots the autoscaler wants serving or starting (the actuator's target)",
            "need_slots": "The autoscaler rule's unrounded need, in slots",
            "demand_slots": "Rate x per-request cost at the target batch, summed over models (slot-seconds/s)",
            "active_slots": "Slots serving (in the assignment)",
            "starting_slots": "Slots asked for and not serving yet (cold start)",
            "draining_slots": "Slots out of the assignment, finishing their plans",
            "released_slots": "Slots drained and empty whose agents still run: safe to stop",
        }
        for key, doc in gauges.items():
            gauge = Gauge(f"symphony_coordinator_autoscale_{key}", doc, registry=self.registry)
            gauge.set_function(lambda key=key: _autoscale_value(self.autoscale_status() if self.leading else None, key))

    def autoscale_status(self) -> AutoscaleStatus | None:
        return self.core.autoscale_status if self.core is not None else None

    @property
    def leading(self) -> bool:
        return self.core is not None and self.core.leading(time.monotonic_ns())

    async def start(self, url: str) -> None:
        settings = self.settings
        self.nc = await connect_service(url, f"coordinator-{self.id}")
        await self._open_state()
        shard_template = self.config.shard(self.config.shards[0].id)
        self.core = CoordinatorCore(
            self.id, [ModelSettings(name=m.name, slo_ms=m.slo_ms, kind=m.kind, batch_size_max=m.batch_size_max)
                      for m in self.config.models],
            self.timing, core=core_config_for(shard_template),
            placement=PlacementConfig(target_utilization=settings.target_utilization,
                                      shard_rps_max=settings.shard_rps_max), now_ns=time.monotonic_ns(),
            autoscale=(settings.autoscale.decision() if settings.autoscale.enabled else None),
            slots=self.config.slot_ids())
        # Before registering: the first status snapshot already names the metrics URL.
        self.metrics_endpoint = serve_metrics(settings.metrics_port, self.config.metrics_host, self.registry)
        self.service = await register_service(
            self.nc, "symphony-coordinator", f"coordinator {self.id}", {"coordinator_id": self.id},
            f"{self.prefix}.coordinator.{self.id}.status", self.status)
        self._start_watches()
        self._tasks = [asyncio.create_task(self._tick_loop())]
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
        a = (self.core.latest if self.core else None) or Assignment()
        agents = sorted(self.core.view.agents()) if self.core else []
        return CoordinatorStatus(coordinator_id=self.id, leading=self.leading, epoch=a.epoch,
                                 shards=sorted(set(a.models.values())), agents=agents,
                                 desired_slots=a.desired_slots, surplus_slots=a.surplus_slots, slots=len(a.slots),
                                 autoscale=self.autoscale_status() if self.leading else None,
                                 metrics_url=self.metrics_endpoint.url if self.metrics_endpoint is not None else "")

    # ---- driving the core -----------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        period_s = min(TICK_S_MAX, self.settings.heartbeat_ttl_s / 6, self.settings.lease_s / 6)
        while True:
            self._feed(Tick())
            await asyncio.sleep(period_s)

    def _feed(self, event: Event) -> None:
        """One event into the core; its commands start at once, each ending in one event."""
        assert self.core is not None
        for command in self.core.handle(event, time.monotonic_ns()):
            if isinstance(command, Note):
                self._note(command)
            elif isinstance(command, RestartWatches):
                self._start_watches()
            else:
                task = asyncio.create_task(self._carry_out(command))
                self._commands.add(task)
                task.add_done_callback(self._commands.discard)

    def _note(self, note: Note) -> None:
        self.notes.labels(note.event).inc()
        getattr(log, note.level)(note.event, coordinator=self.id, **note.fields)

    async def _carry_out(self, command: Command) -> None:
        try:
            result = await self._execute(command)
        except (nats.errors.Error, OSError) as error:
            log.warning("kv_call_failed", coordinator=self.id, command=type(command).__name__, error=repr(error))
            result = _failure(command)
            if isinstance(command, (TakeLease, RenewLease)):
                await self._reopen_if_lost()
        except Exception:
            log.exception("kv_call_crashed", coordinator=self.id, command=type(command).__name__)
            result = _failure(command)
        if result is not None:
            self._feed(result)

    async def _execute(self, command: Command) -> Event | None:
        leader, state, members = self.buckets.leader, self.buckets.state, self.buckets.members
        match command:
            case TakeLease():
                try:
                    revision = await leader.create("leader", self.id.encode())
                    return LeaseResult(outcome=LeaseOutcome.HELD, revision=revision)
                except KeyWrongLastSequenceError:
                    return LeaseResult(outcome=LeaseOutcome.TAKEN_ELSEWHERE)
            case RenewLease(revision=revision):
                try:
                    return LeaseResult(outcome=LeaseOutcome.HELD,
                                       revision=await leader.update("leader", self.id.encode(), last=revision))
                except KeyWrongLastSequenceError:
                    return LeaseResult(outcome=LeaseOutcome.TAKEN_ELSEWHERE)
            case ReleaseLease(revision=revision):
                await leader.delete("leader", last=revision)
                return None
            case ReadMember(key=key):
                try:
                    entry = await members.get(key)
                except KeyNotFoundError:  # also KeyDeletedError: gone
                    return MemberRead(key=key, outcome=ReadOutcome.NOT_FOUND)
                beat = decode_member(key, entry.value)
                if beat is None:
                    return MemberRead(key=key, outcome=ReadOutcome.NOT_FOUND)  # unreadable: not alive
                return MemberRead(key=key, outcome=ReadOutcome.FOUND, heartbeat=beat, revision=entry.revision)
            case ReadAssignment(shards=shards):
                assignment, revision = await read_assignment(state)
                drains = []
                for shard in shards:
                    try:
                        await state.get(f"drain.{shard}")
                        drains.append(shard)
                    except KeyNotFoundError:
                        pass
                return AssignmentRead(assignment=assignment, revision=revision, drains=frozenset(drains))
            case WriteAutoscale(status=status):
                await state.put(AUTOSCALE_KEY, encode(status))
                return None
            case WriteAssignment(assignment=assignment, revision=revision):
                try:
                    if revision:
                        await state.update(ASSIGNMENT_KEY, encode(assignment), last=revision)
                    else:
                        await state.create(ASSIGNMENT_KEY, encode(assignment))
                except KeyWrongLastSequenceError:
                    return AssignmentWritten(outcome=WriteOutcome.RACED)
                return AssignmentWritten(outcome=WriteOutcome.WRITTEN)
        raise AssertionError(f"unknown command {command!r}")

    async def _reopen_if_lost(self) -> None:
        try:
            if await self._state_lost():
                log.warning("kv_state_lost", coordinator=self.id)
                await self._open_state()
                self._start_watches()
        except (nats.errors.Error, OSError) as error:
            log.warning("kv_reopen_failed", coordinator=self.id, error=repr(error))

    # ---- watches ----------------------------------------------------------------------------------
    def _start_watches(self) -> None:
        for task in self._watches:
            task.cancel()
        self._watches = [asyncio.create_task(self._watch(self.buckets.members, self._member_event)),
                         asyncio.create_task(self._watch(self.buckets.state, self._state_event))]

    async def _watch(self, kv, to_event) -> None:  # noqa: ANN001
        """Every update of the bucket, for as long as this task runs (restarted on the core's
        request). Starting fails while JetStream has no leader for the bucket: retried."""
        while True:
            try:
                # A stopped watch's consumer lingers on the server until this long without
                # interest (nats-py's default is five minutes).
                watcher = await kv.watchall(inactive_threshold=WATCH_INACTIVE_S)
                break
            except (nats.errors.Error, OSError) as error:
                log.warning("watch_start_failed", coordinator=self.id, bucket=kv._name, error=repr(error))  # noqa: SLF001
                await asyncio.sleep(0.5)
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # "the initial values are delivered": this shell does not rely on it
                event = to_event(entry)
                if event is not None:
                    self._feed(event)
        finally:
            try:
                await watcher.stop()
            except (nats.errors.Error, OSError):
                pass

    @staticmethod
    def _member_event(entry) -> Event | None:  # noqa: ANN001
        if entry.operation in (KV_DEL, KV_PURGE):
            return MemberUpdate(key=entry.key, heartbeat=None, revision=entry.revision)
        beat = decode_member(entry.key, entry.value)
        return None if beat is None else MemberUpdate(key=entry.key, heartbeat=beat, revision=entry.revision)

    @staticmethod
    def _state_event(entry) -> Event | None:  # noqa: ANN001
        deleted = entry.operation in (KV_DEL, KV_PURGE)
        kind, _, rest = entry.key.partition(".")
        if kind == "drain" and rest:
            return DrainUpdate(shard=rest, draining=not deleted)
        if kind == "profiles" and rest.count(".") == 1:
            model, agent = rest.split(".")
            if deleted:
                return ProfileUpdate(model=model, agent=agent, profile=None)
            try:
                spec = model_spec_decoder.decode(entry.value)
            except msgspec.DecodeError as error:
                count_undecodable("profile", entry.key, error)
                return None
            return None if spec.profile is None else ProfileUpdate(model=model, agent=agent, profile=spec.profile)
        if entry.key == AUTOSCALE_KEY and not deleted:
            try:
                return AutoscaleSeen(status=autoscale_status_decoder.decode(entry.value))
            except msgspec.DecodeError as error:
                count_undecodable("autoscale", entry.key, error)
                return None
        if entry.key == ASSIGNMENT_KEY and not deleted:
            try:
                return AssignmentSeen(assignment=assignment_decoder.decode(entry.value))
            except msgspec.DecodeError as error:
                count_undecodable("assignment", entry.key, error)
        return None

    async def stop(self) -> None:
        for task in [*self._tasks, *self._watches, *self._commands]:
            task.cancel()
        if self.core is not None:
            for command in self.core.stop(time.monotonic_ns()):
                try:  # hand over at once instead of waiting for the lease to age out
                    await self._execute(command)
                except (nats.errors.Error, KeyWrongLastSequenceError):
                    pass
        await self.service.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        await self.nc.drain()


def _failure(command: Command) -> Event | None:
    """The event that says a command's KV call failed."""
    match command:
        case TakeLease() | RenewLease():
            return LeaseResult(outcome=LeaseOutcome.FAILED)
        case ReadMember(key=key):
            return MemberRead(key=key, outcome=ReadOutcome.FAILED)
        case ReadAssignment():
            return AssignmentRead(assignment=None, revision=0, failed=True)
        case WriteAssignment():
            return AssignmentWritten(outcome=WriteOutcome.FAILED)
    return None


def _autoscale_value(status: AutoscaleStatus | None, key: str) -> float:
    """A gauge's value: a field of the decision, or the length of one of its slot lists."""
    if status is None:
        return 0.0
    phase = key.removesuffix("_slots")
    if phase in ("active", "starting", "draining", "released"):
        return float(len(getattr(status, phase)))
    return float(getattr(status, key))
