"""Registration with the NATS services API (`nats.micro`, ADR-32): standard NATS tooling
(`nats micro ls`, `$SRV.PING/INFO/STATS`) lists shards and agents and reads their stats, and each
instance answers a `status` endpoint with its snapshot (JSON)."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import nats
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

VERSION = "0.1.0"


async def register_service(
    nc: nats.NATS, name: str, description: str, metadata: dict[str, str], status_subject: str,
    snapshot: Callable[[], msgspec.Struct],
) -> Service:
    def stats_data(_endpoint_stats) -> dict:  # noqa: ANN001
        return msgspec.to_builtins(snapshot())

    service = await add_service(nc, name=name, version=VERSION, description=description, metadata=metadata,
                                stats_handler=stats_data)

    async def on_status(request: Request) -> None:
        await request.respond(msgspec.json.encode(snapshot()), headers={"Content-Type": "application/json"})

    await service.add_endpoint(name="status", subject=status_subject, handler=on_status, queue_group=status_subject)
    return service
