"""Admission: what a request gets at the shard's door, decided from its headers alone.

The shell reads headers and the body's size, never the body. This module owns the rules of the
reply contract that apply before the core sees a request (docs/protocol.md, docs/reliability.md
§1): its Content-Type and id must be usable, an SLO or deadline header must parse, work whose
deadline has passed is never started, a repeated id within its deadline is not answered again,
and the body and the shard's queue have limits. It returns a record; the shell replies, counts
and queues. It must not read a clock, send, log or keep state of its own beyond `SeenIds`.

Each rejection carries the status and reason of its reply and the outcome label it is counted
under; load/bench/bad_input.py's corpus and tests/integration rely on them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from schemas.status import (
    CONTENT_JSON,
    CONTENT_MSGPACK,
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    Status,
)

REQUEST_ID_LEN_MAX = 128
SLO_MS_MAX = 3_600_000  # an hour: beyond any inference SLO
DEADLINE_MS_MAX = 2**53  # beyond any real clock; bounds the header before it becomes an int
SEEN_IDS_MIN = 4096


class AdmissionLimits(msgspec.Struct, frozen=True, kw_only=True):
    body_bytes_max: int
    queue_len_max: int  # requests the whole shard holds
    request_id_len_max: int = REQUEST_ID_LEN_MAX


class Admitted(msgspec.Struct, frozen=True, gc=False):
    """Taken: queue it with these (or, with `hand_back`, re-publish it for the model's new owner)."""

    content_type: str
    client_request_id: str
    slo_ns: int  # what the core plans with: the model's SLO, tightened by a deadline header
    deadline_unix_ns: int  # wall clock: travels with the request in plans and hand-backs
    hand_back: bool = False  # the shard is giving the model up: it is not this shard's to answer


class Rejected(msgspec.Struct, frozen=True, gc=False):
    """Answered at once with this status and reason, and counted under `outcome`."""

    status: Status
    reason: str
    outcome: str
    client_request_id: str  # echoed on the reply; empty when the id itself was refused


class Duplicate(msgspec.Struct, frozen=True, gc=False):
    """A repeat of an id still within its deadline: the first copy's reply is the one reply,
    so this copy gets none (counted as `duplicate`)."""


DUPLICATE = Duplicate()
NO_HEADERS: Mapping[str, str] = {}

Admission = Admitted | Rejected | Duplicate


class SeenIds:
    """Client request ids taken, each with the end of its deadline (monotonic ns). A repeat
    before then is a duplicate; after it the id is free again. Ids whose deadline has ended are
    pruned whenever the table doubles, so it stays near twice the ids still open."""

    __slots__ = ("_prune_at", "_size_min", "_until_ns")

    def __init__(self, size_min: int = SEEN_IDS_MIN) -> None:
        self._until_ns: dict[str, int] = {}
        self._size_min = size_min
        self._prune_at = size_min

    def __len__(self) -> int:
        return len(self._until_ns)

    def is_open(self, client_request_id: str, now_ns: int) -> bool:
        """Was this id taken, with a deadline not yet passed?"""
        until = self._until_ns.get(client_request_id)
        return until is not None and until > now_ns

    def remember(self, client_request_id: str, until_ns: int, now_ns: int) -> None:
        """Note an id the shard took; a request without an id is not remembered."""
        if not client_request_id:
            return
        self._until_ns[client_request_id] = until_ns
        if len(self._until_ns) >= self._prune_at:
            self._until_ns = {k: v for k, v in self._until_ns.items() if v > now_ns}
            self._prune_at = max(self._size_min, 2 * len(self._until_ns))


# Where a request's id, SLO and deadline came from, for the reasons that name them: a single
# request's headers, or a batch item's fields (schemas/ingress.py).
HEADER_NAMES = (HEADER_REQUEST_ID, HEADER_SLO_MS, HEADER_DEADLINE)
ITEM_NAMES = ("id", "slo_ms", "deadline_ms")
ABSENT = 0.0  # an SLO or deadline not given (a given one is positive)
INVALID = -1.0  # one given that is not a number in range


def admit(
    headers: Mapping[str, str],
    body_bytes: int,
    model_slo_ns: int,
    wall_ns: int,
    now_ns: int,
    seen: SeenIds,
    limits: AdmissionLimits,
    *,
    queued: int,
    released: bool,
    handed_back: bool,
) -> Admission:
    """Decide one request at the door; the checks run in this order, the first failing wins.

    `model_slo_ns` is the model's SLO (0 when the shard has no spec for it), `wall_ns` and
    `now_ns` are the wall and monotonic clocks now, `queued` the requests the shard holds,
    `released` whether the shard is giving the model up, `handed_back` whether the request is a
    trusted hand-back from another shard or agent (never a client's repeat).
    """
    client_id = headers.get(HEADER_REQUEST_ID, "")
    content_type = headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON)
    if content_type not in (CONTENT_JSON, CONTENT_MSGPACK):
        return Rejected(Status.BAD_REQUEST, f"unsupported Content-Type {content_type!r}; "
                        f"use {CONTENT_JSON} or {CONTENT_MSGPACK}", "bad_request", client_id)
    slo_ms = _header_ms(headers[HEADER_SLO_MS], SLO_MS_MAX) if HEADER_SLO_MS in headers else ABSENT
    deadline_ms = _header_ms(headers[HEADER_DEADLINE], DEADLINE_MS_MAX) if HEADER_DEADLINE in headers else ABSENT
    return admit_asked(content_type, client_id, slo_ms, deadline_ms, body_bytes, model_slo_ns, wall_ns, now_ns,
                       seen, limits, queued=queued, released=released, handed_back=handed_back)


