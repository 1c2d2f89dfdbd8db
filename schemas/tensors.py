"""Inference bodies in the Open Inference Protocol (KServe v2) tensor form.

JSON: `{"inputs": [{"name", "shape", "datatype", "data": [...]}]}` with `data` flat, row-major.
msgpack: the same map; `data` may also be raw little-endian bytes. Replies use the same form and
encoding: `{"model_name", "outputs": [...]}`.

This is the one place client bodies are parsed, so it is strict: every field is bounded, `data`
holds numbers only (no strings, objects or nesting), its length matches the shape, its values fit
the datatype (no floats, NaN or out-of-range values where integers are expected), and anything else
raises `TensorError`, which the agent answers with a 400 naming what is wrong.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from schemas.codec import Decoder, json_decoder, msgpack_decoder
from schemas.limits import TENSOR_NAME_LEN_MAX, TENSOR_RANK_MAX, TENSORS_MAX
from schemas.status import CONTENT_JSON, CONTENT_MSGPACK

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NAME_OF_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}

TENSOR_ELEMENTS_MAX = 1 << 24  # far above what fits in a NATS payload as JSON or raw bytes
Dim = Annotated[int, Meta(ge=0, le=1 << 31)]
# JSON has no NaN or inf: encoders write them as null, which float datatypes read as NaN.
Element = int | float | bool | None
Parameters = Annotated[dict[str, Any], Meta(max_length=TENSORS_MAX)]


class Tensor(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=TENSOR_NAME_LEN_MAX)]
    shape: Annotated[list[Dim], Meta(max_length=TENSOR_RANK_MAX)]
    datatype: Annotated[str, Meta(max_length=16)]
    data: Annotated[list[Element], Meta(max_length=TENSOR_ELEMENTS_MAX)] | bytes
    parameters: Parameters | None = None


class InferRequestBody(msgspec.Struct, kw_only=True):
    inputs: Annotated[list[Tensor], Meta(min_length=1, max_length=TENSORS_MAX)]
    id: Annotated[str, Meta(max_length=TENSOR_NAME_LEN_MAX)] | None = None
    parameters: Parameters | None = None
    outputs: Annotated[list[Parameters], Meta(max_length=TENSORS_MAX)] | None = None


class InferResponseBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: Annotated[str, Meta(max_length=TENSOR_NAME_LEN_MAX)]
    outputs: Annotated[list[Tensor], Meta(max_length=TENSORS_MAX)]
    id: Annotated[str, Meta(max_length=TENSOR_NAME_LEN_MAX)] | None = None


class TensorError(ValueError):
    """The body is not a valid tensor request for this model (a 400)."""


_json_decoder = json_decoder(InferRequestBody)
_msgpack_decoder = msgpack_decoder(InferRequestBody)
_json_response_decoder = json_decoder(InferResponseBody)
_msgpack_response_decoder = msgpack_decoder(InferResponseBody)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def _decode(body: bytes, content_type: str, json: Decoder, msgpack: Decoder):  # noqa: ANN202
    if content_type not in (CONTENT_JSON, CONTENT_MSGPACK):
        raise TensorError(f"unsupported content type {content_type[:64]!r}")
    try:
        return (msgpack if content_type == CONTENT_MSGPACK else json).decode(body)
    except msgspec.DecodeError as error:  # ValidationError too; the codec maps deep nesting and bad UTF-8 here
        raise TensorError(f"malformed body: {error}") from None


def decode_request(body: bytes, content_type: str) -> InferRequestBody:
    """The request body, or TensorError. Input names must be unique."""
    request = _decode(body, content_type, _json_decoder, _msgpack_decoder)
    if len({t.name for t in request.inputs}) != len(request.inputs):
        raise TensorError("malformed body: input names repeat")
    return request


def to_array(tensor: Tensor) -> np.ndarray:
    """A numpy array from a tensor, checking datatype, element count, shape and values.

    Integer datatypes take integers within their range only (no floats, so no NaN or inf); BOOL
    takes booleans; float datatypes take numbers within their range, and null as NaN (JSON has no
    NaN: encoders, ours included, write it as null).
    """
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise TensorError(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}; "
                          f"use one of {', '.join(DATATYPES)}")
    count = math.prod(tensor.shape)
    if count > TENSOR_ELEMENTS_MAX:
        raise TensorError(f"input {tensor.name!r}: shape {tensor.shape} has {count} elements, "
                          f"more than {TENSOR_ELEMENTS_MAX}")
    if isinstance(tensor.data, bytes):
        if len(tensor.data) != count * dtype.itemsize:
            raise TensorError(
                f"input {tensor.name!r}: {len(tensor.data)} bytes for shape {tensor.shape} of {tensor.datatype}"
            )
        if dtype.kind == "b" and count and np.frombuffer(tensor.data, dtype=np.uint8).max() > 1:
            raise TensorError(f"input {tensor.name!r}: BOOL bytes must be 0 or 1")
        return np.frombuffer(tensor.data, dtype=dtype).reshape(tensor.shape)
    if len(tensor.data) != count:
        raise TensorError(f"input {tensor.name!r}: {len(tensor.data)} values for shape {tensor.shape}")
    if count == 0:
        return np.empty(tensor.shape, dtype=dtype)
    try:
        array = _values_to_array(tensor.data, dtype)
    except (TypeError, ValueError, OverflowError, FloatingPointError):
        array = None
    if array is None:
        raise TensorError(f"input {tensor.name!r}: data does not fit datatype {tensor.datatype} "
                          "(a value of another type, or out of its range)")
    return array.reshape(tensor.shape)


def _values_to_array(values: list, dtype: np.dtype) -> np.ndarray | None:
    """`values` as `dtype`, None where a value has the wrong kind; numpy raises when one is out of
    range (OverflowError for integers, FloatingPointError for floats)."""
    if dtype.kind == "f":
        if dtype.itemsize == 8:  # no finite value overflows: skip the cost of errstate
            return np.array(values, dtype=dtype)
        with np.errstate(over="raise"):
            return np.array(values, dtype=dtype)
    inferred = np.asarray(values)  # integers only: kind i or u (floats, None, bools would differ)
    if dtype.kind == "b":
        return inferred if inferred.dtype.kind == "b" else None
    if inferred.dtype.kind not in "iu":
        return None
    return np.array(values, dtype=dtype)  # OverflowError for a value outside the type's range


def from_array(name: str, array: np.ndarray, *, raw: bool) -> Tensor:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    datatype = NAME_OF_DTYPE.get(np.dtype(dtype))
    if datatype is None:
        array = array.astype("<f4")
        datatype = "FP32"
    array = np.ascontiguousarray(array, dtype=DATATYPES[datatype])
    data: list[Any] | bytes = array.tobytes() if raw else array.reshape(-1).tolist()
    return Tensor(name=name, shape=list(array.shape), datatype=datatype, data=data)


def encode_response(body: InferResponseBody, content_type: str) -> bytes:
    if content_type == CONTENT_MSGPACK:
        return _msgpack_encoder.encode(body)
    return _json_encoder.encode(body)


def encode_request(inputs: dict[str, np.ndarray], content_type: str, *, raw: bool = True) -> bytes:
    body = InferRequestBody(
        inputs=[from_array(n, a, raw=raw and content_type == CONTENT_MSGPACK) for n, a in inputs.items()]
    )
    if content_type == CONTENT_MSGPACK:
        return _msgpack_encoder.encode(body)
    return _json_encoder.encode(body)


def decode_response(body: bytes, content_type: str) -> InferResponseBody:
    """A reply body, or TensorError."""
    return _decode(body, content_type, _json_response_decoder, _msgpack_response_decoder)
