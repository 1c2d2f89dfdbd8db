"""Open Inference Protocol (KServe v2) requests and replies as the gateway's front doors see them,
translated to and from symphony's one-item requests (docs/protocol.md). Plain functions: no I/O.

An OIP request may carry a batch (the first dimension of every input, as the model's metadata
says with its `-1`); symphony schedules single items, so a batch of B becomes B items, sent
together in one batched-ingress message, and their outputs are stacked back in order. An input
without the batch dimension is one item, and its outputs come back without it too.

HTTP/REST bodies are JSON, optionally followed by raw tensors (the binary tensor data extension:
`Inference-Header-Content-Length` says where the JSON ends; each binary input says its size in
`parameters.binary_data_size`). gRPC bodies are the protocol's protobuf messages (gateway/grpc.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from schemas.ingress import ITEMS_MAX
from schemas.limits import TENSOR_NAME_LEN_MAX, TENSOR_RANK_MAX, TENSORS_MAX
from schemas.model import ModelMetadata
from schemas.status import Status
from schemas.tensors import DATATYPES, NAME_OF_DTYPE, Tensor, TensorError, to_array

HEADER_INFERENCE_LENGTH = "inference-header-content-length"
NAME = "symphony"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_configuration", "parameters")
ID_LEN_MAX = 256
Name = Annotated[str, Meta(min_length=1, max_length=TENSOR_NAME_LEN_MAX)]
Params = Annotated[dict[str, Any], Meta(max_length=TENSORS_MAX)]


class GatewayError(Exception):
    """A request the gateway answers itself: `status` is symphony's code (HTTP-like)."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class HttpInput(msgspec.Struct, kw_only=True):
    name: Name
    shape: Annotated[list[Annotated[int, Meta(ge=0, le=1 << 31)]], Meta(max_length=TENSOR_RANK_MAX)]
    datatype: Annotated[str, Meta(max_length=16)]
    parameters: Params | None = None
    data: msgspec.Raw = msgspec.Raw(b"")  # flat or nested numbers; absent (empty) when the tensor is binary


class HttpOutput(msgspec.Struct, kw_only=True):
    name: Name
    parameters: Params | None = None


class HttpInferRequest(msgspec.Struct, kw_only=True):
    id: Annotated[str, Meta(max_length=ID_LEN_MAX)] | None = None
    parameters: Params | None = None
    inputs: Annotated[list[HttpInput], Meta(min_length=1, max_length=TENSORS_MAX)]
    outputs: Annotated[list[HttpOutput], Meta(max_length=TENSORS_MAX)] | None = None


_request_decoder = msgspec.json.Decoder(HttpInferRequest)
_flat_decoder = msgspec.json.Decoder(list[int | float | bool | None])
_any_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


@dataclass
class Call:
    """One OIP inference request, decoded: what both front doors hand to the forwarder."""

    model: str
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: dict[str, bool] | None = None  # requested output -> as binary (HTTP); None: all
    binary_outputs: bool = False  # every output as binary unless it says otherwise (HTTP)
    slo_ms: float | None = None
    deadline_ms: float | None = None  # absolute, Unix time in milliseconds
    request_id: str = ""  # Symphony-Request-Id (a de-duplication key; docs/reliability.md)
    parameters: dict[str, Any] = field(default_factory=dict)


# --- HTTP/REST bodies --------------------------------------------------------------------------

