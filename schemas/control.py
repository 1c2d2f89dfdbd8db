"""Control-plane messages: the assignment the coordinator writes, heartbeats shards and agents
put into the membership bucket, and slot claims. JSON in the KV (readable with `nats kv get`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import json_decoder
from schemas.limits import NAMES_MAX, Count, Epoch, Identifier, MaybeIdentifier, ModelName, NonNegative, Text, Version
from schemas.model import ModelSpec

STATE_BUCKET = "symphony"  # assignment, drain requests
MEMBERS_BUCKET = "symphony-members"  # heartbeats; entries age out after the TTL
LEADER_BUCKET = "symphony-leader"  # the leader's lease; ages out after the lease TTL
ASSIGNMENT_KEY = "assignment"
AUTOSCALE_KEY = "autoscale"  # the autoscaler's latest decision (AutoscaleStatus), for any actuator


# The members a message may list: every name is a subject token, every count bounded.
ModelNames = Annotated[list[ModelName], Meta(max_length=NAMES_MAX)]
SlotIds = Annotated[list[Identifier], Meta(max_length=NAMES_MAX)]
ShardIds = Annotated[list[Identifier], Meta(max_length=NAMES_MAX)]


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    version: Version = 1
    epoch: Epoch = 0
    models: Annotated[dict[ModelName, Identifier], Meta(max_length=NAMES_MAX)] = {}  # model -> shard
    slots: Annotated[dict[Identifier, Identifier], Meta(max_length=NAMES_MAX)] = {}  # slot -> shard
    demand: Annotated[dict[Identifier, NonNegative], Meta(max_length=NAMES_MAX)] = {}  # shard -> busy slots
    desired_slots: Count = 0
    surplus_slots: Count = 0
    coordinator: MaybeIdentifier = ""
    # A hot model served by several shards (issue 14): every shard that serves it, `models[m]`
    # first; each has its own slots and takes its share of the model's traffic. Absent: one shard.
    splits: Annotated[dict[ModelName, ShardIds], Meta(max_length=NAMES_MAX)] = {}

    def shards_of(self, model: str) -> list[str]:
        """Every shard that serves `model` (none: unassigned)."""
        split = self.splits.get(model)
        if split:
            return list(split)
        shard = self.models.get(model)
        return [shard] if shard else []

    def models_of(self, shard: str) -> frozenset[str]:
        """Every model `shard` serves, split ones included."""
        return frozenset(m for m in self.models if shard in self.shards_of(m))

    def models_by_shard(self) -> dict[str, frozenset[str]]:
        """`models_of` for every shard that serves a model, in one pass over the models: asking
        shard by shard scans every model each time."""
        served: dict[str, set[str]] = {}
        for model in self.models:
            for shard in self.shards_of(model):
                served.setdefault(shard, set()).add(model)
        return {shard: frozenset(models) for shard, models in served.items()}


class ModelLoad(msgspec.Struct, frozen=True, kw_only=True):
    rate_rps: NonNegative  # the core's rate meter (seconds of history: what placement plans with)
    pending: Count
    recent_rps: NonNegative = 0.0  # answers per second since the shard's previous heartbeat


class ShardHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    version: Version = 1
    shard_id: Identifier
    models: Annotated[dict[ModelName, ModelLoad], Meta(max_length=NAMES_MAX)] = {}
    epoch: Epoch = 0  # the assignment it has applied
    draining: bool = False
    # For the autoscaler (issue 13), over the interval since the shard's previous heartbeat; new
    # fields last and with defaults, so heartbeats of an older shard still decode.
    busy_slots: NonNegative = 0.0  # slot-seconds of completed batches per second
    bad_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0  # dropped or lost, of the requests answered
    # Slots this shard owns or still has a plan on that no report answered yet: a slot the
    # autoscaler drains is released only when no shard lists it here.
    slots_held: SlotIds = []


class AgentSlot(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: Identifier
    models: ModelNames
    owner: MaybeIdentifier = ""
    epoch: Epoch = 0
    plans_open: Count = 0  # received to run and not yet answered: a draining slot is released at 0


class AgentHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    version: Version = 1
    agent_id: Identifier
    device: Text
    slots: Annotated[list[AgentSlot], Meta(max_length=NAMES_MAX)]
    # device -> bytes in use, where JAX exposes it
    memory_bytes: Annotated[dict[Text, Count], Meta(max_length=NAMES_MAX)] = {}


class AutoscaleStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The autoscaler's decision as the leading coordinator published it at an epoch (KV key
    `autoscale`). An actuator holds `target_slots` slots: it starts what `starting` lists (after
    its cold start) and may stop what `released` lists; `draining` slots take no new plans and
    must keep running until they are released, or requests in them would go unanswered.
    `idle`: every other slot the cluster config knows, not running and not asked for."""

    version: Version = 1
    coordinator: MaybeIdentifier = ""
    epoch: Epoch = 0  # the newest assignment when this was decided
    # The order of decisions: (lease_revision, seq). The leader's lease revision grows with every
    # renewal and every new leader; seq counts one coordinator's decisions. An actuator never acts
    # on a status older than one it has seen (a stale read, or a deposed leader's late write):
    # `freshest` below.
    lease_revision: Count = 0
    seq: Count = 0
    target_slots: Count = 0
    need_slots: NonNegative = 0.0  # the rule's unrounded need
    reason: Text = "hold"  # hold, up, down, pressure
    rule: Text = "demand"
    demand_slots: NonNegative = 0.0  # the signal: rate x cost per model, summed
    busy_slots: NonNegative = 0.0
    bad_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0
    active: SlotIds = []  # serving: in the assignment
    starting: SlotIds = []  # asked for, not heartbeating yet
    draining: SlotIds = []  # out of the assignment, finishing what they hold
    released: SlotIds = []  # drained and empty; the actuator may stop them
    idle: SlotIds = []