def admit_asked(
    content_type: str,
    client_id: str,
    slo_ms: float,
    deadline_ms: float,
    body_bytes: int,
    model_slo_ns: int,
    wall_ns: int,
    now_ns: int,
    seen: SeenIds,
    limits: AdmissionLimits,
    *,
    queued: int,
    released: bool,
    handed_back: bool,
    names: tuple[str, str, str] = HEADER_NAMES,
) -> Admission:
    """`admit` once the request's id, SLO and deadline are read, from headers or from a batch
    item (`names` says which, for the reasons): `slo_ms` and `deadline_ms` are ABSENT, INVALID or
    a value in range. One rule set for both ways in, so a batch item is judged as its single
    request would be."""
    id_name, slo_name, deadline_name = names
    if len(client_id) > limits.request_id_len_max:
        return Rejected(Status.BAD_REQUEST, f"{id_name} longer than {limits.request_id_len_max} characters",
                        "bad_request", "")
    slo_ns = model_slo_ns
    if slo_ms != ABSENT:
        if slo_ms == INVALID:
            return Rejected(Status.BAD_REQUEST, f"{slo_name} must be a positive number of milliseconds",
                            "bad_request", client_id)
        slo_ns = int(slo_ms * 1e6)
    if deadline_ms != ABSENT:
        if deadline_ms == INVALID:
            return Rejected(Status.BAD_REQUEST, f"{deadline_name} must be Unix time in milliseconds",
                            "bad_request", client_id)
        remaining_ns = int(deadline_ms * 1e6) - wall_ns
        if remaining_ns <= 0:
            # Its client has given up (or this shard was paused): never start dead work.
            return Rejected(Status.DROPPED, "dropped: expired before it was scheduled", "expired", client_id)
        slo_ns = min(slo_ns, remaining_ns) if slo_ns else remaining_ns
    if client_id and seen.is_open(client_id, now_ns) and not handed_back:
        return DUPLICATE
    if released:
        return Admitted(content_type, client_id, slo_ns, wall_ns + slo_ns, hand_back=True)
    if body_bytes > limits.body_bytes_max:
        return Rejected(Status.TOO_LARGE, f"body of {body_bytes} bytes exceeds {limits.body_bytes_max}",
                        "rejected", client_id)
    if queued >= limits.queue_len_max:
        return Rejected(Status.OVERLOADED, "overloaded: the shard's queue is full", "rejected", client_id)
    return Admitted(content_type, client_id, slo_ns, wall_ns + slo_ns)


def _header_ms(value: str, upper: float) -> float:
    """A header's milliseconds if they parse to a number in (0, upper), else INVALID."""
    try:
        ms = float(value)
    except ValueError:
        return INVALID
    return ms if 0 < ms < upper else INVALID


def item_ms(value: float | None, upper: float) -> float:
    """A batch item's milliseconds field: ABSENT when not given, INVALID unless in (0, upper)."""
    if value is None:
        return ABSENT
    return value if 0 < value < upper else INVALID
