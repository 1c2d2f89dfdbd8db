"""A role's Prometheus endpoint: where `metrics_port` says, on loopback unless told otherwise, on a
free port under `symphony up`, and named in the status snapshot (older snapshots still decode)."""

from __future__ import annotations

import socket
import urllib.request

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from runtime.cluster_config import ClusterConfig, metrics_on_free_ports
from runtime.metrics_http import metrics_url, serve_metrics
from schemas.status_report import agent_status_decoder, coordinator_status_decoder, shard_status_decoder

CONFIG = {
    "models": [{"name": "m", "kind": "sleep:1,1", "slo_ms": 50}],
    "agents": [{"id": "a", "slots": [{"id": "s0", "models": ["m"]}]},
               {"id": "b", "slots": [{"id": "s1", "models": ["m"]}], "metrics_port": 9102},
               {"id": "c", "slots": [{"id": "s2", "models": ["m"]}], "metrics_port": -1}],
    "shards": [{"id": "shard-0", "metrics_port": 9101}],
    "coordinator": {},
}


def test_a_free_port_on_loopback_serves_the_registry_until_closed() -> None:
    registry = CollectorRegistry()
    Counter("symphony_test_things", "things", registry=registry).inc(3)
    endpoint = serve_metrics(0, "127.0.0.1", registry)
    assert endpoint is not None and endpoint.port > 0
    assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
    text = urllib.request.urlopen(endpoint.url, timeout=5).read().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["symphony_test_things_total"] == 3
    endpoint.close()
    with socket.socket() as probe:  # nothing listens there any more (the scrape's TIME_WAIT may linger)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", endpoint.port))


@pytest.mark.parametrize("port", [None, -1])
def test_an_unset_or_negative_port_serves_nothing(port: int | None) -> None:
    assert serve_metrics(port, "127.0.0.1", CollectorRegistry()) is None


def test_a_wildcard_bind_is_named_by_this_host_and_ipv6_is_bracketed() -> None:
    assert metrics_url("0.0.0.0", 9100) == f"http://{socket.gethostname()}:9100/metrics"
    assert metrics_url("::1", 9100) == "http://[::1]:9100/metrics"


def test_symphony_up_fills_only_unset_ports_and_the_host_defaults_to_loopback() -> None:
    config = msgspec.convert(CONFIG, ClusterConfig)
    assert config.metrics_host == "127.0.0.1"
    assert [a.metrics_port for a in config.agents] == [None, 9102, -1]
    up = metrics_on_free_ports(config)
    assert [a.metrics_port for a in up.agents] == [0, 9102, -1]
    assert up.coordinator.metrics_port == 0
    assert up.shard("shard-0").metrics_port == 9101
    assert up.shard("shard-7").metrics_port == 0  # scaled out: not the template's fixed port


def test_ports_out_of_range_are_refused() -> None:
    for port in (-2, 65536):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**CONFIG, "shards": [{"id": "shard-0", "metrics_port": port}]}, ClusterConfig)


def test_snapshots_without_a_metrics_url_still_decode() -> None:
    shard = shard_status_decoder.decode(b'{"shard_id":"s","policy":"p","models":[],"slots_owned":[],'
                                        b'"slots_busy":[],"slots_lost":[]}')
    agent = agent_status_decoder.decode(b'{"agent_id":"a","device":"cpu","slots":[],"compile_count":{}}')
    coordinator = coordinator_status_decoder.decode(
        b'{"coordinator_id":"c","leading":true,"epoch":1,"shards":[],"agents":[],"desired_slots":0,'
        b'"surplus_slots":0,"slots":0}')
    assert (shard.metrics_url, agent.metrics_url, coordinator.metrics_url) == ("", "", "")
