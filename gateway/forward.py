"""The gateway's NATS side: model metadata (cached briefly) and inference calls, each OIP call's
items sent through one `CoalescingSender`, so concurrent HTTP and gRPC requests for a model share
batched-ingress messages (runtime/coalesce.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import msgspec
import nats
import structlog

from gateway.metrics import GatewayMetrics
from gateway.oip import Call, GatewayError, split_items, stack_outputs
from runtime.client import InferResult, SymphonyClient
from runtime.coalesce import CoalescingSender
from runtime.stats import model_statistics
from schemas.model import (
    InvalidModelName,
    ModelMetadata,
    validate_model_name,
)
from schemas.status import CONTENT_MSGPACK, Status
from schemas.tensors import encode_request

log = structlog.get_logger("gateway")

META_TTL_S = 5.0  # how long a model's metadata is reused before asking the shards again
META_TIMEOUT_S = 2.0
REPLY_GRACE_S = 1.0  # waited past a request's deadline before answering 504 ourselves
STATS_WAIT_S = 1.0  # the most a statistics request waits for every shard's and agent's part
DEFAULT_TIMEOUT_S = 30.0  # a request with neither SLO nor deadline: the most we wait for its reply


@dataclass
class _Cached:
    meta: ModelMetadata | None  # None: no shard serves it
    at_s: float


class Forwarder:
    def __init__(self, nc: nats.NATS, prefix: str = "symphony", *, metrics: GatewayMetrics | None = None,
                 linger_us: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.nc = nc
        self.prefix = prefix
        self.client = SymphonyClient(nc, prefix)  # metadata and the model list, as any client asks
        self.sender = CoalescingSender(nc, prefix, content_type=CONTENT_MSGPACK, linger_us=linger_us)
        self.metrics = metrics or GatewayMetrics()
        self.timeout_s = timeout_s
        self._meta: dict[str, _Cached] = {}
        self._fetching: dict[str, asyncio.Task] = {}  # one metadata request per model at a time
        self.calls_in_flight = 0
        self.metrics.watch(lambda: {"calls_in_flight": self.calls_in_flight,
                                    "batches_open": self.sender.batches_open,
                                    "batch_messages": self.sender.messages_sent})

    async def start(self) -> None:
        await self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def models(self) -> list[str]:
        try:
            return await self.client.models(timeout_s=META_TIMEOUT_S)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as error:  # closed, reconnecting, ...
            raise GatewayError(Status.UNAVAILABLE, f"NATS: {error!r}") from None
        except msgspec.DecodeError as error:
            raise GatewayError(Status.INTERNAL, f"unreadable model list: {error}") from None

    async def metadata(self, model: str) -> ModelMetadata:
        """The model's metadata, or GatewayError(404) when no shard serves it (or the name is not
        a model name)."""
        try:
            validate_model_name(model)
        except InvalidModelName as error:
            raise GatewayError(Status.UNKNOWN_MODEL, str(error)) from None
        cached = self._meta.get(model)
        now_s = time.monotonic()
        if cached is None or now_s - cached.at_s > META_TTL_S:
            fetch = self._fetching.get(model)
            if fetch is None:  # the calls that find it stale meanwhile share this one request
                fetch = self._fetching[model] = asyncio.get_running_loop().create_task(self._fetch_metadata(model))
                fetch.add_done_callback(lambda _task: self._fetching.pop(model, None))
            cached = _Cached(await asyncio.shield(fetch), now_s)
            self._meta[model] = cached
        if cached.meta is None:
            raise GatewayError(Status.UNKNOWN_MODEL, f"no shard serves model {model!r}")
        return cached.meta

    async def _fetch_metadata(self, model: str) -> ModelMetadata | None:
        try:
            return await self.client.metadata(model, timeout_s=META_TIMEOUT_S)
        except nats.errors.NoRespondersError:
            return None
        except nats.errors.TimeoutError:
            raise GatewayError(Status.UNAVAILABLE, f"model {model!r}: no metadata reply in {META_TIMEOUT_S:g} s") \
                from None
        except nats.errors.Error as error:  # closed, reconnecting, ...
            raise GatewayError(Status.UNAVAILABLE, f"NATS: {error!r}") from None
        except msgspec.DecodeError as error:
            raise GatewayError(Status.INTERNAL, f"unreadable metadata for {model!r}: {error}") from None

    async def statistics(self, model: str | None) -> dict:
        """Triton's statistics extension, cluster-wide: every shard's and agent's counts for the
        model (all models: None), merged (runtime/stats.py). Plain builtins, for JSON or protobuf."""
        return msgspec.to_builtins(await model_statistics(self.nc, self.prefix, model, wait_s=STATS_WAIT_S))

    async def infer(self, call: Call, meta: ModelMetadata):  # noqa: ANN201 - dict[str, np.ndarray]
        """The call's outputs, or GatewayError with the first failing item's status and reason.
        `meta`: the model's metadata, as the door looked it up to check the version."""
        self.calls_in_flight += 1
        try:
            return await self._infer(call, meta)
        finally:
            self.calls_in_flight -= 1

    async def _infer(self, call: Call, meta: ModelMetadata):  # noqa: ANN202
        started_ns = time.perf_counter_ns()
        items, batched = split_items(call, meta)
        futures = [self.sender.submit(call.model, encode_request(item, CONTENT_MSGPACK),
                                      request_id=_item_id(call.request_id, i, len(items)),
                                      slo_ms=call.slo_ms, deadline_ms=call.deadline_ms)
                   for i, item in enumerate(items)]
        results = await self._wait(futures, call)
        failed = next((r for r in results if not r.ok), None)
        self.metrics.observe(call.model, failed.status if failed else Status.OK, len(items),
                             time.perf_counter_ns() - started_ns)
        if failed is not None:
            raise GatewayError(Status(failed.status) if failed.status in Status._value2member_map_
                               else Status.INTERNAL, failed.reason or f"status {failed.status}")
        return stack_outputs(call, [r.outputs for r in results], batched)

    async def _wait(self, futures: list[asyncio.Future[InferResult]], call: Call) -> list[InferResult]:
        """Every item's reply; past the deadline (plus grace) the missing ones are 504s."""
        wait_s = self.timeout_s
        if call.deadline_ms is not None:
            wait_s = min(wait_s, max(0.0, call.deadline_ms / 1e3 - time.time()) + REPLY_GRACE_S)
        done, pending = await asyncio.wait(futures, timeout=wait_s)
        for future in pending:
            future.cancel()
        timeout = InferResult(status=Status.DROPPED, reason=f"no reply within {wait_s:.3g} s")
        return [f.result() if f in done else timeout for f in futures]


def _item_id(request_id: str, index: int, count: int) -> str:
    """A batch's items need distinct ids: a repeated id is de-duplicated (docs/reliability.md)."""
    if not request_id or count == 1:
        return request_id
    return f"{request_id}/{index}"
