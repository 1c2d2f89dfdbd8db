"""Per-model inference statistics (Triton's statistics extension, schemas/stats.py): the counters
shards and agents keep, what they answer on `<prefix>.stats[.<model>]`, and the call that gathers
and merges the answers (`model_statistics`, what the OIP gateway serves as `/v2/models/.../stats`).

Who counts what, so that each request is counted once, by whoever answered it: the agent counts
what it runs and answers (inference and execution counts, `success`, agent-side `fail`, `queue`,
the compute durations, batch statistics); the shard counts the requests it answers itself with
an error (400, 413, 429, 503, 504 at the door, drops, lost slots) as `fail`. Cluster-wide,
success.count + fail.count is the number of requests answered since the members started.

Gathering is scatter-gather over plain NATS: the asker publishes one request with an inbox and
every member answers. It stops as soon as every member that any answer names has answered (a
cluster without a coordinator names all of them: that is the usual, fast case), else once the
answers are quiet for `quiet_s`, and never later than `wait_s`. Why not a fixed window alone: it
would make every call as slow as the window, and a busy member could still miss it; the member
lists make the common case exact and the window only a fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec
import nats
import structlog
from nats.aio.msg import Msg

from schemas.ingress import split_to_fit
from schemas.limits import NAMES_MAX
from schemas.model import validate_model_name
from schemas.stats import (
    STATS_TOKEN,
    STATS_VERSION,
    InferBatchStatistics,
    InferStatistics,
    ModelStatistics,
    ModelStatisticsResponse,
    StatisticDuration,
    StatsPart,
    stats_part_decoder,
)
from schemas.status import CONTENT_JSON, HEADER_CONTENT_TYPE

if TYPE_CHECKING:
    from runtime.cluster_config import ClusterConfig

log = structlog.get_logger("stats")

WAIT_S = 1.0  # the longest a gather waits for members it was told of
QUIET_S = 0.05  # without a complete member list: stop once no answer came for this long
PART_BYTES_OVERHEAD = 4096  # a part's envelope and member list, beyond its models' statistics
SUBSCRIPTION_PENDING_MAX = 1000  # stats requests waiting on one member
PARTS_PENDING_MAX = 100_000  # parts one gather may hold unread


# Each per-request duration: this module's counter names, Triton's field in `inference_stats`.
REQUEST_DURATIONS = (("success", "success"), ("fail", "fail"), ("queue", "queue"), ("input", "compute_input"),
                     ("infer", "compute_infer"), ("output", "compute_output"))


class ModelCounters:
    """One model's statistics in one process since it started: plain integers, bumped once per
    batch or per error reply (never per request in a loop); a batch size's row is allocated once,
    at its first batch. The durations per request of a batch are the batch's, times its size."""

    __slots__ = ("batches", "execution_count", "fail_count", "fail_ns", "inference_count", "infer_count",
                 "infer_ns", "input_count", "input_ns", "last_inference_ms", "output_count", "output_ns",
                 "queue_count", "queue_ns", "success_count", "success_ns")

    def __init__(self) -> None:
        self.last_inference_ms = self.inference_count = self.execution_count = 0
        self.success_count = self.success_ns = self.fail_count = self.fail_ns = 0
        self.queue_count = self.queue_ns = self.input_count = self.input_ns = 0
        self.infer_count = self.infer_ns = self.output_count = self.output_ns = 0
        # batch size -> [input count, input ns, infer count, infer ns, output count, output ns]
        self.batches: dict[int, list[int]] = {}

    def _row(self, batch_size: int) -> list[int]:
        row = self.batches.get(batch_size)
        if row is None:
            row = self.batches[batch_size] = [0, 0, 0, 0, 0, 0]
        return row

    def _inferred_at(self, wall_ns: int) -> None:
        """`last_inference` only moves forward, should the wall clock step back."""
        if wall_ns // 1_000_000 > self.last_inference_ms:
            self.last_inference_ms = wall_ns // 1_000_000

    def executed(self, batch_size: int, queue_ns: int, input_ns: int, infer_ns: int, wall_ns: int) -> None:
        """A batch ran: `queue_ns` is its requests' waits summed, the others the batch's own."""
        assert batch_size > 0, batch_size
        self.inference_count += batch_size
        self.execution_count += 1
        self.queue_count += batch_size
        self.queue_ns += queue_ns
        self.input_count += batch_size
        self.input_ns += batch_size * input_ns
        self.infer_count += batch_size
        self.infer_ns += batch_size * infer_ns
        row = self._row(batch_size)
        row[0] += 1
        row[1] += input_ns
        row[2] += 1
        row[3] += infer_ns
        self._inferred_at(wall_ns)

    def answered(self, batch_size: int, success_ns: int, output_ns: int, wall_ns: int) -> None:
        """A batch's replies went out: `success_ns` is its requests' times in the cluster summed,
        `output_ns` the batch's reply encoding."""
        assert batch_size > 0, batch_size
        self.success_count += batch_size
        self.success_ns += success_ns
        self.output_count += batch_size
        self.output_ns += batch_size * output_ns
        row = self._row(batch_size)
        row[4] += 1
        row[5] += output_ns
        self._inferred_at(wall_ns)

    def failed(self, count: int, ns: int, wall_ns: int) -> None:
        """`count` requests answered with an error after `ns` in the cluster, summed."""
        self.fail_count += count
        self.fail_ns += ns
        self._inferred_at(wall_ns)

    def absorb(self, stats: ModelStatistics) -> None:
        """Add another member's statistics of the same model (merging parts)."""
        self.last_inference_ms = max(self.last_inference_ms, stats.last_inference)
        self.inference_count += stats.inference_count
        self.execution_count += stats.execution_count
        for mine, theirs in REQUEST_DURATIONS:  # not the hot path: by name
            duration = getattr(stats.inference_stats, theirs)
            setattr(self, f"{mine}_count", getattr(self, f"{mine}_count") + duration.count)
            setattr(self, f"{mine}_ns", getattr(self, f"{mine}_ns") + duration.ns)
        for batch in stats.batch_stats:
            row = self._row(batch.batch_size)
            for i, duration in enumerate((batch.compute_input, batch.compute_infer, batch.compute_output)):
                row[2 * i] += duration.count
                row[2 * i + 1] += duration.ns

    def snapshot(self, name: str) -> ModelStatistics:
        d = StatisticDuration
        return ModelStatistics(
            name=name, version=STATS_VERSION, last_inference=self.last_inference_ms,
            inference_count=self.inference_count, execution_count=self.execution_count,
            inference_stats=InferStatistics(
                success=d(self.success_count, self.success_ns), fail=d(self.fail_count, self.fail_ns),
                queue=d(self.queue_count, self.queue_ns), compute_input=d(self.input_count, self.input_ns),
                compute_infer=d(self.infer_count, self.infer_ns), compute_output=d(self.output_count, self.output_ns)),
            batch_stats=[InferBatchStatistics(batch_size=size, compute_input=d(row[0], row[1]),
                                              compute_infer=d(row[2], row[3]), compute_output=d(row[4], row[5]))
                         for size, row in sorted(self.batches.items())],
        )


