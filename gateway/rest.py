"""The HTTP/REST front door: the Open Inference Protocol's v2 endpoints, with Triton's binary
tensor data, statistics and model configuration extensions (docs/gateway.md): a Starlette app with
the inference endpoint in plain ASGI before it, served by uvicorn (gateway/service.py)."""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Send

from gateway.forward import Forwarder
from gateway.oip import (
    EXTENSIONS,
    HEADER_INFERENCE_LENGTH,
    NAME,
    Call,
    GatewayError,
    apply_timing,
    decode_http_infer,
    encode_http_reply,
    error_body,
    model_config_json,
    model_metadata_json,
)
from schemas.status import HEADER_DEADLINE, HEADER_REQUEST_ID, HEADER_SLO_MS, Status

log = structlog.get_logger("gateway")

BODY_BYTES_MAX = 64 * 1024 * 1024  # a whole OIP batch; each item is still capped by its shard
READY_TTL_S = 1.0
JSON = "application/json"
JSON_BYTES = JSON.encode()
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer\Z")
_encoder = msgspec.json.Encoder()


def _json(value: Any, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status_code=status, media_type=JSON)


def _error(error: GatewayError) -> Response:
    return Response(error_body(error.reason), status_code=int(error.status), media_type=JSON)


def _answers(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A route whose GatewayError becomes the protocol's `{"error": ...}` with our status code."""
    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as error:
            return _error(error)
        except Exception as error:  # logged; the client still gets the protocol's error form
            log.exception("gateway_error", path=request.url.path)
            return _error(GatewayError(Status.INTERNAL, f"gateway: {error.__class__.__name__}"))
    return route


class HttpDoor:
    def __init__(self, forwarder: Forwarder, version: str) -> None:
        self.forwarder = forwarder
        self.version = version
        self._ready: tuple[float, bool] = (0.0, False)

    def app(self):  # noqa: ANN201 - an ASGI application
        """The inference endpoint is served by plain ASGI (`_infer`), everything else by Starlette:
        the framework's per-request layers (middleware, Request, route matching) cost more than
        the rest of an inference call's handling in the gateway (BENCHMARKS §13)."""
        routes = self._routes()

        async def asgi(scope: dict, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and \
                    (match := INFER_PATH.match(scope["path"])) is not None:
                await self._infer(match.group(1), match.group(2), scope, receive, send)
            else:
                await routes(scope, receive, send)
        return asgi

    def _routes(self) -> Starlette:
        model = "/v2/models/{model}"
        versioned = "/v2/models/{model}/versions/{version}"
        routes = [Route("/v2", self.server_metadata), Route("/v2/", self.server_metadata),
                  Route("/v2/health/live", self.live), Route("/v2/health/ready", self.ready),
                  Route("/v2/models/stats", _answers(self.stats)),
                  Route("/v2/repository/index", _answers(self.index), methods=["POST"])]
        for base in (model, versioned):
            routes += [Route(base, _answers(self.model_metadata)), Route(f"{base}/ready", self.model_ready),
                       Route(f"{base}/config", _answers(self.model_config)),
                       Route(f"{base}/stats", _answers(self.stats))]
        return Starlette(routes=routes)

    async def server_metadata(self, _request: Request) -> Response:
        return _json({"name": NAME, "version": self.version, "extensions": list(EXTENSIONS)})

    async def live(self, _request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, _request: Request) -> Response:
        """Ready: connected to NATS and some shard serves a model (checked at most once a second)."""
        at_s, ready = self._ready
        if time.monotonic() - at_s > READY_TTL_S:
            ready = self.forwarder.connected and bool(await self.forwarder.models())
            self._ready = (time.monotonic(), ready)
        return Response(status_code=200 if ready else 503)

    async def _meta(self, request: Request):  # noqa: ANN202 - ModelMetadata
        return await self._model(request.path_params["model"], request.path_params.get("version"))

    async def _model(self, model: str, version: str | None):  # noqa: ANN202 - ModelMetadata
        meta = await self.forwarder.metadata(model)
        if version is not None and version not in meta.versions:
            raise GatewayError(Status.UNKNOWN_MODEL, f"model {meta.name!r} has no version {version[:32]!r}; "
                               f"it has {list(meta.versions)}")
        return meta

    async def model_metadata(self, request: Request) -> Response:
        return _json(model_metadata_json(await self._meta(request)))

    async def model_config(self, request: Request) -> Response:
        return _json(model_config_json(await self._meta(request)))

    async def model_ready(self, request: Request) -> Response:
        try:
            await self._meta(request)
        except GatewayError as error:
            return Response(status_code=int(error.status))
        return Response(status_code=200)

    async def index(self, _request: Request) -> Response:
        return _json([{"name": m, "version": "1", "state": "READY"} for m in await self.forwarder.models()])

    async def stats(self, request: Request) -> Response:
        model = request.path_params.get("model")
        if model is not None:
            await self._meta(request)
        return _json(await self.forwarder.statistics(model))

    async def _infer(self, model: str, version: str | None, scope: dict, receive: Receive, send: Send) -> None:
        """POST /v2/models/{m}[/versions/{v}]/infer, as plain ASGI."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            meta = await self._model(model, version)
            call = decode_http_infer(model, await _body(receive, headers.get("content-encoding", "")),
                                     headers.get(HEADER_INFERENCE_LENGTH))
            apply_timing(call, now_ms=time.time() * 1e3,
                         slo_ms=headers.get(HEADER_SLO_MS.lower(), call.parameters.get("slo_ms")),
                         deadline_ms=headers.get(HEADER_DEADLINE.lower()), timeout_us=call.parameters.get("timeout"))
            call.request_id = headers.get(HEADER_REQUEST_ID.lower(), "")[:128]
            outputs = await self.forwarder.infer(call, meta)
            status, reply_headers, body = 200, *_reply(call, encode_http_reply(call, outputs))
        except GatewayError as error:
            status, reply_headers, body = int(error.status), [(b"content-type", JSON_BYTES)], error_body(error.reason)
            self.forwarder.metrics.errors.labels("http", str(status)).inc()
        except Exception as error:  # logged; the client still gets the protocol's error form
            log.exception("gateway_error", path=scope["path"])
            status, reply_headers, body = 500, [(b"content-type", JSON_BYTES)], error_body(
                f"gateway: {error.__class__.__name__}")
        reply_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": body})


def _reply(call: Call, encoded: tuple[bytes, int | None]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """An infer reply's headers and body: JSON, or JSON then binary outputs."""
    body, json_length = encoded
    headers = [(HEADER_REQUEST_ID.lower().encode(), call.request_id.encode("latin-1", "replace"))] \
        if call.request_id else []
    if json_length is None:
        return [(b"content-type", JSON_BYTES), *headers], body
    return [(b"content-type", b"application/octet-stream"),
            (HEADER_INFERENCE_LENGTH.encode(), str(json_length).encode()), *headers], body


async def _body(receive: Receive, content_encoding: str) -> bytes:
    """The request body, inflated when the client compressed it (tritonclient's
    `request_compression_algorithm`: gzip or deflate); 413 past BODY_BYTES_MAX either way."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(Status.BAD_REQUEST, "the client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > BODY_BYTES_MAX:
            raise GatewayError(Status.TOO_LARGE, f"body over {BODY_BYTES_MAX} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    encoding = content_encoding.lower() or "identity"
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise GatewayError(Status.BAD_REQUEST, f"unsupported Content-Encoding {encoding[:32]!r}; gzip or deflate")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    try:
        body = inflater.decompress(body, BODY_BYTES_MAX + 1)
    except zlib.error as error:
        raise GatewayError(Status.BAD_REQUEST, f"body is not valid {encoding}: {error}") from None
    if len(body) > BODY_BYTES_MAX or inflater.unconsumed_tail:
        raise GatewayError(Status.TOO_LARGE, f"inflated body over {BODY_BYTES_MAX} bytes")
    return body