def decode_http_infer(model: str, body: bytes, header_length: str | None) -> Call:
    """An HTTP infer body (JSON, or JSON then binary tensors), or GatewayError(400)."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise GatewayError(Status.BAD_REQUEST, f"Inference-Header-Content-Length {header_length[:20]!r} "
                               f"does not fit a body of {len(body)} bytes")
        json_part, binary = body[:int(header_length)], body[int(header_length):]
    try:
        request = _request_decoder.decode(json_part)
    except msgspec.DecodeError as error:
        raise GatewayError(Status.BAD_REQUEST, f"malformed body: {error}") from None
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in inputs:
            raise GatewayError(Status.BAD_REQUEST, "malformed body: input names repeat")
        inputs[tensor.name], offset = _http_array(tensor, binary, offset)
    if offset != len(binary):
        raise GatewayError(Status.BAD_REQUEST, f"{len(binary) - offset} bytes of binary data no input claims")
    params = request.parameters or {}
    outputs = None
    if request.outputs is not None:
        outputs = {o.name: bool((o.parameters or {}).get("binary_data", False)) for o in request.outputs}
    return Call(model=model, inputs=inputs, id=request.id, outputs=outputs,
                binary_outputs=bool(params.get("binary_data_output", False)), parameters=params)


def _http_array(tensor: HttpInput, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    size = (tensor.parameters or {}).get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise TensorError(f"input {tensor.name!r}: binary_data_size {size!r} exceeds the binary data")
            data: list | bytes = binary[offset:offset + size]
            offset += size
        elif not tensor.data:
            raise TensorError(f"input {tensor.name!r}: no data and no binary_data_size")
        else:
            data = _flat_values(tensor.name, tensor.data)
        return to_array(Tensor(name=tensor.name, shape=tensor.shape, datatype=tensor.datatype, data=data)), offset
    except TensorError as error:
        raise GatewayError(Status.BAD_REQUEST, str(error)) from None


def _flat_values(name: str, raw: msgspec.Raw) -> list:
    """`data` as one flat list: the protocol allows it flat or nested (row-major)."""
    try:
        return _flat_decoder.decode(raw)
    except msgspec.DecodeError:
        pass
    try:
        nested = _any_decoder.decode(raw)
    except msgspec.DecodeError as error:
        raise TensorError(f"input {name!r}: malformed data: {error}") from None
    flat: list = []
    _flatten(name, nested, flat, 0)
    return flat


def _flatten(name: str, value: object, into: list, depth: int) -> None:
    if isinstance(value, list):
        if depth >= TENSOR_RANK_MAX:
            raise TensorError(f"input {name!r}: data nested deeper than {TENSOR_RANK_MAX}")
        for item in value:
            _flatten(name, item, into, depth + 1)
    elif value is None or isinstance(value, (int, float, bool)):
        into.append(value)
    else:
        raise TensorError(f"input {name!r}: data holds {type(value).__name__} values; numbers only")


def encode_http_reply(call: Call, outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The reply body and, when some output is binary, the JSON part's length (for the
    Inference-Header-Content-Length header)."""
    tensors, chunks = [], []
    for name, array in outputs.items():
        binary = call.outputs[name] if call.outputs is not None else call.binary_outputs
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    reply: dict[str, Any] = {"model_name": call.model, "model_version": "1", "outputs": tensors}
    if call.id is not None:
        reply["id"] = call.id
    head = _json_encoder.encode(reply)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def error_body(reason: str) -> bytes:
    return _json_encoder.encode({"error": reason})


# --- Batches and items -------------------------------------------------------------------------

def split_items(call: Call, meta: ModelMetadata) -> tuple[list[dict[str, np.ndarray]], bool]:
    """The call's items (each input's rows, batch dimension kept at 1) and whether the call had
    the batch dimension. GatewayError(400) when inputs are missing, unknown, or disagree on it."""
    specs = {s.name: s for s in meta.inputs}
    unknown = sorted(set(call.inputs) - set(specs))
    missing = sorted(set(specs) - set(call.inputs))
    if unknown or missing:
        raise GatewayError(Status.BAD_REQUEST, f"model {meta.name!r} takes inputs {sorted(specs)}; "
                           f"unknown: {unknown}, missing: {missing}")
    batched = {name: array.ndim == len(specs[name].shape) for name, array in call.inputs.items()}
    for name, array in call.inputs.items():
        if array.ndim not in (len(specs[name].shape), len(specs[name].shape) - 1):
            raise GatewayError(Status.BAD_REQUEST, f"input {name!r}: shape {list(array.shape)} does not fit the "
                               f"model's {specs[name].shape} (-1: the batch dimension)")
    if len(set(batched.values())) > 1:
        raise GatewayError(Status.BAD_REQUEST, "inputs disagree on the batch dimension")
    if not next(iter(batched.values())):
        return [{name: array[np.newaxis] for name, array in call.inputs.items()}], False
    sizes = {array.shape[0] for array in call.inputs.values()}
    if len(sizes) > 1:
        raise GatewayError(Status.BAD_REQUEST, f"inputs disagree on the batch size: {sorted(sizes)}")
    size = sizes.pop()
    if not 1 <= size <= ITEMS_MAX:
        raise GatewayError(Status.BAD_REQUEST, f"batch size {size}: between 1 and {ITEMS_MAX}")
    return [{name: array[i:i + 1] for name, array in call.inputs.items()} for i in range(size)], True


