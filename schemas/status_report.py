"""Status snapshots served on the NATS services API (`$SRV.*`, `symphony.<role>.<id>.status`)
and shown by `symphony status`. New fields go last, with defaults, so a newer `symphony status`
reads an older role's snapshot."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import json_decoder
from schemas.control import AutoscaleStatus
from schemas.limits import NAMES_MAX, Count, Epoch, Identifier, MaybeIdentifier, ModelName, NonNegative, Text, Version

Ids = Annotated[list[Identifier], Meta(max_length=NAMES_MAX)]


class ModelStatus(msgspec.Struct, kw_only=True):
    name: ModelName
    pending: Count
    target_batch_size: Count
    rate_rps: NonNegative
    received: Count
    dispatched: Count
    dropped: Count


class ShardStatus(msgspec.Struct, kw_only=True):
    version: Version = 1
    shard_id: Identifier
    policy: Text
    epoch: Epoch = 0
    models: Annotated[list[ModelStatus], Meta(max_length=NAMES_MAX)]
    slots_owned: Ids
    slots_busy: Ids
    slots_lost: Ids
    busy_seconds: NonNegative = 0.0  # slot time of completed batches, cumulative (as agents measured it)
    metrics_url: Text = ""  # where its Prometheus endpoint answers; "": it serves none


class SlotStatus(msgspec.Struct, kw_only=True):
    slot_id: Identifier
    models: Annotated[list[ModelName], Meta(max_length=NAMES_MAX)]
    plans_queued: Count
    executions: Count
    owner: MaybeIdentifier = ""
    epoch: Epoch = 0
    busy_fraction: Annotated[float, Meta(ge=0, le=1)] = 0.0  # over the last 10 s


class AgentStatus(msgspec.Struct, kw_only=True):
    version: Version = 1
    agent_id: Identifier
    device: Text
    slots: Annotated[list[SlotStatus], Meta(max_length=NAMES_MAX)]
    compile_count: Annotated[dict[ModelName, Count], Meta(max_length=NAMES_MAX)]
    metrics_url: Text = ""  # where its Prometheus endpoint answers; "": it serves none


class CoordinatorStatus(msgspec.Struct, kw_only=True):
    coordinator_id: Identifier
    leading: bool
    epoch: Epoch
    shards: Ids
    agents: Ids
    desired_slots: Count
    surplus_slots: Count
    slots: Count
    autoscale: AutoscaleStatus | None = None  # the leader's latest decision, with autoscaling on
    metrics_url: Text = ""  # where its Prometheus endpoint answers; "": it serves none


# Typed decoders for `symphony status` and the load generator's slot poll (STYLE §9).
shard_status_decoder = json_decoder(ShardStatus)
agent_status_decoder = json_decoder(AgentStatus)
coordinator_status_decoder = json_decoder(CoordinatorStatus)
