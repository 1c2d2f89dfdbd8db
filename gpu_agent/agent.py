"""The GPU agent service: loads its models (compiling every bucket and profiling), serves its
slots' plan subjects, executes each slot's plans in arrival order, replies to every request's
inbox directly and reports each completion to the shard that sent the plan.

Execution is the shell's job; what a plan means is decided by the shard. A plan already past
its budget when it reaches the front of its slot's queue is not run: its requests get 504.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec
import nats
import numpy as np
import structlog
from nats.aio.msg import Msg

from gpu_agent.runners import JaxRunner, Runner, SleepRunner, make_runner
from ops.cluster_config import AgentEntry, ClusterConfig
from ops.connect import connect_service
from schemas.model import ModelSpec
from schemas.plan import REPORT_VERSION, BatchPlan, CompletionReport, PlanRequest, SlotInfo, plan_decoder
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


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    agent_id: str
    slots: list[SlotInfo]
    models: list[ModelSpec]


class _Slot:
    def __init__(self, slot_id: str, models: list[str], queue_max: int) -> None:
        self.slot_id = slot_id
        self.models = models
        self.queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue(queue_max)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"slot-{slot_id}")
        self.executions = 0


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
        self.nc: nats.NATS | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()

    def load(self) -> None:
        """Compile and profile every model (slow; before serving, never on the request path)."""
        for runner in self.runners.values():
            started = time.perf_counter()
            runner.load()
            log.info("model_loaded", model=runner.name, compile_count=runner.compile_count,
                     seconds=round(time.perf_counter() - started, 2))

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
            await self.nc.subscribe(
                f"{self.prefix}.slot.{slot.slot_id}.plan", cb=self._enqueue(slot),
                pending_msgs_limit=100_000, pending_bytes_limit=512 * 1024 * 1024,
            )
            self._tasks.append(asyncio.create_task(self._serve(slot)))
        await self.nc.flush()
        log.info("agent_ready", agent=self.entry.id, slots=list(self.slots), models=list(self.runners))

    def _enqueue(self, slot: _Slot):  # noqa: ANN202
        async def on_plan(msg: Msg) -> None:
            try:
                slot.queue.put_nowait((msg.data, time.monotonic()))
            except asyncio.QueueFull:
                await self._reject_plan(msg.data, Status.UNAVAILABLE, f"slot {slot.slot_id} plan queue is full")
        return on_plan

    async def _serve(self, slot: _Slot) -> None:
        while True:
            data, received = await slot.queue.get()
            try:
                await self._execute(slot, data, received)
            except Exception:  # noqa: BLE001 - one bad plan must not stop the slot
                log.exception("plan_failed", slot=slot.slot_id)
                await self._reject_plan(data, Status.INTERNAL, "internal error while executing the batch")

    async def _execute(self, slot: _Slot, data: bytes, received: float) -> None:
        plan = plan_decoder.decode(data)
        runner = self.runners.get(plan.model)
        waited_us = int((time.monotonic() - received) * 1e6)
        if runner is None or plan.model not in slot.models:
            await self._finish(plan, slot, 0, waited_us, 0, await self._reply_all(
                plan, Status.UNAVAILABLE, f"slot {slot.slot_id} does not host {plan.model}"), "failed")
            return
        if waited_us > plan.deadline_us:
            # Work already past its deadline is never started (docs/reliability in issue 7).
            errors = await self._reply_all(plan, Status.DROPPED, "expired before the batch could start")
            await self._finish(plan, slot, 0, waited_us, 0, errors, "expired")
            return
        valid, arrays, errors = await self._validate(runner, plan)
        if not valid:
            await self._finish(plan, slot, 0, waited_us, 0, errors, "done")
            return
        stacked = {name: np.concatenate(parts) for name, parts in arrays.items()}
        started = time.perf_counter()
        if isinstance(runner, SleepRunner):
            await asyncio.sleep(runner.duration_s(len(valid)))
            outputs = runner.run(stacked, len(valid))
        else:
            loop = asyncio.get_running_loop()
            outputs = await loop.run_in_executor(slot.executor, runner.run, stacked, len(valid))
        compute_us = int((time.perf_counter() - started) * 1e6)
        slot.executions += 1
        ok = 0
        for row, request in enumerate(valid):
            body = InferResponseBody(
                model_name=plan.model,
                outputs=[from_array(name, values[row:row + 1], raw=request.content_type != CONTENT_JSON)
                         for name, values in outputs.items()],
            )
            headers = {
                HEADER_STATUS: "200", HEADER_CONTENT_TYPE: request.content_type,
                HEADER_BATCH_SIZE: str(len(valid)), HEADER_QUEUE_US: str(request.queue_us + waited_us),
                HEADER_COMPUTE_US: str(compute_us),
            }
            if request.client_request_id:
                headers[HEADER_REQUEST_ID] = request.client_request_id
            await self.nc.publish(request.reply, encode_response(body, request.content_type), headers=headers)
            ok += 1
        await self._finish(plan, slot, compute_us, waited_us, ok, errors, "done")

    async def _validate(self, runner: Runner, plan: BatchPlan):  # noqa: ANN202
        """Decode each body against the model's inputs; a bad one is answered 400 alone."""
        specs = runner.spec().inputs
        valid: list[PlanRequest] = []
        arrays: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
        errors = 0
        for request in plan.requests:
            try:
                body = decode_request(request.body, request.content_type)
                by_name = {t.name: t for t in body.inputs}
                decoded = {}
                for spec in specs:
                    tensor = by_name.get(spec.name)
                    if tensor is None:
                        raise TensorError(f"missing input {spec.name!r}; this model takes "
                                          f"{', '.join(s.name for s in specs)}")
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
            except TensorError as error:
                errors += 1
                await self._reply(request, Status.BAD_REQUEST, str(error))
                continue
            valid.append(request)
            for name, array in decoded.items():
                arrays[name].append(array)
        return valid, arrays, errors

    async def _reply(self, request: PlanRequest, status: Status, reason: str) -> None:
        await self.nc.publish(request.reply, b"", headers=error_headers(status, reason, request.client_request_id))

    async def _reply_all(self, plan: BatchPlan, status: Status, reason: str) -> int:
        for request in plan.requests:
            await self._reply(request, status, reason)
        return len(plan.requests)

    async def _reject_plan(self, data: bytes, status: Status, reason: str) -> None:
        try:
            plan = plan_decoder.decode(data)
        except msgspec.DecodeError:
            log.error("undecodable_plan", size=len(data))
            return
        errors = await self._reply_all(plan, status, reason)
        await self._finish(plan, None, 0, 0, 0, errors, "failed")

    async def _finish(self, plan: BatchPlan, slot: _Slot | None, compute_us: int, waited_us: int, ok: int,
                      errors: int, status: str) -> None:
        report = CompletionReport(
            version=REPORT_VERSION, plan_id=plan.plan_id, slot_id=plan.slot_id, batch_size=len(plan.requests),
            compute_us=compute_us, queued_us=waited_us, ok=ok, errors=errors, status=status,
        )
        await self.nc.publish(f"{self.prefix}.shard.{plan.shard_id}.done", msgspec.msgpack.encode(report))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.nc is not None:
            await self.nc.drain()
        for slot in self.slots.values():
            slot.executor.shutdown(wait=False)
