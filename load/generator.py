"""The live load generator: drives a workload (or a gap trace) open loop against a running
cluster, classifies every request, and collects what the report needs.

Senders run on the workload's seeded schedule, in one or several processes lined up on a common
start; one wildcard inbox per process takes the replies. Shards are polled through their status
endpoints for slots in use while the load runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import sys
import time

import msgspec
import nats
import numpy as np

from load.schedule import Schedule, build_schedule
from load.sender import SendResult, send_schedule
from load.workload import LoadedWorkload
from runtime.connect import connect_client
from runtime.status import discover
from schemas.limits import IDENTIFIER_PATTERN
from schemas.model import model_metadata_decoder, validate_model_name
from schemas.status import CONTENT_JSON
from schemas.status_report import shard_status_decoder
from schemas.tensors import encode_request

OUTCOMES = ("ok", "late", "dropped", "rejected", "error", "noreply")


def classify(status: np.ndarray, latency_s: np.ndarray, slo_s: np.ndarray) -> np.ndarray:
    """Index into OUTCOMES per request: ok within SLO, ok but late, dropped (504), rejected
    (429/503), error (any other status), no reply."""
    out = np.full(len(status), OUTCOMES.index("error"), dtype=np.int8)
    ok = status == 200
    out[ok & (latency_s <= slo_s)] = OUTCOMES.index("ok")
    out[ok & ~(latency_s <= slo_s)] = OUTCOMES.index("late")
    out[status == 504] = OUTCOMES.index("dropped")
    out[(status == 429) | (status == 503)] = OUTCOMES.index("rejected")
    out[status == 0] = OUTCOMES.index("noreply")
    return out


class Plan(msgspec.Struct, kw_only=True):
    """What to send: instants, model index per request, bench windows, per-model SLO."""

    times_s: np.ndarray
    model_index: np.ndarray
    model_names: list[str]
    slo_ms: list[float]
    bench_start_s: list[float]
    bench_end_s: list[float]
    seed: int
    scale: float


def plan_from_workload(loaded: LoadedWorkload, *, scale: float = 1.0, rate: float | None = None,
                       seed: int | None = None) -> Plan:
    """`rate` (total requests/s over the bench) overrides `scale`, keeping the models' mix."""
    workload = loaded.workload
    if rate is not None:
        scale = rate / sum(m.bench_mean_rps for m in workload.models)
    schedule: Schedule = build_schedule(workload, scale=scale, seed=seed)
    return Plan(
        times_s=schedule.times_ns / 1e9, model_index=schedule.model_index,
        model_names=[m.name for m in workload.models], slo_ms=[m.slo_ms for m in workload.models],
        bench_start_s=[t / 1e9 for t in schedule.bench_start_ns],
        bench_end_s=[t / 1e9 for t in schedule.bench_end_ns], seed=schedule.seed, scale=scale,
    )


def plan_from_trace(gaps_us: list[float], model: str, slo_ms: float) -> Plan:
    """A gap trace (one inter-arrival gap in microseconds per line), all of it the bench."""
    validate_model_name(model)  # it becomes a subject: `symphony load trace --model 'a.b'` stops here
    times = np.cumsum(np.asarray(gaps_us, dtype=float)) / 1e6
    end = float(times[-1]) if len(times) else 0.0
    return Plan(times_s=times, model_index=np.zeros(len(times), dtype=np.int32), model_names=[model],
                slo_ms=[slo_ms], bench_start_s=[0.0], bench_end_s=[end + 1e-9], seed=0, scale=1.0)


def read_trace(path: str) -> list[float]:
    gaps = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                gap = float(text)
            except ValueError:
                raise ValueError(f"{path}:{number}: expected a gap in microseconds, got {text!r}") from None
            if gap < 0:
                raise ValueError(f"{path}:{number}: a gap cannot be negative")
            gaps.append(gap)
    if not gaps:
        raise ValueError(f"{path}: no gaps")
    return gaps


async def request_bodies(url: str, models: list[str], content_type: str, prefix: str = "symphony") -> list[bytes]:
    """A valid body per model, built from its discovery metadata (what any client could do)."""
    nc = await connect_client(url, "symphony-load-setup")
    rng = np.random.default_rng(0)
    try:
        bodies = []
        for name in models:
            try:
                msg = await nc.request(f"{prefix}.meta.{validate_model_name(name)}", b"", timeout=5)
            except nats.errors.NoRespondersError:
                raise ValueError(f"no shard serves model {name!r}") from None
            try:
                meta = model_metadata_decoder.decode(msg.data)
            except msgspec.DecodeError as error:
                raise ValueError(f"model {name!r}: unreadable metadata reply ({error})") from None
            inputs = {}
            for spec in meta.inputs:
                shape = [1, *spec.shape[1:]]
                inputs[spec.name] = (rng.integers(0, 100, size=shape).astype(np.int32)
                                     if spec.datatype.startswith("INT") else
                                     rng.standard_normal(shape).astype(np.float32))
            bodies.append(encode_request(inputs, content_type))
        return bodies
    finally:
        await nc.close()


