"""Inference bodies in the Open Inference Protocol (KServe v2) tensor form.

JSON: `{"inputs": [{"name", "shape", "datatype", "data": [...]}]}` with `data` flat, row-major.
msgpack: the same map; `data` may also be raw little-endian bytes. Replies use the same form and
encoding: `{"model_name", "outputs": [...]}`.
"""

from __future__ import annotations

from typing import Annotated, Any

import math

import msgspec
import numpy as np
from msgspec import Meta

from schemas.status import CONTENT_MSGPACK

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

Dim = Annotated[int, Meta(ge=0, le=1 << 31)]


class Tensor(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    shape: Annotated[list[Dim], Meta(max_length=16)]
    datatype: str
    data: list[Any] | bytes
    parameters: dict[str, Any] | None = None


class InferRequestBody(msgspec.Struct, kw_only=True):
    inputs: Annotated[list[Tensor], Meta(min_length=1, max_length=64)]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] | None = None


class InferResponseBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    model_name: str
    outputs: list[Tensor]
    id: str | None = None


class TensorError(ValueError):
    """The body is not a valid tensor request for this model (a 400)."""


_json_decoder = msgspec.json.Decoder(InferRequestBody)
_msgpack_decoder = msgspec.msgpack.Decoder(InferRequestBody)
_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


def decode_request(body: bytes, content_type: str) -> InferRequestBody:
    try:
        if content_type == CONTENT_MSGPACK:
            return _msgpack_decoder.decode(body)
        return _json_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise TensorError(f"malformed body: {error}") from None


def to_array(tensor: Tensor) -> np.ndarray:
    """A numpy array from a tensor, checking datatype, element count and shape."""
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise TensorError(f"input {tensor.name!r}: unsupported datatype {tensor.datatype!r}")
    count = math.prod(tensor.shape)
    if isinstance(tensor.data, bytes):
        if len(tensor.data) != count * dtype.itemsize:
            raise TensorError(
                f"input {tensor.name!r}: {len(tensor.data)} bytes for shape {tensor.shape} of {tensor.datatype}"
            )
        array = np.frombuffer(tensor.data, dtype=dtype)
    else:
        if len(tensor.data) != count:
            raise TensorError(f"input {tensor.name!r}: {len(tensor.data)} values for shape {tensor.shape}")
        try:
            array = np.array(tensor.data, dtype=dtype)
        except (TypeError, ValueError):
            raise TensorError(f"input {tensor.name!r}: data does not fit datatype {tensor.datatype}") from None
        if array.ndim != 1:
            raise TensorError(f"input {tensor.name!r}: data must be a flat list")
    return array.reshape(tensor.shape)


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
    if content_type == CONTENT_MSGPACK:
        return msgspec.msgpack.decode(body, type=InferResponseBody)
    return msgspec.json.decode(body, type=InferResponseBody)
