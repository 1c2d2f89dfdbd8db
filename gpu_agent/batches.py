"""A batch between the agent's pipeline stages, as typed records, and the byte work on it:
request bodies into stacked input arrays, outputs into replies. No I/O, and no clock but the
load-time cost measurement at the end: the shell (gpu_agent/agent.py) moves these records
between its stages and publishes what they say.

A plan's error answers (bad input, expired, failed) travel in its record and go out only at the
end, after its report and after the reply stage's withhold check (gpu_agent/decisions.py): an
answer sent earlier could be followed by the shard's own answer to a plan withheld later."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import numpy as np

from gpu_agent.runners import Runner
from schemas.ingress import ReplyEntry, batch_encoders, split_to_fit
from schemas.model import TensorSpec
from schemas.plan import BatchPlan, PlanRequest, ReportStatus
from schemas.status import (
    CONTENT_JSON,
    HEADER_BATCH_SIZE,
    HEADER_COMPUTE_US,
    HEADER_CONTENT_TYPE,
    HEADER_QUEUE_US,
    HEADER_REPLIES,
    HEADER_REQUEST_ID,
    HEADER_STATUS,
    REPLIES_BATCHED,
    Status,
)
from schemas.tensors import InferResponseBody, TensorError, decode_request, encode_response, from_array, to_array

PUBLISH_US = 15.0  # nats-py publish of one reply (measured locally: 4-5 us per message, times 3 for safety)


@dataclass(slots=True, frozen=True)
class ErrorAnswer:
    """One request answered with an error, once its plan's report is out."""

    request: PlanRequest
    status: Status
    reason: str


@dataclass(slots=True, frozen=True)
class Received:
    """A plan taken off its slot's subject and accepted into the slot's queue."""

    plan: BatchPlan
    received_ns: int  # the agent's monotonic clock: how long it waited here, for the report


@dataclass(slots=True, frozen=True)
class Prepared:
    """A plan whose bodies decoded: the valid requests' inputs stacked in row order."""

    plan: BatchPlan
    runner: Runner
    requests: list[PlanRequest]
    inputs: dict[str, np.ndarray]
    answers: list[ErrorAnswer]  # bad inputs (400)
    received_ns: int
    input_ns: int = 0  # decoding and stacking the bodies (Triton's compute_input), the agent's clock


@dataclass(slots=True, frozen=True)
class Outcome:
    """What a plan ended as: the reply stage reports it, then answers every request in it."""

    plan: BatchPlan
    status: ReportStatus
    answers: list[ErrorAnswer]
    served: list[PlanRequest] = field(default_factory=list)  # answered 200, row `i` of `outputs`
    outputs: dict[str, np.ndarray] | None = None
    waited_us: int = 0  # on the agent before the batch started
    compute_us: int = 0
    received_ns: int = 0  # when the agent took the plan (its monotonic clock); 0: not known


def answer_all(requests: list[PlanRequest], status: Status, reason: str) -> list[ErrorAnswer]:
    return [ErrorAnswer(request, status, reason) for request in requests]


def decode_inputs(specs: list[TensorSpec], body: bytes, content_type: str) -> dict[str, np.ndarray]:
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


def prepare(plan: BatchPlan, runner: Runner, received_ns: int) -> Prepared:
    """Decode each body against the model's inputs; a bad one is answered 400 alone, the rest
    are stacked for one batch."""
    specs = runner.spec().inputs
    valid: list[PlanRequest] = []
    arrays: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    answers: list[ErrorAnswer] = []
    for request in plan.requests:
        try:
            decoded = decode_inputs(specs, request.body, request.content_type)
        except TensorError as error:
            answers.append(ErrorAnswer(request, Status.BAD_REQUEST, str(error)))
            continue
        valid.append(request)
        for name, array in decoded.items():
            arrays[name].append(array)
    inputs = {name: np.concatenate(parts) for name, parts in arrays.items()} if valid else {}
    return Prepared(plan, runner, valid, inputs, answers, received_ns)


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


def encode_replies(model: str, outputs: dict[str, np.ndarray], served: list[PlanRequest], waited_us: int,
                   compute_us: int, payload_bytes_max: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """The 200s of a batch as (subject, body, headers) messages: each on its own reply subject,
    except requests marked `reply_batched` (batched ingress), whose replies go together to their
    batch message's reply subject, in as few messages as fit `payload_bytes_max` (one per batch
    message and plan, unless that is too large): one publish, not one per request."""
    messages: list[tuple[str, bytes, dict[str, str]]] = []
    grouped: dict[tuple[str, str], list[ReplyEntry]] = {}
    for row, request in enumerate(served):
        body, headers = encode_reply(model, outputs, row, request, len(served), waited_us, compute_us)
        parent, _, index = request.reply.rpartition(".")
        if request.reply_batched and parent and index.isdigit():
            grouped.setdefault((parent, request.content_type), []).append(ReplyEntry(int(index), headers,
                                                                                     msgspec.Raw(body)))
        else:
            messages.append((request.reply, body, headers))
    for (parent, content_type), entries in grouped.items():
        headers = {HEADER_REPLIES: REPLIES_BATCHED, HEADER_CONTENT_TYPE: content_type}
        sizes = [len(e.body) + 200 for e in entries]  # headers of a 200: well under 200 bytes
        for run in split_to_fit(sizes, payload_bytes_max - 100):
            messages.append((parent, batch_encoders[content_type].encode(entries[run.start:run.stop]), headers))
    return messages


def measure_request_overhead_us(runner: Runner, samples: int = 200) -> float:
    """Per-request agent cost: decode + validate a JSON body and encode its reply, plus a publish.
    A CPU-time measurement at load, not a schedule: it reads perf_counter, not the agent's clock."""
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