def stack_outputs(call: Call, items: list[dict[str, np.ndarray]], batched: bool) -> dict[str, np.ndarray]:
    """The items' outputs in one reply: stacked on the batch dimension (dropped again when the
    call had none), filtered to the requested outputs (GatewayError(400) for an unknown one)."""
    names = list(items[0])
    if call.outputs is not None:
        unknown = sorted(set(call.outputs) - set(names))
        if unknown:
            raise GatewayError(Status.BAD_REQUEST, f"unknown outputs {unknown}; the model gives {names}")
        names = [n for n in names if n in call.outputs]
    stacked = {n: np.concatenate([item[n] for item in items], axis=0) for n in names}
    return stacked if batched else {n: a[0] for n, a in stacked.items()}


def datatype_of(array: np.ndarray) -> str:
    name = NAME_OF_DTYPE.get(np.dtype(array.dtype).newbyteorder("<")) or NAME_OF_DTYPE.get(array.dtype)
    if name is None:
        raise GatewayError(Status.INTERNAL, f"output of dtype {array.dtype} has no protocol datatype")
    return name


def numpy_dtype(datatype: str) -> np.dtype:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise GatewayError(Status.BAD_REQUEST, f"unsupported datatype {datatype[:16]!r}; use one of "
                           f"{', '.join(DATATYPES)}")
    return dtype


# --- Deadlines and SLOs ------------------------------------------------------------------------

def positive_ms(value: object, what: str) -> float:
    """A positive, finite number of milliseconds from a header or parameter, or GatewayError."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise GatewayError(Status.BAD_REQUEST, f"{what} {str(value)[:32]!r}: a positive number of milliseconds")
    return number


def apply_timing(call: Call, *, now_ms: float, slo_ms: object = None, deadline_ms: object = None,
                 timeout_us: object = None) -> None:
    """Set the call's SLO and absolute deadline from whichever the client gave: an SLO
    (`Symphony-Slo-Ms`, parameter `slo_ms`), an absolute deadline (`Symphony-Deadline`, Unix ms),
    or a relative timeout (Triton's `timeout` parameter in microseconds; gRPC's own deadline).
    With several deadlines, the tightest applies. `now_ms`: Unix time in milliseconds."""
    if slo_ms is not None:
        call.slo_ms = positive_ms(slo_ms, "SLO")
    deadlines = []
    if deadline_ms is not None:
        deadlines.append(positive_ms(deadline_ms, "deadline"))
    if timeout_us is not None:
        deadlines.append(now_ms + positive_ms(timeout_us, "timeout") / 1e3)
    if deadlines:
        call.deadline_ms = min(deadlines)


def model_metadata_json(meta: ModelMetadata) -> dict[str, Any]:
    """The protocol's model metadata (`GET /v2/models/{m}`)."""
    return {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs]}


def model_config_json(meta: ModelMetadata) -> dict[str, Any]:
    """Triton's model configuration extension, as far as symphony has one: what `perf_analyzer`
    and Triton clients read (batching limit and tensor shapes without the batch dimension)."""
    def dims(shape: list[int]) -> list[int]:
        return list(shape[1:]) if shape and shape[0] == -1 else list(shape)

    return {"name": meta.name, "platform": meta.platform, "max_batch_size": meta.max_batch_size,
            "input": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": dims(t.shape)} for t in meta.inputs],
            "output": [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": dims(t.shape)}
                       for t in meta.outputs],
            "parameters": {"slo_ms": {"string_value": f"{meta.slo_ms:g}"}}}