def config_members(config: ClusterConfig) -> list[str]:
    """Every member a cluster config names: without a coordinator, all that run."""
    return [f"shard.{s.id}" for s in config.shards] + [f"agent.{a.id}" for a in config.agents]


def snapshots(counters: dict[str, ModelCounters], model: str | None) -> list[ModelStatistics]:
    """Every model's statistics (`model` None), or that one's, or none if it is not counted here."""
    if model is None:
        return [counters[name].snapshot(name) for name in sorted(counters)]
    return [counters[model].snapshot(model)] if model in counters else []


def merge_statistics(stats: Iterable[ModelStatistics]) -> ModelStatisticsResponse:
    """Members' statistics summed per model and version: counts and durations add, batch
    statistics add per batch size, `last_inference` is the latest."""
    merged: dict[tuple[str, str], ModelCounters] = {}
    for one in stats:
        merged.setdefault((one.name, one.version), ModelCounters()).absorb(one)
    return ModelStatisticsResponse(model_stats=[
        msgspec.structs.replace(counters.snapshot(name), version=version)
        for (name, version), counters in sorted(merged.items())])


# ---- answering: every shard and agent ------------------------------------------------------

def encode_parts(member: str, members: list[str], members_complete: bool, stats: list[ModelStatistics],
                 payload_bytes_max: int) -> list[bytes]:
    """A member's answer as JSON messages that each fit `payload_bytes_max` (one, unless it
    hosts many models with many batch sizes)."""
    encoded = [msgspec.json.encode(s) for s in stats]
    runs = split_to_fit([len(e) for e in encoded], payload_bytes_max - PART_BYTES_OVERHEAD - 64 * len(members),
                        items_max=NAMES_MAX) or [range(0)]
    return [msgspec.json.encode(StatsPart(member=member, members=members, members_complete=members_complete,
                                          part=i, parts=len(runs), model_stats=stats[run.start:run.stop]))
            for i, run in enumerate(runs)]