class SlotsSample(msgspec.Struct, array_like=True):
    t_s: float
    busy: int  # slots with a batch in flight at the sample
    owned: int
    busy_seconds: float = 0.0  # cumulative slot time of completed batches, over all shards


async def poll_slots(url: str, stop: asyncio.Event, start_wall: float, every_s: float = 0.5,
                     prefix: str = "symphony") -> list[SlotsSample]:
    nc = await connect_client(url, "symphony-load-poll", user="operator")  # shard status is an operator call
    samples: list[SlotsSample] = []
    try:
        found = [i["metadata"].get("shard_id") for i in await discover(nc, "symphony-shard", 0.3)]
        shards = [s for s in found if isinstance(s, str) and re.match(IDENTIFIER_PATTERN, s)]  # subject tokens
        while not stop.is_set():
            busy = owned = 0
            busy_seconds = 0.0
            for shard_id in shards:
                try:
                    msg = await nc.request(f"{prefix}.shard.{shard_id}.status", b"", timeout=1)
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    continue
                try:
                    status = shard_status_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    continue  # a reply that is not a status snapshot: this sample goes without it
                busy += len(status.slots_busy)
                owned += len(status.slots_owned)
                busy_seconds += status.busy_seconds
            samples.append(SlotsSample(time.time() - start_wall, busy, owned, busy_seconds))
            try:
                await asyncio.wait_for(stop.wait(), timeout=every_s)
            except TimeoutError:
                pass
    finally:
        await nc.close()
    return samples


def _child(args: tuple) -> SendResult:
    url, times, subjects, bodies, content_type, slo, start_wall, precise, batch_max = args
    return asyncio.run(send_schedule(url, times, subjects, bodies, content_type=content_type, slo_ms=slo,
                                     start_wall=start_wall, precise=precise, batch_max=batch_max))


def batch_times(times_s: np.ndarray, window_ms: float) -> np.ndarray:
    """Each request's send time when a batching frontend sends what arrived in each `window_ms`
    at the window's end (batched ingress): the requests of one window then go out together."""
    if window_ms <= 0:
        return times_s
    window_s = window_ms / 1000
    return np.ceil(times_s / window_s) * window_s


async def send_plan(url: str, plan: Plan, bodies: list[bytes], *, senders: int = 1,
                    content_type: str = CONTENT_JSON, prefix: str = "symphony",
                    precise: bool = True, batch_max: int = 1,
                    batch_window_ms: float = 0.0) -> tuple[SendResult, list[SlotsSample]]:
    """Send the whole plan; with several senders each takes every n-th request. `batch_max` > 1
    sends through batched ingress, what each `batch_window_ms` gathered per model in batch
    messages of at most `batch_max` (latency is measured from the batch's send, so the window's
    wait is the caller's, not the cluster's)."""
    subjects = [f"{prefix}.infer.{plan.model_names[i]}" for i in plan.model_index]
    times_s = batch_times(plan.times_s, batch_window_ms) if batch_max > 1 else plan.times_s
    request_bodies = [bodies[i] for i in plan.model_index]
    slo = [plan.slo_ms[i] for i in plan.model_index]
    start_wall = time.time() + (1.0 + 0.3 * senders)
    stop = asyncio.Event()
    poller = asyncio.create_task(poll_slots(url, stop, start_wall, prefix=prefix))

    def progress(counts: dict) -> None:
        elapsed = max(counts["elapsed_s"], 1e-9)
        print(f"  {elapsed:6.1f} s  sent {counts['sent']:>8}  replied {counts['replied']:>8}  "
              f"ok {counts['ok']:>8} ({counts['ok'] / elapsed:,.0f}/s)  p99 {counts['p99_ms']:.1f} ms",
              file=sys.stderr, flush=True)

    if senders <= 1:
        result = await send_schedule(url, times_s, subjects, request_bodies, content_type=content_type,
                                     slo_ms=slo, start_wall=start_wall, progress=progress, precise=precise,
                                     batch_max=batch_max)
    else:
        jobs = [(url, times_s[k::senders], subjects[k::senders], request_bodies[k::senders], content_type,
                 slo[k::senders], start_wall, precise, batch_max) for k in range(senders)]
        loop = asyncio.get_running_loop()
        with multiprocessing.get_context("spawn").Pool(senders) as pool:
            parts = await loop.run_in_executor(None, pool.map, _child, jobs)
        result = _merge(parts, len(plan.times_s), senders)
    stop.set()
    return result, await poller


def _merge(parts: list[SendResult], n: int, senders: int) -> SendResult:
    def interleave(name: str, dtype: type) -> np.ndarray:
        out = np.zeros(n, dtype=dtype)
        for k, part in enumerate(parts):
            out[k::senders] = getattr(part, name)
        return out

    return SendResult(
        sent_s=interleave("sent_s", float), lag_s=interleave("lag_s", float), latency_s=interleave("latency_s", float),
        status=interleave("status", np.int32), batch_size=interleave("batch_size", np.int32),
        duplicates=sum(p.duplicates for p in parts),
        extra={"cpu_s": sum(p.extra.get("cpu_s", 0.0) for p in parts),
               "send_cpu_s": sum(p.extra.get("send_cpu_s", 0.0) for p in parts)},
    )
