"""The GPU agent service: loads its models (compiling every bucket and profiling), serves its
slots' plan subjects, executes each slot's plans in arrival order, replies to every request's
inbox directly and reports each completion to the shard that sent the plan.

Execution is the shell's job; what a plan means is decided by the shard, and what this agent
does with it at each stage (run, hand back, withhold, expire, reject) by the pure
gpu_agent/decisions.py. This shell reads time only through its clock (runtime/clock.py): the
monotonic clock for how long a plan waited and ran, the wall clock for each decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from gpu_agent.batches import (
    ErrorAnswer,
    Outcome,
    Prepared,
    Received,
    answer_all,
    encode_replies,
    measure_request_overhead_us,
    prepare,
)
from gpu_agent.decisions import (
    Decision,
    Expire,
    HandBack,
    PlanTimes,
    Reject,
    RejectReason,
    Run,
    SlotState,
    Stage,
    Withhold,
    decide,
)
from gpu_agent.fencing import SlotOwner, decide_claim
from gpu_agent.metrics import AgentMetrics
from gpu_agent.runners import JaxRunner, Runner, SleepRunner, bucket_for, make_runner, slot_class
from runtime.clock import Clock, MonotonicClock
from runtime.cluster_config import AgentEntry, ClusterConfig
from runtime.connect import connect_service, flush_ordered
from runtime.handback import finish_hand_backs, hand_back_headers, start_hand_back
from runtime.kv import open_buckets, with_retries
from runtime.metrics_http import MetricsEndpoint, serve_metrics
from runtime.services import register_service
from runtime.stats import ModelCounters, config_members, serve_stats, snapshots
from schemas.control import AgentHeartbeat, AgentSlot, ClaimReply, slot_claim_decoder
from schemas.control import encode as control_encode
from schemas.plan import (
    REPORT_VERSION,
    AgentInfo,
    BatchPlan,
    CompletionReport,
    PlanRequest,
    ReportStatus,
    SlotInfo,
    plan_decoder,
)
from schemas.status import Status, error_headers
from schemas.status_report import AgentStatus, SlotStatus

log = structlog.get_logger("gpu_agent")

EXPIRED_REASON = "expired before the batch could start"


class _Slot:
    def __init__(self, slot_id: str, models: list[str], queue_max: int) -> None:
        self.slot_id = slot_id
        self.models = models
        self.model_set = frozenset(models)
        self.queue: asyncio.Queue[Received] = asyncio.Queue(queue_max)
        self.owner = ""  # the shard that claimed it ("" without a coordinator: anyone may send)
        self.epoch = 0
        self.recent: deque[tuple[int, float]] = deque()  # (finished_ns, seconds) of recent batches
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot-{slot_id}")
        self.executions = 0
        # Plans taken to run and not yet answered, by (shard, plan id): a slot the autoscaler
        # drains is released only at none (its heartbeat's `plans_open`).
        self.open: set[tuple[str, int]] = set()

    def state(self) -> SlotState:
        return SlotState(owner=SlotOwner(shard=self.owner, epoch=self.epoch), models=self.model_set,
                         queue_full=self.queue.full())

    def busy_fraction(self, now_ns: int, window_s: float = 10.0) -> float:
        while self.recent and self.recent[0][0] < now_ns - window_s * 1e9:
            self.recent.popleft()
        return min(1.0, sum(d for _t, d in self.recent) / window_s)


class Agent:
    def __init__(self, config: ClusterConfig, agent_id: str, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.entry: AgentEntry = config.agent(agent_id)
        self.prefix = config.subject_prefix
        names = sorted({m for slot in self.entry.slots for m in slot.models})
        self.runners: dict[str, Runner] = {}
        for name in names:
            entry = config.model(name)
            self.runners[name] = make_runner(name, entry.kind, entry.batch_size_max, entry.slo_ms, self.entry.speed)
        self.slot_class = slot_class(self.entry.slot_class, self.entry.speed, self.runners.values())
        self.slots = {s.id: _Slot(s.id, s.models, self.entry.plan_queue_max) for s in self.entry.slots}
        self.stats = {name: ModelCounters() for name in names}  # Triton's statistics (runtime/stats.py)
        self.plan_subscriptions: dict[str, object] = {}
        self.metrics = AgentMetrics(self._metrics_state)
        for kind in ("plan", "claim"):
            self.metrics.undecodable.labels(kind)
        for slot in self.entry.slots:  # every series exists from the start, at zero
            self.metrics.expired_plans.labels(slot.id)
            self.metrics.expired_items.labels(slot.id)
            self.metrics.withheld_plans.labels(slot.id)
            self.metrics.late_compute_seconds.labels(slot.id)
            for model in slot.models:
                for counter in (self.metrics.executions, self.metrics.items, self.metrics.compute_seconds,
                                self.metrics.padding_items):
                    counter.labels(slot.id, model)
        self.nc: nats.NATS | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self._hand_backs: set[asyncio.Task] = set()

    def _metrics_state(self) -> dict:
        memory: dict[str, float] = {}
        if any(isinstance(r, JaxRunner) for r in self.runners.values()):
            import jax

            for device in jax.local_devices():
                stats = device.memory_stats() if hasattr(device, "memory_stats") else None
                if stats and "bytes_in_use" in stats:
                    memory[str(device)] = stats["bytes_in_use"]
        return {
            "compiles": {name: r.compile_count for name, r in self.runners.items()},
            "queued": {slot_id: slot.queue.qsize() for slot_id, slot in self.slots.items()},
            "memory": memory,
        }

    def status(self) -> AgentStatus:
        now_ns = self.clock.now_ns()
        return AgentStatus(
            agent_id=self.entry.id, device=self.slot_class,
            slots=[SlotStatus(slot_id=s.slot_id, models=s.models, plans_queued=s.queue.qsize(),
                              executions=s.executions, owner=s.owner, epoch=s.epoch,
                              busy_fraction=s.busy_fraction(now_ns)) for s in self.slots.values()],
            compile_count={name: r.compile_count for name, r in self.runners.items()},
            metrics_url=self.metrics_endpoint.url if self.metrics_endpoint is not None else "",
        )

    def load(self) -> None:
        """Compile and profile every model (slow; before serving, never on the request path).

        The published profile adds the agent's own cost per request (decoding, validating,
        encoding and sending the reply), measured here, so the scheduler plans with what a
        batch really takes on this agent, not only the model's forward pass. Its `device` is
        this agent's slot class: shards keep one profile per class (issue 16)."""
        for runner in self.runners.values():
            started_ns = self.clock.now_ns()
            runner.load()
            per_request_us = measure_request_overhead_us(runner)
            runner.profile = msgspec.structs.replace(runner.profile.plus_per_item(per_request_us),
                                                     device=self.slot_class)
            log.info("model_loaded", model=runner.name, slot_class=self.slot_class, compile_count=runner.compile_count,
                     per_request_us=round(per_request_us, 1),
                     seconds=round((self.clock.now_ns() - started_ns) / 1e9, 2))

    def info(self) -> AgentInfo:
        return AgentInfo(
            agent_id=self.entry.id,
            slots=[SlotInfo(slot_id=s.slot_id, agent_id=self.entry.id, device=self.slot_class, models=s.models)
                   for s in self.slots.values()],
            models=[r.spec() for r in self.runners.values()],
        )

    async def start(self, nats_url: str) -> None:
        self.nc = await connect_service(nats_url, f"agent-{self.entry.id}")
        info = msgspec.msgpack.encode(self.info())

        async def on_info(msg: Msg) -> None:
            await msg.respond(info)

        await self.nc.subscribe(f"{self.prefix}.agent.{self.entry.id}.info", cb=on_info)
        await serve_stats(self.nc, self.prefix, f"agent.{self.entry.id}", self._stats_members,
                          lambda model: snapshots(self.stats, model))
        for slot in self.slots.values():
            self.plan_subscriptions[slot.slot_id] = await self.nc.subscribe(
                f"{self.prefix}.slot.{slot.slot_id}.plan", cb=self._enqueue(slot),
                pending_msgs_limit=100_000, pending_bytes_limit=512 * 1024 * 1024,
            )
            self._tasks.append(asyncio.create_task(self._serve(slot)))
        await flush_ordered(self.nc)
        # Before registering: the first status snapshot already names the metrics URL.
        self.metrics_endpoint = serve_metrics(self.entry.metrics_port, self.config.metrics_host, self.metrics.registry)
        self.service = await register_service(
            self.nc, "symphony-agent", f"agent {self.entry.id}: slots {', '.join(self.slots)}",
            {"agent_id": self.entry.id}, f"{self.prefix}.agent.{self.entry.id}.status", self.status,
        )
        if self.config.dynamic:
            await self._join_coordinated()
        log.info("agent_ready", agent=self.entry.id, slots=list(self.slots), models=list(self.runners))

    def _stats_members(self) -> tuple[list[str], bool]:
        """Who else answers statistics requests: without a coordinator the config names everyone."""
        if self.config.dynamic:
            return [f"agent.{self.entry.id}"], False
        return config_members(self.config), True

    async def _join_coordinated(self) -> None:
        """With a coordinator: publish profiles, answer slot claims, heartbeat the slots."""
        settings = self.config.coordinator
        self.buckets = await open_buckets(self.nc, heartbeat_ttl_s=settings.heartbeat_ttl_s,
                                          lease_s=settings.lease_s, replicas=settings.kv_replicas)
        await self._publish_profiles()

        async def on_claim(msg: Msg) -> None:
            try:
                claim = slot_claim_decoder.decode(msg.data)
            except msgspec.DecodeError as error:
                self.metrics.undecodable.labels("claim").inc()
                await msg.respond(control_encode(ClaimReply(ok=False, reason=f"bad claim: {str(error)[:200]}")))
                return
            slot = self.slots.get(claim.slot_id)
            if slot is None:
                reply = ClaimReply(ok=False, reason=f"no slot {claim.slot_id} here")
            else:
                decision = decide_claim(SlotOwner(shard=slot.owner, epoch=slot.epoch), claim.shard_id, claim.epoch)
                slot.owner, slot.epoch = decision.owner.shard, decision.owner.epoch
                reply = ClaimReply(ok=decision.granted, reason=decision.reason, queued_plans=slot.queue.qsize())
                if decision.granted:
                    log.info("slot_claimed", slot=slot.slot_id, shard=claim.shard_id, epoch=claim.epoch)
            await msg.respond(control_encode(reply))

        await self.nc.subscribe(f"{self.prefix}.agent.{self.entry.id}.claim", cb=on_claim)
        await with_retries(self._heartbeat)
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(settings.heartbeat_ttl_s / 3)))

    async def _heartbeat(self) -> None:
        beat = AgentHeartbeat(agent_id=self.entry.id, device=self.slot_class, slots=[
            AgentSlot(slot_id=s.slot_id, models=s.models, owner=s.owner, epoch=s.epoch, plans_open=len(s.open))
            for s in self.slots.values()],
            memory_bytes={k: int(v) for k, v in self._metrics_state()["memory"].items()})
        await self.buckets.members.put(f"agent.{self.entry.id}", control_encode(beat))

    async def _publish_profiles(self) -> None:
        for runner in self.runners.values():
            key, value = f"profiles.{runner.name}.{self.entry.id}", control_encode(runner.spec())
            await with_retries(lambda key=key, value=value: self.buckets.state.put(key, value))

    async def _heartbeat_loop(self, period_s: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(period_s)
            try:
                await self._heartbeat()
                if failing:  # the KV may have come back empty (soft state): publish profiles again
                    await self._publish_profiles()
                    failing = False
            except (nats.errors.Error, OSError) as error:
                failing = True
                log.warning("heartbeat_failed", agent=self.entry.id, error=repr(error))

    # ---- the plan pipeline: receive -> prepare -> execute -> reply, per slot, in order ----
    # Each stage asks gpu_agent/decisions.py what to do with the plan at that moment; every plan
    # that is not handed back or withheld ends in `_finish`, the reply stage's decision.

    def _enqueue(self, slot: _Slot):  # noqa: ANN202
        """The plan subject's callback (Stage.RECEIVED): fence and admit each plan on arrival."""

        async def on_plan(msg: Msg) -> None:
            received_ns = self.clock.now_ns()
            plan = self._decode_plan(slot, msg.data)
            if plan is None:
                return
            decision = await self._decide(Stage.RECEIVED, plan, slot)
            match decision:
                case Run():
                    slot.open.add((plan.shard_id, plan.plan_id))
                    slot.queue.put_nowait(Received(plan, received_ns))  # `decide` saw room; no await since
                case HandBack():
                    await self._hand_back(plan)
                case Reject(reason=reason):
                    await self._finish(slot, self._rejected(slot, plan, reason, received_ns))
                case Withhold():
                    await self._withhold(slot, plan, decision)
                case _:
                    raise AssertionError(f"{decision} is not decided on receipt")
        return on_plan

    async def _decide(self, stage: Stage, plan: BatchPlan, slot: _Slot,
                      requests: list[PlanRequest] | None = None) -> Decision:
        """The decision at `stage`, now. While disconnected it waits first: replies published then
        would sit in the client's buffer and go out after the reconnect, whatever the time, so
        the moment that counts is when they can leave."""
        while not self.nc.is_connected:
            await asyncio.sleep(0.05)
        return decide(stage, PlanTimes.of(plan, requests), slot.state(), self.clock.wall_ns())

    async def _serve(self, slot: _Slot) -> None:
        """Three stages per slot, so decoding the next plan and replying to the last overlap the
        current batch's compute: prepare -> execute -> reply, in arrival order throughout."""
        ready: asyncio.Queue[Prepared] = asyncio.Queue(maxsize=1)
        done: asyncio.Queue[Outcome] = asyncio.Queue(maxsize=2)
        stages = [asyncio.create_task(self._execute_stage(slot, ready, done)),
                  asyncio.create_task(self._reply_stage(slot, done))]
        try:
            while True:
                received = await slot.queue.get()
                try:
                    prepared = await self._prepare(slot, received)
                except Exception:
                    log.exception("plan_failed", slot=slot.slot_id, stage="prepare")
                    failed = Outcome(received.plan, ReportStatus.FAILED, answer_all(
                        received.plan.requests, Status.INTERNAL, "internal error while preparing the batch"),
                        received_ns=received.received_ns)
                    try:
                        await self._finish(slot, failed)
                    except Exception:
                        log.exception("plan_failed", slot=slot.slot_id, stage="reject")
                    continue
                if prepared is not None:
                    await ready.put(prepared)
        finally:
            for stage in stages:
                stage.cancel()

    async def _prepare(self, slot: _Slot, received: Received) -> Prepared | None:
        """Stage.DEQUEUED: the plan at the front of its slot's queue, its bodies decoded."""
        plan = received.plan
        decision = await self._decide(Stage.DEQUEUED, plan, slot)
        match decision:
            case Withhold():
                await self._withhold(slot, plan, decision)
                return None
            case Reject(reason=reason):
                await self._finish(slot, self._rejected(slot, plan, reason, received.received_ns))
                return None
        assert isinstance(decision, Run), decision
        started_ns = self.clock.now_ns()
        prepared = prepare(plan, self.runners[plan.model], received.received_ns)
        if not prepared.requests:  # every body was bad: each is answered 400, nothing runs
            await self._finish(slot, Outcome(plan, ReportStatus.DONE, prepared.answers,
                                             received_ns=received.received_ns))
            return None
        return dataclasses.replace(prepared, input_ns=self.clock.now_ns() - started_ns)

    async def _execute_stage(self, slot: _Slot, ready: asyncio.Queue[Prepared], done: asyncio.Queue[Outcome]) -> None:
        while True:
            outcome = await self._execute(slot, await ready.get())
            if outcome is not None:
                await done.put(outcome)

    async def _execute(self, slot: _Slot, prepared: Prepared) -> Outcome | None:
        """Stage.STARTING: requests past their deadline are expired, the rest run as one batch."""
        plan = prepared.plan
        waited_us = (self.clock.now_ns() - prepared.received_ns) // 1000
        decision = await self._decide(Stage.STARTING, plan, slot, prepared.requests)
        match decision:
            case Withhold():
                await self._withhold(slot, plan, decision)
                return None
            case Expire():
                prepared = self._expire(slot, prepared, decision)
                if not prepared.requests:
                    self.metrics.expired_plans.labels(slot.slot_id).inc()
                    return Outcome(plan, ReportStatus.EXPIRED, prepared.answers, waited_us=waited_us,
                                   received_ns=prepared.received_ns)
            case _:
                assert isinstance(decision, Run), decision
        log.debug("plan_started", plan=plan.plan_id, shard=plan.shard_id, slot=slot.slot_id, model=plan.model,
                  waited_us=waited_us, requests=[r.request_id for r in prepared.requests],
                  client_request_ids=[r.client_request_id for r in prepared.requests if r.client_request_id])
        return await self._run(slot, prepared, waited_us)

    def _expire(self, slot: _Slot, prepared: Prepared, expire: Expire) -> Prepared:
        """The batch without its expired requests, whose 504s join the plan's answers."""
        self.metrics.expired_items.labels(slot.slot_id).inc(len(expire.expired))
        requests, kept = prepared.requests, list(expire.kept)
        answers = prepared.answers + [ErrorAnswer(requests[i], Status.DROPPED, EXPIRED_REASON) for i in expire.expired]
        return Prepared(prepared.plan, prepared.runner, [requests[i] for i in kept],
                        {name: rows[kept] for name, rows in prepared.inputs.items()}, answers, prepared.received_ns,
                        prepared.input_ns)

    async def _run(self, slot: _Slot, prepared: Prepared, waited_us: int) -> Outcome:
        """One batch on the slot's device: its outputs, or every request in it answered 500."""
        plan, runner, requests = prepared.plan, prepared.runner, prepared.requests
        started_ns = self.clock.now_ns()
        try:
            if isinstance(runner, SleepRunner):
                await asyncio.sleep(runner.duration_s(len(requests)))
                outputs = runner.run(prepared.inputs, len(requests))
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    slot.executor, runner.run, prepared.inputs, len(requests))
        except Exception:
            log.exception("plan_failed", slot=slot.slot_id, stage="execute", plan=plan.plan_id)
            answers = prepared.answers + answer_all(requests, Status.INTERNAL, "internal error while running the batch")
            return Outcome(plan, ReportStatus.FAILED, answers, waited_us=waited_us, received_ns=prepared.received_ns)
        finished_ns = self.clock.now_ns()
        self._count_batch(slot, prepared, started_ns, finished_ns)
        return Outcome(plan, ReportStatus.DONE, prepared.answers, requests, outputs, waited_us,
                       (finished_ns - started_ns) // 1000, prepared.received_ns)

    def _count_batch(self, slot: _Slot, prepared: Prepared, started_ns: int, finished_ns: int) -> None:
        plan, requests = prepared.plan, prepared.requests
        compute_s = (finished_ns - started_ns) / 1e9
        wall_ns = self.clock.wall_ns()
        # Triton's queue: in the shard, then on this agent until the batch started, less the
        # inputs' preparation (compute_input, counted apart).
        waited_ns = max(0, started_ns - prepared.received_ns - prepared.input_ns)
        self.stats[plan.model].executed(len(requests), sum(r.queue_us for r in requests) * 1000
                                        + len(requests) * waited_ns, prepared.input_ns,
                                        finished_ns - started_ns, wall_ns)
        slot.executions += 1
        slot.recent.append((finished_ns, compute_s))
        labels = (slot.slot_id, plan.model)
        self.metrics.executions.labels(*labels).inc()
        self.metrics.items.labels(*labels).inc(len(requests))
        self.metrics.compute_seconds.labels(*labels).inc(compute_s)
        late = sum(1 for r in requests if wall_ns > r.deadline_unix_ns > 0)
        if late:
            self.metrics.late_compute_seconds.labels(slot.slot_id).inc(compute_s * late / len(requests))
        if isinstance(prepared.runner, JaxRunner):
            padding = bucket_for(len(requests), prepared.runner.buckets) - len(requests)
            self.metrics.padding_items.labels(*labels).inc(padding)

    async def _reply_stage(self, slot: _Slot, done: asyncio.Queue[Outcome]) -> None:
        while True:
            await self._finish(slot, await done.get())

    async def _finish(self, slot: _Slot, outcome: Outcome) -> None:
        """Stage.REPLYING, the end of every plan not handed back or withheld earlier: the withhold
        check at this very moment, then the report, then every answer. The report goes out
        before the replies: a shard that has it never declares these requests lost, and one that
        lacks it (this agent died first) knows none was answered."""
        plan = outcome.plan
        try:
            await self._finish_plan(slot, outcome)
        finally:
            slot.open.discard((plan.shard_id, plan.plan_id))

    async def _finish_plan(self, slot: _Slot, outcome: Outcome) -> None:
        plan = outcome.plan
        decision = await self._decide(Stage.REPLYING, plan, slot)
        if isinstance(decision, Withhold):
            await self._withhold(slot, plan, decision)
            return
        assert isinstance(decision, Run), decision  # REPLYING asks nothing else
        await self._report(outcome)
        counters = self.stats.get(plan.model)  # None: a plan for a model not hosted here (answered 503)
        if outcome.answers and counters is not None:
            failed = [a.request for a in outcome.answers]
            now_ns = self.clock.now_ns()
            counters.failed(len(failed), self._in_cluster_ns(outcome, failed, now_ns), self.clock.wall_ns())
        for answer in outcome.answers:
            await self._reply(answer)
        if outcome.served:
            assert outcome.outputs is not None
            log.debug("plan_done", plan=plan.plan_id, shard=plan.shard_id, compute_us=outcome.compute_us,
                      ok=len(outcome.served), errors=len(outcome.answers))
            started_ns = self.clock.now_ns()
            replies = encode_replies(plan.model, outcome.outputs, outcome.served, outcome.waited_us,
                                     outcome.compute_us, self.nc.max_payload)
            # Counted before the replies leave: a client that has its reply finds it counted.
            ready_ns = self.clock.now_ns()
            counters.answered(len(outcome.served), self._in_cluster_ns(outcome, outcome.served, ready_ns),
                              ready_ns - started_ns, self.clock.wall_ns())
            for subject, body, headers in replies:
                await self.nc.publish(subject, body, headers=headers)
            self.metrics.replies.labels(plan.model, "200").inc(len(outcome.served))

    async def _withhold(self, slot: _Slot, plan: BatchPlan, decision: Withhold) -> None:
        """Past the moment its shard may declare the slot lost, the shard answers the plan's
        requests: this agent replies to none of them and says so in its report, so a paused
        agent or link never adds a second reply to the shard's."""
        self.metrics.withheld_plans.labels(slot.slot_id).inc()
        log.warning("plan_withheld", plan=plan.plan_id, shard=plan.shard_id, slot=plan.slot_id,
                    late_ms=decision.late_ns // 1_000_000)
        await self._report(Outcome(plan, ReportStatus.WITHHELD, []))
        slot.open.discard((plan.shard_id, plan.plan_id))

    async def _hand_back(self, plan: BatchPlan) -> None:
        """Fencing: only the shard that claimed this slot, at its epoch or later, runs here. A plan
        the old owner sent before it learned of the move goes back to its model's subject, where
        the model's current shard answers it (report first, as for replies)."""
        await self._report(Outcome(plan, ReportStatus.HANDED_BACK, []))
        for request in plan.requests:
            headers = hand_back_headers(request.content_type, request.client_request_id, request.deadline_unix_ns)
            start_hand_back(self.nc, f"{self.prefix}.infer.{plan.model}", request.body, headers, request.reply,
                            self._hand_backs)
        log.info("plan_handed_back", plan=plan.plan_id, shard=plan.shard_id, slot=plan.slot_id,
                 requests=len(plan.requests))

    @staticmethod
    def _in_cluster_ns(outcome: Outcome, requests: list[PlanRequest], now_ns: int) -> int:
        """The summed time in the cluster of these requests of the plan until `now_ns`: in the
        shard, then on this agent since it took the plan."""
        here_ns = now_ns - outcome.received_ns if outcome.received_ns else 0
        return sum(r.queue_us for r in requests) * 1000 + len(requests) * here_ns

    @staticmethod
    def _rejected(slot: _Slot, plan: BatchPlan, reason: RejectReason, received_ns: int) -> Outcome:
        text = {RejectReason.QUEUE_FULL: f"slot {slot.slot_id} plan queue is full",
                RejectReason.MODEL_NOT_HOSTED: f"slot {slot.slot_id} does not host {plan.model}"}[reason]
        return Outcome(plan, ReportStatus.FAILED, answer_all(plan.requests, Status.UNAVAILABLE, text),
                       received_ns=received_ns)

    def _decode_plan(self, slot: _Slot, data: bytes) -> BatchPlan | None:
        """The plan, or None for bytes that are not one (counted and logged, never answered:
        there is no reply subject to trust in them)."""
        try:
            return plan_decoder.decode(data)
        except msgspec.DecodeError as error:
            self.metrics.undecodable.labels("plan").inc()
            log.error("undecodable_plan", slot=slot.slot_id, size=len(data), error=str(error)[:200])
            return None

    async def _reply(self, answer: ErrorAnswer) -> None:
        request = answer.request
        self.metrics.replies.labels("", str(int(answer.status))).inc()
        await self.nc.publish(request.reply, b"", headers=error_headers(answer.status, answer.reason,
                                                                        request.client_request_id))

    async def _report(self, outcome: Outcome) -> None:
        plan = outcome.plan
        report = CompletionReport(
            version=REPORT_VERSION, plan_id=plan.plan_id, slot_id=plan.slot_id, batch_size=len(plan.requests),
            compute_us=outcome.compute_us, queued_us=outcome.waited_us, ok=len(outcome.served),
            errors=len(outcome.answers), status=outcome.status,
        )
        await self.nc.publish(f"{self.prefix}.shard.{plan.shard_id}.done", msgspec.msgpack.encode(report))

    async def stop(self) -> None:
        if getattr(self, "service", None) is not None:
            await self.service.stop()
        if getattr(self, "buckets", None) is not None:
            try:  # leave at once instead of waiting for the heartbeat to age out
                await self.buckets.members.delete(f"agent.{self.entry.id}")
            except nats.errors.Error:
                pass
        for task in self._tasks:
            task.cancel()
        await finish_hand_backs(self._hand_backs)
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        if self.nc is not None:
            await self.nc.drain()
        for slot in self.slots.values():
            slot.executor.shutdown(wait=False)
