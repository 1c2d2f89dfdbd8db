"""NATS connections with our conventions: services reconnect forever and log through structlog;
clients fail fast with a clear message instead of retrying with tracebacks."""

from __future__ import annotations

import nats
import structlog

log = structlog.get_logger("nats")


def server_list(url: str) -> list[str]:
    """`nats://a:1,nats://b:2` -> both, in order: the first is preferred, the others take over."""
    return [u.strip() for u in url.split(",") if u.strip()]


async def connect_service(url: str, name: str) -> nats.NATS:
    async def on_error(error: Exception) -> None:
        log.warning("nats_error", client=name, error=repr(error))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected", client=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", client=name)

    return await nats.connect(
        server_list(url), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, dont_randomize=True,
        error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
    )


class NatsUnreachable(ConnectionError):
    pass


async def connect_client(url: str, name: str = "symphony-client") -> nats.NATS:
    async def on_error(error: Exception) -> None:
        log.debug("nats_error", client=name, error=repr(error))

    try:
        return await nats.connect(server_list(url), name=name, connect_timeout=3, max_reconnect_attempts=0,
                                  allow_reconnect=False, error_cb=on_error)
    except Exception as error:  # noqa: BLE001 - nats raises several kinds here
        raise NatsUnreachable(
            f"cannot reach NATS at {url} ({error.__class__.__name__}); is `symphony up` running? "
            "Set --nats-url or NATS_URL."
        ) from None
