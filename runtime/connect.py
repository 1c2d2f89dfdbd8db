"""NATS connections with our conventions: services reconnect forever and log through structlog;
clients fail fast with a clear message instead of retrying with tracebacks.

Credentials (runtime/nats_auth.py): an explicit `creds` (a `Creds` or the path of its 0600 file),
else `$SYMPHONY_NATS_CREDS`, else (connect_client only, as its `user`) the credentials a local
cluster recorded for the same URL; none at all connects without authentication (a plain
nats-server)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import weakref
from pathlib import Path

import nats
import structlog
from nats.nuid import NUID

from runtime.nats_auth import CREDS_ENV, Creds, creds_from_env, load_creds, local_creds

log = structlog.get_logger("nats")

# The credentials each connection was opened with (hand-back reply namespace, bucket creation).
_creds_of: weakref.WeakKeyDictionary[nats.NATS, Creds] = weakref.WeakKeyDictionary()


def server_list(url: str) -> list[str]:
    """`nats://a:1,nats://b:2` -> both, in order: the first is preferred, the others take over."""
    return [u.strip() for u in url.split(",") if u.strip()]


def resolve_creds(url: str, creds: Creds | str | Path | None = None, local_user: str | None = None) -> Creds | None:
    if isinstance(creds, (str, Path)):
        return load_creds(creds)
    if creds is not None:
        return creds
    from_env = creds_from_env()
    if from_env is not None:
        return from_env
    return local_creds(url, local_user) if local_user else None


def connect_options(creds: Creds | None, url: str = "") -> dict:
    """Keyword arguments for `nats.connect` that authenticate as `creds` (empty without)."""
    options: dict = {}
    if creds is not None:
        # NKey login: nats.py signs the server's nonce with the seed (held in memory, as the file was read)
        options.update(nkeys_seed_str=creds.seed, inbox_prefix=creds.inbox_prefix)
    tls_urls = any(u.startswith("tls://") for u in server_list(url))
    if creds is not None and (creds.tls_ca or creds.tls_cert) or tls_urls:
        context = ssl.create_default_context(cafile=(creds.tls_ca or None) if creds else None)
        if creds is not None and creds.tls_cert:
            context.load_cert_chain(creds.tls_cert, creds.tls_key or None)
        options["tls"] = context
    return options


def creds_of(nc: nats.NATS) -> Creds | None:
    return _creds_of.get(nc)


def may_create_buckets(nc: nats.NATS) -> bool:
    """Only the coordinator creates KV buckets; without credentials anyone may (open server)."""
    creds = _creds_of.get(nc)
    return creds is None or creds.role == "coordinator"


def _remember(nc: nats.NATS, creds: Creds | None) -> nats.NATS:
    if creds is not None:
        _creds_of[nc] = creds
    return nc


async def connect_service(url: str, name: str, creds: Creds | str | Path | None = None) -> nats.NATS:
    async def on_error(error: Exception) -> None:
        log.warning("nats_error", client=name, error=repr(error))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected", client=name)

    async def on_reconnect() -> None:
        log.info("nats_reconnected", client=name)

    resolved = resolve_creds(url, creds)
    nc = await nats.connect(
        server_list(url), name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, dont_randomize=True,
        # A paused or cut-off server is found stale after 3 unanswered pings 2 s apart (the
        # default is 2 minutes x 2), so services fail over to another server in a cluster.
        ping_interval=2, max_outstanding_pings=3,
        error_cb=on_error, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        **connect_options(resolved, url),
    )
    return _remember(nc, resolved)


class NatsUnreachable(ConnectionError):
    pass


async def connect_client(url: str, name: str = "symphony-client", creds: Creds | str | Path | None = None,
                         *, user: str = "client") -> nats.NATS:
    """`user` picks which of `symphony up`'s recorded credentials a CLI command uses when neither
    `creds` nor $SYMPHONY_NATS_CREDS is given: `client` to infer, `operator` for status/drain/scale."""
    async def on_error(error: Exception) -> None:
        log.debug("nats_error", client=name, error=repr(error))

    resolved = resolve_creds(url, creds, user)
    nc = nats.NATS()
    try:
        await nc.connect(server_list(url), name=name, connect_timeout=3, max_reconnect_attempts=0,
                         allow_reconnect=False, error_cb=on_error, **connect_options(resolved, url))
    except Exception as error:  # noqa: BLE001 - nats raises several kinds here
        with contextlib.suppress(Exception):  # a refused login leaves the socket open otherwise;
            await asyncio.wait_for(nc.close(), 1.0)  # after a failed TLS handshake close() can hang
        if isinstance(error, nats.errors.AuthorizationError) or "uthorization" in repr(error):
            raise NatsUnreachable(
                f"NATS at {url} refused the credentials ({'user ' + resolved.user if resolved else 'none given'}); "
                f"set {CREDS_ENV} to the credentials file `symphony up` printed."
            ) from None
        raise NatsUnreachable(
            f"cannot reach NATS at {url} ({error.__class__.__name__}); is `symphony up` running? "
            "Set --nats-url or NATS_URL."
        ) from None
    return _remember(nc, resolved)


# ---- requests whose reply lands in the hand-back namespace ----------------------------------

class _ReplyMux:
    """Like nats-py's request mux (one wildcard subscription, a future per request), under a
    prefix of our choosing instead of the connection's inbox."""

    def __init__(self, nc: nats.NATS, prefix: str) -> None:
        self.nc = nc
        self.base = f"{prefix}.{NUID().next().decode()}"
        self.futures: dict[str, asyncio.Future] = {}
        self.ids = itertools.count()
        self.sub = None
        self.lock = asyncio.Lock()

    async def _deliver(self, msg) -> None:  # noqa: ANN001
        future = self.futures.get(msg.subject[len(self.base) + 1:])
        if future is not None and not future.done():
            future.set_result(msg)

    async def request(self, subject: str, payload: bytes, timeout: float, headers: dict | None) -> nats.aio.msg.Msg:
        async with self.lock:
            if self.sub is None:
                self.sub = await self.nc.subscribe(f"{self.base}.*", cb=self._deliver)
        token = str(next(self.ids))
        future = asyncio.get_running_loop().create_future()
        self.futures[token] = future
        try:
            await self.nc.publish(subject, payload, reply=f"{self.base}.{token}", headers=headers)
            msg = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self.futures.pop(token, None)
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg


