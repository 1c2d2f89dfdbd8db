"""The gRPC front door: `inference.GRPCInferenceService` of the KServe v2 protocol, from the
protocol's own definitions as Triton ships them (tritonclient's generated `service_pb2`: the KServe
v2 messages plus Triton's extensions). Served by grpcio's asyncio server (gateway/service.py).

Inputs arrive as `raw_input_contents` (what tritonclient sends) or typed `contents`; outputs go
back as `raw_output_contents`. Errors are gRPC status codes with our reason as the details.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.forward import Forwarder
from gateway.oip import (
    EXTENSIONS,
    NAME,
    Call,
    GatewayError,
    apply_timing,
    datatype_of,
    model_config_json,
    numpy_dtype,
)
from schemas.status import Status
from schemas.tensors import Tensor, TensorError, to_array

CODES = {Status.BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT, Status.UNKNOWN_MODEL: grpc.StatusCode.NOT_FOUND,
         Status.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED, Status.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
         Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE, Status.DROPPED: grpc.StatusCode.DEADLINE_EXCEEDED,
         Status.INTERNAL: grpc.StatusCode.INTERNAL}
# Which typed `contents` field holds each datatype (FP16 travels only as raw bytes).
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}
GRPC_MESSAGE_BYTES_MAX = 64 * 1024 * 1024


def parameter(value: pb.InferParameter) -> Any:
    which = value.WhichOneof("parameter_choice")
    return getattr(value, which) if which else None


class GrpcDoor(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, forwarder: Forwarder, version: str) -> None:
        self.forwarder = forwarder
        self.version = version

    async def _model(self, name: str, version: str):  # noqa: ANN202 - ModelMetadata
        meta = await self.forwarder.metadata(name)
        if version and version not in meta.versions:
            raise GatewayError(Status.UNKNOWN_MODEL, f"model {name!r} has no version {version[:32]!r}")
        return meta

    async def _meta(self, name: str, version: str, context: grpc.aio.ServicerContext):  # noqa: ANN202
        try:
            return await self._model(name, version)
        except GatewayError as error:
            await context.abort(CODES[error.status], error.reason)

    async def ServerLive(self, request: pb.ServerLiveRequest,
                        context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest,
                         context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.forwarder.connected and bool(await self.forwarder.models()))

    async def ModelReady(self, request: pb.ModelReadyRequest,
                        context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        try:
            meta = await self.forwarder.metadata(request.name)
        except GatewayError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=not request.version or request.version in meta.versions)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,
                            context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=NAME, version=self.version, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,
                           context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        meta = await self._meta(request.name, request.version, context)
        tensors = [[pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))
                    for t in specs] for specs in (meta.inputs, meta.outputs)]
        return pb.ModelMetadataResponse(name=meta.name, versions=list(meta.versions), platform=meta.platform,
                                        inputs=tensors[0], outputs=tensors[1])

    async def ModelConfig(self, request: pb.ModelConfigRequest,
                         context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        meta = await self._meta(request.name, request.version, context)
        config = json_format.ParseDict(model_config_json(meta), config_pb.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if request.name:
            await self._meta(request.name, request.version, context)
        stats = await self.forwarder.statistics(request.name or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                             context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        models = await self.forwarder.models()
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
            name=m, version="1", state="READY") for m in models])

    async def ModelInfer(self, request: pb.ModelInferRequest,
                        context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            meta = await self._model(request.model_name, request.model_version)
            call = decode_grpc_infer(request, dict(context.invocation_metadata() or ()), context.time_remaining())
            outputs = await self.forwarder.infer(call, meta)
        except GatewayError as error:
            self.forwarder.metrics.errors.labels("grpc", str(int(error.status))).inc()
            await context.abort(CODES[error.status], error.reason)
        return encode_grpc_reply(call, outputs)


def decode_grpc_infer(request: pb.ModelInferRequest, metadata: dict[str, Any], remaining_s: float | None) -> Call:
    """A ModelInferRequest as a Call; GatewayError(400) for inputs that do not decode."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise GatewayError(Status.BAD_REQUEST, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise GatewayError(Status.BAD_REQUEST, "malformed body: input names repeat")
        inputs[tensor.name] = _grpc_array(tensor, raw[i] if raw else None)
    params = {k: parameter(v) for k, v in request.parameters.items()}
    outputs = {o.name: True for o in request.outputs} if request.outputs else None
    call = Call(model=request.model_name, inputs=inputs, id=request.id or None, outputs=outputs, parameters=params)
    timeout_us = params.get("timeout")
    if remaining_s is not None and (timeout_us is None or remaining_s * 1e6 < float(timeout_us)):
        timeout_us = max(remaining_s, 1e-6) * 1e6
    apply_timing(call, now_ms=time.time() * 1e3, slo_ms=metadata.get("symphony-slo-ms", params.get("slo_ms")),
                 deadline_ms=metadata.get("symphony-deadline"), timeout_us=timeout_us)
    call.request_id = str(metadata.get("symphony-request-id", ""))[:128]
    return call


def _grpc_array(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    numpy_dtype(tensor.datatype)
    if raw is not None:
        data: list | bytes = raw
    elif tensor.datatype in CONTENTS_FIELD:
        data = list(getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype]))
    else:
        raise GatewayError(Status.BAD_REQUEST, f"input {tensor.name!r}: {tensor.datatype} travels only in "
                           "raw_input_contents")
    try:
        return to_array(Tensor(name=tensor.name, shape=list(tensor.shape), datatype=tensor.datatype, data=data))
    except TensorError as error:
        raise GatewayError(Status.BAD_REQUEST, str(error)) from None


def encode_grpc_reply(call: Call, outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    reply = pb.ModelInferResponse(model_name=call.model, model_version="1", id=call.id or "")
    for name, array in outputs.items():
        reply.outputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
        reply.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return reply
