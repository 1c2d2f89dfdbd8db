"""Reply status codes and headers: the contract every client reads (docs/protocol.md).

Codes are HTTP-like so any client knows their meaning; the reason travels as short text.
"""

from __future__ import annotations

import enum

HEADER_STATUS = "Symphony-Status"
HEADER_REASON = "Symphony-Reason"
HEADER_SLO_MS = "Symphony-Slo-Ms"
HEADER_REQUEST_ID = "Symphony-Request-Id"
# Absolute deadline, Unix time in milliseconds: travels with the request through hand-backs and
# plans, so a component that was paused never starts work whose client has given up.
HEADER_DEADLINE = "Symphony-Deadline"
# Set on a request re-published by the component that held it (a move): not a client's repeat.
HEADER_HANDED_BACK = "Symphony-Handed-Back"
HEADER_BATCH_SIZE = "Symphony-Batch-Size"
HEADER_QUEUE_US = "Symphony-Queue-Us"
HEADER_COMPUTE_US = "Symphony-Compute-Us"
HEADER_CONTENT_TYPE = "Content-Type"
# On a batch message (batched ingress, schemas/ingress.py): `batched` asks for the 200 replies of
# the items routed to the batch's own reply subject as one message per batch and plan; on such a
# message it says that is what it is.
HEADER_REPLIES = "Symphony-Replies"
REPLIES_BATCHED = "batched"

CONTENT_JSON = "application/json"
CONTENT_MSGPACK = "application/msgpack"


class Status(enum.IntEnum):
    OK = 200
    BAD_REQUEST = 400  # malformed body, wrong name/shape/datatype, bad header
    UNKNOWN_MODEL = 404
    TOO_LARGE = 413
    OVERLOADED = 429
    UNAVAILABLE = 503  # no slot, slot lost, scheduler stopping
    DROPPED = 504  # its deadline cannot be met
    INTERNAL = 500


def error_headers(status: Status, reason: str, request_id: str | None = None) -> dict[str, str]:
    headers = {HEADER_STATUS: str(int(status)), HEADER_REASON: reason[:200]}
    if request_id:
        headers[HEADER_REQUEST_ID] = request_id
    return headers
