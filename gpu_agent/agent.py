"""The GPU agent service: loads its models (compiling every bucket and profiling), serves its
slots' plan subjects, executes each slot's plans in arrival order, replies to every request's
inbox directly and reports each completion to the shard that sent the plan.

Execution is the shell's job; what a plan means is decided by the shard. A plan already past
its budget when it reaches the front of its slot's queue is not run: its requests get 504.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import msgspec
import nats
import numpy as np
import structlog
from nats.aio.msg import Msg

from gpu_agent.fencing import SlotOwner, decide_claim, plan_fenced
from gpu_agent.metrics import AgentMetrics
from gpu_agent.runners import JaxRunner, Runner, SleepRunner, bucket_for, make_runner
from runtime.cluster_config import AgentEntry, ClusterConfig
from runtime.connect import connect_service, flush_ordered
from runtime.handback import finish_hand_backs, hand_back_headers, start_hand_back
from runtime.services import register_service
from runtime.kv import open_buckets, with_retries
from schemas.control import AgentHeartbeat, AgentSlot, ClaimReply, slot_claim_decoder
from schemas.control import encode as control_encode
from schemas.status_report import AgentStatus, SlotStatus
from schemas.model import ModelSpec
from schemas.plan import (
    REPORT_VERSION,
    AgentInfo,
    BatchPlan,
    CompletionReport,
    PlanRequest,
    SlotInfo,
    plan_decoder,
    plan_header_decoder,
)
from schemas.status import (
    CONTENT_JSON,
    HEADER_BATCH_SIZE,
    HEADER_COMPUTE_US,
    HEADER_CONTENT_TYPE,
    HEADER_QUEUE_US,
    HEADER_REQUEST_ID,
    HEADER_STATUS,
    Status,
    error_headers,
)
from schemas.tensors import InferResponseBody, TensorError, decode_request, encode_response, from_array, to_array

log = structlog.get_logger("gpu_agent")


# Replies go out only this long before the shard may declare their slot lost: the report that
# precedes them on the same connection has that long to reach the shard first.
WITHHOLD_MARGIN_NS = 250_000_000

def decode_inputs(specs: list, body: bytes, content_type: str) -> dict[str, np.ndarray]:
    """One request's inputs as [1, ...] arrays, or TensorError saying what is wrong."""
    request = decode_request(body, content_type)
    by_name = {t.name: t for t in request.inputs}
    decoded = {}
    for spec in specs:
        tensor = by_name.get(spec.name)
        if tensor is None:
            raise TensorError(f"missing input {spec.name!r}; this model takes {', '.join(s.name for s in specs)}")
        if tensor.datatype != spec.datatype:
            raise TensorError(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
        array = to_array(tensor)
        item_shape = list(spec.shape[1:])
        if list(array.shape) == item_shape:
            array = array[None]
        if list(array.shape) != [1, *item_shape]:
            raise TensorError(f"input {spec.name!r} must have shape [1, {', '.join(map(str, item_shape))}]"
                              f" (one item per request), got {list(array.shape)}")
        decoded[spec.name] = array
    extra = set(by_name) - {s.name for s in specs}
    if extra:
        raise TensorError(f"unknown inputs {sorted(extra)}")
    return decoded


def encode_reply(model: str, outputs: dict[str, np.ndarray], row: int, request: PlanRequest, batch_size: int,
                 waited_us: int, compute_us: int) -> tuple[bytes, dict[str, str]]:
    body = InferResponseBody(
        model_name=model,
        outputs=[from_array(name, values[row:row + 1], raw=request.content_type != CONTENT_JSON)
                 for name, values in outputs.items()],
    )
    headers = {
        HEADER_STATUS: "200", HEADER_CONTENT_TYPE: request.content_type, HEADER_BATCH_SIZE: str(batch_size),
        HEADER_QUEUE_US: str(request.queue_us + waited_us), HEADER_COMPUTE_US: str(compute_us),
    }
    if request.client_request_id:
        headers[HEADER_REQUEST_ID] = request.client_request_id
    return encode_response(body, request.content_type), headers


PUBLISH_US = 15.0  # nats-py publish of one reply (measured locally: 4-5 us per message, times 3 for safety)


def measure_request_overhead_us(runner: Runner, samples: int = 200) -> float:
    """Per-request agent cost: decode + validate a JSON body and encode its reply, plus a publish."""
    from schemas.tensors import encode_request

    spec = runner.spec()
    example = {s.name: np.zeros([1, *s.shape[1:]], np.int32 if s.datatype.startswith("INT") else np.float32)
               for s in spec.inputs}
    body = encode_request(example, CONTENT_JSON)
    outputs = {s.name: np.zeros([samples, *s.shape[1:]], np.float32) for s in spec.outputs}
    request = PlanRequest(0, "_INBOX.x", body, CONTENT_JSON)
    started = time.perf_counter()
    for row in range(samples):
        decode_inputs(spec.inputs, body, CONTENT_JSON)
        encode_reply(spec.name, outputs, row, request, samples, 0, 0)
    return (time.perf_counter() - started) / samples * 1e6 + PUBLISH_US


class _Slot:
    def __init__(self, slot_id: str, models: list[str], queue_max: int) -> None:
        self.slot_id = slot_id
        self.models = models
        self.queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(queue_max)
        self.owner = ""  # the shard that claimed it ("" without a coordinator: anyone may send)
        self.epoch = 0
        self.recent: deque[tuple[float, float]] = deque()  # (finished, seconds) of recent batches
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot-{slot_id}")
        self.executions = 0

    def busy_fraction(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        while self.recent and self.recent[0][0] < now - window_s:
            self.recent.popleft()
        return min(1.0, sum(d for _t, d in self.recent) / window_s)


class Agent:
    def __init__(self, config: ClusterConfig, agent_id: str) -> None:
        self.config = config
        self.entry: AgentEntry = config.agent(agent_id)
        self.prefix = config.subject_prefix
        names = sorted({m for slot in self.entry.slots for m in slot.models})
        self.runners: dict[str, Runner] = {}
        for name in names:
            entry = config.model(name)
            self.runners[name] = make_runner(name, entry.kind, entry.batch_size_max, entry.slo_ms)
        self.slots = {s.id: _Slot(s.id, s.models, self.entry.plan_queue_max) for s in self.entry.slots}
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
        return AgentStatus(
            agent_id=self.entry.id, device=self.info().slots[0].device if self.slots else "",
            slots=[SlotStatus(slot_id=s.slot_id, models=s.models, plans_queued=s.queue.qsize(),
                              executions=s.executions, owner=s.owner, epoch=s.epoch,
                              busy_fraction=s.busy_fraction()) for s in self.slots.values()],
            compile_count={name: r.compile_count for name, r in self.runners.items()},
        )

    def load(self) -> None:
        """Compile and profile every model (slow; before serving, never on the request path).

        The published profile adds the agent's own cost per request (decoding, validating,
        encoding and sending the reply), measured here, so the scheduler plans with what a
        batch really takes on this agent, not only the model's forward pass."""
        for runner in self.runners.values():
            started = time.perf_counter()
            runner.load()
            per_request_us = measure_request_overhead_us(runner)
            runner.profile = runner.profile.plus_per_item(per_request_us)
            log.info("model_loaded", model=runner.name, compile_count=runner.compile_count,
                     per_request_us=round(per_request_us, 1), seconds=round(time.perf_counter() - started, 2))

    def info(self) -> AgentInfo:
        device = "sleep"
        if any(isinstance(r, JaxRunner) for r in self.runners.values()):
            import jax

            device = str(jax.devices()[0])
        return AgentInfo(
            agent_id=self.entry.id,
            slots=[SlotInfo(slot_id=s.slot_id, agent_id=self.entry.id, device=device, models=s.models)
                   for s in self.slots.values()],
            models=[r.spec() for r in self.runners.values()],
        )

    async def start(self, nats_url: str) -> None:
        self.nc = await connect_service(nats_url, f"agent-{self.entry.id}")
        info = msgspec.msgpack.encode(self.info())

        async def on_info(msg: Msg) -> None:
            await msg.respond(info)

        await self.nc.subscribe(f"{self.prefix}.agent.{self.entry.id}.info", cb=on_info)
        for slot in self.slots.values():
            self.plan_subscriptions[slot.slot_id] = await self.nc.subscribe(
                f"{self.prefix}.slot.{slot.slot_id}.plan", cb=self._enqueue(slot),
                pending_msgs_limit=100_000, pending_bytes_limit=512 * 1024 * 1024,
            )
            self._tasks.append(asyncio.create_task(self._serve(slot)))
        await flush_ordered(self.nc)
        self.service = await register_service(
            self.nc, "symphony-agent", f"agent {self.entry.id}: slots {', '.join(self.slots)}",
            {"agent_id": self.entry.id}, f"{self.prefix}.agent.{self.entry.id}.status", self.status,
        )
        if self.entry.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.entry.metrics_port, addr="0.0.0.0", registry=self.metrics.registry)
        if self.config.dynamic:
            await self._join_coordinated()
        log.info("agent_ready", agent=self.entry.id, slots=list(self.slots), models=list(self.runners))

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
        device = self.info().slots[0].device if self.slots else ""
        beat = AgentHeartbeat(agent_id=self.entry.id, device=device, slots=[
            AgentSlot(slot_id=s.slot_id, models=s.models, owner=s.owner, epoch=s.epoch) for s in self.slots.values()],
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

    def _enqueue(self, slot: _Slot):  # noqa: ANN202
        async def on_plan(msg: Msg) -> None:
            if slot.owner:
                try:
                    header = plan_header_decoder.decode(msg.data)
                except msgspec.DecodeError as error:
                    self.metrics.undecodable.labels("plan").inc()
                    log.error("undecodable_plan", slot=slot.slot_id, size=len(msg.data), error=str(error)[:200])
                    return
                if plan_fenced(SlotOwner(shard=slot.owner, epoch=slot.epoch), header.shard_id, header.epoch):
                    # Fencing: only the shard that claimed this slot, at its epoch or later, runs
                    # here. A plan the old owner sent before it learned of the move is handed back
                    # to its model's subject, where the model's current shard answers it; unless
                    # the old owner may already have declared it lost (then it answers).
                    try:
                        plan = plan_decoder.decode(msg.data)
                    except msgspec.DecodeError as error:
                        self.metrics.undecodable.labels("plan").inc()
                        log.error("undecodable_plan", slot=slot.slot_id, size=len(msg.data), error=str(error)[:200])
                        return
                    if not await self._withheld(plan, slot):
                        await self._hand_back(plan)
                    return
            try:
                slot.queue.put_nowait((msg.data, time.monotonic()))
            except asyncio.QueueFull:
                await self._reject_plan(msg.data, Status.UNAVAILABLE, f"slot {slot.slot_id} plan queue is full")
        return on_plan

    async def _serve(self, slot: _Slot) -> None:
        """Three stages per slot, so decoding the next plan and replying to the last overlap the
        current batch's compute: prepare -> execute -> reply, in arrival order throughout."""
        ready: asyncio.Queue = asyncio.Queue(maxsize=1)
        done: asyncio.Queue = asyncio.Queue(maxsize=2)
        stages = [asyncio.create_task(self._execute_stage(slot, ready, done)),
                  asyncio.create_task(self._reply_stage(slot, done))]
        try:
            while True:
                data, received = await slot.queue.get()
                try:
                    prepared = await self._prepare(slot, data, received)
                except msgspec.DecodeError as error:
                    self.metrics.undecodable.labels("plan").inc()
                    log.error("undecodable_plan", slot=slot.slot_id, size=len(data), error=str(error)[:200])
                    continue
                except Exception:  # noqa: BLE001 - one bad plan must not stop the slot
                    log.exception("plan_failed", slot=slot.slot_id, stage="prepare")
                    try:
                        await self._reject_plan(data, Status.INTERNAL, "internal error while preparing the batch")
                    except Exception:  # noqa: BLE001 - nor may answering it
                        log.exception("plan_failed", slot=slot.slot_id, stage="reject")
                    continue
                if prepared is not None:
                    await ready.put(prepared)
        finally:
            for stage in stages:
                stage.cancel()

    async def _withheld(self, plan: BatchPlan, slot: _Slot) -> bool:
        """Past the moment its shard may declare the slot lost, the shard answers the plan's
        requests: this agent replies to none of them and says so in its report. Checked before
        any reply, so a paused agent or link never adds a second reply to the shard's. While
        disconnected it waits: replies published then would sit in the client's buffer and go
        out after the reconnect, whatever the time."""
        while not self.nc.is_connected:
            await asyncio.sleep(0.05)
        if not plan.lost_after_unix_ns or time.time_ns() < plan.lost_after_unix_ns - WITHHOLD_MARGIN_NS:
            return False
        self.metrics.withheld_plans.labels(slot.slot_id).inc()
        log.warning("plan_withheld", plan=plan.plan_id, shard=plan.shard_id, slot=plan.slot_id,
                    late_ms=(time.time_ns() - plan.lost_after_unix_ns) // 1_000_000)
        await self._finish(plan, 0, 0, 0, 0, "withheld")
        return True

    async def _prepare(self, slot: _Slot, data: bytes, received: float):  # noqa: ANN202
        plan = plan_decoder.decode(data)
        if await self._withheld(plan, slot):
            return None
        runner = self.runners.get(plan.model)
        if runner is None or plan.model not in slot.models:
            errors = await self._reply_all(plan, Status.UNAVAILABLE, f"slot {slot.slot_id} does not host {plan.model}")
            await self._finish(plan, 0, 0, 0, errors, "failed")
            return None
        valid, arrays, errors = await self._validate(runner, plan)
        if not valid:
            await self._finish(plan, 0, 0, 0, errors, "done")
            return None
        stacked = {name: np.concatenate(parts) for name, parts in arrays.items()}
        return plan, runner, valid, stacked, errors, received

    async def _execute_stage(self, slot: _Slot, ready: asyncio.Queue, done: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            plan, runner, valid, stacked, errors, received = await ready.get()
            waited_us = int((time.monotonic() - received) * 1e6)
            if await self._withheld(plan, slot):
                continue
            wall = time.time_ns()
            if waited_us > plan.deadline_us or wall > plan.deadline_unix_ns > 0:
                # Work already past its deadline is never started: answer it, spend nothing on
                # it. The wall-clock deadline also catches plans that sat in a socket buffer
                # while this process or the shard was paused.
                keep = [i for i, r in enumerate(valid)
                        if waited_us <= plan.deadline_us and not wall > r.deadline_unix_ns > 0]
                kept = set(keep)
                expired = [r for i, r in enumerate(valid) if i not in kept]
                self.metrics.expired_items.labels(slot.slot_id).inc(len(expired))
                errors += await self._reply_all_of(expired, Status.DROPPED, "expired before the batch could start")
                if not keep:
                    self.metrics.expired_plans.labels(slot.slot_id).inc()
                    await self._finish(plan, 0, waited_us, 0, errors, "expired")
                    continue
                valid = [valid[i] for i in keep]
                stacked = {name: rows[keep] for name, rows in stacked.items()}
            log.debug("plan_started", plan=plan.plan_id, shard=plan.shard_id, slot=slot.slot_id, model=plan.model,
                      waited_us=waited_us, requests=[r.request_id for r in valid],
                      client_request_ids=[r.client_request_id for r in valid if r.client_request_id])
            started = time.perf_counter()
            try:
                if isinstance(runner, SleepRunner):
                    await asyncio.sleep(runner.duration_s(len(valid)))
                    outputs = runner.run(stacked, len(valid))
                else:
                    outputs = await loop.run_in_executor(slot.executor, runner.run, stacked, len(valid))
            except Exception:  # noqa: BLE001 - the batch fails, the slot goes on
                log.exception("plan_failed", slot=slot.slot_id, stage="execute", plan=plan.plan_id)
                errors += await self._reply_all_of(valid, Status.INTERNAL, "internal error while running the batch")
                await self._finish(plan, 0, waited_us, 0, errors, "failed")
                continue
            slot.executions += 1
            compute_s = time.perf_counter() - started
            slot.recent.append((time.monotonic(), compute_s))
            labels = (slot.slot_id, plan.model)
            self.metrics.executions.labels(*labels).inc()
            self.metrics.items.labels(*labels).inc(len(valid))
            self.metrics.compute_seconds.labels(*labels).inc(compute_s)
            finished = time.time_ns()
            late = sum(1 for r in valid if finished > r.deadline_unix_ns > 0)
            if late:
                self.metrics.late_compute_seconds.labels(slot.slot_id).inc(compute_s * late / len(valid))
            if isinstance(runner, JaxRunner):
                self.metrics.padding_items.labels(*labels).inc(bucket_for(len(valid), runner.buckets) - len(valid))
            await done.put((plan, valid, outputs, errors, waited_us, int((time.perf_counter() - started) * 1e6)))

    async def _reply_stage(self, slot: _Slot, done: asyncio.Queue) -> None:
        while True:
            plan, valid, outputs, errors, waited_us, compute_us = await done.get()
            if await self._withheld(plan, slot):
                continue
            # The report goes out before the replies: a shard that has it never declares these
            # requests lost, and one that lacks it (this agent died first) knows none was answered.
            await self._finish(plan, compute_us, waited_us, len(valid), errors, "done")
            log.debug("plan_done", plan=plan.plan_id, shard=plan.shard_id, compute_us=compute_us, ok=len(valid),
                      errors=errors)
            for row, request in enumerate(valid):
                body, headers = encode_reply(plan.model, outputs, row, request, len(valid), waited_us, compute_us)
                await self.nc.publish(request.reply, body, headers=headers)
            self.metrics.replies.labels(plan.model, "200").inc(len(valid))

    async def _validate(self, runner: Runner, plan: BatchPlan):  # noqa: ANN202
        """Decode each body against the model's inputs; a bad one is answered 400 alone."""
        specs = runner.spec().inputs
        valid: list[PlanRequest] = []
        arrays: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
        errors = 0
        for request in plan.requests:
            try:
                decoded = decode_inputs(specs, request.body, request.content_type)
            except TensorError as error:
                errors += 1
                await self._reply(request, Status.BAD_REQUEST, str(error))
                continue
            valid.append(request)
            for name, array in decoded.items():
                arrays[name].append(array)
        return valid, arrays, errors

    async def _hand_back(self, plan: BatchPlan) -> None:
        for request in plan.requests:
            headers = hand_back_headers(request.content_type, request.client_request_id, request.deadline_unix_ns)
            start_hand_back(self.nc, f"{self.prefix}.infer.{plan.model}", request.body, headers, request.reply,
                            self._hand_backs)
        await self._finish(plan, 0, 0, 0, 0, "handed_back")
        log.info("plan_handed_back", plan=plan.plan_id, shard=plan.shard_id, slot=plan.slot_id,
                 requests=len(plan.requests))

    async def _reply(self, request: PlanRequest, status: Status, reason: str) -> None:
        self.metrics.replies.labels("", str(int(status))).inc()
        await self.nc.publish(request.reply, b"", headers=error_headers(status, reason, request.client_request_id))

    async def _reply_all(self, plan: BatchPlan, status: Status, reason: str) -> int:
        return await self._reply_all_of(plan.requests, status, reason)

    async def _reply_all_of(self, requests: list[PlanRequest], status: Status, reason: str) -> int:
        for request in requests:
            await self._reply(request, status, reason)
        return len(requests)

    async def _reject_plan(self, data: bytes, status: Status, reason: str) -> None:
        try:
            plan = plan_decoder.decode(data)
        except msgspec.DecodeError:
            log.error("undecodable_plan", size=len(data))
            return
        errors = await self._reply_all(plan, status, reason)
        await self._finish(plan, 0, 0, 0, errors, "failed")

    async def _finish(self, plan: BatchPlan, compute_us: int, waited_us: int, ok: int, errors: int,
                      status: str) -> None:
        report = CompletionReport(
            version=REPORT_VERSION, plan_id=plan.plan_id, slot_id=plan.slot_id, batch_size=len(plan.requests),
            compute_us=compute_us, queued_us=waited_us, ok=ok, errors=errors, status=status,
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
        if self.nc is not None:
            await self.nc.drain()
        for slot in self.slots.values():
            slot.executor.shutdown(wait=False)
