"""The shard service: a thin NATS shell that drives the scheduling core.

Ingress reads headers only and keeps each body as bytes; every core action becomes a message:
a dispatch becomes one batch plan to the slot's agent, a drop becomes an error reply at once.
Completion reports correct slot free times; a slot whose report is overdue by the grace period
is declared lost, its requests get 503 and the core is told the slot is gone. Every request the
shard accepts gets exactly one reply from the shard or, once dispatched, from the agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from itertools import count

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from runtime.cluster_config import ClusterConfig, ShardEntry
from runtime.connect import connect_service, creds_of, flush_ordered
from runtime.nats_auth import HANDBACK_NAMESPACE
from runtime.handback import finish_hand_backs, hand_back_headers, start_hand_back
from schemas.codec import msgpack_decoder
from schemas.model import ModelList, ModelSpec, metadata_of
from schemas.plan import PLAN_VERSION, AgentInfo, BatchPlan, PlanRequest, plan_encoder, report_decoder
from schemas.profile import ModelProfile
from schemas.status import (
    CONTENT_JSON,
    CONTENT_MSGPACK,
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_HANDED_BACK,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    HEADER_STATUS,
    Status,
    error_headers,
)
from shard.core.actions import DispatchBatch, DropReason, DropRequests
from shard.core.config import ModelConfig, core_config_for
from shard.core.events import (
    SHUTDOWN,
    WAKE_UP,
    BatchCompleted,
    ModelAdded,
    ModelRemoved,
    RequestArrived,
    SlotAdded,
    SlotRemoved,
)
from shard.core.policies import DEFAULT_POLICY, make_policy
from runtime.clock import MonotonicClock
from shard.service.metrics import ShardMetrics
from runtime.services import register_service
from schemas.status_report import ModelStatus, ShardStatus

log = structlog.get_logger("shard")

DROP_STATUS = {
    DropReason.DEADLINE: (Status.DROPPED, "dropped: its deadline cannot be met"),
    DropReason.QUEUE_TIMEOUT: (Status.DROPPED, "dropped: waited past the queue timeout"),
    DropReason.OVERLOADED: (Status.OVERLOADED, "overloaded: the model's queue is full"),
    DropReason.NO_SLOT: (Status.UNAVAILABLE, "unavailable: no slot can serve this model"),
    DropReason.UNKNOWN_MODEL: (Status.UNKNOWN_MODEL, "unknown model"),
    DropReason.SHUTDOWN: (Status.UNAVAILABLE, "unavailable: the scheduler is stopping"),
    DropReason.MOVED: (Status.UNAVAILABLE, "unavailable: the model moved"),
}


agent_info_decoder = msgpack_decoder(AgentInfo)
SEEN_IDS_MIN = 4096
AGENT_SILENCE_S = 3.0  # an agent that neither answers nor disappears is declared lost after this
RECONNECT_SETTLE_S = 3.0  # after this shard reconnects, agents get this long to reconnect too
REQUEST_ID_LEN_MAX = 128
DEADLINE_MS_MAX = 2**53  # beyond any real clock; bounds the header before it becomes an int


@dataclass(slots=True)
class Pending:
    reply: str
    body: bytes
    content_type: str
    client_request_id: str
    recv_ns: int
    deadline_unix_ns: int  # wall clock: travels with the request in plans and hand-backs


@dataclass(slots=True)
class InFlight:
    slot_id: str
    model: str
    requests: list[PlanRequest]
    sent_ns: int
    finish_ns: int
    connection: int = 0  # this shard's reconnect count when the plan was sent


class ShardService:
    def __init__(self, config: ClusterConfig, shard_id: str, clock: MonotonicClock | None = None) -> None:
        self.config = config
        self.entry: ShardEntry = config.shard(shard_id)
        self.policy_name = self.entry.policy or DEFAULT_POLICY
        self.prefix = config.subject_prefix
        self.clock = clock or MonotonicClock()
        self.nc: nats.NATS | None = None
        self.policy = None
        self.specs: dict[str, ModelSpec] = {}
        self.slot_index = {slot: i for i, slot in enumerate(self.entry.slots)}
        self.slot_names = list(self.entry.slots)
        self.pending: dict[int, Pending] = {}
        self.inflight: dict[int, InFlight] = {}
        self._ids = count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: int | None = None
        self._watchdog: asyncio.Task | None = None
        self._lost: set[str] = set()
        self._model_subs: dict[str, list] = {}
        self._released: set[str] = set()  # models given up; requests still arriving are handed back
        self._hand_backs: set[asyncio.Task] = set()
        # Client request ids seen, with their deadlines: a repeat within its deadline is not
        # answered again (the first copy's reply is the one reply). Pruned as it grows.
        self._seen_ids: dict[str, int] = {}
        self._seen_prune_at = SEEN_IDS_MIN
        self._agent_of_slot = {slot.id: agent.id for agent in config.agents for slot in agent.slots}
        self.slot_models = config.slot_models()  # what each slot can run: a plan elsewhere is refused
        self._reconnected_at = 0
        self._reconnects = 0
        self._owned: set[str] = set(self.entry.slots)
        self.follower = None
        self._busy_s = 0.0
        self.metrics = ShardMetrics(list(self.entry.models), self._metrics_state)

    def _metrics_state(self) -> dict:
        stats = getattr(self.policy, "model_stats", None)
        return {
            "models": stats() if stats is not None else {},
            "slots_owned": len(self._owned - self._lost),
            "slots_busy": len({f.slot_id for f in self.inflight.values()}),
        }

    # ---- start-up -----------------------------------------------------------------------
    async def start(self, nats_url: str, *, agents_timeout_s: float = 120.0) -> None:
        self.nc = await connect_service(nats_url, f"shard-{self.entry.id}")
        core = core_config_for(self.entry)
        if self.config.dynamic:
            self.slot_index, self.slot_names = {}, []  # the assignment brings slots
            self.policy = make_policy(self.policy_name, [], core)
        else:
            infos = await self._agent_infos(agents_timeout_s)
            self.specs = self._model_specs(infos)
            models = [ModelConfig(name=n, slo_ns=int(s.slo_ms * 1e6), profile=s.profile) for n, s in self.specs.items()]
            self.policy = make_policy(self.policy_name, models, core)
            now = self.clock.now_ns()
            for slot in self.slot_names:
                self._apply(self.policy.handle(SlotAdded(self.slot_index[slot]), now))
            for model in self.entry.models:
                await self._subscribe_model(model)
        await self._subscribe()
        self._watchdog = asyncio.create_task(self._watch_slots())
        self.service = await register_service(
            self.nc, "symphony-shard", f"shard {self.entry.id}", {"shard_id": self.entry.id},
            f"{self.prefix}.shard.{self.entry.id}.status", self.status,
        )
        if self.entry.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.entry.metrics_port, addr="0.0.0.0", registry=self.metrics.registry)
        if self.config.dynamic:
            from shard.service.follower import AssignmentFollower

            self.follower = AssignmentFollower(self)
            await self.follower.start()
        log.info("shard_ready", shard=self.entry.id, models=list(self.specs), slots=self.slot_names,
                 policy=self.policy_name, coordinated=self.config.dynamic)

    async def _agent_infos(self, timeout_s: float) -> dict[str, AgentInfo]:
        wanted = {self.config.agent_of_slot(s) for s in self.slot_names}
        infos: dict[str, AgentInfo] = {}
        deadline = asyncio.get_running_loop().time() + timeout_s
        while wanted - set(infos):
            for agent_id in sorted(wanted - set(infos)):
                try:
                    msg = await self.nc.request(f"{self.prefix}.agent.{agent_id}.info", b"", timeout=1.0)
                    infos[agent_id] = agent_info_decoder.decode(msg.data)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    if asyncio.get_running_loop().time() > deadline:
                        raise TimeoutError(f"agents {sorted(wanted - set(infos))} did not answer") from None
                    await asyncio.sleep(0.5)
        return infos

    def _model_specs(self, infos: dict[str, AgentInfo]) -> dict[str, ModelSpec]:
        """Each model's spec, with the slowest profile among this shard's slots (reference §2.2)."""
        specs: dict[str, ModelSpec] = {}
        for name in self.entry.models:
            profile: ModelProfile | None = None
            chosen: ModelSpec | None = None
            for info in infos.values():
                for spec in info.models:
                    if spec.name == name and spec.profile is not None:
                        chosen = chosen or spec
                        profile = spec.profile if profile is None else profile.merge_slowest(spec.profile)
            if chosen is None:
                raise ValueError(f"no agent of shard {self.entry.id} reports model {name}")
            specs[name] = msgspec.structs.replace(chosen, profile=profile.monotone())
        return specs

    async def _subscribe(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.meta", queue=f"{self.prefix}.meta", cb=self._meta_list)
        await self.nc.subscribe(f"{self.prefix}.shard.{self.entry.id}.done", cb=self._on_done,
                                pending_msgs_limit=1_000_000)
        await flush_ordered(self.nc)

    async def _subscribe_model(self, model: str) -> None:
        self.metrics.add_model(model)
        self._model_subs[model] = [
            await self.nc.subscribe(
                f"{self.prefix}.infer.{model}", queue=f"{self.prefix}.infer.{model}", cb=self._ingress(model),
                pending_msgs_limit=1_000_000, pending_bytes_limit=1024 * 1024 * 1024,
            ),
            await self.nc.subscribe(f"{self.prefix}.meta.{model}", queue=f"{self.prefix}.meta.{model}",
                                    cb=self._meta(model)),
        ]
        await flush_ordered(self.nc)  # the server has our interest before we count the model as gained

    # ---- ownership changes (a coordinator moves models and slots) -----------------------
    async def add_model(self, spec: ModelSpec) -> None:
        if spec.name in self.specs:
            self._released.discard(spec.name)
            return
        self.specs[spec.name] = spec
        self._released.discard(spec.name)
        model = ModelConfig(name=spec.name, slo_ns=int(spec.slo_ms * 1e6), profile=spec.profile.monotone())
        await self._apply_async(self.policy.handle(ModelAdded(model), self.clock.now_ns()))
        await self._subscribe_model(spec.name)
        log.info("model_gained", shard=self.entry.id, model=spec.name)

    async def remove_model(self, name: str) -> None:
        """Stop taking its requests (finishing the ones already delivered), then hand back what
        it still holds: re-published to the model's subject, the new owner answers them."""
        if name not in self.specs:
            return
        self._released.add(name)
        for sub in self._model_subs.pop(name, []):
            await sub.drain()
        if name not in self._released:
            return  # gained back while draining
        del self.specs[name]
        await self._apply_async(self.policy.handle(ModelRemoved(name), self.clock.now_ns()))
        log.info("model_released", shard=self.entry.id, model=name)

    async def add_slot(self, slot_id: str) -> None:
        if slot_id not in self.slot_index:
            self.slot_index[slot_id] = len(self.slot_names)
            self.slot_names.append(slot_id)
        self._lost.discard(slot_id)
        self._owned.add(slot_id)
        await self._apply_async(self.policy.handle(SlotAdded(self.slot_index[slot_id]), self.clock.now_ns()))

    def agent_of_slot(self, slot_id: str) -> str | None:
        return self._agent_of_slot.get(slot_id)

    def usable_slots(self) -> set[str]:
        """Slots this shard owns and has not declared lost."""
        return self._owned - self._lost

    async def remove_slot(self, slot_id: str) -> None:
        if slot_id not in self._owned:
            return
        self._owned.discard(slot_id)
        await self._apply_async(self.policy.handle(SlotRemoved(self.slot_index[slot_id]), self.clock.now_ns()))

    async def _hand_back(self, model: str, pending: Pending) -> None:
        headers = hand_back_headers(pending.content_type, pending.client_request_id, pending.deadline_unix_ns)
        self.metrics.count(model, "handed_back")
        start_hand_back(self.nc, f"{self.prefix}.infer.{model}", pending.body, headers, pending.reply,
                        self._hand_backs)

    def status(self) -> ShardStatus:
        stats = getattr(self.policy, "model_stats", None)
        core = stats() if stats is not None else {}
        m = self.metrics
        return ShardStatus(
            shard_id=self.entry.id, policy=self.policy_name,
            epoch=self.follower.epoch if self.follower is not None else 0,
            models=[ModelStatus(name=name, pending=core.get(name, (0, 0, 0.0))[0],
                                target_batch_size=core.get(name, (0, 0, 0.0))[1],
                                rate_rps=core.get(name, (0, 0, 0.0))[2], received=m.received.get(name, 0),
                                dispatched=m.outcomes.get((name, "dispatched"), 0),
                                dropped=m.outcomes.get((name, "dropped"), 0))
                    for name in self.specs],
            slots_owned=[s for s in self.slot_names if s in self._owned and s not in self._lost],
            slots_busy=sorted({f.slot_id for f in self.inflight.values()}),
            slots_lost=sorted(self._lost),
            busy_seconds=self._busy_s,
        )

    # ---- ingress ------------------------------------------------------------------------
    def _handed_back(self, msg: Msg, headers: dict[str, str]) -> bool:
        """A hand-back from a shard or agent, not a client's repeat. With NATS users the marker
        counts only with a reply in the hand-back namespace, which clients cannot subscribe to,
        so a client cannot use it to get past duplicate suppression."""
        if HEADER_HANDED_BACK not in headers:
            return False
        return creds_of(self.nc) is None or msg.reply.startswith(HANDBACK_NAMESPACE + ".")

    def _ingress(self, model: str):  # noqa: ANN202
        metrics = self.metrics
        received = metrics.received
        decision = metrics.decision_seconds

        async def on_request(msg: Msg) -> None:
            now = self.clock.now_ns()
            received[model] += 1
            if not msg.reply:
                return  # a publish without a reply subject cannot be answered; nothing to do
            headers = msg.headers or {}
            client_id = headers.get(HEADER_REQUEST_ID, "")
            content_type = headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON)
            if content_type not in (CONTENT_JSON, CONTENT_MSGPACK):
                metrics.count(model, "bad_request")
                await self._error(msg.reply, Status.BAD_REQUEST, f"unsupported Content-Type {content_type!r}; "
                                  f"use {CONTENT_JSON} or {CONTENT_MSGPACK}", client_id)
                return
            if len(client_id) > REQUEST_ID_LEN_MAX:
                metrics.count(model, "bad_request")
                await self._error(msg.reply, Status.BAD_REQUEST,
                                  f"{HEADER_REQUEST_ID} longer than {REQUEST_ID_LEN_MAX} characters", "")
                return
            slo_ns = int(self.specs[model].slo_ms * 1e6) if model in self.specs else 0
            if HEADER_SLO_MS in headers:
                try:
                    slo_ms = float(headers[HEADER_SLO_MS])
                except ValueError:
                    slo_ms = -1.0
                if not 0 < slo_ms < 3_600_000:
                    metrics.count(model, "bad_request")
                    await self._error(msg.reply, Status.BAD_REQUEST,
                                      f"{HEADER_SLO_MS} must be a positive number of milliseconds", client_id)
                    return
                slo_ns = int(slo_ms * 1e6)
            wall = self.clock.wall_ns()
            if HEADER_DEADLINE in headers:
                try:
                    deadline_ms = float(headers[HEADER_DEADLINE])
                except ValueError:
                    deadline_ms = -1.0
                if not 0 < deadline_ms < DEADLINE_MS_MAX:
                    metrics.count(model, "bad_request")
                    await self._error(msg.reply, Status.BAD_REQUEST,
                                      f"{HEADER_DEADLINE} must be Unix time in milliseconds", client_id)
                    return
                remaining = int(deadline_ms * 1e6) - wall
                if remaining <= 0:
                    # Its client has given up (or this shard was paused): never start dead work.
                    metrics.count(model, "expired")
                    await self._error(msg.reply, Status.DROPPED, "dropped: expired before it was scheduled",
                                      client_id)
                    return
                slo_ns = min(slo_ns, remaining) if slo_ns else remaining
            seen = self._seen_ids
            if client_id and client_id in seen and seen[client_id] > now and not self._handed_back(msg, headers):
                metrics.count(model, "duplicate")
                return  # a repeat of a request still within its deadline: the first copy answers
            pending = Pending(msg.reply, msg.data, content_type, client_id, now, wall + slo_ns)
            if model in self._released:
                await self._hand_back(model, pending)
                return
            if len(msg.data) > self.entry.body_bytes_max:
                metrics.count(model, "rejected")
                await self._error(msg.reply, Status.TOO_LARGE,
                                  f"body of {len(msg.data)} bytes exceeds {self.entry.body_bytes_max}", client_id)
                return
            if len(self.pending) >= self.entry.queue_len_max:
                metrics.count(model, "rejected")
                await self._error(msg.reply, Status.OVERLOADED, "overloaded: the shard's queue is full", client_id)
                return
            rid = next(self._ids)
            self.pending[rid] = pending
            if client_id:
                seen[client_id] = now + slo_ns
                if len(seen) >= self._seen_prune_at:
                    self._seen_ids = {k: v for k, v in seen.items() if v > now}
                    self._seen_prune_at = max(SEEN_IDS_MIN, 2 * len(self._seen_ids))
            log.debug("request_received", request=rid, client_request_id=client_id, model=model)
            started = time.perf_counter()
            step = self.policy.handle(RequestArrived(rid, model, slo_ns), now)
            decision.observe(time.perf_counter() - started)
            if step.actions:
                await self._apply_async(step)
            else:
                self._arm(step.wake_at_ns)  # the common case: the request waits in its window

        return on_request

    def _meta(self, model: str):  # noqa: ANN202
        async def on_meta(msg: Msg) -> None:
            await self._respond_json(msg, metadata_of(self.specs[model]))
        return on_meta

    async def _meta_list(self, msg: Msg) -> None:
        await self._respond_json(msg, ModelList(models=sorted(m.name for m in self.config.models)))

    async def _respond_json(self, msg: Msg, value: object) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, msgspec.json.encode(value),
                                  headers={HEADER_STATUS: "200", HEADER_CONTENT_TYPE: CONTENT_JSON})

    async def _error(self, reply: str, status: Status, reason: str, client_id: str = "") -> None:
        await self.nc.publish(reply, b"", headers=error_headers(status, reason, client_id))

    # ---- actions ------------------------------------------------------------------------
    def _apply(self, step) -> None:  # noqa: ANN001 - used where no await is possible
        asyncio.get_running_loop().create_task(self._apply_async(step))

    async def _apply_async(self, step) -> None:  # noqa: ANN001
        now = self.clock.now_ns()
        for action in step.actions:
            if action.__class__ is DispatchBatch:
                await self._dispatch(action, now)
            elif action.__class__ is DropRequests:
                await self._drop(action)
        self._arm(step.wake_at_ns)

    async def _dispatch(self, action: DispatchBatch, now: int) -> None:
        slot_id = self.slot_names[action.slot_id]
        log.debug("plan_sent", plan=action.plan_id, slot=slot_id, model=action.model, size=len(action.request_ids),
                  exec_in_us=(action.exec_at_ns - now) // 1000, requests=action.request_ids)
        requests = []
        for rid in action.request_ids:
            pending = self.pending.pop(rid)
            requests.append(PlanRequest(rid, pending.reply, pending.body, pending.content_type,
                                        pending.client_request_id, (now - pending.recv_ns) // 1000,
                                        pending.deadline_unix_ns))
        plan = BatchPlan(
            version=PLAN_VERSION, plan_id=action.plan_id, shard_id=self.entry.id, slot_id=slot_id,
            epoch=self.follower.epoch if self.follower is not None else 0,
            model=action.model, requests=requests, exec_at_ns=action.exec_at_ns,
            deadline_us=max(0, (action.finish_at_ns - now) // 1000 + 2 * self.policy.config.resp_ns // 1000),
            deadline_unix_ns=min(r.deadline_unix_ns for r in requests),
            lost_after_unix_ns=self.clock.wall_ns() + action.finish_at_ns - now + int(self.entry.slot_grace_ms * 1e6),
        )
        data = plan_encoder.encode(plan)
        if action.model not in self.slot_models.get(slot_id, ()):
            # The core granted a slot that cannot run the model: a bug in how ownership changed
            # (shard/core/ownership.py keeps this from happening). Never send it: answer it.
            log.error("plan_refused", shard=self.entry.id, plan=action.plan_id, slot=slot_id, model=action.model)
            await self._refuse_plan(action, requests, now, "slot_cannot_run_model", Status.UNAVAILABLE,
                                    f"unavailable: slot {slot_id} cannot run {action.model}")
            return
        if len(data) > self.nc.max_payload:
            # Valid bodies can add up past what NATS carries in one message: answer them (not
            # silently lose the slot) and give the core its slot back at once.
            log.error("plan_too_large", plan=action.plan_id, bytes=len(data), max_payload=self.nc.max_payload)
            await self._refuse_plan(action, requests, now, "too_large", Status.TOO_LARGE,
                                    f"batch of {len(requests)} is {len(data)} bytes, over the server's max_payload "
                                    f"{self.nc.max_payload}; send smaller bodies")
            return
        self.inflight[action.plan_id] = InFlight(slot_id, action.model, requests, now, action.finish_at_ns,
                                                 self.nc.stats["reconnects"])
        metrics = self.metrics
        metrics.count(action.model, "dispatched", len(requests))
        metrics.items[action.model] += len(requests)
        metrics.executions[action.model] += 1
        metrics.batch_size[action.model].observe(len(requests))
        queue = metrics.queue_seconds[action.model]
        for request in requests:
            queue.observe(request.queue_us / 1e6)
        await self.nc.publish(f"{self.prefix}.slot.{slot_id}.plan", data)

    async def _refuse_plan(self, action: DispatchBatch, requests: list[PlanRequest], now: int, why: str,
                           status: Status, reason: str) -> None:
        """Answer every request of a batch that will not be sent, and give the core its slot back."""
        self.metrics.plans_refused[why] += 1
        outcome = "unavailable" if status is Status.UNAVAILABLE else "rejected"
        for request in requests:
            self.metrics.count(action.model, outcome)
            await self._error(request.reply, status, reason, request.client_request_id)
        await self._apply_async(self.policy.handle(BatchCompleted(action.slot_id, action.plan_id, now, now), now))

    async def _drop(self, action: DropRequests) -> None:
        if action.reason is DropReason.MOVED:
            for rid in action.request_ids:
                pending = self.pending.pop(rid, None)
                if pending is not None:
                    await self._hand_back(action.model, pending)
            return
        status, reason = DROP_STATUS[action.reason]
        log.debug("requests_dropped", model=action.model, reason=action.reason.value, requests=action.request_ids)
        outcome = {Status.DROPPED: "dropped", Status.OVERLOADED: "rejected"}.get(status, "unavailable")
        for rid in action.request_ids:
            pending = self.pending.pop(rid, None)
            if pending is None:
                continue
            self.metrics.count(action.model, outcome)
            await self._error(pending.reply, status, reason, pending.client_request_id)

    def _arm(self, wake_at_ns: int | None) -> None:
        if wake_at_ns == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = wake_at_ns
        if wake_at_ns is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(self.clock.to_loop_time(wake_at_ns), self._on_wake)

    def _on_wake(self) -> None:
        now = self.clock.now_ns()
        if self._timer_at is not None and now - self._timer_at > self.entry.jitter_us * 1000:
            self.metrics.late_wake_ups += 1
            log.warning("late_wake_up", shard=self.entry.id, late_us=(now - self._timer_at) // 1000,
                        jitter_us=self.entry.jitter_us)
        self._timer = None
        self._timer_at = None
        self._apply(self.policy.handle(WAKE_UP, now))

    # ---- completions and lost slots -----------------------------------------------------
    async def _on_done(self, msg: Msg) -> None:
        try:
            report = report_decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.error("bad_report", size=len(msg.data))
            return
        flight = self.inflight.pop(report.plan_id, None)
        log.debug("plan_done", plan=report.plan_id, status=report.status, compute_us=report.compute_us,
                  known=flight is not None)
        if flight is None:
            return
        self.metrics.succeeded[flight.model] = self.metrics.succeeded.get(flight.model, 0) + report.ok
        self.metrics.failed[flight.model] = self.metrics.failed.get(flight.model, 0) + report.errors
        if report.status == "withheld":
            # The agent got to the plan only after the moment this shard could have declared it
            # lost, so it answered nobody: the answer is this shard's, exactly once.
            for request in flight.requests:
                self.metrics.count(flight.model, "lost")
                await self._error(request.reply, Status.DROPPED, "dropped: the slot reached it too late",
                                  request.client_request_id)
        if flight.slot_id not in self._owned or flight.slot_id in self._lost:
            return  # the slot moved or was lost meanwhile: the core no longer has it
        now = self.clock.now_ns()
        self._busy_s += report.compute_us / 1e6
        since_sent_s = (now - flight.sent_ns) / 1e9
        latency = self.metrics.request_seconds[flight.model]
        for request in flight.requests:
            latency.observe(since_sent_s + request.queue_us / 1e6)
        event = BatchCompleted(self.slot_index[flight.slot_id], report.plan_id, now - report.compute_us * 1000, now)
        await self._apply_async(self.policy.handle(event, now))

    async def _watch_slots(self) -> None:
        grace_ns = int(self.entry.slot_grace_ms * 1e6)
        tick_ns = 100_000_000
        last = self.clock.now_ns()
        while True:
            await asyncio.sleep(tick_ns / 1e9)
            now = self.clock.now_ns()
            stalled_ns = now - last - tick_ns
            if stalled_ns > 2 * tick_ns:
                # This process was paused or starved, not the agents: reports may be waiting in
                # its socket. Extend every plan's grace by the stall instead of declaring loss.
                for flight in self.inflight.values():
                    flight.finish_ns += stalled_ns
                log.warning("shard_stalled", shard=self.entry.id, seconds=round(stalled_ns / 1e9, 2))
                last = self.clock.now_ns()
                continue
            if self.nc.stats["reconnects"] != self._reconnects:
                self._reconnects = self.nc.stats["reconnects"]
                self._reconnected_at = now
            overdue = {f.slot_id for f in self.inflight.values() if now > f.finish_ns + grace_ns}
            for slot_id in sorted(overdue):
                if await self._slot_is_lost(slot_id, grace_ns):
                    await self._lose_slot(slot_id, self.clock.now_ns())
            last = self.clock.now_ns()  # the checks' own waits are not a stall

    async def _slot_is_lost(self, slot_id: str, grace_ns: int) -> bool:
        """Declare a slot lost (and answer its requests 503) only on evidence that its agent will
        not answer them: a second reply must never follow. The server must be responsive (else
        reports may be stuck in it); then the agent either has no subscriber left (its connection
        is gone), or it answers a ping (ordered after any report it sent, so a plan still in
        flight has no report and its replies will be withheld), or it has been silent past
        AGENT_SILENCE_S (paused or cut off; its late replies are withheld by then)."""
        try:  # a round trip through the server to this shard's own status endpoint (nats-py's
            # flush() must not time out: a late PONG then breaks its read loop)
            await self.nc.request(f"{self.prefix}.shard.{self.entry.id}.status", b"", timeout=0.5)
        except nats.errors.Error:
            return False
        agent_id = self._agent_of_slot.get(slot_id)
        if agent_id is not None:
            try:
                await self.nc.request(f"{self.prefix}.agent.{agent_id}.info", b"", timeout=0.3)
            except nats.errors.NoRespondersError:
                # No subscriber: the agent's connection is gone, unless this shard has only just
                # reconnected itself (the agent may be a moment behind): then wait as for silence.
                if self.clock.now_ns() - self._reconnected_at < int(RECONNECT_SETTLE_S * 1e9):
                    return self._silent_too_long(slot_id, grace_ns)
            except nats.errors.TimeoutError:
                return self._silent_too_long(slot_id, grace_ns)
        await asyncio.sleep(0.02)  # let reports that arrived before the answer be handled
        now = self.clock.now_ns()
        still = any(f.slot_id == slot_id and now > f.finish_ns + grace_ns for f in self.inflight.values())
        return still

    def _silent_too_long(self, slot_id: str, grace_ns: int) -> bool:
        now = self.clock.now_ns()
        oldest = min((f.finish_ns for f in self.inflight.values() if f.slot_id == slot_id), default=now)
        return now > oldest + grace_ns + int(AGENT_SILENCE_S * 1e9)

    async def _lose_slot(self, slot_id: str, now: int) -> None:
        self._lost.add(slot_id)
        self.metrics.slots_lost += 1
        lost = [plan for plan, f in self.inflight.items() if f.slot_id == slot_id]
        count_ = 0
        unknown = 0
        for plan in lost:
            flight = self.inflight.pop(plan)
            if (flight.connection != self.nc.stats["reconnects"]
                    or flight.sent_ns < self._reconnected_at + int(RECONNECT_SETTLE_S * 1e9)):
                # Sent before this shard's connection broke, or while everyone was re-subscribing
                # after it: the agent's report may have died with the server or found no
                # subscriber yet while its replies got through, so this shard cannot know
                # whether the client was answered. Silence (the client's timeout) is the only
                # answer that can never be a second one.
                unknown += len(flight.requests)
                self.metrics.count(flight.model, "unknown", len(flight.requests))
                continue
            for request in flight.requests:
                count_ += 1
                self.metrics.count(flight.model, "lost")
                await self._error(request.reply, Status.UNAVAILABLE, f"slot {slot_id} was lost",
                                  request.client_request_id)
        log.warning("slot_lost", shard=self.entry.id, slot=slot_id, requests=count_, unknown=unknown)
        await self._apply_async(self.policy.handle(SlotRemoved(self.slot_index[slot_id]), now))

    # ---- shutdown -----------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop taking requests, answer everything still queued, then leave."""
        if self.nc is None:
            return
        if self.follower is not None:
            await self.follower.stop()
        for subs in self._model_subs.values():
            for sub in subs:
                await sub.drain()
        self._model_subs.clear()
        if getattr(self, "service", None) is not None:
            await self.service.stop()
        if self.policy is not None:
            await self._apply_async(self.policy.handle(SHUTDOWN, self.clock.now_ns()))
        await finish_hand_backs(self._hand_backs)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._timer is not None:
            self._timer.cancel()
        await self.nc.drain()
