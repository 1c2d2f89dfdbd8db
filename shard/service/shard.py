"""The shard service: a thin NATS shell that drives the scheduling core.

Ingress reads headers only and keeps each body as bytes; what a request gets at the door is
decided by shard/core/admission.py. Batched ingress (`<prefix>.infer_many.<model>`) opens a
batch message into its requests (shard/core/batch_ingress.py), each then taken as if it came
alone. Every core action becomes a message (shard/service/publish.py): a dispatch becomes one
batch plan to the slot's agent, a drop becomes an error reply at once, a plan that cannot be
sent is answered and the core told (`DispatchFailed`). Completion reports correct slot free
times; the lost-slot watch (shard/service/slot_watch.py) declares a slot lost when its reports
are overdue, answers its requests and tells the core the slot is gone. Every request the shard
accepts gets exactly one reply from the shard or, once dispatched, from the agent. The shell
reads nothing from the policy beyond the step contract (shard/core/policy.py).
"""

from __future__ import annotations

import asyncio
import time
from itertools import count

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from runtime.clock import MonotonicClock
from runtime.cluster_config import ClusterConfig, ShardEntry
from runtime.connect import connect_service, creds_of, flush_ordered
from runtime.handback import finish_hand_backs, hand_back_headers, start_hand_back
from runtime.metrics_http import MetricsEndpoint, serve_metrics
from runtime.nats_auth import HANDBACK_NAMESPACE
from runtime.services import register_service
from runtime.stats import config_members, serve_stats, snapshots
from schemas.control import preference_order
from schemas.ingress import INFER_MANY_TOKEN
from schemas.model import ModelList, ModelSpec, metadata_of
from schemas.plan import AgentInfo, PlanRequest, plan_encoder, report_decoder
from schemas.status import (
    CONTENT_JSON,
    HEADER_CONTENT_TYPE,
    HEADER_HANDED_BACK,
    HEADER_REPLIES,
    HEADER_STATUS,
    REPLIES_BATCHED,
    Status,
)
from schemas.status_report import ModelStatus, ShardStatus
from shard.core.actions import DispatchBatch, DropReason, DropRequests, Step
from shard.core.admission import (
    NO_HEADERS,
    Admission,
    AdmissionLimits,
    Admitted,
    Duplicate,
    Rejected,
    SeenIds,
    admit,
)
from shard.core.batch_ingress import admit_item, open_batch, read_item
from shard.core.config import ModelConfig, core_config_for
from shard.core.events import (
    SHUTDOWN,
    WAKE_UP,
    BatchCompleted,
    DispatchFailed,
    ModelAdded,
    ModelRemoved,
    RequestArrived,
    SlotAdded,
    SlotRemoved,
)
from shard.core.policies import DEFAULT_POLICY, make_policy
from shard.core.policy import ModelStats, Policy
from shard.service.clock import WakeTimer
from shard.service.metrics import ShardMetrics
from shard.service.publish import (
    DROP_REPLY,
    InFlight,
    Pending,
    Refusal,
    build_plan,
    plan_refusal,
    reply_error,
    take_requests,
)
from shard.service.slot_watch import SlotWatch
from shard.service.specs import ClassedSpec, agent_infos, classed_spec

log = structlog.get_logger("shard")

NO_STATS = ModelStats(0, 0, 0.0)
INGRESS_WEIGHT_MAX = 64  # ingress subscriptions per model at most (weigh_ingress): shares to 1/64


