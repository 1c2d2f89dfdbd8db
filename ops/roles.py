"""Running one role in this process until SIGINT/SIGTERM: `symphony agent`, `symphony shard`."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping

import structlog

from runtime.clock import MonotonicClock
from runtime.cluster_config import AUTOSCALE_ENV, METRICS_ENV, ClusterConfig, load_cluster_config, metrics_on_free_ports
from runtime.logs import configure_logging

log = structlog.get_logger("ops")


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _configure() -> None:
    configure_logging(json=True, level=os.environ.get("SYMPHONY_LOG_LEVEL", "info"))


def _config(path: str, environ: Mapping[str, str] = os.environ) -> ClusterConfig:
    """The cluster config, with SYMPHONY_KV_REPLICAS (set by `symphony up --nats-cluster N`),
    SYMPHONY_AUTOSCALE=1 (set by `symphony up --autoscale`: the coordinators run the autoscaler
    with the config's `[coordinator.autoscale]` settings, or the defaults) and SYMPHONY_METRICS=free
    (set by `symphony up` and `symphony demo` unless --no-metrics: a role whose `metrics_port` is
    unset serves its metrics on a free port)."""
    import msgspec

    config = load_cluster_config(path)
    if environ.get(METRICS_ENV) == "free":
        config = metrics_on_free_ports(config)
    coordinator = config.coordinator
    if coordinator is None:
        return config
    replicas = environ.get("SYMPHONY_KV_REPLICAS")
    if replicas:
        coordinator = msgspec.structs.replace(coordinator, kv_replicas=int(replicas))
    if environ.get(AUTOSCALE_ENV) == "1":
        coordinator = msgspec.structs.replace(
            coordinator, autoscale=msgspec.structs.replace(coordinator.autoscale, enabled=True))
    return msgspec.structs.replace(config, coordinator=coordinator)


def agent_clock(environ: Mapping[str, str] = os.environ) -> MonotonicClock:
    """The agent's clock. SYMPHONY_CLOCK_OFFSET_MS, for tests of clock offset between hosts only,
    runs this agent as on a host whose wall clock is that many milliseconds ahead (negative:
    behind) of the others (docs/reliability.md §1.1); read here and nowhere deeper."""
    offset_ms = float(environ.get("SYMPHONY_CLOCK_OFFSET_MS", "0"))
    return MonotonicClock(wall_offset_ns=int(offset_ms * 1e6))


async def _serve(role: str, role_id: str, service, nats_url: str) -> None:  # noqa: ANN001 - any role's service
    """Start the role's service, run until SIGINT/SIGTERM, then stop it cleanly."""
    await service.start(nats_url)
    await _until_signalled()
    log.info(f"{role}_stopping", **{role: role_id})
    await service.stop()


async def run_agent(config_path: str, agent_id: str, nats_url: str) -> None:
    from gpu_agent.agent import Agent  # each role imports only its own service: JAX is the agent's alone

    _configure()
    agent = Agent(_config(config_path), agent_id, clock=agent_clock())
    await asyncio.to_thread(agent.load)
    await _serve("agent", agent_id, agent, nats_url)


async def run_shard(config_path: str, shard_id: str, nats_url: str) -> None:
    from shard.service.shard import ShardService

    _configure()
    await _serve("shard", shard_id, ShardService(_config(config_path), shard_id), nats_url)


async def run_coordinator(config_path: str, coordinator_id: str, nats_url: str) -> None:
    from coordinator.service import Coordinator

    _configure()
    config = _config(config_path)
    if config.coordinator is None:
        raise ValueError(f"{config_path} has no [coordinator] section")
    await _serve("coordinator", coordinator_id, Coordinator(config, coordinator_id), nats_url)


async def run_gateway(settings) -> None:  # noqa: ANN001 - gateway.service.GatewaySettings
    from gateway.service import Gateway

    _configure()
    gateway = Gateway(settings)
    await gateway.start()
    await _until_signalled()
    log.info("gateway_stopping")
    await gateway.stop()
