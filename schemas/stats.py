"""Per-model inference statistics with the field names and meanings of Triton's statistics
extension (docs/protocol.md, Statistics), and the part each shard and agent answers with.

A request to `<prefix>.stats` (every model) or `<prefix>.stats.<model>` is answered by every
shard and agent with its `StatsPart`: cumulative counters since that process started, for the
models it hosts. runtime/stats.py gathers and sums the parts into one `ModelStatisticsResponse`,
whose JSON (`msgspec.json.encode`) is what Triton's `GET v2/models[/<model>]/stats` returns, and
whose builtins (`msgspec.to_builtins`) `google.protobuf.json_format.ParseDict` turns into
gRPC's `ModelStatisticsResponse`.

Meanings (Triton's): `inference_count` items run, `execution_count` batches run,
`last_inference` the last request answered (ms since the epoch); in `inference_stats` each
duration counts requests and sums nanoseconds per request: `success` and `fail` end to end in
the cluster, `queue` waiting before the batch's inputs were prepared, `compute_input`,
`compute_infer` and `compute_output` the batch's decode, execution and reply encoding (each
request of a batch counts the batch's whole duration). `batch_stats` counts executions per
batch size, each once, with the batch's durations. Symphony keeps no response cache: `cache_hit`
and `cache_miss` stay zero.

Plain (not array-like) JSON: it is read by the gateway and by any client, never on the request
path. New fields go last, with defaults.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import json_decoder
from schemas.limits import BATCH_SIZE_LIMIT, NAMES_MAX, Count, ModelName, Text, Version

STATS_TOKEN = "stats"  # `<prefix>.stats` and `<prefix>.stats.<model>`
STATS_VERSION = "1"  # symphony serves one version of each model (as `symphony.meta.<model>` says)

# A member of the cluster that answers: `shard.<id>` or `agent.<id>`.
MEMBER_PATTERN = r"^(shard|agent)\.[A-Za-z0-9_\-]{1,128}\Z"
Member = Annotated[str, Meta(pattern=MEMBER_PATTERN, max_length=134)]


class StatisticDuration(msgspec.Struct, frozen=True):
    """How many times a statistic was collected, and their total duration."""

    count: Count = 0
    ns: Count = 0


ZERO = StatisticDuration()


class InferStatistics(msgspec.Struct, frozen=True, kw_only=True):
    success: StatisticDuration = ZERO
    fail: StatisticDuration = ZERO
    queue: StatisticDuration = ZERO
    compute_input: StatisticDuration = ZERO
    compute_infer: StatisticDuration = ZERO
    compute_output: StatisticDuration = ZERO
    cache_hit: StatisticDuration = ZERO
    cache_miss: StatisticDuration = ZERO


class InferBatchStatistics(msgspec.Struct, frozen=True, kw_only=True):
    batch_size: Annotated[int, Meta(ge=1, le=BATCH_SIZE_LIMIT)]
    compute_input: StatisticDuration = ZERO
    compute_infer: StatisticDuration = ZERO
    compute_output: StatisticDuration = ZERO


class ModelStatistics(msgspec.Struct, frozen=True, kw_only=True):
    name: ModelName
    version: Text = STATS_VERSION
    last_inference: Count = 0  # ms since the epoch
    inference_count: Count = 0
    execution_count: Count = 0
    inference_stats: InferStatistics = InferStatistics()
    batch_stats: Annotated[list[InferBatchStatistics], Meta(max_length=BATCH_SIZE_LIMIT)] = []  # by size


class ModelStatisticsResponse(msgspec.Struct, frozen=True, kw_only=True):
    model_stats: Annotated[list[ModelStatistics], Meta(max_length=NAMES_MAX)] = []  # by name


class StatsPart(msgspec.Struct, frozen=True, kw_only=True):
    """One member's answer, or one piece of it: a member whose statistics do not fit the
    server's max_payload in one message sends `parts` messages, numbered from 0."""

    version: Version = 1
    member: Member
    # Members this one knows will answer too, so the asker need not wait out its window for them.
    # `members_complete`: the list names the whole cluster (a cluster without a coordinator,
    # whose config lists every shard and agent); else the asker also waits for a quiet moment.
    members: Annotated[list[Member], Meta(max_length=NAMES_MAX)] = []
    members_complete: bool = False
    part: Annotated[int, Meta(ge=0, lt=NAMES_MAX)] = 0
    parts: Annotated[int, Meta(ge=1, le=NAMES_MAX)] = 1
    model_stats: Annotated[list[ModelStatistics], Meta(max_length=NAMES_MAX)] = []


def _part_in_range(part: StatsPart) -> str | None:
    return None if part.part < part.parts else f"part {part.part} of {part.parts}"


stats_part_decoder = json_decoder(StatsPart, _part_in_range)
model_statistics_decoder = json_decoder(ModelStatisticsResponse)