class ShardService:
    """Wires NATS subscriptions, the policy, admission, the plan publisher, the wake timer and
    the lost-slot watch together, and applies ownership changes the follower decides."""

    def __init__(self, config: ClusterConfig, shard_id: str, clock: MonotonicClock | None = None) -> None:
        self.config = config
        self.entry: ShardEntry = config.shard(shard_id)
        self.policy_name = self.entry.policy or DEFAULT_POLICY
        self.prefix = config.subject_prefix
        self.clock = clock or MonotonicClock()
        self.nc: nats.NATS | None = None
        self.policy: Policy | None = None
        self.service = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.follower = None
        self.specs: dict[str, ModelSpec] = {}
        self.model_configs: dict[str, ModelConfig] = {}  # what the core was given, per model held
        self.slot_index = {slot: i for i, slot in enumerate(self.entry.slots)}
        self.slot_names = list(self.entry.slots)
        self.slot_models = config.slot_models()  # what each slot can run: a plan elsewhere is refused
        self._agent_of_slot = {slot.id: agent.id for agent in config.agents for slot in agent.slots}
        self.pending: dict[int, Pending] = {}
        self.inflight: dict[int, InFlight] = {}
        self.metrics = ShardMetrics(list(self.entry.models), self._metrics_state)
        self.watch = SlotWatch(self.clock, shard_id=shard_id, prefix=self.prefix,
                               grace_ns=int(self.entry.slot_grace_ms * 1e6), inflight=self.inflight,
                               metrics=self.metrics, agent_of_slot=self._agent_of_slot, slot_lost=self._slot_lost)
        self._limits = AdmissionLimits(body_bytes_max=self.entry.body_bytes_max, queue_len_max=self.entry.queue_len_max)
        self._seen = SeenIds()
        self._ids = count(1)
        self._timer = WakeTimer(self.clock, self._on_wake)
        self._model_subs: dict[str, list] = {}
        self._ingress_extra: dict[str, list[list]] = {}  # model -> ingress members beyond the first (weigh_ingress)
        self._released: set[str] = set()  # models given up; requests still arriving are handed back
        self._hand_backs: set[asyncio.Task] = set()
        self._owned: set[str] = set(self.entry.slots)
        self._busy_s = 0.0

    # ---- start-up -----------------------------------------------------------------------
    async def start(self, nats_url: str, *, agents_timeout_s: float = 120.0) -> None:
        self.nc = await connect_service(nats_url, f"shard-{self.entry.id}")
        core = core_config_for(self.entry)
        if self.config.dynamic:
            self.slot_index, self.slot_names = {}, []  # the assignment brings slots
            self.policy = make_policy(self.policy_name, [], core)
        else:
            wanted = {self.config.agent_of_slot(s) for s in self.slot_names}
            infos = await agent_infos(self.nc, self.prefix, wanted, agents_timeout_s)
            classed = self._model_specs(infos)
            self.specs = {name: c.spec for name, c in classed.items()}
            self.model_configs = {name: c.model_config() for name, c in classed.items()}
            self.policy = make_policy(self.policy_name, list(self.model_configs.values()), core)
            now = self.clock.now_ns()
            ranked = preference_order(self.slot_names)
            classes = {slot.slot_id: slot.device for info in infos.values() for slot in info.slots}
            for slot in self.slot_names:
                self._apply(self.policy.handle(SlotAdded(self.slot_index[slot], rank=ranked.index(slot),
                                                         slot_class=classes.get(slot, "")), now))
            for model in self.entry.models:
                await self._subscribe_model(model)
        await self._subscribe()
        self.watch.start(self.nc)
        # Before registering: the first status snapshot already names the metrics URL.
        self.metrics_endpoint = serve_metrics(self.entry.metrics_port, self.config.metrics_host, self.metrics.registry)
        self.service = await register_service(
            self.nc, "symphony-shard", f"shard {self.entry.id}", {"shard_id": self.entry.id},
            f"{self.prefix}.shard.{self.entry.id}.status", self.status,
        )
        if self.config.dynamic:
            from shard.service.follower import AssignmentFollower

            self.follower = AssignmentFollower(self)
            await self.follower.start()
        log.info("shard_ready", shard=self.entry.id, models=list(self.specs), slots=self.slot_names,
                 policy=self.policy_name, coordinated=self.config.dynamic)

    def _model_specs(self, infos: dict[str, AgentInfo]) -> dict[str, ClassedSpec]:
        """Each model's spec, with the slowest profile among this shard's slots (reference §2.2)
        and the slowest per slot class (an agent's slots share its device, so its class)."""
        specs: dict[str, ClassedSpec] = {}
        for name in self.entry.models:
            spec = classed_spec((info.slots[0].device if info.slots else "", s)
                                for info in infos.values() for s in info.models if s.name == name)
            if spec is None:
                raise ValueError(f"no agent of shard {self.entry.id} reports model {name}")
            specs[name] = spec
        return specs

    async def _subscribe(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.meta", queue=f"{self.prefix}.meta", cb=self._meta_list)
        await self.nc.subscribe(f"{self.prefix}.shard.{self.entry.id}.done", cb=self._on_done,
                                pending_msgs_limit=1_000_000)
        await serve_stats(self.nc, self.prefix, f"shard.{self.entry.id}", self._stats_members,
                          lambda model: snapshots(self.metrics.stats, model))
        await flush_ordered(self.nc)

    def _stats_members(self) -> tuple[list[str], bool]:
        """Who else answers statistics requests: without a coordinator the config names everyone;
        with one, this shard knows its slots' agents (others answer within the asker's window)."""
        if not self.config.dynamic:
            return config_members(self.config), True
        agents = sorted({self._agent_of_slot[s] for s in self.usable_slots() if s in self._agent_of_slot})
        return [f"shard.{self.entry.id}", *(f"agent.{a}" for a in agents)], False

    async def _subscribe_model(self, model: str) -> None:
        self.metrics.add_model(model)
        self._model_subs[model] = [
            *await self._ingress_subscriptions(model),
            await self.nc.subscribe(f"{self.prefix}.meta.{model}", queue=f"{self.prefix}.meta.{model}",
                                    cb=self._meta(model)),
        ]
        await flush_ordered(self.nc)  # the server has our interest before we count the model as gained

    async def _ingress_subscriptions(self, model: str) -> list:
        """One member of each of the model's request queue groups: one request a message, and many."""
        limits = {"pending_msgs_limit": 1_000_000, "pending_bytes_limit": 1024 * 1024 * 1024}
        single, many = f"{self.prefix}.infer.{model}", f"{self.prefix}.{INFER_MANY_TOKEN}.{model}"
        return [await self.nc.subscribe(single, queue=single, cb=self._ingress(model), **limits),
                await self.nc.subscribe(many, queue=many, cb=self._ingress_many(model), **limits)]

    async def weigh_ingress(self) -> None:
        """Take each model's requests in proportion to this shard's slots that run it (issue 14:
        a model split over shards). NATS hands each message of a queue group to one member at
        random, so a shard with w members in each ingress group gets w shares. Extra members are
        drained, not dropped, when the weight falls: what they were handed is still served."""
        slots = self.usable_slots()
        for model in list(self._model_subs):
            weight = sum(1 for slot in slots if model in self.slot_models.get(slot, ()))
            extra = self._ingress_extra.setdefault(model, [])
            want = max(0, min(weight, INGRESS_WEIGHT_MAX) - 1)
            while len(extra) < want:
                extra.append(await self._ingress_subscriptions(model))
            while len(extra) > want:
                for sub in extra.pop():
                    await sub.drain()
        await flush_ordered(self.nc)

    # ---- ownership changes (a coordinator moves models and slots) -----------------------
    async def add_model(self, classed: ClassedSpec) -> None:
        spec = classed.spec
        if spec.name in self.specs:
            self._released.discard(spec.name)
            return
        self.specs[spec.name] = spec
        self._released.discard(spec.name)
        model = classed.model_config()
        self.model_configs[spec.name] = model
        await self._apply_async(self.policy.handle(ModelAdded(model), self.clock.now_ns()))
        await self._subscribe_model(spec.name)
        log.info("model_gained", shard=self.entry.id, model=spec.name)

    async def refresh_model(self, classed: ClassedSpec) -> None:
        """New profiles for a model held (a slower slot class joined after it did). The core keeps
        a model's profiles while it holds it, so the model leaves the core and comes straight back
        with the new ones, both decided before anything is awaited, so no request falls between.
        What it had queued is handed back to its subject, which this shard still takes, and is
        planned again; batches already sent run on."""
        name = classed.spec.name
        if name not in self.specs:
            return
        model = classed.model_config()
        now = self.clock.now_ns()
        removed = self.policy.handle(ModelRemoved(name), now)
        added = self.policy.handle(ModelAdded(model), now)
        self.specs[name], self.model_configs[name] = classed.spec, model
        await self._apply_async(removed)
        await self._apply_async(added)
        log.info("model_profiles_refreshed", shard=self.entry.id, model=name, classes=sorted(model.class_profiles))

    async def remove_model(self, name: str) -> None:
        """Stop taking its requests (finishing the ones already delivered), then hand back what
        it still holds: re-published to the model's subject, the new owner answers them."""
        if name not in self.specs:
            return
        self._released.add(name)
        for sub in self._model_subs.pop(name, []) + [s for group in self._ingress_extra.pop(name, []) for s in group]:
            await sub.drain()
        if name not in self._released:  # gained back while draining: add_model found it held
            await self._subscribe_model(name)
            await self.weigh_ingress()
            return
        del self.specs[name]
        self.model_configs.pop(name, None)
        await self._apply_async(self.policy.handle(ModelRemoved(name), self.clock.now_ns()))
        log.info("model_released", shard=self.entry.id, model=name)

    async def add_slot(self, slot_id: str, rank: int | None = None, slot_class: str = "") -> None:
        """`rank`: the slot's place in the cluster's preference order (schemas.control.preference_order);
        `slot_class`: its agent's device class, which every held model's profiles cover (specs.py)."""
        if slot_id not in self.slot_index:
            self.slot_index[slot_id] = len(self.slot_names)
            self.slot_names.append(slot_id)
        self.watch.forget(slot_id)
        self._owned.add(slot_id)
        await self._apply_async(self.policy.handle(SlotAdded(self.slot_index[slot_id], rank=rank,
                                                             slot_class=slot_class), self.clock.now_ns()))

    async def remove_slot(self, slot_id: str) -> None:
        if slot_id not in self._owned:
            return
        self._owned.discard(slot_id)
        await self._apply_async(self.policy.handle(SlotRemoved(self.slot_index[slot_id]), self.clock.now_ns()))

    async def _slot_lost(self, slot_id: str, now: int) -> None:
        """The watch declared the slot lost and answered its requests: the core lets it go."""
        await self._apply_async(self.policy.handle(SlotRemoved(self.slot_index[slot_id]), now))

    def held_slots(self) -> list[str]:
        """Slots this shard owns or has a plan on that no report answered yet: a slot the
        autoscaler drains is released only when no shard holds it (coordinator/slots.py)."""
        return sorted(self.usable_slots() | {f.slot_id for f in self.inflight.values()})

    def busy_seconds(self) -> float:
        """Slot time of completed batches since start, as the agents measured it."""
        return self._busy_s

    def agent_of_slot(self, slot_id: str) -> str | None:
        return self._agent_of_slot.get(slot_id)

    def usable_slots(self) -> set[str]:
        """Slots this shard owns and has not declared lost."""
        return self._owned - self.watch.lost

    async def _hand_back(self, model: str, pending: Pending) -> None:
        headers = hand_back_headers(pending.content_type, pending.client_request_id, pending.deadline_unix_ns)
        self.metrics.count(model, "handed_back")
        start_hand_back(self.nc, f"{self.prefix}.infer.{model}", pending.body, headers, pending.reply,
                        self._hand_backs)

    # ---- what the shard reports ---------------------------------------------------------
    def _model_stats(self) -> dict[str, ModelStats]:
        return self.policy.stats(self.clock.now_ns()) if self.policy is not None else {}

    def _metrics_state(self) -> dict:
        return {
            "models": self._model_stats(),
            "slots_owned": len(self.usable_slots()),
            "slots_busy": len({f.slot_id for f in self.inflight.values()}),
        }

    def _epoch(self) -> int:
        return self.follower.epoch if self.follower is not None else 0

    def status(self) -> ShardStatus:
        stats = self._model_stats()
        outcomes = self.metrics.outcomes
        models = []
        for name in self.specs:
            held, target, rate = stats.get(name, NO_STATS)
            models.append(ModelStatus(name=name, pending=held, target_batch_size=target, rate_rps=rate,
                                      received=self.metrics.received.get(name, 0),
                                      dispatched=outcomes.get((name, "dispatched"), 0),
                                      dropped=outcomes.get((name, "dropped"), 0)))
        return ShardStatus(
            shard_id=self.entry.id, policy=self.policy_name, epoch=self._epoch(), models=models,
            slots_owned=[s for s in self.slot_names if s in self._owned and s not in self.watch.lost],
            slots_busy=sorted({f.slot_id for f in self.inflight.values()}),
            slots_lost=sorted(self.watch.lost),
            busy_seconds=self._busy_s,
            metrics_url=self.metrics_endpoint.url if self.metrics_endpoint is not None else "",
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
        received = self.metrics.received

        async def on_request(msg: Msg) -> None:
            now = self.clock.now_ns()
            received[model] += 1
            if not msg.reply:
                return  # a publish without a reply subject cannot be answered; nothing to do
            headers = msg.headers or NO_HEADERS
            spec = self.specs.get(model)
            admission = admit(headers, len(msg.data), int(spec.slo_ms * 1e6) if spec is not None else 0,
                              self.clock.wall_ns(), now, self._seen, self._limits, queued=len(self.pending),
                              released=model in self._released, handed_back=self._handed_back(msg, headers))
            await self._take(model, msg.reply, msg.data, admission, now)

        return on_request

    def _ingress_many(self, model: str):  # noqa: ANN202
        """Batched ingress (schemas/ingress.py): each item is admitted and queued as its single
        request would be and gets its own reply (its 200 batched with others' if the message asks);
        the core sees one arrival per request. Only a message that is not a batch is answered as
        a whole, on its reply."""
        received = self.metrics.received

        async def on_batch(msg: Msg) -> None:
            now = self.clock.now_ns()
            headers = msg.headers or NO_HEADERS
            items = open_batch(msg.data, headers)
            if items.__class__ is Rejected:
                received[model] += 1
                self.metrics.batches[model, "refused"] += 1
                if msg.reply:
                    await self._turn_away(model, msg.reply, items, now)
                return
            self.metrics.batches[model, "opened"] += 1
            received[model] += len(items)
            content_type = headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON)
            spec = self.specs.get(model)
            slo_ns = int(spec.slo_ms * 1e6) if spec is not None else 0
            wall = self.clock.wall_ns()
            released = model in self._released
            batched = headers.get(HEADER_REPLIES) == REPLIES_BATCHED and bool(msg.reply)
            wake_at_ns, armed = None, True
            for index, raw in enumerate(items):
                reply, item = read_item(raw, index, content_type, msg.reply or "")
                if not reply:
                    continue  # nowhere to answer: as a single request without a reply subject
                if item.__class__ is Rejected:
                    admission, body = item, b""
                else:
                    body = bytes(item.body)
                    admission = admit_item(item, len(body), content_type, slo_ns, wall, now, self._seen,
                                           self._limits, queued=len(self.pending), released=released)
                if admission.__class__ is Admitted and not admission.hand_back:
                    step = self._queue(model, reply, body, admission, now, batched and not item.reply)
                    if not step.actions:
                        wake_at_ns, armed = step.wake_at_ns, False  # armed once, after the batch
                        continue
                    await self._apply_async(step)  # arms the timer
                else:
                    if not armed:  # the core's wake-up is set before anything that may yield
                        self._timer.arm(wake_at_ns)
                    await self._answer_at_door(model, reply, body, admission, now)
                armed = True
            if not armed:
                self._timer.arm(wake_at_ns)  # the core's next wake-up after the batch's last arrival

        return on_batch

    async def _take(self, model: str, reply: str, body: bytes, admission: Admission, now: int) -> None:
        """A single request past the door: turned away, handed back, or queued and shown to the core."""
        if admission.__class__ is not Admitted or admission.hand_back:
            await self._answer_at_door(model, reply, body, admission, now)
            return
        step = self._queue(model, reply, body, admission, now, False)
        if step.actions:
            await self._apply_async(step)
        else:
            self._timer.arm(step.wake_at_ns)  # the common case: the request waits in its window

    async def _answer_at_door(self, model: str, reply: str, body: bytes, admission: Admission,
                              arrived_ns: int) -> None:
        """A request the shard does not queue: turned away, or handed back to the model's new owner."""
        if admission.__class__ is not Admitted:
            await self._turn_away(model, reply, admission, arrived_ns)
            return
        await self._hand_back(model, Pending(reply, body, admission.content_type, admission.client_request_id, 0,
                                             admission.deadline_unix_ns))

    def _queue(self, model: str, reply: str, body: bytes, admission: Admitted, now: int,
               reply_batched: bool) -> Step:
        """Queue an admitted request and show it to the core; the caller applies the step (no
        await here, so a batch can arm the wake timer once, for its last step)."""
        pending = Pending(reply, body, admission.content_type, admission.client_request_id, now,
                          admission.deadline_unix_ns, reply_batched)
        rid = next(self._ids)
        self.pending[rid] = pending
        self._seen.remember(admission.client_request_id, now + admission.slo_ns, now)
        log.debug("request_received", request=rid, client_request_id=admission.client_request_id, model=model)
        started = time.perf_counter()
        step = self.policy.handle(RequestArrived(rid, model, admission.slo_ns), now)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        return step

    async def _turn_away(self, model: str, reply: str, admission: Admission, arrived_ns: int) -> None:
        """A rejection is answered and counted; a duplicate is only counted (the first copy answers)."""
        if admission.__class__ is Duplicate:
            self.metrics.count(model, "duplicate")
            return
        self.metrics.count_failed(model, admission.outcome, 1, self.clock.now_ns() - arrived_ns, self.clock.wall_ns())
        await reply_error(self.nc, reply, admission.status, admission.reason, admission.client_request_id)

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

    # ---- actions ------------------------------------------------------------------------
    def _apply(self, step: Step) -> None:
        """`_apply_async` where no await is possible."""
        asyncio.get_running_loop().create_task(self._apply_async(step))

    async def _apply_async(self, step: Step) -> None:
        now = self.clock.now_ns()
        for action in step.actions:
            if action.__class__ is DispatchBatch:
                await self._dispatch(action, now)
            elif action.__class__ is DropRequests:
                await self._drop(action)
        self._timer.arm(step.wake_at_ns)

    async def _dispatch(self, action: DispatchBatch, now: int) -> None:
        slot_id = self.slot_names[action.slot_id]
        log.debug("plan_sent", plan=action.plan_id, slot=slot_id, model=action.model, size=len(action.request_ids),
                  exec_in_us=(action.exec_at_ns - now) // 1000, requests=action.request_ids)
        requests = take_requests(self.pending, action.request_ids, now)
        plan = build_plan(action, requests, shard_id=self.entry.id, slot_id=slot_id, epoch=self._epoch(), now_ns=now,
                          wall_ns=self.clock.wall_ns(), resp_ns=self.policy.resp_ns, grace_ns=self.watch.grace_ns)
        data = plan_encoder.encode(plan)
        refusal = plan_refusal(action.model, slot_id, self.slot_models.get(slot_id, ()), len(requests), len(data),
                               self.nc.max_payload)
        if refusal is not None:
            log.error("plan_refused", shard=self.entry.id, plan=action.plan_id, slot=slot_id, model=action.model,
                      why=refusal.why, bytes=len(data), max_payload=self.nc.max_payload)
            await self._refuse_plan(action, requests, refusal, now)
            return
        self.inflight[action.plan_id] = InFlight(slot_id, action.model, requests, now, action.finish_at_ns,
                                                 self.nc.stats["reconnects"])
        self.metrics.count_dispatch(action.model, requests)
        await self.nc.publish(f"{self.prefix}.slot.{slot_id}.plan", data)

    async def _refuse_plan(self, action: DispatchBatch, requests: list[PlanRequest], refusal: Refusal,
                           now: int) -> None:
        """Answer every request of a batch that will not be sent; the core frees the slot at once."""
        self.metrics.plans_refused[refusal.why] += 1
        self.metrics.count_failed(action.model, refusal.outcome, len(requests),
                                  sum(r.queue_us for r in requests) * 1000, self.clock.wall_ns())
        for request in requests:
            await reply_error(self.nc, request.reply, refusal.status, refusal.reason, request.client_request_id)
        await self._apply_async(self.policy.handle(DispatchFailed(action.slot_id, action.plan_id), now))

    async def _drop(self, action: DropRequests) -> None:
        if action.reason is DropReason.MOVED:
            for rid in action.request_ids:
                pending = self.pending.pop(rid, None)
                if pending is not None:
                    await self._hand_back(action.model, pending)
            return
        status, reason, outcome = DROP_REPLY[action.reason]
        log.debug("requests_dropped", model=action.model, reason=action.reason.value, requests=action.request_ids)
        now, wall = self.clock.now_ns(), self.clock.wall_ns()
        for rid in action.request_ids:
            pending = self.pending.pop(rid, None)
            if pending is None:
                continue
            self.metrics.count_failed(action.model, outcome, 1, now - pending.recv_ns, wall)
            await reply_error(self.nc, pending.reply, status, reason, pending.client_request_id)

    def _on_wake(self, due_ns: int) -> None:
        now = self.clock.now_ns()
        if now - due_ns > self.entry.jitter_us * 1000:
            self.metrics.late_wake_ups += 1
            log.warning("late_wake_up", shard=self.entry.id, late_us=(now - due_ns) // 1000,
                        jitter_us=self.entry.jitter_us)
        self._apply(self.policy.handle(WAKE_UP, now))

    # ---- completions --------------------------------------------------------------------
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
            requests = flight.requests
            self.metrics.count_failed(flight.model, "lost", len(requests), sum(r.queue_us for r in requests) * 1000
                                      + len(requests) * (self.clock.now_ns() - flight.sent_ns), self.clock.wall_ns())
            for request in requests:
                await reply_error(self.nc, request.reply, Status.DROPPED, "dropped: the slot reached it too late",
                                  request.client_request_id)
        if flight.slot_id not in self._owned or flight.slot_id in self.watch.lost:
            return  # the slot moved or was lost meanwhile: the core no longer has it
        now = self.clock.now_ns()
        self._busy_s += report.compute_us / 1e6
        since_sent_s = (now - flight.sent_ns) / 1e9
        latency = self.metrics.request_seconds[flight.model]
        for request in flight.requests:
            latency.observe(since_sent_s + request.queue_us / 1e6)
        event = BatchCompleted(self.slot_index[flight.slot_id], report.plan_id, now - report.compute_us * 1000, now)
        await self._apply_async(self.policy.handle(event, now))

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
        if self.service is not None:
            await self.service.stop()
        if self.policy is not None:
            await self._apply_async(self.policy.handle(SHUTDOWN, self.clock.now_ns()))
        await finish_hand_backs(self._hand_backs)
        self.watch.stop()
        self._timer.cancel()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        await self.nc.drain()