_muxes: weakref.WeakKeyDictionary[nats.NATS, _ReplyMux] = weakref.WeakKeyDictionary()


async def hand_back_request(nc: nats.NATS, subject: str, payload: bytes, *, timeout: float,
                            headers: dict | None = None) -> nats.aio.msg.Msg:
    """`nc.request`, but with the reply under the connection's hand-back namespace when it has one,
    so whoever answers a handed-back request (an agent) never needs the holder's own inbox."""
    creds = _creds_of.get(nc)
    if creds is None or not creds.handback_prefix:
        return await nc.request(subject, payload, timeout=timeout, headers=headers)
    mux = _muxes.get(nc)
    if mux is None:
        mux = _muxes[nc] = _ReplyMux(nc, creds.handback_prefix)
    return await mux.request(subject, payload, timeout, headers)


async def flush_ordered(nc: nats.NATS, timeout: float = 10.0) -> None:
    """`nc.flush()` that really follows what was issued before it. nats-py (2.15, 2.16) writes
    flush's PING straight to the socket, ahead of commands its flusher task has not written yet,
    so a bare flush() can return before the server has seen a SUB just made, and a message sent
    to it right then is dropped (seen: ~1 in 8 in tests/security). Wait for the flusher first."""
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None and nc.is_connected:
        await asyncio.wait_for(flush_pending(force_flush=True), timeout)
    await nc.flush(timeout)
