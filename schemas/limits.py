"""Value limits shared by every wire message (STYLE §9, §10), and the names that become subjects.

Every decoder in schemas/ is a typed msgspec decoder whose fields carry these limits, so a message
that decodes is within them, and one that does not raises `msgspec.DecodeError` (whose subclass
`msgspec.ValidationError` names the offending field). Limits are checked on decode only, never
on construction, so they cost nothing where a process builds its own messages.

A limit on an internal message must never be tighter than what its producer can emit: a plan the
agent cannot decode leaves every request in it unanswered until the shard declares the slot lost.
Fields that carry client input through the shard untouched (reply subjects, request ids, bodies)
are therefore bounded only by what NATS itself can carry.

Identifiers (model names, slot, shard and agent ids, the subject prefix) are formatted into NATS
subjects and KV keys, so they must be exactly one subject token: no dots, wildcards (`*`, `>`),
whitespace or control characters. The patterns end in `\\Z`, not `$`, which would also accept a
trailing newline.
"""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

# One subject token: what slot, shard and agent ids and the subject prefix may be.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_\-]{1,128}\Z"
Identifier = Annotated[str, Meta(pattern=IDENTIFIER_PATTERN, min_length=1, max_length=128)]
MaybeIdentifier = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_\-]{0,128}\Z", max_length=128)]  # or ""

# Model names are stricter (issue 7 §4): they start with a letter or digit and are short enough
# to read in a subject, a metric label and a table column.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\Z"
MODEL_NAME_LEN_MAX = 64
ModelName = Annotated[str, Meta(pattern=MODEL_NAME_PATTERN, min_length=1, max_length=MODEL_NAME_LEN_MAX)]

# NATS caps max_payload at 64 MiB; no message and no field in one can be larger.
PAYLOAD_BYTES_LIMIT = 64 * 1024 * 1024
NAMES_MAX = 4096  # models, slots, shards or agents listed in one message
BATCH_SIZE_LIMIT = 4096  # the largest batch a config or a profile may declare (ModelEntry agrees)
TENSOR_RANK_MAX = 16
TENSORS_MAX = 64  # inputs or outputs of one model or one request
TENSOR_NAME_LEN_MAX = 256
TEXT_LEN_MAX = 1024  # reasons, device and platform names, profile ids

Count = Annotated[int, Meta(ge=0)]  # ids, counters, durations in us; msgspec keeps ints in 64 bits
Version = Annotated[int, Meta(ge=0, le=0xFFFF)]
Epoch = Annotated[int, Meta(ge=0)]
Text = Annotated[str, Meta(max_length=TEXT_LEN_MAX)]
# Finite, non-negative floats: rates, durations, fractions. NaN and inf fail both bounds.
NonNegative = Annotated[float, Meta(ge=0, le=1e18)]
LatencyUs = Annotated[float, Meta(ge=0, le=3.6e9)]  # at most an hour
SloMs = Annotated[float, Meta(gt=0, le=3_600_000)]  # what the shard accepts in Symphony-Slo-Ms


class InvalidName(ValueError):
    """A name or id that cannot be one subject token."""


_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def validate_identifier(value: object, what: str = "id") -> str:
    """`value` if it can be a slot, shard, agent or coordinator id (one subject token), else
    InvalidName saying what an id may be."""
    if not isinstance(value, str) or _IDENTIFIER.match(value) is None:
        raise InvalidName(f"invalid {what} {value!r}: use 1-128 letters, digits, '_' or '-' "
                          "(no dots, wildcards, '>', spaces or control characters)")
    return value