def freshest(read: AutoscaleStatus | None, seen: AutoscaleStatus | None) -> AutoscaleStatus | None:
    """The newer of a status just read and the newest seen before, by (lease_revision, seq).

    A read can return an older value than one already acted on (a KV replica behind the
    leader), and a deposed leader's put can land after its successor's: acting on either could
    stop an agent whose slot is active again, losing the requests it holds (seed 1277 of
    `symphony sim control`). An actuator keeps what this returns and acts only on it."""
    if read is None:
        return seen
    if seen is None or (read.lease_revision, read.seq) >= (seen.lease_revision, seen.seq):
        return read
    return seen


class SlotClaim(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: Identifier
    shard_id: Identifier
    epoch: Epoch


class ClaimReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: Text = ""
    queued_plans: Count = 0


def preference_order(slots: Iterable[str]) -> list[str]:
    """Slots most preferred first: names in natural order (`gpu-2` before `gpu-10`). Shards pack
    work onto the most preferred slots (shard.core.matcher) and the autoscaler drains from the
    end (coordinator.autoscale.choose_slots), so the idle slots are the ones released."""
    return sorted(slots, key=lambda name: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                           for part in re.split(r"(\d+)", name)])


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)


# Typed decoders, built once (STYLE §9, schemas/codec.py). Each raises msgspec.DecodeError (or
# its subclass ValidationError), and nothing else, on anything that is not a valid message;
# callers log, count and skip it.
assignment_decoder = json_decoder(Assignment)
shard_heartbeat_decoder = json_decoder(ShardHeartbeat)
agent_heartbeat_decoder = json_decoder(AgentHeartbeat)
slot_claim_decoder = json_decoder(SlotClaim)
claim_reply_decoder = json_decoder(ClaimReply)
model_spec_decoder = json_decoder(ModelSpec)
autoscale_status_decoder = json_decoder(AutoscaleStatus)