async def serve_stats(nc: nats.NATS, prefix: str, member: str,
                      members: Callable[[], tuple[list[str], bool]],
                      stats: Callable[[str | None], list[ModelStatistics]]) -> list:
    """Answer `<prefix>.stats` and `<prefix>.stats.<model>` (no queue group: every member
    answers). `members()` gives the members this one knows of and whether that is all of
    them; `stats(model)` its statistics, of every model when `model` is None."""

    async def on_request(msg: Msg) -> None:
        if not msg.reply:
            return
        model = msg.subject[len(prefix) + len(STATS_TOKEN) + 2:] or None
        known, complete = members()
        for data in encode_parts(member, known, complete, stats(model), nc.max_payload):
            await nc.publish(msg.reply, data, headers={HEADER_CONTENT_TYPE: CONTENT_JSON})

    subject = f"{prefix}.{STATS_TOKEN}"
    limits = {"pending_msgs_limit": SUBSCRIPTION_PENDING_MAX}
    return [await nc.subscribe(subject, cb=on_request, **limits),
            await nc.subscribe(f"{subject}.*", cb=on_request, **limits)]


# ---- asking: the gateway, the CLI, any client user -----------------------------------------

class Gathered(msgspec.Struct, frozen=True, kw_only=True):
    """What one gather got: the merged statistics, who answered, and who was named but did not."""

    response: ModelStatisticsResponse
    answered: list[str]
    missing: list[str]


class _Parts:
    """The parts received so far, and whether every member named has answered in full."""

    def __init__(self) -> None:
        self.got: dict[str, dict[int, StatsPart]] = {}
        self.named: set[str] = set()
        self.complete = False  # some member named the whole cluster

    def add(self, part: StatsPart) -> None:
        self.got.setdefault(part.member, {})[part.part] = part
        self.named.update(part.members)
        self.named.add(part.member)
        self.complete = self.complete or part.members_complete

    def missing(self) -> list[str]:
        return sorted(m for m in self.named
                      if m not in self.got or len(self.got[m]) < next(iter(self.got[m].values())).parts)

    def all_in(self) -> bool:
        return bool(self.got) and not self.missing()


async def gather_statistics(nc: nats.NATS, prefix: str = "symphony", model: str | None = None, *,
                            wait_s: float = WAIT_S, quiet_s: float = QUIET_S) -> Gathered:
    """Ask every member and merge what they answer (see the module's docstring for when it stops).
    An invalid model name raises InvalidModelName (a ValueError) before anything is sent."""
    subject = f"{prefix}.{STATS_TOKEN}" + (f".{validate_model_name(model)}" if model is not None else "")
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=PARTS_PENDING_MAX)
    parts = _Parts()
    try:
        await nc.publish(subject, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            left = deadline - loop.time()
            if left <= 0 or (parts.complete and parts.all_in()):
                break
            try:
                msg = await sub.next_msg(timeout=min(left, quiet_s) if parts.all_in() else left)
            except nats.errors.TimeoutError:
                if parts.all_in():
                    break  # quiet, and nobody named is missing
                continue
            if not msg.data and (msg.headers or {}).get("Status") == "503":
                break  # no responders: no member is running
            try:
                parts.add(stats_part_decoder.decode(msg.data))
            except msgspec.DecodeError as error:
                log.warning("undecodable_stats_part", size=len(msg.data), error=str(error)[:200])
    finally:
        await sub.unsubscribe()
    missing = parts.missing()
    if missing:
        log.warning("stats_members_missing", missing=missing, wait_s=wait_s)
    merged = merge_statistics(s for pieces in parts.got.values() for p in pieces.values() for s in p.model_stats)
    return Gathered(response=merged, answered=sorted(parts.got), missing=missing)


async def model_statistics(nc: nats.NATS, prefix: str = "symphony", model: str | None = None, *,
                           wait_s: float = WAIT_S) -> ModelStatisticsResponse:
    """Triton's statistics of `model` (or of every model), cluster-wide. An empty `model_stats`
    means no member hosts the model (the gateway answers that as Triton does an unknown model)."""
    return (await gather_statistics(nc, prefix, model, wait_s=wait_s)).response
